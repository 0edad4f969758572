//! Readiness-driven plugins (`EventProtocol`) on the daemon's event loops: the same
//! guarantees as blocking `serve` (bytes read ahead first, a panic costs one connection, a
//! goodbye on stop, the daemon's time-outs) plus what only this path promises (no thread per
//! connection: thousands at once with the default settings; a slow callback is named).

use crate::support::{raise_fd_limit, upgrade_request, Client, Daemon};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// One event loop, so that a connection that misbehaves shares it with the bystanders.
fn daemon() -> Daemon {
    Daemon::builder()
        .plugin("fixture-evented")
        .plugin("switchyard-echo")
        .env("SWITCHYARD_IO_THREADS", "1")
        .start()
}

fn switched(daemon: &Daemon, token: &str) -> Client {
    let mut client = daemon.client();
    client.send(upgrade_request("/", token));
    assert_eq!(client.response().status, 101, "{token}");
    client
}

#[test]
fn rfc9110_7_8_bytes_sent_with_the_request_come_first() {
    let daemon = daemon();
    let mut client = daemon.client();
    client.send(format!("{}EARLY", upgrade_request("/", "ev-echo")));
    assert_eq!(client.response().status, 101);
    assert_eq!(client.read_line(), "buffered=5", "read ahead by the daemon");
    assert_eq!(client.read_exact(5), b"EARLY", "served first, none lost");
    client.send("after");
    assert_eq!(client.read_exact(5), b"after");
    client.shutdown_write();
    assert!(client.read_to_end().is_empty(), "closed after the echo");
    let logs = daemon.wait_for_log("proto=ev-echo").unwrap_or_else(|l| l);
    assert!(
        logs.contains("\"GET / HTTP/1.1\" 101 proto=ev-echo in="),
        "{logs}"
    );
}

#[test]
fn a_panic_in_on_ready_closes_that_connection_only() {
    let daemon = daemon();
    let mut bystander = switched(&daemon, "ev-echo");
    assert_eq!(bystander.read_line(), "buffered=0");
    let mut victim = switched(&daemon, "ev-boom");
    victim.send("x");
    assert!(victim.read_to_end().is_empty(), "closed after the panic");
    let logs = daemon
        .wait_for_log("panicked in on_ready")
        .unwrap_or_else(|l| l);
    assert!(
        logs.contains("plugin evented panicked in on_ready: boom in on_ready; connection from"),
        "{logs}"
    );
    bystander.send("still here");
    assert_eq!(
        bystander.read_exact(10),
        b"still here",
        "the loop that ran the panic serves on"
    );
    let mut fresh = switched(&daemon, "ev-echo");
    assert_eq!(fresh.read_line(), "buffered=0", "and takes new connections");
    daemon
        .wait_for_metric("switchyard_plugin_panics_total{plugin=\"evented\"} 1")
        .expect("the panic is counted");
    // The connection's access line says why it ended.
    let logs = daemon.wait_for_log("proto=ev-boom").unwrap();
    let line = logs.lines().find(|l| l.contains("proto=ev-boom")).unwrap();
    assert!(line.contains("reason=\"plugin panicked\""), "{line}");
}

#[test]
fn a_panic_in_start_answers_500() {
    let daemon = daemon();
    let mut client = daemon.client();
    client.send(upgrade_request("/", "ev-boom/start"));
    assert_eq!(
        client.response().status,
        500,
        "no 101 for a plugin that failed"
    );
    assert!(client.read_to_end().is_empty());
    let logs = daemon
        .wait_for_log("panicked in start")
        .unwrap_or_else(|l| l);
    assert!(
        logs.contains("plugin evented panicked in start: boom in start"),
        "{logs}"
    );
    let mut client = switched(&daemon, "ev-echo");
    assert_eq!(client.read_line(), "buffered=0");
}

