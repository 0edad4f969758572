//! `Upgrade: websocket` (RFC 6455) for switchyard: the opening handshake, the framing rules,
//! and an echo application (every message comes back as one message of the same type).
//!
//! - [`handshake`]: the request checks and the `101`'s headers, pure.
//! - [`deflate`]: permessage-deflate (RFC 7692) offers and message compression, pure.
//! - [`frame`] and [`receiver`]: framing and the receiving state machine, pure (bytes in,
//!   events out).
//! - `session`: the blocking I/O loop on a worker thread.
//!
//! Settings (environment): `SWITCHYARD_WEBSOCKET_MAX_MESSAGE`, `_ORIGINS`, `_PROTOCOLS`,
//! `_IDLE_MS`; see [`config::Config`].

pub mod config;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod receiver;
mod session;

use protocol_api::{export_plugin, Connection, Decision, Protocol, Request};

pub struct WebSocket {
    config: config::Config,
}

impl Protocol for WebSocket {
    const NAME: &'static str = "websocket";
    const TOKENS: &'static [&'static str] = &["websocket"];
    /// The permessage-deflate agreement, if any.
    type Session = Option<deflate::Agreement>;

    fn new() -> Result<Self, String> {
        let config = config::Config::from_env()?;
        log::debug!("websocket settings: {config:?}");
        Ok(WebSocket { config })
    }

    fn negotiate(&self, request: &Request<'_>) -> Decision<Self::Session> {
        let headers: Vec<(&str, &[u8])> = request.headers().collect();
        match handshake::check(request.method(), &headers, &self.config) {
            Ok(accepted) => {
                let mut decision = Decision::accept(accepted.deflate)
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

    fn serve(
        &self,
        deflate: Self::Session,
        _request: &Request<'_>,
        conn: &mut Connection<'_>,
    ) -> std::io::Result<()> {
        session::serve(conn, &self.config, deflate)
    }
}

export_plugin!(WebSocket);
