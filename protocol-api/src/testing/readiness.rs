//! The readiness harness: an [`EventProtocol`]'s connection run as the daemon's event loop
//! runs it, on a thread of its own, with the daemon's callbacks ([`crate::hosting`]) and its
//! rules for when to call:
//!
//! - readiness is edge-triggered underneath and remembered for the plugin: the socket stays
//!   "readable" until a read returns less than asked (or `WouldBlock`), "writable" until a
//!   write takes less than offered;
//! - the plugin is called when what it wants ([`Wants`]) may be possible, on its timer, when
//!   a descriptor it watches moves, and at once when it asked to resume;
//! - a call that moved no byte of the connection is not repeated until an event comes
//!   (a plugin that chooses not to read does not spin);
//! - once the peer has closed (`EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`) every call says so,
//!   and the news is a call of its own. (The daemon watches a plugin that wants neither
//!   direction for writability and hang-up only: it hears of the peer's reset or full
//!   close there, not of a half-close, which the harness reports too.)
//! - a [`Waker`](crate::Waker) (1.10) brings one call with `READY_WOKEN` for the wakes
//!   before it, from any thread; a plugin that holds a waker (or has a wake on its way)
//!   may wait for nothing else.

use super::TestRequest;
use crate::abi::{
    RawWaker, READY_PEER_CLOSED, READY_READABLE, READY_RESUME, READY_TIMER, READY_WATCHED,
    READY_WATCHED_CLOSED, READY_WOKEN, READY_WRITABLE, WANT_CLOSE, WANT_READ, WANT_RESUME,
    WANT_WRITE,
};
use crate::hosting::{raw_connection, raw_waker, HostConnection, HostWaker, Readiness};
use crate::{EventProtocol, Io, Ready};
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The socket's key in the harness's epoll set; a watched descriptor's key is its number
/// with [`WATCHED`] set.
const SOCKET: u64 = 0;
const WATCHED: u64 = 1 << 32;
/// The key of the wakers' `eventfd`.
const WOKEN: u64 = 1 << 33;

/// Runs `plugin.start(session, request)` and then its `on_ready` calls on a thread, on one
/// end of a loopback TCP connection; returns the other end and the thread, which ends with
/// `Ok` when the plugin closes the connection (or wants nothing more) and with the error of
/// `start` or `on_ready` otherwise.
pub fn serve_ready<P: EventProtocol>(
    plugin: P,
    session: P::Session,
    request: TestRequest,
) -> (TcpStream, JoinHandle<io::Result<()>>) {
    let (client, server) = super::loopback();
    let thread = std::thread::spawn(move || {
        let mut conn = request.with(|request| plugin.start(session, request))?;
        let mut host = LoopHost::new(server)?;
        let result = host.run(|host, ready| {
            let fd = host.stream.as_raw_fd();
            let raw = raw_connection(host, fd);
            // SAFETY: `raw` points at `host`, which outlives this call and is used only
            // through it meanwhile.
            let mut io = unsafe { Io::from_raw(&raw) };
            plugin
                .on_ready(&mut conn, &mut io, ready)
                .map(|w| w.to_raw())
        });
        if let Some(waker) = &host.waker {
            waker.ended.store(true, Ordering::Release);
        }
        result
    });
    (client, thread)
}

/// The harness's side of the connection: a non-blocking socket and what is known of it.
struct LoopHost {
    stream: TcpStream,
    epoll: OwnedFd,
    /// What the socket may do, by the daemon's rule.
    readiness: Readiness,
    /// The connection's wakers' `eventfd`, once the plugin asked for one.
    waker: Option<Arc<HarnessWaker>>,
}

/// What the harness's wakers point at: an `eventfd` in its epoll set.
struct HarnessWaker {
    eventfd: OwnedFd,
    /// A wake was written and not yet read by the harness.
    queued: AtomicBool,
    ended: AtomicBool,
}

impl HarnessWaker {
    /// As on the daemon: a wake may come while the plugin holds a handle (each holds a
    /// count of this) or one is on its way.
    fn may_wake(self: &Arc<HarnessWaker>) -> bool {
        Arc::strong_count(self) > 1 || self.queued.load(Ordering::Acquire)
    }
}

