//! A readiness-driven upgraded connection on an event loop: the daemon's half of
//! [`EventProtocol`](protocol_api::EventProtocol). It calls the plugin's `on_ready` when
//! what the plugin wants may be possible, and owns the limits around it: the idle limit, the
//! write time-out, the goodbye on stop, and the access line at the end.
//!
//! Readiness is edge-triggered underneath (the socket is registered for both directions,
//! or for writability only while the plugin wants neither: [`Session::interest`]) and
//! level-triggered for the plugin: [`Flow`] remembers whether the socket may
//! still be read or written, so a plugin that stops before `WouldBlock` is called again,
//! but only if that call moved bytes of its connection: a plugin that chooses not to read
//! (its other side is slow) waits for the next event instead of being called in a loop. A
//! plugin with work in hand and nothing to move asks for its next call (`WANT_RESUME`);
//! the peer's close is told (`READY_PEER_CLOSED`) even to a plugin that is not reading.

use super::negotiate::plugin_failed;
use super::on_loop::Started;
use super::SwitchRecord;
use crate::connection::closing::Closing;
use crate::connection::transport::{Transport, Wire};
use crate::connection::Transit;
use crate::daemon::state::{Shared, Ticket};
use crate::http1::Upgrade;
use crate::plugin::{
    waker_of, EventIo, Failure, Flow, Handler, ReadAhead, WakeTarget, Watched, Watcher,
};
use mio::net::TcpStream;
use protocol_api::abi::{
    READY_PEER_CLOSED, READY_READABLE, READY_RESUME, READY_STOPPING, READY_TIMER, READY_WOKEN,
    READY_WRITABLE, WANT_ABORT, WANT_CLOSE, WANT_READ, WANT_RESUME, WANT_WRITE,
};
use protocol_api::hosting::Readiness;
use protocol_api::moment::Moment;
use protocol_api::output::Output;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

pub struct Session {
    /// The socket (registered with the loop), and the TLS session over it if any.
    pub wire: Wire,
    peer: SocketAddr,
    /// Counted among the readiness sessions from [`Session::new`] to [`Session::close`].
    ticket: Ticket,
    handler: Handler<'static>,
    flow: Flow,
    /// The `101`, while the socket has not taken all of it; the plugin runs after. Boxed
    /// and let go once written: it is gone within a call or two, the connection stays.
    owed: Option<Box<Output>>,
    /// `WANT_READ` and `WANT_WRITE` as the plugin last asked.
    wants: u32,
    /// The plugin's timer.
    timer: Option<Moment>,
    /// When bytes last moved either way (the idle limit counts from here).
    last_moved: Moment,
    /// Since when output has waited for a peer that takes nothing (the write time-out).
    stalled_since: Option<Moment>,
    /// Whose output waits: the plugin's, or the kernel's.
    stall: Stall,
    told_stopping: bool,
    /// The last call moved bytes of the connection (so it may move more if called again).
    moved_last: bool,
    /// The plugin asked for another call (`WANT_RESUME`, 1.3).
    resume: bool,
    /// The peer shut its side or the connection failed (EPOLLRDHUP, EPOLLHUP, EPOLLERR).
    peer_closed: bool,
    /// For the access line.
    record: SwitchRecord,
    /// Descriptors of the plugin's own that the loop watches for it, and its wakers'
    /// target (none, mostly).
    watched: Watched,
    /// A waker was woken since the last call: the next one says so (`READY_WOKEN`).
    woken: bool,
    /// The socket is registered for writability only (see [`Session::interest`]).
    quiet: bool,
    /// The kernel's count of bytes the peer acknowledged (low 32 bits) when output began
    /// to wait, or at the last write time-out check.
    acked_mark: u32,
}

/// Whose output waits for the peer while the write time-out runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// The plugin wants to write, and the socket takes nothing.
    Plugin,
    /// The plugin wrote all it had and wants nothing more; the kernel may still hold some
    /// of it, which is asked when the time-out comes.
    Handed,
    /// The kernel holds output of ours: the peer must take some of it in time.
    Kernel,
}

/// How much of the plugin's state for a connection [`Session::prefetch_plugin_state`]
/// brings into the caches: the WebSocket's is 184 bytes.
const PLUGIN_STATE_PREFETCH: usize = 192;

