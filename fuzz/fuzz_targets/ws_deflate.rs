//! permessage-deflate: what we compress inflates to what it was, whole or a few bytes at a
//! time; arbitrary input to the inflater is refused or inflated within the limit, never
//! more, and never more per step than asked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard_websocket::deflate::{Agreement, Deflater, Inflater};

fuzz_target!(|data: &[u8]| {
    let agreement = Agreement {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
    };
    let (mut deflater, mut inflater) = (Deflater::new(agreement), Inflater::new(agreement));
    let (mut packed, mut unpacked) = (Vec::new(), Vec::new());
    deflater.deflate(data, &mut packed);
    inflater
        .inflate(&packed, &mut unpacked, data.len() + 1)
        .expect("our own compression inflates");
    assert_eq!(unpacked, data);

    // A few bytes of output per step, as a budget per call gives them.
    let step = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
    let mut pieces = Vec::new();
    for input in [
        &packed[..],
        &switchyard_websocket::deflate::MESSAGE_TAIL[..],
    ] {
        let mut used = 0;
        loop {
            let before = pieces.len();
            let (took, full) = inflater
                .inflate_some(&input[used..], &mut pieces, step)
                .expect("our own compression inflates");
            assert!(pieces.len() - before <= step, "never more than asked");
            used += took;
            if !full && used == input.len() {
                break;
            }
        }
    }
    inflater.finish_message();
    assert_eq!(pieces, data);

    let limit = data.len() * 3 + 10;
    if inflater.inflate(data, &mut unpacked, limit).is_ok() {
        assert!(unpacked.len() <= limit);
    }
});
