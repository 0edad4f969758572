//! permessage-deflate (RFC 7692): the extension offer and answer, and compressing and
//! inflating whole messages. Pure: bytes in, bytes out.
//!
//! ```text
//! Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, permessage-deflate
//! ```
//! Offers are tried in the client's order; the first we can honour is answered (§5.1). We
//! compress with a full 32 KiB window, so an offer that limits ours
//! (`server_max_window_bits` below 15) is passed over; we inflate any window, so
//! `client_max_window_bits` is always fine.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::sync::Mutex;

/// What both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Agreement {
    /// We start every message with an empty window (our compressor is reset).
    pub server_no_context_takeover: bool,
    /// The client resets its compressor; we may reset our inflater too.
    pub client_no_context_takeover: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the `101`.
    pub fn header_value(&self) -> String {
        let mut value = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            value.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        value
    }
}

/// The first `permessage-deflate` offer in `values` (the header's lines) we can honour.
pub fn negotiate(values: &[&str]) -> Option<Agreement> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .find_map(|offer| accept(offer.trim()))
}

fn accept(offer: &str) -> Option<Agreement> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    // Both are ours to add (§7.1.1.1, §7.1.1.2): every message is then compressed from an
    // empty window on both sides, so neither side's state outlives a message and a
    // connection holds none between messages (see [`Deflater`], [`Inflater`]). The price is
    // a lower ratio for small, similar messages.
    let agreement = Agreement {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
    };
    let mut seen: Vec<String> = Vec::new();
    for param in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"')),
            ),
            None => (param.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return None; // §7: a parameter twice makes the offer invalid
        }
        let bits =
            |v: Option<&str>| v.map(|v| v.parse::<u8>().ok().filter(|b| (8..=15).contains(b)));
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", v @ Some(_)) => match bits(v) {
                Some(Some(15)) => {}
                _ => return None, // a smaller window than ours, or not a window size
            },
            ("client_max_window_bits", v) => {
                if let Some(None) = bits(v) {
                    return None;
                }
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(agreement)
}

/// The four bytes a sync flush ends with, removed from each message and put back (§7.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Why a compressed message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// Not valid DEFLATE data.
    Corrupt,
    /// It inflates to more than the limit.
    TooBig,
}

/// Inflates messages, a piece at a time ([`Inflater::inflate_some`]): a compressed message
/// can grow a thousandfold, so its output is produced as far as the caller's budget
/// allows, never the whole message in one go. With `client_no_context_takeover` (which we
/// always agree) every message starts from an empty window, so the state (a 32 KiB window
/// and tables) is borrowed from a pool for one message, not held by the connection.
pub struct Inflater {
    reset_each: bool,
    /// The state while a message is inflated, and between messages under context
    /// takeover; none (in the pool) between messages otherwise.
    state: Option<Decompress>,
}

static DECOMPRESSORS: Mutex<Vec<Decompress>> = Mutex::new(Vec::new());

/// The most states a pool keeps idle: enough for the messages a busy daemon inflates (or
/// compresses) at once, while a burst of 10,000 at once does not leave 430 MB of idle
/// decompressors behind for good.
const POOL_KEEPS: usize = 64;

/// Gives `state` back to `pool`, unless the pool already keeps its most.
fn give_back<T>(pool: &Mutex<Vec<T>>, state: T) {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_KEEPS {
        pool.push(state);
    }
}

/// The sync flush's tail, which the sender removed from the end of each message (§7.2.2):
/// put back once the message's last frame has come.
pub const MESSAGE_TAIL: [u8; 4] = TAIL;

/// What a decompressor holds: zlib's state and its 32 KiB window (zlib-rs: about 4 KiB
/// more than miniz_oxide's 43.2 KiB, measured with 400 connections each with a compressed
/// message begun and never finished). A message holds one only once
/// [`crate::receiver::INFLATE_FROM`] of its bytes came.
pub const DECOMPRESSOR_BYTES: usize = 48 * 1024;

