//! One client connection while it speaks HTTP/1.1 on an event loop: what it has read, what
//! it owes, and which phase of the exchange it is in.
//!
//! The socket is registered once for both directions (edge-triggered); the connection
//! remembers whether it may still read ([`HttpConn::readable`]) or write
//! ([`HttpConn::writable`]) and reads only while it owes little: a client that pipelines
//! requests without reading the answers stops being read once [`OUTPUT_LIMIT`] bytes wait.
//! An upgrade request, read whole, goes to the loop ([`After::Upgrade`]) once everything
//! owed before it is written.

use super::files::FileBody;
use super::metrics_page::MetricsCache;
use super::prior_knowledge::{self, Start};
use super::read_ahead::ReadAhead;
use super::{access_request, Upgrade};
use crate::access::{self, Exchange};
use crate::connection::transport::KernelOf;
use crate::connection::transport::{Transport, Wire};
use crate::connection::Transit;
use crate::daemon::clients::{ClientKey, Limit};
use crate::daemon::metrics::Held;
use crate::daemon::state::{Shared, Ticket};
use crate::daemon::worker_slots::{self, NoSlot};
use crate::http::body::BodyDecoder;
use crate::http::head::{self, BodyLength, Head, Parsed};
use crate::http::response::{DateCache, Response, CONTINUE};
use crate::http::HttpError;
use crate::plugin::Registry;
use crate::proxy_protocol;
use crate::route::{route, Offer, Route};
use protocol_api::kernel_share::KernelShare;
use protocol_api::output::Output;
use protocol_api::throttle::Throttle;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a closing connection is drained after our last response (RFC 9112 §9.6).
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read from one connection per turn, so one fast sender cannot starve others.
const READ_BUDGET: usize = protocol_api::sizes::READ_BUDGET;
/// Most bytes of answers queued for a client before its further requests wait (and it is
/// not read) until they drain. The kernel's send buffer takes answers first; this is what
/// a client that pipelines requests and reads none of the answers makes us hold past it
/// (64 KiB before an attacker's review: with the unparsed requests, 61-67 KiB a connection
/// for the head time-out, 2,000 connections 130 MiB).
const OUTPUT_LIMIT: usize = 16 * 1024;
/// Most requests one turn answers; the rest wait until the loop's other connections had
/// their turns. The kernel takes megabytes of answers before [`OUTPUT_LIMIT`] counts any,
/// so a turn of 256 KiB of pipelined `GET /healthz` answered 7,700 requests (and logged
/// them) while every other connection of the loop waited: 20 such connections held another
/// client's `/healthz` 70-700 ms, an attacker's review found.
const REQUESTS_PER_TURN: u32 = 64;
/// How long a connection made before the stop and not yet used may take to send its first
/// request ([`HttpConn::on_stop`]); past it, `408` as for any late head.
const FIRST_REQUEST_WHILE_STOPPING: Duration = Duration::from_secs(1);
/// Input capacity a connection keeps between turns whatever it holds; past it, at most
/// twice what it holds (see [`HttpConn::trim_input`]).
const INPUT_KEEP: usize = 16 * 1024;
/// Most bytes of a static file asked of one send (the kernel copies them from the page
/// cache).
const FILE_SEND: u64 = 256 * 1024;

/// A static file's body this short is written with its head, copied from the page cache
/// ([`HttpConn::short_body_with_head`]); a longer one goes by `sendfile`.
const WITH_HEAD: u64 = 16 * 1024;

/// Size of an event loop's read buffer, shared by its connections.
pub const SCRATCH_BYTES: usize = protocol_api::sizes::READ_BUFFER;

pub struct HttpConn<T: Transport = Wire> {
    pub stream: T,
    pub peer: SocketAddr,
    pub ticket: Ticket,
    /// Counted in `switchyard_http_connections` while it speaks HTTP; the ticket (open
    /// connections) travels on with a switched connection.
    _gauge: Held,
    phase: Phase,
    /// When the current phase times out (request head or body, idle keep-alive, linger).
    deadline: Instant,
    /// What the peer had acknowledged when a file's body last began to wait for room, or
    /// at its last write time-out ([`Transport::acked`]).
    acked_mark: Option<u32>,
    input: Vec<u8>,
    output: Output,
    /// Requests parsed on this connection.
    requests: u64,
    /// When the request being read started arriving.
    request_started: Option<Instant>,
    /// Where the head being read may end: scanned once as bytes arrive.
    scanner: head::HeadScanner,
    peer_closed: bool,
    /// The socket may hold unread bytes: set by a readable event, cleared by a short read.
    /// A read that returns less than asked drained the socket, so no second read is spent
    /// on `WouldBlock`; new bytes bring a new (edge-triggered) event.
    pub readable: bool,
    /// The socket may take more bytes: set by a writable event, cleared by a short write.
    pub writable: bool,
    /// An event said the peer shut its side (or the connection failed): its end may have
    /// come with its last bytes, which a short read does not show, so reads go on until
    /// one returns 0 or `WouldBlock`.
    pub hung_up: bool,
    /// Whether the connection's first bytes are still to be looked at for a PROXY protocol
    /// header.
    proxy: ProxyHeader,
    /// The trusted HTTP proxy the connection comes from (`SWITCHYARD_FORWARDED_FROM`): each
    /// request names its client ([`HttpConn::forwarded_client`]), and the connection counts
    /// against that client's connections while it serves the request (for good once it
    /// switches), against the proxy's own while it waits for the next.
    forwarder: Option<SocketAddr>,
    /// Its client has its most connections open already: answered `503` and closed.
    over_client_limit: bool,
    /// Its load balancer held its most connections awaiting their PROXY protocol header
    /// when it came: served only if its own is there at the first look.
    past_awaiting_share: bool,
    /// Its client begins TLS handshakes faster than it may: closed before this one.
    over_handshake_rate: bool,
    /// A TLS handshake is under way (counted in `/metrics` when it ends).
    handshaking: bool,
    /// Closed with nothing more to say (a TLS session that cannot begin).
    close_now: bool,
    /// A static file's body, sent after its head (and before any later answer).
    body: Option<Box<FileBody>>,
    /// The body stopped with the socket still writable: its share of a turn was spent.
    body_paused: bool,
    /// A turn read its [`READ_BUDGET`] with the socket still readable: the loop calls again
    /// once its other connections had theirs.
    reading_paused: bool,
    /// Requests this turn began to answer ([`REQUESTS_PER_TURN`] at most).
    turn_requests: u32,
    /// Bytes this turn may still read ([`READ_BUDGET`] at its start).
    turn_budget: usize,
    /// Bytes written since the kernel was last asked how many wait unsent, and whether it
    /// held too many: requests wait then for the socket to say (a writable event) that
    /// the client took them. (A client pipelining requests it never read the answers of
    /// made the daemon's sockets hold 2.8 MB each, 760 connections of one address the
    /// host's whole TCP memory, an attacker's review found.)
    kernel: KernelShare,
    /// The turn answered its most with requests still waiting in the input: the loop calls
    /// again once its other connections had theirs.
    requests_paused: bool,
}

/// The PROXY protocol header at the start of a connection ([`crate::proxy_protocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyHeader {
    /// From a load balancer in `SWITCHYARD_PROXY_FROM`: required.
    Expected,
    /// From anyone else while the protocol is on: refused if it comes.
    Forbidden,
    /// Read, or none to look for.
    Done,
}

/// What looking for a PROXY protocol header came to.
enum ProxyStep {
    Wait,
    Done,
    Closed,
}

