//! Run under systemd: the service protocol (`READY=1`, `WATCHDOG=1`, `RELOADING=1`,
//! `STOPPING=1` to `$NOTIFY_SOCKET`) and socket activation, through Debian's `systemd-socket-activate`.

use crate::support::{artifacts, library, send_signal, Daemon};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `NOTIFY_SOCKET` to listen on, as a service manager would: its folder (keep it), its
/// path, and the socket.
fn notify_socket() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("notify");
    let listener = UnixDatagram::bind(&path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (folder, path, listener)
}

/// The next notification, as text.
fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The next notification that is not a watchdog ping.
fn next_state(socket: &UnixDatagram) -> String {
    loop {
        let seen = next(socket);
        if seen != "WATCHDOG=1" {
            return seen;
        }
    }
}

#[test]
fn sd_notify_ready_reloading_ready_stopping_in_order() {
    // Around a reload: RELOADING=1 with the monotonic clock, then READY=1 again.
    let (_folder, path, listener) = notify_socket();
    let mut daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .start();
    assert_eq!(next_state(&listener), "READY=1");
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let before = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    daemon.signal(libc::SIGHUP);
    let reloading = next_state(&listener);
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in {reloading:?}"));
    assert!(usec >= before, "the monotonic clock: {usec} < {before}");
    assert_eq!(next_state(&listener), "READY=1", "after the reload");
    daemon.signal(libc::SIGTERM);
    assert_eq!(next_state(&listener), "STOPPING=1");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(5)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn sd_notify_ready_watchdog_then_stopping() {
    let (_folder, path, listener) = notify_socket();
    let mut daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "200000")
        .start();
    assert_eq!(next(&listener), "READY=1", "once it listens");
    let began = Instant::now();
    assert_eq!(next(&listener), "WATCHDOG=1");
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "every half period"
    );
    assert_eq!(next(&listener), "WATCHDOG=1");
    daemon.signal(libc::SIGTERM);
    let mut seen = next(&listener);
    while seen == "WATCHDOG=1" {
        seen = next(&listener);
    }
    assert_eq!(seen, "STOPPING=1");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(5)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn socket_activation_serves_the_socket_it_is_given() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(
        library("switchyard-echo"),
        plugins.path().join("libswitchyard_echo.so"),
    )
    .unwrap();
    // systemd-socket-activate needs an address: a port free a moment ago. It binds it (not
    // the daemon), so a port taken meanwhile shows as the tool failing: try another.
    let (mut child, addr) = (0..5)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let mut child = Command::new("systemd-socket-activate")
                .arg(format!("--listen={addr}"))
                .arg(format!(
                    "--setenv=SWITCHYARD_PLUGIN_DIR={}",
                    plugins.path().display()
                ))
                // Where it would listen by itself: the same port, taken by the tool. Binding it
                // would fail, so serving proves the passed socket is used.
                .arg(format!("--setenv=SWITCHYARD_LISTEN={addr}"))
                // Not applied to the tool's socket (a review: it would outlive the daemon).
                .arg("--setenv=SWITCHYARD_CLIENT_SNDBUF=65536")
                .arg("--setenv=RUST_LOG=info")
                .arg(artifacts().join("switchyard"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("systemd-socket-activate (Debian's systemd package)");
            let mut err = BufReader::new(child.stderr.take().unwrap());
            let mut line = String::new();
            let listening = err.read_line(&mut line).is_ok() && line.contains("Listening on");
            if !listening {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            child.stderr = Some(err.into_inner());
            Some((child, addr))
        })
        .expect("systemd-socket-activate listened");
    let mut client = TcpStream::connect(&addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    send_signal(child.id(), libc::SIGTERM);
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{logs}");
    assert!(
        logs.contains("serving the socket the service manager passed (socket activation)"),
        "{logs}"
    );
    assert!(
        logs.contains("not applied to sockets the service manager passed"),
        "{logs}"
    );
}
