//! The receiving half of RFC 6455, pure: bytes in, events out, every rule of §5 checked.
//!
//! [`Receiver::feed`] consumes what arrived (unmasking payload in place), hands complete
//! messages and control frames to a callback, and keeps only a message in assembly. It
//! reports a [`Violation`] with the close code the RFC names as soon as the bytes that break
//! a rule are seen: invalid UTF-8 in text is caught at its first bad byte, even inside a
//! frame that has not fully arrived (§8.1, fail fast).
//!
//! With permessage-deflate agreed (RFC 7692), RSV1 on a message's first frame marks it
//! compressed; such a message is inflated whole when it ends, and its text checked then.

use crate::deflate::{InflateError, Inflater};
use crate::frame::{apply_mask, opcode, parse_header, Header, MAX_CONTROL_PAYLOAD};

/// Close codes this module sends (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    /// A route's service failed (§7.4.1: "an unexpected condition").
    pub const INTERNAL_ERROR: u16 = 1011;

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

/// What the peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole data message, reassembled; text is valid UTF-8.
    Message {
        text: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The peer started or answered the closing handshake; nothing after it is read.
    Close {
        code: Option<u16>,
        reason: &'a str,
    },
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
    state: State,
    /// The opcode (text or binary) of a data message in progress.
    message_opcode: Option<u8>,
    message: Vec<u8>,
    /// Bytes of `message` known to be whole, valid UTF-8 characters.
    utf8_checked: usize,
    control: Vec<u8>,
    closed: bool,
    /// permessage-deflate, when negotiated (RFC 7692).
    inflater: Option<Inflater>,
    /// The message in progress had RSV1 set: it is compressed.
    message_compressed: bool,
    /// A compressed message, inflated.
    inflated: Vec<u8>,
}

/// RSV1: "this message is compressed" under permessage-deflate (RFC 7692 §6).
const RSV1: u8 = 0b100;

/// Messages larger than this give their buffer back once delivered.
const KEEP_CAPACITY: usize = 64 * 1024;

