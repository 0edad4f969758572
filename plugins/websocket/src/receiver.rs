//! The receiving half of RFC 6455, pure: bytes in, events out, every rule of §5 checked.
//!
//! [`Receiver::feed`] consumes what arrived (unmasking payload in place) and hands events to
//! a callback. Invalid UTF-8 in text is caught at its first bad byte, even inside a frame
//! that has not fully arrived (§8.1, fail fast). Data messages are handed on one of two
//! ways ([`Delivery`]): whole (the echo answers a message with a message), or in parts as
//! they arrive (a route relays bytes, and should hold no more than what its service has
//! not taken yet).
//!
//! With permessage-deflate agreed (RFC 7692), RSV1 on a message's first frame marks it
//! compressed. Its bytes are inflated as they come, never more per call than the caller's
//! budget: a frame of a few KiB can inflate to the message limit, and inflating it in one
//! go would hold the event loop for tens of milliseconds. While a message is part inflated
//! the receiver parses no further frame; it holds ([`Fed::holding`]) until called again.
//!
//! The callback may also ask to stop (`ControlFlow::Break`): the receiver hands nothing
//! more on in this call, and the caller keeps the unused input for the next one. A relay
//! whose service has not taken the last message stops here, so a client cannot make it
//! buffer a second one.

use crate::deflate::{InflateError, Inflater, MESSAGE_TAIL};
use crate::frame::{apply_mask, opcode, parse_header, Header, MAX_CONTROL_PAYLOAD};
use std::ops::ControlFlow;

/// Close codes this module sends (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    /// A route's service failed (§7.4.1: "an unexpected condition").
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is over a limit of its own, not the client's doing alone (IANA
    /// registry: Try Again Later).
    pub const TRY_AGAIN_LATER: u16 = 1013;

    /// Codes a peer may send in a close frame (§7.4.1, §7.4.2; IANA registry): 1000–1003,
    /// 1007–1014, and 3000–4999 for libraries and applications. 1004–1006 and 1015 are
    /// reserved and never sent on the wire.
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A broken rule: fail the connection with `code` (§7.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

const INVALID_TEXT: Violation = violation(
    close_code::INVALID_PAYLOAD,
    "text message is not valid UTF-8",
);
const TOO_BIG: Violation = violation(close_code::TOO_BIG, "message larger than the limit");
const TOO_BIG_INFLATED: Violation = violation(
    close_code::TOO_BIG,
    "message larger than the limit once inflated",
);

/// What the peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole data message, reassembled ([`Delivery::Whole`]); text is valid UTF-8.
    Message {
        text: bool,
        payload: &'a [u8],
    },
    /// A whole compressed message ([`Delivery::Whole`]), as its bytes came
    /// (permessage-deflate, without the tail the sender removed, RFC 7692 §7.2.1). It was
    /// inflated as it came only to check it (its size, and UTF-8 for text); nothing
    /// inflated is kept, so it holds what the client sent, not what that inflates to.
    /// Both sides compress without context takeover, so these bytes are valid as a
    /// message of ours too: an echo sends them back as they are.
    Compressed {
        text: bool,
        deflated: &'a [u8],
    },
    /// The next piece of a data message ([`Delivery::Parts`]), in order; `last` on its
    /// final piece (which may be empty). Text is valid UTF-8 so far (a character may be cut
    /// between pieces).
    Part {
        text: bool,
        payload: &'a [u8],
        last: bool,
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The peer started or answered the closing handshake; nothing after it is read.
    Close {
        code: Option<u16>,
        reason: &'a str,
    },
}

/// How data messages are handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Whole, once the last frame has come ([`Event::Message`], or [`Event::Compressed`]
    /// under permessage-deflate): up to the message limit is held while a message is
    /// assembled (a compressed one: its compressed bytes).
    Whole,
    /// In pieces as they arrive ([`Event::Part`]): nothing is assembled; a compressed
    /// message's pieces are at most [`PART_MAX`] inflated bytes each.
    Parts,
}

/// What ending a compressed message counts against the caller's inflate budget: the
/// inflater's reset per message (no context takeover) costs about what inflating this
/// much does, so a read of tiny compressed messages (37,000 in 256 KiB) yields to the
/// loop's other connections like a large one does, instead of holding them 10 ms.
pub const MESSAGE_INFLATE_COST: usize = 1024;

/// Compressed bytes a message gathers before its inflating begins (unless its last frame
/// comes first). Inflating holds a decompressor until the message ends, about
/// [`crate::deflate::DECOMPRESSOR_BYTES`]: begun at a message's first byte, a first frame of
/// 7 compressed bytes that was never followed held 44 KiB (an attacker's review), and
/// counting it made a share of the echo's budget cost 16 bytes sent. Now a client has
/// sent more than a decompressor holds before it holds one. A route's service and the
/// check of compressed text wait for this much too; a message's last frame is inflated at
/// once, whatever its size.
pub const INFLATE_FROM: usize = 64 * 1024;

/// Most compressed bytes inflated in one step: what a compressed byte costs is not bounded
/// by what it inflates to (an empty DEFLATE block is 10 bits and makes nothing; a message
/// of them once took miniz_oxide 2 µs a block, a second a megabyte, in one call), so the
/// input is taken a slice at a time and each slice is charged for its time too
/// ([`inflate_charge`]).
pub const INFLATE_SLICE: usize = 16 * 1024;

/// A step's time counts against the inflate budget as a byte made per this many
/// nanoseconds, when that is more than it made: about what inflating ordinary text costs
/// (3 ns a byte here), so ordinary messages are charged what they make, as before, and
/// compressed bytes that make nothing are charged for their time: the budget (1 MiB a call,
/// `SWITCHYARD_WEBSOCKET_INFLATE_PER_CLIENT` a second) bounds both alike.
pub const NANOS_PER_BYTE: usize = 4;

/// Each compressed byte a step takes past what it makes is charged as at least this many
/// bytes made: zlib-rs's empty fixed blocks cost 20 ns a byte ([`NANOS_PER_BYTE`] each).
/// Compressed text makes more than it takes, and data that did not compress (stored
/// blocks) about as much, so both pay what they make. A floor only: dynamic blocks cost
/// far more a byte (5.5 µs a one-byte block), which their time pays.
pub const INPUT_COST: usize = 5;

