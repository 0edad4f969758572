//! Blocking upgraded connections being served on workers, so that stopping can wake and
//! then end them, and the idle limit can find the silent ones.

use slab::Slab;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A blocking upgraded connection being served on a worker.
pub struct LiveConn {
    pub stream: TcpStream,
    /// Set when the daemon ended the connection for being idle.
    pub idled: AtomicBool,
    /// The kernel's count of bytes its peer took (truncated), as last seen by the idle
    /// check, and when it was seen to change (milliseconds since the process's epoch).
    taken: AtomicU64,
    taken_at: AtomicU64,
}

impl LiveConn {
    pub fn new(stream: TcpStream) -> LiveConn {
        LiveConn {
            stream,
            idled: AtomicBool::new(false),
            taken: AtomicU64::new(0),
            taken_at: AtomicU64::new(millis_now()),
        }
    }

    /// How long since its peer last took bytes, given the kernel's count now.
    fn since_taken(&self, taken: u64) -> Duration {
        let now = millis_now();
        if self.taken.swap(taken, Ordering::Relaxed) != taken {
            self.taken_at.store(now, Ordering::Relaxed);
        }
        Duration::from_millis(now.saturating_sub(self.taken_at.load(Ordering::Relaxed)))
    }
}

fn millis_now() -> u64 {
    protocol_api::moment::epoch().elapsed().as_millis() as u64
}

/// Blocking upgraded connections being served, so that stopping can wake and then end
/// them, and the idle limit can find the silent ones.
#[derive(Default)]
pub struct Live {
    inner: Mutex<LiveInner>,
}

#[derive(Default)]
struct LiveInner {
    conns: Slab<Arc<LiveConn>>,
    /// Once set, new entries have their read side shut as they arrive.
    stopping: bool,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection the caller serves; returns its key for `remove`.
    pub fn add(&self, conn: Arc<LiveConn>) -> usize {
        let mut inner = self.lock();
        if inner.stopping {
            let _ = conn.stream.shutdown(Shutdown::Read);
        }
        inner.conns.insert(conn)
    }

    pub fn remove(&self, key: usize) {
        self.lock().conns.try_remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Shuts the read side of every live socket (now and later added): a blocked `read`
    /// returns 0, so the plugin notices, says goodbye and returns.
    pub fn wake_all(&self) {
        let mut inner = self.lock();
        inner.stopping = true;
        for (_, conn) in inner.conns.iter() {
            let _ = conn.stream.shutdown(Shutdown::Read);
        }
    }

    /// Shuts both directions of every live socket: the grace period is over.
    pub fn end_all(&self) {
        for (_, conn) in self.lock().conns.iter() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
    }

    /// Ends every connection on which no data moved either way for `idle` (the kernel's
    /// count, so bytes a plugin splices itself count too: [`crate::sys::tcp_quiet_for`]);
    /// returns how many. What it still owes its peer is dropped when it is closed.
    pub fn end_idle(&self, idle: Duration) -> usize {
        let mut ended = 0;
        for (_, conn) in self.lock().conns.iter() {
            let quiet = crate::sys::tcp_quiet_for(&conn.stream, |taken| conn.since_taken(taken))
                .unwrap_or(Duration::ZERO);
            if quiet >= idle && !conn.idled.swap(true, Ordering::Relaxed) {
                crate::sys::reset_if_unsent(&conn.stream);
                let _ = conn.stream.shutdown(Shutdown::Both);
                ended += 1;
            }
        }
        ended
    }
}
