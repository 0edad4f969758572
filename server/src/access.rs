//! The access log: one line per exchange at info level, target `switchyard::access`.
//!
//! ```text
//! 127.0.0.1:50412 "GET /chat HTTP/1.1" 101 proto=echo in=1187 out=1210 time=3.204s
//! 127.0.0.1:50413 "POST / HTTP/1.1" 400 in=61 out=150 time=0.1ms reason="both Transfer-Encoding and Content-Length"
//! 127.0.0.1:50414 "GET /chat HTTP/1.1" 101 proto=websocket tls=TLSv1.3/TLS13_AES_128_GCM_SHA256/http/1.1 in=1187 out=1210 time=3.204s
//! ```
//! `tls` (on a TLS listener) is the protocol version, cipher suite and ALPN protocol (`-`:
//! none offered); `in` and `out` count plaintext. After `time`, the request's `Host`,
//! `Origin`, `Referer` and `User-Agent`, each as `host="..."`, `origin=`, `referer=`, `ua=`
//! where the client sent it (cut to [`FIELD_LIMIT`] bytes), as nginx's `combined` format
//! names the last two: which sites' pages open a WebSocket, and with what.
//!
//! ```text
//! 127.0.0.1:50415 "GET /chat HTTP/1.1" 101 proto=websocket in=1187 out=1210 time=3.204s host="chat.example" origin="https://chat.example" ua="Mozilla/5.0 (X11; Linux x86_64)"
//! ```
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
//! {"time":"2026-12-03T09:01:02.345Z","peer":"127.0.0.1:50412","method":"GET","target":"/chat","version":"HTTP/1.1","status":101,"proto":"echo","tls":null,"in":1187,"out":1210,"seconds":3.204,"host":"chat.example","origin":null,"referer":null,"user_agent":"curl/8.5.0","reason":null}
//! ```

use std::fmt::Write;
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
    pub request: &'a Request,
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

/// The most of a named field's value an access line shows of an HTTP/1.1 request (nginx's
/// lines have no limit but its 8 KiB head; a switched connection keeps what its line will
/// say for its life), counted as written ([`Shown`]).
pub const FIELD_LIMIT: usize = 512;

/// How much of a request a line shows, each character counted as the line writes it (a
/// control character as `\u{1b}` or `\u001b`: six bytes), so that what a client sends
/// once cannot make the line many times longer than the limit; past it, cut and `...`.
#[derive(Debug, Clone, Copy)]
struct Shown {
    target: usize,
    field: usize,
}

/// An HTTP/1.1 request: its target whole (within `SWITCHYARD_MAX_TARGET_BYTES`), each
/// named field to [`FIELD_LIMIT`].
const HTTP1_SHOWN: Shown = Shown {
    target: usize::MAX,
    field: FIELD_LIMIT,
};

/// A plugin's exchange (an HTTP/2 stream, whose fields HPACK lets a client send again for
/// a byte each): a path as HAProxy's 1 KiB lines show one, a field as a browser's
/// `User-Agent` (about 110 bytes) needs. A review measured 260 bytes of log a byte sent
/// with control characters in fields cut at 128 bytes before escaping; counted as
/// written, a stream's line stays within about 1.7 KB.
const PLUGIN_SHOWN: Shown = Shown {
    target: 1024,
    field: 128,
};

/// The request fields an access line names, in its order: the line's key, the JSON key
/// and the field.
const NAMED: [(&str, &str, &str); 4] = [
    ("host", "host", "host"),
    ("origin", "origin", "origin"),
    ("referer", "referer", "referer"),
    ("ua", "user_agent", "user-agent"),
];

/// What an access line says of a request: `METHOD target HTTP/1.x` (`-` when it could not
/// be read) and the [`NAMED`] fields the client sent (a `token=` value cut in the target
/// and the `Referer` alike). Built only when the access log is on, and a pointer while it
/// is off: a switched connection keeps it for its life.
#[derive(Debug, Default)]
pub struct Request(Option<Box<RequestText>>);

#[derive(Debug)]
struct RequestText {
    /// The line, then each named field sent, one after another.
    text: String,
    /// Where the line and each named field end in `text` (a field not sent is empty).
    ends: [u32; 1 + NAMED.len()],
    /// Bit `i`: named field `i` was sent (perhaps empty).
    sent: u8,
}

/// A request whose head could not be read: `-`.
pub static UNREAD: Request = Request(None);

