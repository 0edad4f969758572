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

/// Moves the calling thread (and what it starts from then on: threads, the daemons) into
/// a network namespace of its own with its loopback up, where `net.ipv4.tcp_migrate_req`
/// (0 in a new namespace) is this test's to set: the host's stays as it was. Needs
/// CAP_SYS_ADMIN (root, as CI runs).
fn own_network_namespace() -> Result<(), String> {
    // Built first, outside: cargo need not run in the namespace.
    crate::support::artifacts();
    // SAFETY: unshare(2) with CLONE_NEWNET only changes the calling thread's network
    // namespace; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot make a network namespace ({}): this test needs root (CAP_SYS_ADMIN)",
            std::io::Error::last_os_error()
        ));
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("ip (Debian's iproute2): {e}"))?;
    match up.success() {
        true => Ok(()),
        false => Err("ip link set lo up failed".into()),
    }
}

#[test]
fn two_instances_share_a_port_and_one_stopping_refuses_no_connection() {
    // Queued connections of a stopping instance move to the other only with this setting
    // (Linux 5.14+), set in a namespace of the test's own.
    if let Err(why) = own_network_namespace() {
        panic!("{why}; the no-refusal promise cannot be checked here");
    }
    // At 0 (a new namespace's value), the daemon says at start what a stop will cost.
    let unset = Daemon::builder()
        .plugin("switchyard-echo")
        .env("SWITCHYARD_REUSE_PORT", "on")
        .start();
    unset
        .wait_for_log("net.ipv4.tcp_migrate_req is 0")
        .expect("the daemon says what a stop will cost");
    drop(unset);
    std::fs::write(MIGRATE, "1").unwrap_or_else(|e| panic!("{MIGRATE}: {e}"));
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
    assert!(
        !first.logs().contains("net.ipv4.tcp_migrate_req is 0"),
        "set in this namespace"
    );

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
