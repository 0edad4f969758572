//! The system calls of a tunnel that no safe crate wraps: moving bytes between two
//! non-blocking sockets without copying them through user space (`splice(2)` into a pipe
//! and out of it). Every call is non-blocking; `WouldBlock` means "wait for readiness", as
//! on the sockets themselves. (Reads, writes and SO_LINGER on the sockets go through
//! `socket2`.)
//!
//! All of the plugin's `unsafe` is here.

use protocol_api::clients::Share;
use protocol_api::metrics::Gauge;
use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Most bytes one splice into a pipe asks for (the pipe takes what it has room for), and
/// with it the tunnel's budget per call. The pipe keeps the kernel's default size (64 KiB):
/// pipes count against a per-user quota (`fs.pipe-user-pages-soft`), and grown ones would
/// let a few dozen bulk tunnels use it up for every other pipe of the daemon's user.
pub const CHUNK: usize = 1 << 20;

/// A pipe through which one direction of a tunnel flows: two descriptors while it lives,
/// counted against the process's pipes and its client's share of them (see
/// [`Pipe::take`]).
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The client it is counted for ([`protocol_api::clients::key`]).
    client: u64,
}

/// The process's pipes: how many may be open, how many one client may hold, and how many
/// are.
struct Pipes {
    share: Share,
    open: AtomicUsize,
    /// Pipes held, by client; clients holding none are not kept.
    by_client: Mutex<HashMap<u64, usize>>,
    gauge: Gauge,
}

impl Pipes {
    fn by_client(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.by_client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One of `client`'s pipes is let go.
    fn release(&self, client: u64) {
        let mut by_client = self.by_client();
        if let Some(held) = by_client.get_mut(&client) {
            *held -= 1;
            if *held == 0 {
                by_client.remove(&client);
            }
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The part of the pipes one client may hold: a quarter, as of dials (and a sixteenth of
/// that while fewer than a quarter are free, [`Share::most`]). Stalled downloads each hold
/// a full pipe: one address's could hold them all, and every other client's bulk transfer
/// would copy (an open item since the thirteenth session).
pub fn client_share(limit: usize) -> Share {
    Share {
        total: limit,
        per_client: (limit / 4).max(1),
    }
}

static PIPES: OnceLock<Pipes> = OnceLock::new();

/// Sets how many pipes the tunnels may hold at once (`SWITCHYARD_TUNNEL_MAX_PIPES`), and
/// the gauge that shows them. Once, at load; before it, no pipe is taken.
pub fn limit_pipes(limit: usize, gauge: Gauge) {
    let _ = PIPES.set(Pipes {
        share: client_share(limit),
        open: AtomicUsize::new(0),
        by_client: Mutex::new(HashMap::new()),
        gauge,
    });
}

fn check(result: libc::ssize_t) -> io::Result<usize> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as usize)
    }
}

/// Splices up to `len` bytes, never blocking on the pipe (the sockets are non-blocking
/// themselves). `SPLICE_F_MORE` only into the pipe: on the way out to a socket it corks a
/// small write until the kernel's cork timer (about 200 ms), which an interactive protocol
/// feels on every exchange.
fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> io::Result<usize> {
    let flags = flags | libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    loop {
        // SAFETY: plain descriptors and null offsets (sockets and pipes have none).
        let result = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                flags,
            )
        };
        match check(result) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl Pipe {
    /// A pipe for a tunnel of `client` ([`protocol_api::clients::key`]), if one may be
    /// had: `None` when the tunnels hold their most already (a client's stalled downloads
    /// would otherwise spend the descriptors new connections need: each holds a full
    /// pipe), when the client holds its share ([`client_share`]), or when the system has
    /// none to give (`EMFILE`, `ENFILE`). The direction then copies through user space
    /// instead, as slowly as that is, and nothing fails.
    pub fn take(client: u64) -> Option<Pipe> {
        let pipes = PIPES.get()?;
        let open = pipes.open.fetch_add(1, Ordering::Relaxed);
        if open >= pipes.share.total {
            pipes.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        {
            let free = pipes.share.total - open - 1;
            let mut by_client = pipes.by_client();
            let held = by_client.entry(client).or_insert(0);
            if *held >= pipes.share.most(free) {
                if *held == 0 {
                    by_client.remove(&client);
                }
                pipes.open.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            *held += 1;
        }
        match Pipe::open(client) {
            Ok(pipe) => {
                pipes.gauge.inc();
                Some(pipe)
            }
            Err(e) => {
                pipes.release(client);
                log::debug!("tunnel: no pipe ({e}); copying instead");
                None
            }
        }
    }

    fn open(client: u64) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just opened both; each gets one owner.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe {
            read,
            write,
            client,
        })
    }

    /// Moves up to `len` bytes from socket `from` into the (empty) pipe: `Ok(0)` is the end
    /// of the socket's input, `WouldBlock` that it has nothing now.
    pub fn fill(&self, from: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        splice(
            from.as_raw_fd(),
            self.write.as_raw_fd(),
            len,
            libc::SPLICE_F_MORE,
        )
    }

    /// Moves up to `len` bytes held in the pipe out to socket `to`: `WouldBlock` when it
    /// takes nothing now.
    pub fn drain(&self, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        match splice(self.read.as_raw_fd(), to.as_raw_fd(), len, 0)? {
            0 => Err(ErrorKind::WriteZero.into()),
            n => Ok(n),
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if let Some(pipes) = PIPES.get() {
            pipes.release(self.client);
            pipes.gauge.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test that sets the process's limit: 8 pipes, 2 a client, and 1 while
    /// fewer than 2 are free.
    #[test]
    fn pipes_past_the_limit_or_a_clients_share_are_not_taken_until_one_is_let_go() {
        let gauge = protocol_api::metrics::gauge("test_pipes", "", &[]).unwrap();
        let gauge = gauge.with(&[]);
        limit_pipes(8, gauge);
        let first = Pipe::take(1).expect("one");
        let mut held = vec![Pipe::take(1).expect("two")];
        assert!(Pipe::take(1).is_none(), "a client's share is two");
        for client in 2..5 {
            held.push(Pipe::take(client).expect("the others have theirs"));
        }
        held.push(Pipe::take(2).expect("two of eight are free: a client's share is two"));
        assert!(
            Pipe::take(3).is_none(),
            "one is free: a client's share is one"
        );
        held.push(Pipe::take(5).expect("a client that holds none"));
        held.push(Pipe::take(6).expect("the last one"));
        assert_eq!(gauge.get(), 8);
        assert!(Pipe::take(7).is_none(), "the limit is eight");
        drop(first);
        assert_eq!(gauge.get(), 7);
        held.push(Pipe::take(7).expect("one was let go"));
        drop(held);
        assert_eq!(gauge.get(), 0);
        assert!(PIPES.get().unwrap().by_client().is_empty(), "none kept");
    }
}
