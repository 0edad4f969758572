//! The readiness-driven way to serve a switched connection: [`EventProtocol`], called on the
//! daemon's event loops when its connection can move, with a non-blocking [`Io`].
//!
//! A blocking [`Protocol::serve`](crate::Protocol::serve) is the simple way and the right one
//! for protocols that block throughout; one that blocks only to begin (a backend dial, a
//! program started) can negotiate on a worker ([`Decision::OnWorker`](crate::Decision)) and
//! run here after. A protocol with many
//! connections that each move little (WebSocket, chat, telemetry) pays for a thread per
//! connection: a thread wake-up and a context switch per message, and a stack per idle
//! client. An [`EventProtocol`] instead keeps its per-connection state in a value
//! ([`EventProtocol::Conn`]) that the daemon's event-loop threads call into.
//!
//! # The calls
//!
//! 1. [`negotiate`](EventProtocol::negotiate) on an event loop (it must not block);
//! 2. after the `101`, [`start`](EventProtocol::start) turns the session into the
//!    connection's state;
//! 3. [`on_ready`](EventProtocol::on_ready) at once with [`Ready::is_readable`] and
//!    [`Ready::is_writable`] set, then whenever what it asked for ([`Wants`]) may be possible,
//!    its timer is due, a [`Waker`] of it was woken (1.10: by another of the plugin's
//!    connections, or a thread of its own), or the daemon starts to stop;
//! 4. the state is dropped when the connection ends, on the thread that made it.
//!
//! From the plugin's side readiness is level-triggered: if `on_ready` stops reading before a
//! read said [`WouldBlock`](std::io::ErrorKind::WouldBlock) and still wants to read, it is
//! called again on the loop's next turn. Reads return the bytes the client sent with the
//! request first. Every call runs on the one loop thread that owns the connection, so
//! `Conn` needs no locks; while it runs, no other connection of that loop moves: a call
//! should take microseconds, and the daemon logs a warning for one that takes milliseconds.
//!
//! The daemon owns the limits around it: an idle time-out (`SWITCHYARD_IDLE_MS`), a write
//! time-out for a peer that stops reading (`SWITCHYARD_WRITE_TIMEOUT_MS`), the connection
//! count, and the end of the grace period when stopping. A panic in any call closes that
//! connection only.
//!
//! # An echo, readiness-driven
//!
//! ```
//! use protocol_api::{export_event_plugin, Decision, EventProtocol, Io, Ready, Request, Wants};
//! use std::io::{self, ErrorKind, Read, Write};
//!
//! pub struct Echo;
//!
//! /// One connection: bytes read but not yet written back.
//! #[derive(Default)]
//! pub struct Conn {
//!     owed: Vec<u8>,
//! }
//!
//! impl EventProtocol for Echo {
//!     const NAME: &'static str = "event-echo";
//!     const TOKENS: &'static [&'static str] = &["event-echo"];
//!     type Session = ();
//!     type Conn = Conn;
//!
//!     fn new() -> Result<Self, String> {
//!         Ok(Echo)
//!     }
//!
//!     fn negotiate(&self, _request: &Request<'_>) -> Decision<()> {
//!         Decision::accept(()) // runs on an event loop: decide without blocking
//!     }
//!
//!     fn start(&self, _: (), _request: &Request<'_>) -> io::Result<Conn> {
//!         Ok(Conn::default())
//!     }
//!
//!     fn on_ready(&self, conn: &mut Conn, io: &mut Io<'_>, _: Ready) -> io::Result<Wants> {
//!         let mut buf = [0u8; 4096];
//!         loop {
//!             // What the peer has not taken goes first; until it does, read nothing.
//!             while !conn.owed.is_empty() {
//!                 match io.write(&conn.owed) {
//!                     Ok(n) => drop(conn.owed.drain(..n)),
//!                     Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Wants::write()),
//!                     Err(e) => return Err(e),
//!                 }
//!             }
//!             match io.read(&mut buf) {
//!                 Ok(0) => return Ok(Wants::close()),
//!                 Ok(n) => conn.owed.extend_from_slice(&buf[..n]),
//!                 Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Wants::read()),
//!                 Err(e) => return Err(e),
//!             }
//!         }
//!     }
//! }
//!
//! export_event_plugin!(Echo);
//! ```

