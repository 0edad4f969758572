//! Switching protocols (RFC 9110 §7.8, §15.2.2): who gets the connection, and that every
//! byte the client sent reaches the plugin, in order.

use crate::support::{upgrade_request, Daemon};

#[test]
fn rfc9110_7_8_echo_gets_bytes_sent_with_the_head() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(format!("{}early bytes|", upgrade_request("/", "echo")));
    let response = client.response();
    assert_eq!(response.status, 101);
    assert_eq!(response.header("Upgrade"), Some("echo"));
    assert_eq!(response.header("Connection"), Some("upgrade"));
    assert_eq!(client.read_exact(12), b"early bytes|");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut stream = client.stream.try_clone().unwrap();
        let big = big.clone();
        std::thread::spawn(move || std::io::Write::write_all(&mut stream, &big).unwrap())
    };
    assert_eq!(
        client.read_exact(big.len()),
        big,
        "echoed whole and in order"
    );
    writer.join().unwrap();
    client.shutdown_write();
    assert!(
        client.read_to_end().is_empty(),
        "echo ends its side when ours ends"
    );
    let logs = daemon.wait_for_log("101 proto=echo").unwrap_or_else(|l| l);
    assert!(
        logs.contains("\"GET / HTTP/1.1\" 101 proto=echo"),
        "access log line for the switch:\n{logs}"
    );
}

#[test]
fn rfc9110_7_8_upgrade_in_http_1_0_is_ignored() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
    assert_eq!(client.response().status, 426);
}

#[test]
fn rfc9110_7_8_upgrade_needs_the_upgrade_connection_option() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send("GET / HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\n\r\n");
    assert_eq!(client.response().status, 426);
    client.send(
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, UPGRADE\r\nUpgrade: ECHO\r\n\r\n",
    );
    let response = client.response();
    assert_eq!(
        response.status, 101,
        "Connection is a case-insensitive list"
    );
    assert_eq!(
        response.header("Upgrade"),
        Some("ECHO"),
        "the 101 names the protocol as the client did"
    );
}

#[test]
fn rfc9110_7_8_client_order_wins_and_unknown_protocols_are_ignored() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(upgrade_request("/", "foo/2, probe, echo"));
    let response = client.response();
    assert_eq!(
        (response.status, response.header("Upgrade")),
        (101, Some("probe"))
    );
    assert_eq!(
        response.header("X-Probe"),
        Some("1"),
        "the plugin's headers are in the 101"
    );

    let mut client = daemon.client();
    client.send(upgrade_request("/", "echo, probe"));
    assert_eq!(client.response().header("Upgrade"), Some("echo"));
}

#[test]
fn rfc9110_7_8_a_declining_plugin_passes_to_the_next_choice() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(upgrade_request("/", "picky, echo"));
    let response = client.response();
    assert_eq!(
        (response.status, response.header("Upgrade")),
        (101, Some("echo"))
    );
}

#[test]
fn rfc9110_7_8_when_every_plugin_declines_the_request_is_answered_as_without_upgrade() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(upgrade_request("/somewhere", "picky"));
    let response = client.response();
    assert_eq!(response.status, 426);
    assert_eq!(
        response.header("Connection"),
        Some("upgrade"),
        "no close: an ordinary exchange"
    );
    client.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.response().status, 200, "the connection stays usable");

    // Pipelined behind the declined upgrade, in the same write: answered in order.
    let mut client = daemon.client();
    client.send(format!(
        "{}GET /x HTTP/1.1\r\nHost: t\r\n\r\n{}",
        upgrade_request("/healthz", "picky, nothing-known"),
        upgrade_request("/", "echo")
    ));
    assert_eq!(client.response().status, 200);
    assert_eq!(client.response().status, 426);
    assert_eq!(
        client.response().status,
        101,
        "and may still switch afterwards"
    );
    client.send("after");
    assert_eq!(client.read_exact(5), b"after");
}

/// The answer to a declined or refused HEAD carries no body, or the next answer would be
/// misread; checked with the access log off, which once decided it.
#[test]
fn rfc9110_9_3_2_refused_or_declined_head_gets_no_body() {
    let daemon = Daemon::builder()
        .plugin("fixture-probe")
        .env("RUST_LOG", "info,switchyard::access=off")
        .start();
    let mut client = daemon.client();
    client.send("HEAD /x HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: picky\r\n\r\n");
    assert_eq!(client.response_head_only().status, 426);
    client.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.response().body_text(), "ok\n");

    // A plugin's refusal of a HEAD: the head says how long the body would be, none follows.
    let mut client = daemon.client();
    client
        .send("HEAD /reject HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: picky\r\n\r\n");
    let response = client.response_head_only();
    assert_eq!(
        (response.status, response.header("Content-Length")),
        (403, Some("8"))
    );
    assert!(client.read_to_end().is_empty(), "no body after the head");
}

#[test]
fn a_plugin_can_refuse_with_its_own_response() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(upgrade_request("/reject", "picky, echo"));
    let response = client.response();
    assert_eq!(
        response.status, 403,
        "a rejection ends negotiation; echo is not tried"
    );
    assert_eq!(response.header("X-Picky"), Some("no"));
    assert_eq!(response.body_text(), "not you\n");
    assert!(client.read_to_end().is_empty());
}

#[test]
fn rfc9110_10_1_1_expect_100_continue_comes_before_101_and_the_body_reaches_the_plugin() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(
        "POST /upload?x=1 HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: probe\r\n\
         Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    assert_eq!(client.response().status, 100, "100 Continue first");
    client.send("helloAFTER");
    let response = client.response();
    assert_eq!(response.status, 101);
    assert_eq!(
        client.read_line(),
        "POST /upload?x=1 proto=probe host=t buffered=5 body=5:hello"
    );
    assert_eq!(
        client.read_exact(5),
        b"AFTER",
        "bytes after the body belong to the new protocol"
    );
}

#[test]
fn rfc9112_7_1_chunked_body_is_read_before_the_switch_and_early_bytes_kept() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(
        "PUT /c HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: probe\r\nTransfer-Encoding: chunked\r\n\r\n\
         6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\nEARLY",
    );
    assert_eq!(client.response().status, 101);
    assert_eq!(
        client.read_line(),
        "PUT /c proto=probe host=t buffered=5 body=11:hello world"
    );
    assert_eq!(client.read_exact(5), b"EARLY");
}

#[test]
fn rfc9112_9_3_pipelined_request_then_upgrade_in_one_write() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n{}ping",
        upgrade_request("/", "echo")
    ));
    assert_eq!(client.response().status, 200);
    assert_eq!(client.response().status, 101);
    assert_eq!(client.read_exact(4), b"ping");
}

#[test]
fn an_upgrade_body_over_the_limit_gets_413() {
    let daemon = Daemon::builder()
        .plugin("fixture-probe")
        .env("SWITCHYARD_MAX_BODY_BYTES", "10")
        .start();
    let mut client = daemon.client();
    client.send("POST / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: probe\r\nContent-Length: 11\r\n\r\n");
    assert_eq!(client.response().status, 413);
}

/// `Request::peer`: the client's address and port, as the plugin is told.
#[test]
fn plugins_are_told_the_clients_address() {
    let daemon = Daemon::builder().plugin("fixture-probe").start();
    let mut client = daemon.client();
    client.send(upgrade_request("/", "whoami"));
    assert_eq!(client.response().status, 101);
    let me = client.stream.local_addr().unwrap();
    assert_eq!(client.read_line(), format!("peer={me}"));
}