#[test]
fn a_slow_callback_is_logged_naming_the_plugin() {
    let daemon = daemon();
    let mut slow = switched(&daemon, "ev-slow");
    slow.send("z");
    assert_eq!(slow.read_exact(1), b"z");
    let logs = daemon.wait_for_log("took ").unwrap_or_else(|l| l);
    let line = logs
        .lines()
        .find(|l| l.contains("plugin evented took "))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("ms in on_ready on an event loop"), "{line}");
    // The fixture sleeps 30 ms; a loaded machine may stretch the call, never shorten it.
    let took: f64 = line
        .split("took ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(took >= 30.0, "{line}");
    // Counted and measured for operators (other calls may have been slow on a loaded
    // machine too: at least this one).
    let metrics = daemon.metrics();
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
    };
    assert!(value("switchyard_plugin_slow_calls_total{plugin=\"evented\"} ") >= 1.0);
    assert!(value("switchyard_plugin_slowest_call_seconds{plugin=\"evented\"} ") >= 0.030);
}

/// A plugin may set its own write time-out (`Io::set_write_timeout`): here 300 ms against
/// the daemon's 30 s default.
#[test]
fn a_plugins_own_write_timeout_applies() {
    let daemon = daemon();
    let mut client = daemon.client();
    client.send(upgrade_request("/impatient", "ev-echo"));
    assert_eq!(client.response().status, 101);
    client.write_until_dropped(Duration::from_secs(10)); // the plugin's 300 ms, not 30 s
    let logs = daemon.wait_for_log("write time-out").unwrap_or_else(|l| l);
    assert!(
        logs.contains("proto=ev-echo") && logs.contains("write time-out"),
        "{logs}"
    );
}

/// Readiness connections need no worker but count against SWITCHYARD_MAX_CONNECTIONS: past
/// it, the next client waits in the backlog until one closes.
#[test]
fn readiness_connections_count_against_max_connections() {
    let daemon = Daemon::builder()
        .plugin("fixture-evented")
        .env("SWITCHYARD_MAX_CONNECTIONS", "2")
        .env("SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT", "2")
        .start();
    let first = switched(&daemon, "ev-echo");
    let _second = switched(&daemon, "ev-echo");
    let mut waiting = daemon.client();
    waiting.send(upgrade_request("/", "ev-echo"));
    waiting
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        waiting.stream.read(&mut byte).is_err(),
        "not served while two are open"
    );
    drop(first);
    waiting
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(waiting.response().status, 101, "served once one closed");
}

#[test]
fn a_plugin_timer_fires_again_and_again() {
    let daemon = daemon();
    let mut client = switched(&daemon, "ev-timer");
    for _ in 0..3 {
        assert_eq!(client.read_line(), "tick");
    }
}

