//! `Upgrade: tcp` for switchyard: the Docker-attach style raw byte tunnel. A request for a
//! configured path switches to a TCP connection to that path's backend, dialled before the
//! `101` so that a dead backend gets `502` (refused) or `504` (time-out) instead.
//!
//! Readiness-driven on the daemon's event loops (no thread per tunnel): the dial, which
//! blocks, runs on a worker before the `101` (`Decision::OnWorker`); then the loop watches
//! the backend for us and calls `on_ready` when either side may move. Bytes the client
//! sent right after the request go to the backend first; then each direction copies small
//! reads through the loop thread's buffer and splices bulk bursts through a pipe of its
//! own (`conn`, `pump`). Half-closes pass through: when one side ends its
//! sending, the other side's write half is shut and the rest still flows. A reset on one
//! side becomes a reset on the other. Only configured backends are ever dialled.

// `unsafe` only in the splice pump (pump.rs).
#![deny(unsafe_code)]

pub mod config;
mod conn;
#[allow(unsafe_code)]
mod pump;
mod stats;

use config::Config;
use conn::{Label, TunnelConn};
use protocol_api::dials::{Busy, Dials};
use protocol_api::path::{PathError, RequestPath};
use protocol_api::{export_event_plugin, Decision, EventProtocol, Io, Ready, Request, Wants};
use stats::{RouteStats, Stats};
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

pub struct Tunnel {
    config: Config,
    stats: Stats,
    /// Each route's metrics, in `config.routes`' order.
    routes: Vec<RouteStats>,
    /// Dials under way, by backend and client (`SWITCHYARD_TUNNEL_MAX_DIALS`).
    dials: Dials,
    /// The `503` for dials past them is logged once a second.
    busy_logs: protocol_api::throttle::Throttle,
    /// So is a dial that failed (a backend down: every request's, 8,000 lines a second
    /// for one client, an attacker's review found), each route apart, in `config.routes`'
    /// order (one dead backend's lines hide no other's).
    failed_logs: Vec<protocol_api::throttle::Throttle>,
}

/// What negotiate hands to start: the connected backend and where it came from.
pub struct Dialled {
    backend: TcpStream,
    /// The route, as configured.
    route: String,
    address: String,
    stats: RouteStats,
}

