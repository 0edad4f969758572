//! One WebSocket connection after the `101`, readiness-driven on the daemon's event loop:
//! read what is there, feed the [`Receiver`], echo, close.
//!
//! Memory follows traffic, not connections. Reads land in a buffer of the event-loop thread
//! ([`Scratch`]), shared by every connection of that loop; a connection keeps only the start
//! of a frame header that arrived without its end, a message still in assembly, and output
//! the peer has not taken yet. While output waits nothing is read: a peer that does not read
//! stops its own echo instead of growing memory (and the daemon's write time-out ends it).
//!
//! Replies produced by one read (echoes, pongs, a close) are gathered and written with one
//! `write`; a large message goes out straight from where it lies, header and payload in one
//! vectored write. With permessage-deflate agreed, echoes are compressed too.
//!
//! On a route to a service ([`Relay`]) a message's payload goes to the service instead of
//! back, and the service's bytes come back as binary messages. Each direction holds at most
//! what one read brought (a message, or 64 KiB from the service) until the other side takes
//! it, and reads nothing more meanwhile: a client that does not read stops the service from
//! being read, a service that does not read stops the client from being read.

use crate::backend::Backend;
use crate::config::Config;
use crate::deflate::{Agreement, Deflater, Inflater};
use crate::frame::{encode_header, opcode, write_frame, MAX_HEADER, RSV1_COMPRESSED};
use crate::receiver::{close_code, Event, Receiver};
use protocol_api::{Io, Ready, Wants};
use std::cell::RefCell;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// The event-loop thread's read buffer.
const READ_BUFFER: usize = 64 * 1024;
/// Most bytes read per call, so one busy connection cannot starve the others of its loop
/// (the daemon calls again while the socket may hold more).
const READ_BUDGET: usize = 256 * 1024;
/// Messages from this size on are written straight from where they lie, header and payload
/// in one vectored write; smaller ones are copied and coalesced with the other replies.
const VECTORED_FROM: usize = 8 * 1024;
/// Output kept waiting past this size gives its buffer back once written.
const KEEP_OUTPUT: usize = 16 * 1024;
/// After we close: how long the peer gets to answer before the connection is closed.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What the event-loop thread lends every connection it serves, one at a time.
struct Scratch {
    input: Box<[u8]>,
    /// Replies gathered during one call.
    output: Vec<u8>,
    /// A compressed echo.
    packed: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: vec![0; READ_BUFFER].into_boxed_slice(),
        output: Vec::new(),
        packed: Vec::new(),
    });
}

pub struct Session {
    receiver: Receiver,
    deflater: Option<Deflater>,
    /// The start of a frame header that arrived without the rest of it.
    partial: Vec<u8>,
    /// Output the socket has not taken yet, from `owed_at` on.
    owed: Vec<u8>,
    owed_at: usize,
    state: State,
    /// We pinged a silent peer and wait for any sign of life.
    ping_sent: bool,
    /// A route's service, relayed instead of echoing.
    relay: Option<Box<Relay>>,
}

/// The service side of a routed connection.
pub struct Relay {
    backend: Backend,
    watching: bool,
    /// Payloads from the client the service has not taken yet, from `at` on.
    to_backend: Vec<u8>,
    at: usize,
    /// `exec:` (websocketd's text mode): each line of the program's output is a text
    /// message, and each message to it is followed by a newline.
    lines: bool,
    /// The start of a line of output (or of stderr) whose end has not come yet.
    carry: Vec<u8>,
    stderr_carry: Vec<u8>,
    /// For logs: the route and, for a program, its pid.
    label: String,
    /// How the connection ended, for the line logged when it goes.
    ended: Option<String>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let how = self.ended.as_deref().unwrap_or("the connection ended");
        log::info!("websocket {}: {how}", self.label);
    }
}

impl Session {
    /// Notes, once, how a routed connection ended.
    fn ended(&mut self, how: impl FnOnce() -> String) {
        if let Some(relay) = self.relay.as_mut() {
            relay.ended.get_or_insert_with(how);
        }
    }
}

/// Longest line kept waiting for its newline; longer, it goes out as it is.
const MAX_LINE: usize = 64 * 1024;

