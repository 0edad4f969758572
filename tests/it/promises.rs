//! What the README promises that no other test checks (issue 14): defaults, limits, the
//! stop, load errors, the access line, settings of the plugins. Each test fails if the
//! promise breaks.

use crate::support::{upgrade_request, Daemon};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `SWITCHYARD_PLUGIN_DIR` unset: the folder holding the executable, as
/// `cargo build --release && ./target/release/switchyard` relies on.
#[test]
fn default_plugin_folder_is_the_executables() {
    let daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .beside_plugins()
        .start();
    let logs = daemon.logs();
    assert!(logs.contains("loaded 1 plugin(s) from"), "{logs}");
    let mut client = daemon.client();
    client.send(upgrade_request("/", "echo"));
    assert_eq!(client.response().status, 101);
}

/// The defaults an operator can see from outside: workers and connection limits in
/// `/metrics`, one event loop per core the process may use, a worker's stack.
#[test]
fn defaults_seen_from_outside() {
    let daemon = Daemon::start();
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("\nswitchyard_workers_max 1024\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nswitchyard_connections_max 10000\n"),
        "{metrics}"
    );
    let cores = std::thread::available_parallelism().unwrap().get();
    // Waited for: lines reach the log from a thread of their own.
    let logs = (daemon.wait_for_log(&format!("{cores} event loop(s); listening on")))
        .unwrap_or_else(|logs| logs);
    assert!(
        logs.contains(&format!("{cores} event loop(s); listening on")),
        "{logs}"
    );
    let mut client = daemon.client();
    client.send(upgrade_request("/", "stack"));
    assert_eq!(client.response().status, 101);
    assert_eq!(
        client.read_line(),
        "stack=262144",
        "SWITCHYARD_WORKER_STACK_BYTES"
    );

    let daemon = Daemon::builder()
        .plugin("fixture-probe")
        .env("SWITCHYARD_WORKER_STACK_BYTES", "131072")
        .start();
    let mut client = daemon.client();
    client.send(upgrade_request("/", "stack"));
    assert_eq!(client.response().status, 101);
    assert_eq!(client.read_line(), "stack=131072");
}

