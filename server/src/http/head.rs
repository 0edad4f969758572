//! The request head: request line and header fields (RFC 9112 §3, §5), and the framing and
//! connection facts the server needs from them.
//!
//! ```text
//! HTTP-message   = start-line CRLF *( field-line CRLF ) CRLF [ message-body ]
//! request-line   = method SP request-target SP HTTP-version
//! field-line     = field-name ":" OWS field-value OWS
//! ```
//!
//! Syntax is `httparse`'s job (strict: no obsolete line folding, no bare spaces where the
//! grammar has none). What it leaves to the server is checked here, each with the status
//! RFC 9112 names:
//! - a request target longer than its limit (RFC 9112 §3: "a server that receives a
//!   request-target longer than any URI it wishes to parse MUST respond with a 414"): `414`;
//! - a head larger than the limit, or with more fields than we keep: `431`;
//! - HTTP/1.1 without exactly one `Host`, a `Host` that is no `uri-host [":" port]`, a
//!   target with a fragment (RFC 9112 §3.2): `400`;
//! - `Transfer-Encoding` with `Content-Length`, differing `Content-Length` values, an invalid
//!   `Content-Length`, a `Transfer-Encoding` not ending in `chunked` (§6.1, §6.3): `400`;
//!   a transfer coding other than `chunked`: `501`;
//! - an `Expect` other than `100-continue` (RFC 9110 §10.1.1): `417`;
//! - HTTP/1.2 to 1.9 are read as HTTP/1.1, another major version is `505` (RFC 9110 §6.2).

use super::{list_items, HttpError, Span};

/// Most header fields kept per request; more is answered with `431`.
pub const MAX_HEADERS: usize = 64;

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    None,
    Fixed(u64),
    Chunked,
}

/// A parsed and checked request head. Spans point into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: Span,
    pub target: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    pub headers: Vec<(Span, Span)>,
    /// Bytes of the head, blank line included; the body (or the next request) starts here.
    pub len: usize,
    pub body: BodyLength,
    /// The client wants the connection closed after this exchange (`Connection: close`, or
    /// HTTP/1.0, which we never keep alive).
    pub close: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// HTTP/1.1 with `upgrade` in `Connection` and a non-empty `Upgrade` (RFC 9110 §7.8).
    pub wants_upgrade: bool,
}

/// Tells when a head arriving piece by piece is worth parsing: its blank line has arrived,
/// it is over a limit, or its request line just arrived (checked once, so garbage gets its
/// `400` at once). Each byte is scanned once, so a head sent a byte at a time costs linear
/// time, not the quadratic cost of parsing it again from its start on every read.
#[derive(Debug, Default, Clone)]
pub struct HeadScanner {
    /// Bytes of the input already searched.
    scanned: usize,
    /// The request line has begun (empty lines before it are skipped, RFC 9112 §2.2).
    in_line: bool,
    /// Where the request target begins (after the method's space), once seen; and whether
    /// the space after it came.
    target_start: Option<usize>,
    target_ended: bool,
    /// The request line was complete and checked.
    line_checked: bool,
}

impl HeadScanner {
    /// True when [`parse`] on `input` (which only grows between calls) can say something it
    /// could not before.
    pub fn may_be_complete(&mut self, input: &[u8], limits: Limits) -> bool {
        if input.len() > limits.head {
            return true; // 431, or a complete head that is too large
        }
        let from = self.scanned.saturating_sub(2).min(input.len());
        let new = &input[from.max(if self.line_checked { 0 } else { self.scanned })..];
        let overlap = &input[from..];
        self.scanned = input.len();
        if !self.line_checked {
            let first = input.len() - new.len();
            for (i, &byte) in new.iter().enumerate() {
                if !self.in_line {
                    if byte == b'\r' || byte == b'\n' {
                        continue; // an empty line before the request line
                    }
                    self.in_line = true;
                }
                match byte {
                    b'\n' => {
                        self.line_checked = true;
                        return true; // the request line is whole: check it now
                    }
                    b' ' if self.target_start.is_none() => {
                        self.target_start = Some(first + i + 1);
                    }
                    b' ' => self.target_ended = true,
                    // A byte no request line can hold (a control byte: TLS spoken to this
                    // port, or any binary): parse now, for the 400 at once, not a 408 later.
                    byte if cannot_start_a_head(byte) => return true,
                    _ => {}
                }
            }
            // The target arriving is already longer than the limit: 414 now.
            return match (self.target_start, self.target_ended) {
                (Some(start), false) => input.len() - start > limits.target,
                _ => false,
            };
        }
        head_end(overlap).is_some()
    }
}

