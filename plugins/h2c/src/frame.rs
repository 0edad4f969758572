//! HTTP/2 frames on the wire (RFC 9113 §4.1, §6): the 9-byte frame header read and
//! written, the payloads the relay takes apart, and writers for the frames it sends.
//!
//! ```text
//! HTTP Frame {
//!   Length (24),
//!   Type (8),
//!   Flags (8),
//!   Reserved (1),
//!   Stream Identifier (31),
//!   Frame Payload (..),
//! }
//! ```
//!
//! Pure: bytes in, values out, so every rule is tested with byte fixtures below.

/// Length of a frame header.
pub const HEAD_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value, and the largest frame the relay accepts or
/// sends (it never raises it).
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
/// The initial flow-control window of a stream and of a connection (RFC 9113 §6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;
/// The largest window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const INTERNAL_ERROR: u32 = 0x2;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// The code's name (RFC 9113 §7), for log lines; `None` for a code it does not name.
    pub fn name(code: u32) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(usize::try_from(code).ok()?).copied()
    }
}

/// Settings identifiers (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// The stream identifier, reserved bit cleared.
    pub stream: u32,
}

impl Head {
    /// Reads a frame header from the first [`HEAD_LEN`] bytes; `None` if fewer.
    pub fn parse(bytes: &[u8]) -> Option<Head> {
        let b: &[u8; HEAD_LEN] = bytes.get(..HEAD_LEN)?.try_into().ok()?;
        Some(Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Appends the header's 9 bytes.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

/// A frame that breaks the rules of its type: a connection error of this code
/// (RFC 9113 §5.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub u32);

/// Appends a whole frame.
pub fn write(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    Head {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    }
    .write(out);
    out.extend_from_slice(payload);
}

/// The payload without its padding (DATA, HEADERS, PUSH_PROMISE; RFC 9113 §6.1).
pub fn unpadded<'p>(head: &Head, payload: &'p [u8]) -> Result<&'p [u8], Malformed> {
    if !head.has(flag::PADDED) {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or(Malformed(code::FRAME_SIZE_ERROR))?;
    // "If the length of the padding is the length of the frame payload or greater, the
    // recipient MUST treat this as a connection error of type PROTOCOL_ERROR."
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|len| &rest[..len])
        .ok_or(Malformed(code::PROTOCOL_ERROR))
}

/// A HEADERS payload's field block fragment: padding and the priority fields taken off
/// (RFC 9113 §6.2).
pub fn header_fragment<'p>(head: &Head, payload: &'p [u8]) -> Result<&'p [u8], Malformed> {
    let rest = unpadded(head, payload)?;
    if head.has(flag::PRIORITY) {
        return rest.get(5..).ok_or(Malformed(code::FRAME_SIZE_ERROR));
    }
    Ok(rest)
}

/// The settings of a SETTINGS payload, in order (RFC 9113 §6.5.1).
pub fn settings(payload: &[u8]) -> Result<impl Iterator<Item = (u16, u32)> + '_, Malformed> {
    if !payload.len().is_multiple_of(6) {
        return Err(Malformed(code::FRAME_SIZE_ERROR));
    }
    Ok(payload.chunks_exact(6).map(|s| {
        (
            u16::from_be_bytes([s[0], s[1]]),
            u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
        )
    }))
}

/// A 4-byte payload as a number, the reserved bit cleared (WINDOW_UPDATE, RST_STREAM).
pub fn word(payload: &[u8], reserved_bit: bool) -> Result<u32, Malformed> {
    let b: [u8; 4] = payload
        .try_into()
        .map_err(|_| Malformed(code::FRAME_SIZE_ERROR))?;
    let value = u32::from_be_bytes(b);
    Ok(if reserved_bit {
        value & 0x7fff_ffff
    } else {
        value
    })
}

pub fn write_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    let mut payload = [0u8; 36];
    let mut len = 0;
    for &(id, value) in settings.iter().take(6) {
        payload[len..len + 2].copy_from_slice(&id.to_be_bytes());
        payload[len + 2..len + 6].copy_from_slice(&value.to_be_bytes());
        len += 6;
    }
    write(out, kind::SETTINGS, 0, 0, &payload[..len]);
}

pub fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write(
        out,
        kind::WINDOW_UPDATE,
        0,
        stream,
        &increment.to_be_bytes(),
    );
}

pub fn write_rst_stream(out: &mut Vec<u8>, stream: u32, error: u32) {
    write(out, kind::RST_STREAM, 0, stream, &error.to_be_bytes());
}

/// GOAWAY with the last stream identifier the sender may have acted on (RFC 9113 §6.8).
pub fn write_goaway(out: &mut Vec<u8>, last_stream: u32, error: u32) {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&last_stream.to_be_bytes());
    payload[4..].copy_from_slice(&error.to_be_bytes());
    write(out, kind::GOAWAY, 0, 0, &payload);
}

