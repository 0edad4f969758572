//! HTTP/2 over cleartext for switchyard, token `h2c`: by `Upgrade` (RFC 9113 §3.2, RFC 7540
//! §3.2) and by prior knowledge (RFC 9113 §3.3), every stream proxied to the backend its
//! path is routed to (`SWITCHYARD_H2C_ROUTES`), gRPC included.
//!
//! Two engines (`SWITCHYARD_H2C_ENGINE`, [`config::Engine`]):
//! - **the relay** ([`relay`]), when every route is HTTP/2: the connection is served on the
//!   daemon's event loop through its `Io`, each stream passed to its backend frame by frame
//!   (frames in [`frame`], header fields in [`hpack`]);
//! - **hyper** (and h2 under it) on a tokio runtime inside the plugin, when a route is an
//!   HTTP/1.1 backend: each client connection is a task of that runtime, on a duplicate of
//!   the socket; the loop's connection only starts the task, passes the daemon's stop on to
//!   it (GOAWAY) and lets the connection go when the task is over. What hyper lacks for an
//!   upgrade (stream 1 made of the HTTP/1.1 request) is in [`upgrade`]; the socket as the
//!   server sees it, in [`client_io`].
//!
//! Either way no thread is held per connection. The access line's byte counts cover the
//! upgrade request only on hyper (the runtime reads and writes the socket itself).
//!
//! - A path with no route gets `404` on its stream; a backend that refuses `502`, one that
//!   does not connect in time `504`; other streams live on.
//! - The daemon stopping: GOAWAY, streams in flight finish within the grace period.
//! - No stream open for `SWITCHYARD_H2C_IDLE_MS`: GOAWAY, then the connection closes.

#![forbid(unsafe_code)]

pub mod body_buffer;
pub mod body_gap;
pub mod client_io;
pub mod config;
pub mod counted;
pub mod frame;
pub mod hpack;
pub mod huffman;
pub mod proxy;
pub mod relay;
pub mod settings;
pub mod slots;
mod stats;
mod stream_log;
pub mod upgrade;

use client_io::ClientIo;
use config::{Config, Engine};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use protocol_api::{
    export_event_plugin, Arrival, Decision, EventProtocol, Io, Ready, Request, Wants,
};
use proxy::{Activity, Proxy};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use upgrade::{AckFilter, Stream1, PREFACE};

pub struct H2c {
    engine: Served,
}

/// The engine connections are served by (`SWITCHYARD_H2C_ENGINE`).
enum Served {
    Relay(Arc<relay::Shared>),
    Hyper {
        proxy: Arc<Proxy>,
        runtime: tokio::runtime::Runtime,
    },
}

/// What negotiate hands to start: the bytes the HTTP/2 server reads before the socket's.
pub struct Accepted {
    preamble: Vec<u8>,
    arrival: Arrival,
}

/// A client connection, as the daemon's event loop holds it.
// The relay is the common case and lives in the daemon's connection slot as it is; boxing
// it would cost an allocation a connection to spare the rare hyper one some bytes.
#[allow(clippy::large_enum_variant)]
pub enum H2cConn {
    Relay(relay::Relay),
    Hyper(HyperConn),
}

/// A client connection served by hyper on the runtime.
pub struct HyperConn {
    /// Until the first call, which has the socket and starts the task.
    start: Option<(Accepted, SocketAddr)>,
    running: Option<Running>,
    /// This connection's unit of the open-connections gauge.
    _open: protocol_api::metrics::Held,
}

/// The connection's task on the runtime.
struct Running {
    task: tokio::task::JoinHandle<()>,
    /// Tells the task the daemon is stopping: GOAWAY, in-flight streams finish.
    go_away: Arc<tokio::sync::Notify>,
    /// Set by the task as it ends, its socket's duplicate closed, before it wakes the
    /// connection (ABI 1.10).
    over: Arc<AtomicBool>,
}

/// Tells the connection its task is over when dropped, however the task ends: the flag
/// first (the connection's call reads it), then the wake that brings the call.
struct Over {
    flag: Arc<AtomicBool>,
    waker: protocol_api::Waker,
}

impl Drop for Over {
    fn drop(&mut self) {
        self.flag.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The daemon let the connection go (the grace period is over, say): so does the
        // task, whose socket is then shut.
        self.task.abort();
    }
}

