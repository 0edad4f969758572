//! The PROXY protocol in front of HTTP: real HAProxy (Debian's `haproxy`; `.ci/run` installs
//! it) with `send-proxy` and `send-proxy-v2` before a WebSocket, and the refusals.

use crate::support::Daemon;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::Duration;

/// HAProxy in TCP mode on a free port, passing connections to `daemon` with `send_proxy`.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(daemon: SocketAddr, send_proxy: &str) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("haproxy.cfg");
        let started = crate::support::spawn_on_free_port("Debian's haproxy package", |addr| {
            std::fs::write(
                &config,
                format!(
                    "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                     frontend in\n  bind {addr}\n  default_backend switchyard\n\
                     backend switchyard\n  server s1 {daemon} {send_proxy}\n"
                ),
            )
            .unwrap();
            let mut command = Command::new("haproxy");
            command.arg("-db").arg("-f").arg(&config); // -db: in the foreground
            command
        });
        let (child, addr) = started.expect("haproxy did not start");
        Haproxy {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection from 127.0.0.2, so that the client's address is not HAProxy's.
fn connect_from_127_0_0_2(to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn daemon(env: &[(&str, &str)]) -> Daemon {
    let mut builder = Daemon::builder().plugin("switchyard-websocket");
    for (name, value) in env {
        builder = builder.env(name, value);
    }
    builder.start()
}

#[test]
fn haproxy_send_proxy_v1_and_v2_carry_the_client_address_through_a_websocket() {
    for (send_proxy, mode) in [
        ("send-proxy", "v1"),
        ("send-proxy-v2", "v2"),
        ("send-proxy-v2", "any"),
    ] {
        let daemon = daemon(&[
            ("SWITCHYARD_PROXY_PROTOCOL", mode),
            ("SWITCHYARD_PROXY_FROM", "127.0.0.1"),
        ]);
        let haproxy = Haproxy::start(daemon.addr, send_proxy);
        let stream = connect_from_127_0_0_2(haproxy.addr);
        let client_addr = stream.local_addr().unwrap();
        let (mut ws, response) =
            tungstenite::client(format!("ws://{}/chat", haproxy.addr), stream).expect("handshake");
        assert_eq!(response.status(), 101);
        ws.send(tungstenite::Message::text("through the balancer"))
            .unwrap();
        let echoed = ws.read().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), "through the balancer");
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        drop(ws);
        let needle = format!("{client_addr} \"GET /chat HTTP/1.1\" 101");
        let logs = daemon
            .wait_for_log(&needle)
            .unwrap_or_else(|e| panic!("{send_proxy} ({mode}): {e}"));
        // The access line of this client's connection, not any line of the log.
        let line = logs.lines().find(|l| l.contains(&needle)).unwrap();
        assert!(line.contains("proto=websocket"), "{line}");
    }
}