/// Once a connection's step was charged for its time, its later steps of at least this
/// much input are timed on the thread's CPU clock rather than the wall clock (a system
/// call, 0.5 µs): a step preempted on a busy machine is then not charged for the wait
/// (ordinary text paid 27% more so on a shared core). Every step is timed: untimed steps
/// of dynamic blocks under 8 KiB cost 6.6 times what they were charged (a review).
pub const CPU_TIMED_FROM: usize = 512;

/// What an inflating step costs the budget: the bytes it made, or what the compressed bytes
/// it took (`used`) past those cost, or its time (`took`), whichever is most; and whether
/// its time decided.
fn inflate_charge(made: usize, used: usize, took: std::time::Duration) -> (usize, bool) {
    let nanos = usize::try_from(took.as_nanos()).unwrap_or(usize::MAX);
    let unmade = used.saturating_sub(made);
    let by_bytes = made.max(unmade.saturating_mul(INPUT_COST));
    let by_time = nanos / NANOS_PER_BYTE;
    (by_bytes.max(by_time), by_time > by_bytes)
}

/// The most inflated bytes one [`Event::Part`] carries.
pub const PART_MAX: usize = 64 * 1024;

/// What a call to [`Receiver::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input used. The rest must be passed again, with more after it.
    pub used: usize,
    /// It stopped with work in hand: the callback asked to stop, or the budget ran out with
    /// a message part inflated. Call again (with the unused input) before reading more.
    pub holding: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Payload {
        opcode: u8,
        fin: bool,
        mask: [u8; 4],
        remaining: u64,
        offset: usize,
    },
}

pub struct Receiver {
    max_message: usize,
    delivery: Delivery,
    state: State,
    /// The opcode (text or binary) of a data message in progress.
    message_opcode: Option<u8>,
    /// Payload bytes of the message in progress so far (compressed bytes if compressed).
    message_len: u64,
    /// A message in assembly ([`Delivery::Whole`]), or a compressed message's bytes not yet
    /// inflated (either way).
    message: Vec<u8>,
    /// Bytes of `message` (of `inflated`, for a compressed message) known to be whole,
    /// valid UTF-8 characters ([`Delivery::Whole`]).
    utf8_checked: usize,
    /// Text handed on in parts, checked as it goes ([`Delivery::Parts`]).
    utf8: Utf8Stream,
    /// A control frame's payload that came in pieces; boxed, as most connections never see
    /// one.
    control: Option<Box<ControlPieces>>,
    closed: bool,
    /// A step was charged for its time: later ones are timed on the CPU clock
    /// ([`CPU_TIMED_FROM`]).
    cpu_timed: bool,
    /// permessage-deflate, when negotiated (RFC 7692); boxed, as a connection without it
    /// then pays for a pointer only.
    inflater: Option<Box<Inflater>>,
    /// The message in progress had RSV1 set (it is compressed): its inflating, boxed, as
    /// only a compressed message in progress needs it (an idle connection holds a pointer).
    compressed: Option<Box<Compressed>>,
}

/// A compressed message being inflated.
#[derive(Default)]
struct Compressed {
    /// Bytes of `Receiver::message` inflated so far ([`Delivery::Whole`] keeps them, to
    /// hand on as they came; [`Delivery::Parts`] lets them go, and this stays 0).
    read: usize,
    /// Its last frame has come (its tail is in `Receiver::message`).
    complete: bool,
    /// Inflated (whole, or the part in hand).
    inflated: Vec<u8>,
    /// Bytes it has inflated to so far.
    inflated_len: usize,
}