/// `SWITCHYARD_IDLE_MS`: no bytes either way for that long ends the connection; traffic
/// keeps it.
#[test]
fn the_idle_limit_ends_a_silent_connection_and_spares_a_busy_one() {
    let daemon = Daemon::builder()
        .plugin("fixture-evented")
        .env("SWITCHYARD_IDLE_MS", "1000")
        .start();
    let mut silent = switched(&daemon, "ev-echo");
    let mut busy = switched(&daemon, "ev-echo");
    assert_eq!(silent.read_line(), "buffered=0");
    assert_eq!(busy.read_line(), "buffered=0");
    // A message every 100 ms, ten times inside the limit, however slow a loaded machine.
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(2500) {
        busy.send("ping");
        assert_eq!(busy.read_exact(4), b"ping", "traffic keeps it open");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(silent.read_to_end().is_empty(), "the silent one was closed");
    busy.send("still");
    assert_eq!(busy.read_exact(5), b"still");
    let logs = daemon.wait_for_log("reason=\"idle\"").unwrap_or_else(|l| l);
    assert!(logs.contains("101 proto=ev-echo"), "{logs}");
    daemon
        .wait_for_metric("switchyard_upgraded_ended_total{reason=\"idle\"} 1")
        .expect("counted");
}

/// A client that sends but never reads: the plugin stops reading once its output waits, so
/// the daemon's memory stays flat, and the write time-out ends the connection.
#[test]
fn a_client_that_never_reads_is_dropped_with_memory_bounded() {
    let daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_WRITE_TIMEOUT_MS", "1500")
        .start();
    let mut client = daemon.client();
    client.send(
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(client.response().status, 101);
    let before = daemon.rss_kib();
    let message = crate::websocket::frame(true, 0x2, &[7u8; 16 * 1024]);
    client.stream.set_nonblocking(true).unwrap();
    let (mut sent, mut at) = (0usize, 0usize);
    let began = Instant::now();
    let mut last_progress = Instant::now();
    // Write frame after frame until the connection is gone; stalls are the point.
    loop {
        match client.stream.write(&message[at..]) {
            Ok(n) => {
                sent += n;
                at = (at + n) % message.len();
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => break, // reset: the daemon ended it
        }
        if last_progress.elapsed() > Duration::from_millis(300) {
            let grown = daemon.rss_kib().saturating_sub(before);
            assert!(
                grown < 8 * 1024,
                "daemon memory grew by {grown} KiB while {sent} bytes were sent and none read"
            );
        }
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "the connection was not ended by the write time-out"
        );
    }
    assert!(
        sent < 64 << 20,
        "the daemon stopped taking bytes when its output could not go out ({sent} sent)\n{}",
        daemon.logs()
    );
    let logs = daemon.wait_for_log("write time-out").unwrap_or_else(|l| l);
    assert!(
        logs.contains("101 proto=websocket") && logs.contains("reason=\"write time-out"),
        "{logs}"
    );
}

/// Stopping tells every readiness connection once; the WebSocket plugin says 1001 and the
/// daemon exits as soon as they are gone, long before the grace period.
#[test]
fn rfc6455_7_4_1_stop_says_going_away_and_exits_early() {
    let mut daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .plugin("fixture-evented")
        .env("SWITCHYARD_SHUTDOWN_GRACE_MS", "20000")
        .start();
    let mut socket = crate::websocket::connect(&daemon);
    socket.send(Message::text("before")).unwrap();
    assert_eq!(socket.read().unwrap(), Message::text("before"));
    let mut held = switched(&daemon, "ev-hold");
    assert_eq!(held.read_line(), "held");
    let began = Instant::now();
    daemon.signal(libc::SIGTERM);
    match socket.read() {
        Ok(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::Away);
            assert_eq!(frame.reason, "server stopping");
        }
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert_eq!(held.read_line(), "bye", "the fixture was told once");
    assert!(held.read_to_end().is_empty());
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("exited once its connections were gone");
    assert_eq!(status.code(), Some(0));
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "did not wait out the 20 s grace period: {:?}",
        began.elapsed()
    );
}

#[test]
fn a_readiness_plugin_that_ignores_the_stop_is_closed_when_the_grace_period_ends() {
    let mut daemon = Daemon::builder()
        .plugin("fixture-evented")
        .env("SWITCHYARD_SHUTDOWN_GRACE_MS", "600")
        .start();
    let mut stubborn = daemon.client();
    stubborn.send(upgrade_request("/stubborn", "ev-hold"));
    assert_eq!(stubborn.response().status, 101);
    assert_eq!(stubborn.read_line(), "held");
    let began = Instant::now();
    daemon.signal(libc::SIGTERM);
    assert!(stubborn.read_to_end().is_empty(), "no goodbye from it");
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "kept until the grace period ended, not cut at once: {waited:?}"
    );
    let status = daemon.wait_exit(Duration::from_secs(5)).expect("exited");
    assert_eq!(status.code(), Some(0));
    let logs = daemon.logs();
    assert!(
        logs.contains("grace period over: closing 0 HTTP and 1 upgraded connection(s)"),
        "{logs}"
    );
}