/// True when `bytes` hold a request line still without its end whose target, as far as it
/// has arrived, is already longer than `limit`.
pub fn partial_target_too_long(bytes: &[u8], limit: usize) -> bool {
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[start..];
    if line.contains(&b'\n') {
        return false; // a whole line: httparse reads its target
    }
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return false; // no target yet (the head limit bounds a long method)
    };
    let target = &line[space + 1..];
    !target.contains(&b' ') && target.len() > limit
}

/// True for a byte that cannot appear in a request line (RFC 9112 §3: tokens, a target of
/// visible characters, single spaces) before its line end.
pub fn cannot_start_a_head(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\r') || byte == 0x7f
}

/// Where a head ends in `bytes`: just past the blank line. httparse accepts `\n` as well
/// as `\r\n` line ends, so a blank line is `\n` followed by `\n` or `\r\n`.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = bytes[at..].iter().position(|&b| b == b'\n') {
        let end = at + i + 1;
        match &bytes[end..] {
            [b'\n', ..] => return Some(end + 1),
            [b'\r', b'\n', ..] => return Some(end + 2),
            _ => at = end,
        }
    }
    None
}

/// The outcome of parsing what has arrived so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Complete(Head),
    /// Not a whole head yet, and not over the limit: read more.
    Partial,
}

impl Head {
    pub fn method<'a>(&self, bytes: &'a [u8]) -> &'a str {
        self.method.str(bytes)
    }

    pub fn target<'a>(&self, bytes: &'a [u8]) -> &'a str {
        self.target.str(bytes)
    }

    /// The target without its query.
    pub fn path<'a>(&self, bytes: &'a [u8]) -> &'a str {
        protocol_api::fields::path(self.target(bytes))
    }

    /// Values of every field called `name` (case-insensitive), in order.
    pub fn values<'a>(
        &'a self,
        bytes: &'a [u8],
        name: &'a str,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.get(bytes).eq_ignore_ascii_case(name.as_bytes()))
            .map(move |(_, v)| v.get(bytes))
    }

    /// Elements of the list field `name` across all its lines.
    pub fn list<'a>(
        &'a self,
        bytes: &'a [u8],
        name: &'a str,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.values(bytes, name).flat_map(list_items)
    }
}

/// The sizes a head may have.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole head, request line and fields.
    pub head: usize,
    /// The request target alone.
    pub target: usize,
}

const TARGET_TOO_LONG: HttpError = HttpError::new(414, "request target longer than the limit");

