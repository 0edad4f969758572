//! The kinds of client a soak runs at once. Each loops until `stop`, counts what it did,
//! and reports anything a client did not cause as an error: a lost or corrupted message, a
//! wrong answer, a connection dropped that should have lived.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// What the clients did, read by the sampler.
#[derive(Default)]
pub struct Counters {
    pub idle_open: AtomicU64,
    pub echo_messages: AtomicU64,
    pub churn_connections: AtomicU64,
    pub tunnel_bytes: AtomicU64,
    pub h2c_requests: AtomicU64,
    pub malformed_answered: AtomicU64,
    pub panics_provoked: AtomicU64,
    pub reloads: AtomicU64,
    /// Rounds of the hostile client (each kind of attack once per four rounds).
    pub hostile_rounds: AtomicU64,
    pub errors: AtomicU64,
    /// The first few errors, for the report.
    pub error_lines: Mutex<Vec<String>>,
}

impl Counters {
    pub fn error(&self, what: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut lines = self.error_lines.lock().unwrap();
        if lines.len() < 20 {
            eprintln!("soak error: {what}");
            lines.push(what);
        }
    }
}

pub struct Env<'a> {
    pub addr: SocketAddr,
    pub stop: &'a AtomicBool,
    pub counters: &'a Counters,
}

/// A small, deterministic generator: payloads are checked byte for byte.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn websocket(addr: SocketAddr) -> Result<tungstenite::WebSocket<TcpStream>, String> {
    let stream = connect(addr).map_err(|e| format!("connect: {e}"))?;
    tungstenite::client(format!("ws://{addr}/soak"), stream)
        .map(|(ws, _)| ws)
        .map_err(|e| format!("handshake: {e}"))
}

/// Reads an HTTP/1.1 response head; returns its status (0 if none came).
fn status_of(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    std::str::from_utf8(&head)
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[rustfmt::skip]
const MASKED_PING: [u8; 10] = [0x89, 0x84, 1, 2, 3, 4, b'p' ^ 1, b'i' ^ 2, b'n' ^ 3, b'g' ^ 4];

/// `count` WebSockets that say nothing but a ping a minute (as a browser tab's keep-alive
/// would), each of which must stay open and answer, and that answer the daemon's pings
/// (sent after 30 s of silence by default) as a browser does by itself.
pub fn idle(env: &Env, count: usize) {
    let request = |addr: SocketAddr| {
        format!(
            "GET /idle HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        if env.stop.load(Relaxed) {
            return;
        }
        let opened = connect(env.addr).and_then(|mut s| {
            s.write_all(request(env.addr).as_bytes())?;
            Ok(s)
        });
        match opened {
            Ok(mut stream) => match status_of(&mut stream) {
                101 => match stream.set_nonblocking(true) {
                    Ok(()) => open.push(Idle {
                        stream,
                        asked: None,
                    }),
                    Err(e) => env.counters.error(format!("idle WebSocket: {e}")),
                },
                other => env
                    .counters
                    .error(format!("idle WebSocket answered {other}")),
            },
            Err(e) => env.counters.error(format!("idle WebSocket: {e}")),
        }
        env.counters.idle_open.store(open.len() as u64, Relaxed);
    }
    let mut next_ping = Instant::now() + Duration::from_secs(60);
    let mut next_look = Instant::now();
    while !env.stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let now = Instant::now();
        let ping = now >= next_ping;
        if ping {
            next_ping += Duration::from_secs(60);
        } else if now < next_look {
            continue;
        }
        // Every 5 s: what each has been sent (the daemon's pings, answered; our pings'
        // answers), well inside the 30 s the daemon waits for an answer.
        next_look = now + Duration::from_secs(5);
        open.retain_mut(|idle| match idle.look(ping) {
            Ok(()) => true,
            Err(why) => {
                env.counters.error(format!("an idle WebSocket {why}"));
                false
            }
        });
        env.counters.idle_open.store(open.len() as u64, Relaxed);
    }
}

/// One idle WebSocket (non-blocking), and when it last pinged the daemon unanswered.
struct Idle {
    stream: TcpStream,
    asked: Option<Instant>,
}

