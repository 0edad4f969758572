//! The frame relay: one client connection's HTTP/2 on the daemon's event loop, each stream
//! passed to its backend frame by frame.
//!
//! The shortest path a stream can take through a proxy: no request object, no task, no
//! thread hop. A request's field block is decoded (to route its path and keep the
//! client's HPACK table in step), rewritten (normalised path, the route's authority, the
//! client's address) and encoded again; DATA goes on as it comes, as far as the backend's
//! windows allow, and the rest waits within the window the client was granted, which is
//! given back only as bytes leave; the answer comes back the same way. So what one client
//! connection can make the relay hold is bounded by the windows it grants: 64 KiB a
//! stream and [`peer::CONN_WINDOW`] a connection, each way; answers held for a client that
//! takes none of them, and uploads for a backend that takes none, are held for
//! `SWITCHYARD_H2C_BODY_TIMEOUT_MS` at most ([`Relay::expire`]); and all of one client
//! address's connections together hold `SWITCHYARD_H2C_HELD_PER_CLIENT` at most
//! ([`held`]).
//!
//! Every stream keeps its identifier on the backend connection ([`backend`]), so no map
//! is kept between the two. The relay reads and writes the client through the daemon
//! (`Io`), so it runs over whatever the daemon's connection is.
//!
//! Failures answer the stream, not the connection: no route `404`, a path that climbs out
//! of its route `400`, a backend that refuses or fails before answering `502`, one that
//! does not connect in time `504`, a request whose fields are over
//! `SWITCHYARD_H2C_MAX_HEADER_LIST_BYTES` `431`. A client that breaks the protocol gets
//! GOAWAY with the RFC's code; one that makes the relay work without moving requests
//! (PINGs, SETTINGS, resets, empty frames: the "rapid reset" of CVE-2023-44487 among them)
//! beyond [`GLITCHES`] in ten seconds gets GOAWAY with ENHANCE_YOUR_CALM.
//!
//! This module keeps a connection's state, its streams' bookkeeping (answers of its own,
//! resets, flows drained as windows open), its time-outs and its end; [`client_side`]
//! reads and acts on the client's frames, [`backend_side`] the backends'.

pub mod backend;
mod backend_side;
mod client_side;
pub mod held;
pub mod message;
pub mod peer;
pub mod stream;

use crate::config::Config;
use crate::frame::{self, code, kind};
use crate::hpack::Fields;
use crate::slots::{Slots, RELAY_REASONS};
use backend::{Backend, State};
use peer::Peer;
use protocol_api::{Io, Ready, Wants};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream::{AccessRecord, Flow, ResetSent, Stream, Target};

/// Frames that cost the relay work without moving a request (see the module docs) one
/// client connection may send in ten seconds.
pub const GLITCHES: u32 = 1_000;
const GLITCH_PERIOD: Duration = Duration::from_secs(10);
/// Streams already at a backend that one client address may reset, a second (in bursts of
/// twice as many), over all its connections: [`GLITCHES`] bounds one connection, and a
/// client that opened another each time it met it sent a backend 77,000 requests a second
/// for nothing (an attacker's review).
pub const RESETS_PER_CLIENT: u32 = 500;
/// Access lines of streams refused (malformed, or past the streams limit) one client
/// address may have written a second (in bursts of twice as many), over all its
/// connections: a refused stream costs a client a dozen bytes with HPACK and its line a
/// hundred times that, and [`GLITCHES`] is counted per connection (a review: 71 bytes of
/// log a byte sent, reconnecting at each GOAWAY).
pub const REFUSED_LINES_PER_CLIENT: u32 = 20;
/// How often the relay looks at which answers wait for a client that takes none of them,
/// and how often a connection whose address holds its budget tries its backends again.
const HELD_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long an answer may wait for a client that takes none of it while the client's
/// address holds `SWITCHYARD_H2C_HELD_PER_CLIENT` (see [`held`]).
const OVER_BUDGET_HELD: Duration = Duration::from_secs(1);
/// What a stream must move in [`OVER_BUDGET_HELD`] to count as moving then: a frame.
const OVER_BUDGET_PROGRESS: u64 = frame::DEFAULT_MAX_FRAME as u64;
/// What a request over `SWITCHYARD_H2C_MAX_HEADER_LIST_BYTES` counts against [`GLITCHES`].
const OVERSIZE_GLITCHES: u32 = GLITCHES / 10;
/// Output owed to one socket past which the relay stops reading what would add to it.
const OUT_LIMIT: usize = 256 * 1024;
/// Output buffer capacity kept between calls (more is freed once written).
const OUT_KEEP: usize = 16 * 1024;
/// A backend connection that has carried no stream this long is closed.
pub const BACKEND_IDLE: Duration = Duration::from_secs(5);
/// Bytes of requests' header blocks one client connection may have waiting for a backend
/// (connecting, or at its stream limit); past it, new streams are refused.
const WAITING_BLOCKS: usize = 256 * 1024;
/// A response's fields past this size are a backend's protocol error (502).
const MAX_RESPONSE_FIELDS: usize = 256 * 1024;
/// How long a connection that failed waits for the client to close (see
/// [`Relay::linger`]).
const LINGER: Duration = Duration::from_secs(2);
/// How long the daemon may leave a connection with nothing to wait for uncalled.
const KEEP: Duration = Duration::from_secs(3600);