enum Phase {
    /// Waiting for, or reading, a request head.
    Head,
    /// Reading the body of an upgrade request.
    UpgradeBody(Box<(Upgrade, BodyDecoder)>),
    /// An upgrade request read whole, waiting for earlier answers to go out.
    UpgradeReady(Box<Upgrade>),
    /// The upgrade request is with the loop, which will answer it or take the connection.
    Switching,
    /// Skipping the body of a request already answered.
    SkipBody(BodyDecoder),
    /// Writing the last response; then `Lingering`.
    Closing,
    /// Our write side is shut; reading and dropping input until EOF or the deadline.
    Lingering,
}

/// The phase by name, for logs (its data is a request or a decoder: not for a log line).
impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Head => "Head",
            Phase::UpgradeBody(_) => "UpgradeBody",
            Phase::UpgradeReady(_) => "UpgradeReady",
            Phase::Switching => "Switching",
            Phase::SkipBody(_) => "SkipBody",
            Phase::Closing => "Closing",
            Phase::Lingering => "Lingering",
        })
    }
}

/// The connection between its loop and the switch: a socket, maybe under TLS.
impl HttpConn<Wire> {
    /// A connection a worker gave back, with the bytes it had read past the request. The
    /// upgrade request is the loop's to answer next.
    pub fn returning(
        transit: Transit<mio::net::TcpStream>,
        shared: &'static Shared,
        now: Instant,
    ) -> HttpConn {
        let Transit {
            stream,
            tls,
            peer,
            ticket,
            read_ahead,
        } = transit;
        let wire = Wire::resumed(stream, tls);
        let mut conn = HttpConn::new(wire, peer, ticket, shared, now);
        conn.proxy = ProxyHeader::Done; // `peer` is the client's already
        conn.readable = true; // bytes may have arrived while it was away
        conn.input = read_ahead;
        conn.requests = 1;
        conn.phase = Phase::Switching;
        conn
    }

    /// The connection leaves HTTP/1.1 for a switch, with the bytes read past the request.
    pub fn into_transit(self) -> Transit<mio::net::TcpStream> {
        Transit {
            stream: self.stream.socket,
            tls: self.stream.tls,
            peer: self.peer,
            ticket: self.ticket,
            read_ahead: self.input,
        }
    }
}

/// What the event loop must do after a turn.
pub enum After {
    Keep,
    Close,
    /// An upgrade request, read whole, with nothing owed before it: negotiate it.
    Upgrade(Box<Upgrade>),
}

/// What a turn may use besides the connection itself.
pub struct Context<'a> {
    pub shared: &'static Shared,
    pub date: &'a mut DateCache,
    pub scratch: &'a mut [u8],
    pub now: Instant,
    /// `/metrics`, rendered at most once a second per loop.
    pub metrics: &'a mut MetricsCache,
}

/// A `GET` or `HEAD` a static route covers (`SWITCHYARD_STATIC_ROUTES`): its answer, and
/// the file's body to send after it; `None` when no route covers it (or it is one of the
/// daemon's own endpoints), so it is routed as before.
fn static_file(
    cx: &Context<'_>,
    head: &Head,
    bytes: &[u8],
) -> Option<(Response, Option<FileBody>)> {
    use switchyard::files::{file_for, Named};
    let routes = &cx.shared.config.static_routes;
    let method = head.method(bytes);
    let path = head.path(bytes);
    if routes.is_empty()
        || matches!(
            path,
            "/healthz" | "/readyz" | "/metrics" | "/status" | "/status.json"
        )
    {
        return None;
    }
    let reading = matches!(method, "GET" | "HEAD");
    let path = match protocol_api::path::RequestPath::parse(head.target(bytes)) {
        Ok(path) => path,
        Err(e) if reading => return Some((Response::error(400, &e.to_string()), None)),
        Err(_) => return None,
    };
    let named = file_for(routes, &path);
    if !reading {
        // A file route's path takes no other method (RFC 9110 §15.5.6: with `Allow`).
        return matches!(named, Named::File { .. } | Named::Hidden).then(|| {
            let response = Response::error(405, "a static file is only read (GET, HEAD)")
                .header("Allow", "GET, HEAD");
            (response, None)
        });
    }
    match named {
        Named::Unrouted => None,
        Named::Hidden => {
            let mut response = Response::error(404, "not found");
            response.close = false;
            Some((response, None))
        }
        Named::Refused(e) => Some((Response::error(400, &e.to_string()), None)),
        Named::File { route, relative } => {
            let root = cx.shared.static_roots.get(route).and_then(Option::as_ref);
            let (response, body) = super::files::answer(root, &relative, &path, head, bytes);
            // `Connection: close`, HTTP/1.0, or the daemon stopping: the last answer.
            let response = match head.close {
                true => response.closing(),
                false => response,
            };
            Some((response, body))
        }
    }
}

/// What an answer's access line says of the request it answers.
struct Request<'a> {
    /// Its line and named fields, or `-` when the head could not be read.
    named: &'a access::Request,
    bytes_in: u64,
    started: Instant,
}

impl Request<'static> {
    /// A request answered before its head was read (or because it could not be).
    fn unread(bytes_in: u64, started: Instant) -> Request<'static> {
        Request {
            named: &access::UNREAD,
            bytes_in,
            started,
        }
    }
}

impl<T: Transport> HttpConn<T> {
    pub fn new(
        stream: T,
        peer: SocketAddr,
        ticket: Ticket,
        shared: &'static Shared,
        now: Instant,
    ) -> HttpConn<T> {
        HttpConn {
            handshaking: stream.is_handshaking(),
            stream,
            peer,
            ticket,
            _gauge: Held::new(&shared.metrics.http_connections),
            phase: Phase::Head,
            deadline: now + shared.config.header_timeout,
            acked_mark: None,
            input: Vec::new(),
            output: Output::default(),
            requests: 0,
            request_started: None,
            scanner: head::HeadScanner::default(),
            peer_closed: false,
            // Registering reports what is already there, so the first read waits for the
            // first event instead of guessing.
            readable: false,
            writable: true,
            hung_up: false,
            proxy: match &shared.config.proxy_protocol {
                pp if pp.expects_header_from(peer.ip()) => ProxyHeader::Expected,
                pp if pp.mode != proxy_protocol::Mode::Off => ProxyHeader::Forbidden,
                _ => ProxyHeader::Done,
            },
            forwarder: match &shared.config {
                c if c.proxy_protocol.expects_header_from(peer.ip()) => None,
                c => c.forwarded_from.trusts(peer.ip()).then_some(peer),
            },
            over_client_limit: false,
            past_awaiting_share: false,
            over_handshake_rate: false,
            close_now: false,
            body: None,
            body_paused: false,
            reading_paused: false,
            turn_requests: 0,
            turn_budget: READ_BUDGET,
            requests_paused: false,
            kernel: KernelShare::default(),
        }
    }

    /// Counts a new connection against its client's limit. One whose PROXY protocol header
    /// is still to come is counted among its load balancer's connections awaiting one
    /// ([`Limit::AwaitingHeader`]: as many as its share of connections, apart from them)
    /// until the header names the client, which [`Ticket::count_client`] then counts it
    /// against instead. False when the balancer holds that share already: the loop closes
    /// its oldest such connections to make room ([`HttpConn::awaiting_since`]), as nginx
    /// closes idle connections when it runs out, and calls [`HttpConn::admit_again`].
    ///
    /// Three reviews shaped this. Such connections counted against no one at first, and one
    /// host in `SWITCHYARD_PROXY_FROM` that connected and sent nothing held every connection
    /// slot for the head time-out, again and again (another client waited 8-9.6 s).
    /// Counted among the balancer's own connections, they got its health checks (headers
    /// that name no client) and every client behind it refused once idle clients held the
    /// share, with a balancer that sends the header with its client's first bytes (AWS
    /// NLB's default). A few seconds' grace past the share let a flood of them hold every
    /// slot again; closing the newest refused every client behind such a balancer once
    /// idle ones held the share. The oldest go: a client whose first bytes come within the
    /// time the share takes to turn over is served. TLS handshakes are counted against the
    /// client alone.
    pub fn admit(&mut self) -> bool {
        match self.proxy {
            ProxyHeader::Expected => self.admit_again(),
            _ => {
                self.count_client();
                true
            }
        }
    }