/// Why the daemon ended a session for its limits, as the access line says it.
const IDLE: &str = "idle";
const WRITE_TIME_OUT: &str = "write time-out: the peer took nothing";
/// Why a session ended that the connection's failure ended.
const CONNECTION_LOST: &str = "connection lost";
const CONNECTION_ERROR: &str = "connection error";
/// Why a session ended that its plugin reset (`WANT_ABORT`, 1.7).
const ABORTED: &str = "reset by the plugin";

/// The low 32 bits of what the peer has acknowledged (0 if the kernel will not say): a
/// mark that moves when it takes data.
fn kernel_acked(stream: &TcpStream) -> u32 {
    crate::sys::tcp_acked(stream).unwrap_or(0)
}

/// What the loop does with a session after a call.
pub enum Step {
    Keep,
    /// Close it; the reason goes on the access line (`None`: the plugin chose to).
    Close(Option<&'static str>),
}

impl Session {
    /// A switched connection: `switching` (the `101`) goes out first, then the plugin's
    /// `on_ready` is called with whatever the socket allows.
    pub fn new(
        shared: &'static Shared,
        transit: Transit<TcpStream>,
        readable: bool,
        upgrade: &Upgrade,
        started: Started,
        now: Instant,
    ) -> Session {
        let Started {
            offer,
            handler,
            switching,
        } = started;
        let Transit {
            stream,
            tls,
            peer,
            mut ticket,
            read_ahead,
        } = transit;
        ticket.count_session(true);
        let record = SwitchRecord::switched(shared, upgrade, offer, &switching, read_ahead.len());
        Session {
            wire: Wire::resumed(stream, tls),
            peer,
            ticket,
            handler,
            flow: Flow {
                read_ahead: ReadAhead::new(read_ahead),
                readiness: Readiness {
                    // What the HTTP side knew: a short read drained the socket.
                    readable,
                    writable: true,
                    moved: false,
                    closed: false,
                },
                ..Flow::default()
            },
            owed: (!switching.is_empty()).then(|| Box::new(Output::new(switching))),
            wants: WANT_READ | WANT_WRITE,
            timer: None,
            last_moved: Moment::of(now),
            stalled_since: None,
            stall: Stall::Plugin,
            told_stopping: false,
            moved_last: false,
            resume: false,
            peer_closed: false,
            record,
            watched: None,
            woken: false,
            quiet: false,
            acked_mark: 0,
        }
    }

    /// TLS records wait for the socket: a writable event must reach the session (which
    /// writes them first) whether or not its plugin wants to write.
    pub fn tls_pending(&self) -> bool {
        self.wire.has_pending()
    }

    /// The ABI minor version of the plugin serving it.
    pub fn abi_minor(&self) -> u32 {
        self.record.plugin().abi_minor()
    }

    /// Notes a readiness event; true when it newly says the peer closed (a plugin of 1.3 or
    /// later is then called even if it waits for nothing the event brings).
    pub fn ready(&mut self, readable: bool, writable: bool, closed: bool) -> bool {
        if writable {
            // The peer took the kernel's share down to half, if it held too much.
            self.flow.kernel.writable(&mut self.wire.socket.as_fd());
        }
        self.flow.readiness.readable |= readable;
        self.flow.readiness.writable |= writable;
        self.flow.readiness.closed |= closed;
        let newly = closed && !self.peer_closed;
        self.peer_closed |= closed;
        newly && self.record.plugin().abi_minor() >= 3
    }

    /// One of its wakers was woken (ABI 1.10): the next call says so. The next wake queues
    /// it again, even one during that call.
    pub fn woken(&mut self) {
        if let Some(waker) = waker_of(&self.watched) {
            waker.taken();
        }
        self.woken = true;
    }

    /// Whether to call the session again after this turn's events: it asked to be
    /// (`WANT_RESUME`), or its last call moved bytes and what it waits for may still be
    /// there. A call that moved nothing waits for an event.
    pub fn wants_again(&self) -> bool {
        self.resume || (self.moved_last && self.due() != 0)
    }

    /// What the loop should watch the socket for, when that changed since it was last told:
    /// both directions while the plugin wants to read or write; writability only while it
    /// wants neither (a plugin whose own runtime reads the socket, waiting on a timer), so
    /// that the loop is not woken by every byte that arrives for someone else. The peer's
    /// reset or full close (`EPOLLHUP`, `EPOLLERR`) still arrives; its half-close does not.
    pub fn interest(&mut self) -> Option<mio::Interest> {
        let quiet = self.wants & (WANT_READ | WANT_WRITE) == 0 && self.owed.is_none();
        if quiet == self.quiet {
            return None;
        }
        self.quiet = quiet;
        Some(match quiet {
            true => mio::Interest::WRITABLE,
            false => mio::Interest::READABLE | mio::Interest::WRITABLE,
        })
    }