impl Inflater {
    pub fn new(agreement: Agreement) -> Inflater {
        Inflater {
            reset_each: agreement.client_no_context_takeover,
            state: None,
        }
    }

    /// Inflates from `input` (the next compressed bytes of the current message) into `out`
    /// (appended), at most `max_out` bytes. Returns how much of `input` was used and
    /// whether it stopped because `max_out` was reached (call again, with the rest of the
    /// input or none, for more).
    pub fn inflate_some(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max_out: usize,
    ) -> Result<(usize, bool), InflateError> {
        let state = self.state.get_or_insert_with(|| {
            DECOMPRESSORS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_else(|| Decompress::new(false))
        });
        let start = out.len();
        let mut used = 0;
        // Output is made in chunks sized to what the input may give, so a small message
        // costs a small buffer; a chunk that fills up doubles the next.
        let mut chunk = (input.len().saturating_mul(4)).clamp(4096, 256 * 1024);
        loop {
            let room = max_out - (out.len() - start);
            if room == 0 {
                return Ok((used, true));
            }
            let size = chunk.min(room);
            let at = out.len();
            out.resize(at + size, 0);
            let (in_before, out_before) = (state.total_in(), state.total_out());
            let status = state.decompress(&input[used..], &mut out[at..], FlushDecompress::Sync);
            let took = (state.total_in() - in_before) as usize;
            let made = (state.total_out() - out_before) as usize;
            out.truncate(at + made);
            let status = status.map_err(|_| InflateError::Corrupt)?;
            used += took;
            if status == Status::StreamEnd {
                // A final block ended the stream: what follows (the tail put back) is not
                // DEFLATE data.
                return Ok((input.len(), false));
            }
            if used == input.len() && made < size {
                return Ok((used, false)); // all input used and every byte it gave is out
            }
            if took == 0 && made == 0 {
                return Err(InflateError::Corrupt); // no progress with input and room
            }
            if made == size {
                chunk = chunk.saturating_mul(2).min(4 << 20);
            }
        }
    }

    /// Whether it holds a decompressor (a message is being inflated): about
    /// [`DECOMPRESSOR_BYTES`].
    pub fn is_holding(&self) -> bool {
        self.state.is_some()
    }

    /// The current message is over (inflated whole, or given up): its state goes back to
    /// the pool, or is kept for the next message under context takeover.
    pub fn finish_message(&mut self) {
        if !self.reset_each {
            return; // the next message goes on from this one's window
        }
        if let Some(mut state) = self.state.take() {
            state.reset(false);
            give_back(&DECOMPRESSORS, state);
        }
    }

    /// Inflates one whole message (without its tail) into `out` (cleared first), at most
    /// `limit` bytes: [`inflate_some`](Self::inflate_some) until it is done.
    pub fn inflate(
        &mut self,
        message: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        out.clear();
        let result = (|| {
            for input in [message, &TAIL[..]] {
                let mut used = 0;
                loop {
                    let room = (limit + 1).saturating_sub(out.len());
                    let (took, full) = self.inflate_some(&input[used..], out, room)?;
                    used += took;
                    if out.len() > limit {
                        return Err(InflateError::TooBig);
                    }
                    if !full && used == input.len() {
                        break;
                    }
                }
            }
            Ok(())
        })();
        self.finish_message();
        result
    }
}

/// Compresses messages (the echo needs none: it sends compressed messages back as they
/// came; tests and the fuzz target make theirs with it). We always answer with
/// `server_no_context_takeover` (§7.1.1.1 lets a server add it), so every message is
/// compressed from an empty window: compressor state
/// (about 300 KiB) is then borrowed from a pool for the length of one message instead of
/// being held by every connection, idle ones included.
pub struct Deflater;

static COMPRESSORS: Mutex<Vec<Compress>> = Mutex::new(Vec::new());