/// Parses the head at the start of `bytes`, within `limits`.
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Parsed, HttpError> {
    const TOO_LARGE: HttpError = HttpError::new(431, "request head larger than the limit");
    let max = limits.head;
    // One order of checks, whatever part of the head has arrived: httparse's own refusals
    // (it reads left to right, so a part shows the same fault as the whole), then the
    // target's length, then the head's size, then the rest.
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            // A target too long is known once the request line is (httparse has read it),
            // or, before its end, once the part of it that arrived is.
            let too_long = request.path.is_some_and(|path| path.len() > limits.target)
                || partial_target_too_long(bytes, limits.target);
            if too_long {
                return Err(TARGET_TOO_LONG);
            }
            if bytes.len() > max {
                return Err(TOO_LARGE);
            }
            return Ok(Parsed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(431, "too many header fields"))
        }
        Err(httparse::Error::Version) => return other_version(bytes, limits),
        Err(httparse::Error::Token) => {
            return Err(HttpError::new(400, "malformed method or request line"))
        }
        Err(httparse::Error::HeaderName) => {
            return Err(HttpError::new(400, "malformed header name"))
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(HttpError::new(400, "malformed header value"))
        }
        Err(_) => return Err(HttpError::new(400, "malformed request head")),
    };
    let (Some(method), Some(target), Some(version_minor)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpError::new(400, "incomplete request line"));
    };
    if target.len() > limits.target {
        return Err(TARGET_TOO_LONG);
    }
    if len > max {
        return Err(TOO_LARGE);
    }
    if std::str::from_utf8(target.as_bytes()).is_err() || target.is_empty() {
        return Err(HttpError::new(400, "malformed request target"));
    }
    let headers: Vec<(Span, Span)> = request
        .headers
        .iter()
        .map(|h| (Span::of(bytes, h.name.as_bytes()), Span::of(bytes, h.value)))
        .collect();
    let mut head = Head {
        method: Span::of(bytes, method.as_bytes()),
        target: Span::of(bytes, target.as_bytes()),
        version_minor,
        headers,
        len,
        body: BodyLength::None,
        close: version_minor == 0,
        expect_continue: false,
        wants_upgrade: false,
    };
    check(&mut head, bytes)?;
    Ok(Parsed::Complete(head))
}

/// A request line whose version `httparse` refused: HTTP/1.2 to 1.9 are read as 1.1 (RFC
/// 9110 §6.2: "a recipient that receives a message with a major version number that it
/// implements and a minor version number higher than what it implements SHOULD process
/// the message as if it were in the highest minor version within that major version to
/// which the recipient is conformant"), another major version is `505` (§15.6.6), and
/// anything that is no `HTTP-version` is `400`.
///
/// ```text
/// HTTP-version  = HTTP-name "/" DIGIT "." DIGIT
/// ```
fn other_version(bytes: &[u8], limits: Limits) -> Result<Parsed, HttpError> {
    const MALFORMED: HttpError = HttpError::new(400, "malformed HTTP version");
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[start..];
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    // httparse read the method and the target: the version follows the second space.
    let mut spaces = line.iter().enumerate().filter(|&(_, &b)| b == b' ');
    let (Some((method_end, _)), Some((at, _))) = (spaces.next(), spaces.next()) else {
        return Err(MALFORMED);
    };
    let target_len = at - method_end - 1;
    let version = &line[at + 1..];
    let version = version.strip_suffix(b"\r").unwrap_or(version);
    let ended = start + line.len() < bytes.len();
    let shape = b"HTTP/0.0";
    let fits = version.len() <= shape.len()
        && version.iter().zip(shape).all(|(&b, &s)| match s {
            b'0' => b.is_ascii_digit(),
            s => b == s,
        });
    match (fits, version.len() == shape.len(), ended) {
        (false, _, _) | (true, false, true) => Err(MALFORMED),
        // The line is not whole yet: what `parse` says of a part (its target, then its size).
        (true, _, false) if target_len > limits.target => Err(TARGET_TOO_LONG),
        (true, _, false) if bytes.len() > limits.head => {
            Err(HttpError::new(431, "request head larger than the limit"))
        }
        (true, _, false) => Ok(Parsed::Partial),
        (true, true, true) if version[5] == b'1' => {
            // 1.2 and later: parsed as 1.1, in a copy of the head (the spans point into
            // `bytes`, where it is the same length); not of what is pipelined behind it (a
            // review: copying 16 KiB of requests for each cost 0.3 us a request).
            let end = head_end(&bytes[start..]).map_or(bytes.len(), |end| start + end);
            let mut as_1_1 = bytes[..end].to_vec();
            as_1_1[start + at + 1 + 7] = b'1';
            parse(&as_1_1, limits)
        }
        (true, true, true) => Err(HttpError::new(505, "HTTP major version not supported")),
    }
}

