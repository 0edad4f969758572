//! One event loop: a thread that accepts connections from the shared listener, speaks
//! HTTP/1.1 on them ([`HttpConn`]), switches them, and runs readiness plugins on the ones it
//! switched ([`Session`]). `SWITCHYARD_IO_THREADS` of these run side by side, each owning
//! its connections outright: nothing on the per-message path is shared or locked.
//!
//! mio, edge-triggered: every socket is registered for both directions (a session whose
//! plugin wants neither is watched for writability and hang-up only, see
//! [`Session::interest`]), and each connection remembers what it may still read or write. Connections live in a slab and are
//! found by `Token`; their deadlines are in [`Timers`].
//!
//! Blocking plugins are not run here: a connection whose next offer is one goes to the
//! worker pool, and comes back over this loop's channel if it does not switch there.

mod timers;

use crate::connection::closing::Closing;
use crate::connection::transport::Wire;
use crate::daemon::clients::ClientKey;
use crate::daemon::state::Shared;
use crate::daemon::worker_slots::Slot;
use crate::http::response::{DateCache, Response};
use crate::http1::conn::{After, Context, HttpConn, SCRATCH_BYTES};
use crate::http1::metrics_page::MetricsCache;
use crate::http1::read_ahead::{self, ReadAhead};
use crate::http1::Upgrade;
use crate::plugin::{Wakes, Watcher};
use crate::pool::Pool;
use crate::switch::on_loop::{self, OnLoop, Started};
use crate::switch::session::{Session, Step};
use crate::switch::transit::{LoopHandle, Resume, ToLoop, ToWorker};
use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use protocol_api::abi::{READY_PEER_CLOSED, READY_WATCHED, READY_WATCHED_CLOSED};
use protocol_api::moment::Moment;
use protocol_api::throttle::Throttle;
use slab::Slab;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timers::Timers;

/// Other threads wake the loop with it: a connection handed back, or the stop.
/// (The same `eventfd` carries plugins' wakes from other threads: [`Wakes`].)
const WAKER: Token = Token(usize::MAX - 2);
/// The listeners' tokens: `LISTENERS - i` for the `i`th, at most `MAX_LISTENERS` of them
/// (cleartext and TLS).
const LISTENERS: usize = usize::MAX - 3;
const MAX_LISTENERS: usize = 2;

fn listener_token(index: usize) -> Token {
    Token(LISTENERS - index)
}

/// A listening socket, and whether its connections speak TLS.
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub tls: bool,
}

struct Listening {
    socket: TcpListener,
    tls: bool,
}
/// Tokens with this bit are a session's watched descriptors (ABI 1.2 `watch`): the rest of
/// the token is the session's slot.
const WATCHED: usize = 1 << (usize::BITS - 2);

/// The token a session's watched descriptors are registered under.
fn watch_token(slot: usize) -> Token {
    Token(WATCHED | slot)
}
/// What accepting from one listener came to.
enum Accepted {
    /// It had no more.
    Drained,
    /// A full batch: it may have more.
    More,
    /// Accepting waits (the connection limit, or no descriptors left).
    Paused,
}

/// How often a paused accept (connection limit, or out of file descriptors) is retried.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Most connections accepted per turn, so one loop does not take every waiting client
/// while the others idle.
const ACCEPT_BATCH: usize = 64;

pub struct Loop {
    poll: Poll,
    /// Empty once the stop began.
    listeners: Vec<Listening>,
    shared: &'static Shared,
    /// Where blocking plugins run.
    workers: &'static Pool<ToWorker>,
    /// This loop, for the connections it hands to workers to come back to.
    home: LoopHandle,
    conns: Slab<Entry>,
    /// Connections workers hand back ([`LoopHandle::hand_back`]).
    returned: Receiver<ToLoop>,
    /// HTTP connections whose file's next part was read ([`LoopHandle::read_ahead_done`]).
    read_done: Receiver<(usize, u32)>,
    /// Sessions their plugins' wakers woke (ABI 1.10), and the list they are taken into.
    wakes: Arc<Wakes>,
    woken: Vec<(usize, u32)>,
    timers: Timers,
    next_id: u32,
    date: DateCache,
    metrics: MetricsCache,
    /// The read buffer every HTTP connection of this loop reads into.
    scratch: Box<[u8]>,
    /// Accepting waits: the connection limit, or no descriptors left.
    accept_paused: bool,
    /// The listener may hold more connections than the last batch took.
    accept_more: bool,
    /// This loop has begun its part of the stop.
    stopping: bool,
    /// Sessions that may move again (they stopped before the socket was drained), HTTP
    /// connections whose file body spent its share of a turn, and closing connections whose
    /// reading did: called once more after this turn's events.
    again: Vec<(usize, u32)>,
    /// The time: read once per turn, and again after each plugin call.
    now: Instant,
}