impl HostWaker for HarnessWaker {
    fn wake(&self) -> bool {
        if self.ended.load(Ordering::Acquire) {
            return false;
        }
        self.queued.store(true, Ordering::Release);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from `one`, alive for the call, to our eventfd.
        unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
        true
    }
}

impl LoopHost {
    fn new(stream: TcpStream) -> io::Result<LoopHost> {
        stream.set_nonblocking(true)?;
        // SAFETY: epoll_create1 takes no pointers; its result is checked below.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor no one else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        let host = LoopHost {
            stream,
            epoll,
            readiness: Readiness {
                readable: false,
                writable: true,
                moved: false,
                closed: false,
            },
            waker: None,
        };
        let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        host.control(libc::EPOLL_CTL_ADD, host.stream.as_raw_fd(), events, SOCKET)?;
        Ok(host)
    }

    fn control(&self, op: i32, fd: RawFd, events: i32, key: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: key,
        };
        // SAFETY: `event` lives for the call; the kernel checks the descriptors.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Calls `on_ready` by the daemon's rules until the plugin is done.
    fn run(
        &mut self,
        mut on_ready: impl FnMut(&mut LoopHost, Ready) -> io::Result<crate::abi::RawWants>,
    ) -> io::Result<()> {
        // As after the switch: the plugin wants both ways and is called at once.
        let mut wants = WANT_READ | WANT_WRITE;
        let mut timer: Option<Instant> = None;
        let mut resume = false;
        let mut peer_closed = false;
        let mut events = 0;
        loop {
            let due = self.due(wants);
            let mut ready = events | due;
            if std::mem::take(&mut resume) {
                ready |= READY_RESUME;
            }
            if ready != 0 {
                if peer_closed {
                    ready |= READY_PEER_CLOSED;
                }
                self.readiness.moved = false;
                let raw = on_ready(self, Ready::from_bits(ready))?;
                if raw.interest & WANT_CLOSE != 0 {
                    return Ok(());
                }
                wants = raw.interest & (WANT_READ | WANT_WRITE);
                resume = raw.interest & WANT_RESUME != 0;
                timer = (raw.timer_ms > 0)
                    .then(|| Instant::now() + Duration::from_millis(raw.timer_ms));
                let may_wake = self.waker.as_ref().is_some_and(HarnessWaker::may_wake);
                if wants == 0 && timer.is_none() && !resume && !may_wake {
                    return Ok(()); // nothing would ever call it again
                }
                events = 0;
                if resume || (self.readiness.moved && self.due(wants) != 0) {
                    continue;
                }
            }
            events = self.wait(timer, &mut peer_closed)?;
            if timer.is_some_and(|at| at <= Instant::now()) {
                timer = None;
                events |= READY_TIMER;
            }
        }
    }

    fn due(&self, wants: u32) -> u32 {
        let mut due = 0;
        if wants & WANT_READ != 0 && self.readiness.readable {
            due |= READY_READABLE;
        }
        if wants & WANT_WRITE != 0 && self.readiness.writable {
            due |= READY_WRITABLE;
        }
        due
    }

    /// Waits for events (or the timer); notes the socket's, returns `READY_WATCHED` if a
    /// watched descriptor moved (and `READY_WATCHED_CLOSED` if its peer shut its side).
    fn wait(&mut self, timer: Option<Instant>, peer_closed: &mut bool) -> io::Result<u32> {
        let timeout = timer.map_or(-1, |at| {
            let left = at.saturating_duration_since(Instant::now());
            left.as_millis().min(i32::MAX as u128) as i32 + 1
        });
        let mut ready = [libc::epoll_event { events: 0, u64: 0 }; 16];
        // SAFETY: `ready` is writable for its length during the call.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                ready.as_mut_ptr(),
                ready.len() as i32,
                timeout,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::Interrupted => Ok(0),
                _ => Err(error),
            };
        }
        let mut events = 0;
        for event in &ready[..n as usize] {
            let (bits, key) = (event.events as i32, event.u64);
            let closed = bits & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0;
            if key == WOKEN {
                if let Some(waker) = &self.waker {
                    waker.queued.store(false, Ordering::Release);
                    let mut count = [0u8; 8];
                    // SAFETY: reads 8 bytes into `count` from our eventfd (non-blocking).
                    unsafe { libc::read(waker.eventfd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                }
                events |= READY_WOKEN;
                continue;
            }
            if key & WATCHED != 0 {
                events |= READY_WATCHED;
                if closed {
                    events |= READY_WATCHED_CLOSED;
                }
                continue;
            }
            self.readiness.readable |= bits & libc::EPOLLIN != 0 || closed;
            self.readiness.writable |= bits & (libc::EPOLLOUT | libc::EPOLLERR) != 0;
            self.readiness.closed |= closed;
            if closed && !*peer_closed {
                // News of its own, as on the daemon's loops: a plugin that waits for
                // nothing the socket brings is still called.
                events |= READY_PEER_CLOSED;
            }
            *peer_closed |= closed;
        }
        Ok(events)
    }
}

