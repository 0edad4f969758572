//! Plugins that describe themselves (issue 24): their metrics in `/metrics`, their settings
//! in `--help`, the access log as JSON, and the status page with who may read it.

use crate::support::{c_plugin, library, upgrade_request, Daemon};
use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

/// The value of the sample `series` (`name{labels}` exactly as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// Waits until every `(series, value)` holds in `/metrics` (rendered at most once a second).
fn wait_for_samples(daemon: &Daemon, wanted: &[(&str, f64)]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = daemon.metrics();
        let wrong: Vec<String> = wanted
            .iter()
            .filter(|(s, v)| sample(&text, s) != Some(*v))
            .map(|(s, v)| format!("{s} = {v}: found {:?}", sample(&text, s)))
            .collect();
        if wrong.is_empty() {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}\n{text}",
            wrong.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An echo service for `tcp://` routes: each connection on a thread of its own.
fn echo_service() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut back = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut stream, &mut back);
            });
        }
    });
    addr
}

/// A port nothing listens on (a connection there is refused).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn websocket(daemon: &Daemon, path: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    tungstenite::client(format!("ws://{}{path}", daemon.addr), stream)
        .expect("handshake")
        .0
}

/// The WebSocket plugin counts per route what clients did: connections open and
/// switched, refusals by status, bytes each way, close codes, time to reach the service.
#[test]
fn issue24_websocket_routes_count_what_their_clients_did() {
    let service = echo_service();
    let routes = format!(
        "/svc=tcp://{service},/down=tcp://127.0.0.1:{},/=echo",
        closed_port()
    );
    let daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_WEBSOCKET_ROUTES", &routes)
        .start();
    let mut clients: Vec<_> = (0..3).map(|_| websocket(&daemon, "/svc")).collect();
    clients[0].send(Message::binary(vec![7u8; 100])).unwrap();
    assert_eq!(clients[0].read().unwrap().into_data().len(), 100);
    for _ in 0..2 {
        let refused = tungstenite::client(
            format!("ws://{}/down", daemon.addr),
            TcpStream::connect(daemon.addr).unwrap(),
        );
        match refused {
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                assert_eq!(response.status(), 502)
            }
            other => panic!("expected 502, got {:?}", other.map(|_| ())),
        }
    }
    let mut closing = clients.pop().unwrap();
    closing
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        }))
        .unwrap();
    while closing.read().is_ok() {}
    let text = wait_for_samples(
        &daemon,
        &[
            ("switchyard_websocket_open_connections{route=\"/svc\"}", 2.0),
            (
                "switchyard_websocket_connections_total{route=\"/svc\"}",
                3.0,
            ),
            (
                "switchyard_websocket_connections_total{route=\"/down\"}",
                0.0,
            ),
            (
                "switchyard_websocket_refused_total{route=\"/down\",status=\"502\"}",
                2.0,
            ),
            (
                "switchyard_websocket_closes_total{route=\"/svc\",by=\"client\",code=\"1001\"}",
                1.0,
            ),
            (
                "switchyard_websocket_connect_seconds_count{route=\"/svc\"}",
                3.0,
            ),
            (
                "switchyard_websocket_connect_seconds_count{route=\"/down\"}",
                2.0,
            ),
        ],
    );
    // 100 bytes each way and their framing: a masked client frame is 8 bytes longer than
    // its payload, a server frame 4. A call's bytes are counted once it returns, after
    // its writes: on a loaded machine the client may have read them and the page be
    // rendered first (CI, once), so the page is asked again until they are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut text = text;
    loop {
        let bytes = |direction: &str| {
            let name = format!(
                "switchyard_websocket_bytes_total{{route=\"/svc\",direction=\"{direction}\"}}"
            );
            sample(&text, &name).unwrap_or(0.0)
        };
        if bytes("in") >= 108.0 && bytes("out") >= 104.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
        text = daemon.metrics();
    }
    assert!(
        text.contains("# TYPE switchyard_websocket_connect_seconds histogram\n"),
        "{text}"
    );
    drop(clients);
    wait_for_samples(
        &daemon,
        &[("switchyard_websocket_open_connections{route=\"/svc\"}", 0.0)],
    );
}