/// A field block as HEADERS, then CONTINUATION frames of at most `max_frame` bytes.
pub fn write_field_block(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut pieces = block.chunks(max_frame.max(1)).peekable();
    let first = pieces.next().unwrap_or(&[]);
    let end = if end_stream { flag::END_STREAM } else { 0 };
    let only = pieces.peek().is_none();
    let headers_end = if only { flag::END_HEADERS } else { 0 };
    write(out, kind::HEADERS, end | headers_end, stream, first);
    while let Some(piece) = pieces.next() {
        let last = if pieces.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        write(out, kind::CONTINUATION, last, stream, piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9113_4_1_header_round_trips_and_the_reserved_bit_is_ignored() {
        let bytes = [0x00, 0x40, 0x00, 0x01, 0x25, 0x80, 0x00, 0x00, 0x03];
        let head = Head::parse(&bytes).unwrap();
        assert_eq!(
            head,
            Head {
                len: 16_384,
                kind: kind::HEADERS,
                flags: flag::END_STREAM | flag::END_HEADERS | flag::PRIORITY,
                stream: 3,
            }
        );
        let mut out = Vec::new();
        head.write(&mut out);
        assert_eq!(out, [0x00, 0x40, 0x00, 0x01, 0x25, 0x00, 0x00, 0x00, 0x03]);
        assert_eq!(Head::parse(&bytes[..8]), None);
    }

    #[test]
    fn rfc9113_6_1_padding_is_taken_off_and_too_much_is_an_error() {
        let head = Head {
            len: 6,
            kind: kind::DATA,
            flags: flag::PADDED,
            stream: 1,
        };
        assert_eq!(
            unpadded(&head, &[2, b'a', b'b', b'c', 0, 0]),
            Ok(&b"abc"[..])
        );
        assert_eq!(unpadded(&head, &[3, b'a', 0, 0]), Ok(&b""[..]));
        assert_eq!(
            unpadded(&head, &[4, b'a', 0, 0]),
            Err(Malformed(code::PROTOCOL_ERROR))
        );
        assert_eq!(unpadded(&head, &[]), Err(Malformed(code::FRAME_SIZE_ERROR)));
        let plain = Head { flags: 0, ..head };
        assert_eq!(unpadded(&plain, b"xy"), Ok(&b"xy"[..]));
    }

    #[test]
    fn rfc9113_6_2_priority_fields_are_not_part_of_the_block() {
        let head = Head {
            len: 8,
            kind: kind::HEADERS,
            flags: flag::PRIORITY | flag::PADDED,
            stream: 1,
        };
        let payload = [1, 0, 0, 0, 0, 16, 0x82, 0];
        assert_eq!(header_fragment(&head, &payload), Ok(&[0x82][..]));
    }

    #[test]
    fn rfc9113_6_5_settings_are_six_bytes_each() {
        let payload = [0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0];
        let got: Vec<_> = settings(&payload).unwrap().collect();
        assert_eq!(got, [(3, 100), (4, 65_536)]);
        assert!(settings(&payload[..7]).is_err());
        let mut out = Vec::new();
        write_settings(&mut out, &got);
        assert_eq!(&out[..9], &[0, 0, 12, kind::SETTINGS, 0, 0, 0, 0, 0]);
        assert_eq!(&out[9..], &payload);
    }

    #[test]
    fn rfc9113_6_10_a_long_block_continues_and_only_the_last_frame_ends_it() {
        let mut out = Vec::new();
        write_field_block(&mut out, 5, &[7u8; 10], true, 4);
        let heads: Vec<Head> = [0, 13, 26]
            .iter()
            .map(|&at| Head::parse(&out[at..]).unwrap())
            .collect();
        assert_eq!(heads[0].kind, kind::HEADERS);
        assert_eq!(heads[0].flags, flag::END_STREAM);
        assert_eq!(heads[1].kind, kind::CONTINUATION);
        assert_eq!(heads[1].flags, 0);
        assert_eq!((heads[2].len, heads[2].flags), (2, flag::END_HEADERS));
        assert_eq!(out.len(), 9 * 3 + 10);
    }

    #[test]
    fn window_update_and_goaway_payloads() {
        let mut out = Vec::new();
        write_window_update(&mut out, 0, 1 << 20);
        assert_eq!(out, [0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(word(&out[9..], true), Ok(1 << 20));
        out.clear();
        write_goaway(&mut out, 7, code::ENHANCE_YOUR_CALM);
        assert_eq!(&out[9..], &[0, 0, 0, 7, 0, 0, 0, 0xb]);
        assert!(word(&[0, 0, 1], true).is_err());
    }
}
