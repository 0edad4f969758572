//! One stream, proxied: the request goes to the backend its path is routed to, the answer
//! comes back, bodies and trailers streamed both ways under HTTP/2 flow control.
//!
//! Bodies are never collected whole: hyper polls a body only when the other side can take
//! its data, so a client that reads slowly leaves its stream's backend unread (and the
//! backend sees a closed window), and memory per stream is bounded by the flow-control
//! windows. The one exception is bounded too: a request body to an HTTP/1.1 backend is
//! read, up to 64 KiB, before the stream takes a backend connection
//! ([`crate::body_buffer`]).
//! Dropping a stream (a client's RST_STREAM, a deadline) drops its backend request, which
//! resets the backend stream; a backend's reset fails the body, which resets the client's.

use crate::body_buffer::{Budget, NotRead, Prefixed};
use crate::body_gap::{must_be_taken, GapLimited, Stalled};
use crate::config::{BackendProtocol, Config};
use crate::counted::{CountedConnector, NoBackendSlot};
use crate::slots::{Slot, Slots, HTTP1_REASONS, HYPER_REASONS};
use crate::stats::RouteStats;
use crate::stream_log::StreamLog;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use protocol_api::extra_fields::ExtraFields;
use protocol_api::path::RequestPath;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub type BoxError = Box<dyn StdError + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// What every client connection shares: the configuration, and the pool of HTTP/1.1
/// backend connections (one request each at a time, so sharing them lets no client hold
/// another's back). HTTP/2 backend connections are each client connection's own
/// ([`Activity`]): shared, one client's streams held open (a stream limit of 100) or its
/// windows left closed stalled every other client's streams on them.
pub struct Proxy {
    pub config: Config,
    /// The plugin's metrics.
    pub stats: crate::stats::Stats,
    connector: HttpConnector,
    http1: Client<HttpConnector, Body>,
    /// Streams at HTTP/1.1 backends, counted across client connections.
    http1_slots: Arc<Slots>,
    /// What request bodies read before they go to HTTP/1.1 backends may hold.
    http1_buffered: Arc<Budget>,
    /// HTTP/2 backend connections, counted across client connections as the relay's are.
    backend_slots: Arc<Slots>,
    /// Streams at a backend that each client address reset, as on the relay
    /// ([`crate::relay::RESETS_PER_CLIENT`]).
    resets: protocol_api::rate::PerClient,
    /// The operator's fields for answers of 1xx-3xx over cleartext (this engine's only
    /// kind), read once ([`add_extra`]).
    extra: Vec<(HeaderName, HeaderValue)>,
}

/// Bytes of request bodies all client connections together may hold as they are read
/// before going to HTTP/1.1 backends ([`crate::body_buffer`]): a thousand bodies of 64 KiB,
/// sent.
pub const HTTP1_BUFFERED_MAX: usize = 64 << 20;

/// How long a pooled backend connection may stay idle before it is closed, and how many
/// idle ones a backend keeps (hyper-util keeps them for ever, and any number, without).
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
const POOL_IDLE_PER_BACKEND: usize = 64;
/// Most an HTTP/1.1 backend connection's reader holds: a response's head must fit in it
/// (larger: `502`; Envoy's default limit is 60 KiB, nginx's `proxy_buffer_size` 4 or 8
/// KiB), and a body is read at most this far ahead of a client that does not take it.
/// hyper's default, about 400 KiB, let a stream toward a client that grants windows and
/// then reads nothing hold 469 KiB of the daemon's memory; with this, 250 KiB (measured
/// over 128 such streams; the rest is the 64 KiB HTTP/2 send buffer and hyper's own). 16
/// KiB (HAProxy's buffer) held 137 KiB, but cost large downloads 10-20% more CPU a byte.
const HTTP1_READ_BUFFER: usize = 64 * 1024;

