//! The h2c plugin's upgrade parsers: `HTTP2-Settings` decoding, the preamble that makes
//! the upgrade request stream 1 (decoded back, frame by frame and with an independent
//! HPACK decoder, it must be the request it was made from), and the filter that drops the
//! implicit SETTINGS ACK (in any split, exactly the bytes of the whole-buffer answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_h2c::settings;
use switchyard_h2c::upgrade::{preamble, AckFilter, Stream1, MAX_BODY, PREFACE};

fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, &[u8])> {
    let mut all = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        assert!(
            len <= 16_384,
            "a frame over the initial SETTINGS_MAX_FRAME_SIZE"
        );
        all.push((bytes[3], bytes[4], stream, &bytes[9..9 + len]));
        bytes = &bytes[9 + len..];
    }
    all
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            if let Ok(payload) = settings::decode(data) {
                assert_eq!(payload.len() % 6, 0);
                assert!(payload.len() <= 16_384);
            }
        }
        1 => {
            // method \0 target \0 (name \0 value \0)* with the body after a \xff.
            let (head, body) = match data.iter().position(|&b| b == 0xff) {
                Some(i) => (&data[..i], &data[i + 1..]),
                None => (data, &[][..]),
            };
            if body.len() > MAX_BODY {
                return;
            }
            let text = String::from_utf8_lossy(head);
            let mut parts = text.split('\0');
            let method = parts.next().unwrap_or("GET");
            let target = parts.next().unwrap_or("/");
            let rest: Vec<&str> = parts.collect();
            let headers: Vec<(&str, &[u8])> = rest
                .chunks_exact(2)
                .map(|pair| (pair[0], pair[1].as_bytes()))
                .filter(|(n, _)| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                })
                .collect();
            let request = Stream1 {
                method,
                target,
                headers: headers.clone(),
                body,
            };
            let out = preamble(&[], &request);
            assert!(out.starts_with(PREFACE));
            let frames = frames(&out[PREFACE.len()..]);
            assert_eq!((frames[0].0, frames[0].3.len()), (0x4, 0));
            let mut block = Vec::new();
            let mut data = Vec::new();
            let mut end_headers = false;
            for (kind, flags, stream, payload) in &frames[1..] {
                assert_eq!(*stream, 1);
                match kind {
                    0x1 | 0x9 => {
                        assert!(!end_headers);
                        block.extend_from_slice(payload);
                        end_headers = flags & 0x4 != 0;
                    }
                    0x0 => data.extend_from_slice(payload),
                    other => panic!("frame type {other}"),
                }
            }
            assert!(end_headers);
            assert_eq!(data, body);
            let decoded = hpack::Decoder::new().decode(&block).expect("valid HPACK");
            assert_eq!(
                decoded[0],
                (b":method".to_vec(), method.as_bytes().to_vec())
            );
            assert_eq!(decoded[3], (b":path".to_vec(), target.as_bytes().to_vec()));
            // Every other field is one the request had, lower-cased, in order; but for the
            // connection's own and those its Connection header names (RFC 9110 §7.6.1: a list
            // with optional white space, spaces and tabs, around its elements).
            let named: Vec<Vec<u8>> = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, v)| v.split(|&b| b == b','))
                .map(|n| protocol_api::fields::trim_ows(n).to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect();
            let mut expected = headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase().into_bytes(), v.to_vec()))
                .filter(|(n, v)| {
                    !matches!(
                        n.as_slice(),
                        b"connection"
                            | b"upgrade"
                            | b"http2-settings"
                            | b"keep-alive"
                            | b"proxy-connection"
                            | b"transfer-encoding"
                            | b"host"
                    ) && (n.as_slice() != b"te" || v.eq_ignore_ascii_case(b"trailers"))
                        && !named.contains(n)
                });
            for field in &decoded[4..] {
                assert_eq!(Some(field), expected.next().as_ref());
            }
            assert!(expected.next().is_none());
        }
        _ => {
            // Server output in arbitrary pieces: the first byte picks the piece size.
            let Some((&size, output)) = data.split_first() else {
                return;
            };
            let mut whole = AckFilter::default();
            let mut expected = Vec::new();
            whole.filter(output, &mut expected);
            let mut pieces = AckFilter::default();
            let mut got = Vec::new();
            for piece in output.chunks(usize::from(size).max(1)) {
                pieces.filter(piece, &mut got);
            }
            assert_eq!(got, expected);
            // Missing: at most the one ACK (9 bytes) and a frame header still incomplete.
            assert!(output.len() - expected.len() <= 9 + 8);
        }
    }
});
