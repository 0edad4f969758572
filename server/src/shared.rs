//! State every thread shares: settings, plugins, the stop flag and deadline, the count of
//! open connections, the worker pool, what each client address holds, the blocking connections that stopping and the idle
//! limit must reach, and the way back to each event loop.
//!
//! Made once at start and leaked: every thread holds `&'static Shared` until the process
//! exits, as it holds the plugins.

use crate::clients::{Clients, Hold, Limit};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::negotiation::Upgrade;
use crate::plugin::Registry;
use crate::workers::Pool;
use crossbeam_channel::Sender;
use slab::Slab;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

pub struct Shared {
    pub config: Config,
    /// The plugin folder's current generation: what new requests are routed with. Requests
    /// and connections keep the generation they started with.
    registry: RwLock<&'static Registry>,
    /// Set once on SIGTERM/SIGINT; plugins read it through `is_stopping`.
    stopping: AtomicBool,
    /// When the grace period ends (set with `stopping`; moved to now by a second signal).
    stop_deadline: Mutex<Option<Instant>>,
    /// Set when the grace period is over: event loops close what is left and end.
    ending: AtomicBool,
    /// Client connections open, HTTP and upgraded, against `SWITCHYARD_MAX_CONNECTIONS`.
    open: AtomicUsize,
    pub live: Live,
    pub metrics: Metrics,
    pub pool: Pool,
    /// What each client address holds, against its limits.
    pub clients: Clients,
    loops: OnceLock<Vec<LoopHandle>>,
}

/// How to reach an event loop from another thread.
pub struct LoopHandle {
    pub sender: Sender<Returned>,
    pub waker: Arc<mio::Waker>,
}

/// A connection a worker gives back to an event loop, with what the loop does next.
pub struct Returned {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub ticket: Ticket,
    /// Bytes the client sent after the request: the new protocol's, or its next request.
    pub input: Vec<u8>,
    pub upgrade: Box<Upgrade>,
    pub next: Resume,
}

pub enum Resume {
    /// Send this answer to the upgrade request (a refusal, or the plain answer when every
    /// plugin declined), then go on as HTTP/1.1 or close, as the answer says.
    Answer(crate::http::response::Response, Option<&'static str>),
    /// Go on negotiating the client's offers from this one, on the loop (readiness plugins).
    Negotiate(usize),
    /// A readiness plugin accepted on the worker (it asked to negotiate there): start its
    /// session on the loop and send `switching`.
    Start {
        offer: usize,
        session: crate::plugin::Session<'static>,
        switching: Vec<u8>,
    },
}

/// One open client connection, counted against `SWITCHYARD_MAX_CONNECTIONS` until dropped,
/// and against its client's share once the client is known ([`Ticket::count_client`]).
/// It travels with the connection from loop to worker and back.
pub struct Ticket {
    open: &'static AtomicUsize,
    client: Option<Hold>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ticket {
    /// Counts the connection against the connections `ip` may have open; false (and not
    /// counted) when it has its most already.
    pub fn count_client(&mut self, clients: &'static Clients, ip: IpAddr) -> bool {
        self.client = clients.take(ip, Limit::Connections);
        self.client.is_some()
    }
}

impl Shared {
    pub fn new(config: Config, registry: &'static Registry) -> Self {
        let pool = Pool::new(config.workers, config.worker_stack_bytes);
        let clients = Clients::new(config.max_connections_per_client, config.workers_per_client);
        Shared {
            config,
            registry: RwLock::new(registry),
            stopping: AtomicBool::new(false),
            stop_deadline: Mutex::new(None),
            ending: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            live: Live::default(),
            metrics: Metrics::new(),
            pool,
            clients,
            loops: OnceLock::new(),
        }
    }

    /// The plugin generation new requests are routed with.
    pub fn registry(&self) -> &'static Registry {
        *self.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `registry` the generation new requests are routed with (a reload).
    pub fn set_registry(&self, registry: &'static Registry) {
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = registry;
    }

