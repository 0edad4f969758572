//! The WebSocket receiver two ways: arbitrary bytes fed whole or in pieces must give the
//! same events and the same verdict; and frames built from the input (masked, fragmented)
//! must come back as the messages they carry.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard_websocket::frame::{apply_mask, encode_header, MAX_HEADER};
use switchyard_websocket::receiver::{Event, Receiver};

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Message(bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Violation(u16),
}

fn feed(input: &[u8], step: usize) -> Vec<Seen> {
    let mut receiver = Receiver::new(1 << 16, None);
    let (mut seen, mut buffered) = (Vec::new(), Vec::new());
    for piece in input.chunks(step.max(1)) {
        buffered.extend_from_slice(piece);
        let result = receiver.feed(&mut buffered, &mut |event| {
            seen.push(match event {
                Event::Message { text, payload } => Seen::Message(text, payload.to_vec()),
                Event::Ping(p) => Seen::Ping(p.to_vec()),
                Event::Pong(p) => Seen::Pong(p.to_vec()),
                Event::Close { code, reason } => Seen::Close(code, reason.to_string()),
            })
        });
        match result {
            Ok(used) => drop(buffered.drain(..used)),
            Err(violation) => {
                seen.push(Seen::Violation(violation.code));
                return seen;
            }
        }
        if receiver.is_closed() {
            break;
        }
    }
    seen
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER];
    let n = encode_header(fin, opcode, payload.len(), &mut header);
    header[1] |= 0x80;
    let mut out = header[..n].to_vec();
    out.extend_from_slice(&mask);
    let mut masked = payload.to_vec();
    apply_mask(&mut masked, mask, 0);
    out.extend_from_slice(&masked);
    out
}

fuzz_target!(|data: &[u8]| {
    let [step, pieces, input @ ..] = data else {
        return;
    };
    // Arbitrary bytes: the same verdict whole and in pieces. (A text message is checked as
    // it arrives, so in pieces an invalid one may be refused before it is complete; what
    // was seen before the verdict is the same.)
    let whole = feed(input, input.len());
    let split = feed(input, usize::from(*step % 23) + 1);
    assert_eq!(whole, split, "whole vs in pieces of {}", step % 23 + 1);

    // A binary message cut into fragments, with a ping between: it comes back whole.
    let parts = usize::from(*pieces % 5) + 1;
    let mask = [step.wrapping_mul(7), 3, *pieces, 0x5a];
    let chunk = input.len().div_ceil(parts).max(1);
    let mut wire = Vec::new();
    let fragments: Vec<&[u8]> = if input.is_empty() { vec![&[][..]] } else { input.chunks(chunk).collect() };
    for (i, fragment) in fragments.iter().enumerate() {
        let opcode = if i == 0 { 0x2 } else { 0x0 };
        wire.extend(frame(i + 1 == fragments.len(), opcode, fragment, mask));
        if i == 0 {
            wire.extend(frame(true, 0x9, b"ping", mask));
        }
    }
    let seen = feed(&wire, usize::from(*step % 11) + 1);
    let (ping, message) = (Seen::Ping(b"ping".to_vec()), Seen::Message(false, input.to_vec()));
    if fragments.len() == 1 {
        assert_eq!(seen, [message, ping], "a one-frame message comes before the ping");
    } else {
        assert_eq!(seen, [ping, message], "the ping between fragments comes first");
    }
});
