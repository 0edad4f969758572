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
//!
//! With `SWITCHYARD_ACCESS_LOG=json` each line is one JSON object instead, written alone on
//! its line (no time or level before it), with the same fields (and every other log line
//! is one too: [`json_log_line`]):
//!
//! ```text
//! {"time":"2026-12-03T09:01:02.345Z","peer":"127.0.0.1:50412","method":"GET","target":"/chat","version":"HTTP/1.1","status":101,"proto":"echo","tls":null,"in":1187,"out":1210,"seconds":3.204,"reason":null}
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

/// Access lines as JSON objects (`SWITCHYARD_ACCESS_LOG=json`).
static JSON: AtomicBool = AtomicBool::new(false);

/// Writes access lines as JSON objects from now on (set once at start).
pub fn use_json(json: bool) {
    JSON.store(json, Relaxed);
}

/// Whether access lines are JSON: the logger writes them without its prefix.
pub fn is_json() -> bool {
    JSON.load(Relaxed)
}

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
    pub tls: Option<TlsNames<'a>>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub started: Instant,
    pub reason: Option<&'a str>,
}

/// A TLS session as the access line names it: version, cipher suite, ALPN protocol (`-`:
/// none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsNames<'a> {
    pub version: &'a str,
    pub cipher: &'a str,
    pub alpn: &'a str,
}

impl From<crate::tls::Summary> for TlsNames<'static> {
    fn from(summary: crate::tls::Summary) -> Self {
        TlsNames {
            version: summary.version,
            cipher: summary.cipher,
            alpn: summary.alpn,
        }
    }
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

/// An exchange a plugin served inside its connection (ABI 1.8: an HTTP/2 stream), written
/// as the daemon's own are, `token=` values cut alike.
pub fn log_plugins(exchange: &protocol_api::access::Exchange<'_>) {
    if !enabled() {
        return;
    }
    let request = format!(
        "{} {} {}",
        exchange.method,
        without_tokens(exchange.target),
        exchange.version
    );
    log(&Exchange {
        peer: exchange
            .peer
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        request: &request,
        status: exchange.status.unwrap_or(NO_STATUS),
        protocol: Some(exchange.protocol),
        tls: exchange.tls.map(|tls| TlsNames {
            version: tls.version,
            cipher: tls.cipher,
            alpn: tls.alpn.unwrap_or("-"),
        }),
        bytes_in: exchange.bytes_in,
        bytes_out: exchange.bytes_out,
        started: Instant::now()
            .checked_sub(exchange.elapsed)
            .unwrap_or_else(Instant::now),
        reason: exchange.reason,
    });
}

/// `target` with each `token=` query value cut to its first three characters and `...`.
/// A pair is a token's by its name decoded (`tok%65n=` too), as the websocket plugin's
/// `tokens:` routes and websockify read it.
fn without_tokens(target: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else {
        return target.into();
    };
    let names_token = |pair: &str| {
        form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(name, _)| name == "token")
    };
    if !query.split('&').any(names_token) {
        return target.into();
    }
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, token)) if names_token(pair) && token.chars().count() > 3 => {
                format!("{name}={}...", token.chars().take(3).collect::<String>())
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
    if is_json() {
        let line = json_line(exchange, std::time::SystemTime::now());
        log::info!(target: "switchyard::access", "{line}");
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

/// The exchange as one JSON object, `now` its time. Every string a client chose (the
/// target, a reason quoting it) is escaped by serde_json, so a line is always one object.
fn json_line(exchange: &Exchange<'_>, now: std::time::SystemTime) -> String {
    let mut parts = exchange.request.splitn(3, ' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) => (Some(m), Some(t), Some(v)),
        _ => (None, None, None),
    };
    let tls = exchange
        .tls
        .map(|t| serde_json::json!({"version": t.version, "cipher": t.cipher, "alpn": t.alpn}));
    let status = match exchange.status {
        NO_STATUS => None,
        status => Some(status),
    };
    serde_json::json!({
        "time": rfc3339_millis(now),
        "peer": exchange.peer.to_string(),
        "method": method,
        "target": target,
        "version": version,
        "status": status,
        "proto": exchange.protocol,
        "tls": tls,
        "in": exchange.bytes_in,
        "out": exchange.bytes_out,
        "seconds": (exchange.started.elapsed().as_secs_f64() * 1e6).round() / 1e6,
        "reason": exchange.reason,
    })
    .to_string()
}

/// Any other log line as one JSON object (`time`, `level`, `target`, `message`), for when
/// access lines are JSON: a log shipper then reads one format from the whole stream. The
/// message is escaped by serde_json, so what a client made a line quote stays in it.
pub fn json_log_line(
    level: log::Level,
    target: &str,
    message: &std::fmt::Arguments<'_>,
    now: std::time::SystemTime,
) -> String {
    serde_json::json!({
        "time": rfc3339_millis(now),
        "level": level.as_str().to_ascii_lowercase(),
        "target": target,
        "message": message.to_string(),
    })
    .to_string()
}

/// `now` as RFC 3339 in UTC with milliseconds (`2026-12-03T09:01:02.345Z`), as the logger
/// stamps its lines.
pub fn rfc3339_millis(now: std::time::SystemTime) -> String {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The calendar date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// If `tls` failed with [`crate::tls::layer::NoData`]: the reason for the connection's
/// access line, after a log line naming the client (once a second at most: a client
/// causes it).
pub fn tls_without_data(
    tls: Option<&crate::tls::layer::TlsLayer>,
    peer: &dyn std::fmt::Display,
) -> Option<&'static str> {
    static LOGGED: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();
    if !tls.is_some_and(|tls| tls.failed_without_data()) {
        return None;
    }
    if let Some(unlogged) = LOGGED.admit() {
        log::warn!(
            "{peer}: {}; connection closed{unlogged}",
            crate::tls::layer::NoData
        );
    }
    Some("tls without data")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_json_line_is_one_object_whatever_the_client_sent() {
        let exchange = super::Exchange {
            peer: "127.0.0.1:5000".parse().unwrap(),
            request: "GET /a\"b\n?x HTTP/1.1",
            status: 400,
            protocol: None,
            tls: None,
            bytes_in: 10,
            bytes_out: 20,
            started: std::time::Instant::now(),
            reason: Some("bad \"quote\""),
        };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_288_462_345);
        let line = super::json_line(&exchange, at);
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["target"], "/a\"b\n?x");
        assert_eq!(value["method"], "GET");
        assert_eq!(value["status"], 400);
        assert_eq!(value["in"], 10);
        assert_eq!(value["reason"], "bad \"quote\"");
        assert_eq!(value["time"], "2026-12-03T09:01:02.345Z");
        assert!(value["tls"].is_null() && value["proto"].is_null());
    }

    #[test]
    fn token_query_values_are_cut_in_the_access_line() {
        let cut = |t| super::without_tokens(t).into_owned();
        assert_eq!(
            cut("/websockify?token=s3cr3t-value"),
            "/websockify?token=s3c..."
        );
        assert_eq!(cut("/a?x=1&token=abcdef&y=2"), "/a?x=1&token=abc...&y=2");
        assert_eq!(cut("/a?token=ab"), "/a?token=ab");
        // However the name is written, as the plugin decodes it.
        assert_eq!(cut("/a?tok%65n=abcdef"), "/a?tok%65n=abc...");
        assert_eq!(cut("/a?tokens=abcdef"), "/a?tokens=abcdef");
        assert_eq!(cut("/a?tokens=abcdef"), "/a?tokens=abcdef");
        assert_eq!(cut("/plain"), "/plain");
    }
}
