//! TLS handshake load: on each of N threads, connect, a full TLS handshake (no session
//! resumption: each costs the server a key exchange and a signature), `GET /healthz` with
//! `Connection: close`, read the answer to the server's end, again.

use crate::stats::{micros, percentile, report};
use crate::Args;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub fn run(args: &Args) {
    let addr = args.addr();
    let conns: usize = args.get("conns", 8);
    let warmup = args.secs("warmup", 1.0);
    let measure = args.secs("secs", 5.0);
    let ca = args
        .text("ca")
        .expect("--ca FILE: the authority of the server's certificate");
    let name =
        ServerName::try_from(args.text("name").unwrap_or("localhost").to_string()).expect("--name");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read --ca") {
        roots.add(cert.expect("a certificate")).expect("a CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let measure_from = start + warmup;
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (stop, config, name) = (stop.clone(), config.clone(), name.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut answer = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let socket = TcpStream::connect(addr).expect("connect");
                    socket.set_nodelay(true).unwrap();
                    let conn = rustls::ClientConnection::new(config.clone(), name.clone()).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, socket);
                    tls.write_all(
                        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    )
                    .expect("TLS handshake and request");
                    answer.clear();
                    // The server closes after its answer (with close_notify, or not: both end it).
                    let _ = tls.read_to_end(&mut answer);
                    assert!(
                        answer.starts_with(b"HTTP/1.1 200"),
                        "{}",
                        String::from_utf8_lossy(&answer)
                    );
                    if began >= measure_from {
                        latencies.push(micros(began.elapsed()));
                    }
                }
                latencies
            })
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
        ("handshakes", latencies.len().to_string()),
        ("p50_us", percentile(&latencies, 50.0).to_string()),
        ("p99_us", percentile(&latencies, 99.0).to_string()),
    ]);
}
