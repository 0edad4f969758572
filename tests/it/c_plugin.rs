//! A plugin written in C against `include/switchyard_plugin.h` (tests/c/echo_plugin.c),
//! compiled here with the system's C compiler: the daemon loads it and keeps the same
//! promises as for a Rust plugin; its misuse is refused at load or contained.

use crate::support::{c_plugin, upgrade_request, Daemon};
use std::time::Duration;

#[test]
fn a_c_plugin_loads_switches_reads_ahead_first_logs_and_says_bye() {
    let mut daemon = Daemon::builder()
        .library_file(&c_plugin(&[]))
        .env("SWITCHYARD_SHUTDOWN_GRACE_MS", "5000")
        .start();
    let logs = daemon.logs();
    assert!(
        logs.contains("c-echo [c-echo] (c-echo 1.0, written in C; on workers)"),
        "{logs}"
    );
    assert!(
        logs.contains("INFO  c_echo] c-echo: ready"),
        "init's log line: {logs}"
    );
    let mut client = daemon.client();
    client.send(format!("{}EARLY", upgrade_request("/from-c", "c-echo")));
    assert_eq!(client.response().status, 101);
    assert_eq!(client.read_line(), "buffered=5");
    assert_eq!(
        client.read_exact(5),
        b"EARLY",
        "bytes read ahead come first"
    );
    client.send("more");
    assert_eq!(client.read_exact(4), b"more");
    let logs = daemon
        .wait_for_log("c-echo: serving /from-c")
        .unwrap_or_else(|l| l);
    assert!(
        logs.contains("c-echo: serving /from-c, 5 bytes read ahead"),
        "{logs}"
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(client.read_line(), "bye", "told of the stop");
    assert!(client.read_to_end().is_empty());
    let status = daemon.wait_exit(Duration::from_secs(5)).expect("exited");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_c_plugins_misuse_is_refused_at_load_or_contained() {
    for (define, needle) in [
        (
            "NULL_NEGOTIATE",
            "descriptor has no `negotiate` function (NULL); skipped",
        ),
        (
            "NO_SERVE",
            "descriptor has neither `serve` nor all of `start`, `on_ready` and `drop_conn`; skipped",
        ),
    ] {
        let daemon = Daemon::builder()
            .library_file(&c_plugin(&[define]))
            .plugin("switchyard-echo")
            .start();
        let logs = daemon.logs();
        assert!(logs.contains(needle), "{define}: {logs}");
        let mut client = daemon.client();
        client.send(upgrade_request("/", "echo"));
        assert_eq!(client.response().status, 101, "{define}: the others serve");
    }
    let daemon = Daemon::builder()
        .library_file(&c_plugin(&["BAD_DECISION"]))
        .start();
    let mut client = daemon.client();
    client.send(upgrade_request("/", "c-echo"));
    assert_eq!(client.response().status, 500);
    let logs = daemon
        .wait_for_log("negotiate returned 7")
        .unwrap_or_else(|l| l);
    assert!(
        logs.contains("plugin c-echo failed in negotiate: negotiate returned 7, not a decision"),
        "{logs}"
    );
}
