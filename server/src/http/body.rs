//! A push decoder for request bodies (RFC 9112 §6.2, §7.1): feed it what has arrived, it
//! consumes whole units and says when the body is over, so the caller knows exactly where
//! the next request (or the new protocol's first bytes) start.
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! ```

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
        BodyDecoder { state, scanned: 0 }
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
                    if !self.line_may_end(rest) {
                        if rest.len() > MAX_LINE {
                            return Err(HttpError::new(400, "chunk size line too long"));
                        }
                        break;
                    }
                    match httparse::parse_chunk_size(rest) {
                        Ok(httparse::Status::Complete((used, 0))) => {
                            at += used;
                            self.scanned = 0;
                            self.state = State::Trailers;
                        }
                        Ok(httparse::Status::Complete((used, size))) => {
                            at += used;
                            self.scanned = 0;
                            self.state = State::Data {
                                remaining: size,
                                chunked: true,
                            };
                        }
                        Ok(httparse::Status::Partial) if rest.len() > MAX_LINE => {
                            return Err(HttpError::new(400, "chunk size line too long"))
                        }
                        Ok(httparse::Status::Partial) => {
                            // An LF that did not end the line (inside an extension): what
                            // comes next may decide it, so it is parsed again then.
                            self.scanned = 0;
                            break;
                        }
                        Err(_) => return Err(HttpError::new(400, "invalid chunk size")),
                    }
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
                    if !self.line_may_end(rest) {
                        if rest.len() > MAX_LINE {
                            return Err(HttpError::new(431, "trailer field too long"));
                        }
                        break;
                    }
                    match rest.windows(2).position(|w| w == b"\r\n") {
                        // A blank line ends the trailer section; other lines are trailer
                        // fields, which we drop (RFC 9112 §7.1.2 lets a recipient discard
                        // them).
                        Some(0) => {
                            at += 2;
                            self.scanned = 0;
                            self.state = State::Done;
                        }
                        Some(end) if end <= MAX_LINE => {
                            at += end + 2;
                            self.scanned = 0;
                        }
                        Some(_) => return Err(HttpError::new(431, "trailer field too long")),
                        None if rest.len() > MAX_LINE => {
                            return Err(HttpError::new(431, "trailer field too long"))
                        }
                        None => break,
                    }
                }
            }
        }
        Ok(Progress {
            consumed: at,
            done: self.is_done(),
        })
    }

    /// Whether the line at the start of `rest` may be whole: an LF has come past what was
    /// looked through before. Notes how far it looked.
    fn line_may_end(&mut self, rest: &[u8]) -> bool {
        let from = self.scanned.min(rest.len());
        match rest[from..].iter().position(|&b| b == b'\n') {
            Some(at) => {
                // Looked through up to this LF; if the line still is not whole (a bare
                // LF), the next look starts after it.
                self.scanned = from + at + 1;
                true
            }
            None => {
                self.scanned = rest.len();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
