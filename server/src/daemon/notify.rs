//! systemd's side of a service (sd_notify(3), sd_listen_fds(3)), spoken directly rather
//! than through libsystemd: a datagram of `KEY=value` lines to `$NOTIFY_SOCKET`, and
//! listening sockets inherited from 3 on. Outside systemd (no variables) it does nothing.

use std::os::fd::OwnedFd;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Tells the service manager how the daemon is doing.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace) and
    /// `$WATCHDOG_USEC` (for this process when `$WATCHDOG_PID` says so, or is unset), then
    /// removes them, as sd_notify's callers should, so plugins' children do not inherit them.
    pub fn from_env() -> Notifier {
        let address = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name.as_bytes()).ok()
                }
                None => SocketAddr::from_pathname(path).ok(),
            }
        });
        let socket = address.and_then(|address| Some((UnixDatagram::unbound().ok()?, address)));
        let for_us = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec) / 2);
        for variable in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(variable);
        }
        Notifier { socket, watchdog }
    }

    /// Sends `state` (`READY=1`, `STOPPING=1`, ...); a service manager that does not listen
    /// costs a debug line, nothing more.
    pub fn send(&self, state: &str) {
        if let Some((socket, address)) = &self.socket {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), address) {
                log::debug!("cannot notify the service manager ({state}): {e}");
            }
        }
    }

    /// How often to send `WATCHDOG=1`: half the period systemd asked for.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
    }
}

/// The listening sockets systemd passed (socket activation), when `$LISTEN_PID` is this
/// process; the variables are removed either way.
pub fn listen_fds() -> Vec<OwnedFd> {
    let ours =
        std::env::var("LISTEN_PID").is_ok_and(|pid| pid.trim() == std::process::id().to_string());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<i32>().ok())
        .unwrap_or(0);
    for variable in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(variable);
    }
    if !ours || count <= 0 {
        return Vec::new();
    }
    (0..count)
        .filter_map(|i| crate::sys::inherited_fd(3 + i))
        .collect()
}
