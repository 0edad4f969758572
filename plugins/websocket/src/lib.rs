//! `Upgrade: websocket` (RFC 6455) for switchyard: the opening handshake, the framing rules
//! and permessage-deflate, then, by the request's path, an echo (every message comes back as
//! one message of the same type) or a route to a service (`tcp://`, `unix:`) or a program
//! (`exec:`, websocketd's way: stdin and stdout, CGI variables), readiness-driven on the
//! daemon's event loops.
//!
//! Pure (bytes in, decisions out):
//! - [`handshake`]: the request checks and the `101`'s headers.
//! - [`deflate`]: permessage-deflate (RFC 7692) offers and message compression.
//! - [`frame`] and [`receiver`]: framing and the receiving state machine.
//! - [`origin`]: which pages may open a WebSocket.
//! - [`routes`]: which path goes where.
//!
//! With I/O:
//! - `session`: one connection on the event loop, echo or relay.
//! - `relay`, `backend`, `process`, `cgi`: a route's other side: dialling a service,
//!   starting a program with its environment, moving bytes between it and the client.
//!
//! Settings (environment, read once at load; see [`config::Config`]):
//! `SWITCHYARD_WEBSOCKET_ROUTES`, `_ORIGINS`, `_PROTOCOLS`, `_DEFLATE`, `_MAX_MESSAGE`,
//! `_IDLE_MS`, `_CONNECT_TIMEOUT_MS`, `_MAX_PROCESSES`, `_PASSENV`.

// `unsafe` only where the plugin manages its programs (process.rs), and in the call to
// the AVX2 build of the masking loop (masking.rs).
#![deny(unsafe_code)]

mod assembly;
pub mod backend;
mod backlog;
mod broadcast;
mod cgi;
pub mod config;
pub mod deflate;
pub mod frame;
pub mod handshake;
mod masking;
pub mod origin;
#[allow(unsafe_code)]
mod process;
pub mod receiver;
mod relay;
pub mod routes;
mod script_dir;
mod session;
mod stats;
mod stderr_log;
mod tokens;

use protocol_api::dials::Busy;
use protocol_api::path::{PathError, RequestPath};
use protocol_api::{export_event_plugin, Decision, EventProtocol, Io, Ready, Request, Wants};
use std::io;
use std::sync::Arc;

/// What `negotiate` agreed, for `start` (made on a worker when a route's service was
/// dialled there, started on the event loop).
pub struct Agreed {
    /// The permessage-deflate agreement, if any.
    deflate: Option<deflate::Agreement>,
    /// A route's service, dialled or started before the `101`; none for the echo. Its
    /// relay is made in `start`, once the connection is switched (a relay logs its end).
    service: Option<Dialled>,
    /// The route's metrics.
    stats: &'static stats::RouteStats,
}

/// A route's service, connected (or its program started) in `negotiate`.
struct Dialled {
    backend: backend::Backend,
    /// `exec:` text routes: the program speaks in lines, each a message.
    lines: bool,
    /// The route (and the program's pid) for log lines.
    label: String,
}

/// The subprotocol websockify's clients ask for: the messages are the stream's bytes.
const BINARY: &str = "binary";

