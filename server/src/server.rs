//! The event loop: accepts connections, drives each [`Conn`] on readiness, enforces
//! time-outs, hands switched connections to the worker pool, and runs the stop sequence.
//!
//! One thread, mio, edge-triggered readiness. Connections live in a slab and are found by
//! `Token`; time-outs are two queues whose deadlines only grow (every deadline in a queue is
//! "now + the same duration"), so the earliest is always at the front.

use crate::config::Config;
use crate::conn::{After, Conn, Context, Phase, SCRATCH_BYTES};
use crate::http::response::DateCache;
use crate::plugin::Registry;
use crate::shared::{Homecoming, Returned, Shared};
use crate::workers::Pool;
use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// Workers wake the loop with it when they hand a connection back.
const WAKER: Token = Token(usize::MAX - 3);
/// How often a paused accept (connection limit, or out of file descriptors) is retried.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// After the grace period: how long to wait for plugins to return from their dead sockets.
const FINAL_WAIT: Duration = Duration::from_secs(2);

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    /// Connections workers hand back (see `Shared::hand_back`).
    returned: Receiver<Returned>,
    shared: Arc<Shared>,
    pool: Pool,
    /// Request (head or body) deadlines: (when, slot, connection id).
    request_deadlines: VecDeque<(Instant, usize, u64)>,
    linger_deadlines: VecDeque<(Instant, usize, u64)>,
    next_id: u64,
    date: DateCache,
    /// The read buffer every connection reads into (see `Conn::fill`).
    scratch: Box<[u8]>,
    accept_paused: bool,
    stop_deadline: Option<Instant>,
    /// The time, read once per turn of the loop (clock reads are not free in a VM).
    now: Instant,
}

