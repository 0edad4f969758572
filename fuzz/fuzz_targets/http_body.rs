//! The body decoder: fed whole or in pieces (the pieces' sizes from the input), it must
//! consume the same bytes, produce the same body, and agree on where the body ends.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::http::body::BodyDecoder;
use switchyard::http::head::BodyLength;

fn decode(length: BodyLength, input: &[u8], step: usize) -> (Result<usize, u16>, Vec<u8>, bool) {
    let mut decoder = BodyDecoder::new(length);
    let (mut buffered, mut body, mut consumed) = (Vec::new(), Vec::new(), 0);
    for piece in input.chunks(step.max(1)) {
        buffered.extend_from_slice(piece);
        match decoder.decode(&buffered, Some(&mut body)) {
            Err(e) => return (Err(e.status), body, false),
            Ok(progress) => {
                assert!(progress.consumed <= buffered.len());
                buffered.drain(..progress.consumed);
                consumed += progress.consumed;
                if progress.done {
                    return (Ok(consumed), body, true);
                }
            }
        }
    }
    (Ok(consumed), body, false)
}

fuzz_target!(|data: &[u8]| {
    let [mode, step, input @ ..] = data else {
        return;
    };
    let length = match mode % 3 {
        0 => BodyLength::Chunked,
        1 => BodyLength::Fixed(u64::from(*step) * 7),
        _ => BodyLength::None,
    };
    let (whole, whole_body, whole_done) = decode(length, input, input.len());
    let (pieces, pieces_body, pieces_done) = decode(length, input, usize::from(*step % 17) + 1);
    match (&whole, &pieces) {
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Ok(_), Ok(_)) if whole_done || pieces_done => {
            assert_eq!(whole, pieces, "where the body ends");
            assert_eq!(whole_body, pieces_body);
            assert_eq!(whole_done, pieces_done);
        }
        (Ok(_), Ok(_)) => {
            assert!(pieces_body.starts_with(&whole_body) || whole_body.starts_with(&pieces_body))
        }
        _ => panic!("whole {whole:?} vs pieces {pieces:?}"),
    }
    if let (BodyLength::Fixed(n), true) = (length, whole_done) {
        assert_eq!(whole_body.len() as u64, n);
    }
});