    /// Counts a connection awaiting its PROXY protocol header among its balancer's, once
    /// room was made; if there is still none, it is served only if its header is there at
    /// the first look (read at once, not at its first event), else closed.
    pub fn admit_again(&mut self) -> bool {
        let counted = self.ticket.count_awaiting_header(self.peer.ip());
        self.past_awaiting_share = !counted;
        self.readable |= !counted; // the first look, now
        counted
    }

    /// When a connection counted among its load balancer's awaiting a PROXY protocol
    /// header was accepted (its first deadline: the head time-out from then), and the
    /// balancer's address; `None` for any other.
    pub fn awaiting_since(&self) -> Option<(Instant, IpAddr)> {
        let counted = self.proxy == ProxyHeader::Expected && !self.past_awaiting_share;
        counted.then_some((self.deadline, self.peer.ip()))
    }

    fn count_client(&mut self) {
        self.over_client_limit = !self.ticket.count_client(self.peer.ip());
        // A TLS handshake costs a signature: one address replaying a ClientHello drove
        // 1,600 a second (70% of a core) and every client's latency up (a review).
        let handshake_ahead = self.stream.tls_waits() || self.stream.is_handshaking();
        self.over_handshake_rate = !self.over_client_limit
            && handshake_ahead
            && !self.ticket.may_handshake(self.peer.ip());
    }

    /// Closes, unanswered, a connection whose client begins TLS handshakes faster than
    /// `SWITCHYARD_TLS_HANDSHAKES_PER_CLIENT` (an answer would need the handshake).
    fn refuse_handshake(&mut self, cx: &mut Context<'_>) {
        cx.shared.clients.warn_refused(
            self.peer,
            "TLS handshakes begun too fast by this client",
            "SWITCHYARD_TLS_HANDSHAKES_PER_CLIENT",
            cx.shared.config.tls_handshakes_per_client as usize,
            cx.shared.config.tls_handshakes_per_client as usize,
        );
        cx.shared.metrics.tls_handshake_failed("rate");
        self.over_handshake_rate = false;
        self.close_now = true;
    }

    /// Logs (throttled) the close, unanswered, of a connection from a load balancer that
    /// holds its most connections awaiting their PROXY protocol header, whose own was not
    /// there at the first look ([`HttpConn::admit`]): nothing says whose it is, or how to
    /// answer.
    fn warn_past_awaiting_share(&self, cx: &mut Context<'_>) {
        let shared = cx.shared;
        shared.clients.warn_refused(
            self.peer,
            "no PROXY protocol header with the connection, from a load balancer holding its \
             most connections awaiting one",
            "SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT",
            shared.config.max_connections_per_client,
            (shared.clients).most(Limit::AwaitingHeader, shared.free_connections()),
        );
    }

    fn warn_over_client_limit(&self, cx: &mut Context<'_>) {
        let shared = cx.shared;
        shared.clients.warn_refused(
            self.peer,
            "too many connections from this client",
            "SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT",
            shared.config.max_connections_per_client,
            (shared.clients).most(Limit::Connections, shared.free_connections()),
        );
    }

    /// The answer to a client past `SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT`: sent at once,
    /// before its request is read, then the connection lingers and closes.
    /// `named`: the request's, when its head was read (a forwarded client's: the proxy's
    /// connection is refused only once a request names the client).
    fn refuse_over_client_limit(&mut self, cx: &mut Context<'_>, named: Option<&access::Request>) {
        const REASON: &str = "too many connections from this client";
        self.warn_over_client_limit(cx);
        if self.stream.is_handshaking() || !self.ticket.may_answer_refusal() {
            // An answer would cost a handshake (a signature) first, or the client has
            // its most refusals waiting for their answers already: closed unanswered.
            self.over_client_limit = false;
            self.close_now = true;
            return;
        }
        let request = match named {
            Some(named) => Request {
                named,
                bytes_in: self.input.len() as u64,
                started: cx.now,
            },
            None => Request::unread(self.input.len() as u64, cx.now),
        };
        if !self.input.is_empty() && prior_knowledge::classify(&self.input) != Start::Http1 {
            // HTTP/2 with prior knowledge (its preface, or what came of it): an HTTP/1.1
            // answer would read as a protocol error; REFUSED_STREAM says try again.
            let goaway = prior_knowledge::refusal(prior_knowledge::error_code(503), REASON);
            self.output.queue().extend_from_slice(&goaway);
            self.log(request, access::NO_STATUS, goaway.len(), Some(REASON));
            self.input = Vec::new();
        } else {
            let response = Response::unavailable(REASON);
            self.respond(cx, &response, request, Some(REASON), false);
        }
        self.close_after_output();
    }

