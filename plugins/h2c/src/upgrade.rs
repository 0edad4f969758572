//! The upgraded connection's stream 1, for an HTTP/2 server that has no API for it.
//!
//! RFC 9113 §3.2: after the `101` the HTTP/1.1 request that asked to switch is stream 1,
//! half-closed from the client, and the `HTTP2-Settings` values are the client's initial
//! settings. The `h2` crate (under hyper) only serves connections that begin with the
//! client's preface, so the plugin hands it one that does: the bytes a prior-knowledge
//! client would have sent for the same request ([`preamble`]: preface, a SETTINGS frame
//! with the `HTTP2-Settings` payload, HEADERS and DATA for stream 1), then everything the
//! real client sends after its own preface (which is read and dropped).
//!
//! The server acknowledges that first SETTINGS frame, which the real client never sent on
//! the wire; RFC 9113 §3.2 says it is "implicitly acknowledged", and an unexpected ACK is a
//! connection error to some clients (nghttp2). [`AckFilter`] drops exactly that one ACK
//! from the server's output.

use crate::frame::{flag, kind, write_field_block};
use crate::hpack::literal;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest frame payload before the peer says otherwise (SETTINGS_MAX_FRAME_SIZE's initial
/// value).
const MAX_FRAME: usize = 16_384;
/// Stream 1's request body must fit the initial flow-control window (65,535 bytes): the
/// client could not have sent more before the server's first WINDOW_UPDATE.
pub const MAX_BODY: usize = 65_535;

/// Header fields that belong to the HTTP/1.1 connection, not to the request (RFC 9113
/// §8.2.2), and `Host`, which becomes `:authority`.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "upgrade",
    "http2-settings",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "host",
];

/// The request that asked to switch, as plugin-independent values.
pub struct Stream1<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub body: &'a [u8],
}

/// What a prior-knowledge client would have sent: preface, SETTINGS with `settings` (the
/// decoded `HTTP2-Settings`), then the request as stream 1. The body must be at most
/// [`MAX_BODY`] bytes.
pub fn preamble(settings: &[u8], request: &Stream1<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFACE.len() + 9 + settings.len() + 256 + request.body.len());
    out.extend_from_slice(PREFACE);
    crate::frame::write(&mut out, kind::SETTINGS, 0, 0, settings);

    let mut block = Vec::with_capacity(256);
    let authority = request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map_or(&b""[..], |(_, v)| v);
    literal(&mut block, b":method", request.method.as_bytes());
    literal(&mut block, b":scheme", b"http");
    literal(&mut block, b":authority", authority);
    literal(&mut block, b":path", request.target.as_bytes());
    // Fields `Connection` names belong to the HTTP/1.1 connection too (RFC 9110 §7.6.1).
    let named: Vec<String> = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| protocol_api::fields::list_items(v))
        .map(|n| String::from_utf8_lossy(n).to_ascii_lowercase())
        .collect();
    for (name, value) in &request.headers {
        let lower = name.to_ascii_lowercase();
        if NOT_FORWARDED.contains(&lower.as_str()) || named.contains(&lower) {
            continue;
        }
        // TE may only say "trailers" in HTTP/2 (§8.2.2).
        if lower == "te" && !value.eq_ignore_ascii_case(b"trailers") {
            continue;
        }
        literal(&mut block, lower.as_bytes(), value);
    }
    write_field_block(&mut out, 1, &block, request.body.is_empty(), MAX_FRAME);
    let mut chunks = request.body.chunks(MAX_FRAME).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let end = if last { flag::END_STREAM } else { 0 };
        crate::frame::write(&mut out, kind::DATA, end, 1, chunk);
    }
    out
}

/// Passes the server's output through unchanged except for the first SETTINGS frame with
/// the ACK flag, which is dropped (see the module's docs). After that it is a plain copy.
#[derive(Debug, Default)]
pub struct AckFilter {
    /// A frame header being gathered (fewer than 9 bytes).
    header: Vec<u8>,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
    /// The ACK is gone: everything passes.
    done: bool,
}

