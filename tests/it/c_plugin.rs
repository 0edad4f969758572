//! A plugin written in C against `include/switchyard_plugin.h` (tests/c/echo_plugin.c),
//! compiled here with the system's C compiler: the daemon loads it and keeps the same
//! promises as for a Rust plugin; its misuse is refused at load or contained.

use crate::support::{c_evented_plugin, c_plugin, upgrade_request, Daemon};
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
    // ABI 1.8 and 1.9: the access line it wrote for its session, in the daemon's format,
    // with the request's Host.
    let logs = daemon.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("\"ECHO /from-c C-ECHO/1\""))
        .unwrap_or_else(|| panic!("no access line from C in {logs}"));
    assert!(line.contains(" - proto=c-echo in=9 out=9 time="), "{line}");
    assert!(
        line.ends_with(" host=\"test\" reason=\"the client closed\""),
        "{line}"
    );
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
    // A refusal of its own: status, header and body, set from C.
    let daemon = Daemon::builder().library_file(&c_plugin(&[])).start();
    let mut client = daemon.client();
    client.send(upgrade_request("/reject", "c-echo"));
    let refused = client.response();
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("X-From"), Some("c"));
    assert_eq!(refused.body_text(), "not from C\n");
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

/// A readiness-driven plugin in C (tests/c/evented_plugin.c): its connections run on the
/// event loops with no thread of their own, bytes read ahead come first, and the stop is
/// told once (it says `bye`).
#[test]
fn a_readiness_plugin_in_c_runs_on_the_event_loops() {
    let mut daemon = Daemon::builder()
        .library_file(&c_evented_plugin(&[]))
        .env("SWITCHYARD_SHUTDOWN_GRACE_MS", "5000")
        .start();
    let logs = daemon.logs();
    assert!(
        logs.contains("c-evented [c-ev-echo] (c-evented 1.0, written in C; on event loops)"),
        "{logs}"
    );
    let threads = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let before = threads();
    let mut clients: Vec<_> = (0..50)
        .map(|i| {
            let mut client = daemon.client();
            client.send(format!("{}early{i:02}", upgrade_request("/", "c-ev-echo")));
            let response = client.response();
            assert_eq!(response.status, 101);
            assert_eq!(response.header("X-Arrival"), Some("upgrade"));
            assert_eq!(client.read_line(), "c-ev-echo");
            assert_eq!(
                client.read_exact(7),
                format!("early{i:02}").as_bytes(),
                "read ahead, first"
            );
            client
        })
        .collect();
    for client in &mut clients {
        client.send("hello from C");
        assert_eq!(client.read_exact(12), b"hello from C");
    }
    let after = threads();
    assert!(
        after < before + 5,
        "fifty connections, no thread for any of them: {before} threads, then {after}"
    );
    daemon.signal(libc::SIGTERM);
    for client in &mut clients {
        assert_eq!(client.read_line(), "bye", "told of the stop");
    }
    let status = daemon.wait_exit(Duration::from_secs(5)).expect("exited");
    assert_eq!(status.code(), Some(0));
}

/// ABI 1.2: a connection that began with the HTTP/2 preface goes only to a plugin of 1.2 or
/// later, which can tell it from an upgrade. A 1.1 plugin serving `h2c` gets upgrades, and
/// the preface is answered as if no h2c plugin were there.
#[test]
fn prior_knowledge_is_withheld_from_plugins_older_than_1_2() {
    let daemon = Daemon::builder()
        .library_file(&c_evented_plugin(&["OLD_H2C"]))
        .start();
    let mut client = daemon.client();
    client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(client.response().status, 505, "an HTTP/1.1 server's answer");
    let mut upgrade = daemon.client();
    upgrade.send(upgrade_request("/", "h2c"));
    let response = upgrade.response();
    assert_eq!(response.status, 101, "upgrades still reach it");
    assert_eq!(response.header("X-Arrival"), Some("upgrade"));
}
