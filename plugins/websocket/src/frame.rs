//! Base framing (RFC 6455 §5.2), pure: frame headers as bytes and back, and masking
//! ([`apply_mask`], in `masking`).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```

pub use crate::masking::apply_mask;

/// Opcodes (RFC 6455 §5.2, §11.8).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;

    /// Close, ping and pong (§5.5): at most 125 bytes, never fragmented.
    pub fn is_control(opcode: u8) -> bool {
        opcode & 0x8 != 0
    }

    pub fn is_known(opcode: u8) -> bool {
        matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG)
    }
}

/// RSV1 in a frame's first byte: a compressed message under permessage-deflate (RFC 7692).
/// Or it into the `opcode` given to [`encode_header`] or [`write_frame`].
pub const RSV1_COMPRESSED: u8 = 0x40;

/// Largest header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER: usize = 14;
/// Largest control frame payload (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame header as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1..3 as the low three bits; non-zero only with a negotiated extension.
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

/// A header that cannot be a frame at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthTooLarge;

/// Parses the header at the start of `bytes`: `Ok(None)` until it is all there, then the
/// header and its size. Only what makes the bytes unparseable is an error here (a 64-bit
/// length with the top bit set, §5.2); the protocol rules are the receiver's.
pub fn parse_header(bytes: &[u8]) -> Result<Option<(Header, usize)>, LengthTooLarge> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    let masked = second & 0x80 != 0;
    let (len, mut at) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().unwrap()), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len >> 63 != 0 {
        return Err(LengthTooLarge);
    }
    let mask = if masked {
        let Some(key) = bytes.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some(key.try_into().unwrap())
    } else {
        None
    };
    let header = Header {
        fin: first & 0x80 != 0,
        rsv: (first >> 4) & 0x7,
        opcode: first & 0x0F,
        mask,
        len,
    };
    Ok(Some((header, at)))
}

/// Writes an unmasked header (servers never mask, §5.1) into `out`; returns its length.
pub fn encode_header(fin: bool, opcode: u8, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Appends a whole unfragmented, unmasked frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let mut header = [0u8; MAX_HEADER];
    let n = encode_header(true, opcode, payload.len(), &mut header);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(bytes: &[u8]) -> Vec<u8> {
        let (header, at) = parse_header(bytes).unwrap().unwrap();
        let mut payload = bytes[at..].to_vec();
        assert_eq!(payload.len() as u64, header.len);
        if let Some(mask) = header.mask {
            apply_mask(&mut payload, mask, 0);
        }
        payload
    }

    /// The examples of RFC 6455 §5.7, byte for byte.
    #[test]
    fn rfc6455_5_7_examples() {
        let single_unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let single_masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(unmasked(&single_unmasked), b"Hello");
        assert_eq!(unmasked(&single_masked), b"Hello");
        let (header, _) = parse_header(&single_masked).unwrap().unwrap();
        assert_eq!(
            header,
            Header {
                fin: true,
                rsv: 0,
                opcode: opcode::TEXT,
                mask: Some([0x37, 0xfa, 0x21, 0x3d]),
                len: 5
            }
        );

        let first_fragment = [0x01, 0x03, 0x48, 0x65, 0x6c];
        let last_fragment = [0x80, 0x02, 0x6c, 0x6f];
        let (first, _) = parse_header(&first_fragment).unwrap().unwrap();
        let (last, _) = parse_header(&last_fragment).unwrap().unwrap();
        assert_eq!(
            (first.fin, first.opcode, last.fin, last.opcode),
            (false, opcode::TEXT, true, opcode::CONTINUATION)
        );
        assert_eq!(
            [unmasked(&first_fragment), unmasked(&last_fragment)].concat(),
            b"Hello"
        );

        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(parse_header(&ping).unwrap().unwrap().0.opcode, opcode::PING);
        assert_eq!(unmasked(&pong), b"Hello");

        // 256 bytes binary in a single unmasked frame: 0x82 0x7E 0x0100
        let mut out = Vec::new();
        write_frame(&mut out, opcode::BINARY, &[7u8; 256]);
        assert_eq!(out[..4], [0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(unmasked(&out), vec![7u8; 256]);
        // 64 KiB binary: 0x82 0x7F 0x0000000000010000
        let mut out = Vec::new();
        write_frame(&mut out, opcode::BINARY, &vec![1u8; 65536]);
        assert_eq!(out[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(unmasked(&out).len(), 65536);
        // And the RFC's own unmasked "Hello" round-trips through the encoder.
        let mut out = Vec::new();
        write_frame(&mut out, opcode::TEXT, b"Hello");
        assert_eq!(out, single_unmasked);
    }

    #[test]
    fn headers_are_partial_until_complete() {
        let frame = [0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4];
        for cut in 0..frame.len() {
            assert_eq!(parse_header(&frame[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(parse_header(&frame).unwrap().unwrap().1, 8);
        assert_eq!(
            parse_header(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(LengthTooLarge)
        );
    }

    #[test]
    fn masking_in_pieces_matches_masking_at_once() {
        let mask = [1, 2, 3, 250];
        let original: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, mask, 0);
        for split in [1, 3, 5, 8, 13, 999] {
            let mut pieces = original.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(pieces, whole, "split {split}");
        }
        apply_mask(&mut whole, mask, 0);
        assert_eq!(whole, original);
    }
}