#[test]
fn a_header_from_a_peer_not_allowed_is_refused_and_plain_http_from_it_served() {
    let daemon = daemon(&[
        ("SWITCHYARD_PROXY_PROTOCOL", "any"),
        ("SWITCHYARD_PROXY_FROM", "10.0.0.0/8"),
    ]);
    let mut client = TcpStream::connect(daemon.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(
            b"PROXY TCP4 203.0.113.9 10.0.0.1 4000 80\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    assert!(answer.is_empty(), "closed without an answer: {answer:?}");
    daemon
        .wait_for_log("a PROXY protocol header from a peer not in SWITCHYARD_PROXY_FROM")
        .unwrap();
    // The same peer, speaking plain HTTP, is served.
    let mut client = daemon.client();
    client.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.response().status, 200);
}

#[test]
fn an_allowed_peer_must_send_the_header_and_may_send_it_in_pieces() {
    let daemon = daemon(&[
        ("SWITCHYARD_PROXY_PROTOCOL", "v1"),
        ("SWITCHYARD_PROXY_FROM", "127.0.0.0/8"),
    ]);
    let mut client = daemon.client();
    client.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        client.read_to_end().is_empty(),
        "no header: closed, no answer"
    );
    daemon
        .wait_for_log("no PROXY protocol header from a peer in SWITCHYARD_PROXY_FROM")
        .unwrap();

    let mut client = daemon.client();
    client.send("PROXY TCP4 198.51.100.7 10.0.0.1 41");
    client.wait_until_read();
    client.send("000 80\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.response().status, 200);
    daemon
        .wait_for_log("198.51.100.7:41000 \"GET /healthz HTTP/1.1\" 200")
        .unwrap();

    // Refusals are logged once a second at most (daemon::throttle): the next second's.
    std::thread::sleep(Duration::from_millis(1100));
    let mut client = daemon.client();
    client.send("PROXY TCP4 198.51.100.7 10.0.0.1 41000\r\nGET / HTTP/1.1\r\n\r\n");
    assert!(client.read_to_end().is_empty(), "malformed: closed");
    daemon
        .wait_for_log("a malformed PROXY protocol v1 header")
        .unwrap();
}

#[test]
fn the_protocol_on_without_its_peers_is_refused_at_start() {
    let (status, logs) = Daemon::builder()
        .env("SWITCHYARD_PROXY_PROTOCOL", "v2")
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(logs.contains("SWITCHYARD_PROXY_FROM"), "{logs}");
    let (status, logs) = Daemon::builder()
        .env("SWITCHYARD_PROXY_PROTOCOL", "yes")
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(logs.contains("expected off, v1, v2 or any"), "{logs}");
}

/// Three reviews: connections from a peer in `SWITCHYARD_PROXY_FROM` whose header had not
/// come counted against no client's limit, so one such host that connected and sent
/// nothing held every connection slot for the head time-out, and another client waited
/// that long. Counted among the balancer's own connections instead, they got its health
/// checks (a header naming no client) refused once idle clients held its share; given a
/// few seconds past the share, a flood of them held every slot again; closing the newest
/// past the share closed every client behind a balancer that sends the header with its
/// client's first bytes. Now they count among its connections awaiting a header, apart
/// (4 of 16 here), and past that the oldest make room, as nginx closes idle connections:
/// a new connection whose header comes later is served, the health check included.
#[test]
fn connections_awaiting_their_proxy_header_count_against_the_balancers_address() {
    let daemon = daemon(&[
        ("SWITCHYARD_PROXY_PROTOCOL", "v1"),
        ("SWITCHYARD_PROXY_FROM", "127.0.0.1"),
        ("SWITCHYARD_MAX_CONNECTIONS", "16"),
        ("SWITCHYARD_IO_THREADS", "1"),
    ]);
    let held = |stream: &TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let read = (&mut &*stream).read(&mut [0u8; 64]);
        matches!(read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    let silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(daemon.addr).unwrap())
        .collect();
    assert!(
        silent.iter().all(held),
        "the share: 4 awaiting their header"
    );
    let newer = TcpStream::connect(daemon.addr).unwrap();
    assert!(!held(&silent[0]), "the oldest closed for a new one");
    assert!(
        held(&newer) && silent[1..].iter().all(held),
        "the others held"
    );
    daemon
        .wait_for_log("oldest on this loop closed for new ones")
        .unwrap();
    // With the share held, headers that come 300 ms after their connection.
    let late = |first: &str| {
        let mut client = daemon.client();
        std::thread::sleep(Duration::from_millis(300));
        client.send(format!("{first}GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"));
        client.response().status
    };
    let proxied = "PROXY TCP4 198.51.100.7 10.0.0.1 41000 80\r\n";
    assert_eq!(late(proxied), 200, "a client behind the balancer");
    assert_eq!(
        late("PROXY UNKNOWN\r\n"),
        200,
        "the balancer's health check"
    );
    let mut other = connect_from_127_0_0_2(daemon.addr);
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A balancer that starts a PROXY protocol header and never finishes it is closed at the
/// head time-out, with a line saying why.
#[test]
fn an_incomplete_header_is_closed_at_the_head_timeout() {
    let daemon = daemon(&[
        ("SWITCHYARD_PROXY_PROTOCOL", "v1"),
        ("SWITCHYARD_PROXY_FROM", "127.0.0.1"),
        ("SWITCHYARD_HEADER_TIMEOUT_MS", "300"),
    ]);
    let mut client = daemon.client();
    client.send("PROXY TCP4 198.51.100.7");
    let started = std::time::Instant::now();
    assert!(client.read_to_end().is_empty(), "closed, nothing answered");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the time-out"
    );
    daemon
        .wait_for_log("PROXY protocol header incomplete within the head time-out")
        .unwrap();
}

/// The address a PROXY protocol header gives is the one a plugin is told
/// (`Request::peer`), not the balancer's.
#[test]
fn plugins_see_the_address_the_header_gives() {
    let daemon = Daemon::builder()
        .plugin("fixture-probe")
        .env("SWITCHYARD_PROXY_PROTOCOL", "v1")
        .env("SWITCHYARD_PROXY_FROM", "127.0.0.1")
        .start();
    let mut client = daemon.client();
    client.send(format!(
        "PROXY TCP4 198.51.100.7 10.0.0.1 41000 80\r\n{}",
        crate::support::upgrade_request("/", "whoami")
    ));
    assert_eq!(client.response().status, 101);
    assert_eq!(client.read_line(), "peer=198.51.100.7:41000");
}

/// From an attacker's review of the front door: a v2 header longer than a request head may
/// be (its length is declared in its first 16 bytes, up to 65,551) was never read whole,
/// as reading stops past `SWITCHYARD_MAX_HEADER_BYTES`, and the connection waited for the
/// head time-out. It is refused as soon as its length is known, with a line saying why.
#[test]
fn a_v2_header_longer_than_a_head_may_be_is_refused_at_once() {
    let daemon = daemon(&[
        ("SWITCHYARD_PROXY_PROTOCOL", "v2"),
        ("SWITCHYARD_PROXY_FROM", "127.0.0.1"),
        ("SWITCHYARD_HEADER_TIMEOUT_MS", "5000"),
    ]);
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    header.extend_from_slice(&20_000u16.to_be_bytes());
    header.extend_from_slice(&[0u8; 12]);
    let mut client = daemon.client();
    client.send(&header);
    let started = std::time::Instant::now();
    assert!(client.read_to_end().is_empty(), "closed, nothing answered");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed at once, not at the head time-out"
    );
    daemon
        .wait_for_log("a PROXY protocol v2 header longer than SWITCHYARD_MAX_HEADER_BYTES")
        .unwrap();
}
