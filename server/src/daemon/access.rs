//! The access log: one line per exchange at info level, target `switchyard::access`.
//!
//! ```text
//! 127.0.0.1:50412 "GET /chat HTTP/1.1" 101 proto=echo in=1187 out=1210 time=3.204s
//! 127.0.0.1:50413 "POST / HTTP/1.1" 400 in=61 out=150 time=0.1ms reason="both Transfer-Encoding and Content-Length"
//! 127.0.0.1:50414 "GET /chat HTTP/1.1" 101 proto=websocket tls=TLSv1.3/TLS13_AES_128_GCM_SHA256/http/1.1 in=1187 out=1210 time=3.204s
//! ```
//! `tls` (on a TLS listener) is the protocol version, cipher suite and ALPN protocol (`-`:
//! none offered); `in` and `out` count plaintext.
//! `in` and `out` count bytes on the client connection: for an answered request its head and
//! body and the answer; for a switched connection its whole life (request, bytes sent
//! early, and everything after the `101` that passed through the daemon's or the plugin's
//! reads and writes; bytes a plugin splices itself on the lent socket are not seen).

use std::net::SocketAddr;
use std::time::Instant;

/// The status of a connection that switched without a `101` (HTTP/2 with prior
/// knowledge); logged as `-`.
pub const NO_STATUS: u16 = 0;

pub struct Exchange<'a> {
    pub peer: SocketAddr,
    /// `METHOD target HTTP/1.x`, or `-` when the request line could not be read.
    pub request: &'a str,
    pub status: u16,
    pub protocol: Option<&'a str>,
    /// What the connection's TLS handshake settled, on a TLS listener.
    pub tls: Option<crate::tls::Summary>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub started: Instant,
    pub reason: Option<&'a str>,
}

/// True when access lines are written; callers skip building them otherwise.
pub fn enabled() -> bool {
    log::log_enabled!(target: "switchyard::access", log::Level::Info)
}

/// `METHOD target HTTP/1.x`, built only when the access log is on. A `token=` query
/// parameter's value (websockify's token targets, noVNC's `?token=`) is shown by its first
/// three characters only: a log is read by more people than a token may be.
pub fn request_line(method: &str, target: &str, version_minor: u8) -> String {
    if enabled() {
        format!("{method} {} HTTP/1.{version_minor}", without_tokens(target))
    } else {
        String::new()
    }
}

/// `target` with each `token=` query value cut to its first three characters and `...`.
fn without_tokens(target: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else {
        return target.into();
    };
    if !query.split('&').any(|pair| pair.starts_with("token=")) {
        return target.into();
    }
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.strip_prefix("token=") {
            Some(token) if token.chars().count() > 3 => {
                format!("token={}...", token.chars().take(3).collect::<String>())
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&")).into()
}

pub fn log(exchange: &Exchange<'_>) {
    if !enabled() {
        return;
    }
    let elapsed = exchange.started.elapsed();
    let time = if elapsed.as_secs() >= 1 {
        format!("{:.3}s", elapsed.as_secs_f64())
    } else {
        format!("{:.1}ms", elapsed.as_secs_f64() * 1000.0)
    };
    let protocol = exchange
        .protocol
        .map(|p| format!(" proto={p}"))
        .unwrap_or_default();
    let tls = exchange
        .tls
        .map(|t| format!(" tls={}/{}/{}", t.version, t.cipher, t.alpn))
        .unwrap_or_default();
    let reason = exchange
        .reason
        .map(|r| format!(" reason={r:?}"))
        .unwrap_or_default();
    let status = match exchange.status {
        NO_STATUS => "-".to_string(),
        status => status.to_string(),
    };
    log::info!(
        target: "switchyard::access",
        "{} {:?} {status}{protocol}{tls} in={} out={} time={time}{reason}",
        exchange.peer,
        exchange.request,
        exchange.bytes_in,
        exchange.bytes_out,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_query_values_are_cut_in_the_access_line() {
        let cut = |t| super::without_tokens(t).into_owned();
        assert_eq!(
            cut("/websockify?token=s3cr3t-value"),
            "/websockify?token=s3c..."
        );
        assert_eq!(cut("/a?x=1&token=abcdef&y=2"), "/a?x=1&token=abc...&y=2");
        assert_eq!(cut("/a?token=ab"), "/a?token=ab");
        assert_eq!(cut("/a?tokens=abcdef"), "/a?tokens=abcdef");
        assert_eq!(cut("/plain"), "/plain");
    }
}
