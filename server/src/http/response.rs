//! Responses as bytes (RFC 9112 §4, §6).

pub use protocol_api::extra_fields::ExtraFields;
pub use protocol_api::fields::is_token;
use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// A response the daemon writes itself. Always carries `Content-Length` (even when 0) except
/// for `1xx` and `101`, so the client knows where it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    pub body: Cow<'static, [u8]>,
    /// Send `Connection: close` and close after writing.
    pub close: bool,
    /// The body is not `body` but this many bytes the caller sends after the head (a
    /// file): `Content-Length` says so.
    pub sent_apart: Option<u64>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Cow<'static, [u8]>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
            close: false,
            sent_apart: None,
        }
    }

    /// A plain-text error: the reason as the body, then close.
    pub fn error(status: u16, reason: &str) -> Self {
        let mut response = Response::new(status, format!("{reason}\n").into_bytes());
        response.close = true;
        response.header("Content-Type", "text/plain; charset=utf-8")
    }

    /// `503 Service Unavailable` for a limit that frees up by itself (a stop, a full
    /// server, a client at its share): `Retry-After: 1` (RFC 9110 §10.2.3) tells the client
    /// when to try again, then close.
    pub fn unavailable(reason: &str) -> Self {
        Response::error(503, reason).header("Retry-After", "1")
    }

    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Appends the response to `out`. `date` is the current `Date` value; `head_only` leaves
    /// the body out (an answer to `HEAD`); `extra` are the operator's fields
    /// ([`ExtraFields`]), each left out where the response has its own.
    pub fn write_to(&self, out: &mut Vec<u8>, date: &str, head_only: bool, extra: ExtraFor<'_>) {
        write_status_line(out, self.status);
        // RFC 9110 §8.6: no Content-Length in 1xx and 204; in a 304 only the length a 200
        // would have had, which is simplest left out.
        let bodyless = self.status < 200 || self.status == 204 || self.status == 304;
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut upgrade_in_connection = false;
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case("connection") {
                upgrade_in_connection = true;
                if self.close {
                    continue; // written below together with `close`
                }
            }
            write_header(out, name, value);
        }
        extra.write_beside(
            out,
            self.status,
            self.headers.iter().map(|(name, _)| &**name),
        );
        if self.close {
            write_header(
                out,
                "Connection",
                if upgrade_in_connection {
                    "upgrade, close"
                } else {
                    "close"
                },
            );
        }
        if !bodyless {
            out.extend_from_slice(b"Content-Length: ");
            match self.sent_apart {
                Some(len) => out.extend_from_slice(len.to_string().as_bytes()),
                None => push_decimal(out, self.body.len()),
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !bodyless && !head_only && self.sent_apart.is_none() {
            out.extend_from_slice(&self.body);
        }
    }
}

pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, usize::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

pub fn write_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `100 Continue` (RFC 9110 §15.2.1), sent before reading a body the client holds back.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// [`ExtraFields`] for one connection: over TLS or not.
#[derive(Debug, Clone, Copy)]
pub struct ExtraFor<'a> {
    fields: &'a ExtraFields,
    secure: bool,
}

impl ExtraFor<'_> {
    /// None, for a writer with no operator's fields (tests).
    pub const NONE: ExtraFor<'static> = ExtraFor {
        fields: &ExtraFields::NONE,
        secure: false,
    };

    /// `fields` as a connection over TLS (`secure`) or not gets them.
    pub fn new(fields: &ExtraFields, secure: bool) -> ExtraFor<'_> {
        ExtraFor { fields, secure }
    }

    /// Writes, for an answer of `status`, each field whose name is not among `present`.
    pub fn write_beside<'a>(
        &self,
        out: &mut Vec<u8>,
        status: u16,
        present: impl Iterator<Item = &'a str> + Clone,
    ) {
        for (name, value) in self.fields.for_answer(status, self.secure) {
            if !present.clone().any(|p| p.eq_ignore_ascii_case(name)) {
                write_header(out, name, value);
            }
        }
    }
}

/// True when `value` can be sent as a field value: no CR, LF or NUL (RFC 9110 §5.5).
pub fn is_field_value(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The `Date` value, formatted at most once a second.
pub struct DateCache {
    second: u64,
    text: String,
}

impl Default for DateCache {
    fn default() -> Self {
        DateCache {
            second: u64::MAX,
            text: String::new(),
        }
    }
}

impl DateCache {
    pub fn now(&mut self) -> &str {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        if second != self.second {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_close_and_carry_their_length() {
        let mut out = Vec::new();
        Response::error(400, "missing Host header").write_to(&mut out, "D", false, ExtraFor::NONE);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 400 Bad Request\r\nDate: D\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Connection: close\r\nContent-Length: 20\r\n\r\nmissing Host header\n"
        );
    }

    #[test]
    fn rfc9110_15_5_22_upgrade_required_keeps_connection_upgrade_when_closing() {
        let response = Response::new(426, &b""[..])
            .header("Upgrade", "echo, websocket")
            .header("Connection", "upgrade")
            .closing();
        let mut out = Vec::new();
        response.write_to(&mut out, "D", true, ExtraFor::NONE);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Upgrade: echo, websocket\r\n"), "{text}");
        assert!(text.contains("Connection: upgrade, close\r\n"), "{text}");
    }

    #[test]
    fn extra_fields_are_added_where_the_response_has_none_of_its_own() {
        let extra = ExtraFields::parse(
            "Strict-Transport-Security: max-age=63072000; includeSubDomains\r\n\
             \n  Cache-Control:  no-cache, no-store \t\nX-Empty:",
        )
        .unwrap();
        let mut out = Vec::new();
        Response::new(200, &b"ok"[..])
            .header("cache-control", "no-store")
            .write_to(&mut out, "D", false, ExtraFor::new(&extra, true));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nDate: D\r\ncache-control: no-store\r\n\
             Strict-Transport-Security: max-age=63072000; includeSubDomains\r\n\
             X-Empty: \r\nContent-Length: 2\r\n\r\nok"
        );
        // Not over cleartext (RFC 6797 §7.2), and nothing on an error.
        let mut out = Vec::new();
        Response::new(301, &b""[..]).write_to(&mut out, "D", false, ExtraFor::new(&extra, false));
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Cache-Control: no-cache, no-store\r\n"),
            "{text}"
        );
        assert!(!text.contains("Strict-Transport-Security"), "{text}");
        let mut out = Vec::new();
        Response::unavailable("full").write_to(&mut out, "D", false, ExtraFor::new(&extra, true));
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("Cache-Control") && !text.contains("X-Empty"),
            "{text}"
        );
    }

    #[test]
    fn decimals() {
        for n in [0usize, 7, 10, 426, 1 << 40] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    /// Every status the daemon answers has its phrase (206, 304, 412, 414 and 416 went out
    /// as `HTTP/1.1 414 \r\n`).
    #[test]
    fn every_status_sent_has_its_reason_phrase() {
        let sent = [
            100, 101, 200, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409,
            412, 413, 414, 416, 417, 426, 429, 431, 500, 501, 502, 503, 504, 505,
        ];
        for status in sent {
            assert!(!reason_phrase(status).is_empty(), "{status}");
        }
    }

    #[test]
    fn field_checks() {
        assert!(is_token("Sec-WebSocket-Protocol") && !is_token("Bad Name") && !is_token(""));
        assert!(is_field_value("a, b") && !is_field_value("a\r\nInjected: 1"));
    }
}