/// `SWITCHYARD_MAX_BODY_BYTES` defaults to 64 KiB: that much reaches the plugin, one byte
/// more is `413` before the body is read. (It was 1 MiB: held in memory until the head
/// time-out, 2,500 connections from one address could make the daemon hold 3 GiB.)
#[test]
fn default_body_limit_is_64_kib() {
    let daemon = Daemon::start();
    let body = vec![b'b'; 64 * 1024];
    let mut client = daemon.client();
    client.send(format!(
        "POST / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: probe\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    client.send(&body);
    assert_eq!(client.response().status, 101);
    let report = client.read_line();
    assert!(report.contains(" body=65536:bbbb"), "{}", &report[..120]);

    let mut client = daemon.client();
    client.send(format!(
        "POST / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: probe\r\nContent-Length: {}\r\n\r\n",
        body.len() + 1
    ));
    assert_eq!(client.response().status, 413);
}

/// A chunked body counts against the limit as it arrives: `413` once it passes it.
/// RFC 9112 §3.2.2: "a server MUST accept the absolute-form in requests". A review found
/// `GET http://host/healthz` answered `404` by the static route `/`: the target is now its
/// path, for the daemon's own answers, static files and upgrades alike.
#[test]
fn rfc9112_3_2_2_an_absolute_form_target_is_served_as_its_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("page.html"), "<p>page</p>").unwrap();
    let daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .env(
            "SWITCHYARD_STATIC_ROUTES",
            &format!("/={}", dir.path().display()),
        )
        .start();
    for (target, status, body) in [
        ("http://test/healthz", 200, "ok\n"),
        ("HTTP://TEST:80/page.html?x=1", 200, "<p>page</p>"),
        ("http://test", 400, ""),
    ] {
        let mut client = daemon.client();
        client.send(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n"));
        let response = client.response();
        assert_eq!(response.status, status, "{target}");
        if status == 200 {
            assert_eq!(response.body_text(), body, "{target}");
        }
    }
    let mut client = daemon.client();
    client.send(upgrade_request("http://test/", "echo"));
    assert_eq!(client.response().status, 101);
}

/// RFC 9110 §6.2: a request of a later HTTP/1 minor version is processed as HTTP/1.1
/// (it was `400`, httparse refusing the version), and one of another major version gets
/// `505` (§15.6.6).
#[test]
fn rfc9110_6_2_http_1_2_is_served_as_1_1_and_http_2_0_gets_505() {
    let daemon = Daemon::builder().plugin("switchyard-echo").start();
    let mut client = daemon.client();
    client.send("GET /healthz HTTP/1.2\r\nHost: test\r\n\r\n");
    let response = client.response();
    assert_eq!(
        (response.status, response.body_text()),
        (200, "ok\n".into())
    );
    // Kept alive as HTTP/1.1 is, and switched as HTTP/1.1 is.
    client.send(upgrade_request("/", "echo").replace("HTTP/1.1", "HTTP/1.9"));
    assert_eq!(client.response().status, 101);
    client.send("hello");
    assert_eq!(client.read_exact(5), b"hello");

    let mut client = daemon.client();
    client.send("GET /healthz HTTP/2.0\r\nHost: test\r\n\r\n");
    assert_eq!(client.response().status, 505);
}

/// `SWITCHYARD_RESPONSE_HEADERS` (nginx's `add_header`, websocketd's `--header`): the
/// operator's fields on the daemon's answers of 1xx to 3xx, the `101` included, except
/// where a response has a field of that name; not on errors (a cache would keep a `503`
/// with a page's `Cache-Control`), and `Strict-Transport-Security` not over cleartext
/// (RFC 6797 §7.2). A framing field is refused at start, naming the setting.
#[test]
fn response_headers_go_on_answers_and_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("page.html"), "<p>page</p>").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/index.html"), "<p>sub</p>").unwrap();
    let daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .env(
            "SWITCHYARD_STATIC_ROUTES",
            &format!("/files/={}", dir.path().display()),
        )
        .env(
            "SWITCHYARD_RESPONSE_HEADERS",
            "X-Frame-Options: DENY\n\
             Cache-Control: no-cache, private\n\
             Strict-Transport-Security: max-age=63072000",
        )
        .start();
    for (request, status, added, cache) in [
        (
            "GET /healthz HTTP/1.1",
            200,
            true,
            Some("no-cache, private"),
        ),
        (
            "GET /files/page.html HTTP/1.1",
            200,
            true,
            Some("no-cache, private"),
        ),
        (
            "HEAD /files/page.html HTTP/1.1",
            200,
            true,
            Some("no-cache, private"),
        ),
        (
            "GET /files/sub HTTP/1.1",
            301,
            true,
            Some("no-cache, private"),
        ),
        (
            "GET /files/none.html HTTP/1.1",
            404,
            false,
            Some("no-store"),
        ),
        ("GET /elsewhere HTTP/1.1", 426, false, None),
        ("POST /healthz HTTP/1.1", 405, false, None),
    ] {
        let mut client = daemon.client();
        client.send(format!("{request}\r\nHost: test\r\n\r\n"));
        let response = match request.starts_with("HEAD") {
            true => client.response_head_only(),
            false => client.response(),
        };
        assert_eq!(response.status, status, "{request}");
        let frame = response.header("X-Frame-Options");
        assert_eq!(frame, added.then_some("DENY"), "{request}");
        assert_eq!(
            response.header("Strict-Transport-Security"),
            None,
            "{request}"
        );
        let caches: Vec<_> = response
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cache-control"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(caches, cache.into_iter().collect::<Vec<_>>(), "{request}");
    }
    let mut client = daemon.client();
    client.send(upgrade_request("/", "echo"));
    let switched = client.response();
    assert_eq!(switched.status, 101);
    assert_eq!(switched.header("X-Frame-Options"), Some("DENY"));
    client.send("after");
    assert_eq!(client.read_exact(5), b"after");

    let (status, logs) = Daemon::builder()
        .env(
            "SWITCHYARD_RESPONSE_HEADERS",
            "X-Frame-Options: DENY\nContent-Length: 0",
        )
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(
        logs.contains("invalid SWITCHYARD_RESPONSE_HEADERS=")
            && logs.contains("Content-Length is written by the daemon alone"),
        "{logs}"
    );
}

#[test]
fn rfc9112_7_1_a_chunked_body_over_the_limit_gets_413() {
    let daemon = Daemon::builder()
        .plugin("fixture-probe")
        .env("SWITCHYARD_MAX_BODY_BYTES", "100")
        .start();
    let mut client = daemon.client();
    client.send("POST / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: probe\r\nTransfer-Encoding: chunked\r\n\r\n");
    client.send(format!(
        "50\r\n{}\r\n50\r\n{}\r\n",
        "x".repeat(80),
        "y".repeat(80)
    ));
    let response = client.response();
    assert_eq!(response.status, 413);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(client.read_to_end().is_empty());
}

