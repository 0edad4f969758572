//! The system calls of a tunnel that no safe crate wraps: moving bytes between two
//! non-blocking sockets without copying them through user space (`splice(2)` into a pipe
//! and out of it). Every call is non-blocking; `WouldBlock` means "wait for readiness", as
//! on the sockets themselves. (Reads, writes and SO_LINGER on the sockets go through
//! `socket2`.)
//!
//! All of the plugin's `unsafe` is here.

use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Most bytes one splice into a pipe asks for (the pipe takes what it has room for), and
/// with it the tunnel's budget per call. The pipe keeps the kernel's default size (64 KiB):
/// pipes count against a per-user quota (`fs.pipe-user-pages-soft`), and grown ones would
/// let a few dozen bulk tunnels use it up for every other pipe of the daemon's user.
pub const CHUNK: usize = 1 << 20;

/// A pipe through which one direction of a tunnel flows.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
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
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just opened both; each gets one owner.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
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