use crate::raw::RawIo;
pub use crate::raw::Waker;
use crate::{Decision, Request};
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

/// A protocol served readiness-driven on the daemon's event loops. Export it with
/// [`export_event_plugin!`](crate::export_event_plugin).
///
/// One value is made per process by [`EventProtocol::new`] and shared by every event loop
/// (`Sync`); each connection's own state is a [`EventProtocol::Conn`], owned by one loop.
pub trait EventProtocol: Sized + Send + Sync + 'static {
    /// A short name for logs, e.g. `"websocket"`.
    const NAME: &'static str;
    /// The `Upgrade` tokens served (RFC 9110 §7.8), without version, matched
    /// case-insensitively. Two plugins cannot serve one token.
    const TOKENS: &'static [&'static str];
    /// The settings (environment variables) the plugin reads, listed by the daemon's
    /// `--help` and `--check` (ABI 1.6). Read no `SWITCHYARD_*` variable left out here.
    const SETTINGS: &'static [crate::Setting] = &[];
    /// What `negotiate` hands to `start` for one connection (`()` when nothing).
    type Session: Send + 'static;
    /// One connection's state while it lives. It stays on the event-loop thread that made
    /// it, so it need not be `Send`.
    type Conn: 'static;

    /// Makes the plugin, once, when the daemon loads it. Read settings here; an `Err`
    /// naming a setting and its value stops the daemon's start (exit status 2).
    fn new() -> Result<Self, String>;

    /// Decides whether to switch this request. Runs on an event loop: never block here.
    fn negotiate(&self, request: &Request<'_>) -> Decision<Self::Session>;

    /// Makes the connection's state after the `101` went out. An `Err` closes the
    /// connection (logged at debug level). `on_ready` follows at once.
    fn start(&self, session: Self::Session, request: &Request<'_>) -> io::Result<Self::Conn>;

    /// The connection may move: read and write what can be, without blocking, and say what
    /// to wait for next. An `Err` closes the connection (logged at debug level).
    fn on_ready(&self, conn: &mut Self::Conn, io: &mut Io<'_>, ready: Ready) -> io::Result<Wants>;
}

/// Why [`EventProtocol::on_ready`] is called; several may hold at once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ready(u32);

impl Ready {
    /// From the ABI's `READY_*` bits.
    pub const fn from_bits(bits: u32) -> Ready {
        Ready(bits)
    }

    /// The connection may have bytes (or the peer's end of stream) to read.
    pub fn is_readable(self) -> bool {
        self.0 & crate::abi::READY_READABLE != 0
    }

    /// The connection may take more bytes.
    pub fn is_writable(self) -> bool {
        self.0 & crate::abi::READY_WRITABLE != 0
    }

    /// The timer asked for with [`Wants::with_timer`] is due.
    pub fn is_timer(self) -> bool {
        self.0 & crate::abi::READY_TIMER != 0
    }

    /// The daemon has begun to stop (told once): say goodbye, then close.
    pub fn is_stopping(self) -> bool {
        self.0 & crate::abi::READY_STOPPING != 0
    }

    /// A descriptor watched with [`Io::watch`] may move: try each until it would block (the
    /// watch is edge-triggered). It may also come when nothing moved.
    pub fn is_watched(self) -> bool {
        self.0 & crate::abi::READY_WATCHED != 0
    }

    /// (1.3) The call [`Wants::with_resume`] asked for: go on with the work in hand.
    pub fn is_resume(self) -> bool {
        self.0 & crate::abi::READY_RESUME != 0
    }

    /// (1.3) The peer has shut its side, or the connection failed: its reads end once what
    /// is buffered is read. Told on every call from the first after the daemon saw it,
    /// whether the plugin reads or not: a plugin that holds its peer's input back (because
    /// its other side does not take it) learns here that the peer is gone. A plugin that
    /// asks for neither reading nor writing (only a timer: its own runtime has the socket)
    /// is told of the peer's reset or full close, not of a half-close.
    pub fn is_peer_closed(self) -> bool {
        self.0 & crate::abi::READY_PEER_CLOSED != 0
    }

    /// (1.4) With [`Ready::is_watched`]: a watched descriptor's peer shut its side, or it
    /// failed. Until then a plain read of a watched stream socket or pipe shorter than asked
    /// has drained it (what arrives later brings its own call); from then on, read it to
    /// its end. Not repeated (latch it), not saying which descriptor, and possibly spurious:
    /// see [`crate::abi::READY_WATCHED_CLOSED`].
    pub fn is_watched_closed(self) -> bool {
        self.0 & crate::abi::READY_WATCHED_CLOSED != 0
    }

    /// (1.10) A [`Waker`] of this connection was woken since its last call (once for
    /// however many wakes): look at what another thread or connection left for it.
    pub fn is_woken(self) -> bool {
        self.0 & crate::abi::READY_WOKEN != 0
    }
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("readable", &self.is_readable())
            .field("writable", &self.is_writable())
            .field("timer", &self.is_timer())
            .field("stopping", &self.is_stopping())
            .field("watched", &self.is_watched())
            .field("resume", &self.is_resume())
            .field("peer_closed", &self.is_peer_closed())
            .field("watched_closed", &self.is_watched_closed())
            .field("woken", &self.is_woken())
            .finish()
    }
}

/// What [`EventProtocol::on_ready`] wants next.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wants {
    interest: u32,
    timer: Option<Duration>,
}