struct Entry {
    /// Tells this connection from a later one in the same slot. It wraps after 2^32
    /// connections; a stale timer entry that names an old one must also match `scheduled`
    /// to the nanosecond, and at worst costs its connection one early look.
    id: u32,
    /// The time the timers will look at it (see `Timers`).
    scheduled: Option<Moment>,
    conn: Conn,
}

enum Conn {
    Http(Box<HttpConn>),
    Event(Box<Session>),
    /// A TLS session's last records on their way out ([`Closing`]).
    Closing(Box<Closing>),
}

/// A loop set up but not yet running: made on the main thread (so that its handle exists
/// before any connection), run on its own.
pub struct Prepared {
    poll: Poll,
    listeners: Vec<Listening>,
    home: LoopHandle,
    returned: Receiver<ToLoop>,
    read_done: Receiver<(usize, u32)>,
    wakes: Arc<Wakes>,
}

impl Prepared {
    /// A loop on its own copies of `listeners`; the handle lets other threads reach it.
    pub fn new(listeners: Vec<Listener>) -> io::Result<(Prepared, LoopHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (sender, returned) = crossbeam_channel::unbounded();
        let (read_sender, read_done) = crossbeam_channel::unbounded();
        if listeners.len() > MAX_LISTENERS {
            return Err(io::Error::other(format!(
                "{} listeners: at most {MAX_LISTENERS}",
                listeners.len()
            )));
        }
        let mut listening = Vec::with_capacity(listeners.len());
        for (index, Listener { socket, tls }) in listeners.into_iter().enumerate() {
            socket.set_nonblocking(true)?;
            let mut socket = TcpListener::from_std(socket);
            poll.registry()
                .register(&mut socket, listener_token(index), Interest::READABLE)?;
            listening.push(Listening { socket, tls });
        }
        let wakes = Wakes::new(waker.clone());
        let home = LoopHandle::new(sender, read_sender, waker);
        let prepared = Prepared {
            poll,
            listeners: listening,
            home: home.clone(),
            returned,
            read_done,
            wakes,
        };
        Ok((prepared, home))
    }

    /// Serves until the stop is over.
    pub fn run(self, shared: &'static Shared, workers: &'static Pool<ToWorker>) -> io::Result<()> {
        let Prepared {
            poll,
            listeners,
            home,
            returned,
            read_done,
            wakes,
        } = self;
        wakes.enter();
        Loop {
            poll,
            listeners,
            shared,
            workers,
            home,
            conns: Slab::new(),
            returned,
            read_done,
            wakes,
            woken: Vec::new(),
            timers: Timers::default(),
            next_id: 0,
            date: DateCache::default(),
            metrics: MetricsCache::default(),
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            accept_paused: false,
            accept_more: true,
            stopping: false,
            again: Vec::new(),
            now: Instant::now(),
        }
        .run()
    }
}