impl Proxy {
    pub fn new(config: Config, stats: crate::stats::Stats) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_IDLE_PER_BACKEND)
            .http1_max_buf_size(HTTP1_READ_BUFFER)
            .build(connector.clone());
        let http1_slots = Slots::new(
            config.http1_max,
            config.http1_per_client,
            stats.http1_streams,
            HTTP1_REASONS,
        );
        let http1_buffered = Budget::new(HTTP1_BUFFERED_MAX, stats.http1_buffered);
        // hyper's engine cannot tell what each backend connection holds for a client that
        // takes nothing, only that its window bounds it (1 MiB): an address's budget of
        // held bytes is a connection per MiB of it (an address's 400 connections granting
        // no window held 505 MiB with no such bound).
        let by_budget = config.held_per_client / crate::relay::peer::CONN_WINDOW as usize;
        let backend_slots = Slots::new(
            config.backends_max,
            config.backends_per_client.min(by_budget.max(1)),
            stats.backends,
            HYPER_REASONS,
        );
        // Both were checked at start: a token, and visible ASCII. Every status that has
        // any has them all (200 is one).
        let extra = (config.response_fields.for_answer(200, false))
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::try_from(name).ok()?,
                    HeaderValue::try_from(value).ok()?,
                ))
            })
            .collect();
        Proxy {
            extra,
            config,
            stats,
            connector,
            http1,
            http1_slots,
            http1_buffered,
            backend_slots,
            resets: protocol_api::rate::PerClient::new(crate::relay::RESETS_PER_CLIENT),
        }
    }

    /// A client connection's own HTTP/2 backend connections (one per backend, made when
    /// its first stream there comes), counted for its `client` address
    /// ([`crate::counted`]).
    fn http2_client(&self, client: IpAddr) -> Client<CountedConnector, Body> {
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            // What a backend may make us hold for a client that takes nothing: hyper's
            // defaults are 2 MiB a stream and 5 MiB a connection (5.7 MiB a client
            // connection for 1.3 KB sent, an attacker's review measured). The relay's.
            .http2_initial_stream_window_size(65_535)
            .http2_initial_connection_window_size(crate::relay::peer::CONN_WINDOW)
            .http2_max_send_buf_size(64 * 1024)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(CountedConnector::new(
                self.connector.clone(),
                self.backend_slots.clone(),
                client,
            ))
    }
}

/// Streams open on one client connection, and since when none has been, for its idle limit;
/// and its share of HTTP/1.1 backend connections.
pub struct Activity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// An HTTP/1.1 backend connection carries one request at a time, so each stream routed
    /// to one holds a connection: at most `SWITCHYARD_H2C_HTTP1_PER_CONNECTION` at once,
    /// the other streams wait for one to end.
    http1: Arc<Semaphore>,
    /// Streams waiting for one of those permits (at most [`HTTP1_WAITING_MAX`]).
    http1_waiting: AtomicUsize,
    /// This client connection's HTTP/2 backend connections, closed with it.
    http2: std::sync::OnceLock<Client<CountedConnector, Body>>,
    /// Its client's address reset more streams at backends than it may: the connection
    /// is to go away ([`AtBackend`]).
    pub calm_down: tokio::sync::Notify,
}

impl Activity {
    pub fn new(http1_connections: usize) -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            http1: Arc::new(Semaphore::new(http1_connections)),
            http1_waiting: AtomicUsize::new(0),
            http2: std::sync::OnceLock::new(),
            calm_down: tokio::sync::Notify::new(),
        })
    }

    /// How long the connection has had no stream open; `None` while one is.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed(),
        )
    }

    /// A permit for an HTTP/1.1 backend connection: at once, after a wait among at most
    /// [`HTTP1_WAITING_MAX`] streams, or `None` (too many wait already).
    async fn http1_permit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.http1.clone().try_acquire_owned() {
            return Some(permit);
        }
        let waiting = self.http1_waiting.fetch_add(1, Ordering::AcqRel);
        // Counted until the wait ends, or the stream goes (its future dropped) meanwhile.
        let _waiting = Waiting(&self.http1_waiting);
        match waiting < HTTP1_WAITING_MAX {
            // The semaphore is never closed.
            true => self.http1.clone().acquire_owned().await.ok(),
            false => None,
        }
    }

    fn open(self: &Arc<Self>) -> StreamOpen {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamOpen {
            activity: self.clone(),
            backend: None,
            log: StreamLog::default(),
        }
    }
}

/// Streams of one client connection that may wait for an HTTP/1.1 permit; past them,
/// `503` with `Retry-After`. A waiting stream was granted its 64 KiB window when it opened,
/// but its body is not read while it waits, and what it holds counts against the
/// connection's 1 MiB window: 16 waiting uploads took all of it, and the uploads holding
/// permits could then send nothing and got `408` (a client sending 33 files at once).
/// Half the window is left to those being served.
pub const HTTP1_WAITING_MAX: usize = 8;