impl Receiver {
    /// A receiver for messages up to `max_message` bytes (inflated size too), inflating
    /// compressed ones with `inflater` when permessage-deflate was agreed.
    pub fn new(max_message: usize, inflater: Option<Inflater>) -> Receiver {
        Receiver {
            inflater,
            message_compressed: false,
            inflated: Vec::new(),
            max_message,
            state: State::Header,
            message_opcode: None,
            message: Vec::new(),
            utf8_checked: 0,
            control: Vec::new(),
            closed: false,
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

    /// Consumes frames from `input`, calling `on_event` for each event; returns how many
    /// bytes were used. Unused bytes (an incomplete header) must be passed again, with more
    /// after them.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<usize, Violation> {
        let mut at = 0;
        while !self.closed {
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
                    if available >= header.len
                        && (opcode::is_control(header.opcode) || (header.fin && starts_message))
                    {
                        // The whole frame is here and stands alone: no copy.
                        let payload = &mut input[at..at + header.len as usize];
                        apply_mask(payload, mask, 0);
                        at += payload.len();
                        if starts_message && header.rsv & RSV1 != 0 {
                            self.deliver_compressed(
                                header.opcode == opcode::TEXT,
                                Some(payload),
                                on_event,
                            )?;
                        } else if starts_message {
                            let text = header.opcode == opcode::TEXT;
                            if text && simdutf8::basic::from_utf8(payload).is_err() {
                                return Err(violation(
                                    close_code::INVALID_PAYLOAD,
                                    "text message is not valid UTF-8",
                                ));
                            }
                            on_event(Event::Message { text, payload });
                        } else {
                            self.control_frame(header.opcode, payload, on_event)?;
                        }
                        continue;
                    }
                    if starts_message {
                        self.message_opcode = Some(header.opcode);
                        self.message_compressed = header.rsv & RSV1 != 0;
                        self.utf8_checked = 0;
                    }
                    self.control.clear();
                    self.state = State::Payload {
                        opcode: header.opcode,
                        fin: header.fin,
                        mask,
                        remaining: header.len,
                        offset: 0,
                    };
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
                    if opcode::is_control(frame_opcode) {
                        self.control.extend_from_slice(chunk);
                    } else {
                        self.message.extend_from_slice(chunk);
                        // Compressed text is checked once inflated.
                        if self.message_opcode == Some(opcode::TEXT) && !self.message_compressed {
                            self.check_text(false)?;
                        }
                    }
                    if remaining > 0 {
                        self.state = State::Payload {
                            opcode: frame_opcode,
                            fin,
                            mask,
                            remaining,
                            offset: offset + take,
                        };
                        break;
                    }
                    self.state = State::Header;
                    if opcode::is_control(frame_opcode) {
                        let control = std::mem::take(&mut self.control);
                        let result = self.control_frame(frame_opcode, &control, on_event);
                        self.control = control;
                        result?;
                    } else if fin {
                        self.finish_message(on_event)?;
                    }
                }
            }
        }
        Ok(at)
    }

    /// The rules a header must meet (§5.2–§5.5); returns the masking key.
    fn check(&self, header: &Header) -> Result<[u8; 4], Violation> {
        use close_code::{PROTOCOL_ERROR, TOO_BIG};
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
        match (header.opcode, self.message_opcode) {
            (opcode::CONTINUATION, None) => Err(violation(
                PROTOCOL_ERROR,
                "continuation frame with no message to continue",
            )),
            (opcode::TEXT | opcode::BINARY, Some(_)) => Err(violation(
                PROTOCOL_ERROR,
                "new message before the last one ended",
            )),
            _ if self.message.len() as u64 + header.len > self.max_message as u64 => {
                Err(violation(TOO_BIG, "message larger than the limit"))
            }
            _ => Ok(mask),
        }
    }

    /// Checks the text received so far; `complete` when the message has ended.
    fn check_text(&mut self, complete: bool) -> Result<(), Violation> {
        const INVALID: Violation = violation(
            close_code::INVALID_PAYLOAD,
            "text message is not valid UTF-8",
        );
        match simdutf8::compat::from_utf8(&self.message[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = self.message.len(),
            // Cut inside a character: fine until the message ends.
            Err(e) if e.error_len().is_none() && !complete => self.utf8_checked += e.valid_up_to(),
            Err(_) => return Err(INVALID),
        }
        Ok(())
    }

    /// Inflates a compressed message (`single`, a whole one-frame message, or else the one
    /// assembled in `self.message`), checks it, and hands it on.
    fn deliver_compressed(
        &mut self,
        text: bool,
        single: Option<&[u8]>,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Violation> {
        let compressed = single.unwrap_or(&self.message);
        let inflater = self
            .inflater
            .as_mut()
            .expect("RSV1 is accepted only with an inflater");
        match inflater.inflate(compressed, &mut self.inflated, self.max_message) {
            Ok(()) => {}
            Err(InflateError::TooBig) => {
                return Err(violation(
                    close_code::TOO_BIG,
                    "message larger than the limit once inflated",
                ))
            }
            Err(InflateError::Corrupt) => {
                return Err(violation(
                    close_code::INVALID_PAYLOAD,
                    "compressed message is not valid DEFLATE data",
                ))
            }
        }
        if text && simdutf8::basic::from_utf8(&self.inflated).is_err() {
            return Err(violation(
                close_code::INVALID_PAYLOAD,
                "text message is not valid UTF-8",
            ));
        }
        on_event(Event::Message {
            text,
            payload: &self.inflated,
        });
        if self.inflated.capacity() > KEEP_CAPACITY {
            self.inflated = Vec::new();
        }
        Ok(())
    }

    fn finish_message(&mut self, on_event: &mut dyn FnMut(Event<'_>)) -> Result<(), Violation> {
        let text = self.message_opcode == Some(opcode::TEXT);
        if self.message_compressed {
            self.deliver_compressed(text, None, on_event)?;
        } else {
            if text {
                self.check_text(true)?;
            }
            on_event(Event::Message {
                text,
                payload: &self.message,
            });
        }
        self.message_compressed = false;
        self.message_opcode = None;
        self.utf8_checked = 0;
        if self.message.capacity() > KEEP_CAPACITY {
            self.message = Vec::new();
        } else {
            self.message.clear();
        }
        Ok(())
    }

    fn control_frame(
        &mut self,
        frame_opcode: u8,
        payload: &[u8],
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Violation> {
        match frame_opcode {
            opcode::PING => on_event(Event::Ping(payload)),
            opcode::PONG => on_event(Event::Pong(payload)),
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
                on_event(Event::Close { code, reason });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_header, MAX_HEADER};

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

    /// Feeds `wire` in pieces of `step` bytes, as reads would deliver it.
    fn run(wire: &[u8], step: usize) -> (Vec<Owned>, Result<(), Violation>) {
        let mut receiver = Receiver::new(1 << 20, None);
        let (mut events, mut pending) = (Vec::new(), Vec::new());
        for piece in wire.chunks(step.max(1)) {
            pending.extend_from_slice(piece);
            let result = receiver.feed(&mut pending, &mut |event| {
                events.push(match event {
                    Event::Message {
                        text: true,
                        payload,
                    } => Owned::Text(String::from_utf8(payload.to_vec()).unwrap()),
                    Event::Message {
                        text: false,
                        payload,
                    } => Owned::Binary(payload.to_vec()),
                    Event::Ping(p) => Owned::Ping(p.to_vec()),
                    Event::Pong(p) => Owned::Pong(p.to_vec()),
                    Event::Close { code, reason } => Owned::Close(code, reason.into()),
                })
            });
            match result {
                Ok(used) => drop(pending.drain(..used)),
                Err(v) => return (events, Err(v)),
            }
        }
        (events, Ok(()))
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
    fn rfc7692_compressed_messages_inflate_whole_or_fragmented() {
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
            let mut receiver = Receiver::new(1 << 20, Some(Inflater::new(Agreement::default())));
            let (mut pending, mut messages) = (Vec::new(), Vec::new());
            for piece in wire.chunks(step) {
                pending.extend_from_slice(piece);
                let used = receiver
                    .feed(&mut pending, &mut |event| {
                        if let Event::Message { text, payload } = event {
                            messages.push((text, payload.to_vec()));
                        }
                    })
                    .unwrap();
                pending.drain(..used);
            }
            assert_eq!(
                messages,
                [
                    (true, "Hello €".as_bytes().to_vec()),
                    (false, vec![7u8; 5000])
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn rfc7692_6_rsv1_only_on_the_first_frame_of_a_negotiated_message() {
        use crate::deflate::{Agreement, Inflater};
        let negotiated = || Receiver::new(1 << 20, Some(Inflater::new(Agreement::default())));
        let cases = [
            (
                compressed_frame(true, opcode::TEXT, b"x"),
                Receiver::new(1 << 20, None),
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
                receiver.feed(&mut wire, &mut |_| {}).unwrap_err().code,
                1002,
                "{what}"
            );
        }
        let mut corrupt = compressed_frame(true, opcode::BINARY, &[0xff, 0xff, 0xff]);
        assert_eq!(
            negotiated()
                .feed(&mut corrupt, &mut |_| {})
                .unwrap_err()
                .code,
            1007
        );
    }

    #[test]
    fn messages_over_the_limit_are_1009() {
        let mut receiver = Receiver::new(10, None);
        let mut wire = [
            frame(false, opcode::BINARY, &[1; 6]),
            frame(true, opcode::CONTINUATION, &[1; 6]),
        ]
        .concat();
        let result = receiver.feed(&mut wire, &mut |_| {});
        assert_eq!(
            result.unwrap_err(),
            violation(1009, "message larger than the limit")
        );
    }
}
