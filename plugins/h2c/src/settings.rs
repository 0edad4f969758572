//! The `HTTP2-Settings` header of an upgrade request (RFC 9113 §3.2.1 / RFC 7540 §3.2.1):
//! the client's SETTINGS payload, base64url-encoded, which becomes its initial settings on
//! the upgraded connection.
//!
//! ```text
//! HTTP2-Settings    = token68
//! ```
//! "The content of the HTTP2-Settings header field is the payload of a SETTINGS frame
//! (Section 6.5), encoded as a base64url string (that is, the URL- and filename-safe Base64
//! encoding described in Section 5 of [RFC4648], with any trailing '=' characters omitted)."

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

/// base64url; trailing `=` omitted as the RFC says, tolerated when a client sends them.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The largest payload that fits one SETTINGS frame before the server has said anything
/// (SETTINGS_MAX_FRAME_SIZE starts at 16,384; RFC 9113 §6.5.2).
const MAX_PAYLOAD: usize = 16_384;

/// Why an `HTTP2-Settings` value is refused (the upgrade is then declined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not base64url.
    Encoding,
    /// Not a whole number of 6-byte settings, or longer than one frame.
    Length,
    /// A setting's value is out of its range (RFC 9113 §6.5.2).
    Value(u16),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Encoding => write!(f, "HTTP2-Settings is not base64url"),
            Invalid::Length => write!(f, "HTTP2-Settings is not a SETTINGS payload"),
            Invalid::Value(id) => write!(f, "HTTP2-Settings has setting {id:#x} out of range"),
        }
    }
}

const ENABLE_PUSH: u16 = 0x2;
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_FRAME_SIZE: u16 = 0x5;

/// Decodes and checks an `HTTP2-Settings` value; returns the SETTINGS payload.
pub fn decode(value: &[u8]) -> Result<Vec<u8>, Invalid> {
    let payload = BASE64URL
        .decode(value.trim_ascii())
        .map_err(|_| Invalid::Encoding)?;
    if payload.len() % 6 != 0 || payload.len() > MAX_PAYLOAD {
        return Err(Invalid::Length);
    }
    for setting in payload.chunks_exact(6) {
        let id = u16::from_be_bytes([setting[0], setting[1]]);
        let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
        let valid = match id {
            ENABLE_PUSH => value <= 1,
            INITIAL_WINDOW_SIZE => value <= 0x7fff_ffff,
            MAX_FRAME_SIZE => (16_384..=16_777_215).contains(&value),
            _ => true, // unknown settings are ignored (§6.5.2)
        };
        if !valid {
            return Err(Invalid::Value(id));
        }
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_curl_and_nghttp_send() {
        // curl 7.88's value: MAX_CONCURRENT_STREAMS 100, INITIAL_WINDOW_SIZE 33554432,
        // ENABLE_PUSH 0.
        let payload = decode(b"AAMAAABkAAQCAAAAAAIAAAAA").unwrap();
        assert_eq!(
            payload,
            [0, 3, 0, 0, 0, 100, 0, 4, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0]
        );
        // nghttp's: MAX_CONCURRENT_STREAMS 100, INITIAL_WINDOW_SIZE 65535 (`_` is base64url's).
        assert_eq!(
            decode(b"AAMAAABkAAQAAP__").unwrap(),
            [0, 3, 0, 0, 0, 100, 0, 4, 0, 0, 0xff, 0xff]
        );
        // An empty payload is valid: no setting changed.
        assert_eq!(decode(b"").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn refuses_what_is_not_a_settings_payload() {
        assert_eq!(decode(b"AAMA*AABk"), Err(Invalid::Encoding));
        assert_eq!(decode(b"AAMAAABkAA+/"), Err(Invalid::Encoding)); // base64, not base64url
        assert_eq!(decode(b"AAMAAA"), Err(Invalid::Length)); // 4 bytes
        let long = BASE64URL.encode(vec![0u8; MAX_PAYLOAD + 6]);
        assert_eq!(decode(long.as_bytes()), Err(Invalid::Length));
    }

    #[test]
    fn rfc9113_6_5_2_values_out_of_range() {
        let one = |id: u16, value: u32| {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&value.to_be_bytes());
            decode(BASE64URL.encode(p).as_bytes())
        };
        assert_eq!(one(ENABLE_PUSH, 2), Err(Invalid::Value(2)));
        assert_eq!(one(INITIAL_WINDOW_SIZE, 1 << 31), Err(Invalid::Value(4)));
        assert_eq!(one(MAX_FRAME_SIZE, 16_383), Err(Invalid::Value(5)));
        assert_eq!(one(MAX_FRAME_SIZE, 1 << 24), Err(Invalid::Value(5)));
        assert!(one(MAX_FRAME_SIZE, 16_384).is_ok());
        assert!(one(0x99, u32::MAX).is_ok()); // unknown: ignored
    }
}