impl Wants {
    /// Call again when there may be bytes to read.
    pub const fn read() -> Wants {
        Wants {
            interest: crate::abi::WANT_READ,
            timer: None,
        }
    }

    /// Call again when more bytes may be written (output is waiting). Not reading meanwhile
    /// is how a protocol applies back-pressure to a peer that does not read.
    pub const fn write() -> Wants {
        Wants {
            interest: crate::abi::WANT_WRITE,
            timer: None,
        }
    }

    /// Call again on either.
    pub const fn read_write() -> Wants {
        Wants {
            interest: crate::abi::WANT_READ | crate::abi::WANT_WRITE,
            timer: None,
        }
    }

    /// Wait for nothing but the timer (or the daemon stopping).
    pub const fn timer_only(after: Duration) -> Wants {
        Wants {
            interest: 0,
            timer: Some(after),
        }
    }

    /// (1.10) Wait for nothing but a [`Waker`] of this connection (or the daemon stopping,
    /// or the peer's reset or full close); the idle limit still counts. When a call that
    /// answers this ends, the daemon keeps the connection if the plugin holds a waker of it
    /// or a wake is on its way, and closes it otherwise (nothing could call it again). A
    /// waker dropped between calls brings no call: wake before dropping the last one, or
    /// answer [`Wants::close`] to end.
    pub const fn wake_only() -> Wants {
        Wants {
            interest: 0,
            timer: None,
        }
    }

    /// Close the connection now; the state is then dropped.
    pub const fn close() -> Wants {
        Wants {
            interest: crate::abi::WANT_CLOSE,
            timer: None,
        }
    }

    /// (1.7) Close the connection now with a reset: what its peer has not taken yet is
    /// dropped, the kernel's send queue included, where [`Wants::close`] sends it first.
    /// For a peer ended for taking too little (closed gracefully, it could go on taking
    /// what waits for it, a byte at a time, for as long as it likes). A host older than 1.7
    /// closes gracefully.
    pub const fn abort() -> Wants {
        Wants {
            interest: crate::abi::WANT_CLOSE | crate::abi::WANT_ABORT,
            timer: None,
        }
    }

    /// (1.3) Also call again, with [`Ready::is_resume`], once the loop's other connections
    /// had their turn, whether or not anything new arrived: for a call that stopped with
    /// work in hand because its budget was spent (input read but not yet handled, a message
    /// half inflated). A call that moved no byte of its connection is otherwise not called
    /// again until an event, its timer or the stop comes, so holding input back (not
    /// reading) never spins.
    pub const fn with_resume(mut self) -> Wants {
        self.interest |= crate::abi::WANT_RESUME;
        self
    }

    /// Whether [`Wants::with_resume`] was asked for.
    pub const fn resumes(self) -> bool {
        self.interest & crate::abi::WANT_RESUME != 0
    }

    /// The same without [`Wants::with_resume`]: for a caller that holds work back on
    /// purpose (until a timer says it may go on).
    pub const fn without_resume(mut self) -> Wants {
        self.interest &= !crate::abi::WANT_RESUME;
        self
    }

