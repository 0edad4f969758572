//! State the event loop and the workers share: settings, plugins, the stop flag, the set
//! of live upgraded sockets that stopping must reach, and the way back to the event loop
//! for connections that did not switch after all.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::plugin::Registry;
use crossbeam_channel::Sender;
use slab::Slab;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Shared {
    pub config: Config,
    pub registry: &'static Registry,
    /// Set once on SIGTERM/SIGINT; plugins read it through `Connection::is_stopping`.
    pub stopping: AtomicBool,
    pub live: Live,
    pub metrics: Metrics,
    homecoming: Homecoming,
}

/// A connection a worker hands back to the event loop: every plugin declined, the plain
/// answer went out, and the connection stays open for the client's next request.
pub struct Returned {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Bytes the client sent after the request: the start of its next one.
    pub input: Vec<u8>,
}

/// The channel back to the event loop, and the waker that makes it look.
pub struct Homecoming {
    pub sender: Sender<Returned>,
    pub waker: mio::Waker,
}

impl Shared {
    pub fn new(config: Config, registry: &'static Registry, homecoming: Homecoming) -> Self {
        Shared {
            config,
            registry,
            stopping: AtomicBool::new(false),
            live: Live::default(),
            metrics: Metrics::new(registry.plugins.len()),
            homecoming,
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Gives a connection back to the event loop (see [`Returned`]).
    pub fn hand_back(&self, returned: Returned) {
        if self.homecoming.sender.send(returned).is_ok() {
            if let Err(e) = self.homecoming.waker.wake() {
                log::error!("cannot wake the event loop: {e}");
            }
        }
    }
}

/// Upgraded connections being served, so that stopping can wake and then end them.
#[derive(Default)]
pub struct Live {
    inner: Mutex<LiveInner>,
}

#[derive(Default)]
struct LiveInner {
    sockets: Slab<Arc<TcpStream>>,
    /// Once set, new entries have their read side shut as they arrive.
    stopping: bool,
}

impl Live {
    /// Registers a socket the caller serves. Sharing the handle (not duplicating the
    /// descriptor) keeps one descriptor per connection.
    pub fn add(&self, socket: Arc<TcpStream>) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.stopping {
            let _ = socket.shutdown(Shutdown::Read);
        }
        inner.sockets.insert(socket)
    }

    pub fn remove(&self, key: usize) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.sockets.try_remove(key);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sockets
            .len()
    }

    /// Shuts the read side of every live socket (now and later added): a blocked `read`
    /// returns 0, so the plugin notices, says goodbye and returns.
    pub fn wake_all(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.stopping = true;
        for (_, socket) in inner.sockets.iter() {
            let _ = socket.shutdown(Shutdown::Read);
        }
    }

    /// Shuts both directions of every live socket: the grace period is over.
    pub fn end_all(&self) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (_, socket) in inner.sockets.iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}