/// An upgrade request whose body stops arriving gets `408` at the header time-out.
#[test]
fn rfc9110_15_5_9_a_stalled_upgrade_body_gets_408() {
    let daemon = Daemon::builder()
        .plugin("fixture-probe")
        .env("SWITCHYARD_HEADER_TIMEOUT_MS", "300")
        .start();
    let mut client = daemon.client();
    client.send("POST / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: probe\r\nContent-Length: 10\r\n\r\nabc");
    let response = client.response();
    assert_eq!(response.status, 408);
    assert!(client.read_to_end().is_empty());
}

/// A keep-alive connection with nothing more to say is closed after the header time-out,
/// with no `408` (there is no request to answer).
#[test]
fn rfc9112_9_5_an_idle_keep_alive_connection_is_closed_quietly() {
    let daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .env("SWITCHYARD_HEADER_TIMEOUT_MS", "300")
        .start();
    let mut client = daemon.client();
    client.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.response().status, 200);
    let began = Instant::now();
    assert!(
        client.read_to_end().is_empty(),
        "closed without a word (and cleanly, not reset)"
    );
    assert!(
        began.elapsed() >= Duration::from_millis(250),
        "not before the time-out"
    );
}

/// While stopping, a request in flight is answered (and the connection closed); an
/// upgrade request gets `503` with `Retry-After`.
#[test]
fn an_upgrade_while_stopping_gets_503() {
    let mut daemon = Daemon::builder()
        .plugin("fixture-probe")
        .env("SWITCHYARD_SHUTDOWN_GRACE_MS", "5000")
        .start();
    let mut held = daemon.client();
    held.send(upgrade_request("/stubborn", "hold"));
    assert_eq!(held.response().status, 101);
    assert_eq!(held.read_line(), "held");
    let mut late = daemon.client();
    late.send("GET / HTTP/1.1\r\nHost: t\r\n"); // in flight: not idle when the stop comes
    daemon.signal(libc::SIGTERM);
    daemon
        .wait_for_log("stopping (signal 15)")
        .expect("stopping");
    late.send("Connection: upgrade\r\nUpgrade: probe\r\n\r\n");
    let response = late.response();
    assert_eq!(response.status, 503);
    assert_eq!(response.header("Retry-After"), Some("1"));
    assert!(late.read_to_end().is_empty());
    drop(held);
    let _ = daemon.wait_exit(Duration::from_secs(10));
}

/// SIGINT (Ctrl-C) stops like SIGTERM: exit 0, early when nothing is left to finish.
#[test]
fn sigint_stops_like_sigterm() {
    let mut daemon = Daemon::start();
    let mut client = daemon.client();
    client.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.response().status, 200);
    let began = Instant::now();
    daemon.signal(libc::SIGINT);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("exited on SIGINT");
    assert_eq!(status.code(), Some(0));
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "an idle keep-alive connection does not hold the stop"
    );
    assert!(daemon.logs().contains("stopping (signal 2)"));
}

/// Each load error the README lists, one line naming the file and the reason.
#[test]
fn load_errors_each_name_the_file_and_the_reason() {
    /// A fixture, the settings that break it, and the line it must earn.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            "fixture-noentry",
            &[],
            "not a switchyard plugin: no switchyard_plugin_v1 symbol; skipped",
        ),
        (
            "fixture-raw",
            &[("FIXTURE_RAW", "no-tokens")],
            "declares no Upgrade tokens; skipped",
        ),
        (
            "fixture-raw",
            &[("FIXTURE_RAW", "null")],
            "switchyard_plugin_v1 returned no descriptor; skipped",
        ),
        (
            "fixture-probe",
            &[("PROBE_PANIC_INIT", "1")],
            "init panicked: PROBE_PANIC_INIT is set; skipped",
        ),
    ];
    for (package, env, needle) in cases {
        let mut builder = Daemon::builder().plugin(package).plugin("switchyard-echo");
        for (name, value) in env {
            builder = builder.env(name, value);
        }
        let daemon = builder.start();
        let logs = daemon.logs();
        let file = crate::support::library(package);
        let file = file.file_name().unwrap().to_string_lossy();
        let line = logs
            .lines()
            .find(|l| l.contains(&*file))
            .unwrap_or_else(|| panic!("{package}: nothing about {file}:\n{logs}"));
        assert!(line.contains("ERROR") && line.contains(needle), "{line}");
        assert!(logs.contains("loaded 1 plugin(s)"), "{logs}");
    }
}

