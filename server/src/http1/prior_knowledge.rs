//! HTTP/2 with prior knowledge (RFC 9113 §3.3): a client that knows the server speaks
//! HTTP/2 over cleartext skips the `Upgrade` and opens with the connection preface. When a
//! plugin serving `h2c` is loaded (and of ABI 1.2, so it can tell such a connection from an
//! upgrade), a new connection whose first bytes are the preface goes to it with no `101`:
//! the daemon reads the 24 preface bytes and the plugin gets everything after them.
//!
//! Without such a plugin nothing changes: the preface is an HTTP/1.1 request line with an
//! unknown version, and the HTTP side answers it as it always did.

use super::Upgrade;
use crate::http::head::{BodyLength, Head};
use crate::http::Span;
use crate::plugin::Registry;
use crate::route::Offer;
use std::time::Instant;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The `Upgrade` token whose plugin serves HTTP/2 over cleartext (RFC 9113 §3.2).
pub const TOKEN: &str = "h2c";
/// The first minor ABI version whose plugins can tell how a connection arrived.
const MINOR_WITH_ARRIVAL: u32 = 2;

/// What the first bytes of a new connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// The whole preface: an HTTP/2 connection.
    Preface,
    /// A proper prefix of the preface: wait for more.
    Partial,
    /// Anything else: HTTP/1.1.
    Http1,
}

/// Looks at the first bytes of a connection.
pub fn classify(input: &[u8]) -> Start {
    if input.starts_with(PREFACE) {
        Start::Preface
    } else if PREFACE.starts_with(input) {
        Start::Partial
    } else {
        Start::Http1
    }
}

/// The plugin that takes prior-knowledge connections: the one serving `h2c`, if it is in
/// service and built for ABI 1.2 or later.
pub fn plugin(registry: &Registry) -> Option<usize> {
    let index = registry.tokens.find(TOKEN.as_bytes())?;
    let plugin = &registry.plugins[index];
    (registry.in_service(index) && plugin.abi_minor() >= MINOR_WITH_ARRIVAL).then_some(index)
}

/// The switch a prior-knowledge connection makes: `PRI *` with no headers, offered to
/// `plugin` only; no `101` will be sent.
pub fn upgrade(registry: &'static Registry, plugin: usize, started: Instant) -> Upgrade {
    let head = Head {
        method: Span { start: 0, end: 3 },
        target: Span { start: 4, end: 5 },
        version_minor: 0,
        headers: Vec::new(),
        len: PREFACE.len(),
        body: BodyLength::None,
        close: false,
        expect_continue: false,
        wants_upgrade: false,
    };
    Upgrade {
        head,
        head_bytes: PREFACE.to_vec(),
        body: Vec::new(),
        registry,
        offers: vec![Offer {
            plugin,
            product: Span::default(),
        }],
        started,
        prior_knowledge: true,
        tls: None,
    }
}

/// Whether ALPN should offer `h2` (RFC 9113 §3.2): the plugin that takes prior-knowledge
/// connections can be handed TLS ones (ABI 1.5) and accepts one when asked at start (the
/// reference h2c plugin declines every connection until it has routes). A client that is
/// offered `h2` uses it, and one nobody serves would get only a GOAWAY.
pub fn takes_tls(registry: &'static Registry) -> bool {
    let Some(index) = plugin(registry) else {
        return false;
    };
    let plugin = &registry.plugins[index];
    if !plugin.serves_tls() {
        return false;
    }
    let mut probe = upgrade(registry, index, Instant::now());
    probe.tls = Some(crate::tls::Handshake {
        summary: crate::tls::Summary {
            version: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            alpn: "h2",
        },
        server_name: None,
        client_subject: None,
    });
    let accepted = matches!(
        plugin.negotiate(&probe.parts("0.0.0.0:0", 0)),
        crate::plugin::Negotiation::Accept { .. }
    );
    if !accepted {
        log::info!(
            "TLS: ALPN offers http/1.1 only: plugin {} declines HTTP/2 connections (it has no routes)",
            plugin.name
        );
    }
    accepted
}

/// The GOAWAY error code (RFC 9113 §7) for a connection not served, from the status an
/// HTTP/1.1 client would have got: `503` (stopping, no capacity) is `REFUSED_STREAM`,
/// nothing was processed and another try may succeed; `500` (a plugin failed) is
/// `INTERNAL_ERROR`; anything else (declined, refused) is `HTTP_1_1_REQUIRED`.
pub fn error_code(status: u16) -> u32 {
    const INTERNAL_ERROR: u32 = 0x2;
    const REFUSED_STREAM: u32 = 0x7;
    const HTTP_1_1_REQUIRED: u32 = 0xd;
    match status {
        503 => REFUSED_STREAM,
        500 => INTERNAL_ERROR,
        _ => HTTP_1_1_REQUIRED,
    }
}

/// What a prior-knowledge client gets when its connection is not served: the server
/// preface (an empty SETTINGS frame) and a GOAWAY with error `code` and `reason` as debug
/// data (RFC 9113 §6.8); then the connection closes. An HTTP/1.1 answer would mean nothing
/// to it.
pub fn refusal(code: u32, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + 9 + 8 + reason.len());
    frame_header(&mut out, 0, 0x4, 0);
    let payload_len = 8 + reason.len();
    frame_header(&mut out, payload_len, 0x7, 0);
    out.extend_from_slice(&0u32.to_be_bytes()); // last stream id: none was processed
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    out
}

/// A frame header (RFC 9113 §4.1) on stream 0.
fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&0u32.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9113_3_4_the_preface_whole_in_part_or_not() {
        assert_eq!(classify(PREFACE), Start::Preface);
        let mut more = PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&more), Start::Preface);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Start::Partial);
        assert_eq!(classify(b"P"), Start::Partial);
        assert_eq!(classify(b"POST / HTTP/1.1\r\n"), Start::Http1);
        // An HTTP/1.1 head that looks like the preface's first line, then differs.
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nXX"), Start::Http1);
    }

    #[test]
    fn rfc9113_6_8_refusal_is_settings_then_goaway() {
        let out = refusal(error_code(426), "no");
        // SETTINGS: length 0, type 4, no flags, stream 0.
        assert_eq!(&out[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        // GOAWAY: length 10, type 7, stream 0; last stream 0; HTTP_1_1_REQUIRED; "no".
        assert_eq!(
            &out[9..],
            &[0, 0, 10, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xd, b'n', b'o']
        );
        assert_eq!(error_code(503), 0x7, "REFUSED_STREAM: try again");
        assert_eq!(error_code(500), 0x2);
    }
}
