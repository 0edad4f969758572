//! What the relay does to a request's and a response's header fields, and the answers it
//! gives itself. Pure: fields in, a field block or a reason out.

use crate::config::{Config, Route};
use crate::hpack::{self, Fields};
use protocol_api::extra_fields::ExtraFields;
use protocol_api::path::RequestPath;
use std::net::SocketAddr;

/// Fields of one connection, never forwarded; in HTTP/2 their presence makes a message
/// malformed (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
];

/// Fields the relay writes itself: what a client says in them is not evidence of anything,
/// so they are replaced, never appended to. `x-real-ip` is nginx's (`proxy_set_header
/// X-Real-IP $remote_addr`, as its docs advise): backends written for nginx read the
/// client from it, and passed on it was the client's to choose. (`host` is replaced too:
/// it is the `:authority` the request came with.)
const FORWARDING: &[&[u8]] = &[b"x-forwarded-for", b"forwarded", b"x-real-ip"];

/// Whether `name` (lowercase) is one of the [`FORWARDING`] fields, spelt with `-` or `_`:
/// CGI and WSGI backends (and nginx's `$http_` variables) read `x_real_ip` as
/// `HTTP_X_REAL_IP`, as they read `x-real-ip`, and the client's came first there.
pub(crate) fn is_forwarding(name: &[u8]) -> bool {
    FORWARDING.iter().any(|field| {
        field.len() == name.len()
            && field
                .iter()
                .zip(name)
                .all(|(&f, &n)| f == n || (f == b'-' && n == b'_'))
    })
}

/// A request the relay will not pass on.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Malformed (RFC 9113 §8.1.1): the stream is reset with PROTOCOL_ERROR.
    Malformed(&'static str),
    /// Answered by the relay with this status and text.
    Answer(u16, String),
}

/// A request on its way: where it goes and the block to send there.
#[derive(Debug)]
pub struct Routed {
    /// The index of its route in the configuration.
    pub route: usize,
    pub block: Vec<u8>,
    /// The normalised path, for log lines.
    pub path: String,
    /// `content-length`: the DATA the request must carry, no more, no less (RFC 9113
    /// §8.1.1).
    pub content_length: Option<u64>,
}

/// The fields that say who the client is, the same for every request of a connection but
/// for `Forwarded`'s `host` ([`Forwarding::append`]).
#[derive(Debug)]
pub struct Forwarding {
    /// The client's address: `X-Forwarded-For` and `X-Real-IP`.
    pub client_address: Box<str>,
    /// The usual `Forwarded` value: that of the first request's authority.
    pub forwarded: Box<str>,
    authority: Option<Box<[u8]>>,
    peer: SocketAddr,
    /// `Forwarded`'s `proto`: `http`, or `https` when the daemon terminated TLS.
    proto: &'static str,
}

impl Forwarding {
    pub fn new(peer: SocketAddr) -> Forwarding {
        Forwarding {
            client_address: peer.ip().to_string().into(),
            forwarded: "".into(),
            authority: None,
            peer,
            proto: "http",
        }
    }

    /// The client came over TLS (the daemon's): `proto=https`.
    pub fn over_tls(self) -> Forwarding {
        Forwarding {
            proto: "https",
            ..self
        }
    }

    /// A request's `Forwarded` value, `None` when it is the usual one (set by the first).
    fn for_authority(&mut self, authority: Option<&[u8]>) -> Option<Box<str>> {
        let element = |authority: Option<&[u8]>| -> Box<str> {
            let host = authority.and_then(|a| std::str::from_utf8(a).ok());
            crate::proxy::forwarded_for_element(&self.peer, host, self.proto).into()
        };
        match &self.authority {
            None if self.forwarded.is_empty() => {
                self.forwarded = element(authority);
                self.authority = authority.map(Into::into);
                None
            }
            usual if usual.as_deref() == authority => None,
            _ => Some(element(authority)),
        }
    }

