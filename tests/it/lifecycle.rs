//! Stopping: SIGTERM stops accepting, lets HTTP exchanges finish, tells plugins, waits up to
//! the grace period, and exits 0.

use crate::support::{upgrade_request, Daemon};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn sigterm_drains_tells_plugins_and_exits_0() {
    let mut daemon = Daemon::builder()
        .plugin("fixture-probe")
        .env("SWITCHYARD_SHUTDOWN_GRACE_MS", "5000")
        .start();
    let mut held = daemon.client();
    held.send(upgrade_request("/", "hold"));
    assert_eq!(held.response().status, 101);
    assert_eq!(held.read_line(), "held");
    let mut in_flight = daemon.client();
    in_flight.send("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    let idle = daemon.client();

    daemon.signal(libc::SIGTERM);
    daemon
        .wait_for_log("stopping (signal 15)")
        .expect("stop logged");
    // Checked while the daemon still runs: after it exits the port may belong to another test.
    assert!(
        TcpStream::connect(daemon.addr).is_err(),
        "no longer accepting"
    );

    assert_eq!(
        held.read_line(),
        "bye",
        "the plugin was told the daemon is stopping"
    );
    assert!(held.read_to_end().is_empty());
    in_flight.send("\r\n");
    let response = in_flight.response();
    assert_eq!(response.status, 200, "an exchange in flight is finished");
    assert_eq!(response.header("Connection"), Some("close"));
    drop((idle, in_flight));

    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("exited within the grace period");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_ends_a_stubborn_plugin_after_the_grace_period() {
    let mut daemon = Daemon::builder()
        .plugin("fixture-probe")
        .env("SWITCHYARD_SHUTDOWN_GRACE_MS", "300")
        .start();
    let mut stubborn = daemon.client();
    stubborn.send(upgrade_request("/stubborn", "hold"));
    assert_eq!(stubborn.response().status, 101);
    assert_eq!(stubborn.read_line(), "held");
    daemon.signal(libc::SIGTERM);
    stubborn.read_to_end(); // dots until the daemon ends the connection
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("exited after the grace period");
    assert_eq!(status.code(), Some(0));
    let logs = daemon.logs();
    assert!(
        logs.contains("grace period over: closing 0 HTTP and 1 upgraded connection(s)"),
        "{logs}"
    );
}
