//! State every thread shares: settings, plugins, the stop flag and deadline, the count of
//! open connections, the worker slots, what each client address holds, the blocking
//! connections that stopping and the idle limit must reach, and how to wake each event loop.
//!
//! Made once at start and leaked: every thread holds `&'static Shared` until the process
//! exits, as it holds the plugins.

use crate::daemon::clients::{ClientKey, Clients, Limit, Share};
use crate::daemon::config::Config;
use crate::daemon::live::Live;
use crate::daemon::metrics::Metrics;
use crate::daemon::worker_slots::WorkerSlots;
use crate::plugin::Registry;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

pub struct Shared {
    pub config: Config,
    /// The plugin folder's current generation: what new requests are routed with. Requests
    /// and connections keep the generation they started with.
    registry: RwLock<&'static Registry>,
    /// Set on SIGTERM/SIGINT, before the stop delay: `/readyz` answers `503` from then on.
    draining: AtomicBool,
    /// Set once the stop begins (after the stop delay); plugins read it through
    /// `is_stopping`.
    stopping: AtomicBool,
    /// When the grace period ends (set with `stopping`; moved to now by a second signal).
    stop_deadline: Mutex<Option<Instant>>,
    /// Set when the grace period is over: event loops close what is left and end.
    ending: AtomicBool,
    /// Client connections open, HTTP and upgraded, against `SWITCHYARD_MAX_CONNECTIONS`.
    open: AtomicUsize,
    pub live: Live,
    pub metrics: Metrics,
    /// Capacity for blocking plugin code (the threads are the event loops' pool).
    pub worker_slots: WorkerSlots,
    /// What each client address holds, against its limits.
    pub clients: Clients,
    /// Wakes each event loop (to see the stop).
    loop_wakers: OnceLock<Vec<Arc<mio::Waker>>>,
    /// The listener's TLS side, when `SWITCHYARD_TLS_CERT` is set.
    pub tls: Option<crate::tls::Tls>,
    /// The static routes' folders, open, one per route (each file is opened beneath its
    /// folder); `None` for one that could not be opened.
    pub static_roots: Vec<Option<std::fs::File>>,
    /// The status page's samples of the last minutes.
    pub history: super::history::History,
    /// When the daemon started, for the status page.
    pub started: std::time::SystemTime,
}

/// One open client connection, counted against `SWITCHYARD_MAX_CONNECTIONS` until dropped,
/// against its client's share once the client is known ([`Ticket::count_client`]), and
/// among the readiness sessions while it is one ([`Ticket::count_session`]). It travels
/// with the connection from loop to worker and back. 24 bytes: every connection carries
/// one for its whole life.
pub struct Ticket {
    shared: &'static Shared,
    /// The client, and the limit it is counted against once known (apart, so that the
    /// ticket stays 24 bytes).
    client: ClientKey,
    limit: Option<Limit>,
    /// Counted in `switchyard_event_connections`.
    session: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(limit) = self.limit {
            self.shared.clients.give_back(self.client, limit);
        }
        self.count_session(false);
    }
}

impl Ticket {
    /// Counts the connection against the connections `ip` may have open; false (and not
    /// counted) when it has its most already. Such a connection is counted among the
    /// client's refusals instead, if it has room ([`Ticket::may_answer_refusal`]).
    pub fn count_client(&mut self, ip: IpAddr) -> bool {
        let clients = &self.shared.clients;
        if let Some(limit) = self.limit.take() {
            clients.give_back(self.client, limit);
        }
        // Free once this connection is counted (it is, in `open`).
        let free = self.shared.free_connections();
        for limit in [Limit::Connections, Limit::Refusals] {
            if let Some(key) = clients.count(ip, limit, free) {
                (self.client, self.limit) = (key, Some(limit));
                return limit == Limit::Connections;
            }
        }
        false
    }

    /// Counts the connection against no client (a trusted HTTP proxy's, between the clients
    /// its requests name).
    pub fn count_nowhere(&mut self) {
        if let Some(limit) = self.limit.take() {
            self.shared.clients.give_back(self.client, limit);
        }
    }

