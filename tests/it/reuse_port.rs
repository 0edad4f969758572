//! Several instances on one port (`SWITCHYARD_REUSE_PORT=on`): the kernel spreads new
//! connections over them, and one stopping refuses none, as a rolling restart needs.

use crate::support::Daemon;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIGRATE: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// One request on a new connection; `Err` with what went wrong.
fn healthz(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("answer {:?}", String::from_utf8_lossy(&answer)))
    }
}

#[test]
fn two_instances_share_a_port_and_one_stopping_refuses_no_connection() {
    // Queued connections of a stopping instance move to the other only with this setting
    // (Linux 5.14+); without it they are reset, which the daemon warns about at start.
    let migrates = std::fs::write(MIGRATE, "1").is_ok()
        || std::fs::read_to_string(MIGRATE).is_ok_and(|v| v.trim() == "1");
    let mut first = Daemon::builder()
        .plugin("switchyard-echo")
        .env("SWITCHYARD_REUSE_PORT", "on")
        .start();
    let addr = first.addr;
    let second = Daemon::builder()
        .plugin("switchyard-echo")
        .env("SWITCHYARD_REUSE_PORT", "on")
        .env("SWITCHYARD_LISTEN", &addr.to_string())
        .start();
    assert_eq!(second.addr, addr, "both on one port");
    if !migrates {
        first
            .wait_for_log("net.ipv4.tcp_migrate_req is 0")
            .expect("the daemon says what a stop will cost");
        eprintln!("{MIGRATE} cannot be set here: the no-refusal half of this test is not run");
        return;
    }

    // Load from sixteen clients, a new connection per request, while the first stops.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match healthz(addr) {
                        Ok(()) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e),
                    }
                }
                failures
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before_stop = served.load(Ordering::Relaxed);
    first.signal(libc::SIGTERM);
    let status = first
        .wait_exit(Duration::from_secs(15))
        .expect("the first stops");
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let total = served.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        total + failures.len() as u64,
        &failures[..failures.len().min(3)]
    );
    assert!(
        total > before_stop + 100,
        "the second served on: {before_stop} then {total}"
    );
    // Both took a share before the stop: the port was really shared.
    let first_served = first
        .logs()
        .matches("\"GET /healthz HTTP/1.1\" 200")
        .count();
    let second_served = second
        .logs()
        .matches("\"GET /healthz HTTP/1.1\" 200")
        .count();
    assert!(
        first_served > 0 && second_served > 0,
        "first {first_served}, second {second_served}"
    );
}
