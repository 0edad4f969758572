//! One client connection while it speaks HTTP/1.1 on the event loop: what it has read,
//! what it owes, and which phase of the exchange it is in. The interest it registers
//! follows from that state: it reads while it owes nothing, writes while it does.

use crate::access::{self, Exchange};
use crate::http::body::BodyDecoder;
use crate::http::head::{self, BodyLength, Head, Parsed};
use crate::http::response::{DateCache, Response, CONTINUE};
use crate::http::HttpError;
use crate::metrics::Gauges;
use crate::route::{route, Offer, Route};
use crate::shared::Shared;
use crate::switch::Job;
use crate::workers::{Pool, Slot};
use mio::net::TcpStream;
use mio::Interest;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

/// How long a closing connection is drained after our last response (RFC 9112 §9.6).
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read from one connection per turn, so one fast sender cannot starve others.
const READ_BUDGET: usize = 256 * 1024;
/// Size of the event loop's read buffer, shared by all connections.
pub const SCRATCH_BYTES: usize = 64 * 1024;

pub struct Conn {
    /// Tells this connection from a later one in the same slab slot.
    pub id: u64,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub phase: Phase,
    /// When the current phase times out (request head or body, or the linger).
    pub deadline: Instant,
    pub interest: Interest,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// Requests parsed on this connection.
    requests: u64,
    /// When the request being read started arriving.
    request_started: Option<Instant>,
    peer_closed: bool,
    /// The socket may hold unread bytes: set by a readiness event, cleared by a short read.
    /// A read that returns less than asked drained the socket, so no second read is spent
    /// on `WouldBlock`; new bytes bring a new (edge-triggered) event.
    pub readable: bool,
}

pub enum Phase {
    /// Waiting for, or reading, a request head.
    Head,
    /// Reading the body of an upgrade request (its worker slot already reserved).
    UpgradeBody(Box<PendingUpgrade>),
    /// Skipping the body of a request already answered.
    SkipBody(BodyDecoder),
    /// Writing the last response; then `Lingering`.
    Closing,
    /// Our write side is shut; reading and dropping input until EOF or the deadline.
    Lingering,
}

pub struct PendingUpgrade {
    head: Head,
    head_bytes: Vec<u8>,
    offers: Vec<Offer>,
    decoder: BodyDecoder,
    body: Vec<u8>,
    slot: Slot,
    started: Instant,
}

/// What the event loop must do after a turn.
pub enum After {
    Keep,
    Close,
    /// Hand the connection to a worker (the `Job` lacks only the socket).
    Switch(Box<dyn FnOnce(std::net::TcpStream) -> Job + Send>),
}

/// What a turn may use besides the connection itself.
pub struct Context<'a> {
    pub shared: &'a Shared,
    pub pool: &'a Pool,
    pub date: &'a mut DateCache,
    pub scratch: &'a mut [u8],
    pub now: Instant,
    /// Connections on the event loop, for `/metrics`.
    pub http_connections: usize,
}

impl Conn {
    pub fn new(id: u64, stream: TcpStream, peer: SocketAddr, deadline: Instant) -> Conn {
        Conn {
            id,
            stream,
            peer,
            phase: Phase::Head,
            deadline,
            interest: Interest::READABLE,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            requests: 0,
            request_started: None,
            peer_closed: false,
            readable: false,
        }
    }

    /// A connection a worker handed back, with the bytes it had read past the request.
    pub fn returning(
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        deadline: Instant,
        input: Vec<u8>,
    ) -> Conn {
        let mut conn = Conn::new(id, stream, peer, deadline);
        conn.input = input;
        conn.requests = 1;
        conn.readable = true; // bytes may have arrived while it was away
        conn
    }