/// A plugin written in C declares a setting and three metrics through the header, and
/// counts in the cells it is lent: the daemon renders them under its name.
#[test]
fn issue24_a_c_plugin_declares_its_setting_and_metrics() {
    let daemon = Daemon::builder()
        .library_file(&c_plugin(&[]))
        .env("SWITCHYARD_C_ECHO_GREETING", "hello from C")
        .start();
    let mut client = daemon.client();
    client.send(upgrade_request("/", "c-echo"));
    assert_eq!(client.response().status, 101);
    assert_eq!(
        client.read_line(),
        "hello from C",
        "the setting it declares"
    );
    assert_eq!(client.read_line(), "buffered=0");
    client.send("hello");
    assert_eq!(client.read_exact(5), b"hello");
    client.send(vec![b'x'; 300]);
    assert_eq!(client.read_exact(300).len(), 300);
    let text = wait_for_samples(
        &daemon,
        &[
            ("switchyard_c_echo_connections_total", 1.0),
            ("switchyard_c_echo_bytes_total{direction=\"back\"}", 305.0),
            ("switchyard_c_echo_read_bytes_bucket{le=\"16\"}", 1.0),
            ("switchyard_c_echo_read_bytes_bucket{le=\"256\"}", 1.0),
            ("switchyard_c_echo_read_bytes_bucket{le=\"4096\"}", 2.0),
            ("switchyard_c_echo_read_bytes_bucket{le=\"+Inf\"}", 2.0),
            ("switchyard_c_echo_read_bytes_sum", 305.0),
            ("switchyard_c_echo_read_bytes_count", 2.0),
        ],
    );
    assert!(
        text.contains("# HELP switchyard_c_echo_bytes_total Bytes echoed back.\n# TYPE switchyard_c_echo_bytes_total counter\n"),
        "{text}"
    );
    let (status, out, _) = Daemon::builder()
        .library_file(&c_plugin(&[]))
        .run_with_args(&["--help"]);
    assert_eq!(status.code(), Some(0));
    assert!(
        out.contains("plugin c-echo:\n  SWITCHYARD_C_ECHO_GREETING (default: none)\n      a line said before the echo\n"),
        "{out}"
    );
}

/// The `SWITCHYARD_*` names in `text`'s lines that start with `prefix` then the name.
fn names_after(text: &str, prefix: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            name.starts_with("SWITCHYARD_").then_some(name)
        })
        .collect()
}

/// `--help` lists the reference plugins' settings as they declare them (each plugin's
/// unit test checks that what it declares is what it reads), and they are exactly the
/// plugin rows of the README's settings table.
#[test]
fn issue24_help_lists_exactly_the_settings_the_plugins_read() {
    let (status, out, _) = Daemon::builder()
        .plugin("switchyard-websocket")
        .plugin("switchyard-tunnel")
        .plugin("switchyard-h2c")
        .plugin("switchyard-echo")
        .run_with_args(&["--help"]);
    assert_eq!(status.code(), Some(0));
    let (_, plugins) = out
        .split_once("The plugins' settings")
        .expect("a section for the plugins' settings");
    let listed = names_after(plugins, "  ");
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let documented: BTreeSet<String> = names_after(&readme, "| `")
        .into_iter()
        .filter(|n| {
            ["WEBSOCKET_", "TUNNEL_", "H2C_"]
                .iter()
                .any(|p| n[11..].starts_with(p))
        })
        .collect();
    assert_eq!(listed, documented, "--help against the README's table");
    assert!(
        listed.contains("SWITCHYARD_WEBSOCKET_ROUTES") && listed.len() >= 19,
        "{out}"
    );
    for plugin in ["websocket", "tunnel", "h2c"] {
        assert!(out.contains(&format!("plugin {plugin}:\n")), "{out}");
    }
}

/// A misspelt setting is named at start: nothing reads it.
#[test]
fn issue24_a_setting_nobody_reads_is_named_at_start() {
    let daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_WEBSOCKET_ROUTE", "/=echo")
        .start();
    let logs = daemon
        .wait_for_log("SWITCHYARD_WEBSOCKET_ROUTE is set, but neither")
        .unwrap_or_else(|logs| panic!("{logs}"));
    assert!(!logs.contains("SWITCHYARD_LISTEN is set, but"), "{logs}");
}