impl Idle {
    /// Reads what came (whole control frames: all the daemon sends an idle client),
    /// answering pings; with `ping`, pings the daemon. Errs for a close, an end, or our
    /// ping unanswered for 10 s.
    fn look(&mut self, ping: bool) -> Result<(), String> {
        let mut input = [0u8; 512];
        loop {
            let n = match self.stream.read(&mut input) {
                Ok(0) => return Err("was closed".into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("failed: {e}")),
            };
            let mut at = 0;
            while at + 2 <= n {
                let (opcode, len) = (input[at] & 0x0f, usize::from(input[at + 1] & 0x7f));
                let payload = input.get(at + 2..at + 2 + len).ok_or("sent a cut frame")?;
                match opcode {
                    0x9 => {
                        let mut pong = vec![0x8a, 0x80 | len as u8, 0, 0, 0, 0];
                        pong.extend_from_slice(payload); // a zero mask
                        self.stream
                            .write_all(&pong)
                            .map_err(|e| format!("could not answer a ping: {e}"))?;
                    }
                    0xa if payload == b"ping" => self.asked = None,
                    0x8 => return Err(format!("was closed: {payload:?}")),
                    other => return Err(format!("sent opcode {other}")),
                }
                at += 2 + len;
            }
        }
        if self
            .asked
            .is_some_and(|at| at.elapsed() > Duration::from_secs(10))
        {
            return Err("did not answer its ping".into());
        }
        if ping {
            self.stream
                .write_all(&MASKED_PING)
                .map_err(|e| format!("could not ping: {e}"))?;
            self.asked = Some(Instant::now());
        }
        Ok(())
    }
}