/// A control frame's payload gathered from pieces: at most 125 bytes (§5.5; a longer one
/// is refused at its header).
struct ControlPieces {
    bytes: [u8; MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl Default for ControlPieces {
    fn default() -> ControlPieces {
        ControlPieces {
            bytes: [0; MAX_CONTROL_PAYLOAD],
            len: 0,
        }
    }
}

impl ControlPieces {
    fn push(&mut self, piece: &[u8]) {
        let at = usize::from(self.len);
        self.bytes[at..at + piece.len()].copy_from_slice(piece);
        self.len += piece.len() as u8;
    }

    fn payload(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// RSV1: "this message is compressed" under permessage-deflate (RFC 7692 §6).
const RSV1: u8 = 0b100;

/// Messages larger than this give their buffer back once delivered: a connection that
/// once sent a message in pieces keeps no more than this while quiet (64 KiB kept was 60
/// KiB a connection, uncounted, after one 64 KiB message: an attacker's review).
const KEEP_CAPACITY: usize = 4 * 1024;

impl Receiver {
    /// A receiver for messages up to `max_message` bytes (inflated size too), inflating
    /// compressed ones with `inflater` when permessage-deflate was agreed.
    pub fn new(max_message: usize, inflater: Option<Inflater>, delivery: Delivery) -> Receiver {
        Receiver {
            inflater: inflater.map(Box::new),
            delivery,
            compressed: None,
            max_message,
            state: State::Header,
            message_opcode: None,
            message_len: 0,
            message: Vec::new(),
            utf8_checked: 0,
            utf8: Utf8Stream::default(),
            control: None,
            closed: false,
            cpu_timed: false,
        }
    }

    /// Payload bytes of the current frame not received yet (0 between frames): lets the
    /// reader size its next read to the frame.
    pub fn payload_pending(&self) -> u64 {
        match self.state {
            State::Payload { remaining, .. } => remaining,
            State::Header => 0,
        }
    }

    /// True after a close frame: the closing handshake has begun.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// A compressed message has bytes to inflate now: its last frame has come (its bytes
    /// may all be inflated, not yet handed on), or bytes not yet inflated and either a
    /// decompressor already held or [`INFLATE_FROM`] of them.
    fn inflation_pending(&self) -> bool {
        self.compressed.as_ref().is_some_and(|c| {
            let waiting = self.message.len() - c.read;
            c.complete || (waiting > 0 && (self.inflating() > 0 || waiting >= INFLATE_FROM))
        })
    }

    /// Consumes frames from `input`, calling `on_event` for each event, inflating at most
    /// `budget` bytes (which it lowers by what it inflates). See [`Fed`].
    pub fn feed(
        &mut self,
        input: &mut [u8],
        budget: &mut usize,
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<Fed, Violation> {
        let mut at = 0;
        let holding = |used| {
            Ok(Fed {
                used,
                holding: true,
            })
        };
        while !self.closed {
            if self.inflation_pending() {
                match self.inflate(budget, on_event)? {
                    ControlFlow::Continue(()) if self.inflation_pending() => return holding(at),
                    ControlFlow::Continue(()) => {}
                    ControlFlow::Break(()) => return holding(at),
                }
                continue;
            }
            match self.state {
                State::Header => {
                    let parsed = parse_header(&input[at..]).map_err(|_| {
                        violation(close_code::PROTOCOL_ERROR, "frame length over 2^63")
                    })?;
                    let Some((header, header_len)) = parsed else {
                        break;
                    };
                    let mask = self.check(&header)?;
                    at += header_len;
                    let available = (input.len() - at) as u64;
                    let starts_message =
                        header.opcode == opcode::TEXT || header.opcode == opcode::BINARY;
                    let compressed = starts_message && header.rsv & RSV1 != 0;
                    if available >= header.len
                        && (opcode::is_control(header.opcode)
                            || (header.fin && starts_message && !compressed))
                    {
                        // The whole frame is here and stands alone: no copy.
                        let payload = &mut input[at..at + header.len as usize];
                        apply_mask(payload, mask, 0);
                        at += payload.len();
                        let flow = if starts_message {
                            let text = header.opcode == opcode::TEXT;
                            self.single_frame(text, payload, on_event)?
                        } else {
                            self.control_frame(header.opcode, payload, on_event)?
                        };
                        if flow.is_break() {
                            return holding(at);
                        }
                        continue;
                    }
                    if starts_message {
                        self.message_opcode = Some(header.opcode);
                        self.compressed = compressed.then(Box::default);
                        self.message_len = 0;
                        self.utf8_checked = 0;
                        self.utf8 = Utf8Stream::default();
                    }
                    self.control = None;
                    self.state = State::Payload {
                        opcode: header.opcode,
                        fin: header.fin,
                        mask,
                        remaining: header.len,
                        offset: 0,
                    };
                    if header.len == 0 && !opcode::is_control(header.opcode) {
                        // An empty data frame: nothing to wait for.
                        self.state = State::Header;
                        if self.data(&[], header.fin, on_event)?.is_break() {
                            return holding(at);
                        }
                    }
                }
                State::Payload {
                    opcode: frame_opcode,
                    fin,
                    mask,
                    remaining,
                    offset,
                } => {
                    let take =
                        (input.len() - at).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    if take == 0 && remaining > 0 {
                        break;
                    }
                    let chunk = &mut input[at..at + take];
                    apply_mask(chunk, mask, offset);
                    at += take;
                    let remaining = remaining - take as u64;
                    self.state = match remaining {
                        0 => State::Header,
                        _ => State::Payload {
                            opcode: frame_opcode,
                            fin,
                            mask,
                            remaining,
                            offset: offset + take,
                        },
                    };
                    let last = fin && remaining == 0;
                    if opcode::is_control(frame_opcode) {
                        let control = self.control.get_or_insert_with(Box::default);
                        control.push(chunk);
                        if remaining == 0 {
                            let control = self.control.take().unwrap_or_default();
                            if self
                                .control_frame(frame_opcode, control.payload(), on_event)?
                                .is_break()
                            {
                                return holding(at);
                            }
                        }
                        continue;
                    }
                    if self.data(chunk, last, on_event)?.is_break() {
                        return holding(at);
                    }
                    if remaining > 0 {
                        break; // the rest of the frame has not come
                    }
                }
            }
        }
        Ok(Fed {
            used: at,
            holding: false,
        })
    }

    /// The rules a header must meet (§5.2–§5.5); returns the masking key.
    fn check(&self, header: &Header) -> Result<[u8; 4], Violation> {
        use close_code::PROTOCOL_ERROR;
        let starts_message = header.opcode == opcode::TEXT || header.opcode == opcode::BINARY;
        let compressed_ok = header.rsv == RSV1 && starts_message && self.inflater.is_some();
        if header.rsv != 0 && !compressed_ok {
            return Err(violation(
                PROTOCOL_ERROR,
                "reserved bits set without a negotiated extension",
            ));
        }
        if !opcode::is_known(header.opcode) {
            return Err(violation(PROTOCOL_ERROR, "reserved opcode"));
        }
        let Some(mask) = header.mask else {
            return Err(violation(PROTOCOL_ERROR, "client frame not masked"));
        };
        if opcode::is_control(header.opcode) {
            if !header.fin {
                return Err(violation(PROTOCOL_ERROR, "fragmented control frame"));
            }
            if header.len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(violation(
                    PROTOCOL_ERROR,
                    "control frame payload over 125 bytes",
                ));
            }
            return Ok(mask);
        }
        let so_far = if starts_message { 0 } else { self.message_len };
        match (header.opcode, self.message_opcode) {
            (opcode::CONTINUATION, None) => Err(violation(
                PROTOCOL_ERROR,
                "continuation frame with no message to continue",
            )),
            (opcode::TEXT | opcode::BINARY, Some(_)) => Err(violation(
                PROTOCOL_ERROR,
                "new message before the last one ended",
            )),
            _ if so_far.saturating_add(header.len) > self.max_message as u64 => Err(TOO_BIG),
            _ => Ok(mask),
        }
    }

    /// A whole uncompressed one-frame message, as it lies in the input.
    fn single_frame(
        &mut self,
        text: bool,
        payload: &[u8],
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Violation> {
        if text && simdutf8::basic::from_utf8(payload).is_err() {
            return Err(INVALID_TEXT);
        }
        Ok(match self.delivery {
            Delivery::Whole => on_event(Event::Message { text, payload }),
            Delivery::Parts => on_event(Event::Part {
                text,
                payload,
                last: true,
            }),
        })
    }

    /// A piece of a data frame's payload (unmasked); `last` when it ends its message.
    fn data(
        &mut self,
        chunk: &[u8],
        last: bool,
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Violation> {
        self.message_len += chunk.len() as u64;
        let text = self.message_opcode == Some(opcode::TEXT);
        if let Some(compressed) = self.compressed.as_mut() {
            // Inflated as the caller's budget allows (see `inflate`, which `feed` runs next).
            self.message.extend_from_slice(chunk);
            if last {
                self.message.extend_from_slice(&MESSAGE_TAIL);
                compressed.complete = true;
            }
            return Ok(ControlFlow::Continue(()));
        }
        let flow = match self.delivery {
            Delivery::Whole => {
                self.message.extend_from_slice(chunk);
                if text {
                    check_text(&self.message, &mut self.utf8_checked, last)?;
                }
                if !last {
                    return Ok(ControlFlow::Continue(()));
                }
                on_event(Event::Message {
                    text,
                    payload: &self.message,
                })
            }
            Delivery::Parts => {
                if text {
                    self.utf8.push(chunk)?;
                    if last {
                        self.utf8.finish()?;
                    }
                }
                if chunk.is_empty() && !last {
                    return Ok(ControlFlow::Continue(()));
                }
                on_event(Event::Part {
                    text,
                    payload: chunk,
                    last,
                })
            }
        };
        if last {
            self.end_message();
        }
        Ok(flow)
    }

    /// Whether permessage-deflate was agreed (compressed messages may come).
    pub fn deflates(&self) -> bool {
        self.inflater.is_some()
    }

    /// The largest message taken, in bytes.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Bytes held for the message in progress: what it has of a whole message (compressed
    /// bytes, if compressed), or compressed bytes not yet inflated and a part inflated.
    pub fn assembling(&self) -> usize {
        self.message.len() + self.compressed.as_ref().map_or(0, |c| c.inflated.len())
    }

    /// What the decompressor of a compressed message in progress holds (0 if none).
    pub fn inflating(&self) -> usize {
        match self.inflater.as_ref().is_some_and(|i| i.is_holding()) {
            true => crate::deflate::DECOMPRESSOR_BYTES,
            false => 0,
        }
    }

    /// Lets go of the message in progress (the connection is closing).
    pub fn abandon_message(&mut self) {
        self.end_message();
        if let Some(inflater) = self.inflater.as_mut() {
            inflater.finish_message(); // its decompressor back to the pool
        }
        self.compressed = None;
        self.message = Vec::new();
    }

    fn end_message(&mut self) {
        self.message_opcode = None;
        self.compressed = None;
        self.message_len = 0;
        self.utf8_checked = 0;
        if self.message.capacity() > KEEP_CAPACITY {
            self.message = Vec::new();
        } else {
            self.message.clear();
        }
    }

    /// Inflates what the compressed message in progress has, within `budget`, handing it
    /// on as parts or, once it is all there, as the whole message.
    fn inflate(
        &mut self,
        budget: &mut usize,
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Violation> {
        let text = self.message_opcode == Some(opcode::TEXT);
        let Some(mut c) = self.compressed.take() else {
            return Ok(ControlFlow::Continue(()));
        };
        loop {
            // Inflated bytes are checked and let go a step at a time, both ways.
            let step = (*budget).min(PART_MAX);
            // One byte past the limit tells a message that is too big.
            let step = step.min(self.max_message + 1 - c.inflated_len.min(self.max_message));
            if step == 0 {
                self.compressed = Some(c);
                return Ok(ControlFlow::Continue(())); // the budget is spent: hold
            }
            let inflater = self
                .inflater
                .as_mut()
                .expect("RSV1 is accepted only with an inflater");
            let before = c.inflated.len();
            let slice = &self.message[c.read..];
            let slice = &slice[..slice.len().min(INFLATE_SLICE)];
            let began = std::time::Instant::now();
            let cpu_began = (self.cpu_timed && slice.len() >= CPU_TIMED_FROM)
                .then(protocol_api::moment::thread_cpu_time)
                .flatten();
            let (used, full) = inflater
                .inflate_some(slice, &mut c.inflated, step)
                .map_err(|e| match e {
                    InflateError::Corrupt => violation(
                        close_code::INVALID_PAYLOAD,
                        "compressed message is not valid DEFLATE data",
                    ),
                    InflateError::TooBig => TOO_BIG_INFLATED,
                })?;
            let made = c.inflated.len() - before;
            match self.delivery {
                Delivery::Whole => c.read += used,
                Delivery::Parts => {
                    self.message.drain(..used);
                    // A message that waits for more keeps no large buffer it does not use.
                    if self.message.is_empty() && self.message.capacity() > KEEP_CAPACITY {
                        self.message = Vec::new();
                    }
                }
            }
            let all_read = self.message.len() == c.read;
            let cpu =
                cpu_began.and_then(|began| Some(protocol_api::moment::thread_cpu_time()? - began));
            let (charge, by_time) = inflate_charge(made, used, cpu.unwrap_or(began.elapsed()));
            self.cpu_timed |= by_time;
            *budget = budget.saturating_sub(charge);
            c.inflated_len += made;
            if c.inflated_len > self.max_message {
                return Err(TOO_BIG_INFLATED);
            }
            let done = c.complete && all_read && !full;
            if done {
                if let Some(inflater) = self.inflater.as_mut() {
                    inflater.finish_message();
                }
                // The inflater's reset costs about what inflating this much does.
                *budget = budget.saturating_sub(MESSAGE_INFLATE_COST);
            }
            if text {
                self.utf8.push(&c.inflated)?;
                if done {
                    self.utf8.finish()?;
                }
            }
            let flow = match self.delivery {
                Delivery::Whole => {
                    c.inflated.clear();
                    match done {
                        true => on_event(Event::Compressed {
                            text,
                            deflated: &self.message[..self.message.len() - MESSAGE_TAIL.len()],
                        }),
                        false => ControlFlow::Continue(()),
                    }
                }
                Delivery::Parts if c.inflated.is_empty() && !done => ControlFlow::Continue(()),
                Delivery::Parts => {
                    let flow = on_event(Event::Part {
                        text,
                        payload: &c.inflated,
                        last: done,
                    });
                    c.inflated.clear();
                    flow
                }
            };
            if done {
                self.end_message();
                return Ok(flow);
            }
            if flow.is_break() || (!full && all_read) {
                // Stopped by the caller, or every compressed byte that came is inflated:
                // what waits for more holds no inflated bytes, nor room for them.
                if c.inflated.is_empty() {
                    c.inflated = Vec::new();
                }
                self.compressed = Some(c);
                return Ok(flow);
            }
        }
    }

    fn control_frame(
        &mut self,
        frame_opcode: u8,
        payload: &[u8],
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Violation> {
        match frame_opcode {
            opcode::PING => Ok(on_event(Event::Ping(payload))),
            opcode::PONG => Ok(on_event(Event::Pong(payload))),
            _ => {
                let (code, reason) = match payload {
                    [] => (None, ""),
                    [_] => {
                        return Err(violation(
                            close_code::PROTOCOL_ERROR,
                            "close frame with a 1-byte payload",
                        ))
                    }
                    [high, low, reason @ ..] => {
                        let code = u16::from_be_bytes([*high, *low]);
                        if !close_code::is_valid_on_wire(code) {
                            return Err(violation(
                                close_code::PROTOCOL_ERROR,
                                "invalid close code",
                            ));
                        }
                        let reason = std::str::from_utf8(reason).map_err(|_| {
                            violation(
                                close_code::INVALID_PAYLOAD,
                                "close reason is not valid UTF-8",
                            )
                        })?;
                        (Some(code), reason)
                    }
                };
                self.closed = true;
                Ok(on_event(Event::Close { code, reason }))
            }
        }
    }
}

/// Checks `buffer[*checked..]` as the continuation of valid text; `complete` when the
/// message has ended (a character cut at the end is then invalid).
fn check_text(buffer: &[u8], checked: &mut usize, complete: bool) -> Result<(), Violation> {
    match simdutf8::compat::from_utf8(&buffer[*checked..]) {
        Ok(_) => *checked = buffer.len(),
        // Cut inside a character: fine until the message ends.
        Err(e) if e.error_len().is_none() && !complete => *checked += e.valid_up_to(),
        Err(_) => return Err(INVALID_TEXT),
    }
    Ok(())
}

/// UTF-8 checked piece by piece, for text handed on in parts: a character cut between
/// pieces is carried (at most three bytes) and finished by the next piece.
#[derive(Debug, Default, Clone, Copy)]
struct Utf8Stream {
    carry: [u8; 4],
    carried: u8,
}

impl Utf8Stream {
    fn push(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        if self.carried > 0 {
            let held = usize::from(self.carried);
            let width = match self.carry[0] {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - held).min(bytes.len());
            self.carry[held..held + take].copy_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let have = held + take;
            match simdutf8::compat::from_utf8(&self.carry[..have]) {
                Ok(_) => self.carried = 0,
                Err(e) if e.error_len().is_none() => {
                    self.carried = have as u8;
                    return Ok(()); // still not whole: the piece was shorter than the rest
                }
                Err(_) => return Err(INVALID_TEXT),
            }
        }
        match simdutf8::compat::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carried = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(INVALID_TEXT),
        }
    }

    /// The message ended: no character may be left unfinished.
    fn finish(&mut self) -> Result<(), Violation> {
        match std::mem::take(self).carried {
            0 => Ok(()),
            _ => Err(INVALID_TEXT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_header, MAX_HEADER};
    use std::ops::ControlFlow;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut header = [0u8; MAX_HEADER];
        let n = encode_header(fin, opcode, payload.len(), &mut header);
        header[1] |= 0x80;
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = header[..n].to_vec();
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        apply_mask(&mut body, mask, 0);
        out.extend_from_slice(&body);
        out
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    /// Feeds `wire` in pieces of `step` bytes, as reads would deliver it, to a receiver
    /// that hands messages on whole, with no budget.
    fn run(wire: &[u8], step: usize) -> (Vec<Owned>, Result<(), Violation>) {
        let mut receiver = Receiver::new(1 << 20, None, Delivery::Whole);
        let (mut events, mut pending) = (Vec::new(), Vec::new());
        for piece in wire.chunks(step.max(1)) {
            pending.extend_from_slice(piece);
            let result = receiver.feed(&mut pending, &mut usize::MAX.clone(), &mut |event| {
                events.push(owned(event));
                ControlFlow::Continue(())
            });
            match result {
                Ok(fed) => drop(pending.drain(..fed.used)),
                Err(v) => return (events, Err(v)),
            }
        }
        (events, Ok(()))
    }

    fn owned(event: Event<'_>) -> Owned {
        match event {
            Event::Message {
                text: true,
                payload,
            } => Owned::Text(String::from_utf8(payload.to_vec()).unwrap()),
            Event::Message {
                text: false,
                payload,
            } => Owned::Binary(payload.to_vec()),
            Event::Part { .. } => panic!("parts are not asked for here"),
            Event::Compressed { .. } => panic!("no inflater here"),
            Event::Ping(p) => Owned::Ping(p.to_vec()),
            Event::Pong(p) => Owned::Pong(p.to_vec()),
            Event::Close { code, reason } => Owned::Close(code, reason.into()),
        }
    }

    fn every_split(wire: &[u8]) -> (Vec<Owned>, Result<(), Violation>) {
        let whole = run(wire, wire.len());
        for step in 1..wire.len().min(40) {
            assert_eq!(run(wire, step), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn rfc6455_5_4_fragments_with_interleaved_control_frames() {
        let wire = [
            frame(false, opcode::TEXT, "Hel".as_bytes()),
            frame(true, opcode::PING, b"p"),
            frame(false, opcode::CONTINUATION, b""),
            frame(true, opcode::CONTINUATION, "lo €".as_bytes()),
            frame(true, opcode::BINARY, &[0, 255]),
            frame(true, opcode::PONG, b""),
            frame(true, opcode::CLOSE, &[0x03, 0xe8, b'o', b'k']),
            frame(true, opcode::TEXT, b"ignored after close"),
        ]
        .concat();
        let (events, result) = every_split(&wire);
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            [
                Owned::Ping(b"p".to_vec()),
                Owned::Text("Hello €".into()),
                Owned::Binary(vec![0, 255]),
                Owned::Pong(vec![]),
                Owned::Close(Some(1000), "ok".into()),
            ]
        );
    }

    #[test]
    fn rfc6455_5_2_protocol_errors_are_1002() {
        let cases: [(Vec<u8>, &str); 7] = [
            (
                [0xC1, 0x80, 0, 0, 0, 0].to_vec(),
                "reserved bits set without a negotiated extension",
            ),
            ([0x83, 0x80, 0, 0, 0, 0].to_vec(), "reserved opcode"),
            ([0x81, 0x00].to_vec(), "client frame not masked"),
            (frame(false, opcode::PING, b""), "fragmented control frame"),
            (
                frame(true, opcode::PING, &[0; 126]),
                "control frame payload over 125 bytes",
            ),
            (
                frame(true, opcode::CONTINUATION, b"x"),
                "continuation frame with no message to continue",
            ),
            (
                [
                    frame(false, opcode::TEXT, b"a"),
                    frame(true, opcode::TEXT, b"b"),
                ]
                .concat(),
                "new message before the last one ended",
            ),
        ];
        for (wire, reason) in cases {
            assert_eq!(every_split(&wire).1, Err(violation(1002, reason)));
        }
    }

    #[test]
    fn rfc6455_7_4_close_codes_and_payloads() {
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let (events, result) = every_split(&frame(true, opcode::CLOSE, &code.to_be_bytes()));
            assert_eq!(
                (events, result),
                (vec![Owned::Close(Some(code), String::new())], Ok(())),
                "{code}"
            );
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(
                every_split(&frame(true, opcode::CLOSE, &code.to_be_bytes()))
                    .1
                    .unwrap_err()
                    .code,
                1002,
                "{code}"
            );
        }
        assert_eq!(
            every_split(&frame(true, opcode::CLOSE, &[3]))
                .1
                .unwrap_err()
                .code,
            1002
        );
        assert_eq!(
            every_split(&frame(true, opcode::CLOSE, &[3, 232, 0xff]))
                .1
                .unwrap_err()
                .code,
            1007
        );
        assert_eq!(
            every_split(&frame(true, opcode::CLOSE, b"")).0,
            [Owned::Close(None, String::new())]
        );
    }

    #[test]
    fn rfc6455_8_1_invalid_utf8_fails_fast_even_mid_frame() {
        // "κόσμε" then an invalid byte, then a lot more text in the same frame: the error is
        // reported before the frame has fully arrived.
        let mut text = "κόσμε".as_bytes().to_vec();
        text.push(0xF5);
        text.extend_from_slice(&[b'a'; 1000]);
        let wire = frame(true, opcode::TEXT, &text);
        let (_, result) = run(&wire[..wire.len() - 900], 7);
        assert_eq!(
            result.unwrap_err().code,
            1007,
            "caught before the frame ended"
        );
        // Split across fragments, a character cut in two is fine; an unfinished one at the end is not.
        let euro = "€".as_bytes();
        let fine = [
            frame(false, opcode::TEXT, &euro[..1]),
            frame(true, opcode::CONTINUATION, &euro[1..]),
        ]
        .concat();
        assert_eq!(every_split(&fine).0, [Owned::Text("€".into())]);
        let unfinished = frame(true, opcode::TEXT, &euro[..2]);
        assert_eq!(every_split(&unfinished).1.unwrap_err().code, 1007);
        let bad_fragment = [
            frame(false, opcode::TEXT, b"ok"),
            frame(false, opcode::CONTINUATION, &[0xED, 0xA0, 0x80]),
        ]
        .concat();
        assert_eq!(every_split(&bad_fragment).1.unwrap_err().code, 1007);
    }

    /// A masked frame with RSV1 set (compressed, RFC 7692 §6).
    fn compressed_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = frame(fin, opcode, payload);
        out[0] |= 0x40;
        out
    }

    #[test]
    fn rfc7692_compressed_messages_inflate_whole_or_fragmented_and_keep_their_bytes() {
        use crate::deflate::{Agreement, Deflater, Inflater};
        let mut deflater = Deflater::new(Agreement::default());
        let (mut hello, mut world) = (Vec::new(), Vec::new());
        deflater.deflate("Hello €".as_bytes(), &mut hello);
        deflater.deflate(&[7u8; 5000], &mut world);
        let (first, rest) = world.split_at(world.len() / 2);
        let wire = [
            compressed_frame(true, opcode::TEXT, &hello),
            compressed_frame(false, opcode::BINARY, first),
            frame(true, opcode::PING, b""),
            frame(true, opcode::CONTINUATION, rest),
        ]
        .concat();
        for step in [wire.len(), 1, 3, 7, 64] {
            let mut receiver = Receiver::new(
                1 << 20,
                Some(Inflater::new(Agreement::default())),
                Delivery::Whole,
            );
            let (mut pending, mut messages) = (Vec::new(), Vec::new());
            for piece in wire.chunks(step) {
                pending.extend_from_slice(piece);
                let fed = receiver
                    .feed(&mut pending, &mut usize::MAX.clone(), &mut |event| {
                        if let Event::Compressed { text, deflated } = event {
                            messages.push((text, deflated.to_vec()));
                        }
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                pending.drain(..fed.used);
            }
            // Each checked whole, and handed on as its bytes came, for an echo to send back.
            assert_eq!(
                messages,
                [(true, hello.clone()), (false, world.clone())],
                "step {step}"
            );
        }
    }

    /// Regression (attacker's review): a compressed message's first few bytes held a
    /// decompressor (44 KiB) until the message ended, and counting it made the echo's
    /// budget cheap to fill. None is held before [`INFLATE_FROM`] of its bytes came.
    #[test]
    fn a_compressed_message_holds_no_decompressor_until_its_bytes_pay_for_one() {
        use crate::deflate::{Agreement, Deflater, Inflater};
        // Incompressible bytes (xorshift), so their compressed size is about their own.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let message: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut deflated = Vec::new();
        Deflater::new(Agreement::default()).deflate(&message, &mut deflated);
        let (first, rest) = deflated.split_at(16);
        let (middle, last) = rest.split_at(INFLATE_FROM);
        for delivery in [Delivery::Whole, Delivery::Parts] {
            // As every agreement is (see `deflate::negotiate`): no context takeover.
            let agreement = Agreement {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
            };
            let mut receiver = Receiver::new(1 << 20, Some(Inflater::new(agreement)), delivery);
            let (mut parts, mut whole) = (Vec::new(), None);
            let mut feed = |receiver: &mut Receiver, mut wire: Vec<u8>, parts: &mut Vec<u8>| {
                let fed = receiver
                    .feed(&mut wire, &mut usize::MAX.clone(), &mut |event| {
                        match event {
                            Event::Part { payload, .. } => parts.extend_from_slice(payload),
                            Event::Compressed { deflated, .. } => whole = Some(deflated.to_vec()),
                            _ => {}
                        }
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                assert_eq!(fed.used, wire.len(), "{delivery:?}");
            };
            feed(
                &mut receiver,
                compressed_frame(false, opcode::BINARY, first),
                &mut parts,
            );
            assert_eq!(receiver.inflating(), 0, "{delivery:?}: 16 bytes sent");
            assert_eq!(receiver.assembling(), 16, "{delivery:?}");
            feed(
                &mut receiver,
                frame(false, opcode::CONTINUATION, middle),
                &mut parts,
            );
            assert!(receiver.inflating() > 0, "{delivery:?}: paid for");
            if delivery == Delivery::Parts {
                assert!(!parts.is_empty(), "a route's service has what was inflated");
                assert_eq!(receiver.assembling(), 0, "and nothing is left to inflate");
            }
            feed(
                &mut receiver,
                frame(true, opcode::CONTINUATION, last),
                &mut parts,
            );
            assert_eq!(
                receiver.inflating(),
                0,
                "{delivery:?}: given back at the end"
            );
            match delivery {
                Delivery::Parts => assert!(parts == message, "inflated in parts, whole"),
                Delivery::Whole => assert_eq!(whole, Some(deflated.clone())),
            }
        }
    }

    #[test]
    fn rfc7692_6_rsv1_only_on_the_first_frame_of_a_negotiated_message() {
        use crate::deflate::{Agreement, Inflater};
        let negotiated = || {
            Receiver::new(
                1 << 20,
                Some(Inflater::new(Agreement::default())),
                Delivery::Whole,
            )
        };
        let cases = [
            (
                compressed_frame(true, opcode::TEXT, b"x"),
                Receiver::new(1 << 20, None, Delivery::Whole),
                "not negotiated",
            ),
            (
                [
                    frame(false, opcode::TEXT, b"a"),
                    compressed_frame(true, opcode::CONTINUATION, b"b"),
                ]
                .concat(),
                negotiated(),
                "continuation",
            ),
            (
                compressed_frame(true, opcode::PING, b""),
                negotiated(),
                "control frame",
            ),
        ];
        for (mut wire, mut receiver, what) in cases {
            assert_eq!(
                receiver
                    .feed(&mut wire, &mut 1, &mut |_| ControlFlow::Continue(()))
                    .unwrap_err()
                    .code,
                1002,
                "{what}"
            );
        }
        let mut corrupt = compressed_frame(true, opcode::BINARY, &[0xff, 0xff, 0xff]);
        assert_eq!(
            negotiated()
                .feed(&mut corrupt, &mut 1000, &mut |_| ControlFlow::Continue(()))
                .unwrap_err()
                .code,
            1007
        );
    }

    #[test]
    fn messages_over_the_limit_are_1009() {
        for delivery in [Delivery::Whole, Delivery::Parts] {
            let mut receiver = Receiver::new(10, None, delivery);
            let mut wire = [
                frame(false, opcode::BINARY, &[1; 6]),
                frame(true, opcode::CONTINUATION, &[1; 6]),
            ]
            .concat();
            let result = receiver.feed(&mut wire, &mut 0, &mut |_| ControlFlow::Continue(()));
            assert_eq!(
                result.unwrap_err(),
                violation(1009, "message larger than the limit")
            );
        }
    }

    fn deflated(message: &[u8]) -> Vec<u8> {
        use crate::deflate::{Agreement, Deflater};
        let mut packed = Vec::new();
        Deflater::new(Agreement::default()).deflate(message, &mut packed);
        packed
    }

    fn inflating(max: usize, delivery: Delivery) -> Receiver {
        use crate::deflate::Agreement;
        Receiver::new(max, Some(Inflater::new(Agreement::default())), delivery)
    }

    /// A whole compressed message is checked as it inflates though none of it is kept:
    /// text that is not UTF-8 once inflated is 1007, even split across frames and reads;
    /// and while such a message waits for its next frame it holds only its compressed
    /// bytes (a bomb's first frame: its few KiB, not the MiB it inflates to).
    #[test]
    fn rfc7692_whole_compressed_messages_are_checked_and_hold_only_what_came() {
        let mut bad = "ok ".repeat(3000).into_bytes();
        bad.extend([0xff, 0xfe]);
        let packed = deflated(&bad);
        let (first, rest) = packed.split_at(packed.len() / 2);
        let wire = [
            compressed_frame(false, opcode::TEXT, first),
            frame(true, opcode::CONTINUATION, rest),
        ]
        .concat();
        for step in [wire.len(), 7, 64] {
            let mut receiver = inflating(1 << 20, Delivery::Whole);
            let mut pending = Vec::new();
            let mut result = Ok(());
            for piece in wire.chunks(step) {
                pending.extend_from_slice(piece);
                match receiver.feed(&mut pending, &mut usize::MAX.clone(), &mut |_| {
                    ControlFlow::Continue(())
                }) {
                    Ok(fed) => drop(pending.drain(..fed.used)),
                    Err(v) => {
                        result = Err(v);
                        break;
                    }
                }
            }
            assert_eq!(result.unwrap_err().code, 1007, "step {step}");
        }

        let bomb = deflated(&vec![0u8; 8 << 20]);
        let mut wire = compressed_frame(false, opcode::BINARY, &bomb);
        let mut receiver = inflating(16 << 20, Delivery::Whole);
        let fed = receiver
            .feed(&mut wire, &mut usize::MAX.clone(), &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(fed.used, wire.len());
        assert!(
            receiver.assembling() <= bomb.len(),
            "{} held for {} sent",
            receiver.assembling(),
            bomb.len()
        );
    }

    /// A deflate bomb: a frame of about 160 KiB (our level 1 compression) that inflates to
    /// 16 MiB. No call inflates more than its budget, and the message still arrives whole.
    #[test]
    fn inflating_never_exceeds_the_budget_per_call() {
        let message = vec![0u8; 16 << 20];
        let packed = deflated(&message);
        assert!(packed.len() < 200_000, "{}", packed.len());
        let mut wire = [
            compressed_frame(true, opcode::BINARY, &packed),
            frame(true, opcode::PING, b"after"),
        ]
        .concat();
        let mut receiver = inflating(16 << 20, Delivery::Whole);
        let mut seen: Vec<Owned> = Vec::new();
        let mut input = &mut wire[..];
        let mut calls = 0;
        loop {
            calls += 1;
            let mut budget = 1 << 20;
            let fed = receiver
                .feed(input, &mut budget, &mut |event| {
                    seen.push(match event {
                        Event::Compressed { deflated, .. } => {
                            assert!(deflated == &packed[..], "the message whole, as it came");
                            Owned::Binary(Vec::new())
                        }
                        other => owned(other),
                    });
                    ControlFlow::Continue(())
                })
                .unwrap();
            input = &mut input[fed.used..];
            if !fed.holding {
                break;
            }
            assert!(
                seen.is_empty(),
                "nothing after the message is handed on first"
            );
        }
        assert_eq!(
            seen,
            [Owned::Binary(Vec::new()), Owned::Ping(b"after".to_vec())]
        );
        assert!(calls >= 16, "16 MiB at 1 MiB a call: {calls} calls");
        assert!(input.is_empty());
    }

    /// An attacker's review: a message of empty fixed-Huffman DEFLATE blocks (10 bits each,
    /// nothing inflated) cost miniz_oxide 2 µs a block, and the budget, counting only what
    /// was made, saw nothing: 1 MiB took a second in one call. Compressed bytes are taken a
    /// slice at a time now and each slice's time is charged: with the least budget, a call
    /// inflates one slice of them, and the message still arrives whole, as it came.
    #[test]
    fn compressed_bytes_that_inflate_to_nothing_are_charged_their_time() {
        // BFINAL=0, BTYPE=01, the end-of-block code: 10 bits; four of them in 5 bytes.
        let packed: Vec<u8> = [0x02, 0x08, 0x20, 0x80, 0x00].repeat((1 << 20) / 5);
        let mut wire = compressed_frame(true, opcode::BINARY, &packed);
        let mut receiver = inflating(16 << 20, Delivery::Whole);
        let mut input = &mut wire[..];
        let (mut calls, mut whole) = (0, false);
        while !whole {
            calls += 1;
            let mut budget = 1;
            let fed = receiver
                .feed(input, &mut budget, &mut |event| {
                    match event {
                        Event::Compressed { deflated, .. } => {
                            assert!(deflated == &packed[..], "the message whole, as it came");
                            whole = true;
                        }
                        _ => panic!("only the message"),
                    }
                    ControlFlow::Continue(())
                })
                .unwrap();
            input = &mut input[fed.used..];
            assert!(fed.holding || whole, "held until it is whole");
        }
        let slices = packed.len().div_ceil(INFLATE_SLICE);
        assert!(
            calls >= slices,
            "{calls} calls for {slices} slices that made nothing: a slice a call"
        );
    }

    /// What a step is charged: what it made, its input at [`INPUT_COST`], or its time at
    /// [`NANOS_PER_BYTE`], whichever is most; and whether the time decided.
    #[test]
    fn a_step_is_charged_what_it_made_its_input_or_its_time() {
        use std::time::Duration;
        let none = Duration::ZERO;
        let text = Duration::from_micros(200);
        assert_eq!(
            inflate_charge(64 * 1024, 16 * 1024, text),
            (64 * 1024, false)
        );
        let slow = Duration::from_micros(400);
        assert_eq!(inflate_charge(0, 16 * 1024, slow), (100_000, true));
        assert_eq!(
            inflate_charge(16 * 1024, 16 * 1024 + 5, none).0,
            16 * 1024,
            "stored"
        );
        assert_eq!(inflate_charge(0, 1000, none).0, 5000, "empty blocks");
        assert_eq!(inflate_charge(100, 1100, none).0, 5000);
        assert_eq!(inflate_charge(10, 1, none).0, 10);
    }

    /// (text, payload, last) of each part, and ping as (false, "ping", true).
    type Parts = Vec<(bool, Vec<u8>, bool)>;

    fn parts(
        receiver: &mut Receiver,
        wire: &mut [u8],
        stop_after_each: bool,
    ) -> (Parts, Result<(), Violation>) {
        let mut got = Vec::new();
        let mut input = wire;
        loop {
            let result = receiver.feed(input, &mut (1 << 20), &mut |event| {
                match event {
                    Event::Part {
                        text,
                        payload,
                        last,
                    } => got.push((text, payload.to_vec(), last)),
                    Event::Ping(_) => got.push((false, b"ping".to_vec(), true)),
                    _ => {}
                }
                match stop_after_each {
                    true => ControlFlow::Break(()),
                    false => ControlFlow::Continue(()),
                }
            });
            match result {
                Ok(fed) => {
                    input = &mut input[fed.used..];
                    if !fed.holding {
                        return (got, Ok(()));
                    }
                }
                Err(v) => return (got, Err(v)),
            }
        }
    }

    /// A route takes messages in parts: nothing is assembled, a compressed one comes in
    /// pieces of at most PART_MAX, and the caller can stop after any piece.
    #[test]
    fn parts_come_in_order_and_a_stop_holds_the_rest() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let euro = "€".as_bytes();
        let wire = [
            frame(false, opcode::TEXT, &euro[..1]),
            frame(true, opcode::PING, b""),
            frame(true, opcode::CONTINUATION, &euro[1..]),
            compressed_frame(true, opcode::BINARY, &deflated(&big)),
            frame(true, opcode::TEXT, b""),
        ]
        .concat();
        for stop in [false, true] {
            let (got, result) = parts(
                &mut inflating(1 << 20, Delivery::Parts),
                &mut wire.clone(),
                stop,
            );
            assert_eq!(result, Ok(()));
            assert_eq!(got[0], (true, euro[..1].to_vec(), false), "stop {stop}");
            assert_eq!(got[1], (false, b"ping".to_vec(), true));
            assert_eq!(
                got[2],
                (true, euro[1..].to_vec(), true),
                "the end of the message"
            );
            let binary: Vec<&(bool, Vec<u8>, bool)> = got[3..got.len() - 1].iter().collect();
            assert!(binary
                .iter()
                .all(|(text, p, _)| !text && p.len() <= PART_MAX));
            assert!(binary.len() >= 300_000 / PART_MAX, "in pieces");
            let joined: Vec<u8> = binary.iter().flat_map(|(_, p, _)| p.clone()).collect();
            assert_eq!(joined, big);
            assert!(binary.last().unwrap().2, "last");
            assert_eq!(
                got.last().unwrap(),
                &(true, vec![], true),
                "an empty message"
            );
        }
        // A character cut between parts is fine; a bad one is caught in the part it is in.
        let mut bad = [
            frame(false, opcode::TEXT, b"ok"),
            frame(true, opcode::CONTINUATION, &[0xED, 0xA0, 0x80]),
        ]
        .concat();
        let (_, result) = parts(&mut inflating(1 << 20, Delivery::Parts), &mut bad, false);
        assert_eq!(result.unwrap_err().code, 1007);
        let mut unfinished = frame(true, opcode::TEXT, &euro[..2]);
        let (_, result) = parts(
            &mut Receiver::new(100, None, Delivery::Parts),
            &mut unfinished,
            false,
        );
        assert_eq!(result.unwrap_err().code, 1007);
    }

    #[test]
    fn a_bomb_past_the_limit_is_1009_before_it_is_inflated_whole() {
        let packed = deflated(&vec![0u8; 16 << 20]);
        for delivery in [Delivery::Whole, Delivery::Parts] {
            let mut receiver = inflating(1 << 20, delivery);
            let mut wire = compressed_frame(true, opcode::BINARY, &packed);
            let mut inflated = 0;
            let result = receiver.feed(&mut wire, &mut usize::MAX.clone(), &mut |event| {
                if let Event::Part { payload, .. } = event {
                    inflated += payload.len();
                }
                ControlFlow::Continue(())
            });
            assert_eq!(result.unwrap_err(), TOO_BIG_INFLATED);
            assert!(inflated <= 1 << 20, "{inflated}");
            assert!(receiver.compressed.is_none(), "given up");
        }
    }
}