pub struct WebSocket {
    config: config::Config,
    /// Metrics, declared once; each route's handles in `config.routes`' order, or, when
    /// no routes are set, the one handle of every path.
    stats: &'static stats::Stats,
    route_stats: Vec<&'static stats::RouteStats>,
    /// The programs of `exec-shared:` routes, by route.
    shared: Vec<(String, Arc<broadcast::SharedProgram>)>,
    /// The token tables of `tokens:` routes, by source.
    tokens: Vec<(std::path::PathBuf, tokens::Table)>,
    /// The `Origin` policies of routes when `SWITCHYARD_WEBSOCKET_ORIGINS` is unset.
    any_origin: origin::Origins,
    same_origin: origin::Origins,
    /// Each client's allowance of program starts (`SWITCHYARD_WEBSOCKET_STARTS_PER_CLIENT`).
    /// A start costs a fork and an exec on the one thread that starts programs, and one
    /// address starting and leaving at once started 327 a second (an attacker's review),
    /// every other client's programs waiting behind them.
    starts: protocol_api::rate::PerClient,
    /// Each client's allowance of unknown tokens
    /// (`SWITCHYARD_WEBSOCKET_TOKEN_MISSES_PER_CLIENT`; none: no limit).
    token_misses: Option<protocol_api::rate::PerClient>,
    /// Dials under way to services, by service and client (`SWITCHYARD_WEBSOCKET_MAX_DIALS`).
    dials: protocol_api::dials::Dials,
    /// What each client's compressed messages may inflate to a second
    /// (`SWITCHYARD_WEBSOCKET_INFLATE_PER_CLIENT`; none: no limit).
    inflates: Option<protocol_api::rate::PerClient>,
    /// The allowances of stderr lines logged: each client's programs' together, and
    /// everyone's ([`stderr_log`]).
    stderr_lines: Arc<stderr_log::Allowances>,
}

/// Served readiness-driven: many connections that each move little are what WebSocket
/// carries, and a thread per connection would cost a context switch per message and a
/// stack per idle client.
impl EventProtocol for WebSocket {
    const NAME: &'static str = "websocket";
    const TOKENS: &'static [&'static str] = &["websocket"];
    const SETTINGS: &'static [protocol_api::Setting] = config::SETTINGS;
    type Session = Agreed;
    type Conn = session::Connection;

    fn new() -> Result<Self, String> {
        let config = config::Config::from_env()?;
        log::debug!("websocket settings: {config:?}");
        let mut shared = Vec::new();
        for route in &config.routes {
            if let routes::Service::Shared { argv, binary } = &route.service {
                // What an exec: program gets of the daemon's environment, and no request's.
                let env = config
                    .passenv
                    .iter()
                    .filter_map(|name| std::env::var_os(name).map(|v| (name.clone(), v)))
                    .collect();
                let label = route.prefix.clone();
                let program = broadcast::SharedProgram::new(
                    argv.clone(),
                    *binary,
                    env,
                    config.max_processes,
                    label,
                );
                shared.push((route.prefix.clone(), program));
            }
        }
        let mut tokens = Vec::new();
        for route in &config.routes {
            if let routes::Service::Tokens(source) = &route.service {
                let table = tokens::Table::open(source)
                    .map_err(|why| format!("route {}: {why}", route.prefix))?;
                tokens.push((source.clone(), table));
            }
        }
        // The plugin lives as long as the process: so do its metric handles.
        let stats: &'static stats::Stats = Box::leak(Box::new(stats::Stats::declare()?));
        process::count_in(stats.programs);
        let route_stats = config
            .routes
            .iter()
            .map(|r| stats.route(&r.prefix))
            .collect::<Vec<_>>();
        // No routes: every path is echo, counted under one label.
        let route_stats = match route_stats.is_empty() {
            true => vec![stats.route(stats::EVERY_PATH)],
            false => route_stats,
        };
        let same_origin = origin::Origins::same_origin().with_http_hosts(config.http_hosts.clone());
        Ok(WebSocket {
            starts: protocol_api::rate::PerClient::new(config.starts_per_client),
            token_misses: (config.token_misses_per_client > 0)
                .then(|| protocol_api::rate::PerClient::new(config.token_misses_per_client)),
            stderr_lines: Arc::new(stderr_log::Allowances::new()),
            dials: protocol_api::dials::Dials::new(config.max_dials),
            inflates: (config.inflate_per_client > 0)
                .then(|| protocol_api::rate::PerClient::new(config.inflate_per_client)),
            config,
            stats,
            route_stats,
            shared,
            any_origin: origin::Origins::any(),
            same_origin,
            tokens,
        })
    }

    fn negotiate(&self, request: &Request<'_>) -> Decision<Self::Session> {
        let path = match RequestPath::parse(request.target()) {
            Ok(path) => path,
            Err(e) => return refuse(request, PathError::STATUS, &e.to_string()),
        };
        let (prefix, service, stats) = match routes::route(&self.config.routes, &path) {
            Ok(Some(route)) => {
                let index = self
                    .config
                    .routes
                    .iter()
                    .position(|r| std::ptr::eq(r, route));
                let stats = self.route_stats[index.unwrap_or(0)];
                (route.prefix.as_str(), &route.service, stats)
            }
            // No routes: the one entry is every path's.
            Ok(None) if self.config.routes.is_empty() => {
                ("/", &routes::Service::Echo, self.route_stats[0])
            }
            Ok(None) => return Decision::Decline, // no route for this path: the client gets 426
            Err(e) => return refuse(request, PathError::STATUS, &e.to_string()),
        };
        let decision = self.negotiate_route(request, &path, prefix, service, stats);
        if let Decision::Reject(rejection) = &decision {
            self.stats.refused(stats.label, rejection.status);
        }
        decision
    }

    fn start(&self, agreed: Agreed, request: &Request<'_>) -> std::io::Result<session::Connection> {
        let Agreed {
            deflate,
            service,
            stats,
        } = agreed;
        let client = client_key(request.peer());
        let stderr_lines = relay::StderrLines {
            allowance: Arc::clone(&self.stderr_lines),
            client,
        };
        let relay = service.map(|d| relay::Relay::new(d.backend, d.lines, d.label, stderr_lines));
        Ok(session::Connection::new(
            &self.config,
            deflate,
            relay,
            stats,
            client,
        ))
    }

    fn on_ready(
        &self,
        conn: &mut session::Connection,
        io: &mut Io<'_>,
        ready: Ready,
    ) -> std::io::Result<Wants> {
        let wants = conn.on_ready(io, ready, &self.config, self.inflates.as_ref());
        conn.count_bytes(io.bytes_moved());
        wants
    }
}