/// `SWITCHYARD_ACCESS_LOG=json`: each access line is one JSON object alone on its line,
/// with what the text line says.
#[test]
fn issue24_the_access_log_as_json() {
    let daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_ACCESS_LOG", "json")
        .start();
    let mut client = daemon.client();
    client.send(
        "GET /plain?q=\"x\" HTTP/1.1\r\nHost: t\r\nUser-Agent: a \"quoted\" agent\r\n\
         Referer: http://t/page\r\n\r\n",
    );
    assert_eq!(client.response().status, 426);
    let mut ws = websocket(&daemon, "/chat");
    ws.send(Message::text("hi")).unwrap();
    ws.read().unwrap();
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    let logs = daemon
        .wait_for_log("\"proto\":\"websocket\"")
        .unwrap_or_else(|logs| panic!("{logs}"));
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let plain = lines
        .iter()
        .find(|v| v["status"] == 426)
        .expect("the 426's line");
    assert_eq!(plain["method"], "GET");
    assert_eq!(plain["target"], "/plain?q=\"x\"");
    assert_eq!(plain["version"], "HTTP/1.1");
    assert!(plain["in"].as_u64().unwrap() > 30 && plain["out"].as_u64().unwrap() > 30);
    assert_eq!(plain["host"], "t");
    assert_eq!(plain["user_agent"], "a \"quoted\" agent");
    assert_eq!(plain["referer"], "http://t/page");
    assert!(plain["origin"].is_null(), "not sent: null");
    let switched = lines
        .iter()
        .find(|v| v["status"] == 101)
        .expect("the WebSocket's line");
    assert_eq!(switched["proto"], "websocket");
    assert_eq!(switched["target"], "/chat");
    assert_eq!(
        switched["host"],
        daemon.addr.to_string(),
        "tungstenite's Host"
    );
    assert!(switched["time"].as_str().unwrap().ends_with('Z'));
    assert!(switched["seconds"].as_f64().is_some());
    // A setting refused at start is said in JSON too.
    let (status, stderr) = Daemon::builder()
        .env("SWITCHYARD_ACCESS_LOG", "json")
        .env("SWITCHYARD_IDLE_MS", "abc")
        .run_to_exit();
    assert_eq!(status.code(), Some(2));
    let refusal: serde_json::Value = serde_json::from_str(stderr.lines().next().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(refusal["level"], "error");
    assert!(refusal["message"]
        .as_str()
        .is_some_and(|m| m.contains("SWITCHYARD_IDLE_MS")));
    // Every other line is one object too: the stream is one format for a log shipper.
    assert!(
        logs.lines().all(|l| l.starts_with('{')),
        "a line that is not JSON in:\n{logs}"
    );
    let listening = lines
        .iter()
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening on"))
        })
        .expect("the start's line");
    assert_eq!(
        (&listening["level"], &listening["target"]),
        (&serde_json::json!("info"), &serde_json::json!("switchyard"))
    );
}