/// Served readiness-driven: the connection's work is the runtime's, and a worker thread
/// held per connection (to wait) capped h2c at the worker count and crowded out the
/// blocking plugins.
impl EventProtocol for H2c {
    const NAME: &'static str = "h2c";
    const TOKENS: &'static [&'static str] = &["h2c"];
    const SETTINGS: &'static [protocol_api::Setting] = config::SETTINGS;
    type Session = Accepted;
    type Conn = H2cConn;

    fn new() -> Result<Self, String> {
        let config = Config::from_env()?;
        let stats = stats::Stats::declare(config.routes.iter().map(|r| r.prefix.as_str()))?;
        if config.routes.is_empty() {
            log::warn!(
                "h2c: {} is empty; every h2c upgrade and prior-knowledge connection will be declined",
                config::ROUTES
            );
        }
        if config.engine == Engine::Relay {
            log::debug!("h2c: streams relayed frame by frame on the event loops");
            return Ok(H2c {
                engine: Served::Relay(Arc::new(relay::Shared::new(config, stats))),
            });
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("switchyard-h2c")
            .enable_all()
            .build()
            .map_err(|e| format!("h2c: cannot start its runtime: {e}"))?;
        Ok(H2c {
            engine: Served::Hyper {
                proxy: Arc::new(Proxy::new(config, stats)),
                runtime,
            },
        })
    }

    fn negotiate(&self, request: &Request<'_>) -> Decision<Accepted> {
        if self.config().routes.is_empty() {
            return Decision::Decline;
        }
        if request.tls().is_some() && matches!(self.engine, Served::Hyper { .. }) {
            // hyper runs on a duplicate of the socket, which under TLS carries ciphertext.
            log::warn!(
                "h2c: a TLS connection from {} declined: the hyper engine (chosen for an \
                 http1:// route) reads the socket itself; HTTP/2 over TLS is served by the \
                 relay engine (SWITCHYARD_H2C_ENGINE=relay, HTTP/2 routes only)",
                request.peer()
            );
            return Decision::Decline;
        }
        if request.arrival() == Arrival::PriorKnowledge {
            return Decision::accept(Accepted {
                preamble: PREFACE.to_vec(),
                arrival: Arrival::PriorKnowledge,
            });
        }
        match upgrade_preamble(request) {
            Ok(preamble) => Decision::accept(Accepted {
                preamble,
                arrival: Arrival::Upgrade,
            }),
            Err(why) => {
                log::debug!("h2c: upgrade from {} declined: {why}", request.peer());
                Decision::Decline
            }
        }
    }

    fn start(&self, accepted: Accepted, request: &Request<'_>) -> io::Result<H2cConn> {
        let peer: SocketAddr = request
            .peer()
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok(match &self.engine {
            Served::Relay(shared) => {
                let upgraded = accepted.arrival == Arrival::Upgrade;
                let preamble = upgraded.then_some(accepted.preamble);
                let tls = request.tls();
                H2cConn::Relay(relay::Relay::new(shared.clone(), peer, preamble, tls))
            }
            Served::Hyper { proxy, .. } => H2cConn::Hyper(HyperConn {
                start: Some((accepted, peer)),
                running: None,
                _open: proxy.stats.open.hold(),
            }),
        })
    }

    fn on_ready(&self, conn: &mut H2cConn, io: &mut Io<'_>, ready: Ready) -> io::Result<Wants> {
        match conn {
            H2cConn::Relay(relay) => relay.on_ready(io, ready),
            H2cConn::Hyper(conn) => self.on_ready_hyper(conn, io, ready),
        }
    }
}

impl H2c {
    fn config(&self) -> &Config {
        match &self.engine {
            Served::Relay(shared) => &shared.config,
            Served::Hyper { proxy, .. } => &proxy.config,
        }
    }

    fn on_ready_hyper(
        &self,
        conn: &mut HyperConn,
        io: &mut Io<'_>,
        ready: Ready,
    ) -> io::Result<Wants> {
        if let Some((accepted, peer)) = conn.start.take() {
            conn.running = Some(self.spawn(accepted, peer, io)?);
        }
        let Some(running) = &conn.running else {
            return Ok(Wants::close());
        };
        if ready.is_stopping() {
            running.go_away.notify_one();
        }
        if running.over.load(Ordering::Acquire) || running.task.is_finished() {
            return Ok(Wants::close());
        }
        // The task has the socket to itself and the loop has nothing to do until the task
        // is over, which the task says with the connection's waker.
        Ok(Wants::wake_only())
    }

