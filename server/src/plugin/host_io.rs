//! The daemon's side of a switched connection while plugin code runs on it: what the
//! callbacks ([`protocol_api::hosting`], the same for the daemon and the test host) call.
//! Two kinds, one trait ([`HostConnection`]):
//! - [`BlockingConn`]: a blocking socket on a worker thread (`serve`);
//! - [`EventIo`]: a non-blocking socket on an event loop (`on_ready`), which also notes
//!   whether the socket was drained or filled, so the loop knows when to call again.
//!
//! Both serve the bytes read ahead of the switch first, count bytes for the access line,
//! and apply the daemon's write time-out.

use super::wakes::{WakeTarget, Wakes};
use crate::tls::layer::{Mode, TlsLayer};
use protocol_api::hosting::{HostConnection, Readiness};
use protocol_api::kernel_share::KernelShare;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most descriptors one readiness connection may have its loop watch.
pub const MAX_WATCHED: usize = 16;

/// What a readiness connection needs to have its event loop watch descriptors of its own
/// (a backend socket, a child's pipes): the loop's registry and the connection's watch
/// token, lent by the loop for each call (they follow from the loop and the slot, so the
/// connection keeps neither), and the connection's list, boxed and made on the first watch
/// (most connections never watch anything). An event on a watched descriptor calls the
/// plugin with `READY_WATCHED`. Also what it needs to make its waker (ABI 1.10): the
/// loop's wakes and the connection's slot and id.
#[derive(Clone, Copy)]
pub struct Watcher<'a> {
    pub registry: &'a mio::Registry,
    pub token: mio::Token,
    pub wakes: &'a Arc<Wakes>,
    pub slot: usize,
    pub id: u32,
}

/// A readiness connection's rarely used ties to its loop, boxed and made on first use (an
/// idle connection pays a pointer for them).
pub type Watched = Option<Box<Ties>>;

#[derive(Default)]
pub struct Ties {
    /// The descriptors it has its loop watch.
    fds: Vec<RawFd>,
    /// What its wakers point at, once the plugin asked for one (ABI 1.10).
    pub waker: Option<Arc<WakeTarget>>,
}

impl Drop for Ties {
    fn drop(&mut self) {
        // However the connection ends (its close says so first, as its plugin's state goes;
        // this covers a loop that ends on an error), its wakers do nothing from now on.
        if let Some(waker) = &self.waker {
            waker.end();
        }
    }
}

/// Its wakers' target, if the plugin ever asked for a waker.
pub fn waker_of(watched: &Watched) -> Option<&Arc<WakeTarget>> {
    watched.as_ref()?.waker.as_ref()
}

impl Watcher<'_> {
    fn watch(&self, watched: &mut Watched, fd: RawFd, watch: bool) -> io::Result<()> {
        use mio::unix::SourceFd;
        let fds = &mut watched.get_or_insert_with(Default::default).fds;
        let known = fds.iter().position(|&f| f == fd);
        match (watch, known) {
            (true, Some(_)) | (false, None) => Ok(()),
            (true, None) if fds.len() >= MAX_WATCHED => {
                Err(io::Error::from_raw_os_error(libc::EMFILE))
            }
            (true, None) => {
                let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
                self.registry
                    .register(&mut SourceFd(&fd), self.token, interest)?;
                fds.push(fd);
                Ok(())
            }
            (false, Some(index)) => {
                fds.swap_remove(index);
                self.registry.deregister(&mut SourceFd(&fd))
            }
        }
    }

    /// Stops watching everything (before the plugin's state, which owns the descriptors,
    /// is dropped).
    pub fn clear(&self, watched: &mut Watched) {
        let fds = watched.as_mut().map(|ties| std::mem::take(&mut ties.fds));
        for fd in fds.into_iter().flatten() {
            let _ = self.registry.deregister(&mut mio::unix::SourceFd(&fd));
        }
    }
}

/// Bytes the event loop read past the request: the new protocol's first bytes, which the
/// plugin's reads return before the socket's. Boxed, and only while there are some: most
/// connections have none, and every connection carries this for its whole life.
#[derive(Default)]
pub struct ReadAhead(Option<Box<Ahead>>);

struct Ahead {
    bytes: Vec<u8>,
    at: usize,
}

impl ReadAhead {
    /// The bytes read past the request. An empty buffer is let go at once: it is mostly
    /// the request's own, emptied, and would otherwise stay with the connection for its
    /// whole life (a hundred bytes and more per idle connection).
    pub fn new(bytes: Vec<u8>) -> ReadAhead {
        match bytes.is_empty() {
            true => ReadAhead(None),
            false => ReadAhead(Some(Box::new(Ahead { bytes, at: 0 }))),
        }
    }

    pub fn len(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |ahead| ahead.bytes.len() - ahead.at)
    }

    /// Copies what fits into `buf`; `None` when nothing is left (read the socket).
    fn take(&mut self, buf: &mut [u8]) -> Option<usize> {
        let ahead = self.0.as_mut()?;
        let rest = &ahead.bytes[ahead.at..];
        if buf.is_empty() {
            return None;
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        ahead.at += n;
        if ahead.at == ahead.bytes.len() {
            self.0 = None; // hold no buffer once it is served
        }
        Some(n)
    }
}

fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A switched connection served by a blocking `serve` on a worker thread.
pub struct BlockingConn<'a> {
    pub stream: &'a TcpStream,
    /// The TLS session over the socket, on a TLS listener: every byte goes through it.
    pub tls: Option<&'a mut TlsLayer>,
    pub read_ahead: ReadAhead,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub stopping: &'a AtomicBool,
    /// The daemon's write time-out, in force unless the plugin set its own.
    pub default_write_timeout: Duration,
    /// A write waited longer than the write time-out: the connection was ended.
    pub write_timed_out: bool,
    /// How much of the plugin's output the kernel holds unsent: past its share, a write
    /// waits (in the kernel) until the peer took it down to a quarter of it.
    pub kernel: KernelShare,
    /// What the peer had acknowledged (low 32 bits) when the kernel's share was last found
    /// full, or at the last write time-out since: a write that waits a whole time-out goes
    /// on waiting if the peer took something meanwhile ([`took_some`]).
    pub acked_mark: Option<u32>,
}

impl BlockingConn<'_> {
    /// Sends what a blocking write returns, marking progress; a write that waited for the
    /// whole write time-out ends the connection.
    fn wrote(&mut self, result: io::Result<usize>) -> io::Result<usize> {
        match result {
            Ok(n) => {
                self.bytes_out += n as u64;
                if self.kernel.wrote(n, &mut self.stream.as_fd()) {
                    self.acked_mark = crate::sys::tcp_acked(self.stream);
                } else if !self.kernel.is_full() {
                    self.acked_mark = None;
                }
                Ok(n)
            }
            // SO_SNDTIMEO expired: the peer took nothing for the whole time-out.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.write_timed_out = true;
                crate::sys::reset_if_unsent(self.stream);
                let _ = self.stream.shutdown(Shutdown::Both);
                Err(io::ErrorKind::TimedOut.into())
            }
            Err(e) => Err(e),
        }
    }
}

