//! [`Connection`]: the upgraded connection as blocking `Read + Write`.

use crate::abi::{RawBytes, RawConnection, SHUTDOWN_BOTH, SHUTDOWN_READ, SHUTDOWN_WRITE};
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// The connection after the `101`. Reads return the bytes the client sent right after the
/// request first (the daemon may have read them ahead), then whatever arrives on the socket.
/// Writes go straight to the socket; there is no buffering to flush.
pub struct Connection<'a> {
    raw: &'a RawConnection,
}

fn result(code: i32, n: usize) -> io::Result<usize> {
    if code == 0 {
        Ok(n)
    } else {
        Err(io::Error::from_raw_os_error(code))
    }
}

impl<'a> Connection<'a> {
    /// Wraps the host's connection.
    ///
    /// # Safety
    /// `raw` must be a live connection from the host, used only during the `serve` call.
    pub unsafe fn from_raw(raw: &'a RawConnection) -> Self {
        Connection { raw }
    }

    /// Shuts down one or both directions. Shutting the write side sends the peer a FIN once
    /// everything written is out; the read side keeps working.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => SHUTDOWN_READ,
            Shutdown::Write => SHUTDOWN_WRITE,
            Shutdown::Both => SHUTDOWN_BOTH,
        };
        // SAFETY: the host's function, called with its own context.
        result(unsafe { (self.raw.shutdown)(self.raw.ctx, how) }, 0).map(drop)
    }

    /// Makes a blocking read fail with `WouldBlock` after `timeout` (None: wait forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let millis = timeout.map_or(0, |t| (t.as_millis() as u64).max(1));
        // SAFETY: the host's function, called with its own context.
        result(
            unsafe { (self.raw.set_read_timeout)(self.raw.ctx, millis) },
            0,
        )
        .map(drop)
    }

    /// Bytes held by the daemon that the next reads return before touching the socket. Read
    /// them before using [`AsRawFd`] for reads of your own (`splice`).
    pub fn buffered(&self) -> usize {
        // SAFETY: the host's function, called with its own context.
        unsafe { (self.raw.buffered)(self.raw.ctx) }
    }

    /// True once the daemon is stopping. The daemon then also shuts the read side, so a
    /// blocked read returns 0: say goodbye in the protocol's terms and return from `serve`.
    pub fn is_stopping(&self) -> bool {
        // SAFETY: the host's function, called with its own context.
        unsafe { (self.raw.is_stopping)(self.raw.ctx) != 0 }
    }
}

impl Read for Connection<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        // SAFETY: `buf` is writable for `buf.len()` bytes during the call.
        let code = unsafe { (self.raw.read)(self.raw.ctx, buf.as_mut_ptr(), buf.len(), &mut n) };
        result(code, n)
    }
}

impl Write for Connection<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut n = 0;
        // SAFETY: `buf` is readable for `buf.len()` bytes during the call.
        let code = unsafe { (self.raw.write)(self.raw.ctx, buf.as_ptr(), buf.len(), &mut n) };
        result(code, n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut raw = [RawBytes::EMPTY; 16];
        let count = bufs.len().min(raw.len());
        for (slot, buf) in raw.iter_mut().zip(bufs) {
            *slot = RawBytes::new(buf);
        }
        let mut n = 0;
        // SAFETY: `raw[..count]` borrows slices that outlive the call.
        let code = unsafe { (self.raw.write_vectored)(self.raw.ctx, raw.as_ptr(), count, &mut n) };
        result(code, n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Connection<'_> {
    fn as_raw_fd(&self) -> RawFd {
        self.raw.fd
    }
}

impl AsFd for Connection<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the host keeps the socket open for as long as `serve` runs, which outlives
        // any borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(self.raw.fd) }
    }
}
