//! A push decoder for request bodies (RFC 9112 §6.2, §7.1): feed it what has arrived, it
//! consumes whole units and says when the body is over, so the caller knows exactly where
//! the next request (or the new protocol's first bytes) start.
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size     = 1*HEXDIG
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! trailer-section = *( field-line CRLF )
//! ```
//!
//! Strictly: a line ends with CRLF and nothing else, a size has a digit, an extension
//! holds no control character but HTAB, a trailer line is a field. Where a front end
//! reads a chunked body with other rules (a bare LF ending a line, as RFC 9112 §2.2 lets
//! it; an empty size), it and the daemon would see different requests on one connection:
//! a request hidden in a body reached the daemon's own pages past the front end's checks
//! (an attacker's review: `2;\nxx` as a chunk line). Anything else is `400`, and the
//! connection closes.

use super::head::BodyLength;
use super::HttpError;

/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDecoder {
    state: State,
    /// Bytes at the start of the chunk-size or trailer line in hand known to hold no LF: a
    /// line that arrives a byte at a time is looked through once, not again per byte (up
    /// to 4 KiB each time, an attacker's review measured).
    scanned: usize,
    /// Most body bytes kept ([`BodyDecoder::keeping_at_most`]).
    keep_at_most: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Fixed length, or inside a chunk: this many data bytes to go.
    Data {
        remaining: u64,
        chunked: bool,
    },
    /// Chunked: before a chunk-size line.
    Size,
    /// Chunked: the CRLF after a chunk's data.
    DataEnd,
    /// Chunked: trailer lines, then the blank line.
    Trailers,
    Done,
}

/// What one call to [`BodyDecoder::decode`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input used; the caller drops them.
    pub consumed: usize,
    /// The body is complete.
    pub done: bool,
}

impl BodyDecoder {
    pub fn new(length: BodyLength) -> Self {
        let state = match length {
            BodyLength::None | BodyLength::Fixed(0) => State::Done,
            BodyLength::Fixed(n) => State::Data {
                remaining: n,
                chunked: false,
            },
            BodyLength::Chunked => State::Size,
        };
        BodyDecoder {
            state,
            scanned: 0,
            keep_at_most: usize::MAX,
        }
    }

    /// A body kept in memory grows to `limit` bytes at most: one byte more is a `413`, and
    /// the buffer never takes more than the limit (a `Vec`'s doubling took a 64 KiB body's
    /// buffer to 128 KiB, a review measured).
    pub fn keeping_at_most(mut self, limit: usize) -> Self {
        self.keep_at_most = limit;
        self
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending body bytes to `out` (or dropping them when `out` is
    /// `None`). Stops at the end of the body; bytes after it are left unconsumed.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<Progress, HttpError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => {
                    return Ok(Progress {
                        consumed: at,
                        done: true,
                    })
                }
                State::Data { remaining, chunked } => {
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    if take == 0 {
                        break;
                    }
                    if let Some(out) = out.as_deref_mut() {
                        let need = out.len() + take;
                        if need > self.keep_at_most {
                            return Err(HttpError::new(413, "request body larger than the limit"));
                        }
                        if need > out.capacity() {
                            let grown = (out.capacity() * 2).min(self.keep_at_most).max(need);
                            out.reserve_exact(grown - out.len());
                        }
                        out.extend_from_slice(&rest[..take]);
                    }
                    at += take;
                    let remaining = remaining - take as u64;
                    self.state = match (remaining, chunked) {
                        (0, true) => State::DataEnd,
                        (0, false) => State::Done,
                        (remaining, _) => State::Data { remaining, chunked },
                    };
                }
                State::Size => {
                    let Some(lf) = self.line_end(rest) else {
                        if rest.len() > MAX_LINE {
                            return Err(HttpError::new(400, "chunk size line too long"));
                        }
                        break;
                    };
                    if lf > MAX_LINE {
                        return Err(HttpError::new(400, "chunk size line too long"));
                    }
                    let size = chunk_size(crlf_line(rest, lf)?)?;
                    at += lf + 1;
                    self.scanned = 0;
                    self.state = match size {
                        0 => State::Trailers,
                        size => State::Data {
                            remaining: size,
                            chunked: true,
                        },
                    };
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        at += 2;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => break,
                    _ => return Err(HttpError::new(400, "chunk data not followed by CRLF")),
                },
                State::Trailers => {
                    let Some(lf) = self.line_end(rest) else {
                        if rest.len() > MAX_LINE {
                            return Err(HttpError::new(431, "trailer field too long"));
                        }
                        break;
                    };
                    if lf > MAX_LINE {
                        return Err(HttpError::new(431, "trailer field too long"));
                    }
                    // A blank line ends the trailer section; other lines are trailer
                    // fields, checked and dropped (RFC 9112 §7.1.2 lets a recipient
                    // discard them).
                    let line = crlf_line(rest, lf)?;
                    if !line.is_empty() && !is_field_line(line) {
                        return Err(HttpError::new(400, "invalid trailer field"));
                    }
                    at += lf + 1;
                    self.scanned = 0;
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
            }
        }
        Ok(Progress {
            consumed: at,
            done: self.is_done(),
        })
    }

    /// Where the line at the start of `rest` ends: its first LF, looked for once past what
    /// was looked through before (a line that arrives a byte at a time is not looked
    /// through again per byte: up to 4 KiB each time, an attacker's review measured).
    fn line_end(&mut self, rest: &[u8]) -> Option<usize> {
        let from = self.scanned.min(rest.len());
        match rest[from..].iter().position(|&b| b == b'\n') {
            Some(at) => Some(from + at),
            None => {
                self.scanned = rest.len();
                None
            }
        }
    }
}

