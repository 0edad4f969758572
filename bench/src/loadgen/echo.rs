//! Echo loads: N connections, each keeping K messages of S bytes in flight, on one mio
//! thread. Replies are not parsed, only counted: a WebSocket echo of an S-byte message is an
//! unmasked frame of known size, a raw echo is S bytes.

use crate::setup::{masked_frame, open, server_frame_len};
use crate::stats::{micros, percentile, report};
use crate::Args;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

struct Conn {
    stream: TcpStream,
    /// With `frames=1`: the frame being read (its header so far, then payload bytes left).
    frame: FrameReader,
    sent_at: VecDeque<Instant>,
    /// Bytes of the current reply received so far.
    partial: usize,
    /// Bytes owed to the socket (whole messages not yet written).
    unsent: usize,
    writable_wanted: bool,
}

pub fn run(args: &Args, websocket: bool) {
    let addr = args.addr();
    let conns: usize = args.get("conns", 50);
    let size: usize = args.get("size", 64);
    let inflight: usize = args.get("inflight", 1);
    let warmup = args.secs("warmup", 1.0);
    let measure = args.secs("secs", 5.0);
    let path = args.text("path").unwrap_or("/").to_string();
    // A route relays a service's bytes, cut into frames wherever its reads cut them: count
    // payload bytes (parsing frame headers) instead of whole frames of a known size.
    let frames = args.get("frames", 0) == 1;
    let upgrade = if websocket {
        Some("websocket")
    } else {
        args.text("upgrade")
    };

    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let (message, reply_len) = if websocket {
        // `text=1`: text frames (for services that speak in lines, as websocketd's do).
        let opcode = if args.get("text", 0) == 1 { 0x1 } else { 0x2 };
        (masked_frame(opcode, &payload), server_frame_len(size))
    } else {
        (payload.clone(), size)
    };
    // Enough copies to write any number of owed messages with one call.
    let outgoing: Vec<u8> = message
        .iter()
        .copied()
        .cycle()
        .take(message.len() * inflight.max(1))
        .collect();

    let mut poll = Poll::new().unwrap();
    let mut all = Vec::with_capacity(conns);
    for i in 0..conns {
        let stream = open(addr, upgrade, &path).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        stream.set_nonblocking(true).unwrap();
        let mut stream = TcpStream::from_std(stream);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)
            .unwrap();
        all.push(Conn {
            stream,
            sent_at: VecDeque::new(),
            frame: FrameReader::default(),
            partial: 0,
            unsent: inflight,
            writable_wanted: false,
        });
    }
    let start = Instant::now();
    let (measure_from, measure_until) = (start + warmup, start + warmup + measure);
    let mut rtts: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut counted = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut events = Events::with_capacity(4096);
    for (i, conn) in all.iter_mut().enumerate() {
        flush(conn, &outgoing, message.len(), &poll, i);
    }
    loop {
        poll.poll(&mut events, Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let now = Instant::now();
        if now >= measure_until {
            break;
        }
        for event in &events {
            let i = event.token().0;
            let conn = &mut all[i];
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => panic!("connection {i} closed by the server"),
                    Ok(n) => {
                        let (got, need) = match frames {
                            true => (conn.frame.payload(&buf[..n]), size),
                            false => (n, reply_len),
                        };
                        conn.partial += got;
                        while conn.partial >= need {
                            conn.partial -= need;
                            let sent = conn.sent_at.pop_front().expect("a reply to a message sent");
                            if now >= measure_from {
                                counted += 1;
                                rtts.push(micros(now - sent));
                            }
                            conn.unsent += 1;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("connection {i}: {e}"),
                }
            }
            flush(conn, &outgoing, message.len(), &poll, i);
        }
    }
    let elapsed = measure.as_secs_f64();
    rtts.sort_unstable();
    let rate = counted as f64 / elapsed;
    report(&[
        ("msgs_per_s", format!("{rate:.0}")),
        ("mb_per_s", format!("{:.1}", rate * size as f64 / 1e6)),
        ("p50_us", percentile(&rtts, 50.0).to_string()),
        ("p99_us", percentile(&rtts, 99.0).to_string()),
        ("p999_us", percentile(&rtts, 99.9).to_string()),
    ]);
}

/// Writes the messages a connection owes, all in one write when the socket takes them.
fn flush(conn: &mut Conn, outgoing: &[u8], message_len: usize, poll: &Poll, i: usize) {
    while conn.unsent > 0 {
        // Whole messages only, so that one partial write never splits the timing.
        let want = conn.unsent * message_len;
        match conn.stream.write(&outgoing[..want]) {
            Ok(n) if n % message_len == 0 => {
                let now = Instant::now();
                for _ in 0..n / message_len {
                    conn.sent_at.push_back(now);
                }
                conn.unsent -= n / message_len;
            }
            Ok(n) => {
                // Finish the message that was cut, blocking briefly: rare with small messages.
                let rest = message_len - n % message_len;
                let start = (n / message_len) * message_len + n % message_len;
                let mut tail = &outgoing[start..start + rest];
                while !tail.is_empty() {
                    match conn.stream.write(tail) {
                        Ok(m) => tail = &tail[m..],
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                        Err(e) => panic!("connection {i}: {e}"),
                    }
                }
                let now = Instant::now();
                for _ in 0..n.div_ceil(message_len) {
                    conn.sent_at.push_back(now);
                }
                conn.unsent -= n.div_ceil(message_len);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    let want_writable = conn.unsent > 0;
    if want_writable != conn.writable_wanted {
        conn.writable_wanted = want_writable;
        let interest = if want_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(&mut conn.stream, Token(i), interest)
            .unwrap();
    }
}

/// Counts payload bytes in a stream of unmasked server frames.
#[derive(Default)]
struct FrameReader {
    header: Vec<u8>,
    left: usize,
}

impl FrameReader {
    /// Payload bytes in `bytes`.
    fn payload(&mut self, mut bytes: &[u8]) -> usize {
        let mut payload = 0;
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                payload += n;
                bytes = &bytes[n..];
                continue;
            }
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            let need = match self.header.get(1).map(|b| b & 0x7f) {
                None => continue,
                Some(126) => 4,
                Some(127) => 10,
                Some(_) => 2,
            };
            if self.header.len() < need {
                continue;
            }
            self.left = match need {
                4 => u16::from_be_bytes([self.header[2], self.header[3]]) as usize,
                10 => u64::from_be_bytes(self.header[2..10].try_into().unwrap()) as usize,
                _ => (self.header[1] & 0x7f) as usize,
            };
            self.header.clear();
        }
        payload
    }
}