    /// Appends the forwarding fields to a request's block, `own` its `Forwarded` when it is
    /// not the usual one. As literals: a backend connection's encoder indexes them
    /// ([`crate::hpack::encoder`]), so each request after the first carries three bytes of
    /// them; `Forwarded` never indexed when the `:authority` it names came so
    /// (`authority_never`).
    fn append(&self, block: &mut Vec<u8>, own: Option<&str>, authority_never: bool) {
        let address = self.client_address.as_bytes();
        hpack::field(block, b"x-real-ip", address);
        hpack::field(block, b"x-forwarded-for", address);
        let value = own.unwrap_or(&self.forwarded);
        pass_field(block, authority_never, b"forwarded", value.as_bytes());
    }
}

/// Checks a request's fields (RFC 9113 §8.3.1), routes its path and writes the block for
/// the backend: the normalised path, the route's authority, fields the client sent never
/// indexed still so (RFC 7541 §7.1.3), and the client's address in `X-Real-IP`,
/// `X-Forwarded-For` and `Forwarded` ([`Forwarding::append`]). Literals all: the backend
/// connection's encoder writes the block again with its table when it is sent.
pub fn route_request(
    config: &Config,
    fields: &Fields,
    forwarding: &mut Forwarding,
) -> Result<Routed, Refused> {
    let (mut method, mut path, mut authority, mut scheme) = (None, None, None, None);
    // Whether `:path` and `:authority` came never indexed (what carries them on must be).
    let (mut path_never, mut authority_never) = (false, false);
    let mut regular = false;
    for (at, (name, value)) in fields.iter().enumerate() {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular {
                return Err(Refused::Malformed("a pseudo-header after a regular field"));
            }
            let slot = match pseudo {
                b"method" => &mut method,
                b"path" => &mut path,
                b"authority" => &mut authority,
                b"scheme" => &mut scheme,
                _ => return Err(Refused::Malformed("an unknown pseudo-header")),
            };
            if slot.replace(value).is_some() {
                return Err(Refused::Malformed("a pseudo-header twice"));
            }
            check_value(value)?;
            match pseudo {
                b"path" => path_never = fields.is_never_indexed(at),
                b"authority" => authority_never = fields.is_never_indexed(at),
                _ => {}
            }
            continue;
        }
        regular = true;
        check_field(name, value)?;
    }
    let content_length = content_length(fields)?;
    if method == Some(b"CONNECT") {
        return Err(connect(scheme.or(path), authority));
    }
    let (Some(method), Some(_scheme)) = (method, scheme) else {
        return Err(Refused::Malformed(":method or :scheme missing"));
    };
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Err(Refused::Malformed(":path missing"));
    };
    check_request_line(method, path, authority)?;
    let target = std::str::from_utf8(path).map_err(|_| Refused::Malformed(":path is not text"))?;
    let parsed = RequestPath::parse(target).map_err(|e| Refused::Answer(400, e.to_string()))?;
    let (index, route) = match config.route(&parsed) {
        Ok(Some(route)) => (route_index(config, route), route),
        Ok(None) => {
            return Err(Refused::Answer(404, "no route for this path".into()));
        }
        Err(e) => return Err(Refused::Answer(400, e.to_string())),
    };
    let mut block = Vec::with_capacity(64 + fields.list_size() / 2);
    hpack::field(&mut block, b":method", method);
    hpack::field(&mut block, b":scheme", b"http");
    hpack::field(&mut block, b":authority", route.address.as_bytes());
    let path_and_query = parsed.path_and_query();
    pass_field(&mut block, path_never, b":path", path_and_query.as_bytes());
    for (at, (name, value)) in fields.iter().enumerate() {
        if name.starts_with(b":") || name == b"host" || is_forwarding(name) {
            continue;
        }
        pass_field(&mut block, fields.is_never_indexed(at), name, value);
    }
    let own = forwarding.for_authority(authority);
    forwarding.append(&mut block, own.as_deref(), authority_never);
    Ok(Routed {
        route: index,
        block,
        path: parsed.path().to_string(),
        content_length,
    })
}