thread_local! {
    /// The event-loop thread's read buffer, shared by its relays.
    static SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; protocol_api::sizes::READ_BUFFER].into_boxed_slice());
    /// The fields of the field block being looked at.
    static FIELDS: RefCell<Fields> = RefCell::new(Fields::default());
}

/// What every relay of the plugin shares: the configuration and the routes' addresses.
pub struct Shared {
    pub config: Config,
    /// The plugin's metrics.
    pub stats: crate::stats::Stats,
    /// Per route, its address as resolved at start (`None`: it did not resolve).
    pub addresses: Vec<Option<SocketAddr>>,
    /// Backend connections open, in all and by client address.
    pub backend_slots: Arc<Slots>,
    /// Streams at a backend that each client address reset ([`RESETS_PER_CLIENT`]).
    pub resets: protocol_api::rate::PerClient,
    /// Access lines of refused streams by client address ([`REFUSED_LINES_PER_CLIENT`]).
    pub refused_lines: protocol_api::rate::PerClient,
    /// What the relay holds for each client address ([`held`]).
    pub held: Arc<held::Held>,
}

impl Shared {
    pub fn new(config: Config, stats: crate::stats::Stats) -> Shared {
        use std::net::ToSocketAddrs;
        let addresses = config
            .routes
            .iter()
            .map(|route| match route.address.to_socket_addrs() {
                Ok(mut all) => all.next(),
                Err(e) => {
                    log::warn!(
                        "h2c: route {} -> {}: {e}; its streams get 502",
                        route.prefix,
                        route.address
                    );
                    None
                }
            })
            .collect();
        let backend_slots = Slots::new(
            config.backends_max,
            config.backends_per_client,
            stats.backends,
            RELAY_REASONS,
        );
        let held = held::Held::new(config.held_per_client, stats.held);
        Shared {
            config,
            stats,
            addresses,
            backend_slots,
            resets: protocol_api::rate::PerClient::new(RESETS_PER_CLIENT),
            refused_lines: protocol_api::rate::PerClient::new(REFUSED_LINES_PER_CLIENT),
            held,
        }
    }
}

/// One client connection.
pub struct Relay {
    shared: Arc<Shared>,
    peer_addr: SocketAddr,
    /// The client's address as backends are told it.
    forwarding: message::Forwarding,
    /// The connection's TLS, for the access lines.
    tls: Option<Box<TlsNames>>,
    /// Our preface is out, and the preamble taken.
    started: bool,
    /// Frames to take before the socket's: an upgrade's stream 1 (first call only).
    preamble: Option<Vec<u8>>,
    /// The client's preface is still to come (after an upgrade, RFC 9113 §3.2).
    expect_preface: bool,
    /// The next SETTINGS is the upgrade's HTTP2-Settings, acknowledged by the 101.
    implicit_settings: bool,
    client: Peer,
    streams: HashMap<u32, Stream>,
    /// The highest stream identifier the client used.
    last_stream: u32,
    /// Streams this side reset lately, whose frames the client may still have on the way.
    reset_sent: ResetSent,
    backends: Vec<Option<Backend>>,
    /// The connection is being shut down gracefully.
    going_away: Option<GoingAway>,
    /// The client sent GOAWAY.
    client_going_away: bool,
    /// A connection error: GOAWAY is queued, the connection closes.
    failed: bool,
    /// Since when the connection lingers after its error (see [`Relay::linger`]).
    lingering: Option<Instant>,
    idle_since: Instant,
    /// Since when the longest-held answer has waited for a client that takes none of it
    /// ([`Relay::note_held`]), and when that was last looked at.
    held_since: Option<Instant>,
    held_checked: Instant,
    /// A call came before the next look was due: the look is owed, by a timer.
    held_check_owed: bool,
    /// This connection's part of what its address holds ([`held`]).
    held: held::ClientHeld,
    /// The client's connection window was granted ([`Relay::follow_budget`]).
    client_granted: bool,
    /// Bytes detached streams' answers hold ([`Relay::detach`]), which no backend's window
    /// counts.
    detached_held: usize,
    /// Since when its backends are left unread while its address holds its budget.
    held_paused: Option<Instant>,
    /// Bytes written to the client so far.
    client_written: u64,
    /// Since when output owed to the client has moved too little while its address holds
    /// its budget, and what had been written then ([`Relay::output_stalled`]).
    output_slow: Option<(Instant, u64)>,
    glitches: u32,
    glitch_period_start: Instant,
    /// This connection's unit of the open-connections gauge.
    _open: protocol_api::metrics::Held,
}

impl Drop for Relay {
    /// Streams still open when the connection ends get their access lines too.
    fn drop(&mut self) {
        for (_, mut stream) in std::mem::take(&mut self.streams) {
            if let Some(access) = stream.access.as_deref_mut() {
                access
                    .reason
                    .get_or_insert_with(|| "connection closed".into());
                self.write_access(&stream);
            }
        }
    }
}

/// An error code as log lines name it: its name (RFC 9113 §7), or its number.
fn code_name(error: u32) -> std::borrow::Cow<'static, str> {
    match code::name(error) {
        Some(name) => name.into(),
        None => format!("{error:#x}").into(),
    }
}

/// A TLS session's names, kept for the streams' access lines.
struct TlsNames {
    version: Box<str>,
    cipher: Box<str>,
    alpn: Option<Box<str>>,
}

