//! Many quiet HTTP/2 clients, each with a stream now and then: what gRPC clients that keep
//! their connections for hours look like to a proxy. Every connection (prior knowledge)
//! asks `GET /index.html` as it opens, then again every `--every` seconds (each at its own
//! offset), until `--secs` have passed; the connections come from `--sources` loopback
//! addresses (127.0.0.1, .2, ...) so that no one address meets a per-client limit. Prints
//! `RESULT open=N streams=S failed=F p99_ms=P` while the connections are still open (the
//! caller reads the server's memory then), and closes them a few seconds later.
//!
//! Only what the load needs of HTTP/2 is here: frames are split by their headers, the
//! server's SETTINGS and PINGs are acknowledged, and an answer is its stream's END_STREAM;
//! `:status 200` is recognised as the static table's index 8 (what switchyard's relay
//! sends).

use crate::stats::report;
use crate::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Default)]
struct Counts {
    open: AtomicU64,
    streams: AtomicU64,
    failed: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

pub fn run(args: &Args) {
    let addr = args.addr();
    let conns: usize = args.get("conns", 10_000);
    let sources: u8 = args.get("sources", 5);
    let every = args.secs("every", 20.0);
    let secs = args.secs("secs", 60.0);
    let hold = args.secs("hold", 5.0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let counts = Arc::new(Counts::default());
    runtime.block_on(async {
        let end = Instant::now() + secs;
        let mut tasks = Vec::with_capacity(conns);
        for i in 0..conns {
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i % sources as usize) as u8);
            let stream = match connect(source, addr).await {
                Ok(stream) => stream,
                Err(e) => {
                    eprintln!("connection {i}: {e}");
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            counts.open.fetch_add(1, Ordering::Relaxed);
            // Spread the later streams over the period.
            let offset = every.mul_f64((i as f64 * 0.618_034).fract());
            let counts = counts.clone();
            tasks.push(tokio::spawn(client(stream, counts, every, offset, end)));
        }
        tokio::time::sleep_until(end.into()).await;
        let mut latencies = std::mem::take(&mut *counts.latencies_us.lock().unwrap());
        latencies.sort_unstable();
        let p99 = latencies
            .get(latencies.len().saturating_sub(1) * 99 / 100)
            .copied()
            .unwrap_or(0);
        report(&[
            ("open", counts.open.load(Ordering::Relaxed).to_string()),
            (
                "streams",
                counts.streams.load(Ordering::Relaxed).to_string(),
            ),
            ("failed", counts.failed.load(Ordering::Relaxed).to_string()),
            ("p99_ms", format!("{:.2}", p99 as f64 / 1000.0)),
        ]);
        tokio::time::sleep(hold).await;
        for task in tasks {
            task.abort();
        }
    });
}

async fn connect(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// One connection: a stream at once, then one every `every`, until `end`; then it holds.
async fn client(
    mut stream: TcpStream,
    counts: Arc<Counts>,
    every: Duration,
    offset: Duration,
    end: Instant,
) {
    // GET /index.html (RFC 7541: :method GET, :scheme http, :path /index.html indexed,
    // :authority a literal).
    const REQUEST: [u8; 6] = [0x82, 0x86, 0x85, 0x01, 0x01, b't'];
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    if stream.write_all(&hello).await.is_err() {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut input = Vec::new();
    let mut id = 1u32;
    let mut next = Instant::now();
    let mut first = true;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let asked = Instant::now();
        let ok = match stream.write_all(&frame(0x1, 0x5, id, &REQUEST)).await {
            Ok(()) => answer(&mut stream, &mut input, id).await,
            Err(_) => false,
        };
        if !ok {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        counts.streams.fetch_add(1, Ordering::Relaxed);
        let took = asked.elapsed().as_micros().min(u32::MAX as u128) as u32;
        counts.latencies_us.lock().unwrap().push(took);
        id += 2;
        next = asked
            + if first {
                offset.max(Duration::from_millis(1))
            } else {
                every
            };
        first = false;
    }
    // Held open (and quiet) until the caller has measured and the task is dropped.
    std::future::pending::<()>().await;
}

/// Reads frames until stream `id` ends; true if its answer was `:status 200`.
async fn answer(stream: &mut TcpStream, input: &mut Vec<u8>, id: u32) -> bool {
    let mut status_ok = false;
    let mut buf = [0u8; 16_384];
    loop {
        while input.len() >= 9 {
            let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            if input.len() < 9 + len {
                break;
            }
            let (kind, flags) = (input[3], input[4]);
            let on = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
            let payload = input[9..9 + len].to_vec();
            input.drain(..9 + len);
            let reply = match kind {
                0x4 if flags & 0x1 == 0 => Some(frame(0x4, 0x1, 0, &[])),
                0x6 if flags & 0x1 == 0 => Some(frame(0x6, 0x1, 0, &payload)),
                _ => None,
            };
            if let Some(reply) = reply {
                if stream.write_all(&reply).await.is_err() {
                    return false;
                }
                continue;
            }
            match kind {
                0x7 | 0x3 if kind == 0x7 || on == id => return false,
                0x1 if on == id => {
                    status_ok |= skip_size_updates(&payload).first() == Some(&0x88);
                    if flags & 0x1 != 0 {
                        return status_ok;
                    }
                }
                0x0 if on == id && flags & 0x1 != 0 => return status_ok,
                _ => {}
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => input.extend_from_slice(&buf[..n]),
        }
    }
}

/// A field block past the dynamic table size updates it may begin with (RFC 7541 §6.3: a
/// server that lets its table go empties the client's this way).
fn skip_size_updates(mut block: &[u8]) -> &[u8] {
    while let Some(&first) = block.first().filter(|&&b| b & 0xe0 == 0x20) {
        // A 5-bit prefix; at its largest, continuation bytes follow while their top bit is
        // set (§5.1).
        let mut taken = 1;
        if first & 0x1f == 0x1f {
            while block.get(taken).is_some_and(|b| b & 0x80 != 0) {
                taken += 1;
            }
            taken += 1;
        }
        block = block.get(taken..).unwrap_or_default();
    }
    block
}