    /// Sets the event loops' handles, once, before any connection is accepted.
    pub fn set_loops(&self, loops: Vec<LoopHandle>) {
        let _ = self.loops.set(loops);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The stop flag itself, for blocking connections that read it through the ABI.
    pub fn stopping_flag(&self) -> &AtomicBool {
        &self.stopping
    }

    /// Begins the stop (or, called again, moves its deadline), and wakes every event loop.
    pub fn stop(&self, deadline: Instant) {
        *self.stop_deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(deadline);
        self.stopping.store(true, Ordering::Release);
        self.live.wake_all();
        for handle in self.loops.get().into_iter().flatten() {
            let _ = handle.waker.wake();
        }
    }

    /// The grace period is over: every loop closes what it has and ends; blocking
    /// connections are shut.
    pub fn end(&self) {
        self.ending.store(true, Ordering::Release);
        self.live.end_all();
        for handle in self.loops.get().into_iter().flatten() {
            let _ = handle.waker.wake();
        }
    }

    pub fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    pub fn stop_deadline(&self) -> Option<Instant> {
        *self.stop_deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more open connection, unless the limit is reached.
    pub fn try_open(&'static self) -> Option<Ticket> {
        let max = self.config.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Ticket {
                open: &self.open,
                client: None,
            })
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Gives a connection back to event loop `home`; it is closed if that loop has ended.
    pub fn hand_back(&self, home: usize, returned: Returned) {
        let Some(handle) = self.loops.get().and_then(|loops| loops.get(home)) else {
            return;
        };
        if handle.sender.send(returned).is_ok() {
            if let Err(e) = handle.waker.wake() {
                log::error!("cannot wake event loop {home}: {e}");
            }
        }
    }
}

/// A blocking upgraded connection being served on a worker.
pub struct LiveConn {
    pub stream: TcpStream,
    /// Set when the daemon ended the connection for being idle.
    pub idled: AtomicBool,
}

/// Blocking upgraded connections being served, so that stopping can wake and then end
/// them, and the idle limit can find the silent ones.
#[derive(Default)]
pub struct Live {
    inner: Mutex<LiveInner>,
}

#[derive(Default)]
struct LiveInner {
    conns: Slab<Arc<LiveConn>>,
    /// Once set, new entries have their read side shut as they arrive.
    stopping: bool,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection the caller serves; returns its key for `remove`.
    pub fn add(&self, conn: Arc<LiveConn>) -> usize {
        let mut inner = self.lock();
        if inner.stopping {
            let _ = conn.stream.shutdown(Shutdown::Read);
        }
        inner.conns.insert(conn)
    }

    pub fn remove(&self, key: usize) {
        self.lock().conns.try_remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Shuts the read side of every live socket (now and later added): a blocked `read`
    /// returns 0, so the plugin notices, says goodbye and returns.
    pub fn wake_all(&self) {
        let mut inner = self.lock();
        inner.stopping = true;
        for (_, conn) in inner.conns.iter() {
            let _ = conn.stream.shutdown(Shutdown::Read);
        }
    }

    /// Shuts both directions of every live socket: the grace period is over.
    pub fn end_all(&self) {
        for (_, conn) in self.lock().conns.iter() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
    }

    /// Ends every connection on which no data moved either way for `idle` (the kernel's
    /// count, so bytes a plugin splices itself count too); returns how many.
    pub fn end_idle(&self, idle: Duration) -> usize {
        let mut ended = 0;
        for (_, conn) in self.lock().conns.iter() {
            let quiet = crate::sys::tcp_quiet_for(&conn.stream).unwrap_or(Duration::ZERO);
            if quiet >= idle && !conn.idled.swap(true, Ordering::Relaxed) {
                let _ = conn.stream.shutdown(Shutdown::Both);
                ended += 1;
            }
        }
        ended
    }
}