impl HostConnection for LoopHost {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.stream.read(buf);
        self.readiness.read(result, buf.len())
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.stream.write(buf);
        self.readiness.wrote(result, buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let offered = bufs.iter().map(|b| b.len()).sum();
        let result = self.stream.write_vectored(bufs);
        self.readiness.wrote(result, offered)
    }
    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }
    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        // As on the daemon's loops: reads never block; a plugin asks for a timer.
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
    fn set_write_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(()) // accepted; the harness enforces no time-outs
    }
    fn buffered(&self) -> usize {
        0
    }
    fn is_stopping(&self) -> bool {
        false
    }
    fn watch(&mut self, fd: RawFd, watch: bool) -> io::Result<()> {
        if watch {
            let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
            match self.control(libc::EPOLL_CTL_ADD, fd, events, WATCHED | fd as u64) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                other => other,
            }
        } else {
            match self.control(libc::EPOLL_CTL_DEL, fd, 0, 0) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                other => other,
            }
        }
    }
    fn waker(&mut self) -> io::Result<RawWaker> {
        if let Some(waker) = &self.waker {
            return Ok(raw_waker(waker.clone()));
        }
        // SAFETY: eventfd takes no pointers; its result is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor no one else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        self.control(
            libc::EPOLL_CTL_ADD,
            raw,
            libc::EPOLLIN | libc::EPOLLET,
            WOKEN,
        )?;
        let waker = Arc::new(HarnessWaker {
            eventfd,
            queued: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        });
        self.waker = Some(waker.clone());
        Ok(raw_waker(waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, Request, Waker, Wants};
    use std::sync::mpsc;
    use std::sync::Mutex;

    /// Takes its waker on the first call and hands it to the test; writes `woken` for each
    /// call that says so, and closes after the third.
    struct Woken {
        wakers: Mutex<mpsc::Sender<Waker>>,
    }

    impl EventProtocol for Woken {
        const NAME: &'static str = "woken";
        const TOKENS: &'static [&'static str] = &["woken"];
        type Session = ();
        type Conn = u32;
        fn new() -> Result<Self, String> {
            unreachable!("made by the test")
        }
        fn negotiate(&self, _: &Request<'_>) -> Decision<()> {
            Decision::accept(())
        }
        fn start(&self, _: (), _: &Request<'_>) -> io::Result<u32> {
            Ok(0)
        }
        fn on_ready(&self, woken: &mut u32, io: &mut Io<'_>, ready: Ready) -> io::Result<Wants> {
            if *woken == 0 && !ready.is_woken() {
                self.wakers.lock().unwrap().send(io.waker()?).unwrap();
            }
            if ready.is_woken() {
                *woken += 1;
                io.write_all(b"woken\n")?;
            }
            match *woken {
                3 => Ok(Wants::close()),
                _ => Ok(Wants::wake_only()),
            }
        }
    }

    #[test]
    fn a_waker_calls_its_connection_from_another_thread_and_not_after_it_ended() {
        let (sender, wakers) = mpsc::channel();
        let plugin = Woken {
            wakers: Mutex::new(sender),
        };
        let (client, served) = serve_ready(plugin, (), TestRequest::get("/"));
        let waker = wakers.recv().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut lines = io::BufReader::new(client);
        for _ in 0..3 {
            let waker = waker.clone();
            assert!(std::thread::spawn(move || waker.wake()).join().unwrap());
            let mut line = String::new();
            io::BufRead::read_line(&mut lines, &mut line).unwrap();
            assert_eq!(line, "woken\n");
        }
        served.join().unwrap().unwrap();
        assert!(!waker.wake(), "the connection has ended");
    }
}
