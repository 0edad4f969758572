//! The host's half of a connection lent to a plugin: the `extern "C"` callbacks of a
//! [`RawConnection`], written once over a safe trait ([`HostConnection`]) so that the
//! daemon and this crate's [`testing`](crate::testing) host give plugins the same
//! semantics: the same `errno` for the same failure, the same shutdown modes, the same
//! answer to a callback that panics. A plugin never needs this module; a host does.

use crate::abi::{RawBytes, RawConnection, RawWaker, SHUTDOWN_BOTH, SHUTDOWN_READ, SHUTDOWN_WRITE};
use core::ffi::c_void;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// A connection as a host serves it to a plugin. Errors carry an OS error where there is
/// one; others are mapped by [`errno`].
pub trait HostConnection {
    /// Reads bytes read ahead of the switch first, then the socket.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes to the socket.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Gathers slices into one write.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Shuts one or both directions.
    fn shutdown(&mut self, how: Shutdown) -> io::Result<()>;
    /// `None`: reads block without limit (blocking connections only).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// `None`: back to the host's default write time-out.
    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// Bytes read ahead of the switch and not yet read by the plugin.
    fn buffered(&self) -> usize;
    /// The host is stopping: finish up.
    fn is_stopping(&self) -> bool;
    /// Watches (`true`) or stops watching a descriptor of the plugin's (ABI 1.2); only
    /// readiness connections can, others answer `EINVAL`.
    fn watch(&mut self, _fd: RawFd, _watch: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
    /// A waker of this connection (ABI 1.10), made with [`raw_waker`]; only readiness
    /// connections have one, others answer `EINVAL`.
    fn waker(&mut self) -> io::Result<RawWaker> {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// What a host's waker does (ABI 1.10): called from any thread, at once from several.
pub trait HostWaker: Send + Sync + 'static {
    /// Asks the connection's loop for an `on_ready` call with `READY_WOKEN`; false when
    /// the connection has ended.
    fn wake(&self) -> bool;
}

/// A waker in the ABI's shape, owning one count of `waker` (given back by the plugin's
/// `release`).
pub fn raw_waker<W: HostWaker>(waker: Arc<W>) -> RawWaker {
    RawWaker {
        ctx: Arc::into_raw(waker).cast(),
        wake: waker_wake::<W>,
        clone: waker_clone::<W>,
        release: waker_release::<W>,
    }
}

unsafe extern "C" fn waker_wake<W: HostWaker>(ctx: *const c_void) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` is a count of an `Arc<W>` that the caller's handle owns (made by
        // `raw_waker` or `waker_clone`, not yet released), so the `W` is alive.
        let waker = unsafe { &*ctx.cast::<W>() };
        match waker.wake() {
            true => 0,
            false => libc::ESRCH,
        }
    })
}

unsafe extern "C" fn waker_clone<W: HostWaker>(ctx: *const c_void) -> *const c_void {
    // SAFETY: as in `waker_wake`: the caller's count keeps the `Arc` alive while another
    // count is added, which the new handle owns.
    unsafe { Arc::increment_strong_count(ctx.cast::<W>()) };
    ctx
}

unsafe extern "C" fn waker_release<W: HostWaker>(ctx: *const c_void) {
    guarded((), || {
        // SAFETY: the count this handle owned, given back once (the ABI's rule).
        drop(unsafe { Arc::from_raw(ctx.cast::<W>()) });
    })
}

/// What a host knows of a non-blocking socket between readiness events, and the rule by
/// which reads and writes change it. Events are edge-triggered: one comes when the socket
/// changes, not while it stays ready; so the host remembers "may still be read" and "may
/// still take bytes" until a read returns less than asked or a write takes less than
/// offered (the socket was drained, or filled: the next change brings an event), or
/// `WouldBlock`. Once the peer's end was seen (`closed`), no event will come for it again,
/// so only a read of 0 (or an error) ends "may still be read". Readiness plugins are
/// thereby served level-triggered: called while what they want may be possible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The socket may hold unread bytes.
    pub readable: bool,
    /// The socket may take more bytes.
    pub writable: bool,
    /// Bytes moved (either way) since the host last cleared this: a call that moved none
    /// is not repeated until an event comes.
    pub moved: bool,
    /// The peer's end (or a failure) was reported: the socket is readable until a read
    /// returns 0.
    pub closed: bool,
}

impl Readiness {
    /// Notes what a read of `asked` bytes came to, and passes it on.
    pub fn read(&mut self, result: io::Result<usize>, asked: usize) -> io::Result<usize> {
        match &result {
            Ok(n) => {
                self.moved |= *n > 0;
                if *n == 0 || (*n < asked && !self.closed) {
                    self.readable = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
            Err(_) => {}
        }
        result
    }

    /// Notes what a write of `offered` bytes came to, and passes it on.
    pub fn wrote(&mut self, result: io::Result<usize>, offered: usize) -> io::Result<usize> {
        match &result {
            Ok(n) => {
                self.moved |= *n > 0;
                if *n < offered {
                    self.writable = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
            Err(_) => {}
        }
        result
    }
}

/// The connection in the ABI's shape, its context pointing at `connection`: valid while
/// `connection` stays where it is and is not otherwise used, which is for the plugin call
/// it is lent to.
pub fn raw_connection<C: HostConnection>(connection: &mut C, fd: RawFd) -> RawConnection {
    RawConnection {
        ctx: (connection as *mut C).cast(),
        read: conn_read::<C>,
        write: conn_write::<C>,
        write_vectored: conn_write_vectored::<C>,
        shutdown: conn_shutdown::<C>,
        set_read_timeout: conn_set_read_timeout::<C>,
        buffered: conn_buffered::<C>,
        is_stopping: conn_is_stopping::<C>,
        fd,
        set_write_timeout: Some(conn_set_write_timeout::<C>),
        watch: Some(conn_watch::<C>),
        unwatch: Some(conn_unwatch::<C>),
        waker: Some(conn_waker::<C>),
    }
}

/// The `errno` a callback returns for `e`: its OS error, or the nearest one for errors
/// made in Rust (`WouldBlock` is `EAGAIN`, a time-out `ETIMEDOUT`, anything else `EIO`).
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(match e.kind() {
        io::ErrorKind::WouldBlock => libc::EAGAIN,
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        _ => libc::EIO,
    })
}

/// Runs a callback's body; a panic gives `fallback` instead of unwinding into the plugin.
pub fn guarded<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The bytes a plugin lends a callback.
///
/// # Safety
/// `bytes` is readable for its length for the duration of the callback (NULL only when
/// empty).
pub unsafe fn lent<'a>(bytes: RawBytes) -> &'a [u8] {
    if bytes.ptr.is_null() || bytes.len == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { bytes.as_slice() }
}

fn io_result(result: io::Result<usize>, n: *mut usize) -> i32 {
    match result {
        Ok(count) => {
            if !n.is_null() {
                // SAFETY: `n` is the plugin's out-pointer for this call.
                unsafe { *n = count };
            }
            0
        }
        Err(e) => errno(&e),
    }
}

fn unit_result(result: io::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => errno(&e),
    }
}

/// # Safety
/// `ctx` is the `C` passed in the `RawConnection`, alive during the plugin call that lent it.
unsafe fn host<'a, C>(ctx: *mut c_void) -> &'a mut C {
    // SAFETY: the caller's contract.
    unsafe { &mut *ctx.cast::<C>() }
}

unsafe extern "C" fn conn_read<C: HostConnection>(
    ctx: *mut c_void,
    buf: *mut u8,
    len: usize,
    n: *mut usize,
) -> i32 {
    guarded(libc::EIO, || {
        let buf: &mut [u8] = if len == 0 || buf.is_null() {
            &mut []
        } else {
            // SAFETY: `buf` is writable for `len` bytes during the call.
            unsafe { std::slice::from_raw_parts_mut(buf, len) }
        };
        // SAFETY: `ctx` per the ABI.
        io_result(unsafe { host::<C>(ctx) }.read(buf), n)
    })
}

unsafe extern "C" fn conn_write<C: HostConnection>(
    ctx: *mut c_void,
    buf: *const u8,
    len: usize,
    n: *mut usize,
) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `buf` is readable for `len` bytes during the call (NULL only when empty).
        let buf = unsafe { lent(RawBytes { ptr: buf, len }) };
        // SAFETY: `ctx` per the ABI.
        io_result(unsafe { host::<C>(ctx) }.write(buf), n)
    })
}

unsafe extern "C" fn conn_write_vectored<C: HostConnection>(
    ctx: *mut c_void,
    bufs: *const RawBytes,
    count: usize,
    n: *mut usize,
) -> i32 {
    guarded(libc::EIO, || {
        let raw: &[RawBytes] = if count == 0 || bufs.is_null() {
            &[]
        } else {
            // SAFETY: `bufs` holds `count` slices lent for the call.
            unsafe { std::slice::from_raw_parts(bufs, count) }
        };
        // At most 64 slices a call (no allocation); the caller sees a short write.
        let mut slices = [IoSlice::new(&[]); 64];
        let used = raw.len().min(slices.len());
        for (slot, bytes) in slices.iter_mut().zip(raw) {
            // SAFETY: each slice is lent for the call.
            *slot = IoSlice::new(unsafe { lent(*bytes) });
        }
        // SAFETY: `ctx` per the ABI.
        io_result(unsafe { host::<C>(ctx) }.write_vectored(&slices[..used]), n)
    })
}

/// The shutdown mode of the ABI's number; `None` for a number the ABI does not define.
pub fn shutdown_mode(how: u32) -> Option<Shutdown> {
    match how {
        SHUTDOWN_READ => Some(Shutdown::Read),
        SHUTDOWN_WRITE => Some(Shutdown::Write),
        SHUTDOWN_BOTH => Some(Shutdown::Both),
        _ => None,
    }
}

unsafe extern "C" fn conn_shutdown<C: HostConnection>(ctx: *mut c_void, how: u32) -> i32 {
    guarded(libc::EIO, || {
        let Some(how) = shutdown_mode(how) else {
            return libc::EINVAL;
        };
        // SAFETY: `ctx` per the ABI.
        match unsafe { host::<C>(ctx) }.shutdown(how) {
            // Already shut or reset by the peer: the goal (no more traffic) is met.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => 0,
            other => unit_result(other),
        }
    })
}

fn timeout(millis: u64) -> Option<Duration> {
    (millis > 0).then(|| Duration::from_millis(millis))
}

unsafe extern "C" fn conn_set_read_timeout<C: HostConnection>(
    ctx: *mut c_void,
    millis: u64,
) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` per the ABI.
        let connection = unsafe { host::<C>(ctx) };
        unit_result(connection.set_read_timeout(timeout(millis)))
    })
}