    /// The `READY_*` bits the plugin should be called with now (0: nothing to do).
    pub fn due(&self) -> u32 {
        let mut events = 0;
        if self.wants & WANT_READ != 0
            && (self.flow.readiness.readable || self.flow.read_ahead.len() > 0)
        {
            events |= READY_READABLE;
        }
        if self.wants & WANT_WRITE != 0 && self.flow.readiness.writable {
            events |= READY_WRITABLE;
        }
        events
    }

    /// When the session needs attention next: its timer, the idle limit, or the write
    /// time-out.
    pub fn deadline(&self, shared: &Shared) -> Moment {
        let idle = self.last_moved.after(shared.config.idle);
        let stall = (self.stalled_since)
            .map(|since| since.after(self.flow.write_timeout(shared.config.write_timeout)));
        [Some(idle), stall, self.timer]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(idle)
    }

    /// Starts bringing the session into the CPU's caches, ahead of its call.
    pub fn prefetch(&self) {
        crate::sys::prefetch(
            (self as *const Session).cast(),
            std::mem::size_of::<Session>(),
        );
    }

    /// Starts bringing the plugin's state for the session into the CPU's caches (the start
    /// of it: the plugin's layout is its own).
    pub fn prefetch_plugin_state(&self) {
        crate::sys::prefetch(self.handler.state_address(), PLUGIN_STATE_PREFETCH);
    }