/// The address a route to a service dials, as its dials are counted (`None`: it dials
/// nothing, or only once its token is looked up).
fn dialled_address(service: &routes::Service) -> Option<String> {
    match service {
        routes::Service::Tcp(address) => Some(address.clone()),
        routes::Service::Unix(path) => Some(path.display().to_string()),
        _ => None,
    }
}

impl WebSocket {
    /// `negotiate` for a request `path` that a route (or the echo of every path) takes.
    fn negotiate_route(
        &self,
        request: &Request<'_>,
        path: &RequestPath<'_>,
        prefix: &str,
        service: &routes::Service,
        stats: &'static stats::RouteStats,
    ) -> Decision<Agreed> {
        let origins = match (&self.config.origins, service) {
            (Some(origins), _) => origins,
            (None, routes::Service::Echo) => &self.any_origin,
            (None, _) => &self.same_origin,
        };
        let headers: Vec<(&str, &[u8])> = request.headers().collect();
        let scheme = request.tls().map(|_| "https");
        let checked = handshake::check(request.method(), &headers, &self.config, origins, scheme);
        let accepted = match checked {
            Ok(accepted) => accepted,
            Err(rejection) => {
                if let Some(unlogged) = HANDSHAKES_REFUSED.admit() {
                    // A refused page is named (escaped, cut): which one is the question.
                    let origin = match (rejection.status, request.header("origin")) {
                        (403, Some(origin)) => {
                            format!(" (Origin {})", protocol_api::fields::for_log(origin, 256))
                        }
                        _ => String::new(),
                    };
                    log::info!(
                        "{} {}: {}{origin}{unlogged}",
                        request.peer(),
                        shown(path.path()),
                        String::from_utf8_lossy(&rejection.body).trim_end()
                    );
                }
                return Decision::Reject(rejection);
            }
        };
        // A token is the one secret between a client and a desktop: unlimited, one
        // address could try thousands a second (an attacker's question), while a person
        // who mistypes one is not near the allowance. Past it, every token from the
        // address is answered 429 before any is looked at, the right one too (serving
        // right ones would tell a guesser which guesses are right), until it owes none.
        if let (routes::Service::Tokens(_), Some(misses)) = (service, &self.token_misses) {
            let client = client_key(request.peer());
            if misses.owed(client).is_some() {
                // Asking on while told to wait counts as a miss: a guesser that does not
                // stop stays refused (2 s at most), one that waits is soon served.
                let wait = misses.spend(client, 1).unwrap_or_default();
                let per_sec = self.config.token_misses_per_client;
                return Decision::Reject(token_guesses(request, path, wait, per_sec));
            }
        }
        // A program is given the path decoded: one that would break its lines is refused
        // here, before a worker's hop.
        if matches!(
            service,
            routes::Service::Exec { .. } | routes::Service::ExecDir { .. }
        ) {
            if let Some(why) = cgi::refused_path(path) {
                return Decision::Reject(bad_program_path(request, path, why));
            }
        }
        // A service is dialled before the 101, which blocks: on a worker.
        let resolved;
        let service = match service {
            routes::Service::Echo => None,
            // Refused here if the dial would be there (the first review: a worker's hop,
            // and a worker slot of the client's, for a 503).
            _ if !request.may_block() => {
                let client = client_key(request.peer());
                let busy = (dialled_address(service).as_deref())
                    .and_then(|b| self.dials.check(b, client).err());
                return match busy {
                    Some(busy) => Decision::Reject(self.dials_busy(request, path, busy)),
                    None => Decision::OnWorker,
                };
            }
            routes::Service::Shared { binary, .. } => {
                match self.join_shared(service, request, path, *binary) {
                    Ok(dialled) => Some(dialled),
                    Err(rejection) => return Decision::Reject(rejection),
                }
            }
            routes::Service::Tokens(source) => {
                resolved = match self.token_target(source, request, path) {
                    Ok(target) => target,
                    Err(rejection) => return Decision::Reject(rejection),
                };
                match self.dial(&resolved, None, request, path, stats) {
                    Ok(dialled) => Some(dialled),
                    Err(rejection) => return Decision::Reject(rejection),
                }
            }
            routes::Service::ExecDir { dir, binary } => {
                let script = match script_dir::resolve(dir, prefix, path.path()) {
                    Ok(script) => script,
                    Err(why) => return Decision::Reject(no_program(request, path, why)),
                };
                resolved = routes::Service::Exec {
                    argv: vec![script.program.clone()],
                    binary: *binary,
                };
                match self.dial(&resolved, Some(&script), request, path, stats) {
                    Ok(dialled) => Some(dialled),
                    Err(rejection) => return Decision::Reject(rejection),
                }
            }
            service => match self.dial(service, None, request, path, stats) {
                Ok(dialled) => Some(dialled),
                Err(rejection) => return Decision::Reject(rejection),
            },
        };
        let agreed = Agreed {
            deflate: accepted.deflate,
            service,
            stats,
        };
        // websockify's clients (noVNC up to 1.1, and others since) ask for `binary` and
        // refuse a connection that does not agree to it; websockify agrees, and so does a
        // route to a byte stream when no subprotocol is set.
        let byte_stream = agreed.service.as_ref().is_some_and(|s| {
            !s.lines
                && matches!(
                    s.backend,
                    backend::Backend::Tcp(_) | backend::Backend::Unix(_)
                )
        });
        let protocol = accepted.protocol.or_else(|| {
            let binary = byte_stream
                && self.config.protocols.is_empty()
                && request
                    .header_list("sec-websocket-protocol")
                    .any(|p| p == BINARY);
            binary.then(|| BINARY.to_string())
        });
        let mut decision =
            Decision::accept(agreed).with_header("Sec-WebSocket-Accept", accepted.accept);
        if let Some(protocol) = protocol {
            decision = decision.with_header("Sec-WebSocket-Protocol", protocol);
        }
        if let Some(agreement) = accepted.deflate {
            decision = decision.with_header("Sec-WebSocket-Extensions", agreement.header_value());
        }
        decision
    }