impl Deflater {
    pub fn new(_agreement: Agreement) -> Deflater {
        Deflater
    }

    /// Compresses one message into `out` (cleared first), without the sync flush's tail.
    pub fn deflate(&mut self, message: &[u8], out: &mut Vec<u8>) {
        let pooled = COMPRESSORS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // Level 1: most of the size win for a fraction of the time of the default level.
        let mut state = pooled.unwrap_or_else(|| Compress::new(Compression::new(1), false));
        out.clear();
        out.reserve(message.len() / 2 + 64);
        loop {
            let used = state.total_in() as usize;
            // Raw DEFLATE into a Vec cannot fail: errors are for misuse of a zlib stream.
            let _ = state.compress_vec(&message[used..], out, FlushCompress::Sync);
            if state.total_in() as usize == message.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        state.reset();
        give_back(&COMPRESSORS, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7692_offers_in_client_order_first_we_can_honour() {
        // We always add both no-context-takeover parameters (§7.1.1.1, §7.1.1.2).
        let ours = Agreement {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
        };
        assert_eq!(negotiate(&["permessage-deflate"]), Some(ours));
        assert_eq!(
            ours.header_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(negotiate(&["x-webkit-deflate-frame"]), None);
        // Whatever the offer asks of context takeover, the answer is the same: both off.
        for offer in [
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ] {
            assert_eq!(negotiate(&[offer]), Some(ours), "{offer}");
        }
        // A smaller server window than ours is passed over for the next offer.
        let offers = ["permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits"];
        assert_eq!(negotiate(&offers), Some(ours));
        assert_eq!(
            negotiate(&["permessage-deflate; server_max_window_bits=10"]),
            None
        );
        assert_eq!(
            negotiate(&["permessage-deflate; server_max_window_bits=\"15\""]),
            Some(ours)
        );
        assert_eq!(
            negotiate(&["permessage-deflate; client_max_window_bits=9"]),
            Some(ours)
        );
        for invalid in [
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
        ] {
            assert_eq!(negotiate(&[invalid]), None, "{invalid}");
        }
    }

    /// RFC 7692 §7.2.3.1: "Hello" compressed is c2 48 cd c9 c9 07 00 (0xf2 0x48 ... with
    /// the first-message bits as the RFC shows).
    #[test]
    fn rfc7692_7_2_3_1_example_inflates() {
        let mut inflater = Inflater::new(Agreement::default());
        let mut out = Vec::new();
        inflater
            .inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out, 1000)
            .unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.2: the same message again, with the context of the first.
        inflater
            .inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], &mut out, 1000)
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn round_trips_with_and_without_context() {
        for agreement in [
            Agreement::default(),
            Agreement {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
            },
        ] {
            let (mut deflater, mut inflater) = (Deflater::new(agreement), Inflater::new(agreement));
            let (mut packed, mut unpacked) = (Vec::new(), Vec::new());
            let big: Vec<u8> = (0..300_000u32).map(|i| (i % 7 * 31) as u8).collect();
            for message in [&b""[..], b"Hello", &big, b"Hello"] {
                deflater.deflate(message, &mut packed);
                inflater.inflate(&packed, &mut unpacked, 1 << 20).unwrap();
                assert_eq!(unpacked, message);
            }
        }
    }

    #[test]
    fn limits_and_corruption() {
        let mut deflater = Deflater::new(Agreement::default());
        let mut packed = Vec::new();
        deflater.deflate(&vec![0u8; 100_000], &mut packed);
        let mut out = Vec::new();
        assert_eq!(
            Inflater::new(Agreement::default()).inflate(&packed, &mut out, 99_999),
            Err(InflateError::TooBig)
        );
        assert_eq!(
            Inflater::new(Agreement::default()).inflate(&[0xff, 0xff, 0xff], &mut out, 1000),
            Err(InflateError::Corrupt)
        );
    }
}
