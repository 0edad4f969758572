//! HTTP/1.1 as pure functions from bytes to decisions: no sockets here.
//!
//! - [`head`]: the request head (RFC 9112 §2–§5) and its framing rules (§6), parsed by
//!   `httparse` and then checked for what `httparse` leaves to the server: `Host`,
//!   `Content-Length` / `Transfer-Encoding` smuggling shapes, `Connection`, `Expect`.
//! - [`body`]: a push decoder for `Content-Length` and chunked bodies (RFC 9112 §6–§7).
//! - [`response`]: responses as bytes.

pub mod body;
pub mod head;
pub mod response;

/// Why a request cannot be served: the status to answer with (the connection then closes)
/// and a reason for the log and the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub reason: &'static str,
}

impl HttpError {
    pub const fn new(status: u16, reason: &'static str) -> Self {
        HttpError { status, reason }
    }
}

/// A byte range into a buffer that the caller keeps: heads are parsed in place and refer
/// back into the bytes they came from instead of copying them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The range of `part`, which must lie inside `whole`.
    pub fn of(whole: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - whole.as_ptr() as usize;
        debug_assert!(start + part.len() <= whole.len());
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    pub fn get<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.start as usize..self.end as usize]
    }

    /// Only for spans the parser checked to be ASCII/UTF-8 (method, target, header names).
    pub fn str<'a>(&self, bytes: &'a [u8]) -> &'a str {
        std::str::from_utf8(self.get(bytes)).unwrap_or("")
    }
}

/// The list and white-space rules the plugins' side applies too: one copy, in
/// `protocol-api`.
pub use protocol_api::fields::{list_items, trim_ows};
