//! One tunnel on the daemon's event loop: the client's socket (lent by the daemon for each
//! call) and the backend's (watched by the loop for us), and what each direction holds.
//!
//! Every call moves what it can both ways until the sockets would block or the call's
//! budget is spent: a direction first writes out what it holds, then reads more from its
//! source, so a slow destination holds its source back (at most one read's worth waits,
//! never more). A direction copies through the loop thread's buffer while its reads come
//! in small pieces (an interactive protocol: a `read` and a `write` a message, and a quiet
//! tunnel holds no pipe and no buffer); once a read fills the buffer, the flow is bulk and
//! the direction splices through a pipe of its own (no copy through user space) until the
//! source is drained, when the pipe is closed again. (Past `SWITCHYARD_TUNNEL_MAX_PIPES`
//! pipes in the process or its client's share of them, or with no descriptor left for
//! one, a bulk direction copies.) When a source ends, the destination's write side is shut
//! and the other direction flows on (half-close); when both have ended, the tunnel ends.
//!
//! Resets. A side that resets before its end (`ECONNRESET`: an abort) has the other side
//! reset at once, also while its direction is not reading it (held back by a slow
//! destination). A side that resets after its own end (`EPIPE`: it closed, then answered
//! late bytes with a reset, as a closed socket does) sent everything it had: that still
//! goes on whole, with its end, and only what is sent to it is dropped; once all it sent
//! has reached the other side, the other is reset (as the gone side's own socket would
//! have: what it sends goes nowhere), so the tunnel never stands for a side that is gone.
//!
//! A client that came over TLS (which the daemon terminates) is read and written only
//! through the daemon: its socket carries ciphertext, so nothing is spliced to or from it.

use crate::config::Config;
use crate::pump::{Pipe, CHUNK};
use crate::stats::RouteStats;
use protocol_api::kernel_share::KernelShare;
use protocol_api::metrics::Held;
use protocol_api::output::{write_until_blocked, Output};
use protocol_api::{Io, Ready, Wants};
use socket2::SockRef;
use std::cell::RefCell;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

thread_local! {
    /// The event-loop thread's copy buffer, shared by its tunnels: one read's worth.
    static SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; protocol_api::sizes::READ_BUFFER].into_boxed_slice());
}

/// Most bytes moved per call, both directions together: about a millisecond of the
/// loop's time, after which the tunnel asks to be called again.
const BUDGET: usize = 2 * CHUNK;

/// How often to ask, at first, whether what a side is owed has reached it, before
/// resetting it (then half the time waited so far, up to a second).
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How long to wait for that at most: then it is reset all the same.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// How one direction ended.
#[derive(Debug)]
enum Ended {
    /// The source reset the connection.
    SourceReset,
    /// The destination went away (reset, or closed while we wrote).
    DestinationGone,
    Failed(io::Error),
}

/// Where one direction stopped in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The source has nothing now.
    WaitRead,
    /// The destination takes nothing now.
    WaitWrite,
    /// The call's budget is spent.
    Spent,
    /// The source ended and everything it sent is out.
    Done,
}

/// Where a direction reads from, and what is known of it.
enum Source<'a, 'io> {
    /// The client, read through the daemon (which so learns that a short read drained
    /// it, and brings `Ready::is_readable` again only with new bytes).
    Client {
        io: &'a mut Io<'io>,
        /// Its end (a FIN) was seen by the loop: read to the end, not to a short read.
        peer_closed: bool,
        /// It came over TLS: its socket is not its bytes.
        tls: bool,
    },
    /// The backend's socket, watched by the loop for us.
    Backend {
        fd: BorrowedFd<'a>,
        /// Its end (a FIN) was seen by the loop (`Ready::is_watched_closed`).
        peer_closed: bool,
    },
}

impl Source<'_, '_> {
    /// The socket holding the source's bytes, to splice from (none under TLS).
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Source::Client { tls: true, .. } => None,
            Source::Client { io, .. } => Some(io.as_fd()),
            Source::Backend { fd, .. } => Some(*fd),
        }
    }

    /// A read shorter than asked leaves nothing behind while the loop has not reported the
    /// source's end (an edge-triggered event comes for anything that arrives later); once
    /// it has, the source is read to its end.
    fn short_read_drains(&self) -> bool {
        match self {
            Source::Client { peer_closed, .. } | Source::Backend { peer_closed, .. } => {
                !peer_closed
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Client { io, .. } => io.read(buf),
            Source::Backend { fd, .. } => (&*SockRef::from(&*fd)).read(buf),
        }
    }
}