    /// When this connection needs attention next.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Switching | Phase::UpgradeReady(_) if self.output.is_done() => None,
            _ => Some(self.deadline),
        }
    }

    /// A file's body stopped with the socket still writable, or reading stopped with the
    /// socket still readable, having spent its share of a turn: call again once the loop's
    /// other connections had theirs.
    pub fn wants_again(&self) -> bool {
        (self.body_paused && self.body.is_some() && self.writable)
            || (self.reading_paused && self.readable)
            || self.requests_paused
    }

    /// A part of its static file's body that is not in the page cache, to read off the
    /// loop ([`super::read_ahead`]) before the body goes on.
    pub fn read_ahead(&mut self) -> Option<ReadAhead> {
        self.body.as_deref_mut()?.read_ahead()
    }

    /// The client it is counted under, whose reads off the loop take turns with others'.
    pub fn client(&self) -> ClientKey {
        ClientKey::of(self.peer.ip())
    }

    /// The part asked by [`HttpConn::read_ahead`] was read (or could not be read off the
    /// loop): the body goes on.
    pub fn read_ahead_done(&mut self) {
        if let Some(body) = self.body.as_deref_mut() {
            body.read_done();
        }
    }

    /// The daemon begins to stop: true if this connection is to close now, idle between
    /// requests (its client knows a kept-alive connection may close: RFC 9112 §9.3). One
    /// that has not sent its first request yet is kept [`FIRST_REQUEST_WHILE_STOPPING`] at
    /// most for it: its client connected to send one, likely on its way, and closing it
    /// unanswered broke the promise that a stopping instance refuses no connection (1 of
    /// 13,069 requests in the SO_REUSEPORT test, on a loaded machine).
    pub fn on_stop(&mut self, now: Instant) -> bool {
        if !self.is_idle() {
            return false;
        }
        if self.requests > 0 {
            return true;
        }
        self.deadline = self.deadline.min(now + FIRST_REQUEST_WHILE_STOPPING);
        false
    }

    /// Idle between requests: nothing read, nothing owed.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Head)
            && self.input.is_empty()
            && self.output.is_done()
            && !self.stream.has_pending()
            && self.body.is_none()
    }

    /// Reads what is there, handles every complete request, writes what it can: a turn of
    /// its own, with [`READ_BUDGET`] to read and [`REQUESTS_PER_TURN`] to answer.
    pub fn turn(&mut self, cx: &mut Context<'_>) -> After {
        if self.over_handshake_rate {
            self.refuse_handshake(cx);
            return After::Close;
        }
        if self.over_client_limit && self.stream.is_handshaking() {
            // Over its client's limit before its TLS handshake: refused before the
            // handshake's signature is spent on it (the 503 below would need one).
            self.refuse_over_client_limit(cx, None);
            return After::Close;
        }
        // The budget is the turn's, not each read's: a client sending a body to skip (or
        // bytes to drop while lingering) faster than they are read would otherwise keep
        // the turn going, and the loop's other connections and time-outs waiting.
        self.turn_budget = READ_BUDGET;
        self.reading_paused = false;
        self.requests_paused = false;
        self.turn_requests = 0;
        if self.writable {
            // The socket says the client took our answers down to half the limit.
            self.kernel.writable(&mut KernelOf(&mut self.stream));
        }
        self.go_on(cx)
    }

    /// Goes on with the turn [`HttpConn::turn`] began, after the loop answered an upgrade
    /// request of it (refused, or answered by its plugin without a switch), or sent a file
    /// from the disk: what it read and answered so far counts. A client pipelining upgrade
    /// requests that are answered here had every one begin a fresh turn, and held its loop
    /// for as long as it kept sending and reading (an attacker's review: 875 requests, 24-42
    /// ms, in one go; another client's `/healthz` 0.5 -> 492 ms).
    pub fn go_on(&mut self, cx: &mut Context<'_>) -> After {
        loop {
            let mut progressed = false;
            if self.wants_input() && self.turn_budget == 0 {
                self.reading_paused = true;
            } else if self.wants_input() {
                let budget = self.turn_budget;
                let result = self.fill(cx.shared.config.max_header_bytes, cx.scratch, budget);
                if let Ok(n) = result {
                    self.turn_budget = budget.saturating_sub(n);
                }
                if self.handshaking {
                    self.handshake_progress(cx, result.as_ref().err());
                }
                match result {
                    Ok(n) => progressed |= n > 0,
                    Err(_) => {
                        crate::access::tls_without_data(self.stream.tls(), &self.peer);
                        return After::Close;
                    }
                }
            }
            progressed |= self.process(cx);
            self.trim_input();
            if std::mem::take(&mut self.past_awaiting_share) && self.proxy == ProxyHeader::Expected
            {
                self.warn_past_awaiting_share(cx);
                return After::Close;
            }
            if self.close_now {
                return After::Close;
            }
            if self.writable {
                // What the stream holds goes before any new answer (TLS records). Once it
                // is out, requests are read again (`output_full`): the write that emptied
                // it brings no writable event of its own, so it counts as progress here.
                let had_pending = self.stream.has_pending();
                match self.stream.flush_pending() {
                    Ok(true) => progressed |= had_pending,
                    Ok(false) => self.writable = false,
                    Err(_) => return After::Close,
                }
            }
            if self.writable {
                if let Err(e) = self.short_body_with_head() {
                    log::debug!("{}: a static file's body stopped: {e}", self.peer);
                    return After::Close;
                }
                match self.output.flush(&mut self.stream, 0) {
                    Ok(written) => {
                        progressed |= written.bytes > 0;
                        self.writable = !written.blocked;
                        self.look_at_the_kernel(written.bytes, cx);
                    }
                    Err(_) => return After::Close,
                }
            }
            if self.writable && self.body.is_some() && self.output.is_done() {
                match self.send_body(cx) {
                    // Its share spent: the loop calls again after the others.
                    Ok(_) if self.body_paused => return After::Keep,
                    Ok(moved) => progressed |= moved,
                    Err(e) => {
                        log::debug!("{}: a static file's body stopped: {e}", self.peer);
                        return After::Close;
                    }
                }
            }
            // All out: our answers, and what the stream holds of them (TLS records).
            if self.output.is_done() && !self.stream.has_pending() && self.body.is_none() {
                match std::mem::replace(&mut self.phase, Phase::Switching) {
                    Phase::UpgradeReady(upgrade) => {
                        self.kernel.writable(&mut KernelOf(&mut self.stream)); // the plugin's socket
                        return After::Upgrade(upgrade);
                    }
                    Phase::Closing => {
                        if self.stream.shutdown_write().is_err() {
                            return After::Close;
                        }
                        self.phase = Phase::Lingering;
                        self.deadline = cx.now + LINGER;
                        progressed = true;
                    }
                    other => self.phase = other,
                }
            }
            if !progressed {
                break;
            }
        }
        if self.close_now {
            return After::Close;
        }
        // Requests the client sent wait for their turn (a share a turn), for it to read
        // (our answers, or the kernel's), with the client's end behind them: answered first
        // (a review: a pipelining client that half-closed lost all but a turn's answers).
        let requests_wait = self.requests_paused
            || (self.output_full() && !self.input.is_empty() && matches!(self.phase, Phase::Head));
        if self.peer_closed && !requests_wait {
            // The client sent all it will; finish writing what we owe, then close.
            if self.output.is_done() && !self.stream.has_pending() && self.body.is_none() {
                return After::Close;
            }
            if matches!(self.phase, Phase::Head) {
                self.phase = Phase::Closing;
            }
        }
        After::Keep
    }

    /// After `written` more bytes of answers (a static file's body is looked at as it
    /// goes, in [`Self::send_body`]): when the kernel holds more than its share unsent
    /// ([`KernelShare`]), requests wait ([`Self::output_full`]) until the socket reports
    /// writable. Meanwhile the client has the write time-out to take something, as a
    /// static file's reader has.
    fn look_at_the_kernel(&mut self, written: usize, cx: &Context<'_>) {
        if self.body.is_some() {
            self.kernel.count(written);
        } else if self.kernel.wrote(written, &mut KernelOf(&mut self.stream)) {
            self.writable = false;
            self.deadline = cx.now + cx.shared.config.write_timeout;
            self.acked_mark = self.stream.acked();
        }
    }

    /// A short static file's answer ([`WITH_HEAD`]) whose head waits in the output takes
    /// its whole body behind the head, read from the page cache (if it is there, or not
    /// asked about), so that both leave in one write. Sent apart, the head went in a
    /// segment of its own and the client woke for it alone: a 4 KiB page cost two trips
    /// through TCP (`sendto` 26% of the daemon's time, `sendfile` 25%), 0.68-0.75x nginx's
    /// rate, which corks both into one (`tcp_nopush`). Longer bodies are left to
    /// `sendfile`: copied, a 64 KiB one lost more than it gained, and holding the head
    /// back for the body instead (`MSG_MORE`, `TCP_CORK`), though it sped 1 MiB files up
    /// on loopback, left segments waiting up to 200 ms there, where they are 64 KiB, and
    /// readers that took nothing with a megabyte each in the kernel (a review).
    fn short_body_with_head(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.output.is_done() {
            return Ok(()); // no head waiting: the body is under way
        }
        let Some(body) = self.body.as_deref_mut() else {
            return Ok(());
        };
        if body.started {
            return Ok(());
        }
        body.started = true;
        // Only into an output that then stays within its limit: the head alone, or little
        // more (a review: behind 16 KiB already owed, pipelining readers that took
        // nothing held 20 KiB a connection, 4 KiB before).
        let owed = self.output.owed();
        let short =
            body.remaining() <= WITH_HEAD && owed as u64 + body.remaining() <= OUTPUT_LIMIT as u64;
        let Some(wanted) = short
            .then(|| body.ready(body.remaining() as usize))
            .flatten()
        else {
            return Ok(()); // sent by the kernel, or read off the loop first
        };
        let unasked = (!body.asks()).then(Instant::now);
        let queue = self.output.queue();
        let start = queue.len();
        queue.resize(start + wanted, 0);
        let read = body.file.read_at(&mut queue[start..], body.offset);
        let got = *read.as_ref().unwrap_or(&0);
        queue.truncate(start + got);
        body.offset += got as u64;
        if let Some(began) = unasked {
            // A read of a file not asked about that waited for the disk has every file
            // asked about for a while, as its `sendfile` would (a review: without this,
            // 200 cold 15 KB files held a loop 9.5 s on a slow disk).
            let now = Instant::now();
            FileBody::sent_unasked(now - began, now);
        }
        read.map(drop)
    }

    /// Sends what the socket takes of a static file's body; true when bytes moved. A send
    /// shorter than asked means the socket is full (the next writable event goes on).
    fn send_body(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        /// Most bytes of a body per turn, so that a client that takes all it is given (a
        /// proxy on a fast link) cannot keep the loop's other connections waiting: about a
        /// millisecond's work; the rest after them ([`HttpConn::wants_again`]).
        const SHARE: usize = 1024 * 1024;
        let mut moved = false;
        let mut sent = 0;
        self.body_paused = false;
        while let Some(body) = self.body.as_deref_mut() {
            if body.remaining() == 0 {
                self.body = None;
                self.deadline = cx.now + cx.shared.config.header_timeout; // keep-alive again
                break;
            }
            if sent >= SHARE {
                self.body_paused = true;
                break;
            }
            let Some(asked) = body.ready(body.remaining().min(FILE_SEND) as usize) else {
                break; // the next part is read off the loop first
            };
            let file = &body.file;
            let unasked = (!body.asks()).then(Instant::now);
            match self.stream.send_file(file, body.offset, asked, cx.scratch) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()), // the file shrank
                Ok(n) => {
                    body.offset += n as u64;
                    sent += n;
                    moved = true;
                    let now = Instant::now();
                    self.deadline = now + cx.shared.config.write_timeout;
                    self.acked_mark = None;
                    if let Some(began) = unasked {
                        FileBody::sent_unasked(now - began, now);
                    }
                    if self.kernel.wrote(n, &mut KernelOf(&mut self.stream)) {
                        // The kernel holds its share unsent for a client that takes little
                        // (a review: readers of 6.5 KB/s each had 3.8 MB of a file held in
                        // their sockets, 420 of them past this host's TCP memory): the rest
                        // waits until it takes some, as answers do.
                        self.writable = false;
                        self.acked_mark = self.stream.acked();
                        break;
                    }
                    // A short send may mean the socket is full, or not (an interrupted
                    // copy): only `WouldBlock` says it is, so the next send finds out.
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    if self.acked_mark.is_none() {
                        // A wait begins: what the peer had taken then.
                        self.acked_mark = self.stream.acked();
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }

    /// Notes the end of a TLS handshake, or its failure (`error`, or the client's end).
    fn handshake_progress(&mut self, cx: &mut Context<'_>, error: Option<&io::Error>) {
        let reason = match (error, self.stream.tls()) {
            // Done, even if what came with the client's last flight then failed the session
            // (that is the connection's end, not the handshake's).
            (_, Some(tls)) if !tls.is_handshaking() => {
                self.handshaking = false;
                if let Some(summary) = tls.summary() {
                    cx.shared.metrics.tls_handshake_done(summary);
                }
                // The handshake had its own time; the first request gets all of its own.
                if self.requests == 0 && self.input.is_empty() {
                    self.deadline = cx.now + cx.shared.config.header_timeout;
                }
                return;
            }
            (Some(e), _) => crate::tls::failure_reason(e),
            (None, _) if self.peer_closed => "closed",
            (None, _) => return,
        };
        self.handshaking = false;
        log::debug!("{}: TLS handshake failed ({reason}): {error:?}", self.peer);
        cx.shared.metrics.tls_handshake_failed(reason);
    }

    /// Ends the current phase on its deadline.
    pub fn expire(&mut self, cx: &mut Context<'_>) -> After {
        if cx.now < self.deadline {
            return After::Keep;
        }
        log::debug!(
            "{}: time-out in phase {:?} ({} requests, {} bytes unread, {} owed)",
            self.peer,
            self.phase,
            self.requests,
            self.input.len(),
            self.output.owed()
        );
        if self.body.is_some() || self.kernel.is_full() {
            // Taken means acknowledged, as for upgraded connections: a client reading
            // slowly and steadily takes bytes from the kernel's buffer, though no send
            // finds room in it for a while (a review: readers of 8-64 KiB a second were
            // cut off at the write time-out, then served by the orphaned socket).
            let acked = self.stream.acked();
            if acked.is_some() && acked != self.acked_mark {
                self.acked_mark = acked;
                self.deadline = cx.now + cx.shared.config.write_timeout;
                return After::Keep;
            }
            log::debug!(
                "{}: our answers (or a static file's body) taken nothing of for the write \
                 time-out; closed",
                self.peer
            );
            // With a reset: what the kernel holds for a client that takes nothing is
            // dropped, not kept in an orphaned socket for minutes after we let it go (50
            // stalled downloads held 188 MiB of kernel memory so, after the daemon exited).
            self.stream.reset_if_unsent();
            return After::Close;
        }
        if self.stream.is_handshaking() {
            log::debug!(
                "{}: TLS handshake not done within the head time-out",
                self.peer
            );
            cx.shared.metrics.tls_handshake_failed("timeout");
            return After::Close;
        }
        match self.phase {
            Phase::Lingering | Phase::Closing | Phase::Switching | Phase::UpgradeReady(_) => {
                After::Close
            }
            Phase::Head if self.input.is_empty() && self.requests > 0 => After::Close, // idle keep-alive
            Phase::Head if self.proxy == ProxyHeader::Expected => {
                static LATE: Throttle = Throttle::new();
                if let Some(unlogged) = LATE.admit() {
                    log::warn!(
                        "{}: PROXY protocol header incomplete within the head time-out; connection closed{unlogged}",
                        self.peer
                    );
                }
                After::Close
            }
            // The request was answered already; one answer per request, so just close.
            Phase::SkipBody(_) => After::Close,
            Phase::Head | Phase::UpgradeBody(_) => {
                self.fail(cx, HttpError::new(408, "request not received in time"));
                self.turn(cx)
            }
        }
    }

    /// Answers the upgrade request the loop was given (a refusal, or the plain answer when
    /// no plugin switched), then goes on as the answer says: keep-alive or close.
    pub fn answer_upgrade(
        &mut self,
        cx: &mut Context<'_>,
        upgrade: &Upgrade,
        response: &Response,
        reason: Option<&str>,
    ) {
        if upgrade.prior_knowledge {
            let code = prior_knowledge::error_code(response.status);
            return self.refuse_prior_knowledge(upgrade, code, reason.unwrap_or("declined"));
        }
        let request = Request {
            named: &upgrade.access_request(),
            bytes_in: upgrade.bytes_in(),
            started: upgrade.started,
        };
        self.respond(cx, response, request, reason, upgrade.is_head());
        if response.close {
            self.close_after_output();
        } else {
            self.next_request(cx);
        }
    }

    /// An HTTP/2 client that was not served gets GOAWAY, not an HTTP/1.1 answer.
    fn refuse_prior_knowledge(&mut self, upgrade: &Upgrade, code: u32, reason: &str) {
        static REFUSED: Throttle = Throttle::new();
        if let Some(unlogged) = REFUSED.admit() {
            log::warn!(
                "{}: HTTP/2 with prior knowledge not served ({reason}); sent GOAWAY{unlogged}",
                self.peer
            );
        }
        let goaway = prior_knowledge::refusal(code, reason);
        self.output.queue().extend_from_slice(&goaway);
        let request = Request {
            named: &upgrade.access_request(),
            bytes_in: upgrade.bytes_in(),
            started: upgrade.started,
        };
        self.log(request, access::NO_STATUS, goaway.len(), Some(reason));
        self.close_after_output();
    }

    fn wants_input(&self) -> bool {
        !self.peer_closed
            && self.readable
            && match self.phase {
                Phase::Closing | Phase::Switching | Phase::UpgradeReady(_) => false,
                Phase::Lingering => true,
                _ => !self.output_full() && self.body.is_none() && !self.requests_paused,
            }
    }

    /// The client has our answers to read first: [`OUTPUT_LIMIT`] bytes of them wait, or
    /// TLS records the socket did not take do (sealed, they count as written: without them
    /// here, a TLS client pipelining requests it never read the answers of held its
    /// session's records on top of the limit, 91-99 KiB a connection against 39 in
    /// cleartext, an attacker's review found).
    fn output_full(&self) -> bool {
        self.output.owed() >= OUTPUT_LIMIT || self.stream.has_pending() || self.kernel.is_full()
    }

    /// Reads until the socket is drained, `budget` bytes came, or a head grows past the
    /// limit. Reads land in the loop's shared `scratch` buffer and only what arrived is
    /// kept, so an idle connection holds no buffer at all. While a head is awaited, a read
    /// takes no more than fills the input to one byte past the limit on heads: what a
    /// client sends ahead of its answers waits in its socket, not with us.
    fn fill(&mut self, max_head: usize, scratch: &mut [u8], budget: usize) -> io::Result<usize> {
        let mut total = 0;
        while self.readable && total < budget {
            let asked = match self.phase {
                Phase::Head if self.input.len() > max_head => break,
                Phase::Head => scratch.len().min(max_head + 1 - self.input.len()),
                _ => scratch.len(),
            };
            let scratch = &mut scratch[..asked];
            match self.stream.read(scratch) {
                Ok(0) => {
                    self.peer_closed = true;
                    self.readable = false;
                    break;
                }
                Ok(n) => {
                    total += n;
                    if let Phase::Head = self.phase {
                        // A head's buffer grows to the limit on heads at most, not to
                        // twice what it holds (a review: 31 KiB for a 16 KiB head).
                        let need = self.input.len() + n;
                        if need > self.input.capacity() {
                            let doubled = self.input.capacity() * 2;
                            let grown = doubled.min(max_head + 1).max(need);
                            self.input.reserve_exact(grown - self.input.len());
                        }
                    }
                    if !matches!(self.phase, Phase::Lingering) {
                        self.input.extend_from_slice(&scratch[..n]);
                    }
                    self.readable = n == scratch.len() || self.hung_up;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Gives back what a large read left unused: a turn reads up to `READ_BUDGET` (256 KiB)
    /// into the input, and a client that sent that much of a body to skip, or a burst of
    /// requests ending in a part of one, and then went quiet would otherwise make its
    /// connection hold all of it until the time-out.
    fn trim_input(&mut self) {
        let (len, capacity) = (self.input.len(), self.input.capacity());
        if capacity > INPUT_KEEP && capacity > 2 * len {
            match len {
                0 => self.input = Vec::new(),
                _ => self.input.shrink_to(len.max(INPUT_KEEP)),
            }
        }
    }

    /// Queues `response` and writes its access line: the one step every answer takes.
    fn respond(
        &mut self,
        cx: &mut Context<'_>,
        response: &Response,
        request: Request<'_>,
        reason: Option<&str>,
        head_only: bool,
    ) {
        let queue = self.output.queue();
        let before = queue.len();
        cx.shared.metrics.response(response.status);
        let extra = crate::http::response::ExtraFor::new(
            &cx.shared.config.response_headers,
            self.stream.tls().is_some(),
        );
        response.write_to(queue, cx.date.now(), head_only, extra);
        let apart = match head_only {
            true => 0,
            false => response.sent_apart.unwrap_or(0) as usize,
        };
        let written = queue.len() - before + apart;
        self.log(request, response.status, written, reason);
    }

    /// The access line of an answered request.
    fn log(&self, request: Request<'_>, status: u16, bytes_out: usize, reason: Option<&str>) {
        access::log(&Exchange {
            peer: self.peer,
            request: request.named,
            status,
            protocol: None,
            tls: self
                .stream
                .tls()
                .and_then(|tls| tls.summary())
                .map(Into::into),
            bytes_in: request.bytes_in,
            bytes_out: bytes_out as u64,
            started: request.started,
            reason,
        });
    }

    /// Answers with an error, then closes.
    fn fail(&mut self, cx: &mut Context<'_>, error: HttpError) {
        let response = Response::error(error.status, error.reason);
        log::debug!("{}: {} {}", self.peer, error.status, error.reason);
        let request = Request::unread(
            self.input.len() as u64,
            self.request_started.unwrap_or(cx.now),
        );
        self.respond(cx, &response, request, Some(error.reason), false);
        self.close_after_output();
    }

    fn close_after_output(&mut self) {
        self.phase = Phase::Closing;
        self.input = Vec::new();
    }

    /// Handles what the input holds; true when something changed.
    fn process(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progressed = false;
        loop {
            match &mut self.phase {
                Phase::Closing | Phase::Switching | Phase::UpgradeReady(_) => return progressed,
                Phase::Lingering => {
                    self.input = Vec::new();
                    return progressed;
                }
                Phase::SkipBody(decoder) => match decoder.decode(&self.input, None) {
                    // The request was answered already: one response per request, so
                    // no second one; the framing is lost, so close after the answer.
                    Err(e) => {
                        log::debug!(
                            "{}: body of an answered request: {}; closing",
                            self.peer,
                            e.reason
                        );
                        self.close_after_output();
                    }
                    Ok(progress) => {
                        self.input.drain(..progress.consumed);
                        if !progress.done {
                            return progressed || progress.consumed > 0;
                        }
                        self.next_request(cx);
                    }
                },
                Phase::UpgradeBody(pending) => {
                    let (upgrade, decoder) = &mut **pending;
                    let result = decoder.decode(&self.input, Some(&mut upgrade.body));
                    let over = upgrade.body.len() > cx.shared.config.max_body_bytes;
                    match result {
                        Err(e) => self.fail(cx, e),
                        Ok(_) if over => self.fail(
                            cx,
                            HttpError::new(413, "request body larger than the limit"),
                        ),
                        Ok(progress) => {
                            self.input.drain(..progress.consumed);
                            if !progress.done {
                                return progressed || progress.consumed > 0;
                            }
                            let Phase::UpgradeBody(pending) =
                                std::mem::replace(&mut self.phase, Phase::Switching)
                            else {
                                unreachable!("matched above")
                            };
                            self.phase = Phase::UpgradeReady(Box::new(pending.0));
                        }
                    }
                }
                Phase::Head if self.over_client_limit => {
                    self.over_client_limit = false;
                    self.refuse_over_client_limit(cx, None);
                }
                Phase::Head => {
                    if self.input.is_empty() {
                        self.input = Vec::new(); // hold no buffer between requests
                        if self.body.is_none() {
                            self.back_to_the_forwarder();
                        }
                        return progressed;
                    }
                    if self.body.is_some() {
                        return progressed; // a file's body goes out before the next answer
                    }
                    if self.output_full() {
                        return progressed; // the client reads our answers first
                    }
                    if self.turn_requests >= REQUESTS_PER_TURN {
                        self.requests_paused = true; // the rest after the loop's others
                        return progressed;
                    }
                    self.look_at_the_kernel(0, cx); // a body's bytes count too
                    if self.kernel.is_full() {
                        return progressed;
                    }
                    self.request_started.get_or_insert(cx.now);
                    if self.proxy != ProxyHeader::Done {
                        match self.proxy_header(cx) {
                            ProxyStep::Wait => return progressed,
                            ProxyStep::Closed => return true,
                            ProxyStep::Done => {
                                progressed = true;
                                continue;
                            }
                        }
                    }
                    if self.requests == 0 {
                        match self.prior_knowledge(cx) {
                            Start::Http1 => {}
                            Start::Partial => return progressed,
                            Start::Preface => {
                                progressed = true;
                                continue;
                            }
                        }
                    }
                    let config = &cx.shared.config;
                    let limits = head::Limits {
                        head: config.max_header_bytes,
                        target: config.max_target_bytes,
                    };
                    if !self.scanner.may_be_complete(&self.input, limits) {
                        return progressed;
                    }
                    match head::parse(&self.input, limits) {
                        Ok(Parsed::Partial) => return progressed,
                        Err(e) => self.fail(cx, e),
                        Ok(Parsed::Complete(head)) => {
                            self.requests += 1;
                            self.turn_requests += 1;
                            self.scanner = head::HeadScanner::default();
                            match self.forwarded_client(cx, &head) {
                                true => self.request(cx, head),
                                false => {
                                    let named = access_request(&head, &self.input);
                                    self.refuse_over_client_limit(cx, Some(&named));
                                }
                            }
                        }
                    }
                }
            }
            progressed = true;
        }
    }

    /// A request from a trusted HTTP proxy ([`switchyard::forwarded`]): the client its
    /// `X-Forwarded-For` names becomes the peer (port 0: the list carries none), and the
    /// connection counts against that client's connections, as a connection of its own
    /// would; a list that names no one leaves the proxy's own address. False when the one
    /// named has its most connections already: refused as it would be at its own
    /// connection's start.
    fn forwarded_client(&mut self, cx: &Context<'_>, head: &Head) -> bool {
        let Some(proxy) = self.forwarder else {
            return true;
        };
        let bytes = &self.input[..head.len];
        let entries: Vec<&[u8]> = head.list(bytes, "x-forwarded-for").collect();
        let client = match cx.shared.config.forwarded_from.client(&entries) {
            Some(ip) => SocketAddr::new(ip, 0),
            None => proxy,
        };
        if client == self.peer {
            return true;
        }
        log::debug!("{proxy}: a request forwarded for {client}");
        self.peer = client;
        self.ticket.count_client(client.ip())
    }

    /// A trusted HTTP proxy's connection waits for its next request: it counts against the
    /// proxy's own connections again, not the last client's (a review: kept-alive
    /// connections in nginx's pool held their last clients' shares, and a client with
    /// nothing open was refused). Closed once the proxy has its most connections open.
    fn back_to_the_forwarder(&mut self) {
        let Some(proxy) = self.forwarder.filter(|proxy| *proxy != self.peer) else {
            return;
        };
        self.peer = proxy;
        if !self.ticket.count_client(proxy.ip()) {
            self.ticket.count_nowhere();
            self.close_after_output();
        }
    }

    /// The PROXY protocol header a load balancer sends before anything else: its client
    /// address becomes this connection's peer. Anything wrong closes the connection.
    fn proxy_header(&mut self, cx: &mut Context<'_>) -> ProxyStep {
        let refusal = match self.proxy {
            ProxyHeader::Done => return ProxyStep::Done,
            ProxyHeader::Forbidden => match proxy_protocol::looks_like_header(&self.input) {
                None => return ProxyStep::Wait,
                Some(false) => {
                    self.proxy = ProxyHeader::Done;
                    return ProxyStep::Done;
                }
                Some(true) => "a PROXY protocol header from a peer not in SWITCHYARD_PROXY_FROM",
            },
            ProxyHeader::Expected => {
                let mode = cx.shared.config.proxy_protocol.mode;
                // One larger than a request head may be would not be read whole (reading
                // stops past that): refused as soon as its length is known.
                let max = cx.shared.config.max_header_bytes;
                let header = match proxy_protocol::v2_declared_len(&self.input) > Some(max) {
                    true => proxy_protocol::Header::Refused(
                        "a PROXY protocol v2 header longer than SWITCHYARD_MAX_HEADER_BYTES",
                    ),
                    false => proxy_protocol::header(&self.input, mode),
                };
                match header {
                    proxy_protocol::Header::Incomplete => return ProxyStep::Wait,
                    proxy_protocol::Header::Complete { len, client } => {
                        if let Some(client) = client {
                            log::debug!("{}: PROXY protocol: the client is {client}", self.peer);
                            self.peer = client;
                        }
                        self.input.drain(..len);
                        self.proxy = ProxyHeader::Done;
                        self.count_client();
                        if self.over_handshake_rate {
                            self.refuse_handshake(cx);
                            return ProxyStep::Closed;
                        }
                        if self.over_client_limit && self.stream.tls_waits() {
                            // Refused before its TLS session begins (a handshake costs a
                            // signature; an answer would need one): closed unanswered.
                            self.warn_over_client_limit(cx);
                            self.over_client_limit = false;
                            self.close_now = true;
                            return ProxyStep::Closed;
                        }
                        if let Err(e) = self.stream.proxy_header_read(&mut self.input) {
                            log::debug!("{}: TLS handshake failed: {e}", self.peer);
                            let reason = crate::tls::failure_reason(&e);
                            cx.shared.metrics.tls_handshake_failed(reason);
                            self.close_now = true;
                            return ProxyStep::Closed;
                        }
                        // The TLS session (if any) begins now.
                        self.handshaking = self.stream.is_handshaking();
                        return ProxyStep::Done;
                    }
                    proxy_protocol::Header::Refused(why) => why,
                }
            }
        };
        static REFUSED: Throttle = Throttle::new();
        if let Some(unlogged) = REFUSED.admit() {
            log::warn!("{}: {refusal}; connection closed{unlogged}", self.peer);
        }
        self.close_after_output();
        ProxyStep::Closed
    }

    /// The first bytes of a connection, when a plugin takes HTTP/2 with prior knowledge: the
    /// whole preface goes to it as an upgrade with no `101`.
    fn prior_knowledge(&mut self, cx: &mut Context<'_>) -> Start {
        let alpn_h2 = self
            .stream
            .tls()
            .and_then(|tls| tls.summary())
            .is_some_and(|summary| summary.alpn == "h2");
        let registry = cx.shared.registry();
        let plugin = prior_knowledge::plugin(registry);
        let start = prior_knowledge::classify(&self.input);
        if alpn_h2 && start == Start::Http1 {
            // RFC 9113 §3.4: after ALPN h2 the client's first bytes are the preface.
            const PROTOCOL_ERROR: u32 = 0x1;
            let reason = "not the HTTP/2 connection preface, after ALPN h2";
            log::debug!("{}: {reason}; sent GOAWAY", self.peer);
            let goaway = prior_knowledge::refusal(PROTOCOL_ERROR, reason);
            self.output.queue().extend_from_slice(&goaway);
            let request = Request::unread(self.input.len() as u64, cx.now);
            self.log(request, access::NO_STATUS, goaway.len(), Some(reason));
            self.input = Vec::new();
            self.close_after_output();
            return Start::Partial;
        }
        let Some(plugin) = plugin else {
            if alpn_h2 && start == Start::Preface {
                // ALPN was settled at start; the plugin left service since.
                const REFUSED_STREAM: u32 = 0x7;
                let reason = "no plugin serves HTTP/2 now";
                let goaway = prior_knowledge::refusal(REFUSED_STREAM, reason);
                self.output.queue().extend_from_slice(&goaway);
                let request = Request::unread(self.input.len() as u64, cx.now);
                self.log(request, access::NO_STATUS, goaway.len(), Some(reason));
                self.close_after_output();
                return Start::Partial;
            }
            return Start::Http1;
        };
        if start == Start::Preface {
            self.requests += 1;
            self.input.drain(..prior_knowledge::PREFACE.len());
            let started = self.request_started.take().unwrap_or(cx.now);
            let mut upgrade = prior_knowledge::upgrade(registry, plugin, started);
            upgrade.tls = self.stream.tls().and_then(crate::tls::Handshake::of);
            self.phase = Phase::UpgradeReady(Box::new(upgrade));
        }
        start
    }

    /// Handles one complete request head at the start of the input.
    fn request(&mut self, cx: &mut Context<'_>, mut head: Head) {
        let started = self.request_started.take().unwrap_or(cx.now);
        if cx.shared.is_stopping() {
            head.close = true;
        }
        let bytes = &self.input[..head.len];
        let named = access_request(&head, bytes);
        let registry = cx.shared.registry();
        let in_service = |plugin| registry.in_service(plugin);
        let mut file_body = None;
        let devconsole = cx.shared.config.devconsole;
        let static_file = match head.wants_upgrade {
            true => None,
            false => static_file(cx, &head, bytes),
        };
        let response = match static_file {
            Some((response, body)) => {
                file_body = body;
                response
            }
            None => match route(&head, bytes, &registry.tokens, &in_service, devconsole) {
                Route::Upgrade(offers) => {
                    return self.upgrade_request(cx, head, registry, offers, started)
                }
                Route::Metrics => {
                    let from = &cx.shared.config.metrics_from;
                    let response = if came_through_proxy(&head, bytes)
                        || !crate::daemon::status::is_from(from, self.peer.ip())
                    {
                        static REFUSED: Throttle = Throttle::new();
                        if let Some(unlogged) = REFUSED.admit() {
                            log::info!(
                                "/metrics refused to {}: read it from an address in SWITCHYARD_METRICS_FROM, not through a proxy{unlogged}",
                                self.peer
                            );
                        }
                        Response::error(
                            403,
                            "the metrics are answered to SWITCHYARD_METRICS_FROM only, not through a proxy",
                        )
                    } else {
                        Response::new(200, cx.metrics.body(cx.shared, cx.now))
                            .header("Content-Type", "text/plain; version=0.0.4")
                    };
                    if head.close {
                        response.closing()
                    } else {
                        response
                    }
                }
                Route::Console => {
                    let response = super::console::page();
                    match head.close {
                        true => response.closing(),
                        false => response,
                    }
                }
                Route::Readiness => {
                    // Readiness, not liveness: `503` from the stop signal on, while the
                    // daemon still serves (`/healthz` stays `200`).
                    let response = match cx.shared.is_ready() {
                        true => Response::new(200, &b"ready\n"[..]),
                        false => Response::new(503, &b"stopping\n"[..]),
                    }
                    .header("Content-Type", "text/plain");
                    if head.close {
                        response.closing()
                    } else {
                        response
                    }
                }
                Route::Status(page) => {
                    // A Host that is not text names no address: refused, as a name is.
                    let host = head
                        .values(bytes, "host")
                        .next()
                        .map(|h| std::str::from_utf8(h).unwrap_or(""));
                    let asker = super::status_page::Asker {
                        peer: self.peer.ip(),
                        host,
                        proxied: came_through_proxy(&head, bytes),
                    };
                    let response = super::status_page::answer(cx.shared, page, asker);
                    if head.close {
                        response.closing()
                    } else {
                        response
                    }
                }
                Route::Answer(response) => response,
            },
        };
        // RFC 9110 §10.1.1: the client is waiting for 100 before it sends the body, and
        // after a final answer it may never send it; so close rather than wait.
        let response = if head.expect_continue && head.body != BodyLength::None {
            response.closing()
        } else {
            response
        };
        let body_bytes = match head.body {
            BodyLength::Fixed(n) => n,
            _ => 0,
        };
        let request = Request {
            named: &named,
            bytes_in: head.len as u64 + body_bytes,
            started,
        };
        let head_only = head.method(bytes) == "HEAD";
        self.respond(cx, &response, request, None, head_only);
        self.input.drain(..head.len);
        if response.close {
            self.close_after_output();
        } else if head.body != BodyLength::None {
            self.phase = Phase::SkipBody(BodyDecoder::new(head.body));
            self.deadline = cx.now + cx.shared.config.header_timeout;
        } else {
            self.next_request(cx);
        }
        if let Some(body) = file_body {
            self.body = Some(Box::new(body));
            // Progress, not the whole file, is what the write time-out waits for.
            self.deadline = cx.now + cx.shared.config.write_timeout;
        }
    }

    /// An upgrade request: refused at once if it cannot be served, else its body is read.
    fn upgrade_request(
        &mut self,
        cx: &mut Context<'_>,
        head: Head,
        registry: &'static Registry,
        offers: Vec<Offer>,
        started: Instant,
    ) {
        let shared = cx.shared;
        let too_large =
            matches!(head.body, BodyLength::Fixed(n) if n > shared.config.max_body_bytes as u64);
        // Only workers can serve these offers, and none is free (or this client holds its
        // most): say so before `100`.
        let only_workers = offers
            .iter()
            .all(|o| !registry.plugins[o.plugin].is_readiness());
        let free_workers = shared.worker_slots.free_after_one();
        let refusal = if shared.is_stopping() {
            static STOPPING: Throttle = Throttle::new();
            if let Some(unlogged) = STOPPING.admit() {
                log::warn!(
                    "{}: the server is stopping; answered 503{unlogged}",
                    self.peer
                );
            }
            Some("the server is stopping")
        } else if too_large || !only_workers {
            None
        } else if !shared.worker_slots.has_room() {
            if let Some(unlogged) = worker_slots::FULL_LOGGED.admit() {
                let reason = NoSlot::Full.reason();
                log::warn!("{}: {reason}; answered 503{unlogged}", self.peer);
            }
            Some(NoSlot::Full.reason())
        } else if shared
            .clients
            .refuses(self.peer.ip(), Limit::Workers, free_workers)
        {
            let reason = NoSlot::ClientLimit.reason();
            let max = shared.config.workers_per_client;
            let most = shared.clients.most(Limit::Workers, free_workers);
            let setting = "SWITCHYARD_WORKERS_PER_CLIENT";
            shared
                .clients
                .warn_refused(self.peer, reason, setting, max, most);
            Some(reason)
        } else {
            None
        };
        let bytes = &self.input[..head.len];
        if too_large || refusal.is_some() {
            let named = access_request(&head, bytes);
            let (response, reason) = match refusal {
                Some(reason) => (Response::unavailable(reason), reason),
                None => (
                    Response::error(413, "request body larger than the limit"),
                    "request body larger than the limit",
                ),
            };
            let request = Request {
                named: &named,
                bytes_in: head.len as u64,
                started,
            };
            self.respond(cx, &response, request, Some(reason), false);
            self.close_after_output();
            return;
        }
        let head_bytes = self.input[..head.len].to_vec();
        self.input.drain(..head.len);
        let (body_length, expect_continue) = (head.body, head.expect_continue);
        let upgrade = Upgrade {
            head,
            head_bytes,
            body: Vec::new(),
            registry,
            offers,
            started,
            prior_knowledge: false,
            tls: self.stream.tls().and_then(crate::tls::Handshake::of),
        };
        if body_length == BodyLength::None {
            self.phase = Phase::UpgradeReady(Box::new(upgrade));
            return;
        }
        if expect_continue {
            // RFC 9110 §10.1.1: the client waits for this before sending the body.
            self.output.queue().extend_from_slice(CONTINUE);
        }
        let decoder =
            BodyDecoder::new(body_length).keeping_at_most(cx.shared.config.max_body_bytes);
        self.phase = Phase::UpgradeBody(Box::new((upgrade, decoder)));
        self.deadline = cx.now + cx.shared.config.header_timeout;
    }

    fn next_request(&mut self, cx: &mut Context<'_>) {
        self.phase = Phase::Head;
        self.deadline = cx.now + cx.shared.config.header_timeout;
    }
}

/// The request names a proxy it came through (`Forwarded`, `X-Forwarded-For`,
/// `X-Real-IP`, `Via`): the peer is then not the asker, and the daemon's own pages that
/// answer by address (`/status`, `/metrics`) refuse it.
fn came_through_proxy(head: &Head, bytes: &[u8]) -> bool {
    ["forwarded", "x-forwarded-for", "x-real-ip", "via"]
        .iter()
        .any(|name| head.values(bytes, name).next().is_some())
}

#[cfg(test)]
mod tests;
