//! An upgrade request read whole (head and body) by an HTTP/1.1 connection, or the HTTP/2
//! preface read as one: what the switch negotiates, and what every answer to it and every
//! access line about it is made from.

use crate::access;
use crate::http::head::Head;
use crate::http::response::Response;
use crate::plugin::{Plugin, Registry, RequestHeaders, RequestParts};
use crate::route::{plain_answer, Offer};
use std::time::Instant;

/// An upgrade request, read whole (head and body) by an event loop.
pub struct Upgrade {
    pub head: Head,
    /// The head's bytes; `head`'s spans point into them.
    pub head_bytes: Vec<u8>,
    /// Freed once a plugin accepted and was started (blocking `serve` does not see it).
    pub body: Vec<u8>,
    pub offers: Vec<Offer>,
    /// When the request began to arrive.
    pub started: Instant,
    /// The plugin generation the request was routed with; `offers` index into it.
    pub registry: &'static Registry,
    /// Not an HTTP/1.1 request but the HTTP/2 preface ([`super::prior_knowledge`]): no
    /// `101` is sent, and a refusal is an HTTP/2 GOAWAY.
    pub prior_knowledge: bool,
    /// The TLS session the request came over, if any: told to plugins (1.5), which alone
    /// may be handed it.
    pub tls: Option<crate::tls::Handshake>,
}

/// What the access line says of a request whose head was read (an upgrade or not): its
/// line and the fields it names (nothing when that log is off).
pub fn access_request(head: &Head, bytes: &[u8]) -> access::Request {
    access::Request::read(
        head.method(bytes),
        head.target(bytes),
        head.version_minor,
        |name| {
            let headers = head.headers.iter();
            let mut named =
                headers.filter(|(n, _)| n.get(bytes).eq_ignore_ascii_case(name.as_bytes()));
            named.next().map(|(_, value)| value.get(bytes))
        },
    )
}

impl Upgrade {
    /// What the access line says of the request (nothing when that log is off).
    pub fn access_request(&self) -> access::Request {
        match self.prior_knowledge {
            true => access::Request::of_line("PRI * HTTP/2.0".to_string()),
            false => access_request(&self.head, &self.head_bytes),
        }
    }

    /// Bytes of the request on the wire (head and body as decoded).
    pub fn bytes_in(&self) -> u64 {
        (self.head_bytes.len() + self.body.len()) as u64
    }

    pub fn is_head(&self) -> bool {
        self.head.method(&self.head_bytes) == "HEAD"
    }

    /// The answer when no plugin switched: as if there had been no `Upgrade` (RFC 9110
    /// §7.8), naming the protocols still in service.
    pub fn plain_answer(&self) -> Response {
        let registry = self.registry;
        let in_service = |plugin| registry.in_service(plugin);
        plain_answer(&self.head, &self.head_bytes, &registry.tokens, &in_service)
    }

    /// The plugin serving offer `index`.
    pub fn plugin(&self, index: usize) -> &'static Plugin {
        self.registry.plugins[self.offers[index].plugin]
    }

    /// The `Upgrade` product of offer `index`, as the client spelled it.
    pub fn product(&self, index: usize) -> &str {
        if self.prior_knowledge {
            return super::prior_knowledge::TOKEN;
        }
        self.offers[index].product.str(&self.head_bytes)
    }

    /// The request as plugins see it; `protocol` is the offer being negotiated.
    pub fn parts<'a>(&'a self, peer: &'a str, offer: usize) -> RequestParts<'a> {
        let bytes = self.head_bytes.as_slice();
        RequestParts {
            method: self.head.method.get(bytes),
            target: self.head.target.get(bytes),
            version_minor: u32::from(self.head.version_minor),
            headers: RequestHeaders::new(
                self.head
                    .headers
                    .iter()
                    .map(|(n, v)| (n.get(bytes), v.get(bytes))),
            ),
            peer,
            body: &self.body,
            protocol: match self.prior_knowledge {
                true => super::prior_knowledge::TOKEN.as_bytes(),
                false => self.offers.get(offer).map_or(&[], |o| o.product.get(bytes)),
            },
            arrival: match self.prior_knowledge {
                true => protocol_api::abi::ARRIVAL_PRIOR_KNOWLEDGE,
                false => protocol_api::abi::ARRIVAL_UPGRADE,
            },
            may_block: false,
            tls: self.tls.as_ref(),
        }
    }
}
