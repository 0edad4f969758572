//! permessage-deflate: what we compress inflates to what it was; arbitrary input to the
//! inflater is refused or inflated within the limit, never more.
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

    let limit = data.len() * 3 + 10;
    if inflater.inflate(data, &mut unpacked, limit).is_ok() {
        assert!(unpacked.len() <= limit);
    }
});