/// A graceful shutdown in two steps (RFC 9113 §6.8): a GOAWAY that takes streams still
/// in flight, a PING, and on its answer (or after [`GOAWAY_WAIT`]) the GOAWAY that names
/// the last stream.
#[derive(Debug, Clone, Copy)]
struct GoingAway {
    why: &'static str,
    since: Instant,
    /// The last GOAWAY is out: streams past `last_stream` are ignored.
    last: bool,
    /// The last stream the last GOAWAY named.
    last_stream: u32,
}

/// The PING payload of a graceful shutdown.
const GOAWAY_PING: &[u8; 8] = b"goingawy";
/// How long the first GOAWAY waits for its PING's answer.
const GOAWAY_WAIT: Duration = Duration::from_secs(1);

/// How a client read ended.
enum ReadEnd {
    Blocked,
    Held,
    Spent,
    Closed,
}

impl Relay {
    /// A client connection from `peer_addr`; `preamble` when it came by `Upgrade: h2c`;
    /// `tls` when the daemon terminated TLS for it (`Forwarded: proto=https`; its names go
    /// in the streams' access lines).
    pub fn new(
        shared: Arc<Shared>,
        peer_addr: SocketAddr,
        preamble: Option<Vec<u8>>,
        tls: Option<protocol_api::Tls<'_>>,
    ) -> Relay {
        let now = Instant::now();
        let upgraded = preamble.is_some();
        let forwarding = message::Forwarding::new(peer_addr);
        let held = shared
            .held
            .client(protocol_api::clients::key(peer_addr.ip()));
        Relay {
            _open: shared.stats.open.hold(),
            shared,
            peer_addr,
            forwarding: match tls {
                Some(_) => forwarding.over_tls(),
                None => forwarding,
            },
            tls: tls.map(|tls| {
                Box::new(TlsNames {
                    version: tls.version.into(),
                    cipher: tls.cipher.into(),
                    alpn: tls.alpn.map(Into::into),
                })
            }),
            started: false,
            preamble,
            expect_preface: upgraded,
            implicit_settings: upgraded,
            client: Peer::new(),
            streams: HashMap::new(),
            last_stream: 0,
            reset_sent: ResetSent::default(),
            backends: Vec::new(),
            going_away: None,
            client_going_away: false,
            failed: false,
            lingering: None,
            idle_since: now,
            held_since: None,
            held_checked: now,
            held_check_owed: false,
            held,
            client_granted: false,
            detached_held: 0,
            held_paused: None,
            client_written: 0,
            output_slow: None,
            glitches: 0,
            glitch_period_start: now,
        }
    }

    pub fn on_ready(&mut self, io: &mut Io<'_>, ready: Ready) -> io::Result<Wants> {
        let now = Instant::now();
        // The client may have bytes when the loop says so: it keeps track, since our reads
        // go through it.
        let client_ready = !self.started || ready.is_readable() || ready.is_resume();
        if !self.started {
            self.start();
        }
        if self.failed {
            return self.linger(io, now);
        }
        if ready.is_stopping() {
            self.go_away("daemon stopping");
        }
        if ready.is_watched() {
            self.backends_ready();
        }
        if ready.is_watched_closed() {
            // Which one, the loop does not say: each backend there is now reads to its end.
            for backend in self.backends.iter_mut().flatten() {
                backend.peer_closed = true;
            }
        }
        self.read_backends();
        let read = match self.failed {
            true => ReadEnd::Held,
            false => self.read_client(io, client_ready, ready.is_peer_closed())?,
        };
        if let ReadEnd::Closed = read {
            log::debug!("h2c {}: the client closed the connection", self.peer_addr);
            return Ok(Wants::close());
        }
        self.expire(now);
        self.note_held(now);
        self.follow_budget();
        self.tend_backends(io);
        // A connection with no stream open and no backend connection left (they close
        // `BACKEND_IDLE` after their last stream) keeps nothing of its busy times (gRPC
        // clients hold quiet connections for hours): no output buffer, no room in the
        // stream map (up to `SWITCHYARD_H2C_MAX_STREAMS` entries of a burst), no frame
        // buffer, no HPACK table for its answers. Not sooner: a client with one request
        // at a time would pay for them again with each.
        let quiet = self.streams.is_empty() && self.backends.iter().all(Option::is_none);
        let keep = if quiet { 0 } else { OUT_KEEP };
        match self.client.out.flush(io, keep) {
            Ok(written) => self.client_written += written.bytes as u64,
            Err(e) => {
                log::debug!("h2c {}: the client is gone: {e}", self.peer_addr);
                return Ok(Wants::close());
            }
        }
        // What is left after the flush is what the connection holds for its client. A
        // connection that stopped reading its backends for output the flush then wrote
        // reads on at once (its client may send nothing to wake it: a client with wide
        // windows took a 1 MiB answer a read each 100 ms, a timer's wake-up each).
        let holding = self.holding();
        let over = self.held.holds(holding);
        if !(over && holding >= held::UNCOUNTED) {
            self.held_paused = None;
        }
        if self.output_stalled(over, now, io) {
            return Ok(Wants::abort());
        }
        if quiet {
            self.streams.shrink_to(0);
            self.client.forget_table();
            if self.client.tail.is_empty() {
                self.client.tail = Vec::new();
            }
        }
        if self.failed {
            return self.linger(io, now);
        }
        if self.is_finished() && self.client.out.is_done() {
            return Ok(Wants::close());
        }
        let read_more = !self.holds_client();
        let wants = match (read_more, !self.client.out.is_done()) {
            (true, true) => Wants::read_write(),
            (true, false) => Wants::read(),
            (false, true) => Wants::write(),
            (false, false) => Wants::timer_only(KEEP),
        };
        let wants = match self.next_deadline() {
            Some(at) => wants.with_timer(
                at.saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            ),
            None => wants,
        };
        // A backend left with bytes (its budget spent, or the client's output full until
        // the flush above) brings no event of its own for them.
        let backend_left = self.client.out.owed() <= OUT_LIMIT
            && self.held_paused.is_none()
            && self.backends.iter().flatten().any(|b| {
                b.readable && b.state == State::Open && !b.dead && b.peer.out.owed() <= OUT_LIMIT
            });
        Ok(match read {
            ReadEnd::Spent => wants.with_resume(),
            _ if backend_left => wants.with_resume(),
            _ => wants,
        })
    }