    /// Calls the plugin with `events` (plus whatever is due, and the stop if not yet told).
    /// `now` is the loop's clock, read again after the call.
    pub fn call(
        &mut self,
        shared: &'static Shared,
        events: u32,
        now: &mut Instant,
        watcher: Watcher<'_>,
    ) -> Step {
        self.moved_last = false;
        if self.flow.readiness.writable && self.wire.has_pending() {
            // TLS records the socket did not take go first, whatever the plugin wants.
            match self.wire.flush_pending() {
                Ok(all) => self.flow.readiness.writable = all,
                Err(_) => return Step::Close(Some(CONNECTION_LOST)),
            }
        }
        if let Some(owed) = self.owed.as_mut() {
            if self.flow.readiness.writable {
                match owed.flush(&mut self.wire, 0) {
                    Ok(written) => self.flow.readiness.writable = !written.blocked,
                    Err(_) => return Step::Close(Some(CONNECTION_LOST)),
                }
            }
            if !owed.is_done() {
                return Step::Keep; // a writable event brings us back
            }
            self.owed = None;
        }
        let minor = self.record.plugin().abi_minor();
        let mut events = events | self.due();
        if std::mem::take(&mut self.resume) {
            events |= READY_RESUME;
        }
        if std::mem::take(&mut self.woken) {
            events |= READY_WOKEN;
        }
        if shared.is_stopping() && !self.told_stopping {
            self.told_stopping = true;
            events |= READY_STOPPING;
        }
        if events == 0 {
            return Step::Keep;
        }
        if self.peer_closed && minor >= 3 {
            events |= READY_PEER_CLOSED;
        }
        let bytes_out = self.flow.bytes_out;
        self.flow.readiness.moved = false;
        let mut io = EventIo {
            stream: &self.wire.socket,
            tls: self.wire.tls.as_deref_mut(),
            flow: &mut self.flow,
            stopping: shared.is_stopping(),
            watcher,
            watched: &mut self.watched,
        };
        let fd = self.wire.socket.as_raw_fd();
        let began = *now;
        let result = self.handler.on_ready(&mut io, fd, events);
        let plugin = self.record.plugin();
        *now = shared.metrics.timed_call(plugin, "on_ready", began);
        let moment = Moment::of(*now);
        // However the plugin took its read's error (passed on, or handled as an end).
        let tls = self.wire.tls.as_deref();
        if let Some(reason) = crate::access::tls_without_data(tls, &self.peer) {
            return Step::Close(Some(reason));
        }
        let wants = match result {
            Ok(wants) => wants,
            // An I/O error the plugin passed on (a reset, mostly): the connection's end, not
            // the plugin's fault; logged as the blocking `serve`'s errors are.
            Err(Failure::Error(message)) => {
                log::debug!(
                    "plugin {}: connection from {} ended with an error: {message}",
                    plugin.name,
                    self.peer
                );
                return Step::Close(Some(CONNECTION_ERROR));
            }
            Err(failure) => {
                plugin_failed(shared, plugin, "on_ready", &self.peer.to_string(), &failure);
                return Step::Close(Some("plugin panicked"));
            }
        };
        if wants.interest & WANT_CLOSE != 0 {
            let abort = minor >= 7 && wants.interest & WANT_ABORT != 0;
            return Step::Close(abort.then_some(ABORTED));
        }
        self.wants = wants.interest & (WANT_READ | WANT_WRITE);
        self.resume = minor >= 3 && wants.interest & WANT_RESUME != 0;
        self.timer =
            (wants.timer_ms > 0).then(|| moment.after(Duration::from_millis(wants.timer_ms)));
        self.moved_last = self.flow.readiness.moved;
        if !self.peer_closed && self.wire.tls.as_deref().is_some_and(|tls| tls.has_ended()) {
            // The TLS stream ended within a read (close_notify with the last data): news no
            // event of the socket brings. The plugin is called again, told of the end,
            // and reads it (0); before, it waited for the idle limit (an attacker's review).
            self.peer_closed = true;
            self.flow.readiness.readable = true;
            self.moved_last = true;
        }
        if self.flow.readiness.moved {
            self.last_moved = moment;
        }
        let wrote = self.flow.bytes_out > bytes_out;
        if self.wants & WANT_WRITE != 0 {
            if self.stalled_since.is_none() || self.stall != Stall::Plugin {
                // What the peer had taken when the wait began: at the write time-out, the
                // kernel's count says whether it took anything since (bytes a plugin moves
                // itself included). One system call per wait, none per message.
                self.stall = Stall::Plugin;
                self.stalled_since = Some(moment);
                self.acked_mark = kernel_acked(&self.wire.socket);
            } else if wrote {
                self.stalled_since = Some(moment);
            }
        } else if wrote && (self.stalled_since.is_none() || self.stall == Stall::Plugin) {
            // All written, but the kernel may hold it for a peer that takes nothing: it is
            // asked once the write time-out has passed (no system call per message). Not
            // put off by later writes: a ping every 20 s to a peer that takes nothing would
            // keep the question from ever being asked (a review).
            self.stall = Stall::Handed;
            self.stalled_since = Some(moment);
        } else if self.stall == Stall::Plugin {
            self.stalled_since = None;
        }
        // (A wait for the kernel is kept whatever the plugin does meanwhile: before, a call
        // that wrote nothing, for a timer, a watched descriptor or an unasked pong, forgot
        // it, and a client that sent now and then but read nothing kept its echo's
        // megabyte in the daemon's kernel for good.)
        let may_wake = waker_of(&self.watched).is_some_and(WakeTarget::may_wake);
        if self.wants == 0 && self.timer.is_none() && !self.resume && !may_wake {
            // Nothing would ever call it again: the plugin is done.
            return Step::Close(None);
        }
        Step::Keep
    }

