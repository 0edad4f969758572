//! One WebSocket connection after the `101`, readiness-driven on the daemon's event loop:
//! read what is there, feed the [`Receiver`], answer (the echo) or relay (a route), close.
//!
//! Memory follows traffic, not connections. Reads land in a buffer of the event-loop thread
//! ([`Scratch`]), shared by every connection of that loop; a connection keeps only input
//! not yet handled, a message still in assembly, and output the peer has not taken yet.
//! While output waits nothing more is handed on: a peer that does not read stops its own
//! echo instead of growing memory (and the daemon's write time-out ends it).
//!
//! Work per call is bounded ([`Budget`]): bytes read and bytes inflated. A call that spends
//! its budget with work in hand asks to be called again (`Wants::with_resume`), so the
//! loop's other connections move in between; a compressed message that inflates a
//! thousandfold is inflated a slice per call.
//!
//! Replies produced by one read (echoes, pongs, a close) are gathered and written with one
//! `write`; a large message goes out straight from where it lies, header and payload in one
//! vectored write. With permessage-deflate agreed, echoes are compressed too.
//!
//! On a route to a service ([`Relay`]) messages are taken in parts as they arrive and go
//! to the service; the service's bytes come back as binary messages. Each direction holds
//! at most one read's worth until the other side takes it: a client that does not read
//! stops the service from being read, a service that does not read stops the client from
//! being read, and a client that leaves meanwhile ends the relay at once.

use crate::assembly::{self, Share};
use crate::config::Config;
use crate::deflate::{Agreement, Inflater};
use crate::frame::{encode_header, opcode, write_frame, MAX_HEADER, RSV1_COMPRESSED};
use crate::receiver::{close_code, Delivery, Event, Receiver};
use crate::relay::Relay;
use crate::stats::RouteStats;
use protocol_api::moment::Moment;
use protocol_api::output::{rest, write_parts_until_blocked, write_until_blocked, Output};
use protocol_api::rate::PerClient;
use protocol_api::{Io, Ready, Wants};
use std::cell::RefCell;
use std::io::{self, ErrorKind, Read};
use std::net::Shutdown;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// The event-loop thread's read buffer.
const READ_BUFFER: usize = protocol_api::sizes::READ_BUFFER;
/// Most bytes read per call (from the client and a route's service together), so one busy
/// connection cannot starve the others of its loop.
const READ_BUDGET: usize = protocol_api::sizes::READ_BUDGET;
/// Most bytes inflated per call: about a millisecond of work.
const INFLATE_BUDGET: usize = 1024 * 1024;
/// Messages from this size on are written straight from where they lie, header and payload
/// in one vectored write; smaller ones are copied and coalesced with the other replies.
const VECTORED_FROM: usize = 8 * 1024;
/// After we close: how long the peer gets to answer before the connection is closed.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How often a connection that holds part of a message looks whether its client was chosen
/// to close for another's room ([`assembly`]): the longest what it holds outlives that.
const EVICTION_CHECK: Duration = Duration::from_secs(1);

/// What the event-loop thread lends every connection it serves, one at a time.
struct Scratch {
    input: Box<[u8]>,
    /// Replies gathered during one call.
    output: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: vec![0; READ_BUFFER].into_boxed_slice(),
        output: Vec::new(),
    });
}

/// What one call may still spend.
struct Budget {
    read: usize,
    inflate: usize,
}

