//! `Upgrade: websocket` (RFC 6455) for switchyard: the opening handshake, the framing rules,
//! and an echo application (every message comes back as one message of the same type).
//!
//! - [`handshake`]: the request checks and the `101`'s headers, pure.
//! - [`frame`] and [`receiver`]: framing and the receiving state machine, pure (bytes in,
//!   events out).
//! - `session`: the blocking I/O loop on a worker thread.
//!
//! Settings (environment): `SWITCHYARD_WEBSOCKET_MAX_MESSAGE`, `_ORIGINS`, `_PROTOCOLS`,
//! `_IDLE_MS`; see [`config::Config`].

pub mod config;
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
    type Session = ();

    fn new() -> Result<Self, String> {
        let config = config::Config::from_env()?;
        log::debug!("websocket settings: {config:?}");
        Ok(WebSocket { config })
    }

    fn negotiate(&self, request: &Request<'_>) -> Decision<()> {
        let headers: Vec<(&str, &[u8])> = request.headers().collect();
        match handshake::check(request.method(), &headers, &self.config) {
            Ok(accepted) => {
                let decision =
                    Decision::accept(()).with_header("Sec-WebSocket-Accept", accepted.accept);
                match accepted.protocol {
                    Some(protocol) => decision.with_header("Sec-WebSocket-Protocol", protocol),
                    None => decision,
                }
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
        _: (),
        _request: &Request<'_>,
        conn: &mut Connection<'_>,
    ) -> std::io::Result<()> {
        session::serve(conn, &self.config)
    }
}

export_plugin!(WebSocket);
