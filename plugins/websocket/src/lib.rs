//! `Upgrade: websocket` (RFC 6455) for switchyard: the opening handshake, the framing rules,
//! and an echo application (every message comes back as one message of the same type).
//!
//! - [`handshake`]: the request checks and the `101`'s headers, pure.
//! - [`deflate`]: permessage-deflate (RFC 7692) offers and message compression, pure.
//! - [`frame`] and [`receiver`]: framing and the receiving state machine, pure (bytes in,
//!   events out).
//! - `session`: one connection, readiness-driven on the daemon's event loop.
//!
//! Settings (environment): `SWITCHYARD_WEBSOCKET_MAX_MESSAGE`, `_ORIGINS`, `_PROTOCOLS`,
//! `_IDLE_MS`; see [`config::Config`].

pub mod backend;
pub mod config;
pub mod deflate;
pub mod frame;
pub mod handshake;
mod process;
pub mod receiver;
pub mod routes;
mod session;

use protocol_api::{export_event_plugin, Decision, EventProtocol, Io, Ready, Request, Wants};

pub struct WebSocket {
    config: config::Config,
}

/// Served readiness-driven: many connections that each move little are what WebSocket
/// carries, and a thread per connection would cost a context switch per message and a
/// stack per idle client.
impl EventProtocol for WebSocket {
    const NAME: &'static str = "websocket";
    const TOKENS: &'static [&'static str] = &["websocket"];
    /// The permessage-deflate agreement, if any, and a route's service, dialled or started
    /// (with whether it speaks in lines, and a label for logs).
    type Session = (
        Option<deflate::Agreement>,
        Option<(backend::Backend, bool, String)>,
    );
    type Conn = session::Session;

    fn new() -> Result<Self, String> {
        let config = config::Config::from_env()?;
        log::debug!("websocket settings: {config:?}");
        Ok(WebSocket { config })
    }

    fn negotiate(&self, request: &Request<'_>) -> Decision<Self::Session> {
        let Some(service) = routes::service(&self.config.routes, request.path()) else {
            return Decision::Decline; // no route for this path: the client gets 426
        };
        if matches!(service, routes::Service::Exec { .. })
            && process::running() >= self.config.max_processes
        {
            log::warn!(
                "websocket {} for {}: {} programs running (SWITCHYARD_WEBSOCKET_MAX_PROCESSES); answered 503",
                request.path(),
                request.peer(),
                process::running()
            );
            let rejection = protocol_api::Rejection {
                status: 503,
                headers: Vec::new(),
                body: b"too many programs running; try again later\n".to_vec(),
            };
            return Decision::Reject(rejection.with_header("Retry-After", "1"));
        }
        let headers: Vec<(&str, &[u8])> = request.headers().collect();
        match handshake::check(request.method(), &headers, &self.config) {
            Ok(accepted) => {
                // A service is dialled before the 101, which blocks: on a worker.
                let backend = match service {
                    routes::Service::Echo => None,
                    _ if !request.may_block() => return Decision::OnWorker,
                    service => {
                        match backend::Backend::dial(service, self.config.connect_timeout, || {
                            cgi_environment(request)
                        }) {
                            Ok(backend) => {
                                let lines =
                                    matches!(service, routes::Service::Exec { binary: false, .. });
                                let label = match &backend {
                                    backend::Backend::Program(p) => {
                                        format!("{} (pid {})", request.path(), p.pid)
                                    }
                                    _ => request.path().to_string(),
                                };
                                Some((backend, lines, label))
                            }
                            Err(unreachable) => {
                                log::warn!(
                                    "websocket {} for {}: service {:?} {}",
                                    request.path(),
                                    request.peer(),
                                    service,
                                    unreachable.why
                                );
                                return Decision::reject(
                                    unreachable.status,
                                    format!(
                                        "the service for {} {}\n",
                                        request.path(),
                                        unreachable.why
                                    ),
                                );
                            }
                        }
                    }
                };
                let mut decision = Decision::accept((accepted.deflate, backend))
                    .with_header("Sec-WebSocket-Accept", accepted.accept);
                if let Some(protocol) = accepted.protocol {
                    decision = decision.with_header("Sec-WebSocket-Protocol", protocol);
                }
                if let Some(agreement) = accepted.deflate {
                    decision =
                        decision.with_header("Sec-WebSocket-Extensions", agreement.header_value());
                }
                decision
            }
            Err(rejection) => {
                log::info!(
                    "{}: {}",
                    request.peer(),
                    String::from_utf8_lossy(&rejection.body).trim_end()
                );
                Decision::Reject(rejection)
            }
        }
    }

    fn start(
        &self,
        (deflate, backend): Self::Session,
        _request: &Request<'_>,
    ) -> std::io::Result<session::Session> {
        let relay =
            backend.map(|(backend, lines, label)| session::Relay::new(backend, lines, label));
        Ok(session::Session::new(&self.config, deflate, relay))
    }

    fn on_ready(
        &self,
        conn: &mut session::Session,
        io: &mut Io<'_>,
        ready: Ready,
    ) -> std::io::Result<Wants> {
        conn.on_ready(io, ready, &self.config)
    }
}

/// What a program behind an `exec:` route gets in its environment (CGI/1.1, RFC 3875 §4.1,
/// as websocketd gives it): the request's parts and headers, and the daemon's environment
/// without its `SWITCHYARD_*` settings. Nothing from the request reaches its argv.
fn cgi_environment(request: &Request<'_>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| !name.starts_with("SWITCHYARD_"))
        .collect();
    let (address, port) = request
        .peer()
        .rsplit_once(':')
        .unwrap_or((request.peer(), ""));
    let target = request.target();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    for (name, value) in [
        ("REMOTE_ADDR", address.trim_matches(['[', ']'])),
        ("REMOTE_PORT", port),
        ("REQUEST_METHOD", request.method()),
        ("REQUEST_URI", target),
        ("PATH_INFO", request.path()),
        ("QUERY_STRING", query),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "websocketd-CGI/0.1"),
    ] {
        env.push((name.to_string(), value.to_string()));
    }
    for (name, value) in request.headers() {
        let name = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        env.push((name, String::from_utf8_lossy(value).into_owned()));
    }
    env
}

export_event_plugin!(WebSocket);