/// Where a direction writes to.
enum Sink<'a, 'io> {
    /// A socket written directly (the backend, or a cleartext client).
    Socket(BorrowedFd<'a>),
    /// A client that came over TLS: written through the daemon, which encrypts.
    Client(&'a mut Io<'io>),
}

impl Sink<'_, '_> {
    /// The socket to splice into (none under TLS).
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Sink::Socket(fd) => Some(*fd),
            Sink::Client(_) => None,
        }
    }
}

impl Write for Sink<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Socket(fd) => (&*SockRef::from(&*fd)).write(buf),
            Sink::Client(io) => io.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One direction: what it holds for the destination, and whether the source has ended.
#[derive(Default)]
struct Direction {
    /// Bytes copied from the source that the destination has not taken yet.
    pending: Output,
    /// Bulk: splice through `pipe` (made the first time it is needed).
    bulk: bool,
    pipe: Option<Pipe>,
    /// Bytes in the pipe, not yet in the destination.
    held: usize,
    source_ended: bool,
    /// The destination's write side is shut (the end passed on).
    passed_on: bool,
    bytes: u64,
    /// The destination reset after its own end: it takes nothing more, and what the
    /// source sends is read and dropped.
    dropping: bool,
    dropped: u64,
    /// The source reset after its end: all it sent is in, and it takes nothing more.
    source_gone: bool,
    /// The client its pipe is counted for ([`protocol_api::clients::key`]).
    client: u64,
    /// How much of what it wrote to the destination's socket the kernel holds unsent: past
    /// its share, the direction waits for the socket to be writable (a client that reads
    /// nothing had the kernel hold 2.8 MB of a streaming backend's bytes, a review found;
    /// what the daemon writes for us it bounds itself).
    kernel: KernelShare,
}

impl Direction {
    /// Counts `written` bytes to `to`'s socket ([`KernelShare`]); true when the kernel has
    /// just been found holding more than its share of them.
    fn kernel_full(&mut self, to: &Sink<'_, '_>, written: usize) -> bool {
        match to.fd() {
            Some(mut fd) => self.kernel.wrote(written, &mut fd),
            None => false, // the daemon writes it, and keeps the share
        }
    }

    fn for_client(client: u64) -> Direction {
        Direction {
            client,
            ..Direction::default()
        }
    }

