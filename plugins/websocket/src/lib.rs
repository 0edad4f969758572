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
    /// The permessage-deflate agreement, if any, and a route's service, dialled.
    type Session = (Option<deflate::Agreement>, Option<backend::Backend>);
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
        let headers: Vec<(&str, &[u8])> = request.headers().collect();
        match handshake::check(request.method(), &headers, &self.config) {
            Ok(accepted) => {
                // A service is dialled before the 101, which blocks: on a worker.
                let backend = match service {
                    routes::Service::Echo => None,
                    _ if !request.may_block() => return Decision::OnWorker,
                    service => match backend::Backend::dial(service, self.config.connect_timeout) {
                        Ok(backend) => Some(backend),
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
                                format!("the service for {} {}\n", request.path(), unreachable.why),
                            );
                        }
                    },
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
        let relay = backend.map(session::Relay::new);
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

export_event_plugin!(WebSocket);
