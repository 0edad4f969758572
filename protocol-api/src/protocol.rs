//! [`Protocol`]: what a plugin author implements, and the [`Decision`] it returns.

use crate::{Connection, Request};
use std::io;

/// A protocol the daemon can switch connections to.
///
/// One value is made per process by [`Protocol::new`] and shared by every connection:
/// `negotiate` and `serve` run on many worker threads at once, so shared state needs `Sync`;
/// per-connection state lives in the [`Protocol::Session`] that `negotiate` makes and `serve`
/// consumes.
pub trait Protocol: Sized + Send + Sync + 'static {
    /// A short name for logs, e.g. `"echo"`.
    const NAME: &'static str;
    /// The `Upgrade` tokens served (RFC 9110 §7.8), matched case-insensitively, without
    /// version (`"websocket"`, not `"websocket/13"`). Two plugins cannot serve one token.
    const TOKENS: &'static [&'static str];
    /// The settings (environment variables) the plugin reads, listed by the daemon's
    /// `--help` and `--check` (ABI 1.6). Read no `SWITCHYARD_*` variable left out here.
    const SETTINGS: &'static [crate::Setting] = &[];
    /// What `negotiate` hands to `serve` for one connection (a backend socket, a chosen
    /// subprotocol); `()` when there is nothing.
    type Session: Send + 'static;

    /// Makes the plugin, once, when the daemon loads it. Read settings here (the environment
    /// is the daemon's); an `Err` is logged with the file name and the plugin is skipped.
    fn new() -> Result<Self, String>;

    /// Decides whether to switch this request. Runs on a worker thread, never on the event
    /// loop, so it may block briefly (dial a backend). [`Decision::Decline`] lets the daemon
    /// try the client's next protocol.
    fn negotiate(&self, request: &Request<'_>) -> Decision<Self::Session>;

    /// Runs the protocol after the `101` has been sent, until the connection is done. The
    /// daemon closes the socket when this returns; an `Err` is logged at debug level.
    fn serve(
        &self,
        session: Self::Session,
        request: &Request<'_>,
        connection: &mut Connection<'_>,
    ) -> io::Result<()>;
}

/// The answer of [`Protocol::negotiate`].
#[derive(Debug)]
pub enum Decision<S> {
    /// Switch: the daemon sends `101` with `Upgrade`, `Connection: upgrade` and `headers`,
    /// then calls `serve` with `session`.
    Accept {
        /// What `serve` (or `start`) gets: this connection's state so far.
        session: S,
        /// Extra headers for the `101` (`Sec-WebSocket-Accept`, …).
        headers: Vec<(String, String)>,
    },
    /// Do not switch, and answer with this response instead (the connection then closes).
    Reject(Rejection),
    /// Not for this plugin: the daemon tries the client's next choice, and answers as if there
    /// had been no `Upgrade` when none is left.
    Decline,
    /// For an [`EventProtocol`](crate::EventProtocol) (whose `negotiate` runs on an event
    /// loop and must not block): ask again on a worker thread, where
    /// [`Request::may_block`] is true and a backend may be dialled before the `101`. Use it
    /// only for the requests that need it; the hand-over costs a thread switch each way.
    /// Returned where `may_block` is already true (a blocking `Protocol` always is), the
    /// daemon answers `500` and logs it.
    OnWorker,
}

impl<S> Decision<S> {
    /// Accept with no extra headers.
    pub fn accept(session: S) -> Self {
        Decision::Accept {
            session,
            headers: Vec::new(),
        }
    }

    /// Adds a header to the `101` of an `Accept` (ignored otherwise).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Decision::Accept { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    /// Reject with `status` (300–599) and a plain-text `body`.
    pub fn reject(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Decision::Reject(Rejection::new(status, body))
    }
}

/// A response the plugin wants sent instead of the `101`. The daemon adds `Content-Length`,
/// `Date` and `Connection: close`; a status outside 300–599 or a header with bytes not
/// allowed in HTTP is replaced by a `500` and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 300–599.
    pub status: u16,
    /// Header fields besides those the daemon adds.
    pub headers: Vec<(String, String)>,
    /// The body (the daemon sets `Content-Length`).
    pub body: Vec<u8>,
}

impl Rejection {
    /// `status` (300–599) with a plain-text `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Rejection {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}
