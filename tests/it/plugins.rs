//! A misbehaving plugin costs one connection, never the daemon; plugin logs reach the
//! daemon's log.

use crate::support::{upgrade_request, Daemon};

#[test]
fn a_panic_in_serve_closes_that_connection_and_nothing_else() {
    let daemon = Daemon::start();
    let mut bystander = daemon.client();
    bystander.send(upgrade_request("/", "echo"));
    assert_eq!(bystander.response().status, 101);

    let mut victim = daemon.client();
    victim.send(upgrade_request("/", "boom"));
    assert_eq!(victim.response().status, 101);
    assert!(
        victim.read_to_end().is_empty(),
        "closed by the daemon after the panic"
    );
    let logs = daemon
        .wait_for_log("panicked in serve")
        .unwrap_or_else(|l| l);
    assert!(
        logs.contains("plugin probe panicked in serve: boom in serve"),
        "{logs}"
    );

    bystander.send("still here");
    assert_eq!(
        bystander.read_exact(10),
        b"still here",
        "an open connection of another plugin is untouched"
    );
    let mut fresh = daemon.client();
    fresh.send(upgrade_request("/", "boom"));
    assert_eq!(
        fresh.response().status,
        101,
        "the plugin keeps serving new connections"
    );
}

#[test]
fn a_panic_in_negotiate_answers_500_and_closes() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(upgrade_request("/negotiate", "boom, echo"));
    assert_eq!(client.response().status, 500);
    assert!(client.read_to_end().is_empty());
    let logs = daemon
        .wait_for_log("panicked in negotiate")
        .unwrap_or_else(|l| l);
    assert!(
        logs.contains("plugin probe panicked in negotiate: boom in negotiate"),
        "{logs}"
    );
    let mut client = daemon.client();
    client.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.response().status, 200);
}

#[test]
fn plugin_log_records_reach_the_daemon_log() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.send(upgrade_request("/logged", "probe"));
    assert_eq!(client.response().status, 101);
    let logs = daemon
        .wait_for_log("probe: serving GET /logged")
        .unwrap_or_else(|l| l);
    assert!(
        logs.contains("INFO  fixture_probe] probe: serving GET /logged"),
        "{logs}"
    );
}