    /// Moves bytes from `from` to `to` until one would block, the source ends, or `budget`
    /// is spent; `moved` is set when a byte moved. The source is read only if it may have
    /// bytes (`may_read`: an event, or bytes left last time).
    fn pump(
        &mut self,
        mut from: Source<'_, '_>,
        mut to: Sink<'_, '_>,
        may_read: bool,
        budget: &mut usize,
        moved: &mut bool,
    ) -> Result<Stop, Ended> {
        let mut may_read = may_read;
        loop {
            if self.dropping {
                return self.drop_input(&mut from, may_read, budget, moved);
            }
            if !self.pending.is_done() {
                let written = match self.pending.flush(&mut to, 0) {
                    Ok(written) => written,
                    Err(e) if gone_after_end(&e) => {
                        self.destination_gone();
                        continue;
                    }
                    Err(e) => return Err(classify(e, false)),
                };
                self.bytes += written.bytes as u64;
                *moved |= written.bytes > 0;
                if written.blocked || self.kernel_full(&to, written.bytes) {
                    return Ok(Stop::WaitWrite);
                }
            }
            while self.held > 0 && !self.dropping {
                let pipe = self.pipe.as_ref().expect("bytes are held only in a pipe");
                let to = to.fd().expect("bytes are spliced only between sockets");
                match pipe.drain(to, self.held) {
                    Ok(n) => {
                        self.held -= n;
                        self.bytes += n as u64;
                        *moved = true;
                        if self.kernel.wrote(n, &mut to.as_fd()) {
                            return Ok(Stop::WaitWrite);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Stop::WaitWrite),
                    Err(e) if gone_after_end(&e) => {
                        self.destination_gone();
                        break;
                    }
                    Err(e) => return Err(classify(e, false)),
                }
            }
            if self.dropping {
                continue;
            }
            if self.source_ended {
                return Ok(Stop::Done);
            }
            if !may_read {
                self.burst_over();
                return Ok(Stop::WaitRead);
            }
            if *budget == 0 {
                return Ok(Stop::Spent);
            }
            let splice_from = from
                .fd()
                .filter(|_| self.bulk && to.fd().is_some() && self.has_pipe());
            let splicing = splice_from.is_some();
            // What one read can take: a read that takes it all may have left more.
            let asked = match splicing {
                true => (*budget).min(CHUNK),
                false => (*budget).min(protocol_api::sizes::READ_BUFFER),
            };
            let filled = match splice_from {
                Some(fd) => self.splice_in(fd, asked),
                None => self.copy(&mut from, &mut to, asked),
            };
            match filled {
                Ok(0) => self.source_ended = true,
                Ok(n) => {
                    *budget = budget.saturating_sub(n);
                    *moved = true;
                    // A short read drained the source unless its end was reported (see
                    // `Source`); then it is read on, and its end shows as a read of 0. A
                    // short splice says only that the pipe is full: only `WouldBlock`
                    // drains a spliced source.
                    may_read = splicing || n == asked || !from.short_read_drains();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.burst_over();
                    return Ok(Stop::WaitRead);
                }
                // Reset after its end: what it sent was all read; it is an end.
                Err(e) if gone_after_end(&e) => {
                    self.source_ended = true;
                    self.source_gone = true;
                }
                Err(e) => return Err(classify(e, true)),
            }
        }
    }

    /// The destination reset after its own end: nothing more goes to it, and what it was
    /// still to get counts as dropped.
    fn destination_gone(&mut self) {
        self.dropped += (self.pending.owed() + self.held) as u64;
        self.dropping = true;
        self.pending = Output::default();
        self.pipe = None;
        self.held = 0;
        self.bulk = false;
    }

    /// Reads what the source sends and drops it (the destination is gone), as
    /// [`Direction::pump`] would have moved it.
    fn drop_input(
        &mut self,
        from: &mut Source<'_, '_>,
        may_read: bool,
        budget: &mut usize,
        moved: &mut bool,
    ) -> Result<Stop, Ended> {
        if self.source_ended {
            return Ok(Stop::Done);
        }
        let mut may_read = may_read;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                if !may_read {
                    return Ok(Stop::WaitRead);
                }
                if *budget == 0 {
                    return Ok(Stop::Spent);
                }
                let asked = scratch.len().min(*budget);
                match from.read(&mut scratch[..asked]) {
                    Ok(0) => {
                        self.source_ended = true;
                        return Ok(Stop::Done);
                    }
                    Ok(n) => {
                        self.dropped += n as u64;
                        *budget = budget.saturating_sub(n);
                        *moved = true;
                        may_read = n == asked || !from.short_read_drains();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Stop::WaitRead),
                    Err(e) if gone_after_end(&e) => {
                        self.source_ended = true;
                        self.source_gone = true;
                        return Ok(Stop::Done);
                    }
                    Err(e) => return Err(classify(e, true)),
                }
            }
        })
    }

    /// The source is drained: once the pipe is empty too, the burst is over. The pipe goes
    /// (a quiet tunnel holds none, and two descriptors); the next burst starts copying, and
    /// splices again once a read fills the buffer.
    fn burst_over(&mut self) {
        if self.held == 0 {
            self.pipe = None;
            self.bulk = false;
        }
    }

    /// Whether the direction has a pipe, taking one if it may ([`Pipe::take`]).
    fn has_pipe(&mut self) -> bool {
        if self.pipe.is_none() {
            self.pipe = Pipe::take(self.client);
        }
        self.pipe.is_some()
    }

    /// Fills the (empty) pipe from the source; `WouldBlock` can only mean the source has
    /// nothing, since the pipe is empty.
    fn splice_in(&mut self, from: BorrowedFd<'_>, asked: usize) -> io::Result<usize> {
        let pipe = self.pipe.as_ref().expect("taken before splicing");
        let n = pipe.fill(from, asked)?;
        self.held = n;
        Ok(n)
    }

    /// Reads into the thread's buffer and writes on at once; what the destination does not
    /// take is held in `pending`. A read that fills the buffer makes the direction bulk.
    fn copy(
        &mut self,
        from: &mut Source<'_, '_>,
        to: &mut Sink<'_, '_>,
        asked: usize,
    ) -> io::Result<usize> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let len = scratch.len().min(asked);
            let n = from.read(&mut scratch[..len])?;
            if n == 0 {
                return Ok(0);
            }
            self.bulk = n == scratch.len();
            let written = match write_until_blocked(to, &scratch[..n]) {
                Ok(written) => written.bytes,
                // The destination's failure is found (and classified) on the next write.
                Err(_) => 0,
            };
            self.bytes += written as u64;
            self.pending.queue().extend_from_slice(&scratch[written..n]);
            Ok(n)
        })
    }
}

