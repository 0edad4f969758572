//! Handshake load: on each of N threads, connect, WebSocket handshake, send a close frame,
//! read the server's close and its end of the connection (the server closes first), again.

use crate::setup::{masked_frame, websocket_request};
use crate::stats::{micros, percentile, report};
use crate::Args;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub fn run(args: &Args) {
    let addr = args.addr();
    let conns: usize = args.get("conns", 50);
    let warmup = args.secs("warmup", 1.0);
    let measure = args.secs("secs", 5.0);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let measure_from = start + warmup;
    let request = websocket_request("/");
    let close = masked_frame(0x8, &1000u16.to_be_bytes());
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (stop, request, close) = (stop.clone(), request.clone(), close.clone());
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut latencies = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !stop.load(Ordering::Relaxed) {
                        let began = Instant::now();
                        let mut stream = TcpStream::connect(addr).expect("connect");
                        stream.set_nodelay(true).unwrap();
                        stream.write_all(request.as_bytes()).unwrap();
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = stream.read(&mut buf).expect("read 101");
                            assert!(n > 0, "closed before the 101");
                            seen.extend_from_slice(&buf[..n]);
                        }
                        assert!(
                            seen.starts_with(b"HTTP/1.1 101"),
                            "{}",
                            String::from_utf8_lossy(&seen)
                        );
                        stream.write_all(&close).unwrap();
                        // The server answers the close and closes first: read to its end.
                        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                        if began >= measure_from {
                            latencies.push(micros(began.elapsed()));
                        }
                    }
                    latencies
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(warmup + measure);
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    latencies.sort_unstable();
    report(&[
        (
            "handshakes_per_s",
            format!("{:.0}", latencies.len() as f64 / measure.as_secs_f64()),
        ),
        ("p50_us", percentile(&latencies, 50.0).to_string()),
        ("p99_us", percentile(&latencies, 99.0).to_string()),
    ]);
}