/// The checks `httparse` leaves to the server; fills in the derived facts.
fn check(head: &mut Head, bytes: &[u8]) -> Result<(), HttpError> {
    if head.version_minor == 1 {
        match head.values(bytes, "host").count() {
            1 => {}
            0 => return Err(HttpError::new(400, "missing Host header")),
            _ => return Err(HttpError::new(400, "more than one Host header")),
        }
    }
    absolute_form(head, bytes)?;
    // RFC 9112 §3.2: "a Host header field with an invalid field value" is 400, as is a
    // target with a fragment, which no form of request-target has (§3.2).
    if head.values(bytes, "host").any(|host| !is_valid_host(host)) {
        return Err(HttpError::new(400, "invalid Host header"));
    }
    if head.target.get(bytes).contains(&b'#') {
        return Err(HttpError::new(400, "a fragment in the request target"));
    }
    head.body = body_length(head, bytes)?;

    let (mut close, mut connection_upgrade) = (false, false);
    for token in head.list(bytes, "connection") {
        close |= token.eq_ignore_ascii_case(b"close");
        connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
    }
    head.close |= close;
    let upgrade_offered = head.list(bytes, "upgrade").next().is_some();
    head.wants_upgrade = head.version_minor >= 1 && connection_upgrade && upgrade_offered;

    let mut expect_continue = false;
    for expectation in head.list(bytes, "expect") {
        if !expectation.eq_ignore_ascii_case(b"100-continue") {
            return Err(HttpError::new(417, "unsupported expectation"));
        }
        expect_continue = true;
    }
    head.expect_continue = expect_continue;
    Ok(())
}

/// RFC 9112 §3.2.2: "a server MUST accept the absolute-form in requests" (`GET
/// http://host/path`, what clients send to a proxy), and its authority is the request's
/// host: "the origin server MUST ignore the received Host header field (if any) and instead
/// use the host information of the request-target". From here on the target is its
/// origin-form (what routes, static files and plugins look at) and `Host` the authority.
/// Taken for `http` and `https` only; one without a path, or with userinfo (RFC 9110
/// §4.2.4: "treat the presence of userinfo ... as an error"), is `400`.
fn absolute_form(head: &mut Head, bytes: &[u8]) -> Result<(), HttpError> {
    let target = head.target.get(bytes);
    let Some(colon) = target.iter().position(|&b| b == b':') else {
        return Ok(());
    };
    let scheme = &target[..colon];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Ok(());
    }
    let malformed = HttpError::new(400, "malformed absolute-form request target");
    let after = target[colon + 1..].strip_prefix(b"//").ok_or(malformed)?;
    let end = (after.iter())
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(after.len());
    let (authority, path) = after.split_at(end);
    if authority.is_empty() || authority.contains(&b'@') || !path.starts_with(b"/") {
        return Err(malformed);
    }
    head.target = Span::of(bytes, path);
    for (name, value) in &mut head.headers {
        if name.get(bytes).eq_ignore_ascii_case(b"host") {
            *value = Span::of(bytes, authority);
        }
    }
    Ok(())
}

/// Whether `value` is a `Host` field's value (RFC 9110 §7.2: `uri-host [ ":" port ]`, RFC
/// 3986 §3.2.2-3), or empty (a target without an authority):
///
/// ```text
/// host       = IP-literal / IPv4address / reg-name
/// IP-literal = "[" ( IPv6address / IPvFuture ) "]"
/// reg-name   = *( unreserved / pct-encoded / sub-delims )
/// port       = *DIGIT
/// ```
///
/// An IPv6 literal may name its zone (`[fe80::1%25eth0]`, RFC 6874).
fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&b| b == b']') else {
                return false;
            };
            let (inside, after) = (&literal[..end], &literal[end + 1..]);
            let literal_char =
                |b: &u8| b.is_ascii_alphanumeric() || b":.-_~!$&'()*+,;=%".contains(b);
            if inside.is_empty() || !inside.iter().all(literal_char) {
                return false;
            }
            match after.strip_prefix(b":") {
                Some(port) => (&b""[..], port),
                None if after.is_empty() => (&b""[..], &b""[..]),
                None => return false,
            }
        }
        None => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &b""[..]),
        },
    };
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' if host
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => {}
            _ => return false,
        }
        i += 1;
    }
    port.iter().all(u8::is_ascii_digit)
}