pub struct Connection {
    receiver: Receiver,
    /// This connection's part of what the echo holds in messages not yet whole.
    assembly: Share,
    /// Input not yet handled: the start of a frame header that arrived without the rest, or
    /// what the receiver was holding when it stopped.
    /// Boxed, and only while there is some: a quiet connection pays a pointer for it (a
    /// `Box<[u8]>` would be twice that, in what every connection carries).
    #[allow(clippy::box_collection)]
    partial: Option<Box<Vec<u8>>>,
    /// The receiver stopped with work in hand: it is fed again before the socket is read.
    holding: bool,
    /// Output the socket has not taken yet.
    owed: Owed,
    state: State,
    /// We pinged a silent peer and wait for any sign of life.
    ping_sent: bool,
    /// Its client inflated more than its allowance: nothing is inflated until it owes
    /// nothing (the timer says when), and compressed input waits unread meanwhile.
    inflate_paused: bool,
    /// Timer calls in a row, with nothing else, while it holds part of a message (and may
    /// be chosen to close for another's room, [`assembly`]): it is then called every
    /// [`EVICTION_CHECK`], and only so many of those make the idle time-out.
    quiet_checks: u16,
    /// A route's service, relayed instead of echoing.
    relay: Option<Box<Relay>>,
    /// The route's metrics; the connection counts in its open gauge until dropped.
    stats: &'static RouteStats,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stats.open.dec();
    }
}

/// Output the socket has not taken yet, boxed, and only while there is some: a quiet
/// connection pays a pointer for it.
#[derive(Default)]
struct Owed(Option<Box<Output>>);

impl Owed {
    fn is_done(&self) -> bool {
        self.0.as_ref().is_none_or(|output| output.is_done())
    }

    /// Memory its buffer holds: what is out of it too, until it is cut or emptied.
    fn held(&self) -> usize {
        self.0.as_ref().map_or(0, |output| output.held())
    }

    /// Where more is queued, after what is owed.
    fn queue(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(Default::default).queue()
    }

    /// Writes what is owed until the socket is full; the buffer goes once all is out.
    fn flush(&mut self, to: &mut impl io::Write) -> io::Result<()> {
        if let Some(output) = self.0.as_mut() {
            output.flush(to, usize::MAX)?;
        }
        self.settle();
        Ok(())
    }

