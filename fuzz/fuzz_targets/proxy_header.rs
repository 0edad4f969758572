//! The PROXY protocol header (`ppp` under the daemon's own framing): arbitrary first bytes
//! of a connection, whole and cut anywhere. A verdict reached on a prefix is never changed
//! by more bytes, and a complete header is found, the same, in exactly its own bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::proxy_protocol::{header, looks_like_header, Header, Mode};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    if input.is_empty() {
        return;
    }
    let mode = [Mode::V1, Mode::V2, Mode::Any][usize::from(selector % 3)];
    let whole = header(input, mode);
    if let Header::Complete { len, .. } = whole {
        assert!(len <= input.len());
        assert_eq!(header(&input[..len], mode), whole);
    }
    for end in 1..input.len() {
        match header(&input[..end], mode) {
            Header::Incomplete => {}
            Header::Refused(_) => assert!(matches!(whole, Header::Refused(_)), "{whole:?}"),
            complete => assert_eq!(complete, whole),
        }
    }
    // From a peer not allowed to send one: a header is recognised the way it is parsed.
    if let Some(true) = looks_like_header(input) {
        assert!(!matches!(
            header(input, Mode::Any),
            Header::Refused("no PROXY protocol header from a peer in SWITCHYARD_PROXY_FROM")
        ));
    }
});
