//! [`Connection`]: the upgraded connection as blocking `Read + Write`, for
//! [`Protocol::serve`](crate::Protocol::serve).

use crate::raw::RawIo;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

/// The connection after the `101`. Reads return the bytes the client sent right after the
/// request first (the daemon may have read them ahead), then whatever arrives on the socket.
/// Writes go straight to the socket; there is no buffering to flush.
///
/// Not `Send`: the daemon's callbacks behind it may be used only from the thread running
/// `serve` (or threads it joins before returning, through a shared borrow).
pub struct Connection<'a> {
    io: RawIo<'a>,
}

impl<'a> Connection<'a> {
    /// Wraps the host's connection.
    ///
    /// # Safety
    /// `raw` must be a live connection from the host, used only during the `serve` call.
    pub unsafe fn from_raw(raw: &'a crate::abi::RawConnection) -> Self {
        Connection {
            // SAFETY: the caller's contract.
            io: unsafe { RawIo::new(raw) },
        }
    }

    /// Shuts down one or both directions. Shutting the write side sends the peer a FIN once
    /// everything written is out; the read side keeps working.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.shutdown(how)
    }

    /// Makes a blocking read fail with `WouldBlock` after `timeout` (None: wait forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.io.set_read_timeout(timeout)
    }

    /// How long a write may wait for the peer to take bytes before the daemon ends the
    /// connection (the write fails with `TimedOut`). `None` restores the daemon's
    /// `SWITCHYARD_WRITE_TIMEOUT_MS`. Fails with `Unsupported` on a daemon older than ABI 1.1.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.io.set_write_timeout(timeout)
    }

    /// Bytes held by the daemon that the next reads return before touching the socket. Read
    /// them before using [`AsFd`] for reads of your own (`splice`).
    pub fn buffered(&self) -> usize {
        self.io.buffered()
    }

    /// True once the daemon is stopping. The daemon then also shuts the read side, so a
    /// blocked read returns 0: say goodbye in the protocol's terms and return from `serve`.
    pub fn is_stopping(&self) -> bool {
        self.io.is_stopping()
    }
}

impl Read for Connection<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read(buf)
    }
}

impl Write for Connection<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.io.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Connection<'_> {
    /// The socket, lent for `setsockopt`, `splice` and the like; the daemon owns it.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}