    /// Lets the buffer go if nothing is owed.
    fn settle(&mut self) {
        if self.is_done() {
            self.0 = None;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The closing handshake is complete (we echoed the peer's close): end the connection
    /// once what is owed is written; the server closes TCP first (§7.1.1).
    Done,
    /// Done, on a route whose service has not taken all the client sent: it has until
    /// `until` to take the rest (the client's last message was cut short before).
    Draining {
        until: Moment,
    },
    /// We sent a close frame: our side is shut once it is written, and the peer has until
    /// `until` to answer (what it sends meanwhile is dropped).
    Closing {
        until: Moment,
        shut: bool,
    },
}

/// How a round of reading the client ended.
enum Reading {
    /// Nothing more to read now: wait for the socket.
    Wait,
    /// Replies are owed, the state changed, or the receiver holds input for a route's
    /// service to take first: write, then look again.
    Wrote,
    /// The budget is spent with work in hand: be called again.
    Spent,
    /// The peer ended the connection.
    Ended,
}

impl Connection {
    /// A connection of the client under `client` ([`crate::client_key`]).
    pub fn new(
        config: &Config,
        deflate: Option<Agreement>,
        relay: Option<Box<Relay>>,
        stats: &'static RouteStats,
        client: u64,
    ) -> Connection {
        stats.switched.inc();
        stats.open.inc();
        let delivery = match relay {
            Some(_) => Delivery::Parts,
            None => Delivery::Whole,
        };
        Connection {
            relay,
            receiver: Receiver::new(config.max_message, deflate.map(Inflater::new), delivery),
            assembly: Share::new(client),
            partial: None,
            holding: false,
            owed: Owed::default(),
            state: State::Open,
            ping_sent: false,
            inflate_paused: false,
            quiet_checks: 0,
            stats,
        }
    }

    /// Adds the bytes a call moved, `(in, out)`, to the route's counters.
    pub fn count_bytes(&self, (bytes_in, bytes_out): (u64, u64)) {
        self.stats.bytes_in.add(bytes_in);
        self.stats.bytes_out.add(bytes_out);
    }

    /// Notes, once, how a routed connection ended.
    fn ended(&mut self, how: impl FnOnce() -> String) {
        if let Some(relay) = self.relay.as_mut() {
            relay.ended.get_or_insert_with(how);
        }
    }

    /// The connection may move: see the module docs. `inflates`: what each client may
    /// inflate (none: no limit).
    pub fn on_ready(
        &mut self,
        io: &mut Io<'_>,
        ready: Ready,
        config: &Config,
        inflates: Option<&PerClient>,
    ) -> io::Result<Wants> {
        if ready.is_stopping() && self.state == State::Open {
            self.ended(|| "daemon stopping: closed 1001".into());
            self.start_close(close_code::GOING_AWAY, "server stopping");
        }
        if self.assembly.is_evicted() {
            if self.state != State::Open {
                // Closing already, and what it holds is wanted now: what the client did
                // not take is dropped, not waited for.
                return Ok(Wants::abort());
            }
            self.close_for_room();
        }
        let check_only = ready.is_timer() && self.eviction_check_only(ready, config);
        // While paused, the timer is the pause's (it replaced the idle timer).
        let paused_timer = std::mem::take(&mut self.inflate_paused);
        // A client may owe from its other connections (a new one each message, say): looked
        // up whenever any client may owe, which costs a quiet daemon nothing.
        let mut owed = match inflates {
            Some(rates) if paused_timer || (self.receiver.deflates() && rates.may_owe()) => {
                rates.owed(self.assembly.client())
            }
            _ => None,
        };
        // A program's stderr waiting to be read again has a timer too, the sooner one
        // while it waits (100 ms at most, before any idle limit): a timer then is its, and
        // says nothing of the client's silence (taken for the idle ping's, it pinged the
        // client every 100 ms, and closed one that answered late: a review of 5d12f5a).
        let stderr_timer = self
            .relay
            .as_ref()
            .is_some_and(|relay| relay.stderr_paused_for().is_some());
        if ready.is_timer() && !paused_timer && !stderr_timer && !check_only {
            match self.state {
                State::Closing { until, .. } if Instant::now() >= until.instant() => {
                    return Ok(Wants::close()); // the peer did not answer our close
                }
                State::Open if self.ping_sent => {
                    self.ended(|| "the client was silent: closed 1001".into());
                    self.start_close(close_code::GOING_AWAY, "idle");
                }
                State::Open if config.idle.is_some() => {
                    self.ping_sent = true;
                    write_frame(self.owed.queue(), opcode::PING, b"");
                }
                _ => {}
            }
        }
        let inflate = match owed {
            Some(_) => 0,
            None => INFLATE_BUDGET,
        };
        let mut budget = Budget {
            read: READ_BUDGET,
            inflate,
        };
        let turn = match self.relay.is_some() {
            true => self
                .relay_turn(io, ready, &mut budget, config)
                .map(|wants| self.with_stderr_timer(wants)),
            false => self.echo_turn(io, ready, &mut budget, config),
        };
        if let Err(e) = &turn {
            self.ended(|| format!("the client's connection failed: {e}"));
        }
        let inflated = inflate - budget.inflate;
        if let (Some(rates), true) = (inflates, inflated > 0) {
            owed = rates.spend(self.assembly.client(), inflated);
        }
        match (turn, owed) {
            // Work in hand that must wait for the client's allowance: not resumed (that
            // would spin), called again when it owes nothing.
            (Ok(wants), Some(wait)) if self.state == State::Open && wants.resumes() => {
                self.inflate_paused = true;
                if !paused_timer {
                    self.stats.inflate_waited();
                }
                Ok(wants.without_resume().with_timer(wait))
            }
            (turn, _) => turn,
        }
    }

    /// Writes what is owed, then does what the state asks; `Some` ends the call with that
    /// answer.
    fn write_and_settle(&mut self, io: &mut Io<'_>, config: &Config) -> io::Result<Option<Wants>> {
        if !self.write_owed(io)? {
            return Ok(Some(self.next(Wants::write(), config)));
        }
        match self.state {
            State::Done | State::Draining { .. } => {
                if let Some(relay) = self.relay.as_mut() {
                    relay
                        .ended
                        .get_or_insert_with(|| "the client closed".into());
                    // What the client sent still goes to the service, whose write side is
                    // then shut; the connection's end closes it. A service slow to take
                    // it gets as long as a close waits for its answer, and what it says
                    // meanwhile is read and dropped (it may not read on until it is).
                    relay.discard_service_output();
                    if let Ok(false) = relay.flush() {
                        let until = match self.state {
                            State::Draining { until } => until,
                            _ => Moment::of(Instant::now() + CLOSE_WAIT),
                        };
                        if Instant::now() < until.instant() {
                            self.state = State::Draining { until };
                            return Ok(Some(self.next(Wants::read(), config)));
                        }
                        let left = relay.owed_len();
                        relay.ended = Some(format!(
                            "the client closed; the service did not take its last {left} \
                             bytes in {} s",
                            CLOSE_WAIT.as_secs()
                        ));
                    }
                    if let Some(fd) = relay.backend.closed_by_shutdown() {
                        io.unwatch(fd)?; // before it is closed
                    }
                    let _ = relay.backend.shutdown_write();
                }
                return Ok(Some(Wants::close()));
            }
            State::Closing { until, shut: false } => {
                let _ = io.shutdown(Shutdown::Write);
                self.state = State::Closing { until, shut: true };
            }
            _ => {}
        }
        Ok(None)
    }

    /// The echo: read, answer, write, until the socket or the budget runs out.
    fn echo_turn(
        &mut self,
        io: &mut Io<'_>,
        ready: Ready,
        budget: &mut Budget,
        config: &Config,
    ) -> io::Result<Wants> {
        // Read only when there may be something: after a write-only call the answer
        // `Wants::read()` brings a readable call when bytes are there.
        let mut may_read = ready.is_readable() || ready.is_resume() || self.holding;
        loop {
            if let Some(wants) = self.write_and_settle(io, config)? {
                return Ok(wants);
            }
            if !may_read {
                return Ok(self.next(Wants::read(), config));
            }
            may_read = true; // after replies were written, go on reading
            match self.read(io, budget) {
                Ok(Reading::Wait) => return Ok(self.next(Wants::read(), config)),
                Ok(Reading::Ended) => return Ok(Wants::close()),
                Ok(Reading::Spent) => return Ok(self.next(Wants::read().with_resume(), config)),
                Ok(Reading::Wrote) => {} // the loop writes what the replies left owed
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Ok(self.next(Wants::read(), config))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A routed connection: the client and the service, each written before the other is
    /// read (see the module docs).
    fn relay_turn(
        &mut self,
        io: &mut Io<'_>,
        ready: Ready,
        budget: &mut Budget,
        config: &Config,
    ) -> io::Result<Wants> {
        let stderr_more = {
            let relay = self.relay.as_mut().expect("relay_turn is for routes");
            relay.watch(io)?;
            relay.log_stderr(io)?
        };
        let resume_if = |wants: Wants, more: bool| if more { wants.with_resume() } else { wants };
        // The client's message waits for inflate budget (this call's, or its client's
        // allowance): the service is still relayed meanwhile.
        let mut client_waits = false;
        loop {
            if let Some(wants) = self.write_and_settle(io, config)? {
                return Ok(resume_if(wants, stderr_more));
            }
            let relay = self.relay.as_mut().expect("relay_turn is for routes");
            let flushed = match relay.flush() {
                Ok(flushed) => flushed,
                Err(e) => {
                    self.ended(|| format!("the service failed: {e}; closed 1011"));
                    self.start_close(close_code::INTERNAL_ERROR, "service failed");
                    continue;
                }
            };
            if !flushed && ready.is_peer_closed() && self.state == State::Open {
                // Its messages wait for the service, so its end would never be read: the
                // client is gone, and so is the reason to keep the service.
                self.ended(|| {
                    "the client left while the service was not taking its messages".into()
                });
                return Ok(Wants::close());
            }
            let mut moved = false;
            // The client, while the service has taken everything it sent.
            if flushed && budget.read > 0 && !client_waits {
                match self.read(io, budget) {
                    Ok(Reading::Wait) => {}
                    Ok(Reading::Ended) => {
                        self.ended(|| "the client left without closing".into());
                        return Ok(Wants::close());
                    }
                    Ok(Reading::Wrote) => moved = true,
                    Ok(Reading::Spent) if budget.inflate == 0 && budget.read > 0 => {
                        client_waits = true;
                    }
                    Ok(Reading::Spent) => {
                        return Ok(self.next(Wants::read().with_resume(), config));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // What the client sent goes to the service next time round.
                moved |= self.relay.as_ref().is_some_and(|relay| relay.is_owed());
            }
            // The service, while the client has taken everything and the connection is open.
            if self.owed.is_done() && self.state == State::Open {
                if budget.read == 0 {
                    return Ok(self.next(Wants::read().with_resume(), config));
                }
                let relay = self.relay.as_mut().expect("relay_turn is for routes");
                let owed = &mut self.owed;
                let read = SCRATCH.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    let Scratch { input, output } = &mut *scratch;
                    output.clear();
                    let read = relay.read_service(input, output);
                    if !output.is_empty() {
                        // Straight to the socket; only what it does not take is owed (all
                        // of it after a write error, which the next flush meets again).
                        let at = write_until_blocked(io, output).map_or(0, |w| w.bytes);
                        if at < output.len() {
                            owed.queue().extend_from_slice(&output[at..]);
                        }
                    }
                    read
                });
                match read {
                    Ok(0) => {}
                    Ok(n) => {
                        budget.read = budget.read.saturating_sub(n);
                        moved = true;
                    }
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                        self.ended(|| "the service ended: closed 1000".into());
                        self.start_close(close_code::NORMAL, "");
                        moved = true;
                    }
                    Err(e) => {
                        self.ended(|| format!("the service failed: {e}; closed 1011"));
                        self.start_close(close_code::INTERNAL_ERROR, "service failed");
                        moved = true;
                    }
                }
            }
            if !moved {
                let more = stderr_more || client_waits;
                return Ok(resume_if(self.next(Wants::read(), config), more));
            }
        }
    }

    /// `wants`, called again by the time a program's stderr, waiting while its lines come
    /// too fast, is read again.
    fn with_stderr_timer(&self, wants: Wants) -> Wants {
        match self
            .relay
            .as_ref()
            .and_then(|relay| relay.stderr_paused_for())
        {
            Some(pause) => wants.with_timer_by(pause),
            None => wants,
        }
    }

    /// `wants`, with the timer the state calls for.
    fn next(&self, wants: Wants, config: &Config) -> Wants {
        let wants = self.next_for_state(wants, config);
        // Open, or done and writing what is owed (no timer of its own): called to learn of
        // a choice ([`assembly`]) as long as it holds anything.
        let may_be_chosen = matches!(self.state, State::Open | State::Done);
        match may_be_chosen && self.assembly.holds_any() {
            true => wants.with_timer_by(EVICTION_CHECK),
            false => wants,
        }
    }

    fn next_for_state(&self, wants: Wants, config: &Config) -> Wants {
        match self.state {
            State::Closing { until, .. } => {
                wants.with_timer(until.instant().saturating_duration_since(Instant::now()))
            }
            State::Open => match config.idle {
                Some(idle) => wants.with_timer(idle),
                None => wants,
            },
            State::Done => wants,
            State::Draining { until } => {
                wants.with_timer(until.instant().saturating_duration_since(Instant::now()))
            }
        }
    }

    fn read(&mut self, io: &mut Io<'_>, budget: &mut Budget) -> io::Result<Reading> {
        SCRATCH.with(|scratch| self.read_into(io, &mut scratch.borrow_mut(), budget))
    }

    /// Reads and handles input until the socket is drained, the budget is spent, replies
    /// are left owed, the receiver holds, or the connection is over. What the receiver held
    /// last time is handled before the socket is read again.
    fn read_into(
        &mut self,
        io: &mut Io<'_>,
        scratch: &mut Scratch,
        budget: &mut Budget,
    ) -> io::Result<Reading> {
        loop {
            let partial = self.partial.as_deref().map_or(&[][..], Vec::as_slice);
            let kept = partial.len();
            scratch.input[..kept].copy_from_slice(partial);
            let n = if self.holding || kept == scratch.input.len() {
                0
            } else {
                if budget.read == 0 {
                    return Ok(Reading::Spent);
                }
                // On an error `partial` is still whole: nothing is lost.
                let n = io.read(&mut scratch.input[kept..])?;
                if n == 0 {
                    // The peer is done: after our close that is the answer; before it, the
                    // peer left without a closing handshake.
                    return Ok(Reading::Ended);
                }
                self.ping_sent = false;
                budget.read = budget.read.saturating_sub(n);
                n
            };
            let filled = kept + n;
            // A short read drained the socket (the daemon calls again on new bytes).
            let drained = n > 0 && filled < scratch.input.len();
            if let State::Closing { .. } = self.state {
                // After our close, what the peer sends is dropped.
                self.partial = None;
                self.holding = false;
                if drained || budget.read == 0 {
                    return Ok(Reading::Wait);
                }
                continue;
            }
            self.partial = None;
            self.answer(io, scratch, filled, &mut budget.inflate)?;
            if !self.owed.is_done() || self.state != State::Open {
                return Ok(Reading::Wrote);
            }
            if self.holding {
                return Ok(match budget.inflate {
                    0 => Reading::Spent,
                    _ => Reading::Wrote, // a route's service takes what waits first
                });
            }
            if drained {
                return Ok(Reading::Wait);
            }
        }
    }

    /// Feeds `scratch.input[..filled]` to the receiver and writes the replies (the echo's
    /// answers, or a route's service's bytes gathered); keeps what it did not use.
    fn answer(
        &mut self,
        io: &mut Io<'_>,
        scratch: &mut Scratch,
        filled: usize,
        inflate_budget: &mut usize,
    ) -> io::Result<()> {
        let Scratch { input, output } = scratch;
        output.clear();
        let mut replies = Replies {
            io,
            staged: output,
            owed: &mut self.owed,
            error: None,
        };
        let mut relay = self.relay.as_deref_mut();
        let (stats, open) = (self.stats, self.state == State::Open);
        let result = self
            .receiver
            .feed(&mut input[..filled], inflate_budget, &mut |event| {
                match event {
                    Event::Part { payload, last, .. } => {
                        let full = relay
                            .as_mut()
                            .is_some_and(|relay| relay.take_part(payload, last));
                        if full {
                            return ControlFlow::Break(());
                        }
                    }
                    // A message goes back as it came: compressed ones as their bytes came
                    // (nothing to compress again, so a deflate bomb's echo is the bomb).
                    Event::Message { text, payload } => {
                        let opcode = if text { opcode::TEXT } else { opcode::BINARY };
                        replies.frame(opcode, payload);
                    }
                    Event::Compressed { text, deflated } => {
                        let opcode = if text { opcode::TEXT } else { opcode::BINARY };
                        replies.frame(opcode | RSV1_COMPRESSED, deflated);
                    }
                    Event::Ping(payload) => replies.frame(opcode::PONG, payload),
                    Event::Pong(_) => {}
                    // §5.5.1: answer with a close frame echoing the code.
                    Event::Close { code, .. } => {
                        if open {
                            stats.closed("client", code);
                        }
                        let code = code.map_or(Vec::new(), |c| c.to_be_bytes().to_vec());
                        replies.frame(opcode::CLOSE, &code);
                    }
                }
                // A peer that has not taken one answer gets no second one made for it.
                match replies.is_owing() {
                    true => ControlFlow::Break(()),
                    false => ControlFlow::Continue(()),
                }
            });
        let error = replies.error.take();
        replies.flush();
        if let Some(e) = error {
            return Err(e);
        }
        match result {
            Ok(fed) => {
                if fed.used < filled {
                    self.partial = Some(Box::new(input[fed.used..filled].to_vec()));
                }
                self.holding = fed.holding;
                if self.receiver.is_closed() {
                    // A message the client left unfinished never will be: what it holds
                    // goes now (a review: a Close after a first frame kept it held, the
                    // connection out of reach of the budget's choice, while the client
                    // took its echo slowly).
                    self.receiver.abandon_message();
                    self.state = State::Done;
                }
                let budget = assembly::budget(self.receiver.max_message());
                if !self.assembly.count(self.holds(), budget) {
                    self.close_for_room();
                }
            }
            Err(violation) => {
                log::debug!("closing with {}: {}", violation.code, violation.reason);
                if let Some(relay) = self.relay.as_mut() {
                    relay.ended.get_or_insert_with(|| {
                        format!(
                            "the client broke the protocol ({}): closed {}",
                            violation.reason, violation.code
                        )
                    });
                }
                self.start_close(violation.code, violation.reason);
            }
        }
        self.owed.settle();
        Ok(())
    }

    /// Closes with 1013 what may not grow, or was chosen to make room for another
    /// ([`assembly`]): the message is dropped, and what it held counted no more.
    fn close_for_room(&mut self) {
        log::debug!("closing with 1013: the plugin holds its most in messages not yet whole");
        self.ended(|| "the server holds its most in messages not yet whole: closed 1013".into());
        self.receiver.abandon_message();
        self.partial = None;
        self.assembly
            .count(self.holds(), assembly::budget(self.receiver.max_message()));
        self.start_close(
            close_code::TRY_AGAIN_LATER,
            "the server holds its most in messages not yet whole",
        );
    }

    /// Whether a timer call is only the check of a connection that holds enough to be
    /// chosen to close ([`EVICTION_CHECK`]), not yet its idle time-out; counts it.
    fn eviction_check_only(&mut self, ready: Ready, config: &Config) -> bool {
        // Not while closing: its timer is the close's (a review: taken for a check, the
        // close's wait never ended, its timer due at once again and again).
        let open = self.state == State::Open;
        if ready.is_readable() || ready.is_writable() || !self.assembly.holds_any() || !open {
            self.quiet_checks = 0;
            return false;
        }
        let checks_to_idle = config.idle.map_or(u64::MAX, |idle| {
            idle.as_millis().div_ceil(EVICTION_CHECK.as_millis()) as u64
        });
        self.quiet_checks = self.quiet_checks.saturating_add(1);
        if u64::from(self.quiet_checks) >= checks_to_idle {
            self.quiet_checks = 0;
            return false;
        }
        true
    }

    /// Starts the closing handshake (§7.1.2): our close frame, then our side shut once it is
    /// written, then a short wait for the peer's answer.
    fn start_close(&mut self, code: u16, reason: &str) {
        self.stats.closed("server", Some(code));
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        write_frame(self.owed.queue(), opcode::CLOSE, &payload);
        self.partial = None;
        self.holding = false;
        self.state = State::Closing {
            until: Moment::of(Instant::now() + CLOSE_WAIT),
            shut: false,
        };
    }

    /// What this connection holds, counted in its [`Share`]: a message not yet whole (its
    /// compressed bytes, if compressed) or, on a route, compressed bytes not yet inflated
    /// and a part inflated; the decompressor of a compressed message being inflated (which
    /// no message holds before [`crate::receiver::INFLATE_FROM`] of its bytes came); and on
    /// the echo answers the client has not taken (a whole message becomes its echo, and a
    /// client that reads none of it held it uncounted: 12 connections held 170 MB). A
    /// route's uncompressed message is handed on as it comes, and a read's worth of its
    /// service's bytes is not counted.
    fn holds(&self) -> usize {
        let echo_owes = match self.relay {
            None => self.owed.held(),
            Some(_) => 0,
        };
        // Input read and not yet handled: the rest of a read whose echo the client did
        // not take (up to a read, 64 KiB; 44 KiB a connection measured, uncounted before).
        let unhandled = self
            .partial
            .as_ref()
            .map_or(0, |partial| partial.capacity());
        self.receiver.inflating() + self.receiver.assembling() + echo_owes + unhandled
    }

    /// Writes what is owed; true when nothing is left.
    fn write_owed(&mut self, io: &mut Io<'_>) -> io::Result<bool> {
        self.owed.flush(io)?;
        // What the client took is counted no more (a ping queued meanwhile may make the
        // count grow by its few bytes: let through).
        let budget = assembly::budget(self.receiver.max_message());
        self.assembly.count(self.holds(), budget);
        Ok(self.owed.is_done())
    }
}

/// Replies to one read: staged in the thread's buffer while the socket takes everything,
/// owed by the connection (in order) once it does not.
struct Replies<'a, 'io> {
    io: &'a mut Io<'io>,
    staged: &'a mut Vec<u8>,
    owed: &'a mut Owed,
    error: Option<io::Error>,
}

impl Replies<'_, '_> {
    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        if self.is_owing() || self.error.is_some() {
            write_frame(self.owed.queue(), opcode, payload);
        } else if payload.len() >= VECTORED_FROM {
            self.large(opcode, payload);
        } else {
            write_frame(self.staged, opcode, payload);
        }
    }

    /// The socket has not taken everything: further replies wait behind what it left.
    fn is_owing(&self) -> bool {
        !self.owed.is_done()
    }

    /// Writes what is staged and a large frame without copying its payload; what the socket
    /// does not take is owed.
    fn large(&mut self, opcode: u8, payload: &[u8]) {
        let mut header = [0u8; MAX_HEADER];
        let header_len = encode_header(true, opcode, payload.len(), &mut header);
        let parts = [&self.staged[..], &header[..header_len], payload];
        let written = match write_parts_until_blocked(self.io, &parts) {
            Ok(written) => written.bytes,
            Err(e) => {
                self.error = Some(e);
                0
            }
        };
        for part in rest(&parts, written) {
            self.owed.queue().extend_from_slice(part);
        }
        self.staged.clear();
    }

    /// Writes what is staged; what the socket does not take is owed.
    fn flush(&mut self) {
        let mut at = 0;
        if self.error.is_none() && !self.is_owing() {
            match write_until_blocked(self.io, self.staged) {
                Ok(written) => at = written.bytes,
                Err(e) => self.error = Some(e),
            }
        }
        if at < self.staged.len() {
            self.owed.queue().extend_from_slice(&self.staged[at..]);
        }
        self.staged.clear();
    }
}

#[cfg(test)]
mod tests {
    /// Every connection carries this for its whole life: at 184 bytes, 10,000 idle
    /// WebSockets cost the daemon 0.48 KiB each, this included (bench/RESULTS.md). A field
    /// that only some connections, or only busy ones, need goes in a box.
    #[test]
    fn a_connection_carries_at_most_184_bytes() {
        assert!(std::mem::size_of::<super::Connection>() <= 184);
    }
}