/// The access line's fields, as the README lists them: peer, request line, status,
/// protocol, bytes in and out, duration, the request's Host, Origin, Referer and
/// User-Agent where it sent them, and for errors the reason.
#[test]
fn the_access_line_has_every_field() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let local = client.stream.local_addr().unwrap();
    let request = "GET /healthz HTTP/1.1\r\nHost: t\r\nUser-Agent: probe/1.0 \"x\"\r\n\r\n";
    client.send(request);
    assert_eq!(client.response().status, 200);
    let logs = daemon.wait_for_log("\"GET /healthz").unwrap_or_else(|l| l);
    let line = logs.lines().find(|l| l.contains("\"GET /healthz")).unwrap();
    let fields = line.split("switchyard::access] ").nth(1).expect(line);
    let start = format!(
        "{local} \"GET /healthz HTTP/1.1\" 200 in={} out=",
        request.len()
    );
    assert!(fields.starts_with(&start), "{fields}");
    assert!(
        fields.contains(" time=") && fields.ends_with("ms host=\"t\" ua=\"probe/1.0 \\\"x\\\"\""),
        "{fields}"
    );

    let mut echo = daemon.client();
    let request = upgrade_request("/e", "echo").replace(
        "Host: test\r\n",
        "Host: test\r\nOrigin: https://app.example\r\nReferer: https://app.example/\r\n",
    );
    let switching =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n";
    echo.send(format!("{request}12345"));
    assert_eq!(echo.response().status, 101);
    assert_eq!(echo.read_exact(5), b"12345");
    echo.send("678");
    assert_eq!(echo.read_exact(3), b"678");
    echo.shutdown_write();
    assert!(echo.read_to_end().is_empty());
    let logs = daemon.wait_for_log("proto=echo").unwrap_or_else(|l| l);
    let line = logs.lines().find(|l| l.contains("proto=echo")).unwrap();
    let expected = format!(
        "\"GET /e HTTP/1.1\" 101 proto=echo in={} out={} time=",
        request.len() + 8,
        switching.len() + 8
    );
    assert!(
        line.contains(&expected),
        "request and bytes sent early in, 101 and the echo out: {line} (wanted {expected})"
    );
    assert!(
        line.ends_with(
            "s host=\"test\" origin=\"https://app.example\" referer=\"https://app.example/\""
        ),
        "{line}"
    );

    let mut bad = daemon.client();
    bad.send("GET / HTTP/1.1\r\n\r\n");
    assert_eq!(bad.response().status, 400);
    let logs = daemon
        .wait_for_log("reason=\"missing Host")
        .unwrap_or_else(|l| l);
    assert!(
        logs.contains("\"-\" 400 in=18 out=") && logs.contains("reason=\"missing Host header\""),
        "{logs}"
    );
}

/// `RUST_LOG=...,switchyard::access=off` silences the access log and nothing else.
#[test]
fn access_off_silences_the_access_log() {
    let daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .env("RUST_LOG", "debug,switchyard::access=off")
        .start();
    let mut client = daemon.client();
    client.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.response().status, 200);
    client.send(upgrade_request("/", "nothing-known"));
    assert_eq!(client.response().status, 426);
    drop(client);
    let mut marker = daemon.client();
    marker.send("GET /nope HTTP/1.0\r\n\r\n");
    assert_eq!(marker.response().status, 426);
    std::thread::sleep(Duration::from_millis(100));
    let logs = daemon.logs();
    assert!(!logs.contains("switchyard::access"), "{logs}");
    assert!(logs.contains("listening on"), "the rest still logs");
}

/// A plugin's own setting, invalid, stops the start like the daemon's: exit 2, the variable
/// and the value named.
#[test]
fn an_invalid_plugin_setting_stops_the_start() {
    let (status, logs) = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_WEBSOCKET_MAX_MESSAGE", "lots")
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(
        logs.contains("invalid SWITCHYARD_WEBSOCKET_MAX_MESSAGE=\"lots\""),
        "{logs}"
    );
    let (status, logs) = Daemon::builder()
        .plugin("switchyard-tunnel")
        .env("SWITCHYARD_TUNNEL_ROUTES", "/db=nowhere")
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(logs.contains("SWITCHYARD_TUNNEL_ROUTES"), "{logs}");
    assert!(logs.contains("/db=nowhere"), "{logs}");
}