    /// The interest that fits the state: write while we owe bytes, else read.
    pub fn wanted_interest(&self) -> Interest {
        if self.written < self.output.len() {
            Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    /// Idle between requests: nothing read, nothing owed.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Head)
            && self.input.is_empty()
            && self.written == self.output.len()
    }

    /// Reads what is there, handles every complete request, writes what it can.
    pub fn turn(&mut self, cx: &mut Context<'_>) -> After {
        loop {
            let mut progressed = false;
            if self.wants_input() {
                match self.fill(cx.shared.config.max_header_bytes, cx.scratch) {
                    Ok(n) => progressed |= n > 0,
                    Err(_) => return After::Close,
                }
            }
            match self.process(cx) {
                Ok(true) => progressed = true,
                Ok(false) => {}
                Err(switch) => return switch,
            }
            match self.flush() {
                Ok(n) => progressed |= n > 0,
                Err(_) => return After::Close,
            }
            if matches!(self.phase, Phase::Closing) && self.written == self.output.len() {
                if self.stream.shutdown(Shutdown::Write).is_err() {
                    return After::Close;
                }
                self.phase = Phase::Lingering;
                self.deadline = cx.now + LINGER;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if self.peer_closed {
            // The client sent all it will; finish writing what we owe, then close.
            if self.written == self.output.len() {
                return After::Close;
            }
            if matches!(self.phase, Phase::Head) {
                self.phase = Phase::Closing;
            }
        }
        After::Keep
    }

    /// Ends the current phase on its deadline.
    pub fn expire(&mut self, cx: &mut Context<'_>) -> After {
        match self.phase {
            Phase::Lingering | Phase::Closing => After::Close,
            Phase::Head if self.input.is_empty() && self.requests > 0 => After::Close, // idle keep-alive
            // The request was answered already; one answer per request, so just close.
            Phase::SkipBody(_) => After::Close,
            _ => {
                self.fail(cx, HttpError::new(408, "request not received in time"), "-");
                self.turn(cx)
            }
        }
    }

    fn wants_input(&self) -> bool {
        !self.peer_closed
            && match self.phase {
                Phase::Closing => false,
                Phase::Lingering => true,
                _ => self.written == self.output.len(),
            }
    }

    /// Reads until the socket is drained, the budget is spent, or a head grows past the limit.
    /// Reads land in the loop's shared `scratch` buffer and only what arrived is kept, so an
    /// idle connection holds no buffer at all.
    fn fill(&mut self, max_head: usize, scratch: &mut [u8]) -> io::Result<usize> {
        let mut total = 0;
        while self.readable && total < READ_BUDGET {
            if matches!(self.phase, Phase::Head) && self.input.len() > max_head {
                break;
            }
            match self.stream.read(scratch) {
                Ok(0) => {
                    self.peer_closed = true;
                    self.readable = false;
                    break;
                }
                Ok(n) => {
                    total += n;
                    if !matches!(self.phase, Phase::Lingering) {
                        self.input.extend_from_slice(&scratch[..n]);
                    }
                    self.readable = n == scratch.len();
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

    fn flush(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.written == self.output.len() {
            self.output = Vec::new();
            self.written = 0;
        }
        Ok(total)
    }

    fn queue(&mut self, cx: &mut Context<'_>, response: &Response, head_only: bool) -> usize {
        let before = self.output.len();
        cx.shared.metrics.response(response.status);
        response.write_to(&mut self.output, cx.date.now(), head_only);
        self.output.len() - before
    }

    /// Answers with an error, then closes.
    fn fail(&mut self, cx: &mut Context<'_>, error: HttpError, request: &str) {
        let response = Response::error(error.status, error.reason);
        let bytes_out = self.queue(cx, &response, false) as u64;
        log::debug!("{}: {} {}", self.peer, error.status, error.reason);
        access::log(&Exchange {
            peer: self.peer,
            request,
            status: error.status,
            protocol: None,
            bytes_in: self.input.len() as u64,
            bytes_out,
            started: self.request_started.unwrap_or(cx.now),
            reason: Some(error.reason),
        });
        self.phase = Phase::Closing;
        self.input.clear();
    }

    /// Handles what the input holds. `Ok(true)` when something changed; `Err` to hand over.
    fn process(&mut self, cx: &mut Context<'_>) -> Result<bool, After> {
        let mut progressed = false;
        loop {
            match &mut self.phase {
                Phase::Closing => return Ok(progressed),
                Phase::Lingering => {
                    self.input.clear();
                    return Ok(progressed);
                }
                Phase::SkipBody(decoder) => {
                    let result = decoder.decode(&self.input, None);
                    match result {
                        // The request was answered already: one response per request, so
                        // no second one; the framing is lost, so close after the answer.
                        Err(e) => {
                            log::debug!(
                                "{}: body of an answered request: {}; closing",
                                self.peer,
                                e.reason
                            );
                            self.phase = Phase::Closing;
                            self.input.clear();
                        }
                        Ok(progress) => {
                            self.input.drain(..progress.consumed);
                            if !progress.done {
                                return Ok(progressed || progress.consumed > 0);
                            }
                            self.next_request(cx);
                        }
                    }
                }
                Phase::UpgradeBody(pending) => {
                    let result = pending.decoder.decode(&self.input, Some(&mut pending.body));
                    let over = pending.body.len() > cx.shared.config.max_body_bytes;
                    match result {
                        Err(e) => self.fail(cx, e, "-"),
                        Ok(_) if over => self.fail(
                            cx,
                            HttpError::new(413, "request body larger than the limit"),
                            "-",
                        ),
                        Ok(progress) => {
                            self.input.drain(..progress.consumed);
                            if !progress.done {
                                return Ok(progressed || progress.consumed > 0);
                            }
                            let Phase::UpgradeBody(pending) =
                                std::mem::replace(&mut self.phase, Phase::Closing)
                            else {
                                unreachable!()
                            };
                            return Err(self.switch(*pending));
                        }
                    }
                }
                Phase::Head => {
                    if self.input.is_empty() {
                        self.input = Vec::new(); // hold no buffer between requests
                        return Ok(progressed);
                    }
                    self.request_started.get_or_insert(cx.now);
                    match head::parse(&self.input, cx.shared.config.max_header_bytes) {
                        Ok(Parsed::Partial) => return Ok(progressed),
                        Err(e) => self.fail(cx, e, "-"),
                        Ok(Parsed::Complete(head)) => {
                            self.requests += 1;
                            if let Some(switch) = self.request(cx, head) {
                                return Err(switch);
                            }
                        }
                    }
                }
            }
            progressed = true;
        }
    }

    /// Handles one complete request head at the start of the input.
    fn request(&mut self, cx: &mut Context<'_>, mut head: Head) -> Option<After> {
        let started = self.request_started.take().unwrap_or(cx.now);
        if cx.shared.is_stopping() {
            head.close = true;
        }
        let bytes = &self.input[..head.len];
        let request_line =
            access::request_line(head.method(bytes), head.target(bytes), head.version_minor);
        let route = match route(&head, bytes, &cx.shared.registry.tokens) {
            Route::Metrics => {
                let gauges = Gauges {
                    http_connections: cx.http_connections,
                    upgraded_connections: cx.pool.busy(),
                    workers_max: cx.shared.config.workers,
                };
                let body = cx.shared.metrics.render(cx.shared.registry, &gauges);
                let response = Response::new(200, body.into_bytes())
                    .header("Content-Type", "text/plain; version=0.0.4");
                Route::Answer(if head.close {
                    response.closing()
                } else {
                    response
                })
            }
            other => other,
        };
        match route {
            Route::Metrics => unreachable!("answered above"),
            Route::Answer(mut response) => {
                // RFC 9110 §10.1.1: the client is waiting for 100 before it sends the body,
                // and after a final answer it may never send it; so close rather than wait.
                if head.expect_continue && head.body != BodyLength::None {
                    response = response.closing();
                }
                let head_only = head.method(bytes) == "HEAD";
                let bytes_out = self.queue(cx, &response, head_only) as u64;
                let bytes_in = (head.len as u64)
                    + if let BodyLength::Fixed(n) = head.body {
                        n
                    } else {
                        0
                    };
                let exchange = Exchange {
                    peer: self.peer,
                    request: &request_line,
                    status: response.status,
                    protocol: None,
                    bytes_in,
                    bytes_out,
                    started,
                    reason: None,
                };
                access::log(&exchange);
                self.input.drain(..head.len);
                if response.close {
                    self.phase = Phase::Closing;
                } else if head.body != BodyLength::None {
                    self.phase = Phase::SkipBody(BodyDecoder::new(head.body));
                    self.deadline = cx.now + cx.shared.config.header_timeout;
                } else {
                    self.next_request(cx);
                }
                None
            }
            Route::Upgrade(offers) => {
                let refusal = if cx.shared.is_stopping() {
                    Some(HttpError::new(503, "the server is stopping"))
                } else if matches!(head.body, BodyLength::Fixed(n) if n > cx.shared.config.max_body_bytes as u64)
                {
                    Some(HttpError::new(413, "request body larger than the limit"))
                } else {
                    None
                };
                let slot = match refusal {
                    Some(_) => None,
                    None => cx.pool.try_reserve(),
                };
                let Some(slot) = slot else {
                    let error = refusal.unwrap_or(HttpError::new(
                        503,
                        "no capacity for another upgraded connection",
                    ));
                    if error.status == 503 {
                        log::warn!("{}: {}; answered 503", self.peer, error.reason);
                        let response =
                            Response::error(503, error.reason).header("Retry-After", "1");
                        let bytes_out = self.queue(cx, &response, false) as u64;
                        access::log(&Exchange {
                            peer: self.peer,
                            request: &request_line,
                            status: 503,
                            protocol: None,
                            bytes_in: head.len as u64,
                            bytes_out,
                            started,
                            reason: Some(error.reason),
                        });
                        self.phase = Phase::Closing;
                        self.input.clear();
                    } else {
                        self.fail(cx, error, &request_line);
                    }
                    return None;
                };
                let head_bytes = self.input[..head.len].to_vec();
                self.input.drain(..head.len);
                let body_length = head.body;
                let expect_continue = head.expect_continue;
                let pending = PendingUpgrade {
                    head,
                    head_bytes,
                    offers,
                    decoder: BodyDecoder::new(body_length),
                    body: Vec::new(),
                    slot,
                    started,
                };
                if body_length == BodyLength::None {
                    return Some(self.switch(pending));
                }
                if expect_continue {
                    // RFC 9110 §10.1.1: the client waits for this before sending the body.
                    self.output.extend_from_slice(CONTINUE);
                }
                self.phase = Phase::UpgradeBody(Box::new(pending));
                self.deadline = cx.now + cx.shared.config.header_timeout;
                None
            }
        }
    }

    fn next_request(&mut self, cx: &mut Context<'_>) {
        self.phase = Phase::Head;
        self.deadline = cx.now + cx.shared.config.header_timeout;
    }

    /// Packs everything but the socket for a worker.
    fn switch(&mut self, pending: PendingUpgrade) -> After {
        // Only bytes travel on: an emptied buffer's capacity would stay with the connection
        // for its whole life.
        let read_ahead = if self.input.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut self.input)
        };
        let pending_output = self
            .output
            .get(self.written..)
            .filter(|rest| !rest.is_empty())
            .map_or_else(Vec::new, <[u8]>::to_vec);
        self.output = Vec::new();
        self.written = 0;
        let peer = self.peer;
        let bytes_in = (pending.head_bytes.len() + pending.body.len()) as u64;
        After::Switch(Box::new(move |stream| Job {
            stream,
            peer,
            head: pending.head,
            head_bytes: pending.head_bytes,
            body: pending.body,
            read_ahead,
            pending_output,
            offers: pending.offers,
            started: pending.started,
            bytes_in,
            slot: pending.slot,
        }))
    }
}