/// A socket's error saying its peer reset after its own end (`EPIPE`: the peer had closed,
/// then answered bytes with a reset), not before it.
fn gone_after_end(error: &io::Error) -> bool {
    error.kind() == ErrorKind::BrokenPipe
}

fn classify(error: io::Error, reading: bool) -> Ended {
    match error.kind() {
        ErrorKind::ConnectionReset if reading => Ended::SourceReset,
        ErrorKind::ConnectionReset
        | ErrorKind::BrokenPipe
        | ErrorKind::ConnectionAborted
        | ErrorKind::WriteZero => Ended::DestinationGone,
        _ => Ended::Failed(error),
    }
}

/// What the log line says of a tunnel.
pub struct Label {
    /// The route the tunnel took, as configured.
    pub route: String,
    pub peer: String,
    pub address: String,
}

/// A tunnel's state between calls.
pub struct TunnelConn {
    backend: TcpStream,
    /// The client came over TLS: it is read and written only through the daemon.
    client_tls: bool,
    /// Client to backend.
    up: Direction,
    /// Backend to client.
    down: Direction,
    /// Bytes the client sent with the request: the backend gets them before anything else.
    early: Output,
    watching: bool,
    /// The backend may have bytes to read: its event came, and no read has yet found it
    /// empty.
    backend_ready: bool,
    /// The loop reported the backend's end: it is read to the end, not to a short read.
    backend_closed: bool,
    /// The tunnel's own idle limit (`SWITCHYARD_TUNNEL_IDLE_MS`).
    idle: Option<Duration>,
    last_moved: Instant,
    stopping: bool,
    /// How it ended, once known; the log line says it when the state is dropped.
    ended: Option<String>,
    label: Label,
    started: Instant,
    /// The route's metrics; the bytes each way already added to them.
    stats: RouteStats,
    counted: (u64, u64),
    /// Since when a reset waits for what its side is owed to reach it.
    draining_since: Option<Instant>,
    _open: Held,
}

impl TunnelConn {
    /// A tunnel to a connected backend (made non-blocking here).
    pub fn new(
        backend: TcpStream,
        client_tls: bool,
        config: &Config,
        label: Label,
        stats: RouteStats,
    ) -> io::Result<TunnelConn> {
        backend.set_nonblocking(true)?;
        let now = Instant::now();
        let client = protocol_api::clients::key_of(&label.peer);
        stats.opened.inc();
        Ok(TunnelConn {
            backend,
            client_tls,
            up: Direction::for_client(client),
            down: Direction::for_client(client),
            early: Output::default(),
            watching: false,
            backend_ready: false,
            backend_closed: false,
            idle: config.idle,
            last_moved: now,
            stopping: false,
            ended: None,
            label,
            started: now,
            stats,
            counted: (0, 0),
            draining_since: None,
            _open: stats.open.hold(),
        })
    }

    /// Moves what can move, then adds the bytes moved to the route's counters.
    pub fn on_ready(&mut self, io: &mut Io<'_>, ready: Ready) -> io::Result<Wants> {
        let wants = self.move_bytes(io, ready);
        self.count_bytes();
        wants
    }

    fn count_bytes(&mut self) {
        let (up, down) = self.counted;
        self.stats.up.add(self.up.bytes - up);
        self.stats.down.add(self.down.bytes - down);
        self.counted = (self.up.bytes, self.down.bytes);
    }