/// The line before the LF at `lf`, which must follow a CR.
fn crlf_line(rest: &[u8], lf: usize) -> Result<&[u8], HttpError> {
    match lf.checked_sub(1).map(|cr| (cr, rest[cr])) {
        Some((cr, b'\r')) => Ok(&rest[..cr]),
        _ => Err(HttpError::new(400, "a bare LF in a chunked body")),
    }
}

/// `chunk-size [ chunk-ext ]`: the size, at least one hex digit and no more than 64 bits
/// of them; an extension (ignored) holds no control character but HTAB.
fn chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(HttpError::new(400, "invalid chunk size"));
    }
    let mut size: u64 = 0;
    for &digit in &line[..digits] {
        let value = (digit as char).to_digit(16).expect("a hex digit") as u64;
        size = size
            .checked_mul(16)
            .and_then(|size| size.checked_add(value))
            .ok_or_else(|| HttpError::new(400, "chunk size too large"))?;
    }
    let extension = &line[digits..];
    let after_space = extension.iter().position(|&b| b != b' ' && b != b'\t');
    let well_formed = match after_space {
        None => true, // nothing, or BWS alone
        Some(at) => {
            extension[at] == b';'
                && extension
                    .iter()
                    .all(|&b| b == b'\t' || !b.is_ascii_control())
        }
    };
    match well_formed {
        true => Ok(size),
        false => Err(HttpError::new(400, "invalid chunk extension")),
    }
}