/// No thread per connection: with the default 1,024 workers, 5,000 WebSockets are open at
/// once, each echoing every message whole and in order. (All come from 127.0.0.1, one
/// client address, which by default may hold a quarter of the 10,000 connections: that
/// limit alone is raised.)
#[test]
fn five_thousand_concurrent_websockets_with_the_default_workers() {
    const CONNS: usize = 5000;
    assert!(
        raise_fd_limit() > CONNS as u64 + 100,
        "the test needs descriptors"
    );
    let daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT", "10000")
        .start();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut sockets: Vec<WebSocket<TcpStream>> = (0..CONNS)
        .map(|i| {
            let stream = TcpStream::connect(daemon.addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let (socket, response) = tungstenite::client::client_with_config(
                format!("ws://{}/n{i}", daemon.addr),
                stream,
                Some(config),
            )
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert_eq!(response.status(), 101);
            socket
        })
        .collect();
    for round in 0..3 {
        for (i, socket) in sockets.iter_mut().enumerate() {
            socket
                .send(Message::text(format!("round {round} from {i}")))
                .unwrap();
        }
        for (i, socket) in sockets.iter_mut().enumerate() {
            assert_eq!(
                socket.read().unwrap(),
                Message::text(format!("round {round} from {i}")),
                "connection {i}, round {round}"
            );
        }
    }
    daemon
        .wait_for_metric(&format!(
            "switchyard_upgraded_connections{{mode=\"event\"}} {CONNS}"
        ))
        .expect("all open at once, none on a worker");
    for socket in &mut sockets {
        socket.close(None).unwrap();
    }
    for socket in &mut sockets {
        while socket.read().is_ok() {}
    }
}

/// The blocking path is untouched: `echo` still runs on a worker beside readiness plugins.
#[test]
fn blocking_and_readiness_plugins_serve_side_by_side() {
    let daemon = daemon();
    let mut blocking = switched(&daemon, "echo");
    let mut evented = switched(&daemon, "ev-echo");
    assert_eq!(evented.read_line(), "buffered=0");
    blocking.send("worker");
    evented.send("loop");
    assert_eq!(blocking.read_exact(6), b"worker");
    assert_eq!(evented.read_exact(4), b"loop");
    let text = daemon.metrics();
    assert!(
        text.contains("switchyard_upgraded_connections{mode=\"event\"} 1")
            && text.contains("switchyard_upgraded_connections{mode=\"worker\"} 1"),
        "{text}"
    );
    let mut raw = TcpStream::connect(daemon.addr).unwrap();
    raw.write_all(upgrade_request("/", "ev-echo, echo").as_bytes())
        .unwrap();
    let mut buf = [0u8; 12];
    raw.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101", "the client's first choice is taken");
}

/// A readiness plugin whose `negotiate` must block (dial a backend before the `101`) asks
/// for a worker; the session it accepts there runs on the event loop, which also watches
/// the plugin's backend socket for it.
#[test]
fn negotiate_on_a_worker_then_relay_a_watched_backend_on_the_loop() {
    let daemon = daemon();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    // The backend speaks first, then answers each line in capitals, then hangs up.
    let service = std::thread::spawn(move || {
        let (stream, _) = backend.accept().unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        writer.write_all(b"welcome\n").unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            writer.write_all(line.to_uppercase().as_bytes()).unwrap();
            seen.push(line);
        }
        seen
    });
    let mut client = daemon.client();
    let request = upgrade_request("/", "ev-dial").replace(
        "\r\n\r\n",
        &format!("\r\nX-Backend: {backend_addr}\r\n\r\n"),
    );
    client.send(format!("{request}early\n"));
    let response = client.response();
    assert_eq!(response.status, 101);
    assert_eq!(
        response.header("x-negotiated-on"),
        Some("switchyard-work"), // the kernel keeps 15 bytes of a thread's name
        "negotiated on a worker, where it may block"
    );
    // What the backend says unprompted reaches the client: its socket is watched.
    assert_eq!(client.read_line(), "welcome");
    // The bytes read ahead reach the backend first, then the rest.
    assert_eq!(client.read_line(), "EARLY");
    client.send("on the loop\n");
    assert_eq!(client.read_line(), "ON THE LOOP");
    assert_eq!(service.join().unwrap(), ["early\n", "on the loop\n"]);
    // The backend hung up: so does the connection.
    assert!(client.read_to_end().is_empty());
    let logs = daemon.wait_for_log("proto=ev-dial").unwrap_or_else(|l| l);
    assert!(
        logs.contains("\"GET / HTTP/1.1\" 101 proto=ev-dial"),
        "{logs}"
    );

    // A backend that refuses: the plugin's 502, from the worker.
    let refused = {
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        gone.local_addr().unwrap()
    };
    let mut client = daemon.client();
    client.send(
        upgrade_request("/", "ev-dial")
            .replace("\r\n\r\n", &format!("\r\nX-Backend: {refused}\r\n\r\n")),
    );
    assert_eq!(client.response().status, 502);
    // Other connections were served meanwhile, on the loop.
    let mut echo = switched(&daemon, "ev-echo");
    assert_eq!(echo.read_line(), "buffered=0");
}