/// RFC 9112 §6.3: how the body is delimited, refusing every ambiguous shape.
fn body_length(head: &Head, bytes: &[u8]) -> Result<BodyLength, HttpError> {
    // Any Transfer-Encoding line counts, an empty one (or `,` alone) too: it has no
    // element, so its last is not chunked (§6.3: 400); looked at for its elements alone, a
    // body beside it was taken by its Content-Length where a front end may not have.
    if head.values(bytes, "transfer-encoding").next().is_some() {
        let codings = head.list(bytes, "transfer-encoding");
        if head.values(bytes, "content-length").next().is_some() {
            return Err(HttpError::new(
                400,
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if head.version_minor == 0 {
            return Err(HttpError::new(
                400,
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        let codings: Vec<&[u8]> = codings.collect();
        let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
        if !codings.last().is_some_and(chunked) {
            return Err(HttpError::new(
                400,
                "Transfer-Encoding does not end in chunked",
            ));
        }
        if codings.len() > 1 {
            return if codings[..codings.len() - 1].iter().any(chunked) {
                Err(HttpError::new(400, "chunked applied more than once"))
            } else {
                Err(HttpError::new(501, "unsupported transfer coding"))
            };
        }
        return Ok(BodyLength::Chunked);
    }
    // Several Content-Length lines or list elements are allowed only when all agree.
    let mut length = None;
    for value in head.values(bytes, "content-length") {
        for item in value.split(|&b| b == b',') {
            let item = super::trim_ows(item);
            let n = parse_decimal(item).ok_or(HttpError::new(400, "invalid Content-Length"))?;
            if length.is_some_and(|seen| seen != n) {
                return Err(HttpError::new(400, "differing Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => BodyLength::None,
        Some(n) => BodyLength::Fixed(n),
    })
}

/// `1*DIGIT`, no sign, no white space, at most 18 digits (no overflow).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        head: 16384,
        target: 8192,
    };

    fn head(bytes: &[u8]) -> Head {
        match parse(bytes, LIMITS) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn error(bytes: &[u8]) -> HttpError {
        parse(bytes, LIMITS).expect_err("expected an error")
    }

    #[test]
    fn parses_an_upgrade_request_in_place() {
        let bytes = b"GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\nEARLY";
        let h = head(bytes);
        assert_eq!(h.method(bytes), "GET");
        assert_eq!(h.target(bytes), "/chat?x=1");
        assert_eq!(h.path(bytes), "/chat");
        assert_eq!(h.version_minor, 1);
        assert_eq!(h.len, bytes.len() - b"EARLY".len());
        assert!(h.wants_upgrade && !h.close && !h.expect_continue);
        assert_eq!(h.body, BodyLength::None);
        assert_eq!(
            h.list(bytes, "upgrade").collect::<Vec<_>>(),
            vec![&b"echo"[..]]
        );
    }

    /// RFC 9112 §3.2.2: the absolute-form is accepted, its authority taken for `Host`.
    #[test]
    fn rfc9112_3_2_2_an_absolute_form_target_is_its_path_and_its_authority_the_host() {
        let bytes = b"GET HTTP://a.example:8080/chat?x=1 HTTP/1.1\r\nHost: other\r\n\r\n";
        let h = head(bytes);
        assert_eq!(h.target(bytes), "/chat?x=1");
        assert_eq!(h.path(bytes), "/chat");
        let hosts: Vec<&[u8]> = h.values(bytes, "host").collect();
        assert_eq!(hosts, [&b"a.example:8080"[..]]);
        // Another scheme, or no scheme at all, is left as it came.
        let bytes = b"GET urn:x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head(bytes).target(bytes), "urn:x");
        for bad in [
            &b"GET http://a.example HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET http://a.example?x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http:/x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://u@a.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(error(bad).status, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn partial_until_the_blank_line() {
        let full = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(
                parse(&full[..cut], LIMITS),
                Ok(Parsed::Partial),
                "cut at {cut}"
            );
        }
        assert!(matches!(parse(full, LIMITS), Ok(Parsed::Complete(_))));
    }

    #[test]
    fn rfc9110_7_8_upgrade_needs_connection_upgrade_and_http_1_1() {
        let no_connection = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\n\r\n";
        assert!(!head(no_connection).wants_upgrade);
        let http10 = b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
        let h = head(http10);
        assert!(!h.wants_upgrade && h.close);
        let case = b"GET / HTTP/1.1\r\nHost: a\r\nconnection: UPGRADE\r\nupgrade: Echo\r\n\r\n";
        assert!(head(case).wants_upgrade);
        let empty = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: ,\r\n\r\n";
        assert!(!head(empty).wants_upgrade);
    }

    #[test]
    fn rfc9112_3_2_host_is_required_once_on_http_1_1() {
        assert_eq!(
            error(b"GET / HTTP/1.1\r\n\r\n").reason,
            "missing Host header"
        );
        assert_eq!(
            error(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").status,
            400
        );
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").wants_upgrade);
    }

    /// From run 26's review: `Host: a b` was served; RFC 9112 §3.2 says 400 for a Host
    /// with an invalid value. A fragment is no part of a request target.
    #[test]
    fn rfc9112_3_2_an_invalid_host_or_a_fragment_is_400() {
        let with_host = |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        for good in [
            "a",
            "",
            "example.com:8080",
            "127.0.0.1",
            "[::1]:9000",
            "[fe80::1%25eth0]",
            "under_score.example.",
            "xn--bcher-kva.example:",
            "a%41b",
        ] {
            let request = with_host(good);
            assert!(
                matches!(parse(request.as_bytes(), LIMITS), Ok(Parsed::Complete(_))),
                "{good:?}"
            );
        }
        for bad in [
            "a b", "a/b", "a@b", "a:80x", "[::1", "[::1]x", "[]", "a%4", "a\"b", "h:1:2",
        ] {
            assert_eq!(
                error(with_host(bad).as_bytes()).reason,
                "invalid Host header",
                "{bad:?}"
            );
        }
        assert_eq!(
            error(b"GET http://a b/ HTTP/1.1\r\nHost: a\r\n\r\n").status,
            400,
            "the absolute-form's authority is the Host"
        );
        assert_eq!(
            error(b"GET /index.html#top HTTP/1.1\r\nHost: a\r\n\r\n").reason,
            "a fragment in the request target"
        );
    }

    #[test]
    fn rfc9112_6_3_smuggling_shapes_are_refused() {
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            error(both),
            HttpError::new(400, "both Transfer-Encoding and Content-Length")
        );
        let differing =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(error(differing).reason, "differing Content-Length values");
        let in_list = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n";
        assert_eq!(error(in_list).status, 400);
        let signed = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n";
        assert_eq!(error(signed).reason, "invalid Content-Length");
        let not_last = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(error(not_last).status, 400);
        let gzip = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(error(gzip).status, 501);
        let te10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(error(te10).status, 400);
        // From an attacker's review: an empty Transfer-Encoding (or commas alone) beside a
        // Content-Length was not seen, and the body was taken by the Content-Length.
        for te in ["", ",", " , ,"] {
            let empty = format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:{te}\r\nContent-Length: 5\r\n\r\n"
            );
            assert_eq!(error(empty.as_bytes()).status, 400, "{te:?}");
            let alone = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:{te}\r\n\r\n");
            assert_eq!(
                error(alone.as_bytes()).reason,
                "Transfer-Encoding does not end in chunked",
                "{te:?}"
            );
        }
    }

    #[test]
    fn rfc9112_6_3_agreeing_content_lengths_are_one() {
        let same =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n";
        assert_eq!(head(same).body, BodyLength::Fixed(5));
        let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(head(chunked).body, BodyLength::Chunked);
    }

    #[test]
    fn rfc9112_5_2_obsolete_line_folding_is_refused() {
        let folded = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n";
        assert_eq!(error(folded).status, 400);
    }

    #[test]
    fn malformed_request_lines_are_400() {
        for bad in [
            &b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / FTP/1.1\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
        ] {
            assert_eq!(error(bad).status, 400, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            error(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n").status,
            400
        );
    }

    /// RFC 9110 §6.2: a later minor version of HTTP/1 is read as HTTP/1.1, another major
    /// version is `505`, a version that is none is `400`, each whether it came whole or not.
    #[test]
    fn rfc9110_6_2_a_later_minor_version_is_read_as_1_1_and_another_major_is_505() {
        let bytes =
            b"GET /chat HTTP/1.7\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nX";
        let h = head(bytes);
        assert_eq!((h.version_minor, h.target(bytes)), (1, "/chat"));
        assert!(h.wants_upgrade && !h.close);
        assert_eq!(h.len, bytes.len() - 1);
        // Still HTTP/1.1's rules: a Host is required.
        assert_eq!(error(b"GET / HTTP/1.2\r\n\r\n").status, 400);
        assert_eq!(
            parse(b"\r\nGET / HTTP/1.2\r\nHost: a\r\n", LIMITS),
            Ok(Parsed::Partial)
        );
        for (input, status) in [
            (&b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"[..], 505),
            (b"GET / HTTP/3.0\nHost: a\n\n", 505),
            (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", 505),
            (b"GET / HTTP/0.9\r\n\r\n", 505),
            (b"GET / HTTP/1.12\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/2\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTPS/1.1\r\nHost: a\r\n\r\n", 400),
        ] {
            let shown = String::from_utf8_lossy(input);
            assert_eq!(error(input).status, status, "{shown:?}");
            let verdict = first_verdict_in_pieces(input, LIMITS);
            assert_eq!(
                verdict.map(|v| v.map_err(|e| e.status)),
                Some(Err(status)),
                "{shown:?}"
            );
        }
        // Found by fuzzing: a version not whole yet after a target over its limit is 414,
        // as that target is with any other version.
        let limits = Limits {
            head: 4096,
            target: 32,
        };
        let long = format!("GET /{} HTTP/3", "a".repeat(40));
        assert_eq!(parse(long.as_bytes(), limits), Err(TARGET_TOO_LONG));
        // Found by fuzzing: empty lines before the request line are not the head's end.
        let bytes = b"\r\n\r\nGET /t HTTP/1.2\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\n";
        assert_eq!(head(bytes).target(bytes), "/t");
        assert_eq!(
            head(bytes).len,
            bytes.len() - b"GET /next HTTP/1.1\r\n".len()
        );
        let whole = b"GET / HTTP/1.9\r\nHost: a\r\n\r\n";
        let verdict = first_verdict_in_pieces(whole, LIMITS);
        assert!(
            matches!(verdict, Some(Ok(Parsed::Complete(_)))),
            "{verdict:?}"
        );
    }

    #[test]
    fn rfc9112_2_2_head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nBODY"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    /// Fed a byte at a time, the scanner says "parse now" at the request line and at the
    /// blank line, and parsing then agrees with parsing the whole head at once.
    #[test]
    fn the_scanner_finds_what_a_whole_parse_finds() {
        let full = b"GET /x HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nNEXT";
        let mut scanner = HeadScanner::default();
        let mut said = Vec::new();
        for end in 1..=full.len() {
            if scanner.may_be_complete(&full[..end], LIMITS) {
                said.push(end);
                if let Ok(Parsed::Complete(head)) = parse(&full[..end], LIMITS) {
                    assert_eq!(head, self::head(full));
                    break;
                }
            }
        }
        assert_eq!(said, [17, 34], "the request line, then the blank line");
        // A TLS ClientHello on this port: parsed, and refused, at its first bytes.
        let mut scanner = HeadScanner::default();
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        assert!(scanner.may_be_complete(&hello, LIMITS));
        assert_eq!(parse(&hello, LIMITS).map_err(|e| e.status), Err(400));
    }

    /// Found by fuzzing (fuzz/, http_head): the scanner stops where a whole parse would
    /// decide, for each input below, fed a byte at a time.
    fn first_verdict_in_pieces(input: &[u8], limits: Limits) -> Option<Result<Parsed, HttpError>> {
        let mut scanner = HeadScanner::default();
        (1..=input.len()).find_map(|end| {
            let parse_now = scanner.may_be_complete(&input[..end], limits);
            match parse_now.then(|| parse(&input[..end], limits)) {
                Some(Ok(Parsed::Partial)) | None => None,
                verdict => verdict,
            }
        })
    }

    #[test]
    fn fuzz_empty_lines_before_a_malformed_request_line_still_get_400_at_once() {
        let verdict = first_verdict_in_pieces(b"\r\n\nWWWWWWWP/ x\r\nHost: a", LIMITS);
        assert_eq!(verdict.map(|v| v.map_err(|e| e.status)), Some(Err(400)));
    }

    #[test]
    fn fuzz_a_long_method_with_a_short_target_is_not_414() {
        let limits = Limits {
            head: 4096,
            target: 32,
        };
        let mut input = vec![b'%'; 45];
        input.extend_from_slice(b" /aaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n");
        let verdict = first_verdict_in_pieces(&input, limits);
        assert!(
            matches!(verdict, Some(Ok(Parsed::Complete(_)))),
            "{verdict:?}"
        );
    }

    #[test]
    fn fuzz_a_target_known_too_long_is_414_before_the_head_ends() {
        let limits = Limits {
            head: 4096,
            target: 32,
        };
        let input = format!("GET /{} HTTP/1.1\r\nHost: a", "a".repeat(60));
        assert_eq!(parse(input.as_bytes(), limits), Err(TARGET_TOO_LONG));
    }

    #[test]
    fn rfc9112_3_a_target_over_its_limit_gets_414_complete_or_not() {
        let limits = Limits {
            head: 16384,
            target: 100,
        };
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 99));
        let ok = [&line[..], b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
        assert!(
            matches!(parse(&ok, limits), Ok(Parsed::Complete(_))),
            "100 bytes fit"
        );
        line.push(b'a');
        let long = [&line[..], b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
        assert_eq!(parse(&long, limits), Err(TARGET_TOO_LONG));
        line.extend(std::iter::repeat_n(b'a', 40));
        assert_eq!(
            parse(&line, limits),
            Err(TARGET_TOO_LONG),
            "known before the line ends"
        );
    }

    #[test]
    fn limits_give_431() {
        let small = Limits {
            head: 256,
            target: 8192,
        };
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 300));
        assert_eq!(
            parse(&big, small).unwrap_err().status,
            431,
            "partial head over the limit"
        );
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse(&big, small).unwrap_err().status,
            431,
            "complete head over the limit"
        );
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let roomy = Limits {
            head: 1 << 20,
            target: 8192,
        };
        assert_eq!(parse(&many, roomy).unwrap_err().status, 431);
    }

    #[test]
    fn connection_close_and_expect() {
        let bytes = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
        let h = head(bytes);
        assert!(h.close && h.expect_continue);
        assert_eq!(h.body, BodyLength::Fixed(2));
        assert_eq!(
            error(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: tea\r\n\r\n").status,
            417
        );
    }
}