    /// Whether the client takes its output too slowly for an address that holds its budget:
    /// while it does, [`held::UNCOUNTED`] or more owed to the client must move
    /// [`OVER_BUDGET_PROGRESS`] in [`OVER_BUDGET_HELD`], as a stream's answer must, or the
    /// connection is reset (its GOAWAY would wait behind what the client does not take).
    /// A client reading 256 bytes every half second kept its output, the relay's 256 KiB,
    /// and its address over its budget, for as long as it liked (a review): bytes moved,
    /// so no time-out came, and nothing it had was a stream's to end. What counts is what
    /// the client acknowledged: counted as written, what the kernel's send buffer took as
    /// it grew (megabytes, for a slow reader) passed for progress (the next review). Under
    /// TLS the kernel holds records, so this is the plaintext written less the ciphertext
    /// not acknowledged: within a record's overhead and what the session holds.
    fn output_stalled(&mut self, over: bool, now: Instant, io: &Io<'_>) -> bool {
        let owed = self.client.out.owed();
        if !over || owed < held::UNCOUNTED {
            self.output_slow = None;
            return false;
        }
        let unacked = protocol_api::output::unacked(std::os::fd::AsFd::as_fd(io)).unwrap_or(0);
        let written = self.client_written.saturating_sub(unacked as u64);
        match self.output_slow {
            Some((since, mark)) if written < mark + OVER_BUDGET_PROGRESS => {
                if now.duration_since(since) < OVER_BUDGET_HELD {
                    return false;
                }
                static SLOW: protocol_api::throttle::Throttle =
                    protocol_api::throttle::Throttle::new();
                if let Some(unlogged) = SLOW.admit() {
                    log::info!(
                        "h2c {}: the client took {} bytes in {} ms, {owed} more owed, while its \
                         address holds SWITCHYARD_H2C_HELD_PER_CLIENT: connection reset{unlogged}",
                        self.peer_addr,
                        written.saturating_sub(mark),
                        now.duration_since(since).as_millis()
                    );
                }
                true
            }
            _ => {
                self.output_slow = Some((now, written));
                false
            }
        }
    }

    /// After a connection error: the GOAWAY written, our side shut, and what the client
    /// still sends read and dropped until it closes or [`LINGER`] passes. Closing with its
    /// bytes unread would make the kernel reset the connection, and the client could lose
    /// the GOAWAY that says why.
    fn linger(&mut self, io: &mut Io<'_>, now: Instant) -> io::Result<Wants> {
        let since = *self.lingering.get_or_insert(now);
        let left = LINGER.saturating_sub(now.duration_since(since));
        if left.is_zero() || self.client.out.flush(io, 0).is_err() {
            return Ok(Wants::close());
        }
        if !self.client.out.is_done() {
            return Ok(Wants::write().with_timer(left));
        }
        let _ = io.shutdown(std::net::Shutdown::Write);
        let end = SCRATCH.with_borrow_mut(|buf| {
            let mut total = 0;
            while total < protocol_api::sizes::READ_BUDGET {
                match io.read(buf) {
                    Ok(0) => return ReadEnd::Closed,
                    Ok(n) => total += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return ReadEnd::Blocked,
                    Err(_) => return ReadEnd::Closed,
                }
            }
            ReadEnd::Spent
        });
        Ok(match end {
            ReadEnd::Closed => Wants::close(),
            ReadEnd::Spent => Wants::read().with_timer(left).with_resume(),
            _ => Wants::read().with_timer(left),
        })
    }

    /// Our preface (RFC 9113 §3.4): SETTINGS, then the connection window; then the frames
    /// an upgrade's request became.
    fn start(&mut self) {
        self.started = true;
        let config = &self.shared.config;
        frame::write_settings(
            self.client.out.queue(),
            &[
                (frame::setting::MAX_CONCURRENT_STREAMS, config.max_streams),
                (
                    frame::setting::MAX_HEADER_LIST_SIZE,
                    config.max_header_list_bytes,
                ),
            ],
        );
        self.follow_budget();
        if let Some(preamble) = self.preamble.take() {
            // PREFACE, then SETTINGS (the HTTP2-Settings), HEADERS and DATA of stream 1.
            let frames = preamble.get(crate::upgrade::PREFACE.len()..).unwrap_or(&[]);
            self.expect_preface = false;
            self.client_bytes(frames);
            self.expect_preface = true;
        }
    }