/// `field-name ":" OWS field-value OWS` (RFC 9110 §5): a token, a colon, then no control
/// character but HTAB.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = &line[..colon];
    !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
        && line[colon + 1..]
            .iter()
            .all(|&b| b == b'\t' || !b.is_ascii_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_body_grows_to_its_limit_at_most_and_a_byte_past_it_is_413() {
        let mut decoder = BodyDecoder::new(BodyLength::Chunked).keeping_at_most(100);
        let mut body = Vec::new();
        let progress = decoder.decode(b"3c\r\n", Some(&mut body)).unwrap();
        assert_eq!((progress.consumed, body.len()), (4, 0));
        decoder.decode(&[b'x'; 60], Some(&mut body)).unwrap();
        decoder.decode(b"\r\n28\r\n", Some(&mut body)).unwrap();
        decoder.decode(&[b'y'; 40], Some(&mut body)).unwrap();
        assert_eq!(body.len(), 100);
        assert!(body.capacity() <= 100, "{} bytes held", body.capacity());
        decoder.decode(b"\r\n1\r\n", Some(&mut body)).unwrap();
        let past = decoder.decode(b"z", Some(&mut body)).unwrap_err();
        assert_eq!(past.status, 413);
        assert_eq!(body.len(), 100);
    }

    /// Feeds `input` in pieces of `step` bytes the way the event loop does (unconsumed
    /// bytes stay in the buffer), returning the body and the bytes after it.
    fn feed(
        length: BodyLength,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), HttpError> {
        let mut decoder = BodyDecoder::new(length);
        let (mut buffer, mut body) = (Vec::new(), Vec::new());
        for piece in input.chunks(step.max(1)) {
            buffer.extend_from_slice(piece);
            let progress = decoder.decode(&buffer, Some(&mut body))?;
            buffer.drain(..progress.consumed);
        }
        assert!(decoder.is_done(), "body not complete");
        Ok((body, buffer))
    }

    /// Found by the http_body fuzz target when chunk-size lines began to be looked
    /// through once instead of once per byte: an LF inside an extension, with what
    /// follows it deciding the line, must get the same answer whole and in pieces.
    #[test]
    fn a_bare_lf_in_a_chunk_extension_is_judged_alike_whole_or_in_pieces() {
        let wire = b"5\r\nhello\r\n6;\xe5xvrl\n\rXT";
        for step in 1..=wire.len() {
            let error = feed(BodyLength::Chunked, wire, step).unwrap_err();
            assert_eq!(error.status, 400, "step {step}");
        }
    }

    #[test]
    fn rfc9112_7_1_chunked_at_every_split() {
        let wire = b"4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (body, rest) = feed(BodyLength::Chunked, wire, step).unwrap();
            assert_eq!(body, b"Wikipedia in \r\n\r\nchunks.", "step {step}");
            assert_eq!(rest, b"NEXT", "step {step}");
        }
    }

    #[test]
    fn fixed_length_stops_at_the_end() {
        for step in 1..12 {
            let (body, rest) = feed(BodyLength::Fixed(5), b"helloGET / ", step).unwrap();
            assert_eq!(
                (body.as_slice(), rest.as_slice()),
                (&b"hello"[..], &b"GET / "[..])
            );
        }
    }

    #[test]
    fn malformed_chunks_are_400() {
        assert_eq!(
            feed(BodyLength::Chunked, b"zz\r\n", 4).unwrap_err().status,
            400
        );
        assert_eq!(
            feed(BodyLength::Chunked, b"2\r\nabXY", 8)
                .unwrap_err()
                .reason,
            "chunk data not followed by CRLF"
        );
        let long = [b'1'; MAX_LINE + 2];
        assert_eq!(
            feed(BodyLength::Chunked, &long, long.len())
                .unwrap_err()
                .status,
            400
        );
    }

    /// From an attacker's review of the front door: lines a front end reading bare LF as a
    /// line end (RFC 9112 §2.2 lets it) would cut elsewhere, an empty size, a trailer that
    /// is no field: each let a request hide in a body (or a body hide the next request).
    /// Each is `400` now, whole or in pieces.
    #[test]
    fn lines_another_parser_would_cut_elsewhere_are_400() {
        let refused: &[&[u8]] = &[
            b"2;\nxx\r\n30\r\n0\r\n\r\n",     // a bare LF in an extension
            b"2\n",                           // a bare LF ending the size
            b"2;a\0b\r\n",                    // NUL in an extension
            b"2;a\rb\r\n",                    // CR in an extension
            b"2x\r\n",                        // no `;` before the extension
            b"\r\n",                          // no size
            b";ext\r\n",                      // no size, an extension
            b"10000000000000000\r\n",         // past 64 bits
            b"0\r\n\nGET / HTTP/1.1\r\n\r\n", // a bare LF in the trailers
            b"0\r\nx: a\rb\r\n\r\n",          // a bare CR in a trailer
            b"0\r\nno colon\r\n\r\n",         // a trailer that is no field
            b"0\r\n: empty name\r\n\r\n",
        ];
        for wire in refused {
            for step in 1..=wire.len() {
                let error = feed(BodyLength::Chunked, wire, step).unwrap_err();
                assert_eq!(
                    error.status,
                    400,
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
        let accepted: &[&[u8]] = &[
            b"00000000000000000005\r\nhello\r\n0\r\n\r\n",
            b"5 ;\ta=\"b c\"\r\nhello\r\n0;last\r\nX-Sum:\t7 \r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
        ];
        for wire in accepted {
            let (body, rest) = feed(BodyLength::Chunked, wire, wire.len()).unwrap();
            assert_eq!(
                (body.as_slice(), rest.as_slice()),
                (&b"hello"[..], &b""[..])
            );
        }
    }

    #[test]
    fn discarding_consumes_without_output() {
        let mut decoder = BodyDecoder::new(BodyLength::Chunked);
        let progress = decoder.decode(b"3\r\nabc\r\n0\r\n\r\nX", None).unwrap();
        assert_eq!(
            progress,
            Progress {
                consumed: 13,
                done: true
            }
        );
    }
}
