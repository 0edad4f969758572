//! The request head parser, two ways: the whole input at once, and as the event loop sees
//! it, in pieces, parsed only when the scanner says so. Both must come to the same head (or
//! the same refusal), and a head's parts must lie inside it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::http::head::{
    cannot_start_a_head, head_end, parse, partial_target_too_long, HeadScanner, Limits, Parsed,
};

fuzz_target!(|data: &[u8]| {
    let [cut, target_limit, input @ ..] = data else {
        return;
    };
    let limits = Limits {
        head: 4096,
        target: 16 + usize::from(*target_limit) * 8,
    };
    let whole = parse(input, limits);
    if let Ok(Parsed::Complete(head)) = &whole {
        assert!(head.len <= input.len() && head.len <= limits.head);
        for (name, value) in &head.headers {
            assert!(name.end as usize <= head.len && value.end as usize <= head.len);
        }
        assert!(head.target.end as usize <= head.len);
        assert!(!head.wants_upgrade || head.version_minor == 1);
    }
    // The same bytes arriving in two pieces (split at `cut`), byte by byte after that.
    let split = usize::from(*cut).min(input.len());
    let mut scanner = HeadScanner::default();
    let mut incremental = None;
    for end in (split..=input.len()).filter(|&e| e > 0) {
        if scanner.may_be_complete(&input[..end], limits) {
            match parse(&input[..end], limits) {
                Ok(Parsed::Partial) => continue,
                outcome => {
                    incremental = Some((end, outcome));
                    break;
                }
            }
        }
    }
    match (&whole, incremental) {
        // A complete head is found as soon as its blank line has arrived, and is the same.
        (Ok(Parsed::Complete(head)), Some((end, Ok(Parsed::Complete(found))))) => {
            assert_eq!(&found, head);
            assert!(end >= head.len);
        }
        (Ok(Parsed::Complete(head)), other) => {
            panic!("whole: complete ({} bytes); in pieces: {other:?}", head.len)
        }
        // A refusal of the whole is a refusal in pieces too, with the same status, unless a
        // size limit is one of the faults: a head both too long and malformed may be found
        // too long first when it arrives in pieces (RFC 9112 ranks neither).
        (Err(whole), Some((_, Err(found)))) => {
            let limit = |s: u16| s == 414 || s == 431;
            assert!(
                whole.status == found.status || limit(whole.status) || limit(found.status),
                "whole: {whole:?}; in pieces: {found:?}"
            );
        }
        // In pieces, a refusal may wait (for the rest of the head, or the time-out's 408)
        // only while the head is unfinished and within its limits: before its line end, a
        // request line of visible text within the target limit; after it, a head whose blank
        // line has not come. Parsing again on every read instead would cost quadratic time.
        (Err(_), None) => {
            // Empty lines before the request line do not count (RFC 9112 §2.2).
            let start = input.iter().position(|&b| b != b'\r' && b != b'\n');
            let line = start.map_or(&[][..], |start| &input[start..]);
            let waiting = if line.contains(&b'\n') {
                head_end(line).is_none() && input.len() <= limits.head
            } else {
                !line.iter().copied().any(cannot_start_a_head)
                    && !partial_target_too_long(input, limits.target)
            };
            assert!(waiting, "whole: {whole:?}; in pieces, no verdict");
        }
        (Err(_), other) => panic!("whole: {whole:?}; in pieces: {other:?}"),
        (Ok(Parsed::Partial), None) => {}
        (Ok(Parsed::Partial), Some((_, outcome))) => {
            panic!("whole: partial; in pieces: {outcome:?}")
        }
    }
});
