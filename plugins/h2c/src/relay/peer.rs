//! One HTTP/2 connection as the relay keeps it, the client's or a backend's: the frames'
//! partial tail, what is owed to the socket, the peer's HPACK state and settings, and the
//! connection-level flow-control windows both ways.

use crate::frame::{self, code, setting, Head, Malformed};
use crate::hpack::encoder::Encoder;
use crate::hpack::Decoder;
use protocol_api::output::Output;

/// The connection-level window the relay grants each peer: what one connection may make
/// it hold for a destination that does not take it (RFC 9113 §6.9). For answers, a client
/// that takes none of them holds this for `SWITCHYARD_H2C_BODY_TIMEOUT_MS` at most
/// ([`super::Relay::expire`]). (256 KiB for backends was tried: eight streams whose
/// answers a client took lazily, each holding its 64 KiB, then stopped every other stream
/// of the connection to that backend, a review found.)
pub const CONN_WINDOW: u32 = 1 << 20;
/// What a peer granted [`CONN_WINDOW`] takes of its client address's budget: the window
/// past the protocol's ([`super::held::ClientHeld::grant`]).
pub const GRANT: usize = (CONN_WINDOW - frame::DEFAULT_WINDOW) as usize;
/// A field block being continued may be at most this long: a peer cannot make the relay
/// hold more than one such block before it decodes it (CONTINUATION floods).
const MAX_BLOCK: usize = 64 * 1024;

/// A field block spread over HEADERS and CONTINUATION frames (RFC 9113 §6.10).
#[derive(Debug)]
pub struct Block {
    pub stream: u32,
    pub end_stream: bool,
    pub bytes: Vec<u8>,
}

/// What a SETTINGS frame changed that the streams must follow.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// The difference a new SETTINGS_INITIAL_WINDOW_SIZE makes to every stream's send
    /// window (RFC 9113 §6.9.2).
    pub window_delta: i64,
    pub max_streams: Option<u32>,
}

#[derive(Default)]
pub struct Peer {
    /// The first bytes of a frame not yet whole.
    pub tail: Vec<u8>,
    pub out: Output,
    pub decoder: Decoder,
    /// A field block being continued.
    pub block: Option<Block>,
    /// What the peer lets us send, all streams together.
    pub send_window: i64,
    /// What the peer may still send us.
    pub recv_window: i64,
    /// Bytes passed on or dropped that the peer has not been given back.
    pub unacked: u32,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE, for its streams' send windows.
    pub initial_window: u32,
    /// The connection window granted the peer ([`Peer::grant_window`]).
    pub window: u32,
    /// Its DATA took what it may send below half the connection window since
    /// `Relay::follow_budget` last looked: it would go faster with a larger one. (Not the
    /// window as it stands: what is passed on is given back at once while it is below
    /// half, so a fast transfer's window rarely stays there.)
    pub ran_low: bool,
    /// What is passed on is not given back for now (the peer's address holds its budget,
    /// [`super::held`]): owed, and given back once this is cleared.
    pub withheld: bool,
    /// The largest frame the peer takes (at most [`frame::DEFAULT_MAX_FRAME`] is used).
    pub max_frame: usize,
    /// A SETTINGS frame came (a preface's first frame must be one).
    pub settled: bool,
    /// A SETTINGS frame of the peer's own came, not an upgrade's HTTP2-Settings: what
    /// its decoder's table is may be relied on ([`Peer::table_usable`]).
    framed_settings: bool,
    /// The peer lowered SETTINGS_HEADER_TABLE_SIZE below the initial 4,096: the next
    /// field block sent must say so first (RFC 7541 §4.2), though the relay's encoder uses
    /// no table from then on.
    pub table_size_update: Option<u32>,
    /// It ever lowered SETTINGS_HEADER_TABLE_SIZE: entries added to its table may be gone.
    table_lowered: bool,
    /// Its decoder's table, as the blocks sent fill it; boxed, and only once a block is
    /// sent (an idle connection pays a pointer for it).
    table: Option<Box<Encoder>>,
    /// The table was let go with entries in it ([`Peer::forget_table`]): the next block
    /// empties the peer's first.
    table_emptying_owed: bool,
}