/// One stream counted among those waiting for a permit, until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held while a stream is open: by the handler, then by the response body until it ends;
/// with the stream's HTTP/1.1 backend connection, if it has one.
struct StreamOpen {
    activity: Arc<Activity>,
    backend: Option<Arc<BackendHold>>,
    /// The stream's access line, written as this goes.
    log: StreamLog,
}

/// A stream's HTTP/1.1 backend connection, as counted: its client connection's permit and
/// its slot of every connection's count. Held by the request body and by the answer's
/// until both are done (hyper goes on sending a request body after the answer ended).
struct BackendHold {
    _permit: Option<OwnedSemaphorePermit>,
    _slot: Slot,
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        let activity = &self.activity;
        if activity.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            *activity
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }
}

/// Header fields of one connection, never forwarded (RFC 9110 §7.6.1, RFC 9113 §8.2.2).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "proxy-authenticate",
    "proxy-authorization",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fields that `Connection` names are the connection's too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    // TE may only say "trailers" (gRPC sends it, and needs it).
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
}

/// Removes the fields the daemon writes itself (`X-Forwarded-For`, `Forwarded`,
/// `X-Real-IP`), whatever their spelling: what the client wrote in them is not evidence of
/// anything.
fn remove_forwarding(headers: &mut HeaderMap) {
    let spelt: Vec<HeaderName> = (headers.keys())
        .filter(|name| crate::relay::message::is_forwarding(name.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in spelt {
        headers.remove(name);
    }
}

/// A request body's frame with the forwarding fields taken out of its trailers: a backend
/// that merges trailers into the head (some do, with every field) would read the client's
/// word after ours.
fn without_forwarding_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            remove_forwarding(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// `for=` of RFC 7239 §6: IPv6 quoted and bracketed.
fn forwarded_for(peer: &SocketAddr) -> String {
    match peer {
        SocketAddr::V4(v4) => format!("for={}", v4.ip()),
        SocketAddr::V6(v6) => format!("for=\"[{}]\"", v6.ip()),
    }
}

fn answer(status: StatusCode, text: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{text}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Answers a client took nothing of, let go: logged once a second at most (a client can
/// stall every stream's).
static NOT_TAKEN: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();

/// `503` with `Retry-After: 1` for a stream the HTTP/1.1 backends cannot take now, counted
/// and logged (a line a second at most: a client can cause them).
fn busy(stats: &RouteStats, peer: SocketAddr, path: &str, reason: &str) -> Response<Body> {
    stats.answered(503);
    static REFUSALS: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();
    if let Some(unlogged) = REFUSALS.admit() {
        log::warn!("h2c {peer} {path}: {reason}: 503{unlogged}");
    }
    let mut refused = answer(StatusCode::SERVICE_UNAVAILABLE, reason);
    refused
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    refused
}

/// The client a stream's request goes by: the client connection's own for HTTP/2
/// backends (counted), the shared pool for HTTP/1.1 ones (each stream takes a slot).
enum Backend<'a> {
    Http2(&'a Client<CountedConnector, Body>),
    Http1(&'a Client<HttpConnector, Body>),
}

/// Why no backend connection could be made for the client ([`crate::counted`]), if that
/// is why the request failed.
fn no_backend_slot(error: &hyper_util::client::legacy::Error) -> Option<&'static str> {
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = source {
        if let Some(none) = e.downcast_ref::<NoBackendSlot>() {
            return Some(none.0);
        }
        source = e.source();
    }
    None
}

/// The status for a backend that could not answer: `504` for a connect time-out, `408`
/// for a request body that stopped coming (`SWITCHYARD_H2C_BODY_TIMEOUT_MS`), else `502`.
fn failure_status(error: &hyper_util::client::legacy::Error) -> (StatusCode, &'static str) {
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = source {
        if e.downcast_ref::<Stalled>().is_some() {
            return (
                StatusCode::REQUEST_TIMEOUT,
                "waited for a request body that stopped",
            );
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::TimedOut => (StatusCode::GATEWAY_TIMEOUT, "did not answer in time"),
                io::ErrorKind::ConnectionRefused => {
                    (StatusCode::BAD_GATEWAY, "refused the connection")
                }
                _ => (StatusCode::BAD_GATEWAY, "could not be reached"),
            };
        }
        source = e.source();
    }
    if error.is_connect() {
        (StatusCode::BAD_GATEWAY, "could not be reached")
    } else {
        (StatusCode::BAD_GATEWAY, "failed before answering")
    }
}

/// Serves one stream of the connection from `peer`.
pub async fn handle(
    proxy: Arc<Proxy>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut open = activity.open();
    open.log = StreamLog::begin(peer, request.method(), request.uri(), request.headers());
    if request.method() == http::Method::CONNECT {
        // A tunnel (RFC 9113 §8.5), which a reverse proxy does not make; without a path
        // it was routed as `/`, and an HTTP/1.1 backend was sent `CONNECT host:port`.
        log::debug!("h2c {peer}: CONNECT: 501");
        let unrouted = proxy.stats.route(None);
        unrouted.streams.inc();
        unrouted.answered(501);
        let text = "CONNECT is not served here";
        return Ok(with_open(answer(StatusCode::NOT_IMPLEMENTED, text), open));
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let routed = RequestPath::parse(&target).and_then(|path| {
        let route = proxy.config.route(&path)?;
        Ok((path.path().to_string(), path.path_and_query(), route))
    });
    let (path, path_and_query, route) = match routed {
        Ok((path, path_and_query, Some(route))) => (path, path_and_query, route),
        Ok((path, ..)) => {
            log::debug!("h2c {peer}: no route for {path}: 404");
            let unrouted = proxy.stats.route(None);
            unrouted.streams.inc();
            unrouted.answered(404);
            return Ok(with_open(
                answer(StatusCode::NOT_FOUND, "no route for this path"),
                open,
            ));
        }
        Err(e) => {
            // Once a second at most, the path alone and cut short: a client's refused
            // paths made 77 bytes of log a byte it sent (an attacker's review).
            static REFUSED: protocol_api::throttle::Throttle =
                protocol_api::throttle::Throttle::new();
            if let Some(unlogged) = REFUSED.admit() {
                let path = protocol_api::fields::path(&target);
                let shown: String = path.chars().take(200).collect();
                log::info!("h2c {peer}: {shown:?}: {e}; answered 400{unlogged}");
            }
            let unrouted = proxy.stats.route(None);
            unrouted.streams.inc();
            unrouted.answered(400);
            return Ok(with_open(
                answer(StatusCode::BAD_REQUEST, &e.to_string()),
                open,
            ));
        }
    };
    // The path as the lines below show it: escaped and cut (a client's, up to its header
    // list's length: 15 KB lines, a review found).
    let shown = protocol_api::fields::path_for_log(&path);
    let index = proxy
        .config
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, route));
    let stats = proxy.stats.route(index);
    stats.streams.inc();
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().map(|a| a.to_string());
    if let Some(refused) = ambiguous_host(authority.as_deref(), &parts.headers) {
        log::debug!("h2c {peer}: {shown}: {refused}; answered 400");
        stats.answered(400);
        return Ok(with_open(answer(StatusCode::BAD_REQUEST, refused), open));
    }
    strip_hop_by_hop(&mut parts.headers);
    // The client's address is the one this connection came from (or its PROXY protocol
    // header said): what the client itself wrote in these fields is not evidence of
    // anything, so it is replaced, never appended to, whatever its spelling (`x_real_ip`
    // is `HTTP_X_REAL_IP` to a CGI backend). `X-Real-IP` is nginx's, as the relay writes
    // it.
    remove_forwarding(&mut parts.headers);
    // Nor in trailers, which some backends merge into the head.
    let body = open
        .log
        .count_in(body)
        .map_frame(without_forwarding_trailers);
    if let Ok(value) = HeaderValue::from_str(&peer.ip().to_string()) {
        parts.headers.insert("x-real-ip", value.clone());
        parts.headers.insert("x-forwarded-for", value);
    }
    // hyper serves cleartext connections only (it declines TLS ones).
    let forwarded = forwarded_for_element(&peer, authority.as_deref(), "http");
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        parts.headers.insert(header::FORWARDED, value);
    }
    // What was routed is what is forwarded: the normalised path.
    let uri = format!("http://{}{path_and_query}", route.address);
    parts.uri = match uri.parse::<Uri>() {
        Ok(uri) => uri,
        Err(_) => {
            stats.answered(400);
            return Ok(with_open(answer(StatusCode::BAD_REQUEST, "bad path"), open));
        }
    };
    let (client, body) = match route.protocol {
        BackendProtocol::Http2 => {
            parts.version = Version::HTTP_2;
            let client = activity.http2.get_or_init(|| proxy.http2_client(peer.ip()));
            (Backend::Http2(client), body.map_err(BoxError::from).boxed())
        }
        BackendProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            // The client's authority is the host it asked for; an HTTP/1.1 backend reads
            // it from Host.
            if let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
                parts.headers.insert(header::HOST, value);
            }
            // The connection's permit first: it bounds what the connection's bodies may
            // make the daemon hold as they are read.
            let Some(permit) = activity.http1_permit().await else {
                let reason = "too many of this connection's streams wait for an HTTP/1.1 \
                              backend connection (SWITCHYARD_H2C_HTTP1_PER_CONNECTION)";
                return Ok(with_open(busy(stats, peer, &shown, reason), open));
            };
            let limit = match route.streams_requests {
                true => 0,
                false => proxy.config.http1_request_buffer,
            };
            let gap = proxy.config.body_timeout;
            let body = match Prefixed::read(body, limit, gap, &proxy.http1_buffered).await {
                Ok(read) if read.is_whole() => {
                    // hyper ends a body the client reset with NO_ERROR as if it were whole
                    // (meant for answers, RFC 9113 §8.1): one turn back to hyper, which
                    // looks for the reset while this is pending, and drops this stream if
                    // there was one, before a backend is sent a body cut short.
                    tokio::task::yield_now().await;
                    read
                }
                Ok(read) => read,
                Err(not_read) => {
                    // No backend saw any of it. A client's silence or its reset is the
                    // client's to know about, not the operator's (who sees the status).
                    let (status, what) = match not_read {
                        NotRead::Stalled(_) => (StatusCode::REQUEST_TIMEOUT, "stopped"),
                        NotRead::Failed(_) => (StatusCode::BAD_REQUEST, "failed"),
                    };
                    match status {
                        StatusCode::REQUEST_TIMEOUT => {
                            // Once a second at most: a client can stall every stream's.
                            static STOPPED: protocol_api::throttle::Throttle =
                                protocol_api::throttle::Throttle::new();
                            if let Some(unlogged) = STOPPED.admit() {
                                log::info!(
                                    "h2c {peer} {shown}: the request body {what}: {status}{unlogged}"
                                );
                            }
                            stats.answered(status.as_u16());
                        }
                        // The client reset the stream: nobody reads this answer (nor
                        // does its access line name it).
                        _ => {
                            log::debug!("h2c {peer} {shown}: the request body {what}");
                            open.log.client_gone();
                        }
                    }
                    let text = format!("the request body {what} before it was sent on");
                    return Ok(with_open(answer(status, &text), open));
                }
            };
            match proxy.http1_slots.take(peer.ip()) {
                Ok(slot) => {
                    let hold = BackendHold {
                        _permit: Some(permit),
                        _slot: slot,
                    };
                    open.backend = Some(Arc::new(hold));
                }
                Err(full) => {
                    drop(permit);
                    return Ok(with_open(
                        busy(stats, peer, &path, proxy.http1_slots.reason(full)),
                        open,
                    ));
                }
            }
            (
                Backend::Http1(&proxy.http1),
                body.map_err(BoxError::from).boxed(),
            )
        }
    };
    // The answer's end (or its loss) stops what is left of an HTTP/1.1 request body.
    let (body, answered) = match &open.backend {
        Some(hold) => {
            let (answered, over) = tokio::sync::oneshot::channel();
            let timeout = proxy.config.body_timeout;
            let body = GapLimited::limit(body, timeout, over, hold.clone());
            (body, Some(answered))
        }
        None => (body, None),
    };
    let began = Instant::now();
    let mut at_backend = AtBackend {
        proxy: &proxy,
        activity: &activity,
        client: protocol_api::clients::key(peer.ip()),
        answered: false,
    };
    let request = Request::from_parts(parts, body);
    let response = match client {
        Backend::Http2(client) => client.request(request),
        Backend::Http1(client) => client.request(request),
    };
    let response = response.await;
    at_backend.answered = true;
    let response = match response {
        // HTTP/2 has no 101 (RFC 9113 §8.6), and a final answer is not informational.
        Ok(response) if response.status().is_informational() => {
            let status = response.status().as_u16();
            stats.answered(502);
            static INFORMATIONAL: protocol_api::throttle::Throttle =
                protocol_api::throttle::Throttle::new();
            if let Some(unlogged) = INFORMATIONAL.admit() {
                log::warn!(
                    "h2c {peer} {shown} -> {}: backend answered {status}: 502{unlogged}",
                    route.address
                );
            }
            let text = format!("backend for {path} answered {status}");
            return Ok(with_open(answer(StatusCode::BAD_GATEWAY, &text), open));
        }
        Ok(response) => {
            stats.latency.observe_micros(began.elapsed());
            stats.answered(response.status().as_u16());
            response
        }
        Err(e) if no_backend_slot(&e).is_some() => {
            let reason = no_backend_slot(&e).unwrap_or_default();
            return Ok(with_open(busy(stats, peer, &shown, reason), open));
        }
        Err(e) => {
            let (status, what) = failure_status(&e);
            stats.answered(status.as_u16());
            // A client's silence is the client's to know about, not the operator's.
            let level = match status {
                StatusCode::REQUEST_TIMEOUT => log::Level::Info,
                _ => log::Level::Warn,
            };
            // Once a second at most: a client's stalled streams each end so.
            static FAILED: protocol_api::throttle::Throttle =
                protocol_api::throttle::Throttle::new();
            if let Some(unlogged) = FAILED.admit() {
                log::log!(
                    level,
                    "h2c {peer} {shown} -> {}: backend {what}: {e:?}{unlogged}",
                    route.address
                );
            }
            let text = format!("backend for {path} {what}");
            return Ok(with_open(answer(status, &text), open));
        }
    };
    let (mut parts, body) = response.into_parts();
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        // The body was framed by chunks: a Content-Length beside them says nothing true
        // and must go (RFC 9112 §6.3), or the client sees DATA that disagrees with it.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers);
    add_extra(&mut parts.headers, parts.status, &proxy.extra);
    parts.version = Version::HTTP_2;
    open.log.answered(parts.status);
    let body = open.log.count_out(body).map_err(BoxError::from).boxed();
    Ok(match answered {
        Some(answered) => {
            // The stream holds a backend connection for as long as its answer is being
            // taken: a client that stops taking it gives the connection back.
            let limit = proxy.config.body_timeout;
            let address = route.address.clone();
            let shown = shown.clone();
            let stalled = move || {
                if let Some(unlogged) = NOT_TAKEN.admit() {
                    log::info!(
                        "h2c {peer} {shown} -> {address}: the client took nothing of the \
                         answer for {limit:?}; its backend connection is closed{unlogged}"
                    );
                }
            };
            let body = must_be_taken(body, open, limit, answered, stalled);
            Response::from_parts(parts, body)
        }
        None => {
            // An answer from an HTTP/2 backend the client takes nothing of is let go
            // after as long: its windows held what the backend sent for good.
            let limit = proxy.config.body_timeout;
            let address = route.address.clone();
            let stalled = move || {
                if let Some(unlogged) = NOT_TAKEN.admit() {
                    log::info!(
                        "h2c {peer} {shown} -> {address}: the client took nothing of the \
                         answer for {limit:?}; its backend stream is let go{unlogged}"
                    );
                }
            };
            let (answered, _) = tokio::sync::oneshot::channel();
            let body = must_be_taken(body, open, limit, answered, stalled);
            Response::from_parts(parts, body)
        }
    })
}