fn dial(backend: &str, timeout: Duration, buffers: config::Buffers) -> io::Result<TcpStream> {
    let mut last = io::Error::new(ErrorKind::NotFound, "no address");
    for address in backend.to_socket_addrs()? {
        match connect(address, timeout, buffers) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to `address` with its buffers sized first: the window scale the handshake
/// offers is chosen from the receive buffer then.
fn connect(
    address: SocketAddr,
    timeout: Duration,
    buffers: config::Buffers,
) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(bytes) = buffers.receive {
        socket.set_recv_buffer_size(bytes)?;
    }
    if let Some(bytes) = buffers.send {
        socket.set_send_buffer_size(bytes)?;
    }
    socket.connect_timeout(&address.into(), timeout)?;
    Ok(socket.into())
}

/// Requests refused for their path (`400`), logged one a second at most.
static REFUSED: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();

impl Tunnel {
    /// `503` for a dial that may not start now ([`Busy`]), with a line saying whose.
    fn busy(
        &self,
        request: &Request<'_>,
        route: &str,
        backend: &str,
        busy: Busy,
    ) -> Decision<Dialled> {
        if let Some(unlogged) = self.busy_logs.admit() {
            let (max, whose) = match busy {
                Busy::Backend => (self.config.max_dials, "dials to the backend"),
                Busy::Client => (self.dials.per_client(), "dials of this client at most"),
            };
            log::warn!(
                "tunnel {route} -> {backend} for {}: {max} {whose} under way \
                 (SWITCHYARD_TUNNEL_MAX_DIALS, a quarter for one client, one while fewer \
                 than that are free); answered 503{unlogged}",
                request.peer(),
            );
        }
        self.stats.refused(route, 503);
        let body = format!("backend for {} is busy\n", request.path());
        Decision::Reject(protocol_api::Rejection::new(503, body).with_header("Retry-After", "1"))
    }
}

/// Served readiness-driven: a tunnel is two sockets that are mostly quiet, and a thread
/// (two, before) per tunnel cost a stack each and capped tunnels at the worker count.
impl EventProtocol for Tunnel {
    const NAME: &'static str = "tunnel";
    const TOKENS: &'static [&'static str] = &["tcp"];
    const SETTINGS: &'static [protocol_api::Setting] = config::SETTINGS;
    type Session = Dialled;
    type Conn = TunnelConn;

    fn new() -> Result<Self, String> {
        let config = Config::from_env()?;
        if config.routes.is_empty() {
            log::warn!(
                "tunnel: SWITCHYARD_TUNNEL_ROUTES is empty; every Upgrade: tcp will be declined"
            );
        }
        let stats = Stats::declare()?;
        pump::limit_pipes(config.max_pipes, stats.pipes);
        let routes = config.routes.iter().map(|(p, _)| stats.route(p)).collect();
        let failed_logs = (config.routes.iter())
            .map(|_| protocol_api::throttle::Throttle::new())
            .collect();
        Ok(Tunnel {
            dials: Dials::new(config.max_dials),
            config,
            stats,
            routes,
            busy_logs: protocol_api::throttle::Throttle::new(),
            failed_logs,
        })
    }

    fn negotiate(&self, request: &Request<'_>) -> Decision<Dialled> {
        // Any method may ask (Docker attach uses POST); only routed paths are dialled, matched
        // as normalised (see protocol_api::path).
        let (route, backend) =
            match RequestPath::parse(request.target()).and_then(|path| self.config.route(&path)) {
                Ok(Some(found)) => found,
                Ok(None) => return Decision::Decline,
                Err(e) => {
                    // The path only (a query may hold a secret the access line cuts),
                    // escaped and cut, once a second at most (the access line says each):
                    // a review found 200 raw lines of 8 KB for 200 requests.
                    if let Some(unlogged) = REFUSED.admit() {
                        let path = protocol_api::fields::path(request.target());
                        let path = protocol_api::fields::path_for_log(path);
                        log::info!(
                            "tunnel {path} for {}: {e}; answered 400{unlogged}",
                            request.peer()
                        );
                    }
                    return Decision::reject(PathError::STATUS, format!("{e}\n"));
                }
            };
        let client = protocol_api::clients::key_of(request.peer());
        // The dial blocks: on a worker, before the 101; refused here, if it would be there.
        if !request.may_block() {
            return match self.dials.check(backend, client) {
                Ok(()) => Decision::OnWorker,
                Err(busy) => self.busy(request, route, backend, busy),
            };
        }
        let index = self.config.routes.iter().position(|(p, _)| p == route);
        let stats = index.map_or_else(|| self.stats.route(route), |i| self.routes[i]);
        let _dial = match self.dials.start(backend, client) {
            Ok(dial) => dial,
            Err(busy) => return self.busy(request, route, backend, busy),
        };
        let _dialling = stats.dialling.hold();
        let began = std::time::Instant::now();
        let dialled = dial(
            backend,
            self.config.connect_timeout,
            self.config.backend_buffers,
        );
        stats.connect.observe_micros(began.elapsed());
        match dialled {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Decision::accept(Dialled {
                    backend: stream,
                    route: route.to_string(),
                    address: backend.to_string(),
                    stats,
                })
            }
            Err(e) => {
                let (status, what) = match e.kind() {
                    ErrorKind::TimedOut | ErrorKind::WouldBlock => (504, "did not answer in time"),
                    ErrorKind::ConnectionRefused => (502, "refused the connection"),
                    _ => (502, "could not be reached"),
                };
                let admitted = match index.and_then(|i| self.failed_logs.get(i)) {
                    Some(logs) => logs.admit(),
                    None => Some(protocol_api::throttle::Unlogged(0)),
                };
                if let Some(unlogged) = admitted {
                    log::warn!(
                        "tunnel {route} -> {backend} for {}: backend {what}: {e}; answered \
                         {status}{unlogged}",
                        request.peer()
                    );
                }
                self.stats.refused(route, status);
                Decision::reject(status, format!("backend for {} {what}\n", request.path()))
            }
        }
    }

    fn start(&self, dialled: Dialled, request: &Request<'_>) -> io::Result<TunnelConn> {
        // The route as configured, not the path as sent (which may climb into it with
        // dot-segments, at any length: a review).
        let label = Label {
            route: dialled.route,
            peer: request.peer().to_string(),
            address: dialled.address,
        };
        let tls = request.tls().is_some();
        TunnelConn::new(dialled.backend, tls, &self.config, label, dialled.stats)
    }

    fn on_ready(&self, conn: &mut TunnelConn, io: &mut Io<'_>, ready: Ready) -> io::Result<Wants> {
        conn.on_ready(io, ready)
    }
}

export_event_plugin!(Tunnel);
