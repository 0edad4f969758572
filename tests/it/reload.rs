//! Reload on SIGHUP: the plugin folder read again as a new generation while connections
//! switched by the old one live on.

use crate::support::{c_plugin, library, upgrade_request, Client, Daemon};
use std::path::Path;
use tungstenite::Message;

/// Replaces `to` by `from` as an operator should: a new file renamed over the old one.
fn replace(from: &Path, to: &Path) {
    let staged = to.with_extension("staging");
    std::fs::copy(from, &staged).unwrap();
    std::fs::rename(&staged, to).unwrap();
}

/// Switches a new connection to `c-echo`; returns it and its greeting line.
fn c_echo(daemon: &Daemon) -> (Client, String) {
    let mut client = daemon.client();
    client.send(upgrade_request("/", "c-echo"));
    let response = client.response();
    assert_eq!(response.status, 101, "c-echo switched");
    let greeting = client.read_line();
    (client, greeting)
}

fn echoes(client: &mut Client, text: &str) {
    client.send(text);
    assert_eq!(
        client.read_exact(text.len()),
        text.as_bytes(),
        "echo of {text}"
    );
}

fn sighup(daemon: &Daemon, generation: u64) -> String {
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for_log(&format!("reload: generation {generation}:"))
        .unwrap_or_else(|logs| panic!("no reload {generation}:\n{logs}"))
}

#[test]
fn sighup_replaces_a_plugin_while_connections_of_every_generation_live_on() {
    let v1 = c_plugin(&[]);
    let v2 = c_plugin(&["VERSION_2"]);
    let daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .library_file(&v1)
        .start();
    let file = daemon.plugin_dir().join("libc_echo.so");
    let (mut ws, _) = tungstenite::client(
        format!("ws://{}/chat", daemon.addr),
        std::net::TcpStream::connect(daemon.addr).unwrap(),
    )
    .expect("handshake");
    let ws_echo = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>, text: &str| {
        ws.send(Message::text(text)).unwrap();
        assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), text);
    };
    ws_echo(&mut ws, "before");
    let (mut old_echo, greeting) = c_echo(&daemon);
    assert_eq!(greeting, "buffered=0", "generation 1 answers as 1.0 does");
    echoes(&mut old_echo, "one");

    // A build that answers differently, renamed into place; the WebSocket plugin's file
    // replaced too (a new file of the same build), under its live connection.
    replace(&v2, &file);
    let ws_file = daemon.plugin_dir().join("libswitchyard_websocket.so");
    replace(&library("switchyard-websocket"), &ws_file);
    let logs = sighup(&daemon, 2);
    let line = logs
        .lines()
        .find(|l| l.contains("reload: generation 2:"))
        .unwrap();
    assert!(
        line.contains("replaced c-echo [c-echo]") && line.contains(", websocket [websocket]"),
        "{line}"
    );
    ws_echo(&mut ws, "across the reload");
    let (mut new_ws, _) = tungstenite::client(
        format!("ws://{}/chat", daemon.addr),
        std::net::TcpStream::connect(daemon.addr).unwrap(),
    )
    .expect("a new WebSocket, on the new generation");
    ws_echo(&mut new_ws, "new");
    echoes(&mut old_echo, "two");
    let (mut new_echo, greeting) = c_echo(&daemon);
    assert_eq!(
        greeting, "v2 buffered=0",
        "a new connection gets the new build"
    );
    echoes(&mut new_echo, "three");

    // A broken replacement: the previous generation of that plugin serves on.
    let broken = daemon.plugin_dir().join("broken.bin");
    std::fs::write(&broken, b"not a library").unwrap();
    replace(&broken, &file);
    std::fs::remove_file(&broken).unwrap();
    let logs = sighup(&daemon, 3);
    let line = logs
        .lines()
        .find(|l| l.contains("reload: generation 3:"))
        .unwrap();
    assert!(line.contains("ERROR") && line.contains("FAILED"), "{line}");
    assert!(line.contains("libc_echo.so"), "names the file: {line}");
    let (_, greeting) = c_echo(&daemon);
    assert_eq!(
        greeting, "v2 buffered=0",
        "the last good build still serves"
    );
    assert!(line.contains("unchanged websocket"), "{line}");

    // Written into in place (same inode): refused, never handed to dlopen.
    replace(&v2, &file);
    sighup(&daemon, 4);
    std::fs::write(&file, std::fs::read(&v2).unwrap()).unwrap();
    let logs = sighup(&daemon, 5);
    assert!(logs.contains("was rewritten in place"), "{logs}");

    // Gone from the folder: no longer offered; its live connections go on.
    std::fs::remove_file(&file).unwrap();
    let logs = sighup(&daemon, 6);
    let line = logs
        .lines()
        .find(|l| l.contains("reload: generation 6:"))
        .unwrap();
    assert!(line.contains("removed c-echo"), "{line}");
    let mut client = daemon.client();
    client.send(upgrade_request("/", "c-echo"));
    let response = client.response();
    assert_eq!(response.status, 426, "no longer offered");
    assert!(!response.header("upgrade").unwrap_or("").contains("c-echo"));
    echoes(&mut old_echo, "four");
    echoes(&mut new_echo, "five");
    ws_echo(&mut ws, "still here");
    ws_echo(&mut new_ws, "and here");

    let metrics = daemon.metrics();
    assert!(
        metrics.contains("switchyard_plugin_generation 6\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_reloads_total{result=\"ok\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_reloads_total{result=\"failed\"} 2\n"),
        "{metrics}"
    );
}

/// Issue 19: a file in the folder that is not a library was opened at every reload and its
/// descriptor kept for good; ten reloads cost ten descriptors. Now none.
#[test]
fn a_broken_file_costs_no_descriptor_at_each_reload() {
    let daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .file("libbroken.so", b"not a shared library")
        .start();
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
            .unwrap()
            .count()
    };
    sighup(&daemon, 2);
    let before = descriptors();
    for generation in 3..=12 {
        let line = sighup(&daemon, generation);
        assert!(line.contains("libbroken.so"), "{line}");
    }
    let after = descriptors();
    assert!(
        after <= before + 1,
        "{before} descriptors before ten reloads, {after} after"
    );
}