    /// Also call with [`Ready::is_timer`] once `after` has passed. Each answer replaces the
    /// previous timer; an answer without one cancels it.
    pub const fn with_timer(mut self, after: Duration) -> Wants {
        self.timer = Some(after);
        self
    }

    /// Also call with [`Ready::is_timer`] by `after` at the latest: the sooner of this and
    /// the timer already asked for (a connection with more than one deadline).
    pub fn with_timer_by(self, after: Duration) -> Wants {
        match self.timer {
            Some(sooner) if sooner <= after => self,
            _ => self.with_timer(after),
        }
    }

    /// The ABI's form.
    pub fn to_raw(self) -> crate::abi::RawWants {
        crate::abi::RawWants {
            interest: self.interest,
            // Rounded up: a timer never fires before the time asked (99.9 ms taken as 99
            // made a plugin's deadline come early, and look like another's).
            timer_ms: self.timer.map_or(0, |t| {
                u64::try_from(t.as_nanos().div_ceil(1_000_000))
                    .unwrap_or(u64::MAX)
                    .max(1)
            }),
        }
    }
}

/// The connection during one [`EventProtocol::on_ready`] call: `Read + Write` that never
/// block (`WouldBlock` when nothing can move). Writes go straight to the socket; what the
/// socket does not take stays the plugin's to keep (ask for [`Wants::write`]).
pub struct Io<'a> {
    io: RawIo<'a>,
    /// Bytes read and written through it in this call.
    read: u64,
    written: u64,
}

impl<'a> Io<'a> {
    /// Wraps the host's connection.
    ///
    /// # Safety
    /// `raw` must be a live non-blocking connection from the host, used only during the
    /// `on_ready` call that lent it.
    pub unsafe fn from_raw(raw: &'a crate::abi::RawConnection) -> Self {
        Io {
            // SAFETY: the caller's contract.
            io: unsafe { RawIo::new(raw) },
            read: 0,
            written: 0,
        }
    }

    /// Bytes read from and written to the connection through this `Io` so far in this call
    /// (plaintext; bytes a plugin splices on the socket itself are not seen): for a
    /// plugin's metrics, added once per call.
    pub fn bytes_moved(&self) -> (u64, u64) {
        (self.read, self.written)
    }

    /// Shuts down one or both directions (a FIN once written bytes are out, for `Write`).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.shutdown(how)
    }

    /// How long output may wait for a peer that does not read before the daemon closes the
    /// connection; `None` restores the daemon's `SWITCHYARD_WRITE_TIMEOUT_MS`.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.io.set_write_timeout(timeout)
    }

    /// Bytes the daemon read ahead of the switch that reads return first.
    pub fn buffered(&self) -> usize {
        self.io.buffered()
    }

    /// Has the daemon's event loop watch `fd`, a descriptor of this connection's own (a
    /// backend socket, a child's pipe; non-blocking), and call `on_ready` with
    /// [`Ready::is_watched`] when it may be readable or writable. Edge-triggered: after that
    /// call, use it until it would block. At most 16 per connection. Fails with
    /// `Unsupported` on a daemon older than ABI 1.2.
    pub fn watch(&self, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.io.watch(fd.as_raw_fd(), true)
    }

    /// Stops watching `fd`: call it before closing `fd`. Every watch ends by itself when
    /// the connection does, before the connection's state is dropped.
    pub fn unwatch(&self, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.io.watch(fd.as_raw_fd(), false)
    }

    /// True once the daemon is stopping.
    pub fn is_stopping(&self) -> bool {
        self.io.is_stopping()
    }

    /// (1.10) A [`Waker`] of this connection, for another thread or another connection to
    /// have the event loop call `on_ready` with [`Ready::is_woken`]: a chat room's member
    /// that has messages for it, a thread of the plugin's own runtime that finished its
    /// work. Take one (in the first call) and clone it. Fails with `Unsupported` on a
    /// daemon older than ABI 1.10.
    pub fn waker(&self) -> io::Result<Waker> {
        self.io.waker()
    }
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.io.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.io.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.io.write_vectored(bufs)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Io<'_> {
    /// The socket, lent for `setsockopt` and the like; the daemon owns it.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}