    /// Counts the connection among those of the load balancer at `ip` awaiting their PROXY
    /// protocol header ([`Limit::AwaitingHeader`]); false (and counted nowhere) when it
    /// has its most already. [`Ticket::count_client`] gives it back once the header names
    /// the client.
    pub fn count_awaiting_header(&mut self, ip: IpAddr) -> bool {
        let free = self.shared.free_connections();
        match self.shared.clients.count(ip, Limit::AwaitingHeader, free) {
            Some(key) => {
                (self.client, self.limit) = (key, Some(Limit::AwaitingHeader));
                true
            }
            None => false,
        }
    }

    /// Whether the client at `ip` may begin a TLS handshake now (counted if so).
    pub fn may_handshake(&self, ip: IpAddr) -> bool {
        self.shared.clients.may_handshake(ip)
    }

    /// A connection refused by [`Ticket::count_client`] may wait for its `503` to be
    /// read; false: close it unanswered.
    pub fn may_answer_refusal(&self) -> bool {
        self.limit.is_some()
    }

    /// Counts the connection among the readiness sessions (`true`), or no longer.
    pub fn count_session(&mut self, session: bool) {
        if session != self.session {
            let gauge = &self.shared.metrics.event_connections;
            match session {
                true => gauge.fetch_add(1, Ordering::Relaxed),
                false => gauge.fetch_sub(1, Ordering::Relaxed),
            };
            self.session = session;
        }
    }
}

impl Shared {
    pub fn new(config: Config, registry: &'static Registry, tls: Option<crate::tls::Tls>) -> Self {
        let static_roots = open_static_roots(&config.static_routes);
        let worker_slots = WorkerSlots::new(config.workers);
        let clients = Clients::new(
            Share {
                total: config.max_connections,
                per_client: config.max_connections_per_client,
            },
            Share {
                total: config.workers,
                per_client: config.workers_per_client,
            },
            config.tls_handshakes_per_client,
        );
        Shared {
            config,
            registry: RwLock::new(registry),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop_deadline: Mutex::new(None),
            ending: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            live: Live::default(),
            metrics: Metrics::new(),
            worker_slots,
            clients,
            loop_wakers: OnceLock::new(),
            static_roots,
            tls,
            history: Default::default(),
            started: std::time::SystemTime::now(),
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

    /// Sets the event loops' wakers, once, before any connection is accepted.
    pub fn set_loop_wakers(&self, wakers: Vec<Arc<mio::Waker>>) {
        let _ = self.loop_wakers.set(wakers);
    }

    fn wake_loops(&self) {
        for waker in self.loop_wakers.get().into_iter().flatten() {
            let _ = waker.wake();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Whether the daemon wants new connections: false from the stop signal on, while
    /// the stop delay runs and after (`/readyz`).
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && !self.is_stopping()
    }

    /// The stop signal came: `/readyz` says `503` from now on; the stop itself follows.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
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
        self.wake_loops();
    }

    /// The grace period is over: every loop closes what it has and ends; blocking
    /// connections are shut.
    pub fn end(&self) {
        self.ending.store(true, Ordering::Release);
        self.live.end_all();
        self.wake_loops();
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
                shared: self,
                client: ClientKey::default(),
                limit: None,
                session: false,
            })
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections that may still open before `SWITCHYARD_MAX_CONNECTIONS` is reached.
    pub fn free_connections(&self) -> usize {
        self.config
            .max_connections
            .saturating_sub(self.open_connections())
    }
}

/// Opens each static route's folder: its files are opened beneath it
/// ([`crate::sys::open_beneath`]). A folder that cannot be opened (it was read at start)
/// has `None`: its route answers 404, and the log says why.
fn open_static_roots(routes: &[switchyard::files::FileRoute]) -> Vec<Option<std::fs::File>> {
    routes
        .iter()
        .map(|route| {
            let opened = std::fs::File::open(&route.root).and_then(|root| {
                crate::sys::open_beneath(&root, std::path::Path::new("."))?;
                Ok(root)
            });
            opened
                .map_err(|e| {
                    log::error!(
                        "static route {}: cannot open {}: {e}; its files get 404",
                        route.prefix,
                        route.root.display()
                    )
                })
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// Every connection carries one for its whole life (bench/RESULTS.md, the idle rows).
    #[test]
    fn a_ticket_is_at_most_24_bytes() {
        assert!(std::mem::size_of::<super::Ticket>() <= 24);
    }
}
