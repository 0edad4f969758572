//! A backend connection's HPACK encoder (`switchyard_h2c::hpack::encoder`): requests of
//! the relay's making, written again with the connection's dynamic table, decode to the
//! same fields in a decoder that followed every one before them, whatever the table held
//! and evicted; a field written never indexed arrives never indexed. Each input is a run
//! of requests over a small vocabulary (so that fields repeat, fill the table and evict)
//! with values of any length, and now and then a table not usable (the backend lowered its
//! size) or let go (a quiet connection): a table out of step with the decoder is the bug
//! this looks for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_h2c::hpack::{self, encoder::Encoder, Decoder, Fields};

const NAMES: &[&[u8]] = &[
    b":authority",
    b":path",
    b"user-agent",
    b"content-type",
    b"authorization",
    b"cookie",
    b"content-length",
    b"x-a",
    b"x-b",
    b"grpc-timeout",
];

fuzz_target!(|data: &[u8]| {
    let mut encoder = Encoder::default();
    let mut decoder = Decoder::default();
    let mut fields = Fields::default();
    let mut at = 0;
    let mut next = || {
        let byte = data.get(at).copied();
        at += 1;
        byte
    };
    while let Some(head) = next() {
        // A request: up to 15 fields (none now and then, which no message is, but the
        // encoder must not break on), or 60 to 105; before it, now and then, the table let
        // go.
        let usable = head & 0xf0 != 0xf0;
        if head & 0xf0 == 0xe0 {
            encoder.forget();
        }
        let mut sent: Vec<(Vec<u8>, Vec<u8>, bool)> = Vec::new();
        let mut block = Vec::new();
        // Now and then past the 64 fields a block looks up.
        let count = match head & 0xf0 {
            0xd0 => 60 + (head & 0x0f) as usize * 3,
            _ => (head & 0x0f) as usize,
        };
        for _ in 0..count {
            let Some(field) = next() else { break };
            let name = NAMES[(field & 0x0f) as usize % NAMES.len()].to_vec();
            let len = match field >> 4 {
                0..=11 => (field >> 4) as usize, // short values, which repeat
                12 => next().unwrap_or(0) as usize * 4,
                _ => next().unwrap_or(0) as usize * 17, // past a quarter of the table
            };
            let seed = next().unwrap_or(0);
            let value: Vec<u8> = (0..len)
                .map(|i| b'a' + (seed as usize + i) as u8 % 26)
                .collect();
            let never = seed & 0x80 != 0 && seed & 0x40 != 0;
            match never {
                true => hpack::never_indexed(&mut block, &name, &value),
                false => hpack::field(&mut block, &name, &value),
            }
            sent.push((name, value, never));
        }
        let mut out = Vec::new();
        encoder.transcode(&block, &mut out, usable);
        decoder
            .decode(&out, &mut fields, 1 << 24)
            .expect("the decoder follows the encoder");
        let got: Vec<(Vec<u8>, Vec<u8>, bool)> = (fields.iter().enumerate())
            .map(|(i, (n, v))| (n.to_vec(), v.to_vec(), fields.is_never_indexed(i)))
            .collect();
        assert_eq!(got, sent, "decoded to other fields");
    }
});
