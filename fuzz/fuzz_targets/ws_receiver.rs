//! The WebSocket receiver several ways: arbitrary bytes fed whole or in pieces, with any
//! budget and stopped after any event, must give the same events and the same verdict;
//! handed on in parts, messages must join to what the whole delivery gives; and frames
//! built from the input (masked, fragmented) must come back as the messages they carry.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::ops::ControlFlow;
use switchyard_websocket::frame::{encode_header, MAX_HEADER};
use switchyard_websocket::receiver::{Delivery, Event, Receiver};

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Message(bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Violation(u16),
}

/// How a run feeds the receiver: pieces of `step` bytes, `budget` bytes inflated per call,
/// and whether the callback stops after every event.
#[derive(Clone, Copy)]
struct Run {
    step: usize,
    budget: usize,
    stop: bool,
    delivery: Delivery,
}

fn feed(input: &[u8], run: Run) -> Vec<Seen> {
    let mut receiver = Receiver::new(1 << 16, None, run.delivery);
    let (mut seen, mut buffered) = (Vec::new(), Vec::new());
    // Parts of a message in progress, joined (so that parts and whole compare).
    let mut joined: Vec<u8> = Vec::new();
    for piece in input.chunks(run.step.max(1)) {
        buffered.extend_from_slice(piece);
        loop {
            let mut budget = run.budget;
            let result = receiver.feed(&mut buffered, &mut budget, &mut |event| {
                match event {
                    Event::Message { text, payload } => {
                        seen.push(Seen::Message(text, payload.to_vec()))
                    }
                    Event::Compressed { .. } => unreachable!("no inflater: nothing compressed"),
                    Event::Part {
                        text,
                        payload,
                        last,
                    } => {
                        joined.extend_from_slice(payload);
                        if last {
                            seen.push(Seen::Message(text, std::mem::take(&mut joined)));
                        }
                    }
                    Event::Ping(p) => seen.push(Seen::Ping(p.to_vec())),
                    Event::Pong(p) => seen.push(Seen::Pong(p.to_vec())),
                    Event::Close { code, reason } => {
                        seen.push(Seen::Close(code, reason.to_string()))
                    }
                }
                match run.stop {
                    true => ControlFlow::Break(()),
                    false => ControlFlow::Continue(()),
                }
            });
            match result {
                Ok(fed) => {
                    buffered.drain(..fed.used);
                    if !fed.holding {
                        break;
                    }
                }
                Err(violation) => {
                    seen.push(Seen::Violation(violation.code));
                    return seen;
                }
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
    // Masked byte by byte as RFC 6455 §5.3 defines it, not with the code under test.
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fuzz_target!(|data: &[u8]| {
    let [step, pieces, input @ ..] = data else {
        return;
    };
    // Arbitrary bytes: the same verdict whole and in pieces, stopped after every event or
    // not, handed on whole or in parts. (A text message is checked as it arrives, so in
    // pieces an invalid one may be refused before it is complete; what was seen before the
    // verdict is the same.)
    let whole = feed(
        input,
        Run {
            step: input.len(),
            budget: usize::MAX,
            stop: false,
            delivery: Delivery::Whole,
        },
    );
    let split = feed(
        input,
        Run {
            step: usize::from(*step % 23) + 1,
            budget: usize::from(*pieces) + 1,
            stop: *step & 0x80 != 0,
            delivery: Delivery::Whole,
        },
    );
    assert_eq!(whole, split, "whole vs in pieces of {}", step % 23 + 1);
    let parts = feed(
        input,
        Run {
            step: usize::from(*step % 17) + 1,
            budget: usize::from(*pieces) + 1,
            stop: *pieces & 0x80 != 0,
            delivery: Delivery::Parts,
        },
    );
    assert_eq!(whole, parts, "whole vs parts");

    // A binary message cut into fragments, with a ping between: it comes back whole.
    let parts = usize::from(*pieces % 5) + 1;
    let mask = [step.wrapping_mul(7), 3, *pieces, 0x5a];
    let chunk = input.len().div_ceil(parts).max(1);
    let mut wire = Vec::new();
    let fragments: Vec<&[u8]> = if input.is_empty() {
        vec![&[][..]]
    } else {
        input.chunks(chunk).collect()
    };
    for (i, fragment) in fragments.iter().enumerate() {
        let opcode = if i == 0 { 0x2 } else { 0x0 };
        wire.extend(frame(i + 1 == fragments.len(), opcode, fragment, mask));
        if i == 0 {
            wire.extend(frame(true, 0x9, b"ping", mask));
        }
    }
    let seen = feed(
        &wire,
        Run {
            step: usize::from(*step % 11) + 1,
            budget: 1,
            stop: *step & 1 == 0,
            delivery: Delivery::Whole,
        },
    );
    let (ping, message) = (
        Seen::Ping(b"ping".to_vec()),
        Seen::Message(false, input.to_vec()),
    );
    if fragments.len() == 1 {
        assert_eq!(
            seen,
            [message, ping],
            "a one-frame message comes before the ping"
        );
    } else {
        assert_eq!(
            seen,
            [ping, message],
            "the ping between fragments comes first"
        );
    }
});