    /// Answers a stream from the relay itself.
    fn answer(&mut self, id: u32, status: u16, text: &str) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let stats = self.shared.stats.route(stream.route);
        if !stream.responded {
            stats.answered(status);
        }
        let (block, body) = message::answer(status, text);
        if let Some(access) = stream.access.as_deref_mut() {
            access.status = Some(status);
            access.blocks_out += block.len() as u64;
        }
        self.client.write_block(id, &block, false);
        stream.target = Target::Local;
        stream.request = None;
        stream.responded = true;
        // What waited for the backend is dropped, and given back.
        let dropped = std::mem::take(&mut stream.up.pending).len();
        stream.up.trailers = None;
        stream.up.ended = stream.up.end;
        stream.down = Flow::new(stream.down.send_window.clamp(0, frame::MAX_WINDOW) as u32);
        stream.down.pending = body;
        stream.down.end = true;
        self.client.give_back(dropped);
        self.drain_down(id);
    }

    /// A stream error: RST_STREAM to the client, and the backend's side cancelled.
    /// A stream error the client caused: it counts as a glitch, as a reset it sends does
    /// (its backend made a request for nothing: CVE-2023-44487's "MadeYouReset" variant).
    fn refuse(&mut self, id: u32, error: u32) {
        self.glitch();
        self.reset(id, error);
    }

    /// RST_STREAM to the client, remembered so that what it sent meanwhile is ignored.
    fn reset_client(&mut self, id: u32, error: u32) {
        if error != code::NO_ERROR {
            let access = self
                .streams
                .get_mut(&id)
                .and_then(|s| s.access.as_deref_mut());
            if let Some(access) = access.filter(|a| a.reason.is_none()) {
                access.reason = Some(format!("reset ({})", code_name(error)));
            }
        }
        frame::write_rst_stream(self.client.out.queue(), id, error);
        self.reset_sent.note(id);
    }

    fn reset(&mut self, id: u32, error: u32) {
        self.reset_client(id, error);
        if let Some(stream) = self.take_stream(id) {
            self.drop_stream(id, stream, code::CANCEL);
        }
    }

    /// Lets go of a stream the client no longer has: cancelled at its backend, the
    /// windows its held bytes took given back.
    fn drop_stream(&mut self, id: u32, stream: Stream, error: u32) {
        self.client.give_back(stream.up.pending.len());
        if let Target::Backend(slot) = stream.target {
            if let Some(backend) = self.backends[slot].as_mut() {
                backend.peer.give_back(stream.down.pending.len());
                if stream.request.is_some() {
                    backend.waiting.retain(|&w| w != id);
                    if backend.is_unused() {
                        backend.idle_since = Some(Instant::now());
                    }
                } else {
                    frame::write_rst_stream(backend.peer.out.queue(), id, error);
                    self.closed_on_backend(slot);
                }
            }
        }
    }

    /// Removes a stream; the idle clock starts when the last goes.
    fn take_stream(&mut self, id: u32) -> Option<Stream> {
        let stream = self.streams.remove(&id)?;
        self.write_access(&stream);
        if stream.detached {
            self.detached_held = (self.detached_held).saturating_sub(stream.down.pending.len());
        }
        if self.streams.is_empty() {
            self.idle_since = Instant::now();
        }
        Some(stream)
    }

    /// The stream's access line, if the access log was on when it began.
    fn write_access(&self, stream: &Stream) {
        let Some(access) = stream.access.as_deref() else {
            return;
        };
        let bytes_in = access.blocks_in + stream.up.sent + stream.up.pending.len() as u64;
        let bytes_out = access.blocks_out + stream.down.sent;
        self.write_access_record(access, (bytes_in, bytes_out), stream.began.elapsed());
    }

    /// The access line of a stream as `access` has it, with its bytes in and out.
    fn write_access_record(&self, access: &AccessRecord, bytes: (u64, u64), elapsed: Duration) {
        let peer = self.peer_addr.to_string();
        protocol_api::access::write(&protocol_api::access::Exchange {
            peer: &peer,
            method: &access.method,
            target: &access.target,
            version: "HTTP/2.0",
            status: access.status,
            protocol: "h2c",
            bytes_in: bytes.0,
            bytes_out: bytes.1,
            elapsed,
            reason: access.reason.as_deref(),
            tls: self.tls.as_deref().map(|tls| protocol_api::Tls {
                version: &tls.version,
                cipher: &tls.cipher,
                alpn: tls.alpn.as_deref(),
                server_name: None,
                client_subject: None,
            }),
            named: access.named(),
        });
    }

    /// A stream whose whole answer came lets go of its backend in `slot` (which reset it
    /// with NO_ERROR, or whose connection ended) while the answer waits for the client: the
    /// answer drains on as the relay's own, counted as held (no backend's window counts it
    /// now); the upload stops, and the client is told so once the answer is out (RFC 9113
    /// §8.1). (Given back at once and counted by nobody, such answers let a backend that
    /// resets as Go's does fill 100 streams a connection past the budget, a review found;
    /// reset instead, a backend closing gracefully cut answers short.)
    fn detach(&mut self, id: u32, slot: usize) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if let Some(backend) = self.backends[slot].as_mut() {
            backend.peer.give_back(stream.down.pending.len());
        }
        self.client
            .give_back(std::mem::take(&mut stream.up.pending).len());
        self.detached_held += stream.down.pending.len();
        stream.detached = true;
        stream.target = Target::Local;
        stream.up.trailers = None;
        self.closed_on_backend(slot);
        self.settle(id);
    }

    /// Removes a stream once both directions are over.
    fn settle(&mut self, id: u32) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if stream.target == Target::Local && stream.down.ended && !stream.up.ended {
            // The answer is complete before the request: "the server MAY request that the
            // client abort transmission of a request without error" (RFC 9113 §8.1).
            self.reset_client(id, code::NO_ERROR);
            let stream = self.take_stream(id).expect("just found");
            self.client.give_back(stream.up.pending.len());
        } else if stream.is_done() {
            let stream = self.take_stream(id).expect("just found");
            if let Target::Backend(slot) = stream.target {
                self.closed_on_backend(slot);
            }
        }
    }

    /// A stream open on the backend in `slot` ended.
    fn closed_on_backend(&mut self, slot: usize) {
        if let Some(backend) = self.backends[slot].as_mut() {
            backend.open = backend.open.saturating_sub(1);
            if backend.is_unused() {
                backend.idle_since = Some(Instant::now());
            }
        }
        self.open_waiting(slot);
    }

    /// Sends what a stream holds for its backend, as far as the windows allow.
    fn drain_up(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let Target::Backend(slot) = stream.target else {
            return;
        };
        if stream.request.is_some() {
            return;
        }
        let Some(backend) = self.backends[slot].as_mut() else {
            return;
        };
        let sent = stream.up.drain(id, &mut backend.peer);
        if sent > 0 {
            self.client.give_back(sent);
            if let Some(increment) = stream.up.give_back(sent) {
                frame::write_window_update(self.client.out.queue(), id, increment);
            }
        }
        self.settle(id);
    }

    /// Sends what a stream holds for the client, as far as the windows allow.
    fn drain_down(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let sent = stream.down.drain(id, &mut self.client);
        if stream.detached {
            self.detached_held = self.detached_held.saturating_sub(sent);
        }
        if sent > 0 {
            if let Target::Backend(slot) = stream.target {
                if let Some(backend) = self.backends[slot].as_mut() {
                    backend.peer.give_back(sent);
                    if let Some(increment) = stream.down.give_back(sent) {
                        frame::write_window_update(backend.peer.out.queue(), id, increment);
                    }
                }
            }
        }
        self.settle(id);
    }

    /// After the client's connection window grew: the streams it may move now. A stream
    /// that waits on its own window is passed over, so a client that holds every stream's
    /// window shut and sends connection WINDOW_UPDATEs costs a look at each stream, not a
    /// drain of each (an attacker's review: 2.2 µs a frame with 100 such streams).
    fn drain_down_all(&mut self) {
        let waiting: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                let data_may_go = s.down.pending.is_empty() || s.down.send_window > 0;
                data_may_go && (!s.down.is_empty() || (s.down.end && !s.down.ended))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in waiting {
            if self.client.send_window <= 0 {
                break;
            }
            self.drain_down(id);
        }
    }

    /// Notes, for each stream, since when its answer waits for a client that takes none of
    /// it (its window shut), and the longest such wait, for [`Relay::expire`]. Each stream
    /// apart: a client taking one stream's answer a byte at a time kept the others' held
    /// for good when the wait was the connection's.
    fn note_held(&mut self, now: Instant) {
        // A tenth of a second's precision is plenty for a time-out of seconds, and the
        // look at every stream is not paid on every call (the h2c row lost 3% to it).
        if now.duration_since(self.held_checked) < HELD_CHECK_EVERY {
            self.held_check_owed = true;
            return;
        }
        self.held_checked = now;
        self.held_check_owed = false;
        // While the address holds its budget, a stream must move a frame's worth in the
        // time it is given to count as moving: one taking a byte now and then held its
        // answer, and the address over its budget, for good (a review).
        debug_assert_eq!(
            self.detached_held,
            (self.streams.values())
                .filter(|s| s.detached)
                .map(|s| s.down.pending.len())
                .sum::<usize>(),
            "detached answers miscounted"
        );
        let need = match self.held.over() {
            true => OVER_BUDGET_PROGRESS,
            false => 1,
        };
        let mut longest: Option<Instant> = None;
        for stream in self.streams.values_mut() {
            let upload_held = !stream.up.pending.is_empty() && stream.is_open_on_backend();
            if stream.down.pending.is_empty() && !upload_held {
                if stream.held.is_some() {
                    stream.held = None; // written only when it changes: this runs every call
                }
                continue;
            }
            // Either way's move puts the wait off.
            let sent = stream.down.sent + stream.up.sent;
            let (since, mark) = match stream.held {
                Some((since, mark)) if sent < mark + need => (since, mark),
                _ => (now, sent),
            };
            stream.held = Some((since, mark));
            longest = Some(longest.map_or(since, |l| l.min(since)));
        }
        self.held_since = longest;
    }

    /// Time-outs: connects, idle backends, the idle client, answers the client does not
    /// take.
    fn expire(&mut self, now: Instant) {
        let body_timeout = self.held_timeout();
        if self
            .held_since
            .is_some_and(|since| now.duration_since(since) >= body_timeout)
        {
            // A client that keeps its windows shut (and the connection alive with a PING
            // now and then) held what its backends sent for good: 1.2 MiB a connection for
            // 1.3 KB sent, an attacker's review found. Its streams are reset and what they
            // held let go, as `SWITCHYARD_H2C_BODY_TIMEOUT_MS` ends an answer from an
            // HTTP/1.1 backend the client takes nothing of.
            let held: Vec<u32> = (self.streams.iter())
                .filter(|(_, s)| {
                    s.held
                        .is_some_and(|(since, _)| now.duration_since(since) >= body_timeout)
                })
                .map(|(&id, _)| id)
                .collect();
            // Uploads a backend took nothing of, likewise (nginx's `proxy_send_timeout`):
            // 504 if the backend has not answered yet.
            let uploads = (held.iter())
                .filter(|id| self.streams[id].down.pending.is_empty())
                .count();
            static HELD: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();
            if let Some(unlogged) = HELD.admit() {
                let over = match self.held.over() {
                    true => " while its address holds SWITCHYARD_H2C_HELD_PER_CLIENT",
                    false => "",
                };
                log::info!(
                    "h2c {}: the client took nothing of {} answer(s), backends nothing of {} \
                     upload(s), for {} ms{over}: streams ended{unlogged}",
                    self.peer_addr,
                    held.len() - uploads,
                    uploads,
                    body_timeout.as_millis()
                );
            }
            // Each ends a stream at its backend for nothing, as a client's reset does: a
            // client that opened another each time (uploads to a backend that takes
            // nothing) had the relay end 2,300 a second (a review).
            let client = protocol_api::clients::key(self.peer_addr.ip());
            for id in held {
                self.end_held(id);
                if !self.shared.resets.allow(client) && !self.failed {
                    self.fail(
                        code::ENHANCE_YOUR_CALM,
                        "too many streams its address left unmoved ended at a backend",
                    );
                    break;
                }
            }
            self.held_since = None;
        }
        for slot in 0..self.backends.len() {
            let Some(backend) = self.backends[slot].as_ref() else {
                continue;
            };
            if let State::Connecting { deadline } = backend.state {
                if now >= deadline {
                    self.fail_backend(slot, 504, "did not answer in time", "connect timed out");
                }
            }
        }
        let idle = self.shared.config.idle;
        if self.streams.is_empty()
            && self.going_away.is_none()
            && now.duration_since(self.idle_since) >= idle
        {
            self.go_away("idle");
        }
        if self
            .going_away
            .is_some_and(|g| !g.last && now.duration_since(g.since) >= GOAWAY_WAIT)
        {
            self.last_goaway();
        }
        if now.duration_since(self.glitch_period_start) >= GLITCH_PERIOD {
            self.glitch_period_start = now;
            self.glitches = 0;
        }
    }

    /// Ends a stream that moved nothing for its time-out: reset, or, if its backend took
    /// nothing of its upload and has not answered, cancelled there and answered `504`.
    fn end_held(&mut self, id: u32) {
        let stream = &self.streams[&id];
        let Target::Backend(slot) = stream.target else {
            return self.reset(id, code::CANCEL);
        };
        if stream.responded || !stream.down.pending.is_empty() || !stream.is_open_on_backend() {
            // A whole answer is no error: the client is only asked to stop sending (RFC
            // 9113 §8.1).
            let error = match stream.down.ended {
                true => code::NO_ERROR,
                false => code::CANCEL,
            };
            return self.reset(id, error);
        }
        if let Some(backend) = self.backends[slot].as_mut() {
            frame::write_rst_stream(backend.peer.out.queue(), id, code::CANCEL);
            self.closed_on_backend(slot);
        }
        self.answer_failed(id, 504, "took nothing of the request body in time");
    }

    /// Windows held to the address's budget. A peer (the client, or a backend) is granted
    /// a connection window past the protocol's 64 KiB only once it has used half of that,
    /// and only from the address's budget ([`held::ClientHeld::grant`]): what a peer was
    /// granted it may send at any time, and cannot be taken back (granted 1 MiB each at
    /// once, 300 connections of uploads to a backend that took nothing held 299 MiB over a
    /// 64 MiB budget, and 281 MiB when opened before uploading, reviews found). And while
    /// the address holds its budget, a connection holding its part gives the client no
    /// window back.
    fn follow_budget(&mut self) {
        let holding = self.holding();
        let address_over = self.held.holds(holding);
        // A peer refused is asked again when its DATA next takes its window below half
        // (its own traffic wakes the connection; a timer would wake every connection of an
        // address whose grants are spent ten times a second for as long as it lives).
        if !self.client_granted
            && std::mem::take(&mut self.client.ran_low)
            && !address_over
            && self.held.grant(peer::GRANT)
        {
            self.client.grant_window(peer::CONN_WINDOW);
            self.client_granted = true;
        }
        for backend in self.backends.iter_mut().flatten() {
            if !backend.granted
                && backend.state == State::Open
                && std::mem::take(&mut backend.peer.ran_low)
                && !address_over
                && self.held.grant(peer::GRANT)
            {
                backend.peer.grant_window(peer::CONN_WINDOW);
                backend.granted = true;
            }
        }
        let withhold = address_over && holding >= held::UNCOUNTED;
        if self.client.withheld != withhold {
            self.client.withheld = withhold;
            if !withhold {
                self.client.give_back(0);
            }
        }
    }

    /// What the connection holds for its client and its backends ([`holding`]).
    fn holding(&self) -> usize {
        holding(&self.client, &self.backends, self.detached_held)
    }

    /// How long an answer may wait for a client that takes none of it: the body time-out,
    /// or [`OVER_BUDGET_HELD`] while the client's address holds its budget, so that the
    /// answers it takes nothing of make room for those it takes.
    fn held_timeout(&self) -> Duration {
        let body_timeout = self.shared.config.body_timeout;
        match self.held.over() {
            true => body_timeout.min(OVER_BUDGET_HELD),
            false => body_timeout,
        }
    }

    /// GOAWAY: streams open finish, new ones are not taken (RFC 9113 §6.8); see
    /// [`GoingAway`].
    fn go_away(&mut self, why: &'static str) {
        if self.going_away.is_some() || self.failed {
            return;
        }
        log::debug!("h2c {}: GOAWAY ({why})", self.peer_addr);
        self.going_away = Some(GoingAway {
            why,
            since: Instant::now(),
            last: false,
            last_stream: 0,
        });
        let out = self.client.out.queue();
        frame::write_goaway(out, 0x7fff_ffff, code::NO_ERROR);
        frame::write(out, kind::PING, 0, 0, GOAWAY_PING);
    }

    fn last_goaway(&mut self) {
        let Some(going_away) = self.going_away.as_mut().filter(|g| !g.last) else {
            return;
        };
        going_away.last = true;
        going_away.last_stream = self.last_stream;
        log::debug!(
            "h2c {}: last GOAWAY after stream {} ({})",
            self.peer_addr,
            self.last_stream,
            going_away.why
        );
        frame::write_goaway(self.client.out.queue(), self.last_stream, code::NO_ERROR);
    }

    /// A connection error (RFC 9113 §5.4.1): GOAWAY with its code, then the end.
    fn fail(&mut self, error: u32, why: &str) {
        if self.failed {
            return;
        }
        if let Some(GoingAway {
            last: true,
            last_stream,
            ..
        }) = self.going_away
        {
            // A GOAWAY's last stream may only go down (RFC 9113 §6.8).
            self.last_stream = last_stream;
        }
        log::info!("h2c {}: connection error {error:#x}: {why}", self.peer_addr);
        frame::write_goaway(self.client.out.queue(), self.last_stream, error);
        self.failed = true;
    }

    fn glitch(&mut self) {
        self.glitches_of(1);
    }

    fn glitches_of(&mut self, count: u32) {
        let before = self.glitches;
        self.glitches += count;
        if before <= GLITCHES && self.glitches > GLITCHES {
            self.fail(
                code::ENHANCE_YOUR_CALM,
                "too many frames that move no request",
            );
        }
    }

    /// What the client sends would have to wait: its answers, or a backend, are behind.
    fn holds_client(&self) -> bool {
        self.client.out.owed() > OUT_LIMIT
            || self
                .backends
                .iter()
                .flatten()
                .any(|b| !b.dead && b.peer.out.owed() > OUT_LIMIT)
    }

    /// The connection has nothing left to do.
    fn is_finished(&self) -> bool {
        (self.going_away.is_some_and(|g| g.last) || self.client_going_away)
            && self.streams.is_empty()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        match self.going_away {
            None if self.streams.is_empty() => at(self.idle_since + self.shared.config.idle),
            Some(g) if !g.last => at(g.since + GOAWAY_WAIT),
            _ => {}
        }
        if let Some(since) = self.held_since {
            at(since + self.held_timeout());
            // Its address may hold its budget by the others' doing: a look a second.
            at(since.max(self.held_checked) + OVER_BUDGET_HELD);
        }
        if self.held_check_owed {
            at(self.held_checked + HELD_CHECK_EVERY);
        }
        if let Some(since) = self.held_paused {
            at(since + HELD_CHECK_EVERY);
        }
        if let Some((since, _)) = self.output_slow {
            at(since + OVER_BUDGET_HELD);
        }
        if self.client.withheld {
            // The client's window waits for the address to be under its budget, which the
            // others' connections decide: a look every tenth of a second.
            at(self.held_checked + HELD_CHECK_EVERY);
        }
        for backend in self.backends.iter().flatten() {
            match (backend.state, backend.idle_since) {
                (State::Connecting { deadline }, _) => at(deadline),
                (_, Some(since)) => at(since + BACKEND_IDLE),
                _ => {}
            }
        }
        next
    }
}

/// What a connection holds: DATA received and not yet passed on, as the connection windows
/// count it (what each peer was granted, less what it may still send and what it is owed
/// back: no stream need be looked at), the answers of `detached` streams, and output its
/// sockets have not taken.
fn holding(client: &Peer, backends: &[Option<Backend>], detached: usize) -> usize {
    let held_from = |peer: &Peer| {
        let unpassed = i64::from(peer.window) - peer.recv_window - i64::from(peer.unacked);
        unpassed.max(0) as usize + peer.out.owed()
    };
    detached
        + held_from(client)
        + backends
            .iter()
            .flatten()
            .map(|b| held_from(&b.peer))
            .sum::<usize>()
}

/// Runs `f` with the loop thread's field list, left empty for the next block.
fn with_fields<R>(f: impl FnOnce(&mut Fields) -> R) -> R {
    let mut fields = FIELDS.take();
    let result = f(&mut fields);
    fields.clear();
    FIELDS.set(fields);
    result
}