    /// Dials a route's service, or starts its program (in a slot under the processes
    /// limit): the backend, whether it speaks in lines, and a label for logs; or the
    /// answer for the client.
    /// A new client of an `exec-shared:` route's program (started if it is the first).
    fn join_shared(
        &self,
        service: &routes::Service,
        request: &Request<'_>,
        path: &RequestPath<'_>,
        binary: bool,
    ) -> Result<Dialled, protocol_api::Rejection> {
        let program = self
            .config
            .routes
            .iter()
            // The route itself: two routes with the same command have a program each.
            .find(|route| std::ptr::eq(&route.service, service))
            .and_then(|route| {
                self.shared
                    .iter()
                    .find(|(prefix, _)| *prefix == route.prefix)
            })
            .map(|(_, program)| program);
        let joined = program
            .ok_or_else(|| io::Error::other("no such route"))
            .and_then(|p| p.join(client_key(request.peer())));
        match joined {
            Ok(stream) => Ok(Dialled {
                backend: backend::Backend::Unix(stream),
                lines: !binary,
                label: format!("{} (shared)", shown(path.path())),
            }),
            Err(e) => {
                log::error!(
                    "websocket {} for {}: {e}; answered 502",
                    shown(path.path()),
                    request.peer()
                );
                Err(protocol_api::Rejection {
                    status: 502,
                    headers: Vec::new(),
                    body: b"the shared program is not available\n".to_vec(),
                })
            }
        }
    }