impl AckFilter {
    /// True once the ACK was dropped: from then on output needs no filtering.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Takes all of `input`, appending to `out` what goes to the client.
    pub fn filter(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.done {
                out.extend_from_slice(input);
                return;
            }
            if self.payload_left > 0 {
                let n = self.payload_left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.payload_left -= n;
                input = &input[n..];
                continue;
            }
            let take = (9 - self.header.len()).min(input.len());
            self.header.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.header.len() < 9 {
                return;
            }
            let header = std::mem::take(&mut self.header);
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            if header[3] == kind::SETTINGS && header[4] & flag::ACK != 0 && len == 0 {
                self.done = true;
                continue;
            }
            out.extend_from_slice(&header);
            self.payload_left = len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::flag::{ACK, END_HEADERS, END_STREAM};
    use crate::frame::kind::{CONTINUATION, DATA, HEADERS, SETTINGS};

    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut rest = bytes;
        let mut all = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            all.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        all
    }

    #[test]
    fn preamble_is_preface_settings_headers_data() {
        let request = Stream1 {
            method: "POST",
            target: "/x?y=1",
            headers: vec![
                ("Host", b"example.org"),
                ("Connection", b"Upgrade, HTTP2-Settings, X-Private"),
                ("Upgrade", b"h2c"),
                ("HTTP2-Settings", b"AAMAAABk"),
                ("TE", b"gzip"),
                ("X-Private", b"hop-by-hop"),
                ("X-Trace", b"7"),
            ],
            body: b"hello",
        };
        let out = preamble(&[0, 3, 0, 0, 0, 100], &request);
        assert!(out.starts_with(PREFACE));
        let frames = frames(&out[24..]);
        assert_eq!(frames[0], (SETTINGS, 0, 0, vec![0, 3, 0, 0, 0, 100]));
        let (kind, flags, stream, block) = &frames[1];
        assert_eq!((*kind, *flags, *stream), (HEADERS, END_HEADERS, 1));
        let mut expected = Vec::new();
        for (n, v) in [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":authority", b"example.org"),
            (b":path", b"/x?y=1"),
            (b"x-trace", b"7"),
        ] {
            literal(&mut expected, n, v);
        }
        assert_eq!(block, &expected);
        assert_eq!(frames[2], (DATA, END_STREAM, 1, b"hello".to_vec()));
        assert_eq!(frames.len(), 3);
    }

    #[test]
    fn large_header_blocks_continue_and_bodies_split() {
        let big = vec![b'a'; 40_000];
        let body = vec![7u8; MAX_BODY];
        let request = Stream1 {
            method: "GET",
            target: "/",
            headers: vec![("Host", b"h"), ("X-Big", &big)],
            body: &body,
        };
        let out = preamble(&[], &request);
        let frames = frames(&out[24..]);
        let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            kinds,
            [
                (SETTINGS, 0),
                (HEADERS, 0),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS),
                (DATA, 0),
                (DATA, 0),
                (DATA, 0),
                (DATA, END_STREAM),
            ]
        );
        let data: usize = frames
            .iter()
            .filter(|f| f.0 == DATA)
            .map(|f| f.3.len())
            .sum();
        assert_eq!(data, MAX_BODY);
    }

    #[test]
    fn the_first_settings_ack_alone_is_dropped_in_any_split() {
        let settings = [0, 0, 6, SETTINGS, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let ack = [0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0];
        let headers = [0, 0, 2, HEADERS, END_HEADERS, 0, 0, 0, 1, 0x88, 0x89];
        let mut server = Vec::new();
        server.extend_from_slice(&settings);
        server.extend_from_slice(&ack);
        server.extend_from_slice(&headers);
        server.extend_from_slice(&ack); // the real client's SETTINGS gets its ACK
        let mut expected = settings.to_vec();
        expected.extend_from_slice(&headers);
        expected.extend_from_slice(&ack);
        for size in 1..=server.len() {
            let mut filter = AckFilter::default();
            let mut out = Vec::new();
            for piece in server.chunks(size) {
                filter.filter(piece, &mut out);
            }
            assert_eq!(out, expected, "in pieces of {size}");
            assert!(filter.is_done());
        }
    }
}