thread_local! {
    /// A block as written with a peer's table.
    static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Peer {
    pub fn new() -> Peer {
        Peer {
            send_window: i64::from(frame::DEFAULT_WINDOW),
            recv_window: i64::from(frame::DEFAULT_WINDOW),
            initial_window: frame::DEFAULT_WINDOW,
            window: frame::DEFAULT_WINDOW,
            max_frame: frame::DEFAULT_MAX_FRAME as usize,
            ..Peer::default()
        }
    }

    /// Grants the peer a connection window of `window` bytes (sent after our SETTINGS).
    pub fn grant_window(&mut self, window: u32) {
        let more = window - frame::DEFAULT_WINDOW;
        frame::write_window_update(self.out.queue(), 0, more);
        self.recv_window += i64::from(more);
        self.window = window;
    }

    /// Counts DATA received against the connection window.
    pub fn receive(&mut self, counted: u32) -> Result<(), Malformed> {
        if i64::from(counted) > self.recv_window {
            return Err(Malformed(code::FLOW_CONTROL_ERROR));
        }
        self.recv_window -= i64::from(counted);
        self.ran_low |= self.recv_window < i64::from(self.window / 2);
        Ok(())
    }

    /// Counts bytes passed on or dropped; gives them back by halves of the window, or at
    /// once while the window is below half (bytes held for one slow stream must not keep
    /// the others' window from coming back).
    pub fn give_back(&mut self, passed: usize) {
        self.unacked += passed as u32;
        if self.withheld {
            return;
        }
        let low = self.recv_window < i64::from(self.window / 2);
        if self.unacked >= self.window / 2 || (low && self.unacked > 0) {
            let increment = std::mem::take(&mut self.unacked);
            self.recv_window += i64::from(increment);
            frame::write_window_update(self.out.queue(), 0, increment);
        }
    }

    /// A WINDOW_UPDATE on stream 0.
    pub fn window_update(&mut self, increment: u32) -> Result<(), Malformed> {
        if increment == 0 {
            return Err(Malformed(code::PROTOCOL_ERROR));
        }
        self.send_window += i64::from(increment);
        if self.send_window > frame::MAX_WINDOW {
            return Err(Malformed(code::FLOW_CONTROL_ERROR));
        }
        Ok(())
    }

    /// Applies a SETTINGS frame's values (RFC 9113 §6.5.2) and acknowledges it, unless
    /// `implicit` (an upgrade's HTTP2-Settings, acknowledged by the 101).
    pub fn settings(&mut self, payload: &[u8], implicit: bool) -> Result<Changed, Malformed> {
        let mut changed = Changed::default();
        for (id, value) in frame::settings(payload)? {
            match id {
                setting::ENABLE_PUSH if value > 1 => return Err(Malformed(code::PROTOCOL_ERROR)),
                setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > frame::MAX_WINDOW {
                        return Err(Malformed(code::FLOW_CONTROL_ERROR));
                    }
                    changed.window_delta += i64::from(value) - i64::from(self.initial_window);
                    self.initial_window = value;
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME..=16_777_215).contains(&value) {
                        return Err(Malformed(code::PROTOCOL_ERROR));
                    }
                    // Larger frames than the default gain little and make every stream
                    // wait longer behind one; 16 KiB stays the unit.
                    self.max_frame = frame::DEFAULT_MAX_FRAME as usize;
                }
                setting::MAX_CONCURRENT_STREAMS => changed.max_streams = Some(value),
                setting::HEADER_TABLE_SIZE if value < 4_096 => {
                    // The smallest since the last block is what must be said (RFC 7541 §4.2);
                    // the relay's encoder uses no table from then on
                    // ([`crate::hpack::encoder`]).
                    let smallest = self.table_size_update.map_or(value, |v| v.min(value));
                    self.table_size_update = Some(smallest);
                    self.table_lowered = true;
                }
                // HEADER_TABLE_SIZE past 4,096: the relay's encoder keeps to the initial
                // size. MAX_HEADER_LIST_SIZE is advisory. Unknown settings are ignored
                // (§6.5.2).
                _ => {}
            }
        }
        self.settled = true;
        self.framed_settings |= !implicit;
        if !implicit {
            frame::write(
                self.out.queue(),
                frame::kind::SETTINGS,
                frame::flag::ACK,
                0,
                &[],
            );
        }
        Ok(changed)
    }

    /// Takes a HEADERS or CONTINUATION frame; returns the block once it is whole.
    pub fn field_block(&mut self, head: &Head, payload: &[u8]) -> Result<Option<Block>, Malformed> {
        use frame::{flag, kind};
        let fragment = match head.kind {
            kind::HEADERS => {
                if self.block.is_some() || head.stream == 0 {
                    return Err(Malformed(code::PROTOCOL_ERROR));
                }
                let fragment = frame::header_fragment(head, payload)?;
                if head.has(flag::END_HEADERS) {
                    return Ok(Some(Block {
                        stream: head.stream,
                        end_stream: head.has(flag::END_STREAM),
                        bytes: fragment.to_vec(),
                    }));
                }
                self.block = Some(Block {
                    stream: head.stream,
                    end_stream: head.has(flag::END_STREAM),
                    bytes: Vec::new(),
                });
                fragment
            }
            _ => payload,
        };
        let block = match &mut self.block {
            Some(block) if block.stream == head.stream => block,
            _ => return Err(Malformed(code::PROTOCOL_ERROR)),
        };
        if block.bytes.len() + fragment.len() > MAX_BLOCK {
            return Err(Malformed(code::ENHANCE_YOUR_CALM));
        }
        block.bytes.extend_from_slice(fragment);
        if head.kind == kind::CONTINUATION && head.has(flag::END_HEADERS) {
            return Ok(self.block.take());
        }
        Ok(None)
    }

    /// Sends a field block of the relay's making (literals, [`crate::hpack`]) on `stream`,
    /// after the table size update owed, if one is, written again with the connection's
    /// table ([`crate::hpack::encoder`]). Every field block the relay sends a peer comes
    /// here, in the order it goes out: the table the encoder keeps is the one the peer's
    /// decoder builds.
    pub fn write_block(&mut self, stream: u32, block: &[u8], end_stream: bool) {
        let usable = self.table_usable();
        ENCODED.with_borrow_mut(|encoded| {
            encoded.clear();
            if let Some(size) = self.table_size_update.take() {
                crate::hpack::integer(encoded, 5, 0x20, size as usize);
            }
            let owed = std::mem::take(&mut self.table_emptying_owed);
            let table = (self.table).get_or_insert_with(|| Box::new(Encoder::owing_emptying(owed)));
            table.transcode(block, encoded, usable);
            let max_frame = self.max_frame;
            frame::write_field_block(self.out.queue(), stream, encoded, end_stream, max_frame);
        });
    }

    /// Lets the connection's HPACK table go, all of it ([`Encoder::forget`]).
    pub fn forget_table(&mut self) {
        if let Some(mut table) = self.table.take() {
            table.forget();
            self.table_emptying_owed |= table.owes_emptying();
        }
    }

    /// Whether the peer's HPACK table may be used ([`crate::hpack::encoder`]): once its
    /// own SETTINGS frame came (a decoder that applies a lowered table size before the
    /// encoder says so, against RFC 7541 §4.2 but seen, is not surprised; an upgrade's
    /// HTTP2-Settings does not count, a review noted), and while it never lowered the
    /// table size.
    pub fn table_usable(&self) -> bool {
        self.framed_settings && !self.table_lowered
    }

    /// Only CONTINUATION of the open block may come while one is open (RFC 9113 §6.10).
    pub fn expects_continuation(&self) -> bool {
        self.block.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{flag, kind, Head};

    #[test]
    fn rfc9113_6_9_2_a_new_initial_window_moves_every_stream_and_is_acknowledged() {
        let mut peer = Peer::new();
        let changed = peer
            .settings(&[0, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0, 10], false)
            .unwrap();
        assert_eq!(changed.window_delta, 65_536 - 65_535);
        assert_eq!(changed.max_streams, Some(10));
        let mut out = Vec::new();
        frame::write(&mut out, kind::SETTINGS, flag::ACK, 0, &[]);
        assert_eq!(peer.out.queue(), &out);
        assert_eq!(
            peer.settings(&[0, 4, 0x80, 0, 0, 0], false),
            Err(Malformed(code::FLOW_CONTROL_ERROR))
        );
        let mut quiet = Peer::new();
        quiet.settings(&[], true).unwrap();
        assert!(quiet.out.is_done());
    }

    #[test]
    fn rfc9113_6_9_1_windows_past_the_largest_or_data_past_the_window_are_errors() {
        let mut peer = Peer::new();
        assert_eq!(peer.window_update(0), Err(Malformed(code::PROTOCOL_ERROR)));
        assert_eq!(
            peer.window_update(0x7fff_ffff),
            Err(Malformed(code::FLOW_CONTROL_ERROR))
        );
        let mut peer = Peer::new();
        assert!(peer.receive(65_535).is_ok());
        assert_eq!(peer.receive(1), Err(Malformed(code::FLOW_CONTROL_ERROR)));
    }

    #[test]
    fn rfc7541_4_2_a_lowered_table_size_is_acknowledged_in_the_next_block_only() {
        let mut peer = Peer::new();
        peer.settings(&[0, 1, 0, 0, 0, 0], false).unwrap();
        let acked = peer.out.owed();
        peer.write_block(1, &[0x88], true);
        peer.write_block(3, &[0x88], true);
        let sent = &peer.out.queue()[acked..];
        assert_eq!(
            &sent[9..11],
            &[0x20, 0x88],
            "size update 0, then :status 200"
        );
        assert_eq!(&sent[11 + 9..], &[0x88], "the next block has none");
    }

    #[test]
    fn bytes_are_given_back_at_once_while_the_window_is_below_half() {
        let mut peer = Peer::new();
        peer.grant_window(CONN_WINDOW);
        let granted = peer.out.owed();
        peer.receive(CONN_WINDOW - 1000).unwrap();
        peer.give_back(10);
        assert_eq!(peer.out.owed(), granted + 13, "a WINDOW_UPDATE of 10");
        assert_eq!(peer.recv_window, 1010);
    }

    #[test]
    fn half_the_connection_window_is_given_back_at_once() {
        let mut peer = Peer::new();
        peer.grant_window(CONN_WINDOW);
        let granted = peer.out.owed();
        peer.give_back(CONN_WINDOW as usize / 2 - 1);
        assert_eq!(peer.out.owed(), granted);
        peer.give_back(1);
        assert_eq!(peer.out.owed(), granted + 13);
        assert_eq!(peer.unacked, 0);
    }

    #[test]
    fn rfc9113_6_10_blocks_continue_on_their_stream_only() {
        let mut peer = Peer::new();
        let headers = Head {
            len: 2,
            kind: kind::HEADERS,
            flags: flag::END_STREAM,
            stream: 3,
        };
        assert!(peer.field_block(&headers, &[0x82, 0x86]).unwrap().is_none());
        assert!(peer.expects_continuation());
        let other = Head {
            kind: kind::CONTINUATION,
            stream: 5,
            ..headers
        };
        assert!(peer.field_block(&other, &[0x84]).is_err());
        let last = Head {
            kind: kind::CONTINUATION,
            flags: flag::END_HEADERS,
            ..headers
        };
        let block = peer.field_block(&last, &[0x84]).unwrap().unwrap();
        assert_eq!((block.stream, block.end_stream), (3, true));
        assert_eq!(block.bytes, [0x82, 0x86, 0x84]);
    }

    #[test]
    fn a_continuation_flood_is_refused_before_it_is_held() {
        let mut peer = Peer::new();
        let head = Head {
            len: 16_384,
            kind: kind::HEADERS,
            flags: 0,
            stream: 1,
        };
        peer.field_block(&head, &[0; 16_384]).unwrap();
        let more = Head {
            kind: kind::CONTINUATION,
            ..head
        };
        for _ in 0..3 {
            peer.field_block(&more, &[0; 16_384]).unwrap();
        }
        assert_eq!(
            peer.field_block(&more, &[0; 16_384]).unwrap_err(),
            Malformed(code::ENHANCE_YOUR_CALM)
        );
    }
}