    /// Starts the connection's task on a duplicate of the socket, with the bytes the daemon
    /// read ahead.
    fn spawn(&self, accepted: Accepted, peer: SocketAddr, io: &mut Io<'_>) -> io::Result<Running> {
        let Served::Hyper { proxy, runtime } = &self.engine else {
            return Err(io::Error::other("h2c: hyper is not this plugin's engine"));
        };
        let mut early = vec![0u8; io.buffered()];
        io.read_exact(&mut early)?;
        // Every daemon that loads this plugin has wakers (1.10): a plugin is refused by an
        // older one.
        let waker = io.waker()?;
        // After an upgrade the client sends its preface (RFC 9113 §3.2); the server was
        // given one in the preamble already, so the client's is checked and dropped, and the
        // implicit SETTINGS ACK is taken out of the output.
        let upgraded = accepted.arrival == Arrival::Upgrade;
        let filter = upgraded.then(AckFilter::default);
        let socket = std::net::TcpStream::from(io.as_fd().try_clone_to_owned()?);
        socket.set_nonblocking(true)?;
        let _entered = runtime.enter();
        let stream = tokio::net::TcpStream::from_std(socket)?;
        let io = ClientIo::new(accepted.preamble, early, upgraded, stream, filter);
        let activity = Activity::new(proxy.config.http1_per_connection);
        let config = &proxy.config;
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        const SEND_BUFFER_PER_STREAM: usize = 64 * 1024;
        const STREAM_WINDOW: u32 = 65_535;
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_streams)
            .max_header_list_size(config.max_header_list_bytes)
            // What waits to be sent on each stream, for a client that grants windows and
            // then does not read: hyper's default is 400 KiB a stream (40 MiB a connection
            // at 100 streams); the README states the bound this gives.
            .max_send_buf_size(SEND_BUFFER_PER_STREAM)
            // What one stream's upload may hold of the connection's 1 MiB window (hyper's
            // default: all of it): a stream whose backend stops reading then leaves room
            // for the others, whose bodies would otherwise stall (and get 408) behind it.
            // The relay's window per stream is the same.
            .initial_stream_window_size(STREAM_WINDOW)
            // A peer that stops answering pings (gone, or not reading) is let go.
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .keep_alive_timeout(Duration::from_secs(20));
        let proxy = proxy.clone();
        let streams = activity.clone();
        let service = hyper::service::service_fn(move |request| {
            proxy::handle(proxy.clone(), streams.clone(), peer, request)
        });
        let idle = config.idle;
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let go_away = Arc::new(tokio::sync::Notify::new());
        let told = go_away.clone();
        let over = Arc::new(AtomicBool::new(false));
        let ending = over.clone();
        let task = runtime.spawn(async move {
            // Dropped last, whichever way the task ends (a panic or an abort too).
            let _over = Over {
                flag: ending,
                waker,
            };
            let mut going_away: Option<&'static str> = None;
            // The connection, and with it the socket's duplicate, is dropped at the end of
            // this block, before the loop is told.
            let ended = {
                let mut connection = std::pin::pin!(connection);
                loop {
                    // The idle clock is looked at when it could next run out (no stream open
                    // for SWITCHYARD_H2C_IDLE_MS), not now and then.
                    let wait = activity
                        .idle_for()
                        .map_or(idle, |quiet| idle.saturating_sub(quiet));
                    tokio::select! {
                        ended = connection.as_mut() => break ended,
                        _ = told.notified(), if going_away.is_none() => {
                            going_away = Some("daemon stopping");
                            connection.as_mut().graceful_shutdown();
                        }
                        _ = activity.calm_down.notified(), if going_away.is_none() => {
                            static CALM: protocol_api::throttle::Throttle =
                                protocol_api::throttle::Throttle::new();
                            if let Some(unlogged) = CALM.admit() {
                                log::info!(
                                    "h2c {peer}: too many streams at a backend reset by this \
                                     client address: GOAWAY{unlogged}"
                                );
                            }
                            going_away = Some("too many streams reset");
                            connection.as_mut().graceful_shutdown();
                        }
                        _ = tokio::time::sleep(wait), if going_away.is_none() => {
                            if activity.idle_for().is_some_and(|quiet| quiet >= idle) {
                                going_away = Some("idle");
                                connection.as_mut().graceful_shutdown();
                            }
                        }
                    }
                }
            };
            match ended {
                Ok(()) => log::debug!(
                    "h2c {peer}: connection done ({})",
                    going_away.unwrap_or("client done")
                ),
                Err(e) => log::debug!("h2c {peer}: connection ended: {e}"),
            }
        });
        Ok(Running {
            task,
            go_away,
            over,
        })
    }
}

/// Checks an upgrade request (RFC 9113 §3.2) and makes the preamble that turns it into
/// stream 1.
fn upgrade_preamble(request: &Request<'_>) -> Result<Vec<u8>, String> {
    let mut values = request
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case("http2-settings"))
        .map(|(_, v)| v);
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err("not exactly one HTTP2-Settings header".into());
    };
    if !request
        .header_list("connection")
        .any(|o| o.eq_ignore_ascii_case("http2-settings"))
    {
        return Err("Connection does not name HTTP2-Settings".into());
    }
    let settings = settings::decode(value).map_err(|e| e.to_string())?;
    if request.body().len() > upgrade::MAX_BODY {
        return Err(format!(
            "a body over {} bytes cannot be stream 1's",
            upgrade::MAX_BODY
        ));
    }
    let stream1 = Stream1 {
        method: request.method(),
        target: request.target(),
        headers: request.headers().collect(),
        body: request.body(),
    };
    Ok(upgrade::preamble(&settings, &stream1))
}

export_event_plugin!(H2c);