/// `/status` and `/status.json` are answered to the addresses allowed, asked for by
/// address or `localhost`; refused to others, and to a name another site chose.
#[test]
fn issue24_the_status_page_is_answered_only_to_allowed_addresses() {
    let daemon = Daemon::builder().plugin("switchyard-websocket").start();
    let get = |path: &str, host: &str| {
        let mut client = daemon.client();
        client.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        client.response()
    };
    let page = get("/status", &daemon.addr.to_string());
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.body_text();
    assert!(html.contains("<title>switchyard status</title>") && !html.contains("src=\"http"));
    let data = get("/status.json", "localhost");
    assert_eq!(data.status, 200);
    let status: serde_json::Value = serde_json::from_str(&data.body_text()).unwrap();
    assert_eq!(status["plugins"][0]["name"], "websocket");
    assert_eq!(status["generation"], 1);
    assert!(status["settings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "SWITCHYARD_STATUS_FROM"));
    assert_eq!(get("/status", "rebound.example.com").status, 403);
    // Through a proxy on the same host: its loopback address says nothing of the client.
    let mut proxied = daemon.client();
    proxied.send(
        "GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
    );
    assert_eq!(proxied.response().status, 403);
    let mut closing = daemon.client();
    closing.send("GET /status.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let answer = closing.response();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    let elsewhere = Daemon::builder()
        .plugin("switchyard-websocket")
        .env("SWITCHYARD_STATUS_FROM", "10.0.0.0/8")
        .start();
    let mut client = elsewhere.client();
    client.send("GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(client.response().status, 403);
    let logs = elsewhere
        .wait_for_log("/status refused to 127.0.0.1")
        .unwrap_or_else(|l| panic!("{l}"));
    assert!(logs.contains("SWITCHYARD_STATUS_FROM"), "{logs}");
}

/// `/metrics` names routes, plugins and certificate files: it is answered to private
/// networks by default (loopback here), to `SWITCHYARD_METRICS_FROM` when set, and never
/// to a request that came through a proxy (its peer is the proxy's, not the asker's).
/// Before, anyone who reached the port read it (an attacker's review).
#[test]
fn metrics_are_answered_to_metrics_from_only() {
    let daemon = Daemon::builder().plugin("switchyard-echo").start();
    let mut local = daemon.client();
    local.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(local.response().status, 200, "loopback, by default");
    let mut proxied = daemon.client();
    proxied.send("GET /metrics HTTP/1.1\r\nHost: t\r\nVia: 1.1 edge\r\n\r\n");
    assert_eq!(proxied.response().status, 403, "through a proxy");

    let elsewhere = Daemon::builder()
        .plugin("switchyard-echo")
        .env("SWITCHYARD_METRICS_FROM", "10.0.0.0/8")
        .start();
    let mut client = elsewhere.client();
    client.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let refused = client.response();
    assert_eq!(refused.status, 403);
    assert!(
        !refused.body_text().contains("switchyard_"),
        "{}",
        refused.body_text()
    );
    elsewhere
        .wait_for_log("/metrics refused to 127.0.0.1")
        .unwrap_or_else(|l| panic!("{l}"));

    let everyone = Daemon::builder()
        .plugin("switchyard-echo")
        .env("SWITCHYARD_METRICS_FROM", "any")
        .start();
    let mut client = everyone.client_from("127.0.0.2");
    client.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.response().status, 200, "any");
}

/// A reload carries a plugin's counters over when the new build declares them alike, and
/// its open-connections gauge stays true while the old generation's connection lives.
#[test]
fn issue24_a_reload_carries_plugin_metrics_over() {
    let daemon = Daemon::builder().plugin("switchyard-websocket").start();
    let mut old = websocket(&daemon, "/a");
    wait_for_samples(
        &daemon,
        &[("switchyard_websocket_open_connections{route=\"*\"}", 1.0)],
    );
    let file = daemon.plugin_dir().join("libswitchyard_websocket.so");
    let staged = file.with_extension("staging");
    std::fs::copy(library("switchyard-websocket"), &staged).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for_log("reload: generation 2:")
        .unwrap_or_else(|l| panic!("{l}"));
    let mut new = websocket(&daemon, "/b");
    wait_for_samples(
        &daemon,
        &[
            ("switchyard_websocket_connections_total{route=\"*\"}", 2.0),
            ("switchyard_websocket_open_connections{route=\"*\"}", 2.0),
        ],
    );
    // The page says which generation loaded the plugin now serving.
    let mut client = daemon.client();
    client.send("GET /status.json HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let status: serde_json::Value = serde_json::from_str(&client.response().body_text()).unwrap();
    assert_eq!(status["generation"], 2);
    assert_eq!(status["plugins"][0]["generation"], 2, "{status}");
    old.close(None).unwrap();
    while old.read().is_ok() {}
    wait_for_samples(
        &daemon,
        &[("switchyard_websocket_open_connections{route=\"*\"}", 1.0)],
    );
    new.send(Message::text("still")).unwrap();
    assert_eq!(new.read().unwrap().into_text().unwrap().as_str(), "still");
}

/// The tunnel counts per route: tunnels open and switched, refusals, bytes each way.
#[test]
fn issue24_tunnel_routes_count_their_tunnels_and_bytes() {
    let service = echo_service();
    let daemon = Daemon::builder()
        .plugin("switchyard-tunnel")
        .env(
            "SWITCHYARD_TUNNEL_ROUTES",
            &format!("/echo={service},/down=127.0.0.1:{}", closed_port()),
        )
        .start();
    let mut tunnel = daemon.client();
    tunnel.send(upgrade_request("/echo", "tcp"));
    assert_eq!(tunnel.response().status, 101);
    tunnel.send(vec![1u8; 1000]);
    assert_eq!(tunnel.read_exact(1000).len(), 1000);
    let mut refused = daemon.client();
    refused.send(upgrade_request("/down", "tcp"));
    assert_eq!(refused.response().status, 502);
    wait_for_samples(
        &daemon,
        &[
            ("switchyard_tunnel_open_tunnels{route=\"/echo\"}", 1.0),
            ("switchyard_tunnel_tunnels_total{route=\"/echo\"}", 1.0),
            (
                "switchyard_tunnel_refused_total{route=\"/down\",status=\"502\"}",
                1.0,
            ),
            (
                "switchyard_tunnel_bytes_total{route=\"/echo\",direction=\"up\"}",
                1000.0,
            ),
            (
                "switchyard_tunnel_bytes_total{route=\"/echo\",direction=\"down\"}",
                1000.0,
            ),
            (
                "switchyard_tunnel_connect_seconds_count{route=\"/echo\"}",
                1.0,
            ),
        ],
    );
    drop(tunnel);
    wait_for_samples(
        &daemon,
        &[("switchyard_tunnel_open_tunnels{route=\"/echo\"}", 0.0)],
    );
}