/// A CONNECT (RFC 9113 §8.5: `:authority` alone, no `:scheme` or `:path`, or it is
/// malformed) asks for a tunnel, which a reverse proxy does not make: `501`, as for a
/// method it does not implement (RFC 9110 §15.6.2). Routed as a path it went on as `/`.
fn connect(scheme_or_path: Option<&[u8]>, authority: Option<&[u8]>) -> Refused {
    match (scheme_or_path, authority) {
        (None, Some(_)) => Refused::Answer(501, "CONNECT is not served here".into()),
        _ => Refused::Malformed("a CONNECT with :scheme or :path, or no :authority"),
    }
}

/// The `content-length` of a message: every value the same number (RFC 9110 §8.6).
fn content_length(fields: &Fields) -> Result<Option<u64>, Refused> {
    let mut length = None;
    for (_, value) in fields.iter().filter(|(n, _)| *n == b"content-length") {
        let n = std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(Refused::Malformed("a content-length that is not a number"))?;
        if length.replace(n).is_some_and(|before| before != n) {
            return Err(Refused::Malformed("content-length values that differ"));
        }
    }
    Ok(length)
}

fn route_index(config: &Config, route: &Route) -> usize {
    config
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, route))
        .unwrap_or(0)
}

/// RFC 9113 §8.2.1 and §8.2.2: names of visible ASCII but uppercase and colon, values
/// without NUL, CR or LF and not beginning or ending with whitespace, no
/// connection-specific field, `te` at most "trailers". A CR LF passed on is a field of the
/// client's making at any backend that writes the request out as HTTP/1.1.
fn check_field(name: &[u8], value: &[u8]) -> Result<(), Refused> {
    if name.is_empty() || name.iter().any(|b| b.is_ascii_uppercase()) {
        return Err(Refused::Malformed("a field name that is not lowercase"));
    }
    if name.iter().any(|&b| b <= 0x20 || b >= 0x7f || b == b':') {
        return Err(Refused::Malformed(
            "a field name with a character it may not have",
        ));
    }
    check_value(value)?;
    if CONNECTION_SPECIFIC.contains(&name) {
        return Err(Refused::Malformed("a connection-specific field"));
    }
    if name == b"te" && !value.eq_ignore_ascii_case(b"trailers") {
        return Err(Refused::Malformed("te other than trailers"));
    }
    Ok(())
}

/// What becomes a request line at any hop that writes HTTP/1.1 must parse as one, as the
/// relay routed it: `:method` a token (RFC 9110 §9.1), `:path` visible ASCII with no space
/// (RFC 9112 §3.2: `GET /admin` as a method, or `/x HTTP/1.0` as a path, would be another
/// request there), `:authority` the characters of an authority only (RFC 3986 §3.2, no
/// userinfo: RFC 9113 §8.3.1), which also makes it safe inside `Forwarded`'s quotes.
fn check_request_line(method: &[u8], path: &[u8], authority: Option<&[u8]>) -> Result<(), Refused> {
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Refused::Malformed("a :method that is not a token"));
    }
    if !path.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(Refused::Malformed(
            "a :path with a space or a control character",
        ));
    }
    if !authority
        .unwrap_or_default()
        .iter()
        .all(|&b| crate::proxy::is_authority_char(b))
    {
        return Err(Refused::Malformed(
            "an :authority with a character an authority may not have",
        ));
    }
    Ok(())
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9113 §8.2.1: a field value holds no NUL, CR or LF, and neither begins nor ends
/// with a space or a tab.
fn check_value(value: &[u8]) -> Result<(), Refused> {
    if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(Refused::Malformed("a field value with NUL, CR or LF"));
    }
    let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    if blank(value.first()) || blank(value.last()) {
        return Err(Refused::Malformed(
            "a field value that begins or ends with whitespace",
        ));
    }
    Ok(())
}

/// What a response's (or trailers') HEADERS tells the relay.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// An interim response (1xx other than 101): more HEADERS follow.
    Interim,
    /// The final response.
    Final,
    /// Trailers (no `:status`).
    Trailers,
}