/// Adds the operator's fields (`SWITCHYARD_RESPONSE_HEADERS`, as [`Proxy`] read them) to a
/// backend's answer of `status` that has none of their names, as the relay does
/// (`relay::message::add_extra`): by the setting's rules, and never
/// `Strict-Transport-Security` (this engine serves cleartext only).
fn add_extra(headers: &mut HeaderMap, status: StatusCode, extra: &[(HeaderName, HeaderValue)]) {
    if !ExtraFields::are_for(status.as_u16()) {
        return;
    }
    for (name, value) in extra {
        if !headers.contains_key(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Why a request's host is refused (`400`): `:authority` with userinfo (RFC 9113 §8.3.1:
/// it MUST NOT have any), or, without `:authority`, more than one `Host` (RFC 9112 §3.2):
/// a backend and the proxy could each take another.
fn ambiguous_host(authority: Option<&str>, headers: &HeaderMap) -> Option<&'static str> {
    if authority.is_some_and(|a| a.contains('@')) {
        return Some("the :authority has userinfo");
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if authority.is_none()
        && (hosts.next().is_some() || first.is_some_and(|h| h.as_bytes().contains(&b',')))
    {
        return Some("more than one Host");
    }
    None
}

/// The characters of `host [":" port]` (RFC 3986 §3.2.2: reg-name, IP literal, port):
/// unreserved, sub-delims, `%`, `:`, `[` and `]`; not `@` (userinfo).
pub(crate) fn is_authority_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b)
}

/// One `Forwarded` element (RFC 7239 §4): `for`, `proto` (`http`, or `https` when the
/// daemon terminated TLS) and `host` when it can be quoted.
pub(crate) fn forwarded_for_element(peer: &SocketAddr, host: Option<&str>, proto: &str) -> String {
    let mut element = format!("{};proto={proto}", forwarded_for(peer));
    // Only an authority's characters go inside the quotes: a `\` or a `"` there would
    // end them early, and the next proxy's element would be read into this one.
    let authority = |h: &&str| h.bytes().all(is_authority_char);
    if let Some(host) = host.filter(authority) {
        element.push_str(&format!(";host=\"{host}\""));
    }
    element
}

/// The stream stays open, for the idle limit, until its response body is done or dropped.
/// The answer is the plugin's own or an HTTP/2 backend's: the stream's HTTP/1.1 backend
/// connection, if it had one, is over (its request failed), and so is its count, whether
/// or not the client ever takes the answer.
/// A request sent to its backend, its answer not yet come. Dropped before, the client reset
/// the stream (hyper drops the service's future): that counts against its address's
/// allowance, as on the relay; past it, the connection goes away. h2's own count of
/// resets takes only streams not yet accepted: paced, an attacker's review reset 13,200
/// streams at a backend in 8 s on one connection.
struct AtBackend<'a> {
    proxy: &'a Proxy,
    activity: &'a Activity,
    client: u64,
    answered: bool,
}