/// permessage-deflate (RFC 7692) on, and `SWITCHYARD_WEBSOCKET_DEFLATE=off`: offered and
/// agreed, a compressed message echoed as it came, an uncompressed one uncompressed; off, never agreed, and a compressed
/// frame is a protocol error.
#[test]
fn rfc7692_deflate_on_and_off() {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    let handshake = "GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
    let text = "hello hello hello hello hello, compressed".repeat(4);
    let mut deflater = Compress::new(Compression::default(), false);
    let mut packed = Vec::with_capacity(1024);
    deflater
        .compress_vec(text.as_bytes(), &mut packed, FlushCompress::Sync)
        .unwrap();
    assert!(packed.ends_with(&[0, 0, 0xff, 0xff]));
    packed.truncate(packed.len() - 4); // RFC 7692 §7.2.1
    let mut frame = crate::websocket::frame(true, 0x1, &packed);
    frame[0] |= 0x40; // RSV1: compressed

    let on = Daemon::builder().plugin("switchyard-websocket").start();
    let mut client = on.client();
    client.send(handshake);
    let response = client.response();
    assert_eq!(response.status, 101);
    let agreed = response.header("Sec-WebSocket-Extensions").expect("agreed");
    assert!(agreed.starts_with("permessage-deflate"), "{agreed}");
    client.send(&frame);
    let head = client.read_exact(2);
    assert_eq!(
        head[0],
        0x80 | 0x40 | 0x1,
        "FIN, RSV1, text: compressed back"
    );
    let len = match head[1] {
        126 => u16::from_be_bytes(client.read_exact(2).try_into().unwrap()) as usize,
        n => n as usize,
    };
    let mut payload = client.read_exact(len);
    assert_eq!(
        payload, packed,
        "its bytes as they came: nothing compressed again"
    );
    payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut inflater = Decompress::new(false);
    let mut plain = Vec::with_capacity(4096);
    inflater
        .decompress_vec(&payload, &mut plain, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(String::from_utf8(plain).unwrap(), text, "the same message");
    // An uncompressed message goes back uncompressed (RFC 7692 §6: RSV1 is per message).
    client.send(crate::websocket::frame(true, 0x1, b"short"));
    assert_eq!(client.read_exact(7), b"\x81\x05short", "FIN, text, no RSV1");

    let off = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_WEBSOCKET_DEFLATE", "off")
        .start();
    let mut client = off.client();
    client.send(handshake);
    let response = client.response();
    assert_eq!(response.status, 101);
    assert_eq!(
        response.header("Sec-WebSocket-Extensions"),
        None,
        "not agreed"
    );
    client.send(&frame);
    let close = client.read_exact(4);
    assert_eq!(close[0], 0x88, "a close frame");
    assert_eq!(
        u16::from_be_bytes([close[2], close[3]]),
        1002,
        "RSV1 unagreed: 1002"
    );
}

/// Traffic keeps a tunnel open past `SWITCHYARD_TUNNEL_IDLE_MS`; silence ends it.
#[test]
fn traffic_keeps_a_tunnel_open_past_its_idle_time() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut stream, _) = backend.accept().unwrap();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let daemon = Daemon::builder()
        .plugin("switchyard-tunnel")
        .env("SWITCHYARD_TUNNEL_ROUTES", &format!("/t={addr}"))
        .env("SWITCHYARD_TUNNEL_IDLE_MS", "300")
        .start();
    let mut client = daemon.client();
    client.send(upgrade_request("/t", "tcp"));
    assert_eq!(client.response().status, 101);
    let began = Instant::now();
    let mut last_echo = began;
    while began.elapsed() < Duration::from_millis(1200) {
        client.send("ping");
        let echoed = client.read_exact_or_logs(4, &daemon);
        assert_eq!(echoed, b"ping", "open at {:?}", began.elapsed());
        last_echo = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
    }
    let (rest, _) = client.read_to_end_or_reset();
    assert!(rest.is_empty());
    assert!(
        last_echo.elapsed() >= Duration::from_millis(290),
        "ended by 300 ms of silence, not before: {:?}",
        last_echo.elapsed()
    );
    echo.join().unwrap();
    let logs = daemon.wait_for_log("ended: idle").unwrap_or_else(|l| l);
    assert!(logs.contains("ended: idle"), "{logs}");
    let _ = TcpStream::connect(daemon.addr);
}