/// Checks a backend's response fields and writes the block for the client: the backend's
/// fields as sent, connection-specific ones dropped.
pub fn pass_response(fields: &Fields, block: &mut Vec<u8>) -> Result<Response, &'static str> {
    let kind = match fields.get(b":status") {
        None => Response::Trailers,
        Some(s) if s.len() == 3 && s.starts_with(b"1") && s != b"101" => Response::Interim,
        Some(s) if s.len() == 3 && s.iter().all(u8::is_ascii_digit) && s[0] >= b'2' => {
            Response::Final
        }
        Some(_) => return Err("a :status that is not a final or interim status"),
    };
    for (at, (name, value)) in fields.iter().enumerate() {
        if CONNECTION_SPECIFIC.contains(&name) {
            continue;
        }
        pass_field(block, fields.is_never_indexed(at), name, value);
    }
    Ok(kind)
}

/// Adds to an answer's block the fields the operator adds to answers of `status`
/// (`SWITCHYARD_RESPONSE_HEADERS`, names in lowercase; `secure`: the client came over
/// TLS), each where the answer has no field of that name, as the daemon does on HTTP/1.1.
pub fn add_extra(
    fields: &Fields,
    status: u16,
    secure: bool,
    extra: &ExtraFields,
    block: &mut Vec<u8>,
) {
    for (name, value) in extra.for_answer(status, secure) {
        if fields.get(name.as_bytes()).is_none() {
            hpack::field(block, name.as_bytes(), value.as_bytes());
        }
    }
}

/// Writes a field passed on, never indexed if it came so: "an intermediary MUST use the
/// same representation for encoding this header field" (RFC 7541 §7.1.3).
fn pass_field(block: &mut Vec<u8>, never: bool, name: &[u8], value: &[u8]) {
    match never {
        true => hpack::never_indexed(block, name, value),
        false => hpack::field(block, name, value),
    }
}

/// Checks a request's trailers (no pseudo-header, the rules of §8.2, within `max_list`
/// bytes) and writes the block for the backend, without the [`FORWARDING`] fields: the
/// relay wrote those in the request's head, and a backend that merges trailers into the
/// head (RFC 9110 §6.5.2 allows it for fields that permit it; some merge every field) would
/// read the client's word after ours.
pub fn pass_trailers(
    fields: &Fields,
    max_list: usize,
    block: &mut Vec<u8>,
) -> Result<(), &'static str> {
    if fields.list_size() > max_list {
        return Err("over SWITCHYARD_H2C_MAX_HEADER_LIST_BYTES");
    }
    for (at, (name, value)) in fields.iter().enumerate() {
        if name.starts_with(b":") {
            return Err("a pseudo-header in trailers");
        }
        check_field(name, value).map_err(|refused| match refused {
            Refused::Malformed(why) => why,
            Refused::Answer(..) => "refused",
        })?;
        if !is_forwarding(name) {
            pass_field(block, fields.is_never_indexed(at), name, value);
        }
    }
    Ok(())
}

