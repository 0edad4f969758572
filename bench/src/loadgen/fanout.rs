//! Broadcast fan-out: N WebSocket clients of one `exec-shared:` route, all reading (on one
//! thread, non-blocking), counting the messages each receives over the measured seconds:
//! how many messages a second the daemon delivers to each and in all. `--start LINE`: the
//! first client sends it once all are connected (a program that waits for it before
//! producing).

use crate::setup::{expect_switch, masked_frame, websocket_request};
use crate::stats::report;
use crate::Args;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{Read, Write};
use std::time::Instant;

/// A connection's received bytes, cut into server frames (unmasked, RFC 6455 §5.2).
struct Counter {
    stream: TcpStream,
    buf: Vec<u8>,
    messages: u64,
    ended: bool,
}

impl Counter {
    /// Counts the whole frames in `buf`, keeping a partial one.
    fn count(&mut self, measuring: bool) {
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            if rest.len() < 2 {
                break;
            }
            let (header, len) = match rest[1] & 0x7f {
                126 if rest.len() >= 4 => (4, u16::from_be_bytes([rest[2], rest[3]]) as usize),
                127 if rest.len() >= 10 => (
                    10,
                    u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                ),
                126 | 127 => break,
                n => (2, n as usize),
            };
            if rest.len() < header + len {
                break;
            }
            if rest[0] & 0x0f == 0x8 {
                self.ended = true;
            } else if measuring {
                self.messages += 1;
            }
            at += header + len;
        }
        self.buf.drain(..at);
    }
}

pub fn run(args: &Args) {
    let addr = args.addr();
    let conns: usize = args.get("conns", 1000);
    let path = args.text("path").unwrap_or("/shared").to_string();
    let warmup = args.secs("warmup", 1.0);
    let measure = args.secs("secs", 5.0);
    let mut poll = Poll::new().unwrap();
    let mut counters = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut std = std::net::TcpStream::connect(addr).expect("connect");
        std.write_all(websocket_request(&path).as_bytes()).unwrap();
        let extra = expect_switch(&mut std).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        std.set_nonblocking(true).unwrap();
        let mut stream = TcpStream::from_std(std);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)
            .unwrap();
        counters.push(Counter {
            stream,
            buf: extra,
            messages: 0,
            ended: false,
        });
    }
    // The program waits for this line before it floods (so that every client is there
    // before the first message): sent by the first client.
    if let Some(line) = args.text("start") {
        counters[0]
            .stream
            .write_all(&masked_frame(0x1, line.as_bytes()))
            .unwrap();
    }
    let start = Instant::now();
    let (measure_from, until) = (start + warmup, start + warmup + measure);
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 256 * 1024];
    while Instant::now() < until {
        poll.poll(
            &mut events,
            Some(until.saturating_duration_since(Instant::now())),
        )
        .unwrap();
        let measuring = Instant::now() >= measure_from;
        for event in events.iter() {
            let counter = &mut counters[event.token().0];
            loop {
                match counter.stream.read(&mut scratch) {
                    Ok(0) => {
                        counter.ended = true;
                        break;
                    }
                    Ok(n) => {
                        counter.buf.extend_from_slice(&scratch[..n]);
                        counter.count(measuring);
                    }
                    Err(_) => break,
                }
            }
        }
    }
    let secs = measure.as_secs_f64();
    let mut per_client: Vec<u64> = counters.iter().map(|c| c.messages).collect();
    per_client.sort_unstable();
    let total: u64 = per_client.iter().sum();
    report(&[
        ("clients", conns.to_string()),
        (
            "ended",
            counters.iter().filter(|c| c.ended).count().to_string(),
        ),
        ("messages_per_s", format!("{:.0}", total as f64 / secs)),
        (
            "per_client_min",
            format!("{:.0}", per_client[0] as f64 / secs),
        ),
        (
            "per_client_median",
            format!("{:.0}", per_client[per_client.len() / 2] as f64 / secs),
        ),
    ]);
}