    /// The service a `tokens:` route's request names by its token; `404` when it names
    /// none, or one the table does not have (logged without the token's rest).
    fn token_target(
        &self,
        source: &std::path::Path,
        request: &Request<'_>,
        path: &RequestPath<'_>,
    ) -> Result<routes::Service, protocol_api::Rejection> {
        let not_found = |why: String| {
            if let Some(misses) = &self.token_misses {
                misses.spend(client_key(request.peer()), 1);
            }
            if let Some(unlogged) = TOKENS_UNKNOWN.admit() {
                log::info!(
                    "websocket {} for {}: {why}; answered 404{unlogged}",
                    shown(path.path()),
                    request.peer()
                );
            }
            protocol_api::Rejection {
                status: 404,
                headers: Vec::new(),
                body: b"unknown token\n".to_vec(),
            }
        };
        let table = self
            .tokens
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, table)| table);
        let Some(token) = tokens::token_of(path) else {
            return Err(not_found("no token (?token=)".into()));
        };
        match table.and_then(|table| table.lookup(&token)) {
            Some(tokens::Target::Tcp(address)) => Ok(routes::Service::Tcp(address)),
            Some(tokens::Target::Unix(socket)) => Ok(routes::Service::Unix(socket)),
            None => Err(not_found(format!(
                "unknown token {}",
                tokens::redacted(&token)
            ))),
        }
    }

    /// `503` for a dial that may not start now ([`Busy`]), with a line saying whose.
    fn dials_busy(
        &self,
        request: &Request<'_>,
        path: &RequestPath<'_>,
        busy: Busy,
    ) -> protocol_api::Rejection {
        if let Some(unlogged) = DIALS_REFUSED.admit() {
            let (max, whose) = match busy {
                Busy::Backend => (self.config.max_dials, "dials to the service"),
                Busy::Client => (self.dials.per_client(), "dials of this client at most"),
            };
            log::warn!(
                "websocket {} for {}: {max} {whose} under way \
                 (SWITCHYARD_WEBSOCKET_MAX_DIALS, a quarter for one client, one while fewer \
                 than that are free); answered 503{unlogged}",
                shown(path.path()),
                request.peer(),
            );
        }
        protocol_api::Rejection::new(503, format!("the service for {} is busy\n", path.path()))
            .with_header("Retry-After", "1")
    }

    /// `script`: the `exec-dir:` program `service` runs, for its CGI variables and log label.
    fn dial(
        &self,
        service: &routes::Service,
        script: Option<&script_dir::Script>,
        request: &Request<'_>,
        path: &RequestPath<'_>,
        stats: &'static stats::RouteStats,
    ) -> Result<Dialled, protocol_api::Rejection> {
        let slot = match service {
            routes::Service::Exec { .. } => {
                let per_sec = self.config.starts_per_client;
                if !self.starts.allow(client_key(request.peer())) {
                    if let Some(unlogged) = process::REFUSALS.admit() {
                        log::warn!(
                            "websocket {} for {}: the client starts programs faster than \
                             SWITCHYARD_WEBSOCKET_STARTS_PER_CLIENT={per_sec} a second; \
                             answered 503{unlogged}",
                            shown(path.path()),
                            request.peer(),
                        );
                    }
                    return Err(programs_busy("programs started too fast for this client"));
                }
                let per_client = self.config.max_processes_per_client;
                let share = protocol_api::clients::Share {
                    total: self.config.max_processes,
                    per_client,
                };
                let share = match process::ClientShare::take(request.peer(), share) {
                    Ok(share) => share,
                    Err(most) => {
                        if let Some(unlogged) = process::REFUSALS.admit() {
                            let crowded = match most < per_client {
                                true => format!(", {most} while few programs may start"),
                                false => String::new(),
                            };
                            log::warn!(
                                "websocket {} for {}: the client runs its most programs \
                                 (SWITCHYARD_WEBSOCKET_MAX_PROCESSES_PER_CLIENT={per_client}\
                                 {crowded}); answered 503{unlogged}",
                                shown(path.path()),
                                request.peer(),
                            );
                        }
                        return Err(programs_busy("too many programs running for this client"));
                    }
                };
                match process::Reservation::take(self.config.max_processes) {
                    Some(slot) => Some(slot.for_client(share)),
                    None => {
                        if let Some(unlogged) = process::REFUSALS.admit() {
                            log::warn!(
                                "websocket {} for {}: {} programs running \
                                 (SWITCHYARD_WEBSOCKET_MAX_PROCESSES); answered 503{unlogged}",
                                shown(path.path()),
                                request.peer(),
                                process::running()
                            );
                        }
                        return Err(programs_busy("too many programs running"));
                    }
                }
            }
            _ => None,
        };
        // A dial holds this worker until the service answers or the time-out passes: a
        // dead service may hold a few, not every worker there is.
        let backend = dialled_address(service);
        let client = client_key(request.peer());
        let dial = match backend.as_deref().map(|b| self.dials.start(b, client)) {
            Some(Err(busy)) => return Err(self.dials_busy(request, path, busy)),
            Some(Ok(dial)) => Some((dial, stats.dialling.hold())),
            None => None,
        };
        let env = || {
            cgi::environment(request, path, script, &self.config.passenv, |name| {
                std::env::var_os(name)
            })
            .into_iter()
            .collect()
        };
        let began = std::time::Instant::now();
        let dialled = backend::Backend::dial(service, self.config.connect_timeout, slot, env);
        stats.connect.observe_micros(began.elapsed());
        drop(dial);
        match dialled {
            Ok(backend) => {
                let lines = matches!(service, routes::Service::Exec { binary: false, .. });
                // The route as configured, not the path as sent (a client's, at any
                // length and with any characters: a review), and whose connection it is.
                let route = match (&backend, script) {
                    // The program's path as the folder has it (escaped: a file's name may
                    // hold anything).
                    (backend::Backend::Program(p), Some(script)) => {
                        format!("{} (pid {})", shown(&script.name), p.pid)
                    }
                    (backend::Backend::Program(p), None) => {
                        format!("{} (pid {})", stats.label, p.pid)
                    }
                    _ => stats.label.to_string(),
                };
                let label = format!("{route} for {}", request.peer());
                Ok(Dialled {
                    backend,
                    lines,
                    label,
                })
            }
            Err(unreachable) => {
                if let Some(unlogged) = stats.dials_failed.admit() {
                    log::warn!(
                        "websocket {} for {}: service {} {}; answered {}{unlogged}",
                        shown(path.path()),
                        request.peer(),
                        service,
                        unreachable.why,
                        unreachable.status
                    );
                }
                // The reason (an OS error, a program's path) is for the log, not the client.
                let what = match unreachable.status {
                    504 => "did not answer in time",
                    _ => "is not available",
                };
                Err(protocol_api::Rejection {
                    status: unreachable.status,
                    headers: Vec::new(),
                    body: format!("the service for {} {what}\n", path.path()).into_bytes(),
                })
            }
        }
    }
}