unsafe extern "C" fn conn_set_write_timeout<C: HostConnection>(
    ctx: *mut c_void,
    millis: u64,
) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` per the ABI.
        let connection = unsafe { host::<C>(ctx) };
        unit_result(connection.set_write_timeout(timeout(millis)))
    })
}

unsafe extern "C" fn conn_watch<C: HostConnection>(ctx: *mut c_void, fd: i32) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` per the ABI.
        let connection = unsafe { host::<C>(ctx) };
        unit_result(connection.watch(fd, true))
    })
}

unsafe extern "C" fn conn_unwatch<C: HostConnection>(ctx: *mut c_void, fd: i32) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` per the ABI.
        let connection = unsafe { host::<C>(ctx) };
        unit_result(connection.watch(fd, false))
    })
}

unsafe extern "C" fn conn_waker<C: HostConnection>(ctx: *mut c_void, out: *mut RawWaker) -> i32 {
    guarded(libc::EIO, || {
        if out.is_null() {
            return libc::EINVAL;
        }
        // SAFETY: `ctx` per the ABI.
        match unsafe { host::<C>(ctx) }.waker() {
            Ok(waker) => {
                // SAFETY: `out` is the plugin's, writable for a `RawWaker`, for this call.
                unsafe { out.write(waker) };
                0
            }
            Err(e) => errno(&e),
        }
    })
}

unsafe extern "C" fn conn_buffered<C: HostConnection>(ctx: *mut c_void) -> usize {
    // SAFETY: `ctx` per the ABI.
    guarded(0, || unsafe { host::<C>(ctx) }.buffered())
}

unsafe extern "C" fn conn_is_stopping<C: HostConnection>(ctx: *mut c_void) -> u8 {
    // SAFETY: `ctx` per the ABI.
    guarded(0, || u8::from(unsafe { host::<C>(ctx) }.is_stopping()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose every call fails as told (or panics).
    struct Failing {
        error: Option<io::Error>,
        panics: bool,
    }

    impl Failing {
        fn fail(&mut self) -> io::Error {
            if self.panics {
                panic!("a host bug");
            }
            self.error.take().expect("one failure per call")
        }
    }

    impl HostConnection for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(self.fail())
        }
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.fail())
        }
        fn write_vectored(&mut self, _: &[IoSlice<'_>]) -> io::Result<usize> {
            Err(self.fail())
        }
        fn shutdown(&mut self, _: Shutdown) -> io::Result<()> {
            Err(self.fail())
        }
        fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
            Err(self.fail())
        }
        fn set_write_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
            Err(self.fail())
        }
        fn buffered(&self) -> usize {
            0
        }
        fn is_stopping(&self) -> bool {
            false
        }
    }

    fn read_errno(error: io::Error) -> i32 {
        let mut host = Failing {
            error: Some(error),
            panics: false,
        };
        let raw = raw_connection(&mut host, -1);
        let mut n = 0;
        let mut buf = [0u8; 4];
        // SAFETY: `raw` points at `host`, alive for the call; `buf` and `n` too.
        unsafe { (raw.read)(raw.ctx, buf.as_mut_ptr(), buf.len(), &mut n) }
    }

    #[test]
    fn a_short_read_drains_until_the_peers_end_then_only_a_read_of_0_does() {
        let mut readiness = Readiness {
            readable: true,
            ..Readiness::default()
        };
        let _ = readiness.read(Ok(10), 100);
        assert!(!readiness.readable, "a short read drained it");
        readiness.readable = true;
        readiness.closed = true;
        let _ = readiness.read(Ok(10), 100);
        assert!(readiness.readable, "the end comes with no event: read on");
        let _ = readiness.read(Ok(0), 100);
        assert!(!readiness.readable, "the end is read");
        assert!(readiness.moved);
    }

    #[test]
    fn errors_reach_the_plugin_as_errno() {
        assert_eq!(
            read_errno(io::Error::from_raw_os_error(libc::ECONNRESET)),
            libc::ECONNRESET
        );
        assert_eq!(read_errno(io::ErrorKind::WouldBlock.into()), libc::EAGAIN);
        assert_eq!(read_errno(io::ErrorKind::TimedOut.into()), libc::ETIMEDOUT);
        assert_eq!(read_errno(io::Error::other("made in Rust")), libc::EIO);
    }

    #[test]
    fn shutdown_takes_the_abi_modes_only_and_a_gone_peer_is_no_error() {
        let mut host = Failing {
            error: None,
            panics: false,
        };
        let raw = raw_connection(&mut host, -1);
        // SAFETY: `raw` points at `host`, alive for the calls.
        assert_eq!(unsafe { (raw.shutdown)(raw.ctx, 99) }, libc::EINVAL);
        host.error = Some(io::Error::from_raw_os_error(libc::ENOTCONN));
        let raw = raw_connection(&mut host, -1);
        // SAFETY: as above.
        assert_eq!(unsafe { (raw.shutdown)(raw.ctx, SHUTDOWN_WRITE) }, 0);
        assert_eq!(shutdown_mode(SHUTDOWN_READ), Some(Shutdown::Read));
        assert_eq!(shutdown_mode(SHUTDOWN_BOTH), Some(Shutdown::Both));
    }

    #[test]
    fn a_host_that_panics_gives_eio_and_does_not_unwind_into_the_plugin() {
        let mut host = Failing {
            error: None,
            panics: true,
        };
        let raw = raw_connection(&mut host, -1);
        let mut n = 0;
        // SAFETY: `raw` points at `host`, alive for the call; an empty write needs no buffer.
        let code = unsafe { (raw.write)(raw.ctx, std::ptr::null(), 0, &mut n) };
        assert_eq!(code, libc::EIO);
    }
}