/// A WebSocket echoing messages of 1 B to 16 KiB, text and binary, each checked.
pub fn echo(env: &Env, seed: u64) {
    let mut rng = XorShift(seed);
    while !env.stop.load(Relaxed) {
        let mut ws = match websocket(env.addr) {
            Ok(ws) => ws,
            Err(e) => {
                env.counters.error(format!("echo: {e}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        // A few thousand messages per connection, then a new one.
        for _ in 0..5000 {
            if env.stop.load(Relaxed) {
                break;
            }
            let len = 1 + (rng.next() % 16384) as usize;
            let message = if rng.next().is_multiple_of(4) {
                let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
                Message::text(text)
            } else {
                Message::binary(rng.bytes(len))
            };
            let sent = message.clone();
            if let Err(e) = ws.send(message) {
                env.counters.error(format!("echo send: {e}"));
                break;
            }
            match ws.read() {
                Ok(back) if back == sent => {
                    env.counters.echo_messages.fetch_add(1, Relaxed);
                }
                Ok(back) => {
                    env.counters.error(format!(
                        "echo: a message of {} bytes came back as {} bytes, or changed",
                        sent.len(),
                        back.len()
                    ));
                    break;
                }
                Err(e) => {
                    env.counters.error(format!("echo read: {e}"));
                    break;
                }
            }
        }
        let _ = ws.close(None);
        while ws.read().is_ok() {}
    }
}

/// Connect, switch, one message, close: over and over.
pub fn churn(env: &Env) {
    while !env.stop.load(Relaxed) {
        let result = websocket(env.addr).and_then(|mut ws| {
            ws.send(Message::text("churn")).map_err(|e| e.to_string())?;
            match ws.read().map_err(|e| e.to_string())? {
                back if back == Message::text("churn") => {}
                other => return Err(format!("came back as {other:?}")),
            }
            ws.close(None).map_err(|e| e.to_string())?;
            while ws.read().is_ok() {}
            Ok(())
        });
        match result {
            Ok(()) => {
                env.counters.churn_connections.fetch_add(1, Relaxed);
            }
            Err(e) => env.counters.error(format!("churn: {e}")),
        }
    }
}

/// `Upgrade: tcp` to the echo backend: bursts of bytes, each checked, then a half-close.
pub fn tunnel(env: &Env, seed: u64) {
    let mut rng = XorShift(seed);
    while !env.stop.load(Relaxed) {
        let result = (|| -> Result<u64, String> {
            let mut stream = connect(env.addr).map_err(|e| e.to_string())?;
            stream
                .write_all(b"GET /echo HTTP/1.1\r\nHost: soak\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
                .map_err(|e| e.to_string())?;
            match status_of(&mut stream) {
                101 => {}
                other => return Err(format!("answered {other}")),
            }
            let mut moved = 0;
            for _ in 0..50 {
                let len = 1 + (rng.next() % 65536) as usize;
                let data = rng.bytes(len);
                let writer = stream.try_clone().map_err(|e| e.to_string())?;
                let sent = data.clone();
                let write = std::thread::spawn(move || (&writer).write_all(&sent));
                let mut back = vec![0u8; data.len()];
                stream
                    .read_exact(&mut back)
                    .map_err(|e| format!("read: {e}"))?;
                write.join().unwrap().map_err(|e| format!("write: {e}"))?;
                if back != data {
                    return Err(format!("{} bytes came back changed", data.len()));
                }
                moved += data.len() as u64;
            }
            stream
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).map_err(|e| e.to_string())?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the end", rest.len()));
            }
            Ok(moved)
        })();
        match result {
            Ok(moved) => {
                env.counters.tunnel_bytes.fetch_add(moved, Relaxed);
            }
            Err(e) => env.counters.error(format!("tunnel: {e}")),
        }
    }
}

/// Bad and slow requests, each of which must get its status (and harm no one else).
pub fn malformed(env: &Env) {
    let large = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let cases: [(&str, &[u8], u16); 7] = [
        ("garbage", b"GARBAGE\r\n\r\n", 400),
        ("a head over the limit", large.as_bytes(), 431),
        (
            "Content-Length with Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        // Half a head, then nothing: the head time-out (2 s in the soak) answers.
        ("a slow head", b"GET / HTTP/1.1\r\nHost: x\r\n", 408),
        // A browser sends one Origin (RFC 6454 §7.3): two are a forgery.
        (
            "two Origins",
            b"GET /soak HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Origin: https://a.example\r\nOrigin: https://b.example\r\n\r\n",
            403,
        ),
        // Dot-segments out of a route, and an encoded slash.
        (
            "a path out of its route",
            b"GET /stuck/../soak HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            400,
        ),
        (
            "an encoded slash",
            b"GET /soak%2F..%2Fstuck HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            400,
        ),
    ];
    let mut round = 0usize;
    while !env.stop.load(Relaxed) {
        let (what, bytes, expected) = cases[round % cases.len()];
        round += 1;
        let status = connect(env.addr).and_then(|mut s| {
            s.write_all(bytes)?;
            Ok(status_of(&mut s))
        });
        match status {
            Ok(status) if status == expected => {
                env.counters.malformed_answered.fetch_add(1, Relaxed);
            }
            Ok(status) => env
                .counters
                .error(format!("{what}: {status}, not {expected}")),
            Err(e) => env.counters.error(format!("{what}: {e}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every 10 s a connection to the fixture plugin's `boom`, which panics in `serve`: the
/// connection is lost, nothing else (6 a minute stays under the panic limit of 10).
pub fn panics(env: &Env) {
    while !env.stop.load(Relaxed) {
        let outcome = connect(env.addr).and_then(|mut s| {
            s.write_all(
                b"GET /serve HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: boom\r\n\r\n",
            )?;
            let status = status_of(&mut s);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            Ok(status)
        });
        match outcome {
            Ok(101) => {
                env.counters.panics_provoked.fetch_add(1, Relaxed);
            }
            Ok(other) => env.counters.error(format!("boom answered {other}")),
            Err(e) => env.counters.error(format!("boom: {e}")),
        }
        sleep_unless_stopped(env.stop, Duration::from_secs(10));
    }
}

/// h2c with prior knowledge through `h2load` (nghttp2), every 5 s: all must succeed.
pub fn h2c(env: &Env) {
    while !env.stop.load(Relaxed) {
        let output = std::process::Command::new("h2load")
            .args(["-n", "200", "-c", "2", "-m", "4"])
            .arg(format!("http://{}/h2/", env.addr))
            .output();
        match output {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("200 succeeded, 0 failed") {
                    env.counters.h2c_requests.fetch_add(200, Relaxed);
                } else {
                    let line = text
                        .lines()
                        .find(|l| l.starts_with("requests:"))
                        .unwrap_or("");
                    env.counters.error(format!("h2load: {line}"));
                }
            }
            Err(e) => {
                env.counters.error(format!("h2load: {e}"));
                return;
            }
        }
        sleep_unless_stopped(env.stop, Duration::from_secs(5));
    }
}

/// SIGHUP every minute: a reload with every file unchanged, under all the load above.
pub fn reloads(env: &Env, daemon: i32) {
    sleep_unless_stopped(env.stop, Duration::from_secs(30));
    while !env.stop.load(Relaxed) {
        // SAFETY: kill(2) with a pid and a signal number; no memory involved.
        if unsafe { libc::kill(daemon, libc::SIGHUP) } != 0 {
            env.counters.error("SIGHUP: the daemon is gone".into());
            return;
        }
        env.counters.reloads.fetch_add(1, Relaxed);
        sleep_unless_stopped(env.stop, Duration::from_secs(60));
    }
}

/// The attacks of issue 19, one a round, every 2 s: each must cost its victim nothing it
/// can notice and leave nothing behind (the sampler watches memory and descriptors).
pub fn hostile(env: &Env) {
    let mut round = 0u64;
    while !env.stop.load(Relaxed) {
        let outcome = match round % 4 {
            0 => deflate_bomb(env.addr),
            1 => stuck_relay(env.addr),
            2 => worker_hog(env.addr),
            _ => exec_environment(env.addr),
        };
        match outcome {
            Ok(()) => {
                env.counters.hostile_rounds.fetch_add(1, Relaxed);
            }
            Err(e) => env
                .counters
                .error(format!("hostile round {}: {e}", round % 4)),
        }
        round += 1;
        sleep_unless_stopped(env.stop, Duration::from_secs(2));
    }
}

const HANDSHAKE_HEADERS: &str = "Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// A masked client frame (mask all zeros: the payload goes as it is).
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Four frames of 16 KiB that inflate to 16 MiB each, to the echo: every echo must come
/// back (compressed, small), and the connection close in order.
fn deflate_bomb(addr: SocketAddr) -> Result<(), String> {
    // A raw DEFLATE stream of 16 MiB of zeros, made once: stored as fixed-Huffman blocks
    // of long back-references, which is what a bomb is. Built by hand, as the soak has no
    // compressor: a block of literal 0 then length-258 copies at distance 1.
    static BOMB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let bomb = BOMB.get_or_init(|| client_frame(0x80 | 0x40 | 0x2, &zeros_deflated(16 << 20)));
    let mut stream = connect(addr).map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /soak HTTP/1.1\r\n{HANDSHAKE_HEADERS}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    if status_of(&mut stream) != 101 {
        return Err("the bomb's handshake was not switched".into());
    }
    for _ in 0..4 {
        stream.write_all(bomb).map_err(|e| e.to_string())?;
    }
    for echo in 0..4 {
        let mut head = [0u8; 2];
        stream
            .read_exact(&mut head)
            .map_err(|e| format!("echo {echo}: {e}"))?;
        if head[0] != 0x80 | 0x40 | 0x2 {
            return Err(format!(
                "echo {echo}: frame {:#x}, not a compressed binary one",
                head[0]
            ));
        }
        let len = match head[1] {
            126 => {
                let mut n = [0u8; 2];
                stream.read_exact(&mut n).map_err(|e| e.to_string())?;
                u16::from_be_bytes(n) as usize
            }
            127 => {
                let mut n = [0u8; 8];
                stream.read_exact(&mut n).map_err(|e| e.to_string())?;
                u64::from_be_bytes(n) as usize
            }
            n => n as usize,
        };
        if len > 1 << 20 {
            return Err(format!("echo {echo}: {len} bytes, not compressed back"));
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).map_err(|e| e.to_string())?;
    }
    stream
        .write_all(&client_frame(0x88, &[0x03, 0xe8]))
        .map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(())
}

/// `len` zeros as raw DEFLATE with a sync flush's end removed (RFC 7692 §7.2.1): fixed
/// Huffman blocks (RFC 1951 §3.2.6), a literal 0 then copies of 258 at distance 1.
fn zeros_deflated(len: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        count: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, bits: u32) {
            self.acc |= value << self.count;
            self.count += bits;
            while self.count >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.count -= 8;
            }
        }
        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u32, bits: u32) {
            let reversed = code.reverse_bits() >> (32 - bits);
            self.put(reversed, bits);
        }
    }
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        count: 0,
    };
    bits.put(0, 1); // not the final block
    bits.put(1, 2); // fixed Huffman
    bits.code(0x30, 8); // literal 0
    let mut left = len - 1;
    while left > 0 {
        let run = left.min(258);
        if run < 3 {
            for _ in 0..run {
                bits.code(0x30, 8);
            }
        } else if run == 258 {
            bits.code(0xC5, 8); // length code 285: 258, no extra bits
            bits.code(0, 5); // distance code 0: 1
        } else {
            // Lengths 3..=257 as codes 257..=284 with their extra bits.
            let (code, base, extra) = length_code(run);
            if code < 280 {
                bits.code(code - 256, 7);
            } else {
                bits.code(0xC0 + (code - 280), 8);
            }
            bits.put((run - base) as u32, extra);
            bits.code(0, 5);
        }
        left -= run;
    }
    bits.code(0, 7); // end of block
                     // The sync flush: an empty stored block, whose 00 00 ff ff the sender leaves out.
    bits.put(0, 1);
    bits.put(0, 2);
    if bits.count > 0 {
        bits.put(0, 8 - bits.count);
    }
    bits.out
}

/// RFC 1951 §3.2.5: the length code for `len` (3..=257), its base, and its extra bits.
fn length_code(len: usize) -> (u32, usize, u32) {
    const BASES: [usize; 28] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227,
    ];
    const EXTRA: [u32; 28] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5,
    ];
    let index = BASES.iter().rposition(|&b| b <= len).unwrap();
    (257 + index as u32, BASES[index], EXTRA[index])
}

/// A WebSocket route to a service that never reads: the client sends until nothing more
/// is taken, then resets. The relay must wait at no cost and end when the client goes.
fn stuck_relay(addr: SocketAddr) -> Result<(), String> {
    let mut stream = connect(addr).map_err(|e| e.to_string())?;
    write!(stream, "GET /stuck HTTP/1.1\r\n{HANDSHAKE_HEADERS}\r\n").map_err(|e| e.to_string())?;
    if status_of(&mut stream) != 101 {
        return Err("the stuck route was not switched".into());
    }
    let frame = client_frame(0x82, &vec![7u8; 64 << 10]);
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let (mut at, mut sent) = (0usize, 0usize);
    while sent < 64 << 20 {
        match stream.write(&frame[at..]) {
            Ok(n) => {
                at = (at + n) % frame.len();
                sent += n;
            }
            Err(_) => break, // nothing taken for half a second
        }
    }
    // A reset: the end the daemon must notice however full its buffers are.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket we own, with a linger struct of its size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    Ok(())
}

/// From another address (127.0.0.2), more blocking connections than one address may hold
/// (a quarter of the 1,024 workers): the rest are refused with 503, what was switched
/// works, and the soak's other clients go on.
fn worker_hog(addr: SocketAddr) -> Result<(), String> {
    let mut held = Vec::new();
    let (mut switched, mut refused) = (0, 0);
    for _ in 0..300 {
        let mut stream = connect_from(addr, [127, 0, 0, 2]).map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .map_err(|e| e.to_string())?;
        match status_of(&mut stream) {
            101 => {
                switched += 1;
                held.push(stream);
            }
            503 => refused += 1,
            other => return Err(format!("the hog got {other}")),
        }
    }
    if switched != 256 || refused != 44 {
        return Err(format!(
            "{switched} switched and {refused} refused, not 256 and 44"
        ));
    }
    let mut last = held.pop().unwrap();
    last.write_all(b"ping").map_err(|e| e.to_string())?;
    let mut back = [0u8; 4];
    last.read_exact(&mut back).map_err(|e| e.to_string())?;
    if &back != b"ping" {
        return Err("the hog's echo is wrong".into());
    }
    Ok(())
}

fn connect_from(addr: SocketAddr, local: [u8; 4]) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = addr else {
        return Err(std::io::ErrorKind::Unsupported.into());
    };
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, bound and connected with sockaddr_in values of their size; the
    // descriptor is handed to a TcpStream that owns it from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(local, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(to.ip().octets(), to.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(stream)
    }
}

/// An `exec:` program's environment, with an httpoxy header, a shadowing one and the
/// daemon's own variables: none of them may reach it.
fn exec_environment(addr: SocketAddr) -> Result<(), String> {
    let stream = connect(addr).map_err(|e| e.to_string())?;
    let request = tungstenite::handshake::client::Request::builder()
        .uri(format!("ws://{addr}/env"))
        .header("Host", addr.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Proxy", "http://evil.example:3128")
        .header("X-User", "alice")
        .header("X_User", "admin")
        .body(())
        .map_err(|e| e.to_string())?;
    let (mut ws, _) = tungstenite::client(request, stream).map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(line)) => lines.push(line.as_str().to_string()),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let forbidden = |l: &&String| {
        l.starts_with("HTTP_PROXY=")
            || l.starts_with("RUST_LOG=")
            || l.starts_with("SWITCHYARD_")
            || *l == "HTTP_X_USER=admin"
    };
    if let Some(line) = lines.iter().find(forbidden) {
        return Err(format!("the program got {line}"));
    }
    if !lines.iter().any(|l| l == "HTTP_X_USER=alice") {
        return Err(format!("no HTTP_X_USER=alice among {} lines", lines.len()));
    }
    Ok(())
}

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !stop.load(Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
}