impl Loop {
    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            let mut next = events.iter().skip(1);
            let mut after_next = events.iter().skip(2);
            self.prefetch(next.clone().next().map(|e| e.token()), None);
            for event in events.iter() {
                self.prefetch(
                    after_next.next().map(|e| e.token()),
                    next.next().map(|e| e.token()),
                );
                match event.token() {
                    WAKER => self.welcome_back(),
                    Token(token) if token <= LISTENERS && token > LISTENERS - MAX_LISTENERS => {
                        self.accept_more = true
                    }
                    Token(token) if token & WATCHED != 0 => {
                        let closed = event.is_read_closed() || event.is_error();
                        self.on_watched(token & !WATCHED, closed)
                    }
                    Token(slot) => {
                        let closed = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || closed;
                        let writable =
                            event.is_writable() || event.is_write_closed() || event.is_error();
                        self.on_event(slot, readable, writable, closed);
                    }
                }
            }
            if self.accept_more || self.accept_paused {
                self.accept();
            }
            self.run_woken();
            self.run_again();
            self.expire();
            if self.shared.is_stopping() {
                if !self.stopping {
                    self.begin_stop();
                }
                if self.conns.is_empty() || self.shared.is_ending() {
                    self.end_all();
                    return Ok(());
                }
            }
        }
    }

    /// Starts bringing into the CPU's caches what the next events' calls will touch, while
    /// this event is handled: with hundreds of busy connections, a connection's state has
    /// left the caches by its next turn (the kernel's copies of every other connection's
    /// bytes pass through them), and the loads that miss wait in line one after another.
    /// The session two events ahead, and the plugin's state one ahead (its address is in
    /// the session, brought in on the turn before; the batch's second session is brought in
    /// before its first event). At 500 busy WebSockets the first touches of a connection
    /// were about a tenth of the daemon's user time; this takes about 100 ns a message off
    /// them, and costs a little where every connection stays in the caches anyway
    /// (bench/RESULTS.md, the twenty-sixth session).
    fn prefetch(&self, after_next: Option<Token>, next: Option<Token>) {
        // Elsewhere `sys::prefetch` does nothing: no lookups for it either.
        if cfg!(target_arch = "x86_64") {
            if let Some(session) = after_next.and_then(|token| self.session(token)) {
                session.prefetch();
            }
            if let Some(session) = next.and_then(|token| self.session(token)) {
                session.prefetch_plugin_state();
            }
        }
    }

    /// The readiness session an event names, for its socket or a descriptor it watches.
    fn session(&self, token: Token) -> Option<&Session> {
        match self.conns.get(token.0 & !WATCHED) {
            Some(Entry {
                conn: Conn::Event(session),
                ..
            }) => Some(session),
            _ => None,
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() || self.accept_more || self.wakes.any() {
            return Some(Duration::ZERO);
        }
        let mut next = self
            .timers
            .next()
            .map(|at| at.saturating_duration_since(Instant::now()));
        if self.accept_paused {
            // A slot freeing up elsewhere is not an event on this poll.
            next = Some(next.map_or(ACCEPT_RETRY, |d| d.min(ACCEPT_RETRY)));
        }
        next
    }

    fn accept(&mut self) {
        if self.listeners.is_empty() {
            self.accept_more = false;
            return;
        }
        let mut more = false;
        for index in 0..self.listeners.len() {
            match self.accept_from(index) {
                Accepted::Drained => {}
                Accepted::More => more = true,
                Accepted::Paused => {
                    // Retried every ACCEPT_RETRY (a slot freeing is no event here), not
                    // on every turn: a loop at the limit must not spin.
                    self.accept_more = false;
                    return;
                }
            }
        }
        self.accept_more = more;
    }

    /// Accepts up to a batch from listener `index`.
    fn accept_from(&mut self, index: usize) -> Accepted {
        for _ in 0..ACCEPT_BATCH {
            let Some(ticket) = self.shared.try_open() else {
                static PAUSED: Throttle = Throttle::new();
                if !self.accept_paused {
                    if let Some(unlogged) = PAUSED.admit() {
                        log::warn!(
                            "{} connections open: not accepting until one closes{unlogged}",
                            self.shared.config.max_connections
                        );
                    }
                }
                self.accept_paused = true;
                return Accepted::Paused;
            };
            self.accept_paused = false;
            let Some(listener) = self.listeners.get(index) else {
                return Accepted::Drained;
            };
            let tls = listener.tls;
            match listener.socket.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let slot = self.conns.vacant_key();
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(slot),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::error!("cannot watch a new connection from {peer}: {e}");
                        continue;
                    }
                    self.shared.metrics.accepted();
                    let wire = match (&self.shared.tls, tls) {
                        (Some(tls), true) => match tls.accept() {
                            // The PROXY protocol header comes first, in cleartext.
                            Ok(session) => {
                                let proxy = &self.shared.config.proxy_protocol;
                                Wire::tls(stream, session, proxy.expects_header_from(peer.ip()))
                            }
                            Err(e) => {
                                log::error!("cannot start a TLS session for {peer}: {e}");
                                continue;
                            }
                        },
                        _ => Wire::plain(stream),
                    };
                    let mut conn = HttpConn::new(wire, peer, ticket, self.shared, self.now);
                    let admitted = conn.admit();
                    // Inserted first: the slot is the one its socket was registered with,
                    // which closing others would change.
                    let slot = self.insert(Conn::Http(Box::new(conn)));
                    if !admitted && self.close_oldest_awaiting_header(peer.ip()) {
                        if let Some(Conn::Http(conn)) =
                            self.conns.get_mut(slot).map(|e| &mut e.conn)
                        {
                            conn.admit_again();
                        }
                    }
                    self.drive_http(slot);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Drained,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Once a second at most: the loop retries every few milliseconds
                    // (a review counted 40-60 lines a second while descriptors ran out).
                    static OUT_OF: Throttle = Throttle::new();
                    if let Some(unlogged) = OUT_OF.admit() {
                        log::error!("cannot accept: {e}; retrying shortly{unlogged}");
                    }
                    self.accept_paused = true;
                    return Accepted::Paused;
                }
                Err(e) => log::debug!("accept failed: {e}"), // the client gave up (ECONNABORTED)
            }
        }
        Accepted::More // a full batch: there may be more
    }

    fn insert(&mut self, conn: Conn) -> usize {
        self.next_id = self.next_id.wrapping_add(1);
        self.conns.insert(Entry {
            id: self.next_id,
            scheduled: None,
            conn,
        })
    }

    fn context(&mut self) -> (Context<'_>, &mut Slab<Entry>) {
        (
            Context {
                shared: self.shared,
                date: &mut self.date,
                scratch: &mut self.scratch,
                now: self.now,
                metrics: &mut self.metrics,
            },
            &mut self.conns,
        )
    }

    fn on_event(&mut self, slot: usize, readable: bool, writable: bool, closed: bool) {
        let Some(entry) = self.conns.get_mut(slot) else {
            return;
        };
        match &mut entry.conn {
            Conn::Http(conn) => {
                conn.readable |= readable;
                conn.hung_up |= closed;
                conn.writable |= writable;
                self.drive_http(slot);
            }
            Conn::Closing(closing) => {
                if closing.on_event(readable, writable, closed) {
                    self.close(slot);
                } else if closing.wants_again() {
                    self.again.push((slot, entry.id));
                }
            }
            Conn::Event(session) => {
                let newly_closed = session.ready(readable, writable, closed);
                // The peer's end is news even to a plugin that waits for nothing the socket
                // brings (READY_PEER_CLOSED makes the call happen); so is room for TLS
                // records the session still holds.
                let due = session.due() | if newly_closed { READY_PEER_CLOSED } else { 0 };
                if due != 0 || (writable && session.tls_pending()) {
                    self.drive_session(slot, |session, shared, now, watcher| {
                        session.call(shared, due, now, watcher)
                    });
                }
            }
        }
    }

    /// A descriptor the session in `slot` watches may move. (A session closed since leaves
    /// no registration; a later session in the slot may get a call it did not need, which
    /// the contract allows.)
    /// `closed`: the event said the descriptor's peer shut its side or it failed.
    fn on_watched(&mut self, slot: usize, closed: bool) {
        if let Some(Entry {
            conn: Conn::Event(session),
            ..
        }) = self.conns.get(slot)
        {
            let events = match closed && session.abi_minor() >= 4 {
                true => READY_WATCHED | READY_WATCHED_CLOSED,
                false => READY_WATCHED,
            };
            self.drive_session(slot, |session, shared, now, watcher| {
                session.call(shared, events, now, watcher)
            });
        }
    }

    /// Gives an HTTP connection turns until it waits for its socket, switching it on the
    /// way when it brings an upgrade request.
    fn drive_http(&mut self, slot: usize) {
        self.drive_http_with(slot, |conn, cx| conn.turn(cx));
    }

    fn drive_http_with(
        &mut self,
        slot: usize,
        first: impl FnOnce(&mut HttpConn, &mut Context<'_>) -> After,
    ) {
        let mut step = Some(first);
        loop {
            let (mut cx, conns) = self.context();
            let Some(Entry {
                id,
                conn: Conn::Http(conn),
                ..
            }) = conns.get_mut(slot)
            else {
                return;
            };
            // After the first step, the same turn goes on: a turn's requests and reads are
            // counted across the upgrades answered here (see `HttpConn::go_on`).
            let after = match step.take() {
                Some(first) => first(conn, &mut cx),
                None => conn.go_on(&mut cx),
            };
            match after {
                After::Keep => {
                    let id = *id;
                    let again = conn.wants_again().then_some((slot, id));
                    if let Some(read) = conn.read_ahead() {
                        let client = conn.client();
                        if !self.read_ahead(slot, id, client, read) {
                            continue; // no reader thread: sent from the disk here, as before
                        }
                    }
                    if let Some(again) = again {
                        // A file's body spent its turn's share: the rest after the others.
                        self.again.push(again);
                    }
                    self.now = Instant::now(); // HTTP work counts against no plugin call
                    return self.reschedule(slot);
                }
                After::Close => return self.close(slot),
                After::Upgrade(upgrade) => {
                    if !self.switch(slot, upgrade, 0) {
                        return;
                    }
                    // Answered here (a refusal or a plain answer): write it, read on.
                }
            }
        }
    }

    /// Negotiates `upgrade`'s offers from `from` on ([`on_loop::switch`]) and applies the
    /// outcome. True when the connection is still an HTTP connection of this loop (it was
    /// answered); false when it was switched, handed to a worker, or closed.
    fn switch(&mut self, slot: usize, upgrade: Box<Upgrade>, from: usize) -> bool {
        let Some(Entry {
            conn: Conn::Http(conn),
            ..
        }) = self.conns.get(slot)
        else {
            return false;
        };
        let next = on_loop::switch(self.shared, &upgrade, conn.peer, from, &mut self.now);
        self.apply(slot, upgrade, next)
    }

    /// Does what the switch decided for the HTTP connection in `slot`; true when it is
    /// still one (answered).
    fn apply(&mut self, slot: usize, upgrade: Box<Upgrade>, next: OnLoop) -> bool {
        match next {
            OnLoop::Serve(started) => {
                self.start_session(slot, &upgrade, started);
                false
            }
            OnLoop::ToWorker { offer, slot: held } => {
                self.hand_to_worker(slot, upgrade, offer, held);
                false
            }
            OnLoop::Answer(response, reason) => {
                let (mut cx, conns) = self.context();
                if let Some(Entry {
                    conn: Conn::Http(conn),
                    ..
                }) = conns.get_mut(slot)
                {
                    conn.answer_upgrade(&mut cx, &upgrade, &response, reason);
                }
                true
            }
        }
    }

    /// Turns the HTTP connection in `slot` into a readiness session (the socket keeps its
    /// registration) and gives the plugin its first call.
    fn start_session(&mut self, slot: usize, upgrade: &Upgrade, started: Started) {
        let Entry {
            id,
            scheduled,
            conn: Conn::Http(conn),
        } = self.conns.remove(slot)
        else {
            unreachable!("switch is only called on HTTP connections")
        };
        let readable = conn.readable;
        let session = Session::new(
            self.shared,
            conn.into_transit(),
            readable,
            upgrade,
            started,
            self.now,
        );
        // This is `slot` again (see above); if it were not, the socket would follow it. The
        // connection keeps its id and its place in the timers: the entry there, not yet due,
        // serves the session as well (it asks for its real deadline when the time comes), so
        // a switch adds no second entry that would wait out the request time-out.
        let new_slot = self.conns.insert(Entry {
            id,
            scheduled,
            conn: Conn::Event(Box::new(session)),
        });
        if new_slot != slot {
            if let Some(Entry {
                conn: Conn::Event(session),
                scheduled,
                ..
            }) = self.conns.get_mut(new_slot)
            {
                *scheduled = None; // the timers' entry names the old slot
                let interest = Interest::READABLE | Interest::WRITABLE;
                if self
                    .poll
                    .registry()
                    .reregister(&mut session.wire.socket, Token(new_slot), interest)
                    .is_err()
                {
                    return self.close_with(new_slot, Some("cannot watch the socket"));
                }
            }
        }
        self.drive_session(new_slot, |session, shared, now, watcher| {
            session.call(shared, 0, now, watcher)
        });
    }

    /// Hands the connection in `slot` to a worker, to negotiate from `offer` on.
    fn hand_to_worker(&mut self, slot: usize, upgrade: Box<Upgrade>, offer: usize, held: Slot) {
        let entry = self.conns.remove(slot);
        let Conn::Http(conn) = entry.conn else {
            unreachable!("switch is only called on HTTP connections")
        };
        let mut transit = conn.into_transit();
        let _ = self.poll.registry().deregister(&mut transit.stream);
        let peer = transit.peer;
        let transit = match transit.into_blocking() {
            Ok(transit) => transit,
            Err(e) => return log::debug!("{peer}: connection lost before the switch: {e}"),
        };
        let job = ToWorker {
            transit,
            upgrade,
            from: offer,
            slot: held,
            home: self.home.clone(),
        };
        if let Err(job) = self.workers.dispatch(job) {
            // No thread could be started: the client gets a 503, never silence.
            const REASON: &str = "no worker thread could be started";
            self.welcome(job.refuse(Response::unavailable(REASON), REASON));
        }
    }

    /// Takes back connections workers did not switch, and goes on with static files'
    /// bodies read into the page cache.
    fn welcome_back(&mut self) {
        while let Ok(returned) = self.returned.try_recv() {
            self.welcome(returned);
        }
        while let Ok((slot, id)) = self.read_done.try_recv() {
            if let Some(Entry {
                id: current,
                conn: Conn::Http(conn),
                ..
            }) = self.conns.get_mut(slot)
            {
                if *current == id {
                    conn.read_ahead_done();
                    self.now = Instant::now();
                    self.drive_http(slot);
                }
            }
        }
    }

    /// Has a part of the static file the HTTP connection in `slot` sends read into the
    /// page cache off the loop ([`read_ahead`]); its body goes on when the loop hears back.
    /// False when no reader thread could take it: the part is then sent from the disk.
    fn read_ahead(&mut self, slot: usize, id: u32, client: ClientKey, read: ReadAhead) -> bool {
        let home = self.home.clone();
        let done = Box::new(move || home.read_ahead_done(slot, id));
        if read_ahead::start(client, read, done).is_ok() {
            self.shared.metrics.read_ahead();
            return true;
        }
        if let Some(Entry {
            conn: Conn::Http(conn),
            ..
        }) = self.conns.get_mut(slot)
        {
            conn.read_ahead_done();
        }
        false
    }

    fn welcome(&mut self, returned: ToLoop) {
        let ToLoop {
            transit,
            upgrade,
            next,
        } = returned;
        let Ok(mut transit) = transit.into_nonblocking() else {
            return; // dropped: closed
        };
        let slot = self.conns.vacant_key();
        if self
            .poll
            .registry()
            .register(
                &mut transit.stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return;
        }
        let peer = transit.peer;
        let conn = HttpConn::returning(transit, self.shared, self.now);
        let slot = self.insert(Conn::Http(Box::new(conn)));
        let next = match next {
            Resume::Answer(response, reason) => OnLoop::Answer(response, reason),
            Resume::Negotiate(from) => {
                if self.switch(slot, upgrade, from) {
                    self.drive_http(slot);
                }
                return;
            }
            Resume::Start {
                offer,
                session,
                switching,
            } => {
                let peer = peer.to_string();
                let (shared, now) = (self.shared, &mut self.now);
                on_loop::start(shared, &upgrade, &peer, offer, session, switching, now)
            }
        };
        if self.apply(slot, upgrade, next) {
            self.drive_http(slot);
        }
    }

    /// Calls a session through `step`, then applies what it says.
    fn drive_session(
        &mut self,
        slot: usize,
        step: impl FnOnce(&mut Session, &'static Shared, &mut Instant, Watcher<'_>) -> Step,
    ) {
        let Some(Entry {
            id,
            conn: Conn::Event(session),
            ..
        }) = self.conns.get_mut(slot)
        else {
            return;
        };
        let watcher = Watcher {
            registry: self.poll.registry(),
            token: watch_token(slot),
            wakes: &self.wakes,
            slot,
            id: *id,
        };
        match step(session, self.shared, &mut self.now, watcher) {
            Step::Close(reason) => self.close_with(slot, reason),
            Step::Keep => {
                if session.wants_again() {
                    self.again.push((slot, *id));
                }
                if let Some(interest) = session.interest() {
                    let registry = self.poll.registry();
                    let socket = &mut session.wire.socket;
                    if let Err(e) = registry.reregister(socket, Token(slot), interest) {
                        log::debug!("cannot change what a connection is watched for: {e}");
                        return self.close_with(slot, Some("cannot watch the socket"));
                    }
                }
                self.reschedule(slot);
            }
        }
    }

    /// Calls, once each, the sessions their plugins' wakers woke (a wake names the slot and
    /// the id, so one for a connection that has ended meanwhile reaches no later one).
    fn run_woken(&mut self) {
        let mut woken = std::mem::take(&mut self.woken);
        self.wakes.take(&mut woken);
        for &(slot, id) in &woken {
            if let Some(Entry {
                id: current,
                conn: Conn::Event(session),
                ..
            }) = self.conns.get_mut(slot)
            {
                if *current == id {
                    session.woken();
                    self.drive_session(slot, |session, shared, now, watcher| {
                        session.call(shared, 0, now, watcher)
                    });
                }
            }
        }
        self.woken = woken;
    }

    /// Calls, once each, the sessions that stopped before their socket was drained (after
    /// a call that moved bytes) or asked to be called again.
    fn run_again(&mut self) {
        // Once each: a connection asks again after each of its calls, so one called on an
        // event as well as from this list was in it twice the next time, three times the
        // time after, one more for every event, and each entry a full call (an attacker's
        // review: 78-254 entries for five sessions that spent their inflate budget each
        // call, 186-414 ms a pass, another client's echo 0.1 -> 190-500 ms).
        let mut again = std::mem::take(&mut self.again);
        again.sort_unstable();
        again.dedup();
        for (slot, id) in again {
            match self.conns.get(slot) {
                Some(Entry {
                    id: current,
                    conn: Conn::Event(session),
                    ..
                }) if *current == id && session.wants_again() => {
                    self.drive_session(slot, |session, shared, now, watcher| {
                        session.call(shared, 0, now, watcher)
                    });
                }
                Some(Entry {
                    id: current,
                    conn: Conn::Http(conn),
                    ..
                }) if *current == id && conn.wants_again() => {
                    self.now = Instant::now();
                    self.drive_http(slot);
                }
                Some(Entry {
                    id: current,
                    conn: Conn::Closing(closing),
                    ..
                }) if *current == id && closing.wants_again() => {
                    // Its reading stopped with the socket not drained: readable still.
                    self.on_event(slot, true, false, false);
                }
                _ => {}
            }
        }
    }

    /// Makes sure the timers look at `slot` by its deadline.
    fn reschedule(&mut self, slot: usize) {
        let Some(entry) = self.conns.get_mut(slot) else {
            return;
        };
        let deadline = match &entry.conn {
            Conn::Http(conn) => conn.deadline().map(Moment::of),
            Conn::Event(session) => Some(session.deadline(self.shared)),
            Conn::Closing(closing) => Some(Moment::of(closing.deadline)),
        };
        if let Some(at) = deadline {
            self.timers
                .schedule(&mut entry.scheduled, at, slot, entry.id);
        }
        if self.timers.wants_compaction(self.conns.len()) {
            let conns = &self.conns;
            self.timers.compact(|at, slot, id| {
                conns
                    .get(slot)
                    .is_some_and(|e| e.id == id && e.scheduled == Some(at))
            });
        }
    }

    fn expire(&mut self) {
        while let Some((at, slot, id)) = self.timers.pop_due(self.now) {
            let Some(entry) = self.conns.get_mut(slot) else {
                continue;
            };
            if entry.id != id || entry.scheduled != Some(at) {
                continue; // stale: the connection was rescheduled or is gone
            }
            entry.scheduled = None;
            match &entry.conn {
                Conn::Closing(_) => self.close(slot),
                Conn::Http(_) => self.drive_http_with(slot, |conn, cx| conn.expire(cx)),
                Conn::Event(_) => self.drive_session(slot, |session, shared, now, watcher| {
                    session.expire(shared, now, watcher)
                }),
            }
        }
    }

    /// Closes this loop's oldest quarter (one at least) of the connections from the load
    /// balancer at `balancer` awaiting their PROXY protocol header, which holds its most of
    /// them ([`HttpConn::admit`]); true if it closed any. One look over the loop's
    /// connections makes room for a quarter of the share's new ones.
    fn close_oldest_awaiting_header(&mut self, balancer: IpAddr) -> bool {
        let key = ClientKey::of(balancer);
        let mut awaiting: Vec<(Instant, usize)> = (self.conns.iter())
            .filter_map(|(slot, entry)| match &entry.conn {
                Conn::Http(conn) => match conn.awaiting_since() {
                    Some((since, from)) if ClientKey::of(from) == key => Some((since, slot)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if awaiting.is_empty() {
            return false;
        }
        let oldest = awaiting.len().div_ceil(4);
        awaiting.select_nth_unstable(oldest - 1);
        static CLOSED: Throttle = Throttle::new();
        if let Some(unlogged) = CLOSED.admit() {
            log::warn!(
                "{balancer}: a load balancer holding its most connections awaiting their \
                 PROXY protocol header (its share of SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT): \
                 its {oldest} oldest on this loop closed for new ones{unlogged}"
            );
        }
        for &(_, slot) in &awaiting[..oldest] {
            self.close(slot);
        }
        true
    }

    fn close(&mut self, slot: usize) {
        self.close_with(slot, Some("closed"));
    }

    /// Removes `slot`'s connection; a session gets its access line with `reason`. Closing
    /// an HTTP connection's socket takes it out of the poll (the daemon never duplicates
    /// it); a session's is taken out first, since its plugin may have.
    fn close_with(&mut self, slot: usize, reason: Option<&'static str>) {
        if let Some(entry) = self.conns.try_remove(slot) {
            match entry.conn {
                Conn::Http(conn) => drop(conn),
                Conn::Closing(mut closing) => {
                    // At its deadline: what the kernel still holds for a peer that took
                    // nothing goes too (SWITCHYARD_WRITE_TIMEOUT_MS's promise).
                    crate::sys::reset_if_unsent(&closing.wire.socket);
                    let _ = self.poll.registry().deregister(&mut closing.wire.socket);
                }
                Conn::Event(mut session) => {
                    // A plugin may hold a duplicate of the socket (h2c's runtime does): then
                    // closing ours leaves the registration alive, and its events would reach
                    // whichever connection takes this slot next. So it is taken out first.
                    let _ = self.poll.registry().deregister(&mut session.wire.socket);
                    let watcher = Watcher {
                        registry: self.poll.registry(),
                        token: watch_token(slot),
                        wakes: &self.wakes,
                        slot,
                        id: entry.id,
                    };
                    let deadline = self.now + self.shared.config.write_timeout;
                    if let Some(closing) = session.close(reason, watcher, deadline) {
                        self.finish_closing(Box::new(closing));
                    }
                }
            }
        }
    }

    /// Keeps a TLS connection whose plugin is done until its last records are out (its
    /// plugin's state, and any duplicate of its socket, are gone, so it is registered
    /// again, for writability).
    fn finish_closing(&mut self, mut closing: Box<Closing>) {
        if self.stopping && self.shared.is_ending() {
            return;
        }
        let slot = self.conns.vacant_key();
        let registered = self.poll.registry().register(
            &mut closing.wire.socket,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        );
        if registered.is_ok() {
            let slot = self.insert(Conn::Closing(closing));
            self.reschedule(slot);
        }
    }

    /// This loop's part of the stop: no more accepting, HTTP connections idle between
    /// requests closed (one not used yet gets a moment for its first), every session told.
    fn begin_stop(&mut self) {
        self.stopping = true;
        for mut listener in std::mem::take(&mut self.listeners) {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        self.accept_paused = false;
        self.accept_more = false;
        let slots: Vec<usize> = self.conns.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            match self.conns.get_mut(slot).map(|e| &mut e.conn) {
                // Read what has arrived but not been seen yet, so that a request already
                // sent counts as in flight rather than its connection as idle.
                Some(Conn::Http(conn)) => {
                    conn.readable = true;
                    self.drive_http(slot);
                    let now = self.now;
                    if let Some(Conn::Http(conn)) = self.conns.get_mut(slot).map(|e| &mut e.conn) {
                        match conn.on_stop(now) {
                            true => self.close(slot),
                            false => self.reschedule(slot),
                        }
                    }
                }
                Some(Conn::Event(_)) => self
                    .drive_session(slot, |session, shared, now, watcher| {
                        session.tell_stopping(shared, now, watcher)
                    }),
                Some(Conn::Closing(_)) | None => {}
            }
        }
    }

    /// The loop ends: whatever is left is closed.
    fn end_all(&mut self) {
        let slots: Vec<usize> = self.conns.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            self.close_with(slot, Some("daemon stopped"));
        }
    }
}
