//! Wakers (ABI 1.10): a readiness connection called because another connection of its
//! plugin, or a thread of the plugin's own, woke it; never one that has ended, and never a
//! later connection in its place.

use crate::support::{upgrade_request, Client, Daemon};
use std::io::{ErrorKind, Read};
use std::time::Duration;

/// No time-out comes due while a test waits (the request's is a minute away), so only the
/// wake itself can bring a connection's call.
fn daemon(io_threads: &str) -> Daemon {
    Daemon::builder()
        .plugin("fixture-evented")
        .env("SWITCHYARD_IO_THREADS", io_threads)
        .env("SWITCHYARD_HEADER_TIMEOUT_MS", "60000")
        .start()
}

fn switched(daemon: &Daemon, target: &str, token: &str) -> Client {
    let mut client = daemon.client();
    client.send(upgrade_request(target, token));
    assert_eq!(client.response().status, 101, "{token}");
    client
}

#[test]
fn a_connection_woken_by_another_on_its_loop_writes_what_it_was_given() {
    // One loop: the wake comes from the loop's own thread, with no system call, and must
    // still be seen before the loop sleeps.
    let daemon = daemon("1");
    let mut alice = switched(&daemon, "/", "ev-room");
    assert_eq!(alice.read_line(), "members=1");
    let mut bob = switched(&daemon, "/", "ev-room");
    assert_eq!(bob.read_line(), "members=2");
    alice.send("hello from alice\n");
    assert_eq!(bob.read_line(), "hello from alice");
    bob.send("hello from bob\n");
    assert_eq!(alice.read_line(), "hello from bob");
    let mut carol = switched(&daemon, "/", "ev-room");
    assert_eq!(carol.read_line(), "members=3");
    for round in 0..100 {
        alice.send(format!("round {round}\n"));
        assert_eq!(bob.read_line(), format!("round {round}"));
        assert_eq!(carol.read_line(), format!("round {round}"));
    }
    drop(bob);
    let mut dave = switched(&daemon, "/", "ev-room");
    let members = dave.read_line();
    carol.send("still here\n");
    assert_eq!(alice.read_line(), "still here");
    assert_eq!(dave.read_line(), "still here");
    // Bob left when his connection ended, however the room learnt it first.
    assert_eq!(members, "members=3");
}

#[test]
fn a_connection_woken_from_a_timers_call_on_its_loop_is_called_before_the_loop_sleeps() {
    // The tick is sent from a timer's call, after the turn's wakes were taken: nothing else
    // would wake the loop (the listener, the sockets and every timer are quiet after it).
    let daemon = daemon("1");
    let mut listener = switched(&daemon, "/", "ev-room");
    assert_eq!(listener.read_line(), "members=1");
    let mut ticker = switched(&daemon, "/tick", "ev-room");
    assert_eq!(ticker.read_line(), "members=2");
    assert_eq!(listener.read_line(), "tick");
}

#[test]
fn connections_on_other_loops_are_woken_across_threads() {
    let daemon = daemon("2");
    let mut members: Vec<Client> = (1..=6)
        .map(|n| {
            let mut member = switched(&daemon, "/", "ev-room");
            assert_eq!(member.read_line(), format!("members={n}"));
            member
        })
        .collect();
    for from in 0..members.len() {
        members[from].send(format!("from {from}\n"));
        for (to, member) in members.iter_mut().enumerate() {
            if to != from {
                assert_eq!(member.read_line(), format!("from {from}"), "to {to}");
            }
        }
    }
}

#[test]
fn a_plugins_own_thread_wakes_its_connection() {
    let daemon = daemon("1");
    let mut client = switched(&daemon, "/200", "ev-later");
    assert_eq!(client.read_line(), "waiting");
    assert_eq!(client.read_line(), "woken");
    daemon
        .wait_for_log("ev-later: woke its connection")
        .expect("the wake was taken");
}

#[test]
fn a_connection_that_waits_for_its_waker_alone_is_kept_until_woken() {
    // Wanting nothing, with no timer, a connection could never be called again, and the
    // daemon closes it; one whose plugin holds a waker of it can be.
    let daemon = daemon("1");
    let mut client = switched(&daemon, "/300/quiet", "ev-later");
    assert_eq!(client.read_line(), "waiting");
    assert_eq!(client.read_line(), "woken");
    assert!(
        client.read_to_end().is_empty(),
        "closed by the plugin once woken"
    );
}

#[test]
fn a_connection_waiting_for_a_wake_that_never_comes_ends_at_the_idle_limit() {
    // The plugin holds its waker and never wakes (a runtime that never says it is done):
    // the daemon's idle limit still ends the connection, with its reason on the line.
    let daemon = Daemon::builder()
        .plugin("fixture-evented")
        .env("SWITCHYARD_IO_THREADS", "1")
        .env("SWITCHYARD_IDLE_MS", "400")
        .start();
    let mut client = switched(&daemon, "/600000/quiet", "ev-later");
    assert_eq!(client.read_line(), "waiting");
    assert!(
        client.read_to_end_or_reset().0.is_empty(),
        "ended, nothing more sent"
    );
    let logs = daemon.wait_for_log("proto=ev-later").unwrap_or_else(|l| l);
    assert!(logs.contains("reason=\"idle\""), "{logs}");
}

#[test]
fn a_wake_after_the_end_is_refused_and_reaches_no_later_connection_in_its_place() {
    // One loop, so that the next connection takes the ended one's slot.
    let daemon = daemon("1");
    let mut early = switched(&daemon, "/1500", "ev-later");
    assert_eq!(early.read_line(), "waiting");
    drop(early);
    daemon
        .wait_for_log("proto=ev-later")
        .expect("the first connection ended");
    let mut later = switched(&daemon, "/60000", "ev-later");
    assert_eq!(later.read_line(), "waiting");
    daemon
        .wait_for_log("ev-later: wake refused: the connection ended")
        .expect("the ended connection's wake is refused");
    let early = later.take_buffered();
    assert!(
        early.is_empty(),
        "the later connection was called: {early:?}"
    );
    later
        .stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    match later.stream.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the later connection was called for the ended one's wake: {other:?}"),
    }
}