/// `429` for a client past its unknown tokens (`per_sec`), with how long until it may
/// ask again.
fn token_guesses(
    request: &Request<'_>,
    path: &RequestPath<'_>,
    wait: std::time::Duration,
    per_sec: u32,
) -> protocol_api::Rejection {
    if let Some(unlogged) = TOKEN_GUESSES.admit() {
        log::warn!(
            "websocket {} for {}: more than {per_sec} unknown tokens a second from this \
             client (SWITCHYARD_WEBSOCKET_TOKEN_MISSES_PER_CLIENT); answered 429 without \
             looking{unlogged}",
            shown(path.path()),
            request.peer()
        );
    }
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    protocol_api::Rejection {
        status: 429,
        headers: Vec::new(),
        body: b"too many unknown tokens; try again later\n".to_vec(),
    }
    .with_header("Retry-After", seconds.max(1).to_string())
}

/// A path no program is given ([`cgi::refused_path`]).
fn bad_program_path(
    request: &Request<'_>,
    path: &RequestPath<'_>,
    why: &str,
) -> protocol_api::Rejection {
    static BAD_PATH: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();
    if let Some(unlogged) = BAD_PATH.admit() {
        log::info!(
            "websocket {} for {}: {why}; answered 400{unlogged}",
            shown(path.path()),
            request.peer()
        );
    }
    protocol_api::Rejection::new(400, format!("{why}\n"))
}