    /// Moves what can move; see the module docs.
    fn move_bytes(&mut self, io: &mut Io<'_>, ready: Ready) -> io::Result<Wants> {
        let first = !self.watching;
        if !self.watching {
            io.watch(self.backend.as_fd())?;
            self.watching = true;
        }
        self.stopping |= ready.is_stopping();
        let mut moved = false;
        if io.buffered() > 0 {
            let mut early = vec![0u8; io.buffered()];
            io.read_exact(&mut early)?;
            self.early.queue().extend_from_slice(&early);
        }
        if !self.early.is_done() {
            match self.early.flush(&mut &self.backend, 0) {
                Ok(written) => {
                    self.up.bytes += written.bytes as u64;
                    moved |= written.bytes > 0;
                }
                Err(e) if gone_after_end(&e) => {
                    self.up.dropped += self.early.owed() as u64;
                    self.early = Output::default();
                    self.up.destination_gone();
                }
                Err(e) => return Ok(self.end(io, classify(e, false), true)),
            }
        }
        let mut budget = BUDGET;
        // The client may have bytes when the loop says so (it keeps track: our reads go
        // through it); the backend after its event, until a read would block.
        let client_ready = first || ready.is_readable() || ready.is_resume();
        self.backend_ready |= first || ready.is_watched();
        self.backend_closed |= ready.is_watched_closed();
        let peer_closed = ready.is_peer_closed();
        let up = match self.early.is_done() {
            true => self.up.pump(
                Source::Client {
                    io,
                    peer_closed,
                    tls: self.client_tls,
                },
                Sink::Socket(self.backend.as_fd()),
                client_ready,
                &mut budget,
                &mut moved,
            ),
            false => Ok(Stop::WaitWrite),
        };
        let up = match up {
            Ok(stop) => stop,
            Err(ended) => return Ok(self.end(io, ended, true)),
        };
        let client = match self.client_tls {
            true => Sink::Client(io),
            false => Sink::Socket(io.as_fd()),
        };
        let down = self.down.pump(
            Source::Backend {
                fd: self.backend.as_fd(),
                peer_closed: self.backend_closed,
            },
            client,
            self.backend_ready,
            &mut budget,
            &mut moved,
        );
        let down = match down {
            Ok(stop) => stop,
            Err(ended) => return Ok(self.end(io, ended, false)),
        };
        // Drained (or never read): the next event says when there is more.
        self.backend_ready = down != Stop::WaitRead;
        // A reset is news only a read brings, and a direction that is not reading its
        // source (its destination holds it back, or the source already sent its end) would
        // never learn of it: the tunnel would stand until the idle limit, holding what it
        // buffered. So when the loop says a source's socket changed, ask it.
        let mut again = false;
        if peer_closed && matches!(up, Stop::WaitWrite | Stop::Done) {
            match failure(io.as_fd()) {
                Some(Failure::Abort) => return Ok(self.end(io, Ended::SourceReset, true)),
                Some(Failure::AfterEnd) => self.up.source_gone = true,
                None => {}
            }
        }
        if ready.is_watched() && matches!(down, Stop::WaitWrite | Stop::Done) {
            match failure(self.backend.as_fd()) {
                Some(Failure::Abort) => return Ok(self.end(io, Ended::SourceReset, false)),
                Some(Failure::AfterEnd) => self.down.source_gone = true,
                None => {}
            }
        }
        // A side gone after its end takes nothing more: the direction toward it drops what
        // comes (and runs again at once to say so).
        if self.up.source_gone && !self.down.dropping {
            self.down.destination_gone();
            again = true;
        }
        if self.down.source_gone && !self.up.dropping {
            self.up.destination_gone();
            again = true;
        }
        let now = Instant::now();
        if moved {
            self.last_moved = now;
        }
        // Half-closes pass through.
        if up == Stop::Done && !self.up.passed_on {
            self.up.passed_on = true;
            let _ = self.backend.shutdown(Shutdown::Write);
        }
        if down == Stop::Done && !self.down.passed_on {
            self.down.passed_on = true;
            let _ = io.shutdown(Shutdown::Write);
        }
        if up == Stop::Done && down == Stop::Done {
            let how = match (self.up.source_gone, self.down.source_gone) {
                (true, _) => "the client closed, then reset",
                (_, true) => "the backend closed, then reset",
                _ => "both sides closed",
            };
            self.ended.get_or_insert_with(|| how.into());
            return Ok(Wants::close());
        }
        // A side gone after its end takes nothing more: once all it sent has reached the
        // other side (acknowledged), the other is reset, as the gone side's own socket
        // would have reset it (and told it that what it sent since went nowhere). The
        // tunnel does not stand for a sender that never ends.
        let mut poll = None;
        for (dropped_by, owed_done, client_sent) in [
            (&self.down, up == Stop::Done, false),
            (&self.up, down == Stop::Done, true),
        ] {
            if !(dropped_by.dropping && owed_done) {
                continue;
            }
            let sender = match client_sent {
                true => io.as_fd(),
                false => self.backend.as_fd(),
            };
            let unsent = protocol_api::output::unacked(sender).unwrap_or(0);
            let waited = *self.draining_since.get_or_insert(now);
            let waiting = now.duration_since(waited);
            if unsent > 0 && waiting < DRAIN_WAIT {
                // Asked often at first, then less (a slow reader may take long).
                poll = Some((waiting / 2).clamp(DRAIN_POLL, Duration::from_secs(1)));
                continue;
            }
            let who = match client_sent {
                true => "backend",
                false => "client",
            };
            self.ended = Some(match dropped_by.dropped {
                0 => format!("the {who} closed, then reset"),
                n => format!("the {who} closed, then reset; {n} bytes sent to it dropped"),
            });
            reset_on_close(sender);
            return Ok(Wants::close());
        }
        if let Some(idle) = self.idle {
            let quiet = now.duration_since(self.last_moved);
            if quiet >= idle {
                self.ended = Some("idle".into());
                let _ = io.shutdown(Shutdown::Both);
                let _ = self.backend.shutdown(Shutdown::Both);
                return Ok(Wants::close());
            }
        }
        // Reads of the client are always wanted until the tunnel ends: its reset or end is
        // news even while its direction waits for the backend. Writes, while the client
        // holds the backend's bytes back. The backend is watched for both.
        let mut wants = match down {
            Stop::WaitWrite => Wants::read_write(),
            _ => Wants::read(),
        };
        if up == Stop::Spent || down == Stop::Spent || again {
            wants = wants.with_resume();
        }
        if let Some(idle) = self.idle {
            wants = wants.with_timer(idle.saturating_sub(now.duration_since(self.last_moved)));
        }
        if let Some(poll) = poll {
            wants = wants.with_timer(poll);
        }
        Ok(wants)
    }