impl HostConnection for BlockingConn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(n) = self.read_ahead.take(buf) {
            return Ok(n);
        }
        let read = match self.tls.as_deref_mut() {
            Some(tls) => tls.read(&mut &*self.stream, buf, Mode::Blocking),
            None => retry(|| (&mut &*self.stream).read(buf)),
        };
        let n = read?;
        self.bytes_in += n as u64;
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let (stream, mark) = (self.stream, &mut self.acked_mark);
        let result = match self.tls.as_deref_mut() {
            Some(tls) => write_through(tls, stream, bufs, || took_some(stream, mark)),
            None => loop {
                match retry(|| plain_write(stream, bufs)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && took_some(stream, mark) => {}
                    result => break result,
                }
            },
        };
        self.wrote(result)
    }

    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if let (Some(tls), Shutdown::Write | Shutdown::Both) = (self.tls.as_deref_mut(), how) {
            // Blocking: close_notify goes out with what waits (or the write time-out ends it).
            let _ = tls.close(&mut &*self.stream);
        }
        self.stream.shutdown(how)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream
            .set_write_timeout(Some(timeout.unwrap_or(self.default_write_timeout)))
    }

    fn buffered(&self) -> usize {
        self.read_ahead.len()
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// Writes `bufs` to a plain socket: one buffer with `send`, more with `writev`. The kernel's
/// `writev` takes a socket write through the file layer and imports the vector: 100-190 ns
/// more than `send` for a 64-byte write on loopback here (about 4 us each, delivery
/// included), 2-3% of a small echo's message.
fn plain_write(mut stream: impl Write, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    match bufs {
        [one] => stream.write(one),
        _ => stream.write_vectored(bufs),
    }
}

/// A blocking write through TLS: sealed, then written out whole (the socket's write
/// time-out ends it with `WouldBlock`, as a plain write's would, unless `took_some` says
/// the peer took something meanwhile: what was sealed is then written on, never sealed
/// twice).
fn write_through(
    tls: &mut TlsLayer,
    socket: &TcpStream,
    bufs: &[IoSlice<'_>],
    mut took_some: impl FnMut() -> bool,
) -> io::Result<usize> {
    let n = loop {
        match tls.write_vectored(&mut &*socket, bufs) {
            // Nothing sealed: the records before did not go out in time.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && took_some() => {}
            result => break result?,
        }
    };
    loop {
        match tls.flush(&mut &*socket)? {
            true => return Ok(n),
            false if took_some() => {}
            false => return Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A blocking write waited a whole write time-out (`SO_SNDTIMEO` times each call, not the
/// peer's progress): whether the peer took something since `mark`, which moves on. A
/// reader taking a few KB a second from a socket past the kernel's share (whose writes
/// wait until it is down to a quarter of it) was reset so though it was reading (a
/// review). Without a mark (the kernel's share was not full), as before: it took nothing.
fn took_some(stream: &TcpStream, mark: &mut Option<u32>) -> bool {
    let (Some(before), Some(now)) = (*mark, crate::sys::tcp_acked(stream)) else {
        return false;
    };
    *mark = Some(now);
    now != before
}

/// What a readiness connection's I/O left behind, kept by the session between calls.
#[derive(Default)]
pub struct Flow {
    pub read_ahead: ReadAhead,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What the socket may do: set by events, cleared by reads and writes
    /// ([`Readiness`]'s rule, the same as the test harness's).
    pub readiness: Readiness,
    /// The plugin's own write time-out in milliseconds, if it set one (0: it did not);
    /// [`Flow::write_timeout`] reads it. Kept in 32 bits, as every connection carries it.
    pub write_timeout_ms: u32,
    /// How much of the plugin's output the kernel holds unsent: past its share, the socket
    /// is not writable until the peer takes some (an echo or pongs the client never reads
    /// held 3.9 MB in the daemon's socket otherwise).
    pub kernel: KernelShare,
}

impl Flow {
    /// The write time-out in force: the plugin's own, or `default`.
    pub fn write_timeout(&self, default: Duration) -> Duration {
        match self.write_timeout_ms {
            0 => default,
            ms => Duration::from_millis(u64::from(ms)),
        }
    }
}

/// A readiness connection during one `on_ready` call.
pub struct EventIo<'a> {
    pub stream: &'a mio::net::TcpStream,
    /// The TLS session over the socket, on a TLS listener: every byte goes through it.
    pub tls: Option<&'a mut TlsLayer>,
    pub flow: &'a mut Flow,
    pub stopping: bool,
    pub watcher: Watcher<'a>,
    pub watched: &'a mut Watched,
}

impl EventIo<'_> {
    fn wrote(&mut self, result: io::Result<usize>, offered: usize) -> io::Result<usize> {
        let n = self.flow.readiness.wrote(result, offered)?;
        self.flow.bytes_out += n as u64;
        if self.flow.kernel.wrote(n, &mut self.stream.as_fd()) {
            // Not writable until the socket says so: the kernel refuses writes meanwhile.
            self.flow.readiness.writable = false;
        }
        Ok(n)
    }
}

impl HostConnection for EventIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(n) = self.flow.read_ahead.take(buf) {
            return Ok(n);
        }
        let result = match self.tls.as_deref_mut() {
            // Short only when the socket was drained: the readiness rule holds as for TCP.
            Some(tls) => {
                let read = tls.read(&mut &*self.stream, buf, Mode::NonBlocking);
                if tls.fin_due() {
                    // The read's flush wrote what waited before an owed FIN.
                    let _ = self.stream.shutdown(Shutdown::Write);
                }
                if tls.has_ended() {
                    // A short read that ended the stream (the last data and close_notify
                    // in one read) drained nothing the socket will announce again: the
                    // plugin may read on, and meets the end (0).
                    self.flow.readiness.closed = true;
                }
                read
            }
            None => retry(|| (&mut &*self.stream).read(buf)),
        };
        let n = self.flow.readiness.read(result, buf.len())?;
        self.flow.bytes_in += n as u64;
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let offered = bufs.iter().map(|b| b.len()).sum();
        let Some(tls) = self.tls.as_deref_mut() else {
            let result = retry(|| plain_write(&*self.stream, bufs));
            return self.wrote(result, offered);
        };
        let result = tls.write_vectored(&mut &*self.stream, bufs);
        let full = tls.has_pending();
        let n = self.wrote(result, offered)?;
        if full {
            // Sealed, but the socket did not take it all: it is full until its next
            // writable event, when the session writes the rest before the plugin's turn.
            self.flow.readiness.writable = false;
        }
        Ok(n)
    }

    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if let (Some(tls), Shutdown::Write | Shutdown::Both) = (self.tls.as_deref_mut(), how) {
            // close_notify after what waits; the FIN once it is all out (the session
            // flushes on writable events), never ahead of bytes the plugin was told went
            // (a plain socket's SHUT_RDWR still sends what it queued, too).
            if !tls.close(&mut &*self.stream)? {
                self.flow.readiness.writable = false;
                return match how {
                    Shutdown::Both => self.stream.shutdown(Shutdown::Read),
                    _ => Ok(()),
                };
            }
        }
        self.stream.shutdown(how)
    }

    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        // Reads never block here; a plugin asks for a timer instead.
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // Past 49 days is as good as never; a zero asked for is the shortest there is.
        self.flow.write_timeout_ms =
            timeout.map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32);
        Ok(())
    }

    fn buffered(&self) -> usize {
        self.flow.read_ahead.len()
    }

    fn is_stopping(&self) -> bool {
        self.stopping
    }

    fn watch(&mut self, fd: RawFd, watch: bool) -> io::Result<()> {
        self.watcher.watch(self.watched, fd, watch)
    }

    fn waker(&mut self) -> io::Result<protocol_api::abi::RawWaker> {
        let Watcher {
            wakes, slot, id, ..
        } = self.watcher;
        let ties = self.watched.get_or_insert_with(Default::default);
        let target = ties
            .waker
            .get_or_insert_with(|| WakeTarget::new(wakes.clone(), slot, id));
        Ok(protocol_api::hosting::raw_waker(target.clone()))
    }
}