impl Drop for AtBackend<'_> {
    fn drop(&mut self) {
        if !self.answered && !self.proxy.resets.allow(self.client) {
            self.activity.calm_down.notify_one();
        }
    }
}

fn with_open(response: Response<Body>, mut open: StreamOpen) -> Response<Body> {
    open.backend = None;
    open.log.answered(response.status());
    response.map(|body| {
        open.log
            .count_out(body)
            .map_frame(move |frame| {
                let _ = &open;
                frame
            })
            .boxed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_7_6_1_hop_by_hop_fields_and_those_connection_names_go() {
        let mut headers = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
        ] {
            headers.append(n, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["te", "content-type"]);
        let mut headers = HeaderMap::new();
        headers.append("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn rfc9113_8_3_1_and_rfc9112_3_2_an_ambiguous_host_is_refused() {
        let mut two = HeaderMap::new();
        two.append("host", HeaderValue::from_static("a.example"));
        two.append("host", HeaderValue::from_static("b.example"));
        assert!(ambiguous_host(None, &two).is_some());
        let mut listed = HeaderMap::new();
        listed.append("host", HeaderValue::from_static("a.example, b.example"));
        assert!(ambiguous_host(None, &listed).is_some());
        assert!(ambiguous_host(Some("user:pw@evil.example"), &HeaderMap::new()).is_some());
        let mut one = HeaderMap::new();
        one.append("host", HeaderValue::from_static("a.example"));
        assert_eq!(ambiguous_host(None, &one), None);
        assert_eq!(ambiguous_host(Some("a.example:8080"), &two), None);
    }

    #[test]
    fn rfc7239_forwarded_elements() {
        let v4: SocketAddr = "192.0.2.43:4711".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:cafe::17]:4711".parse().unwrap();
        assert_eq!(
            forwarded_for_element(&v4, Some("example.com"), "http"),
            "for=192.0.2.43;proto=http;host=\"example.com\""
        );
        assert_eq!(
            forwarded_for_element(&v6, None, "https"),
            "for=\"[2001:db8:cafe::17]\";proto=https"
        );
        // A `\` would escape the closing quote, and a next proxy's `, for=...` would be
        // read into this element (an attacker's review): no host then.
        assert_eq!(
            forwarded_for_element(&v4, Some("evil\\"), "http"),
            "for=192.0.2.43;proto=http"
        );
        assert_eq!(
            forwarded_for_element(&v4, Some("[::1]:8080"), "http"),
            "for=192.0.2.43;proto=http;host=\"[::1]:8080\""
        );
    }
}