impl Relay {
    /// `lines`: `exec:`'s text mode. `label` names the route in logs.
    pub fn new(backend: Backend, lines: bool, label: String) -> Box<Relay> {
        Box::new(Relay {
            backend,
            watching: false,
            to_backend: Vec::new(),
            at: 0,
            lines,
            carry: Vec::new(),
            stderr_carry: Vec::new(),
            label,
            ended: None,
        })
    }

    /// Logs what a program wrote to stderr, a line at a time.
    fn log_stderr(&mut self) {
        let Backend::Program(program) = &mut self.backend else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut program.stderr, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.stderr_carry.extend_from_slice(&buf[..n]),
            }
        }
        while let Some(end) = self.stderr_carry.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.stderr_carry[..end]).into_owned();
            log::info!("websocket {} [pid {}]: {line}", self.label, program.pid);
            self.stderr_carry.drain(..=end);
        }
        if self.stderr_carry.len() > MAX_LINE {
            let line = String::from_utf8_lossy(&self.stderr_carry).into_owned();
            log::info!("websocket {} [pid {}]: {line}", self.label, program.pid);
            self.stderr_carry.clear();
        }
    }

    /// Writes what the service is owed; true when nothing is left.
    fn flush(&mut self) -> io::Result<bool> {
        while self.at < self.to_backend.len() {
            match self.backend.write(&self.to_backend[self.at..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.to_backend.clear();
        self.at = 0;
        if self.to_backend.capacity() > KEEP_OUTPUT {
            self.to_backend = Vec::new();
        }
        Ok(true)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The closing handshake is complete (we echoed the peer's close): end the connection
    /// once what is owed is written; the server closes TCP first (§7.1.1).
    Done,
    /// We sent a close frame: our side is shut once it is written, and the peer has until
    /// `until` to answer (what it sends meanwhile is dropped).
    Closing {
        until: Instant,
        shut: bool,
    },
}

impl Session {
    pub fn new(config: &Config, deflate: Option<Agreement>, relay: Option<Box<Relay>>) -> Session {
        Session {
            relay,
            receiver: Receiver::new(config.max_message, deflate.map(Inflater::new)),
            deflater: deflate.map(Deflater::new),
            partial: Vec::new(),
            owed: Vec::new(),
            owed_at: 0,
            state: State::Open,
            ping_sent: false,
        }
    }

    /// The connection may move: see the module docs.
    pub fn on_ready(
        &mut self,
        io: &mut Io<'_>,
        ready: Ready,
        config: &Config,
    ) -> io::Result<Wants> {
        if self.relay.is_some() {
            return self.on_ready_relay(io, ready, config);
        }
        if ready.is_stopping() && self.state == State::Open {
            self.start_close(close_code::GOING_AWAY, "server stopping");
        }
        if ready.is_timer() {
            match self.state {
                State::Closing { until, .. } if Instant::now() >= until => {
                    return Ok(Wants::close()); // the peer did not answer our close
                }
                State::Open if self.ping_sent => {
                    self.start_close(close_code::GOING_AWAY, "idle");
                }
                State::Open if config.idle.is_some() => {
                    self.ping_sent = true;
                    write_frame(&mut self.owed, opcode::PING, b"");
                }
                _ => {}
            }
        }
        let mut budget = READ_BUDGET;
        // Read only when the daemon says there may be something: after a write-only call the
        // answer `Wants::read()` brings a readable call when bytes are there.
        let mut may_read = ready.is_readable();
        loop {
            if !self.write_owed(io)? {
                return Ok(self.next(Wants::write(), config));
            }
            match self.state {
                State::Done => return Ok(Wants::close()),
                State::Closing { until, shut: false } => {
                    let _ = io.shutdown(Shutdown::Write);
                    self.state = State::Closing { until, shut: true };
                }
                _ => {}
            }
            if !may_read {
                return Ok(self.next(Wants::read(), config));
            }
            may_read = true; // after replies were written, go on reading
            let read =
                SCRATCH.with(|scratch| self.read(io, &mut scratch.borrow_mut(), &mut budget));
            match read {
                Ok(Reading::Wait) => return Ok(self.next(Wants::read(), config)),
                Ok(Reading::Ended) => return Ok(Wants::close()),
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
    fn on_ready_relay(
        &mut self,
        io: &mut Io<'_>,
        ready: Ready,
        config: &Config,
    ) -> io::Result<Wants> {
        if ready.is_stopping() && self.state == State::Open {
            self.ended(|| "daemon stopping: closed 1001".into());
            self.start_close(close_code::GOING_AWAY, "server stopping");
        }
        if ready.is_timer() {
            if let State::Closing { until, .. } = self.state {
                if Instant::now() >= until {
                    return Ok(Wants::close());
                }
            }
        }
        {
            let relay = self.relay.as_mut().expect("a relay");
            if !relay.watching {
                relay.backend.set_nonblocking()?;
                for fd in relay.backend.fds() {
                    io.watch(fd)?;
                }
                relay.watching = true;
            }
            relay.log_stderr();
        }
        let mut budget = READ_BUDGET;
        loop {
            let mut moved = false;
            if !self.write_owed(io)? {
                return Ok(self.next(Wants::write(), config));
            }
            match self.state {
                State::Done => {
                    self.ended(|| "the client closed".into());
                    // The client closed: what it sent still goes to the service, whose
                    // write side is then shut; the connection's end closes it.
                    let relay = self.relay.as_mut().expect("a relay");
                    let _ = relay.flush();
                    if let Some(fd) = relay.backend.closed_by_shutdown() {
                        io.unwatch(fd)?; // before it is closed
                    }
                    let _ = relay.backend.shutdown_write();
                    return Ok(Wants::close());
                }
                State::Closing { until, shut: false } => {
                    let _ = io.shutdown(Shutdown::Write);
                    self.state = State::Closing { until, shut: true };
                }
                _ => {}
            }
            let relay = self.relay.as_mut().expect("a relay");
            let flushed = match relay.flush() {
                Ok(flushed) => flushed,
                Err(e) => {
                    self.ended(|| format!("the service failed: {e}; closed 1011"));
                    self.start_close(close_code::INTERNAL_ERROR, "service failed");
                    continue;
                }
            };
            // The client, while the service has taken everything it sent.
            if flushed && budget > 0 {
                let before = budget;
                let read =
                    SCRATCH.with(|scratch| self.read(io, &mut scratch.borrow_mut(), &mut budget));
                match read {
                    Ok(Reading::Wait) => {}
                    Ok(Reading::Ended) => {
                        self.ended(|| "the client left without closing".into());
                        return Ok(Wants::close());
                    }
                    Ok(Reading::Wrote) => moved = true,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                let relay = self.relay.as_ref().expect("a relay");
                moved |= budget < before || relay.to_backend.len() > relay.at;
            }
            // The service, while the client has taken everything and the connection is open.
            if self.owed.is_empty() && self.state == State::Open {
                match SCRATCH.with(|scratch| self.read_service(&mut scratch.borrow_mut())) {
                    Ok(0) => {}
                    Ok(_) => moved = true,
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
                return Ok(self.next(Wants::read(), config));
            }
        }
    }

    /// Reads what the service has into messages owed to the client (one binary message,
    /// or a text message per line for `exec:`); the bytes read (0: nothing now). The
    /// service's end is `UnexpectedEof`; a program's end with a failure is an error.
    fn read_service(&mut self, scratch: &mut Scratch) -> io::Result<usize> {
        let relay = self.relay.as_mut().expect("a relay");
        match relay.backend.read(&mut scratch.input) {
            Ok(0) => {
                if relay.lines && !relay.carry.is_empty() {
                    let line = String::from_utf8_lossy(&relay.carry).into_owned();
                    write_frame(&mut self.owed, opcode::TEXT, line.as_bytes());
                    relay.carry.clear();
                }
                relay.log_stderr();
                match &mut relay.backend {
                    Backend::Program(program) => match program.exit_status() {
                        None => Ok(0), // output closed; its exit comes through the pidfd
                        Some(status) if status.success() => Err(ErrorKind::UnexpectedEof.into()),
                        Some(status) => Err(io::Error::other(format!(
                            "the program (pid {}) ended: {status}",
                            program.pid
                        ))),
                    },
                    _ => Err(ErrorKind::UnexpectedEof.into()),
                }
            }
            Ok(n) if relay.lines => {
                relay.carry.extend_from_slice(&scratch.input[..n]);
                while let Some(end) = relay.carry.iter().position(|&b| b == b'\n') {
                    let line = &relay.carry[..end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    write_frame(
                        &mut self.owed,
                        opcode::TEXT,
                        String::from_utf8_lossy(line).as_bytes(),
                    );
                    relay.carry.drain(..=end);
                }
                if relay.carry.len() > MAX_LINE {
                    let line = String::from_utf8_lossy(&relay.carry).into_owned();
                    write_frame(&mut self.owed, opcode::TEXT, line.as_bytes());
                    relay.carry.clear();
                }
                Ok(n)
            }
            Ok(n) => {
                write_frame(&mut self.owed, opcode::BINARY, &scratch.input[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// `wants`, with the timer the state calls for.
    fn next(&self, wants: Wants, config: &Config) -> Wants {
        match self.state {
            State::Closing { until, .. } => {
                wants.with_timer(until.saturating_duration_since(Instant::now()))
            }
            State::Open => match config.idle {
                Some(idle) => wants.with_timer(idle),
                None => wants,
            },
            State::Done => wants,
        }
    }

    /// Reads and answers until the socket is drained, the budget is spent, replies are
    /// left owed, or the connection is over.
    fn read(
        &mut self,
        io: &mut Io<'_>,
        scratch: &mut Scratch,
        budget: &mut usize,
    ) -> io::Result<Reading> {
        loop {
            let kept = self.partial.len();
            scratch.input[..kept].copy_from_slice(&self.partial);
            // On an error `partial` is still whole: nothing is lost.
            let n = io.read(&mut scratch.input[kept..])?;
            if n == 0 {
                // The peer is done: after our close that is the answer; before it, the peer
                // left without a closing handshake.
                return Ok(Reading::Ended);
            }
            self.ping_sent = false;
            let filled = kept + n;
            let drained = filled < scratch.input.len();
            if let State::Closing { .. } = self.state {
                self.partial.clear(); // after our close, what the peer sends is dropped
                *budget = budget.saturating_sub(n);
                if drained || *budget == 0 {
                    return Ok(Reading::Wait);
                }
                continue;
            }
            self.partial.clear();
            self.answer(io, scratch, filled)?;
            if !self.owed.is_empty() || self.state != State::Open {
                return Ok(Reading::Wrote);
            }
            *budget = budget.saturating_sub(n);
            if drained || *budget == 0 {
                // A short read drained the socket (the daemon calls again on new bytes); a
                // spent budget lets the loop's other connections move first.
                return Ok(Reading::Wait);
            }
        }
    }

    /// Feeds `scratch.input[..filled]` to the receiver and writes the replies.
    fn answer(&mut self, io: &mut Io<'_>, scratch: &mut Scratch, filled: usize) -> io::Result<()> {
        let Scratch {
            input,
            output,
            packed,
        } = scratch;
        output.clear();
        let mut replies = Replies {
            io,
            staged: output,
            owed: &mut self.owed,
            owed_at: &mut self.owed_at,
            error: None,
        };
        let deflater = &mut self.deflater;
        let newline = self.relay.as_ref().is_some_and(|r| r.lines);
        let mut to_backend = self.relay.as_mut().map(|r| &mut r.to_backend);
        let result = self
            .receiver
            .feed(&mut input[..filled], &mut |event| match event {
                Event::Message { payload, .. } if to_backend.is_some() => {
                    if let Some(to_backend) = to_backend.as_mut() {
                        to_backend.extend_from_slice(payload);
                        if newline {
                            to_backend.push(b'\n');
                        }
                    }
                }
                Event::Message { text, payload } => {
                    let mut opcode = if text { opcode::TEXT } else { opcode::BINARY };
                    let payload = match deflater.as_mut() {
                        Some(deflater) => {
                            deflater.deflate(payload, packed);
                            opcode |= RSV1_COMPRESSED;
                            &packed[..]
                        }
                        None => payload,
                    };
                    replies.frame(opcode, payload);
                }
                Event::Ping(payload) => replies.frame(opcode::PONG, payload),
                Event::Pong(_) => {}
                // §5.5.1: answer with a close frame echoing the code.
                Event::Close { code, .. } => {
                    let code = code.map_or(Vec::new(), |c| c.to_be_bytes().to_vec());
                    replies.frame(opcode::CLOSE, &code);
                }
            });
        let error = replies.error.take();
        replies.flush();
        if let Some(e) = error {
            return Err(e);
        }
        match result {
            Ok(used) => {
                self.partial.extend_from_slice(&input[used..filled]);
                if self.receiver.is_closed() {
                    self.state = State::Done;
                }
            }
            Err(violation) => {
                log::debug!("closing with {}: {}", violation.code, violation.reason);
                self.start_close(violation.code, violation.reason);
            }
        }
        if self.owed.capacity() > KEEP_OUTPUT && self.owed.is_empty() {
            self.owed = Vec::new();
        }
        Ok(())
    }

    /// Starts the closing handshake (§7.1.2): our close frame, then our side shut once it is
    /// written, then a short wait for the peer's answer.
    fn start_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        write_frame(&mut self.owed, opcode::CLOSE, &payload);
        self.partial = Vec::new();
        self.state = State::Closing {
            until: Instant::now() + CLOSE_WAIT,
            shut: false,
        };
    }

    /// Writes what is owed; true when nothing is left.
    fn write_owed(&mut self, io: &mut Io<'_>) -> io::Result<bool> {
        while self.owed_at < self.owed.len() {
            match io.write(&self.owed[self.owed_at..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.owed_at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.owed.clear();
        self.owed_at = 0;
        if self.owed.capacity() > KEEP_OUTPUT {
            self.owed = Vec::new();
        }
        Ok(true)
    }
}

/// How a round of reading ended.
enum Reading {
    /// Nothing more to read now: wait for the socket.
    Wait,
    /// Replies are owed, or the state changed: write, then look again.
    Wrote,
    /// The peer ended the connection.
    Ended,
}

/// Replies to one read: staged in the thread's buffer while the socket takes everything,
/// owed by the connection (in order) once it does not.
struct Replies<'a, 'io> {
    io: &'a mut Io<'io>,
    staged: &'a mut Vec<u8>,
    owed: &'a mut Vec<u8>,
    owed_at: &'a mut usize,
    error: Option<io::Error>,
}

impl Replies<'_, '_> {
    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        if self.owed.len() > *self.owed_at || self.error.is_some() {
            write_frame(self.owed, opcode, payload);
        } else if payload.len() >= VECTORED_FROM {
            self.large(opcode, payload);
        } else {
            write_frame(self.staged, opcode, payload);
        }
    }

    /// Writes what is staged and a large frame without copying its payload; what the socket
    /// does not take is owed.
    fn large(&mut self, opcode: u8, payload: &[u8]) {
        let mut header = [0u8; MAX_HEADER];
        let header_len = encode_header(true, opcode, payload.len(), &mut header);
        let parts = [&self.staged[..], &header[..header_len], payload];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut written = 0;
        while written < total {
            let (rest, count) = after(&parts, written);
            let slices = rest.map(IoSlice::new);
            match self.io.write_vectored(&slices[..count]) {
                Ok(0) => {
                    self.error = Some(ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            }
        }
        let (rest, count) = after(&parts, written);
        for part in &rest[..count] {
            self.owed.extend_from_slice(part);
        }
        self.staged.clear();
    }

    /// Writes what is staged; what the socket does not take is owed.
    fn flush(&mut self) {
        let mut at = 0;
        while at < self.staged.len() && self.error.is_none() && self.owed.len() == *self.owed_at {
            match self.io.write(&self.staged[at..]) {
                Ok(0) => self.error = Some(ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => self.error = Some(e),
            }
        }
        if at < self.staged.len() {
            self.owed.extend_from_slice(&self.staged[at..]);
        }
        self.staged.clear();
    }
}

/// The non-empty rest of `parts` after the first `skip` bytes, and how many there are.
fn after<'p>(parts: &[&'p [u8]; 3], mut skip: usize) -> ([&'p [u8]; 3], usize) {
    let mut rest: [&[u8]; 3] = [&[]; 3];
    let mut count = 0;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
        } else {
            rest[count] = &part[skip..];
            count += 1;
            skip = 0;
        }
    }
    (rest, count)
}