impl Request {
    /// A request read whole: `field(name)` gives the first value of the field `name`
    /// (lower case). A `token=` query parameter's value (websockify's token targets,
    /// noVNC's `?token=`) is shown by its first three characters only: a log is read by
    /// more people than a token may be.
    pub fn read<'a>(
        method: &str,
        target: &str,
        version_minor: u8,
        field: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Request {
        if !enabled() {
            return Request(None);
        }
        let version = match version_minor {
            0 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        Request::build(method, target, version, field, HTTP1_SHOWN)
    }

    /// `field(name)` as [`Request::read`] takes it; `version` as it is logged (`HTTP/1.1`).
    fn build<'a>(
        method: &str,
        target: &str,
        version: &str,
        field: impl Fn(&str) -> Option<&'a [u8]>,
        shown: Shown,
    ) -> Request {
        let target = without_tokens(target);
        let target = cut_shown(&target, shown.target);
        let values = NAMED.map(|(_, _, name)| {
            let value = field(name)?;
            // (Checked first: most values are UTF-8, and the check is the faster.)
            let value = match std::str::from_utf8(value) {
                Ok(text) => text.into(),
                Err(_) => String::from_utf8_lossy(value),
            };
            // A page opened with `?token=` is the `Referer` of what it loads (noVNC's).
            if name != "referer" {
                return Some(value);
            }
            Some(match without_tokens(&value) {
                std::borrow::Cow::Owned(cut) => cut.into(),
                std::borrow::Cow::Borrowed(_) => value,
            })
        });
        let values = values
            .each_ref()
            .map(|v| v.as_deref().map(|v| cut_shown(v, shown.field)));
        let fields: usize = values.iter().flatten().map(|v| v.len()).sum();
        let line = method.len() + target.len() + version.len() + 2;
        let mut text = String::with_capacity(line + fields);
        let _ = write!(text, "{method} {target} {version}");
        let mut ends = [text.len() as u32; 1 + NAMED.len()];
        let mut sent = 0;
        for (i, value) in values.iter().enumerate() {
            if let Some(value) = value {
                sent |= 1 << i;
                text.push_str(value);
            }
            ends[1 + i] = text.len() as u32;
        }
        Request(Some(Box::new(RequestText { text, ends, sent })))
    }

    /// A request given as its line alone (HTTP/2's preface, `PRI * HTTP/2.0`), when the
    /// access log is on.
    pub fn of_line(line: String) -> Request {
        if !enabled() {
            return Request(None);
        }
        let end = line.len() as u32;
        Request(Some(Box::new(RequestText {
            text: line,
            ends: [end; 1 + NAMED.len()],
            sent: 0,
        })))
    }

    /// `METHOD target HTTP/1.x`, or `-`.
    pub fn line(&self) -> &str {
        match &self.0 {
            Some(named) => &named.text[..named.ends[0] as usize],
            None => "-",
        }
    }

    /// Each named field: its line key, JSON key, and value if the client sent it.
    fn named(&self) -> impl Iterator<Item = (&'static str, &'static str, Option<&str>)> + '_ {
        NAMED.iter().enumerate().map(move |(i, &(key, json, _))| {
            let value = self.0.as_ref().and_then(|named| {
                let (start, end) = (named.ends[i] as usize, named.ends[i + 1] as usize);
                (named.sent & (1 << i) != 0).then(|| &named.text[start..end])
            });
            (key, json, value)
        })
    }
}

/// Printable ASCII but for `"` and `\`: written as itself, quoted or in JSON.
fn is_plain(byte: u8) -> bool {
    matches!(byte, 0x20..=0x7e) && byte != b'"' && byte != b'\\'
}

/// `text` quoted as `{:?}` writes it (escaped), without its escaping's look at each
/// character when it has nothing to escape (most requests).
fn quoted(f: &mut std::fmt::Formatter<'_>, text: &str) -> std::fmt::Result {
    if !text.bytes().all(is_plain) {
        return write!(f, "{text:?}");
    }
    f.write_str("\"")?;
    f.write_str(text)?;
    f.write_str("\"")
}

/// `value` whole if it is written in `limit` bytes or fewer ([`Shown`]), else as much of
/// it as is, and `...`.
fn cut_shown(value: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if value.len() <= limit / 6 {
        return value.into(); // however it is written
    }
    if value.len() <= limit && value.bytes().all(is_plain) {
        return value.into(); // each byte as itself: most values
    }
    let mut written = 0;
    for (at, c) in value.char_indices() {
        written += match c {
            '\0'..='\x1f' | '\x7f' => 6,
            _ => c.escape_debug().count().max(c.len_utf8()),
        };
        if written > limit {
            return format!("{}...", &value[..at]).into();
        }
    }
    value.into()
}

