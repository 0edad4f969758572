//! WebSocket routes to services (`SWITCHYARD_WEBSOCKET_ROUTES`), websockify's behaviour:
//! real TCP and Unix socket services, a real client (tungstenite).

use crate::support::Daemon;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::thread::JoinHandle;
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

type Client = WebSocket<TcpStream>;

fn daemon(routes: &str) -> Daemon {
    Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_WEBSOCKET_ROUTES", routes)
        .start()
}

fn connect(daemon: &Daemon, path: &str) -> Client {
    let stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    tungstenite::client(format!("ws://{}{path}", daemon.addr), stream)
        .expect("handshake")
        .0
}

/// A TCP service that accepts one connection and runs `serve` on it.
fn tcp_service(serve: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        serve(stream)
    });
    (addr, handle)
}

/// Reads binary messages until `len` bytes came (the service's bytes arrive as binary
/// messages cut wherever its writes and our reads cut them).
fn read_bytes(client: &mut Client, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        match client.read().expect("a message") {
            Message::Binary(bytes) => got.extend_from_slice(&bytes),
            other => panic!("expected binary, got {other:?}"),
        }
    }
    got
}

#[test]
fn tcp_route_relays_both_ways_and_a_service_that_speaks_first_is_heard() {
    let (addr, service) = tcp_service(|mut stream| {
        stream.write_all(b"hello from the service\n").unwrap();
        // Then echo until the client is done.
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => stream.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    let daemon = daemon(&format!("/svc=tcp://{addr},/=echo"));
    let mut client = connect(&daemon, "/svc/1");
    assert_eq!(read_bytes(&mut client, 23), b"hello from the service\n");
    // Text and binary payloads alike go to the service as bytes.
    client.send(Message::text("text ")).unwrap();
    client
        .send(Message::binary(b"and binary".to_vec()))
        .unwrap();
    assert_eq!(read_bytes(&mut client, 15), b"text and binary");
    // UTF-8 cut anywhere by the service comes back as bytes, whole.
    client.send(Message::text("héllo wörld")).unwrap();
    assert_eq!(read_bytes(&mut client, 13), "héllo wörld".as_bytes());
    // The client closes: the service sees its end of input.
    client.close(None).unwrap();
    while client.read().is_ok() {}
    service.join().unwrap();
    // Other paths are still the echo.
    let mut echo = connect(&daemon, "/other");
    echo.send(Message::text("echo")).unwrap();
    assert_eq!(echo.read().unwrap(), Message::text("echo"));
}

#[test]
fn a_16_mib_message_reaches_a_tcp_service_whole() {
    const SIZE: usize = 16 * 1024 * 1024;
    let (addr, service) = tcp_service(|mut stream| {
        let mut hasher = Sha256::new();
        let mut left = SIZE;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = stream.read(&mut buf[..left.min(64 * 1024)]).unwrap();
            assert!(n > 0, "the service got {} bytes of {SIZE}", SIZE - left);
            hasher.update(&buf[..n]);
            left -= n;
        }
        let digest = format!("{:x}", hasher.finalize());
        stream.write_all(digest.as_bytes()).unwrap();
    });
    let daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_WEBSOCKET_ROUTES", &format!("/big=tcp://{addr}"))
        .env("SWITCHYARD_WEBSOCKET_MAX_MESSAGE", &(SIZE + 1).to_string())
        .start();
    let mut client = connect(&daemon, "/big");
    let payload: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let expected = format!("{:x}", Sha256::digest(&payload));
    client.send(Message::binary(payload)).unwrap();
    assert_eq!(read_bytes(&mut client, 64), expected.as_bytes());
    service.join().unwrap();
}

#[test]
fn the_service_ending_closes_1000_and_its_failure_before_the_101_is_502() {
    let (addr, service) = tcp_service(|mut stream| {
        stream.write_all(b"bye").unwrap();
    });
    let daemon = daemon(&format!(
        "/brief=tcp://{addr},/refused=tcp://127.0.0.1:1,/echo=echo"
    ));
    let mut client = connect(&daemon, "/brief");
    assert_eq!(read_bytes(&mut client, 3), b"bye");
    service.join().unwrap();
    match client.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected close 1000, got {other:?}"),
    }
    // Dialled before the 101: a refusing service is the client's 502.
    let mut raw = TcpStream::connect(daemon.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(
        b"GET /refused HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    // A path no route covers is declined: the client gets 426.
    let mut raw = TcpStream::connect(daemon.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(
        b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 12];
    raw.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 426");
}

#[test]
fn unix_route_relays_to_a_unix_socket_service() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let service = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).unwrap();
        stream.write_all(&buf.to_ascii_uppercase()).unwrap();
    });
    let daemon = daemon(&format!("/logs=unix:{}", path.display()));
    let mut client = connect(&daemon, "/logs");
    client.send(Message::text("quiet")).unwrap();
    assert_eq!(read_bytes(&mut client, 5), b"QUIET");
    service.join().unwrap();
}

#[test]
fn a_wrong_route_stops_the_start_naming_it() {
    let (status, logs) = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_WEBSOCKET_ROUTES", "/vnc=tcp://nowhere")
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(logs.contains("\"/vnc=tcp://nowhere\""), "{logs}");
}

#[test]
fn a_client_that_never_reads_holds_the_service_back_with_memory_bounded() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let (addr, _service) = tcp_service(move |mut stream| {
        let chunk = vec![7u8; 64 * 1024];
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // 256 MiB, if anyone would take it.
        for _ in 0..4096 {
            if stream.write_all(&chunk).is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    let daemon = daemon(&format!("/flood=tcp://{addr}"));
    let before = daemon.rss_kib();
    let client = connect(&daemon, "/flood");
    std::thread::sleep(Duration::from_secs(2));
    let moved = written.load(Ordering::Relaxed);
    assert!(
        moved < 32 << 20,
        "the service wrote {moved} bytes to a client that reads nothing"
    );
    let grown = daemon.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "the daemon grew {grown} KiB");
    drop(client);
}
