//! [`Request`]: a borrowed, read-only view of the request that asked to switch.

use crate::abi::{RawHeader, RawRequest};

/// How a connection came to the plugin (ABI 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// An HTTP/1.1 request with `Upgrade`; the daemon sends the `101` the plugin accepted
    /// with.
    Upgrade,
    /// The connection began with the HTTP/2 connection preface (RFC 9113 §3.3): the client
    /// knew the server speaks HTTP/2 and never sent HTTP/1.1. No `101` is sent. The daemon
    /// read the 24-byte preface; the connection's first bytes are what followed it (the
    /// client's SETTINGS). The request is `PRI *` with no headers and protocol `h2c`.
    PriorKnowledge,
}

/// What a TLS connection's handshake settled ([`Request::tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tls<'a> {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'a str,
    /// The cipher suite's IANA name, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: &'a str,
    /// The ALPN protocol agreed (`h2`, `http/1.1`), if the client offered any.
    pub alpn: Option<&'a str>,
    /// The host name the client asked for (SNI), lower case.
    pub server_name: Option<&'a str>,
    /// The subject of the client's certificate (RFC 4514's string form, `CN=alice,O=Example`),
    /// verified by the daemon against `SWITCHYARD_TLS_CLIENT_CA`; `None` when the client
    /// presented none.
    pub client_subject: Option<&'a str>,
}

/// The request that asked to switch protocols, as the daemon parsed it. Borrowed from the
/// host for the duration of `negotiate` or `serve`; copy out what must live longer.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    raw: &'a RawRequest,
}

impl<'a> Request<'a> {
    /// Wraps the host's request.
    ///
    /// # Safety
    /// Every pointer in `raw` must be valid for `'a`, as the host guarantees during a call.
    pub unsafe fn from_raw(raw: &'a RawRequest) -> Self {
        Request { raw }
    }

    fn text(bytes: crate::abi::RawBytes) -> &'a str {
        // SAFETY: `from_raw`'s contract: the bytes live for 'a.
        let bytes = unsafe { bytes.as_slice() };
        // The host only sends UTF-8 here; a lying host gets an empty string, not UB.
        core::str::from_utf8(bytes).unwrap_or("")
    }

    /// `GET`, `POST`, ...
    pub fn method(&self) -> &'a str {
        Self::text(self.raw.method)
    }

    /// The request target as sent, e.g. `/chat?room=1`.
    pub fn target(&self) -> &'a str {
        Self::text(self.raw.target)
    }

    /// The target without its query.
    pub fn path(&self) -> &'a str {
        crate::fields::path(self.target())
    }

    /// The HTTP minor version (1 for every upgraded request).
    pub fn version_minor(&self) -> u32 {
        self.raw.version_minor
    }

    /// The peer's address, `ip:port`.
    pub fn peer(&self) -> &'a str {
        Self::text(self.raw.peer)
    }

    /// The `Upgrade` product being negotiated, as the client spelled it (`websocket`, `h2c`,
    /// `foo/2`). Lets one plugin serve several tokens.
    pub fn protocol(&self) -> &'a str {
        Self::text(self.raw.protocol)
    }

    /// How the connection came to the plugin: by `Upgrade` (the daemon sends the `101`) or
    /// with the HTTP/2 preface (no `101`; see [`Arrival::PriorKnowledge`]).
    pub fn arrival(&self) -> Arrival {
        // The field exists only in requests from a host of ABI 1.2 or later; older hosts
        // hand over only upgrades.
        if crate::host::host_minor() < 2 {
            return Arrival::Upgrade;
        }
        match self.raw.arrival {
            crate::abi::ARRIVAL_PRIOR_KNOWLEDGE => Arrival::PriorKnowledge,
            _ => Arrival::Upgrade,
        }
    }

    /// True when this `negotiate` runs on a worker thread, where it may block (always, for a
    /// blocking [`Protocol`](crate::Protocol); for an
    /// [`EventProtocol`](crate::EventProtocol), after it returned
    /// [`Decision::OnWorker`](crate::Decision::OnWorker)).
    pub fn may_block(&self) -> bool {
        // The field exists only in requests from a host of ABI 1.2 or later.
        crate::host::host_minor() >= 2 && self.raw.may_block != 0
    }

    /// The TLS session the connection came over, or `None` for cleartext. Under TLS the
    /// daemon decrypts: reads and writes through the connection are plaintext, but the
    /// socket it lends ([`AsFd`](std::os::fd::AsFd)) carries ciphertext, so a plugin must
    /// not read, write or splice it then (socket options are fine).
    pub fn tls(&self) -> Option<Tls<'a>> {
        // The fields exist only in requests from a host of ABI 1.5 or later; older hosts
        // speak cleartext only.
        if crate::host::host_minor() < 5 || self.raw.tls == 0 {
            return None;
        }
        Some(Tls {
            version: Self::text(self.raw.tls_version),
            cipher: Self::text(self.raw.tls_cipher),
            alpn: Some(Self::text(self.raw.tls_alpn)).filter(|a| !a.is_empty()),
            server_name: Some(Self::text(self.raw.tls_server_name)).filter(|n| !n.is_empty()),
            client_subject: Some(Self::text(self.raw.tls_client_subject)).filter(|s| !s.is_empty()),
        })
    }

    /// The complete request body; empty when there was none.
    pub fn body(&self) -> &'a [u8] {
        // SAFETY: `from_raw`'s contract.
        unsafe { self.raw.body.as_slice() }
    }

    /// Every header in the order received, names as the client spelled them.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let raw: &'a [RawHeader] = if self.raw.headers_len == 0 {
            &[]
        } else {
            // SAFETY: `from_raw`'s contract: `headers` points to `headers_len` entries for 'a.
            unsafe { core::slice::from_raw_parts(self.raw.headers, self.raw.headers_len) }
        };
        // SAFETY: as above, each entry's bytes live for 'a. Header names are tokens (ASCII).
        raw.iter()
            .map(|h| (Self::text(h.name), unsafe { h.value.as_slice() }))
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first header called `name`, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| core::str::from_utf8(v).ok())
    }

    /// Every value of the comma-separated list header `name` across all its fields,
    /// trimmed, empty elements skipped (RFC 9110 §5.6.1).
    pub fn header_list(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| crate::fields::list_items(v))
            .filter_map(|item| core::str::from_utf8(item).ok())
    }
}

impl core::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("target", &self.target())
            .field("protocol", &self.protocol())
            .field("peer", &self.peer())
            .field("body_len", &self.body().len())
            .finish()
    }
}