/// An exchange a plugin served inside its connection (ABI 1.8: an HTTP/2 stream), written
/// as the daemon's own are, `token=` values cut alike.
pub fn log_plugins(exchange: &protocol_api::access::Exchange<'_>) {
    if !enabled() {
        return;
    }
    let named = exchange.named;
    let field = |name: &str| match name {
        "host" => named.host,
        "origin" => named.origin,
        "referer" => named.referer,
        "user-agent" => named.user_agent,
        _ => None,
    };
    let field = |name: &str| field(name).map(str::as_bytes);
    let request = Request::build(
        exchange.method,
        exchange.target,
        exchange.version,
        field,
        PLUGIN_SHOWN,
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

/// `target` with each `token=` value in its query cut to its first three characters and
/// `...`. A token is found wherever its name and `=` are, spelled out or percent-encoded
/// once or twice, whatever comes before: in a pair of its own (`?token=`, `tok%65n=`, as
/// the websocket plugin's `tokens:` routes and websockify read it), inside another pair's
/// value (noVNC's `?path=websockify%3Ftoken%3Dalice`, the README's own form), after a
/// second `?` (noVNC reads `token=` anywhere in its page's address). Its value ends at `&`
/// or `#`, spelled out or encoded alike. A name that merely ends in `token` (`csrf_token=`)
/// is cut too: a log is read by more people than a token may be.
fn without_tokens(target: &str) -> std::borrow::Cow<'_, str> {
    let Some(query_at) = target.find('?') else {
        return target.into();
    };
    let bytes = target.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut at = query_at + 1;
    while at < bytes.len() {
        let Some((value_at, depth)) = token_name_at(bytes, at) else {
            at += 1;
            continue;
        };
        // Keep three characters (as sent: escapes whole), drop the rest of the value,
        // which ends at a separator spelled no deeper than its `=`: a literal `token=`
        // ends at a literal `&`, its value holding `%26` as the plugin decodes it.
        let mut kept_end = value_at;
        let mut end = value_at;
        let mut units = 0;
        while let Some((byte, len, spelled)) = unit(bytes, end, depth) {
            if (byte == b'&' || byte == b'#') && spelled <= depth {
                break;
            }
            units += 1;
            end += len;
            if units <= 3 {
                kept_end = end;
            }
        }
        if units > 3 {
            out.push_str(&target[copied..kept_end]);
            out.push_str("...");
            copied = end;
        }
        at = end.max(at + 1);
    }
    if copied == 0 {
        return target.into();
    }
    out.push_str(&target[copied..]);
    out.into()
}

/// Where the value begins, and how deep its `=` was encoded (0: itself, 1: `%3D`, 2:
/// `%253D`), if `token` and `=` are spelled at `at` (each character as itself, `%XX` or
/// `%25XX`, letters in either case).
fn token_name_at(bytes: &[u8], mut at: usize) -> Option<(usize, u8)> {
    let mut depth = 0;
    for expected in b"token=" {
        let (byte, len, spelled) = unit(bytes, at, 2)?;
        if !byte.eq_ignore_ascii_case(expected) {
            return None;
        }
        at += len;
        depth = spelled;
    }
    Some((at, depth))
}

/// The character at `at` as a client may have spelled it: itself, `%XX`, or (when
/// `deepest` is 2) `%25XX`, encoded twice; how many bytes it takes (a character outside
/// ASCII, all of its UTF-8 bytes, its first standing for it); and how many times it was
/// encoded. A value read at depth 0 is decoded once by its reader: `%2541` is `%`, `4`,
/// `1` there; at depth 1, twice.
fn unit(bytes: &[u8], at: usize, deepest: u8) -> Option<(u8, usize, u8)> {
    let hex = |at: usize| -> Option<u8> {
        let digits = bytes.get(at..at + 2)?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u8::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let byte = *bytes.get(at)?;
    if byte != b'%' {
        let len = match byte {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xff => 4,
            _ => 1,
        };
        return Some((byte, len.min(bytes.len() - at), 0));
    }
    match hex(at + 1) {
        Some(b'%') if deepest >= 1 => match hex(at + 3) {
            Some(twice) => Some((twice, 5, 2)),
            None => Some((b'%', 3, 1)),
        },
        Some(once) => Some((once, 3, 1)),
        None => Some((b'%', 1, 0)),
    }
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
    log::info!(target: "switchyard::access", "{}", TextLine(exchange));
}

/// The text line, written straight into the logger's buffer (no string of its own for
/// each field: a line a request).
struct TextLine<'a>(&'a Exchange<'a>);

impl std::fmt::Display for TextLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let exchange = self.0;
        write!(f, "{} ", exchange.peer)?;
        quoted(f, exchange.request.line())?;
        f.write_str(" ")?;
        match exchange.status {
            NO_STATUS => f.write_str("-")?,
            status => write!(f, "{status}")?,
        }
        if let Some(protocol) = exchange.protocol {
            write!(f, " proto={protocol}")?;
        }
        if let Some(t) = exchange.tls {
            write!(f, " tls={}/{}/{}", t.version, t.cipher, t.alpn)?;
        }
        write!(
            f,
            " in={} out={} time=",
            exchange.bytes_in, exchange.bytes_out
        )?;
        let elapsed = exchange.started.elapsed();
        match elapsed.as_secs() >= 1 {
            true => write!(f, "{:.3}s", elapsed.as_secs_f64())?,
            false => write!(f, "{:.1}ms", elapsed.as_secs_f64() * 1000.0)?,
        }
        for (key, _, value) in exchange.request.named() {
            if let Some(value) = value {
                write!(f, " {key}=")?;
                quoted(f, value)?;
            }
        }
        if let Some(reason) = exchange.reason {
            write!(f, " reason={reason:?}")?;
        }
        Ok(())
    }
}