impl Server {
    pub fn bind(config: Config, registry: &'static Registry) -> io::Result<Server> {
        let poll = Poll::new()?;
        let (sender, returned) = crossbeam_channel::unbounded();
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Shared::new(config, registry, Homecoming { sender, waker });
        let mut listener = TcpListener::bind(shared.config.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([libc::SIGTERM, libc::SIGINT])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let shared = Arc::new(shared);
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            returned,
            pool: Pool::new(shared.clone()),
            shared,
            request_deadlines: VecDeque::new(),
            linger_deadlines: VecDeque::new(),
            next_id: 0,
            date: DateCache::default(),
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            accept_paused: false,
            stop_deadline: None,
            now: Instant::now(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener
            .as_ref()
            .map_or(Err(io::ErrorKind::NotConnected.into()), |l| l.local_addr())
    }

    /// Serves until stopped by SIGTERM or SIGINT.
    pub fn run(mut self) -> io::Result<()> {
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
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => self.on_signal(),
                    WAKER => self.welcome_back(),
                    Token(slot) => {
                        if let Some(conn) = self.conns.get_mut(slot) {
                            conn.readable |=
                                event.is_readable() || event.is_read_closed() || event.is_error();
                        }
                        self.drive(slot, |conn, cx| conn.turn(cx));
                    }
                }
            }
            if self.accept_paused {
                self.accept();
            }
            self.expire();
            if let Some(deadline) = self.stop_deadline {
                if self.conns.is_empty() && self.pool.busy() == 0 {
                    log::info!(
                        "stopped: every connection finished; {}",
                        self.shared.metrics.summary()
                    );
                    return Ok(());
                }
                if self.now >= deadline {
                    self.end_everything();
                    log::info!("stopped; {}", self.shared.metrics.summary());
                    return Ok(());
                }
            }
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut next = [
            self.request_deadlines.front(),
            self.linger_deadlines.front(),
        ]
        .into_iter()
        .flatten()
        .map(|&(at, _, _)| at)
        .chain(self.stop_deadline)
        .min()
        .map(|at| at.saturating_duration_since(now));
        if self.accept_paused || self.stop_deadline.is_some() {
            // Paused accepts wait for a worker to free a slot, and stopping waits for the
            // pool to drain; neither is an event on this poll.
            next = Some(next.map_or(ACCEPT_RETRY, |d| d.min(ACCEPT_RETRY)));
        }
        next
    }

    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            if self.conns.len() + self.pool.busy() >= self.shared.config.max_connections {
                if !self.accept_paused {
                    log::warn!(
                        "{} connections open: not accepting until one closes",
                        self.shared.config.max_connections
                    );
                }
                self.accept_paused = true;
                return;
            }
            self.accept_paused = false;
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let slot = entry.key();
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, Token(slot), Interest::READABLE)
                    {
                        log::error!("cannot watch a new connection from {peer}: {e}");
                        continue;
                    }
                    self.next_id += 1;
                    self.shared.metrics.accepted();
                    let deadline = self.now + self.shared.config.header_timeout;
                    entry.insert(Conn::new(self.next_id, stream, peer, deadline));
                    self.request_deadlines
                        .push_back((deadline, slot, self.next_id));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    log::error!("cannot accept: {e}; retrying shortly");
                    self.accept_paused = true;
                    return;
                }
                Err(e) => log::debug!("accept failed: {e}"), // the client gave up (ECONNABORTED)
            }
        }
    }

    /// Takes back connections whose upgrade every plugin declined, to read their next
    /// request; bytes the client already sent are processed at once.
    fn welcome_back(&mut self) {
        while let Ok(Returned {
            stream,
            peer,
            input,
        }) = self.returned.try_recv()
        {
            if self.shared.is_stopping() || stream.set_nonblocking(true).is_err() {
                continue; // dropped: closed
            }
            let mut stream = mio::net::TcpStream::from_std(stream);
            let entry = self.conns.vacant_entry();
            let slot = entry.key();
            if self
                .poll
                .registry()
                .register(&mut stream, Token(slot), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            self.next_id += 1;
            let deadline = self.now + self.shared.config.header_timeout;
            entry.insert(Conn::returning(self.next_id, stream, peer, deadline, input));
            self.request_deadlines
                .push_back((deadline, slot, self.next_id));
            self.drive(slot, |conn, cx| conn.turn(cx));
        }
    }

    /// Gives a connection a turn, then applies what it asks for.
    fn drive(&mut self, slot: usize, step: impl FnOnce(&mut Conn, &mut Context<'_>) -> After) {
        let http_connections = self.conns.len();
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let (old_deadline, was_lingering) = (conn.deadline, matches!(conn.phase, Phase::Lingering));
        let mut cx = Context {
            shared: &self.shared,
            pool: &self.pool,
            date: &mut self.date,
            scratch: &mut self.scratch,
            now: self.now,
            http_connections,
        };
        match step(conn, &mut cx) {
            After::Close => {
                let mut conn = self.conns.remove(slot);
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
            After::Switch(make_job) => {
                let mut conn = self.conns.remove(slot);
                let _ = self.poll.registry().deregister(&mut conn.stream);
                let stream = std::net::TcpStream::from(conn.stream);
                self.pool.dispatch(make_job(stream));
            }
            After::Keep => {
                let lingering = matches!(conn.phase, Phase::Lingering);
                if conn.deadline != old_deadline || lingering != was_lingering {
                    let queue = if lingering {
                        &mut self.linger_deadlines
                    } else {
                        &mut self.request_deadlines
                    };
                    queue.push_back((conn.deadline, slot, conn.id));
                }
                let wanted = conn.wanted_interest();
                if wanted != conn.interest {
                    conn.interest = wanted;
                    if self
                        .poll
                        .registry()
                        .reregister(&mut conn.stream, Token(slot), wanted)
                        .is_err()
                    {
                        let mut conn = self.conns.remove(slot);
                        let _ = self.poll.registry().deregister(&mut conn.stream);
                    }
                }
            }
        }
    }

    fn expire(&mut self) {
        let now = self.now;
        for queue in [0, 1] {
            loop {
                let deadlines = if queue == 0 {
                    &mut self.request_deadlines
                } else {
                    &mut self.linger_deadlines
                };
                match deadlines.front() {
                    Some(&(at, slot, id)) if at <= now => {
                        deadlines.pop_front();
                        let current = self
                            .conns
                            .get(slot)
                            .is_some_and(|c| c.id == id && c.deadline == at);
                        if current {
                            self.drive(slot, |conn, cx| conn.expire(cx));
                        }
                    }
                    _ => break,
                }
            }
        }
    }

    fn on_signal(&mut self) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.is_empty() {
            return;
        }
        if self.stop_deadline.is_some() {
            log::warn!("second stop signal: closing everything now");
            self.stop_deadline = Some(Instant::now());
            return;
        }
        let grace = self.shared.config.shutdown_grace;
        log::info!(
            "stopping (signal {}): no new connections; {} HTTP and {} upgraded connection(s) get up to {:?} to finish",
            signals[0],
            self.conns.len(),
            self.pool.busy(),
            grace
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_paused = false;
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.live.wake_all();
        // Read what has arrived but not been seen yet, so that a request already sent counts
        // as in flight rather than its connection as idle.
        let slots: Vec<usize> = self.conns.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            self.drive(slot, |conn, cx| {
                conn.readable = true;
                conn.turn(cx)
            });
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle())
            .map(|(slot, _)| slot)
            .collect();
        for slot in idle {
            let mut conn = self.conns.remove(slot);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.stop_deadline = Some(Instant::now() + grace);
    }

    /// The grace period is over: end what is left, give plugins a moment to return.
    fn end_everything(&mut self) {
        let (http, upgraded) = (self.conns.len(), self.shared.live.len());
        log::warn!("grace period over: closing {http} HTTP and {upgraded} upgraded connection(s)");
        self.conns.clear();
        self.shared.live.end_all();
        let until = Instant::now() + FINAL_WAIT;
        while self.pool.busy() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.pool.busy() > 0 {
            log::warn!(
                "{} plugin call(s) still running; exiting anyway",
                self.pool.busy()
            );
        }
    }
}