/// ABI 1.2's `watch`: a connection may have its loop watch 16 descriptors of its own; the
/// 17th is refused (EMFILE), and the connection goes on.
#[test]
fn a_connection_may_watch_sixteen_descriptors_and_no_more() {
    let daemon = daemon();
    let mut client = switched(&daemon, "ev-watch");
    let line = client.read_line();
    assert!(line.starts_with("watched=16 refused: "), "{line}");
    assert!(line.contains("Too many open files"), "EMFILE: {line}");
    drop(client);
    // Every watch ends with the connection: a new one takes sixteen again.
    let mut again = switched(&daemon, "ev-watch");
    assert!(again.read_line().starts_with("watched=16 "));
}

/// A plugin that ends a peer for taking too little asks for a reset (`Wants::abort`, ABI
/// 1.7): what waits for the peer, the kernel's queue included, is dropped, where a plain
/// close lets the peer take it all, as slowly as it likes. Both from a client whose small
/// receive window leaves most of the plugin's output in the daemon's kernel. (What the
/// kernels hold is looked at, not assumed: with the kernel's default buffers and no
/// autotuning a flake audit saw both ends take about as much, 14 and 12 KB.)
#[test]
fn a_plugins_reset_drops_what_its_peer_has_not_taken_and_a_close_does_not() {
    use std::os::fd::AsRawFd;
    let daemon = daemon();
    let small_window = |socket: &socket2::Socket| socket.set_recv_buffer_size(4096).unwrap();
    // Bytes in the client's own receive queue, whatever its socket's state.
    let unread = |client: &Client| {
        let mut unread: libc::c_int = 0;
        // SAFETY: an open socket, and a c_int for the ioctl to write.
        let rc = unsafe { libc::ioctl(client.stream.as_raw_fd(), libc::FIONREAD, &mut unread) };
        assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
        unread as usize
    };
    // The plugin fills the socket, then ends on its next call, 50 ms later.
    let mut closed = daemon.client_from_with("127.0.0.1", small_window);
    closed.send(upgrade_request("/close", "ev-flood"));
    assert_eq!(closed.response().status, 101);
    std::thread::sleep(Duration::from_millis(300));
    let local = closed.stream.local_addr().unwrap();
    // The daemon's end, closed and still sending: what its kernel holds for the client.
    let held = crate::support::kernel_queues(daemon.addr, local).map_or(0, |q| q.unacked);
    let held = held as usize;
    closed.take_buffered(); // read with the 101
    let waiting = unread(&closed);
    let (taken, reset) = closed.read_to_end_or_reset();
    assert!(!reset, "a close is graceful");
    assert!(held > 1, "the daemon's kernel held nothing for the client");
    // (Its FIN counts one in the kernel's queue.)
    assert!(
        (waiting + held - 1..=waiting + held).contains(&taken.len()),
        "a close delivers what the daemon's kernel held: {} taken, {waiting} were in the \
         client's queue and {held} in the daemon's",
        taken.len()
    );
    let mut aborted = daemon.client_from_with("127.0.0.1", small_window);
    aborted.send(upgrade_request("/abort", "ev-flood"));
    assert_eq!(aborted.response().status, 101);
    std::thread::sleep(Duration::from_millis(300));
    aborted.take_buffered();
    let waiting = unread(&aborted);
    let (taken, reset) = aborted.read_to_end_or_reset();
    assert!(reset, "the reset reaches the client");
    assert!(
        taken.len() <= waiting,
        "{} bytes taken after the reset, {waiting} were in the client's own queue: what the \
         daemon's kernel held ({held} bytes for the closed one) is dropped",
        taken.len()
    );
    let logs = daemon
        .wait_for_log("reason=\"reset by the plugin\"")
        .unwrap_or_else(|l| l);
    assert!(logs.contains("reason=\"reset by the plugin\""), "{logs}");
}