/// `switchyard --check` reads every setting and loads the plugins without binding the
/// port: exit 0 with what would serve which token, or 2 naming the problem.
#[test]
fn check_says_what_would_serve_or_what_is_wrong() {
    // The port is ours, listening: a --check that bound it would fail (address in use).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (status, out, logs) = Daemon::builder()
        .plugin("switchyard-echo")
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_LISTEN", &format!("127.0.0.1:{port}"))
        .run_with_args(&["--check"]);
    assert_eq!(
        status.code(),
        Some(0),
        "the port was never bound: {out}{logs}"
    );
    assert!(
        out.contains(&format!("settings: ok; would listen on 127.0.0.1:{port}")),
        "{out}"
    );
    assert!(out.contains("  echo [echo] on workers:"), "{out}");
    assert!(
        out.contains("  websocket [websocket] on event loops:"),
        "{out}"
    );
    assert!(
        out.contains("Upgrade tokens offered: echo, websocket"),
        "{out}"
    );
    assert!(!logs.contains("listening on"), "{logs}");

    let (status, _, logs) = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_WEBSOCKET_IDLE_MS", "soon")
        .run_with_args(&["--check"]);
    assert_eq!(status.code(), Some(2));
    assert!(
        logs.contains("SWITCHYARD_WEBSOCKET_IDLE_MS=\"soon\""),
        "{logs}"
    );
    let (status, _, logs) = Daemon::builder()
        .env("SWITCHYARD_MAX_TARGET_BYTES", "1")
        .run_with_args(&["--check"]);
    assert_eq!(status.code(), Some(2));
    assert!(
        logs.contains("invalid SWITCHYARD_MAX_TARGET_BYTES=\"1\""),
        "{logs}"
    );
}

/// `--version` names the plugin ABI a plugin must be built for; `--help` lists every
/// setting (the same table the README shows, checked by a unit test).
#[test]
fn version_and_help() {
    let (status, out, _) = Daemon::builder().run_with_args(&["--version"]);
    assert_eq!(status.code(), Some(0));
    assert_eq!(out.trim(), "switchyard 0.1.0 (plugin ABI 1.10)");
    let (status, out, _) = Daemon::builder().run_with_args(&["--help"]);
    assert_eq!(status.code(), Some(0));
    for variable in [
        "SWITCHYARD_LISTEN",
        "SWITCHYARD_IO_THREADS",
        "SWITCHYARD_IDLE_MS",
        "RUST_LOG",
    ] {
        assert!(out.contains(variable), "{variable} in:\n{out}");
    }
    let (status, _, logs) = Daemon::builder().run_with_args(&["--frobnicate"]);
    assert_eq!(status.code(), Some(2));
    assert!(logs.contains("unknown option \"--frobnicate\""), "{logs}");
}

/// `/metrics` is rendered at most once a second per event loop: a scrape right after
/// another shows the same figures, one a second later the new ones.
#[test]
fn metrics_are_rendered_at_most_once_a_second() {
    let daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .env("SWITCHYARD_IO_THREADS", "1")
        .start();
    let mut scraper = daemon.client();
    // (when the daemon rendered them, connections accepted then), by the daemon's clock.
    let mut scrape = || {
        scraper.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        let text = scraper.response().body_text();
        let field = |prefix: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
        };
        (
            field("# rendered at "),
            field("switchyard_connections_accepted_total "),
        )
    };
    // Scrape for 2.5 s, a new connection accepted between scrapes.
    let began = std::time::Instant::now();
    let mut seen: Vec<(u64, u64)> = Vec::new();
    while began.elapsed() < Duration::from_millis(2500) {
        seen.push(scrape());
        let mut other = daemon.client();
        other.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(other.response().status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut renders: Vec<(u64, u64)> = seen.clone();
    renders.dedup();
    assert!(
        renders.len() >= 2,
        "rendered again after a second: {seen:?}"
    );
    assert!(
        seen.len() > renders.len() * 3,
        "most scrapes are served the cached body: {seen:?}"
    );
    for pair in renders.windows(2) {
        let ((earlier, before), (later, after)) = (pair[0], pair[1]);
        assert!(
            later >= earlier + 1000,
            "rendered {} ms apart: {seen:?}",
            later - earlier
        );
        assert!(after > before, "a new render counts the connections since");
    }
    // The same render is the same body: never two renders with one stamp.
    let stamps: std::collections::BTreeSet<u64> = renders.iter().map(|r| r.0).collect();
    assert_eq!(stamps.len(), renders.len(), "{renders:?}");
}
