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
const PONG: [u8; 6] = [0x8a, 0x04, b'p', b'i', b'n', b'g'];

/// `count` WebSockets that say nothing but a ping a minute (as a browser tab's keep-alive
/// would), each of which must stay open and answer.
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
                101 => open.push(stream),
                other => env
                    .counters
                    .error(format!("idle WebSocket answered {other}")),
            },
            Err(e) => env.counters.error(format!("idle WebSocket: {e}")),
        }
        env.counters.idle_open.store(open.len() as u64, Relaxed);
    }
    let mut next_ping = Instant::now() + Duration::from_secs(60);
    while !env.stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if Instant::now() < next_ping {
            continue;
        }
        next_ping += Duration::from_secs(60);
        open.retain_mut(|stream| {
            let mut pong = [0u8; 6];
            let alive = stream.write_all(&MASKED_PING).is_ok()
                && stream.read_exact(&mut pong).is_ok()
                && pong == PONG;
            if !alive {
                env.counters
                    .error("an idle WebSocket did not answer its ping".into());
            }
            alive
        });
        env.counters.idle_open.store(open.len() as u64, Relaxed);
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
    let cases: [(&str, &[u8], u16); 4] = [
        ("garbage", b"GARBAGE\r\n\r\n", 400),
        ("a head over the limit", large.as_bytes(), 431),
        (
            "Content-Length with Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        // Half a head, then nothing: the head time-out (2 s in the soak) answers.
        ("a slow head", b"GET / HTTP/1.1\r\nHost: x\r\n", 408),
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

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !stop.load(Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
}
