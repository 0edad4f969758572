//! The daemon's access log for exchanges inside a plugin's connections (ABI 1.8): an
//! HTTP/2 connection carries many requests, and the daemon's own line for the connection
//! says nothing of them. Each is handed to the daemon, which writes it as it writes its
//! own lines (text, or JSON with `SWITCHYARD_ACCESS_LOG=json`; `token=` values cut), under
//! the same target, so `RUST_LOG=switchyard::access=off` silences both:
//!
//! ```text
//! 127.0.0.1:50412 "POST /helloworld.Greeter/SayHello HTTP/2.0" 200 proto=h2c in=52 out=71 time=1.3ms
//! ```
//!
//! Ask [`enabled`] before building anything for a line: the log is often off where speed
//! matters.

use crate::abi::{
    RawBytes, RawExchange, RawRequestNames, NAMED_HOST, NAMED_ORIGIN, NAMED_REFERER,
    NAMED_USER_AGENT,
};
use std::time::Duration;

/// The target the daemon's access lines are written under.
pub const TARGET: &str = "switchyard::access";

/// One exchange inside a connection.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The client, `address:port`.
    pub peer: &'a str,
    /// The request's method.
    pub method: &'a str,
    /// Its target, as the client sent it.
    pub target: &'a str,
    /// Its version (`HTTP/2.0`).
    pub version: &'a str,
    /// The answer's status; `None` when none was sent.
    pub status: Option<u16>,
    /// The plugin's protocol token.
    pub protocol: &'a str,
    /// The exchange's bytes from the client.
    pub bytes_in: u64,
    /// The exchange's bytes to the client.
    pub bytes_out: u64,
    /// From its request's first byte to its end.
    pub elapsed: Duration,
    /// Why it ended otherwise than with its answer (a reset).
    pub reason: Option<&'a str>,
    /// The connection's TLS, as [`crate::Request::tls`] gave it (its version, cipher
    /// suite and ALPN protocol are logged).
    pub tls: Option<crate::Tls<'a>>,
    /// The request's `Host` (`:authority`), `Origin`, `Referer` and `User-Agent`.
    pub named: Named<'a>,
}

/// The request fields an access line names where the client sent them (as the daemon's
/// own lines do: `host="..." origin=... referer=... ua=...`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Named<'a> {
    /// `Host`, or HTTP/2's `:authority`.
    pub host: Option<&'a str>,
    /// `Origin`: which site's page made the request.
    pub origin: Option<&'a str>,
    /// `Referer` (the daemon cuts its `token=` values, as the target's).
    pub referer: Option<&'a str>,
    /// `User-Agent`.
    pub user_agent: Option<&'a str>,
}

/// Whether the daemon writes access lines (and can take a plugin's: ABI 1.8). Asked of
/// the host once: its log filter is set for the life of the process, and asking for every
/// stream was a call into the daemon and a match of the filter each time.
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::host::host_minor() >= 8
        && *ENABLED.get_or_init(|| log::log_enabled!(target: TARGET, log::Level::Info))
}

/// Writes the exchange's access line, if the access log is on; false when the daemon
/// cannot take plugins' lines (older than ABI 1.8).
pub fn write(exchange: &Exchange<'_>) -> bool {
    let text = |s: &str| RawBytes::new(s.as_bytes());
    let raw = RawExchange {
        peer: text(exchange.peer),
        method: text(exchange.method),
        target: text(exchange.target),
        version: text(exchange.version),
        status: exchange.status.map_or(0, u32::from),
        protocol: text(exchange.protocol),
        bytes_in: exchange.bytes_in,
        bytes_out: exchange.bytes_out,
        micros: u64::try_from(exchange.elapsed.as_micros()).unwrap_or(u64::MAX),
        reason: text(exchange.reason.unwrap_or("")),
        tls_version: text(exchange.tls.map_or("", |t| t.version)),
        tls_cipher: text(exchange.tls.map_or("", |t| t.cipher)),
        tls_alpn: text(exchange.tls.and_then(|t| t.alpn).unwrap_or("")),
    };
    let named = exchange.named;
    let names = RawRequestNames {
        host: text(named.host.unwrap_or("")),
        origin: text(named.origin.unwrap_or("")),
        referer: text(named.referer.unwrap_or("")),
        user_agent: text(named.user_agent.unwrap_or("")),
        sent: [
            (named.host, NAMED_HOST),
            (named.origin, NAMED_ORIGIN),
            (named.referer, NAMED_REFERER),
            (named.user_agent, NAMED_USER_AGENT),
        ]
        .iter()
        .filter(|(value, _)| value.is_some())
        .fold(0, |sent, (_, bit)| sent | bit),
    };
    crate::host::access_line(&raw, &names)
}