    /// Ends the tunnel: a reset travels on as a reset; the log line says which side.
    fn end(&mut self, io: &mut Io<'_>, ended: Ended, client_to_backend: bool) -> Wants {
        let (how, reset_client) = match (ended, client_to_backend) {
            (Ended::SourceReset, true) | (Ended::DestinationGone, false) => {
                ("client reset".to_string(), false)
            }
            (Ended::SourceReset, false) | (Ended::DestinationGone, true) => {
                ("backend reset".to_string(), true)
            }
            (Ended::Failed(e), _) => (format!("error: {e}"), false),
        };
        if reset_client {
            reset_on_close(io.as_fd());
        } else {
            reset_on_close(self.backend.as_fd());
        }
        self.ended.get_or_insert(how);
        Wants::close()
    }
}

impl Drop for TunnelConn {
    fn drop(&mut self) {
        self.count_bytes();
        let how = match (&self.ended, self.stopping) {
            (Some(how), _) => how.as_str(),
            (None, true) => "daemon stopping",
            (None, false) => "closed by the daemon",
        };
        log::info!(
            "tunnel {} -> {} for {}: {} bytes up, {} bytes down, {:.3}s, ended: {how}",
            self.label.route,
            self.label.address,
            self.label.peer,
            self.up.bytes,
            self.down.bytes,
            self.started.elapsed().as_secs_f64(),
        );
    }
}

/// How a side's socket failed.
enum Failure {
    /// Reset before its end (`ECONNRESET`), or any other failure.
    Abort,
    /// Reset after its own end ([`gone_after_end`]).
    AfterEnd,
}

/// How `socket` failed, if it did (the error is taken); a socket that only half-closed has
/// not.
fn failure(socket: BorrowedFd<'_>) -> Option<Failure> {
    match SockRef::from(&socket).take_error() {
        Ok(None) => None,
        Ok(Some(e)) if gone_after_end(&e) => Some(Failure::AfterEnd),
        _ => Some(Failure::Abort),
    }
}

/// Makes the next close of `socket` send a reset instead of a FIN (SO_LINGER with time 0):
/// how a reset on one side of a tunnel travels on to the other.
fn reset_on_close(socket: BorrowedFd<'_>) {
    let _ = SockRef::from(&socket).set_linger(Some(Duration::ZERO));
}
