//! Calls through a [`RawConnection`]: the one place the safe connection types
//! ([`Connection`](crate::Connection), [`Io`](crate::Io)) touch the host's function pointers.

use crate::abi::{RawBytes, RawConnection, RawWaker, SHUTDOWN_BOTH, SHUTDOWN_READ, SHUTDOWN_WRITE};
use std::io::{self, IoSlice};
use std::marker::PhantomData;
use std::net::Shutdown;
use std::os::fd::BorrowedFd;
use std::time::Duration;

/// A borrowed host connection. `!Send` and `!Sync` on purpose: the host's callbacks for one
/// connection must never run on two threads at once (see [`crate::abi`]).
#[derive(Clone, Copy)]
pub(crate) struct RawIo<'a> {
    raw: &'a RawConnection,
    _one_thread: PhantomData<*const ()>,
}

fn result(code: i32, n: usize) -> io::Result<usize> {
    if code == 0 {
        Ok(n)
    } else {
        Err(io::Error::from_raw_os_error(code))
    }
}

fn millis(timeout: Option<Duration>) -> u64 {
    timeout.map_or(0, |t| {
        u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

impl<'a> RawIo<'a> {
    /// # Safety
    /// `raw` must be a live connection from the host, used only during the call that lent it.
    pub(crate) unsafe fn new(raw: &'a RawConnection) -> Self {
        RawIo {
            raw,
            _one_thread: PhantomData,
        }
    }

    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        // SAFETY: the host's function with its own context; `buf` is writable for its length.
        let code = unsafe { (self.raw.read)(self.raw.ctx, buf.as_mut_ptr(), buf.len(), &mut n) };
        result(code, n)
    }

    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut n = 0;
        // SAFETY: the host's function with its own context; `buf` is readable for its length.
        let code = unsafe { (self.raw.write)(self.raw.ctx, buf.as_ptr(), buf.len(), &mut n) };
        result(code, n)
    }

    pub(crate) fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
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

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => SHUTDOWN_READ,
            Shutdown::Write => SHUTDOWN_WRITE,
            Shutdown::Both => SHUTDOWN_BOTH,
        };
        // SAFETY: the host's function, called with its own context.
        result(unsafe { (self.raw.shutdown)(self.raw.ctx, how) }, 0).map(drop)
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        // SAFETY: the host's function, called with its own context.
        let code = unsafe { (self.raw.set_read_timeout)(self.raw.ctx, millis(timeout)) };
        result(code, 0).map(drop)
    }

    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        // The field exists only in connections from a host of ABI 1.1 or later.
        let set = match crate::host::host_minor() >= 1 {
            true => self.raw.set_write_timeout,
            false => None,
        };
        let Some(set) = set else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the daemon predates write time-outs (plugin ABI 1.1)",
            ));
        };
        // SAFETY: the host's function, called with its own context.
        result(unsafe { set(self.raw.ctx, millis(timeout)) }, 0).map(drop)
    }

    /// `watch` (`true`) or `unwatch` a descriptor of the plugin's; `Unsupported` on a host
    /// older than ABI 1.2.
    pub(crate) fn watch(&self, fd: std::os::fd::RawFd, watch: bool) -> io::Result<()> {
        let call = match crate::host::host_minor() >= 2 {
            true if watch => self.raw.watch,
            true => self.raw.unwatch,
            false => None,
        };
        let Some(call) = call else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the daemon predates watching descriptors (plugin ABI 1.2)",
            ));
        };
        // SAFETY: the host's function, called with its own context.
        result(unsafe { call(self.raw.ctx, fd) }, 0).map(drop)
    }

    /// This connection's waker; `Unsupported` on a host older than ABI 1.10.
    pub(crate) fn waker(&self) -> io::Result<Waker> {
        let call = match crate::host::host_minor() >= 10 {
            true => self.raw.waker,
            false => None,
        };
        let Some(call) = call else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the daemon predates wakers (plugin ABI 1.10)",
            ));
        };
        let mut raw = std::mem::MaybeUninit::<RawWaker>::uninit();
        // SAFETY: the host's function, called with its own context; `raw` is writable.
        result(unsafe { call(self.raw.ctx, raw.as_mut_ptr()) }, 0)?;
        // SAFETY: the host filled it, as it answered 0.
        let raw = unsafe { raw.assume_init() };
        Ok(Waker { raw })
    }

    pub(crate) fn buffered(&self) -> usize {
        // SAFETY: the host's function, called with its own context.
        unsafe { (self.raw.buffered)(self.raw.ctx) }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        // SAFETY: the host's function, called with its own context.
        unsafe { (self.raw.is_stopping)(self.raw.ctx) != 0 }
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'a> {
        // SAFETY: the host keeps the socket open for as long as the call that lent the
        // connection runs, which outlives `'a`.
        unsafe { BorrowedFd::borrow_raw(self.raw.fd) }
    }
}

/// A readiness connection's waker (ABI 1.10, [`Io::waker`](crate::Io::waker)): any thread
/// may keep it and [`wake`](Waker::wake) the connection, whose event loop then calls
/// `on_ready` with [`Ready::is_woken`](crate::Ready::is_woken) set. It may outlive the
/// connection (a wake then does nothing and says so); clones wake the same connection.
pub struct Waker {
    raw: RawWaker,
}

// SAFETY: the ABI lets a waker's functions be called from any thread, from several at once,
// and a handle be released on any thread (the host's functions are thread-safe).
unsafe impl Send for Waker {}
// SAFETY: as above.
unsafe impl Sync for Waker {}

impl Waker {
    /// Asks for an `on_ready` call with `READY_WOKEN`, after the call under way if any.
    /// Wakes before that call are told in it once. False when the connection has ended
    /// (drop the waker then); true may still bring no call if the connection ends
    /// meanwhile. From any thread, but not from a signal handler (it may take a lock).
    pub fn wake(&self) -> bool {
        // SAFETY: the host's function with the context this handle owns.
        unsafe { (self.raw.wake)(self.raw.ctx) == 0 }
    }
}

impl Clone for Waker {
    fn clone(&self) -> Waker {
        // SAFETY: the host's function with the context this handle owns; the new context
        // is owned by the new handle.
        let ctx = unsafe { (self.raw.clone)(self.raw.ctx) };
        Waker {
            raw: RawWaker { ctx, ..self.raw },
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        // SAFETY: the context this handle owns, given back once.
        unsafe { (self.raw.release)(self.raw.ctx) }
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waker").finish_non_exhaustive()
    }
}