    /// Its deadline came: end it for the daemon's limits, or call the plugin's timer.
    pub fn expire(
        &mut self,
        shared: &'static Shared,
        now: &mut Instant,
        watcher: Watcher<'_>,
    ) -> Step {
        let write_timeout = self.flow.write_timeout(shared.config.write_timeout);
        // Before ending a connection for its limits, the kernel's counts are asked: bytes a
        // plugin moves itself on the lent socket (a tunnel's splice) are not in ours.
        if self
            .stalled_since
            .is_some_and(|since| since.instant() + write_timeout <= *now)
        {
            let waiting = || crate::sys::tcp_unacked_bytes(&self.wire.socket).unwrap_or(0) > 0;
            if self.stall == Stall::Handed {
                // The plugin wrote it all a write time-out ago: if the kernel still holds
                // some, the peer has a write time-out from now to take any of it.
                self.stalled_since = None;
                if waiting() {
                    self.stall = Stall::Kernel;
                    self.stalled_since = Some(Moment::of(*now));
                    self.acked_mark = kernel_acked(&self.wire.socket);
                }
            } else {
                // Taken means acknowledged: a peer that opens its window by a byte now and
                // then still took something, but retransmissions to one that is gone are
                // not progress.
                let acked = kernel_acked(&self.wire.socket);
                if acked == self.acked_mark {
                    shared.metrics.ended_write_timeout();
                    return Step::Close(Some(WRITE_TIME_OUT));
                }
                self.acked_mark = acked;
                self.stalled_since = Some(Moment::of(*now));
                if self.stall == Stall::Kernel && !waiting() {
                    self.stalled_since = None; // all taken
                }
            }
        }
        let idle = shared.config.idle;
        if self.last_moved.instant() + idle <= *now {
            // Output handed to the kernel may still wait there for a peer that takes
            // nothing: its acknowledgements of the kernel's window probes (at most 120 s
            // apart, under the idle limit) are not activity, and a connection whose peer
            // took nothing stood for ever (an attacker's review: 20 connections held 53 MiB
            // of kernel memory for 420 s and more). It is held to the write time-out then,
            // on the kernel's count of bytes taken.
            let waiting = crate::sys::tcp_unacked_bytes(&self.wire.socket).unwrap_or(0) > 0;
            let since = |quiet: Duration| Moment::of(now.checked_sub(quiet).unwrap_or(*now));
            match crate::sys::tcp_activity(&self.wire.socket).ok() {
                Some(seen) if seen.since_received < idle => {
                    self.last_moved = since(seen.since_received);
                }
                Some(seen) if !waiting && seen.since_acked < idle => {
                    self.last_moved = since(seen.since_acked);
                }
                Some(_) if waiting => {
                    if self.stalled_since.is_none() {
                        self.stall = Stall::Kernel;
                        self.stalled_since = Some(Moment::of(*now));
                        self.acked_mark = kernel_acked(&self.wire.socket);
                    }
                    self.last_moved = Moment::of(*now);
                }
                _ => {
                    shared.metrics.ended_idle();
                    return Step::Close(Some(IDLE));
                }
            }
        }
        if self.timer.is_some_and(|at| at <= Moment::of(*now)) {
            self.timer = None;
            return self.call(shared, READY_TIMER, now, watcher);
        }
        Step::Keep
    }

    /// The daemon began to stop: the plugin is told (once) on this call.
    pub fn tell_stopping(
        &mut self,
        shared: &'static Shared,
        now: &mut Instant,
        watcher: Watcher<'_>,
    ) -> Step {
        self.call(shared, 0, now, watcher)
    }

    /// Ends the session: the plugin's state is dropped, the access line written, and the
    /// socket closed; or, when TLS records the plugin wrote still wait for a peer that is
    /// taking them, handed back to finish ([`Closing`], until `deadline`).
    pub fn close(
        mut self,
        reason: Option<&'static str>,
        watcher: Watcher<'_>,
        deadline: Instant,
    ) -> Option<Closing> {
        // The plugin owns the watched descriptors and closes them with its state.
        watcher.clear(&mut self.watched);
        if let Some(waker) = waker_of(&self.watched) {
            waker.end(); // wakers the plugin still holds do nothing from now on
        }
        let Session {
            mut wire,
            peer,
            mut ticket,
            handler,
            flow,
            owed,
            mut record,
            ..
        } = self;
        drop(handler); // the plugin frees its state before the socket goes

        // close_notify after what waits. Only a plugin's own close waits for the peer to
        // take it; a connection the daemon ends (lost, idle, write time-out) goes now.
        // In cleartext the kernel sends what was written, then the FIN; but ended for a
        // peer that took nothing, what still waits for it is dropped with a reset (an
        // attacker's review: closed gracefully, 180 such sockets held 702 MiB for minutes
        // after we let them go, while their client opened more). So does a plugin's reset.
        let reset = matches!(reason, Some(IDLE | WRITE_TIME_OUT | ABORTED))
            && crate::sys::reset_if_unsent(&wire.socket);
        // A plugin's reset with nothing left unsent is a plain close, and said as one.
        let said = reason.filter(|&r| r != ABORTED || reset);
        record.unsent(owed.map_or(0, |owed| owed.owed()));
        record.log(peer, flow.bytes_in, flow.bytes_out, said);
        ticket.count_session(false);
        if reset {
            return None;
        }
        wire.tls.as_ref()?;
        match wire.shutdown_write() {
            Ok(()) if reason.is_none() && wire.has_pending() => {
                Some(Closing::new(wire, ticket, deadline))
            }
            _ => None,
        }
    }
}