/// The exchange as one JSON object, `now` its time. Every string a client chose (the
/// target, a reason quoting it) is escaped by serde_json, so a line is always one object.
fn json_line(exchange: &Exchange<'_>, now: std::time::SystemTime) -> String {
    let mut parts = exchange.request.line().splitn(3, ' ');
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
    let mut line = serde_json::json!({
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
    });
    for (_, key, value) in exchange.request.named() {
        line[key] = value.into();
    }
    line["reason"] = exchange.reason.into();
    line.to_string()
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
        let field = |name: &str| match name {
            "user-agent" => Some(&b"evil\"}\n{\"x\":1"[..]),
            "host" => Some(&b""[..]),
            _ => None,
        };
        let request =
            super::Request::build("GET", "/a\"b\n?x", "HTTP/1.1", field, super::HTTP1_SHOWN);
        let exchange = super::Exchange {
            peer: "127.0.0.1:5000".parse().unwrap(),
            request: &request,
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
        assert_eq!(value["user_agent"], "evil\"}\n{\"x\":1");
        assert_eq!(value["host"], "", "sent empty is not absent");
        assert!(value["origin"].is_null() && value["referer"].is_null());
    }

    #[test]
    fn named_fields_are_kept_apart_and_cut_at_their_limit() {
        let long = "é".repeat(super::FIELD_LIMIT); // two bytes each: cut mid-way
        let field = |name: &str| match name {
            "origin" => Some(long.as_bytes()),
            "referer" => Some(&b"https://a.example/vnc.html?token=abcdef&x=\xff"[..]),
            "user-agent" => Some(&b"ua"[..]),
            _ => None,
        };
        let request = super::Request::build(
            "GET",
            "/?token=secret",
            "HTTP/1.1",
            field,
            super::HTTP1_SHOWN,
        );
        assert_eq!(request.line(), "GET /?token=sec... HTTP/1.1");
        let named: Vec<_> = request.named().map(|(key, _, v)| (key, v)).collect();
        let origin = format!("{}...", "é".repeat(super::FIELD_LIMIT / 2));
        assert_eq!(
            named,
            [
                ("host", None),
                ("origin", Some(origin.as_str())),
                (
                    "referer",
                    Some("https://a.example/vnc.html?token=abc...&x=\u{fffd}")
                ),
                ("ua", Some("ua")),
            ]
        );
        assert_eq!(super::UNREAD.line(), "-");
        assert!(super::UNREAD.named().all(|(_, _, v)| v.is_none()));
    }

    /// A plugin's exchange: its fields and target cut as the line writes them, so control
    /// characters (six bytes each, escaped) make it no longer (a review: 260 bytes of log
    /// a byte sent over HTTP/2).
    #[test]
    fn a_plugins_fields_are_cut_as_written() {
        let controls = "\x1b".repeat(1000);
        let field = |name: &str| (name == "user-agent").then_some(controls.as_bytes());
        let path = format!("/{}", "\\".repeat(2000));
        let request = super::Request::build("GET", &path, "HTTP/2.0", field, super::PLUGIN_SHOWN);
        let agent = request.named().last().unwrap().2.unwrap();
        assert_eq!(agent, format!("{}...", "\x1b".repeat(128 / 6)));
        assert_eq!(format!("{agent:?}").len(), 2 + 21 * 6 + 3);
        let target = request.line().split(' ').nth(1).unwrap();
        assert_eq!(format!("{target:?}").len(), 2 + 1 + 2 * 511 + 3, "{target}");
        let json = serde_json::to_string(agent).unwrap();
        assert!(json.len() <= 2 + 128 + 3, "{json}");
    }

    /// Any target: no panic (a cut inside a character), and a value after a spelled-out
    /// `token=` never shows past its third character.
    #[test]
    fn token_cutting_holds_for_any_target() {
        const PIECES: [&str; 16] = [
            "%",
            "25",
            "3D",
            "3F",
            "26",
            "token",
            "TOK%65N",
            "=",
            "&",
            "?",
            "\u{e9}",
            "#",
            "secret",
            "a",
            "%2",
            "\u{1f600}",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut seen_secret = 0;
        for _ in 0..200_000 {
            let mut target = String::from("/p?");
            for _ in 0..next() % 12 {
                target.push_str(PIECES[(next() % 16) as usize]);
            }
            let cut = super::without_tokens(&target);
            if target.contains("token=secret") {
                seen_secret += 1;
                assert!(!cut.contains("token=secret"), "{target} -> {cut}");
            }
        }
        assert!(seen_secret > 100, "{seen_secret} targets with a token");
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
        assert_eq!(cut("/plain"), "/plain");
        // A review: wherever noVNC or a browser may carry one (the README's own form).
        assert_eq!(
            cut("/vnc.html?path=websockify%3Ftoken%3Dalicesecret"),
            "/vnc.html?path=websockify%3Ftoken%3Dali..."
        );
        assert_eq!(
            cut("/vnc.html?path=websockify%253Ftoken%253Dalicesecret%2526x%253D1"),
            "/vnc.html?path=websockify%253Ftoken%253Dali...%2526x%253D1"
        );
        assert_eq!(
            cut("/vnc.html?x=1?token=alicesecret"),
            "/vnc.html?x=1?token=ali..."
        );
        assert_eq!(
            cut("/a?path=w%3Ftok%2565n%3D%61%6C%69%63%65&b=2"),
            "/a?path=w%3Ftok%2565n%3D%61%6C%69...&b=2"
        );
        assert_eq!(cut("/a?csrf_token=abcdef"), "/a?csrf_token=abc...");
        assert_eq!(
            cut("/a?token=abcdef&token=ghijkl"),
            "/a?token=abc...&token=ghi..."
        );
        assert_eq!(cut("/a?TOKEN=abcdef#x"), "/a?TOKEN=abc...#x");
        assert_eq!(cut("/a?token=%"), "/a?token=%");
        assert_eq!(cut("/a?x=%zz&token=%"), "/a?x=%zz&token=%");
        assert_eq!(
            cut("/a?token=\u{e9}\u{e9}\u{e9}\u{e9}"),
            "/a?token=\u{e9}\u{e9}\u{e9}..."
        );
        // A second review: a value holds what is encoded deeper than its `=` (the plugin
        // reads `a&bcdefgh` from the first), and `%2541` is three characters to a reader
        // that decodes once.
        assert_eq!(cut("/w?token=a%26bcdefgh"), "/w?token=a%26b...");
        assert_eq!(cut("/w?token=a%23bcdefgh"), "/w?token=a%23b...");
        assert_eq!(
            cut("/v?path=websockify%3Ftoken%3Dab%2526cdefgh"),
            "/v?path=websockify%3Ftoken%3Dab%2526..."
        );
        assert_eq!(
            cut("/v?path=websockify%3Ftoken%3Dabcdef%26x%3D1"),
            "/v?path=websockify%3Ftoken%3Dabc...%26x%3D1"
        );
        assert_eq!(cut("/w?token=%2541%2542SECRET"), "/w?token=%2541...");
        assert_eq!(cut("/w?token=%+1%+1SECRET"), "/w?token=%+1...");
    }
}