/// `404` for an `exec-dir:` path that names no program; the line says why, the client
/// only that there is none.
fn no_program(
    request: &Request<'_>,
    path: &RequestPath<'_>,
    why: script_dir::NotFound,
) -> protocol_api::Rejection {
    if let Some(unlogged) = NO_PROGRAM.admit() {
        log::info!(
            "websocket {} for {}: no program ({why}); answered 404{unlogged}",
            shown(path.path()),
            request.peer()
        );
    }
    protocol_api::Rejection {
        status: 404,
        headers: Vec::new(),
        body: b"no such program\n".to_vec(),
    }
}

/// A client as the daemon counts clients ([`protocol_api::clients::key`]), for the
/// plugin's own per-client counts; a peer that does not parse counts as one client.
pub(crate) fn client_key(peer: &str) -> u64 {
    protocol_api::clients::key_of(peer)
}

/// Refusals past `SWITCHYARD_WEBSOCKET_MAX_DIALS`, logged one a second at most.
static DIALS_REFUSED: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();

/// `503` with `Retry-After`: a programs limit (the route's, or its client's share) is
/// reached; another try may find a slot.
fn programs_busy(why: &str) -> protocol_api::Rejection {
    let rejection = protocol_api::Rejection {
        status: 503,
        headers: Vec::new(),
        body: format!("{why}; try again later\n").into_bytes(),
    };
    rejection.with_header("Retry-After", "1")
}

/// A refusal before the handshake is looked at (a path no route may take), logged with
/// the target's path only: its query may hold a token (`?token=`), which no log line
/// holds whole (the access line cuts it; this line, an attacker's review found, did not).
fn refuse<S>(request: &Request<'_>, status: u16, why: &str) -> Decision<S> {
    if let Some(unlogged) = REFUSED.admit() {
        let path = shown(protocol_api::fields::path(request.target()));
        log::info!(
            "{} {path}: {why}; answered {status}{unlogged}",
            request.peer()
        );
    }
    Decision::reject(status, format!("{why}\n"))
}

/// A request's path as the plugin's lines show it: escaped and cut
/// ([`protocol_api::fields::path_for_log`]). A review: refusals logged the path as sent,
/// 7 KiB of it a line, Unicode separators and overrides raw.
fn shown(path: &str) -> String {
    protocol_api::fields::path_for_log(path)
}

/// The plugin's lines for requests it refuses, each kind one a second at most (the access
/// line says every one): one client's refusals wrote 14 MB of them in half a second, a
/// review found.
static HANDSHAKES_REFUSED: protocol_api::throttle::Throttle =
    protocol_api::throttle::Throttle::new();
static TOKENS_UNKNOWN: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();
static NO_PROGRAM: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();
static TOKEN_GUESSES: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();
static REFUSED: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();

export_event_plugin!(WebSocket);