/// The field block and body of an answer the relay gives itself.
pub fn answer(status: u16, text: &str) -> (Vec<u8>, Vec<u8>) {
    // At most this much: the text may name the request's path (up to the header list's
    // 16 KiB), and an answer a client takes nothing of is held (a review held 2,908
    // `502`s naming 15 KB paths: 69 MiB no budget counted).
    const MOST: usize = 256;
    let mut end = text.len().min(MOST);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let body = format!("{}\n", &text[..end]).into_bytes();
    let mut block = Vec::with_capacity(64);
    hpack::field(&mut block, b":status", status.to_string().as_bytes());
    hpack::field(&mut block, b"content-type", b"text/plain; charset=utf-8");
    hpack::field(
        &mut block,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    (block, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::Decoder;

    #[test]
    fn the_relays_own_answers_are_short_whatever_the_path() {
        let path = "/é".repeat(5000);
        let (_, body) = answer(502, &format!("backend for {path} failed"));
        assert!(body.len() <= 257, "{}", body.len());
        assert!(std::str::from_utf8(&body).is_ok());
    }

    fn config() -> Config {
        Config::from_lookup(|name| {
            (name == crate::config::ROUTES)
                .then(|| "/api=127.0.0.1:9000,/=backend.internal:80".to_string())
        })
        .unwrap()
    }

    fn request(extra: &[(&str, &str)]) -> Fields {
        let mut fields = Fields::default();
        for (n, v) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", "/api/../api/x?q=1"),
        ]
        .iter()
        .chain(extra)
        {
            fields.push(n.as_bytes(), v.as_bytes());
        }
        fields
    }

    fn decoded(block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Fields::default();
        Decoder::default()
            .decode(block, &mut fields, 1 << 20)
            .unwrap();
        fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_request_goes_with_its_normalised_path_the_routes_authority_and_the_clients_address() {
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mut forwarding = Forwarding::new(peer);
        let fields = request(&[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-real-ip", "10.0.0.2"),
            ("x_real_ip", "10.0.0.3"),
            ("x_forwarded-for", "10.0.0.4"),
            ("host", "spoofed"),
        ]);
        let routed = route_request(&config(), &fields, &mut forwarding).unwrap();
        assert_eq!(routed.route, 0);
        assert_eq!(routed.path, "/api/x");
        assert_eq!(routed.content_length, None);
        let got = decoded(&routed.block);
        let want = pairs(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "127.0.0.1:9000"),
            (":path", "/api/x?q=1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-real-ip", "192.0.2.7"),
            ("x-forwarded-for", "192.0.2.7"),
            ("forwarded", "for=192.0.2.7;proto=http;host=\"example.com\""),
        ]);
        assert_eq!(got, want);
    }

    /// RFC 7239 §5.4: a client the daemon took over TLS is `proto=https` to the backend.
    #[test]
    fn rfc7239_5_4_over_tls_the_proto_is_https() {
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mut forwarding = Forwarding::new(peer).over_tls();
        forwarding.for_authority(Some(b"example.com"));
        assert_eq!(
            &*forwarding.forwarded,
            "for=192.0.2.7;proto=https;host=\"example.com\""
        );
    }

    /// RFC 7541 §2.3.3 and §6.1: the forwarding fields enter a backend's table with the
    /// first request and are three indexed bytes after, as the request's other repeated
    /// fields are; a request for another authority says its own `Forwarded`; a field the
    /// client sent never indexed is passed on so (§7.1.3).
    #[test]
    fn repeated_fields_and_the_forwarding_fields_are_indexed_once_per_backend_connection() {
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mut forwarding = Forwarding::new(peer);
        let mut encoder = crate::hpack::encoder::Encoder::default();
        let mut decoder = Decoder::default();
        let mut sent = |authority: &str, secret: bool| {
            let mut fields = request(&[("content-type", "application/grpc")]);
            let authority_at = fields.iter().position(|(n, _)| n == b":authority").unwrap();
            let mut block = Vec::new();
            for (at, (name, value)) in fields.iter().enumerate() {
                let value = if at == authority_at {
                    authority.as_bytes()
                } else {
                    value
                };
                hpack::field(&mut block, name, value);
            }
            if secret {
                hpack::never_indexed(&mut block, b"x-secret", b"s");
            }
            Decoder::default()
                .decode(&block, &mut fields, 1 << 20)
                .unwrap();
            let routed = route_request(&config(), &fields, &mut forwarding).unwrap();
            let mut out = Vec::new();
            encoder.transcode(&routed.block, &mut out, true);
            decoder.decode(&out, &mut fields, 1 << 20).unwrap();
            let got: Vec<(String, String)> = (fields.iter())
                .map(|(n, v)| {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    (text(n), text(v))
                })
                .collect();
            let never = (0..got.len())
                .filter(|&at| fields.is_never_indexed(at))
                .collect::<Vec<_>>();
            (out.len(), got, never)
        };
        let (first, got, _) = sent("example.com", false);
        assert!(first > 80, "{first}");
        assert_eq!(
            got[got.len() - 3..],
            pairs(&[
                ("x-real-ip", "192.0.2.7"),
                ("x-forwarded-for", "192.0.2.7"),
                ("forwarded", "for=192.0.2.7;proto=http;host=\"example.com\""),
            ])
        );
        let (second, again, _) = sent("example.com", false);
        // Seven fields of a byte each, and the path, whose query keeps it a literal.
        let mut path = Vec::new();
        hpack::field(&mut path, b":path", b"/api/x?q=1");
        assert_eq!((second, &again), (7 + path.len(), &got));
        let (_, other, _) = sent("b", false);
        assert_eq!(
            other[other.len() - 1].1,
            "for=192.0.2.7;proto=http;host=\"b\""
        );
        let (_, with_secret, never) = sent("example.com", true);
        let secret_at = with_secret
            .iter()
            .position(|(n, _)| n == "x-secret")
            .unwrap();
        assert_eq!(never, [secret_at]);
    }

    /// RFC 7541 §7.1.3: a `:path` (a token in its query, say) or `:authority` the client
    /// sent never indexed goes on never indexed: the path as it is, the authority in
    /// `Forwarded`'s `host`. (The review that found it: the encoder added such a path to
    /// the backend connection's table.)
    #[test]
    fn rfc7541_7_1_3_a_never_indexed_path_or_authority_stays_so() {
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mut block = Vec::new();
        hpack::field(&mut block, b":method", b"GET");
        hpack::field(&mut block, b":scheme", b"http");
        hpack::never_indexed(&mut block, b":authority", b"secret.example");
        hpack::never_indexed(&mut block, b":path", b"/api/x?token=SECRET");
        let mut fields = Fields::default();
        Decoder::default()
            .decode(&block, &mut fields, 1 << 20)
            .unwrap();
        let routed = route_request(&config(), &fields, &mut Forwarding::new(peer)).unwrap();
        let mut out = Vec::new();
        crate::hpack::encoder::Encoder::default().transcode(&routed.block, &mut out, true);
        let mut passed = Fields::default();
        Decoder::default()
            .decode(&out, &mut passed, 1 << 20)
            .unwrap();
        let never: Vec<&[u8]> = (passed.iter().enumerate())
            .filter(|&(at, _)| passed.is_never_indexed(at))
            .map(|(_, (name, _))| name)
            .collect();
        assert_eq!(never, [&b":path"[..], b"forwarded"]);
    }

    /// RFC 9113 §8.5: a CONNECT is `:method` and `:authority` alone; it asks for a tunnel
    /// the relay does not make (`501`); with a `:path` or a `:scheme` it is malformed.
    #[test]
    fn rfc9113_8_5_connect_is_501_or_malformed() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let fields = |list: &[(&str, &str)]| {
            let mut fields = Fields::default();
            for (n, v) in list {
                fields.push(n.as_bytes(), v.as_bytes());
            }
            fields
        };
        let tunnel = fields(&[(":method", "CONNECT"), (":authority", "db.internal:5432")]);
        let refused = route_request(&config(), &tunnel, &mut Forwarding::new(peer));
        assert!(
            matches!(refused, Err(Refused::Answer(501, _))),
            "{refused:?}"
        );
        for extra in [(":path", "/api/x"), (":scheme", "http")] {
            let odd = fields(&[(":method", "CONNECT"), (":authority", "a:1"), extra]);
            let refused = route_request(&config(), &odd, &mut Forwarding::new(peer));
            assert!(matches!(refused, Err(Refused::Malformed(_))), "{extra:?}");
        }
        let nowhere = fields(&[(":method", "CONNECT")]);
        let refused = route_request(&config(), &nowhere, &mut Forwarding::new(peer));
        assert!(matches!(refused, Err(Refused::Malformed(_))));
    }

    #[test]
    fn rfc9113_8_2_malformed_requests_are_refused() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for extra in [
            ("connection", "close"),
            ("te", "gzip"),
            ("X-Upper", "1"),
            ("content-length", "5x"),
            ("x-a", "b\r\nx-injected: 1"),
            ("x-a", "b\nc"),
            ("x-a", "b\0c"),
            ("x-a", " b"),
            ("x-a", "b\t"),
            ("x a", "1"),
            ("x:a", "1"),
            ("x\u{7f}", "1"),
            ("x\u{e9}", "1"),
        ] {
            let refused = route_request(&config(), &request(&[extra]), &mut Forwarding::new(peer))
                .unwrap_err();
            assert!(matches!(refused, Refused::Malformed(_)), "{extra:?}");
        }
        // What would be another request line at a hop that writes HTTP/1.1 (an attacker's
        // review): each pseudo-header alone made bad.
        for (name, value) in [
            (":method", "GET\r\nX: 1"),
            (":method", "GET /admin"),
            (":method", "G\u{1}T"),
            (":method", ""),
            (":path", "/x HTTP/1.0"),
            (":path", "/a\tb"),
            (":path", "/\u{e9}"),
            (":authority", "evil\\"),
            (":authority", "user@host"),
            (":authority", "a b"),
        ] {
            let mut bad = Fields::default();
            for (n, v) in [(":method", "GET"), (":scheme", "http"), (":path", "/")] {
                bad.push(n.as_bytes(), if n == name { value } else { v }.as_bytes());
            }
            if name == ":authority" {
                bad.push(b":authority", value.as_bytes());
            }
            let refused = route_request(&config(), &bad, &mut Forwarding::new(peer));
            assert!(
                matches!(refused, Err(Refused::Malformed(_))),
                "{name}: {value:?}"
            );
        }
        let mut fine = Fields::default();
        for (n, v) in [
            (":method", "M-SEARCH"),
            (":scheme", "http"),
            (":path", "/a?b=c&d=%20"),
            (":authority", "[::1]:8080"),
        ] {
            fine.push(n.as_bytes(), v.as_bytes());
        }
        assert!(route_request(&config(), &fine, &mut Forwarding::new(peer)).is_ok());
        let fine = request(&[("x-a", "b c"), ("x-b", ""), ("x-c", "\u{e9}t\u{e9}")]);
        assert!(route_request(&config(), &fine, &mut Forwarding::new(peer)).is_ok());
        let mut late = request(&[("a", "1")]);
        late.push(b":method", b"GET");
        assert!(matches!(
            route_request(&config(), &late, &mut Forwarding::new(peer)),
            Err(Refused::Malformed(_))
        ));
        let mut no_path = Fields::default();
        no_path.push(b":method", b"GET");
        no_path.push(b":scheme", b"http");
        assert!(matches!(
            route_request(&config(), &no_path, &mut Forwarding::new(peer)),
            Err(Refused::Malformed(_))
        ));
    }

    #[test]
    fn a_path_that_climbs_out_of_its_route_is_a_400() {
        let only_api = Config::from_lookup(|name| {
            (name == crate::config::ROUTES).then(|| "/api=127.0.0.1:9000".to_string())
        })
        .unwrap();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut fields = request(&[]);
        fields.clear();
        for (n, v) in [(":method", "GET"), (":scheme", "http"), (":path", "/other")] {
            fields.push(n.as_bytes(), v.as_bytes());
        }
        assert!(matches!(
            route_request(&only_api, &fields, &mut Forwarding::new(peer)),
            Err(Refused::Answer(404, _))
        ));
        fields.clear();
        for (n, v) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/api/../etc"),
        ] {
            fields.push(n.as_bytes(), v.as_bytes());
        }
        assert!(matches!(
            route_request(&only_api, &fields, &mut Forwarding::new(peer)),
            Err(Refused::Answer(400, _))
        ));
    }

    /// The operator's fields go on answers of 1xx to 3xx where the backend wrote none of
    /// that name, `strict-transport-security` over TLS only, as on HTTP/1.1.
    #[test]
    fn the_operators_fields_are_added_where_the_answer_has_none() {
        let extra = ExtraFields::parse(
            "Strict-Transport-Security: max-age=63072000\nX-Frame-Options: DENY\nCache-Control: no-store",
        )
        .unwrap()
        .lowercased();
        let mut fields = Fields::default();
        fields.push(b":status", b"200");
        fields.push(b"cache-control", b"max-age=60");
        let added = |status: u16, secure: bool| {
            let mut block = Vec::new();
            add_extra(&fields, status, secure, &extra, &mut block);
            decoded(&block)
        };
        assert_eq!(
            added(200, true),
            pairs(&[
                ("strict-transport-security", "max-age=63072000"),
                ("x-frame-options", "DENY"),
            ])
        );
        assert_eq!(added(304, false), pairs(&[("x-frame-options", "DENY")]));
        assert!(added(502, true).is_empty());
    }

    #[test]
    fn responses_pass_as_sent_and_interim_ones_are_told_apart() {
        let mut fields = Fields::default();
        fields.push(b":status", b"200");
        fields.push(b"content-type", b"application/grpc");
        let mut block = Vec::new();
        assert_eq!(pass_response(&fields, &mut block), Ok(Response::Final));
        assert_eq!(decoded(&block).len(), 2);
        fields.clear();
        fields.push(b":status", b"103");
        assert_eq!(
            pass_response(&fields, &mut Vec::new()),
            Ok(Response::Interim)
        );
        fields.clear();
        fields.push(b"grpc-status", b"0");
        assert_eq!(
            pass_response(&fields, &mut Vec::new()),
            Ok(Response::Trailers)
        );
        fields.clear();
        fields.push(b":status", b"101");
        assert!(pass_response(&fields, &mut Vec::new()).is_err());
    }

    /// RFC 7541 §7.1.3: a field that came never indexed, in a response, its trailers or a
    /// request's trailers, is passed on never indexed.
    #[test]
    fn rfc7541_7_1_3_never_indexed_fields_pass_on_so_both_ways() {
        let mut block = Vec::new();
        hpack::field(&mut block, b":status", b"200");
        hpack::never_indexed(&mut block, b"set-cookie", b"session=1");
        hpack::never_indexed(&mut block, b"x-token", b"t");
        let mut fields = Fields::default();
        Decoder::default()
            .decode(&block, &mut fields, 1 << 20)
            .unwrap();
        let never = |block: &[u8]| {
            let mut passed = Fields::default();
            Decoder::default()
                .decode(block, &mut passed, 1 << 20)
                .unwrap();
            (0..passed.iter().count())
                .filter(|&at| passed.is_never_indexed(at))
                .collect::<Vec<_>>()
        };
        let mut response = Vec::new();
        assert_eq!(pass_response(&fields, &mut response), Ok(Response::Final));
        assert_eq!(never(&response), [1, 2]);
        fields.clear();
        let mut trailers = Vec::new();
        hpack::field(&mut trailers, b"grpc-status", b"0");
        hpack::never_indexed(&mut trailers, b"x-token", b"t");
        Decoder::default()
            .decode(&trailers, &mut fields, 1 << 20)
            .unwrap();
        let mut passed = Vec::new();
        assert_eq!(pass_trailers(&fields, 16_384, &mut passed), Ok(()));
        assert_eq!(never(&passed), [1]);
    }

    #[test]
    fn rfc9113_8_1_trailers_hold_no_pseudo_header_and_follow_the_field_rules() {
        let mut fields = Fields::default();
        fields.push(b"grpc-status", b"0");
        // The relay's own fields, which a backend merging trailers would read.
        fields.push(b"x-real-ip", b"6.6.6.6");
        fields.push(b"x_forwarded_for", b"6.6.6.7");
        let mut block = Vec::new();
        assert_eq!(pass_trailers(&fields, 16_384, &mut block), Ok(()));
        assert_eq!(
            decoded(&block),
            [("grpc-status".to_string(), "0".to_string())]
        );
        for (name, value) in [(":path", "/"), ("Upper", "1"), ("connection", "x")] {
            let mut bad = Fields::default();
            bad.push(name.as_bytes(), value.as_bytes());
            assert!(
                pass_trailers(&bad, 16_384, &mut Vec::new()).is_err(),
                "{name}"
            );
        }
        assert!(
            pass_trailers(&fields, 10, &mut Vec::new()).is_err(),
            "over the limit"
        );
    }

    #[test]
    fn an_answer_says_its_length() {
        let (block, body) = answer(404, "no route for this path");
        assert_eq!(body, b"no route for this path\n");
        let got = decoded(&block);
        assert_eq!(got[0], (":status".into(), "404".into()));
        assert_eq!(got[2], ("content-length".into(), "23".into()));
    }
}
