//! One stream as the relay holds it: a flow each way, each with what waits for the far
//! side's flow-control window and what the near side is owed back in window updates.

use super::peer::Peer;
use crate::frame::{self, flag, kind};

/// The window the relay grants each stream, both sides: the protocol's initial one
/// (RFC 9113 §6.9.2), so no INITIAL_WINDOW_SIZE setting is ever sent.
pub const STREAM_WINDOW: u32 = frame::DEFAULT_WINDOW;

/// How many runs of streams this side reset are remembered (see [`ResetSent`]).
const RESETS_REMEMBERED: usize = 128;

/// The streams this side reset lately and the client has not yet ended. "An endpoint MUST
/// ignore frames that it receives on closed streams after it has sent a RST_STREAM frame"
/// (RFC 9113 §5.1): the client may have sent them before it read the reset. Kept as runs
/// of consecutive client streams (a burst of refusals is one run); only the last
/// [`RESETS_REMEMBERED`] runs are kept ("an endpoint MAY choose to limit the period over
/// which it ignores frames"), and frames on older ones count as on any closed stream. A
/// stream leaves once the client ends or resets it.
#[derive(Debug, Default)]
pub struct ResetSent {
    /// First and last stream of each run (client streams are odd: every other number).
    runs: std::collections::VecDeque<(u32, u32)>,
}

impl ResetSent {
    pub fn note(&mut self, id: u32) {
        if let Some(last) = self.runs.back_mut() {
            if last.1.checked_add(2) == Some(id) {
                last.1 = id;
                return;
            }
        }
        self.remember((id, id));
    }

    fn remember(&mut self, run: (u32, u32)) {
        if self.runs.len() == RESETS_REMEMBERED {
            self.runs.pop_front();
        }
        self.runs.push_back(run);
    }

    pub fn contains(&self, id: u32) -> bool {
        self.position(id).is_some()
    }

    /// Takes `id` out; whether it was in.
    pub fn forget(&mut self, id: u32) -> bool {
        let Some(at) = self.position(id) else {
            return false;
        };
        let (first, last) = self.runs[at];
        match (first == id, last == id) {
            (true, true) => {
                self.runs.remove(at);
            }
            (true, false) => self.runs[at].0 = id + 2,
            (false, true) => self.runs[at].1 = id - 2,
            (false, false) => {
                self.runs[at].1 = id - 2;
                self.runs.insert(at + 1, (id + 2, last));
                if self.runs.len() > RESETS_REMEMBERED {
                    self.runs.pop_front();
                }
            }
        }
        true
    }

    fn position(&self, id: u32) -> Option<usize> {
        self.runs
            .iter()
            .rposition(|&(first, last)| first <= id && id <= last && (id - first).is_multiple_of(2))
    }
}

/// One direction of a stream: from its source (the side that sends these bytes) to its
/// destination.
#[derive(Debug)]
pub struct Flow {
    /// DATA payload received and not yet passed on: at most the window granted the source.
    pub pending: Vec<u8>,
    /// The source ended the direction (END_STREAM).
    pub end: bool,
    /// A field block (trailers) to send once `pending` is out; it carries END_STREAM.
    pub trailers: Option<Vec<u8>>,
    /// END_STREAM is passed on: the direction is over.
    pub ended: bool,
    /// What the destination lets us send on this stream.
    pub send_window: i64,
    /// What the source may still send before we give window back.
    pub recv_window: i64,
    /// Bytes passed on (or dropped) that the source has not been given back.
    pub unacked: u32,
    /// DATA still due by the message's `content-length`, if it has one.
    pub remaining: Option<u64>,
    /// DATA payload bytes sent to the destination, ever (a mark that moves when it takes
    /// some).
    pub sent: u64,
}

impl Flow {
    pub fn new(send_window: u32) -> Flow {
        Flow {
            pending: Vec::new(),
            end: false,
            trailers: None,
            ended: false,
            send_window: i64::from(send_window),
            recv_window: i64::from(STREAM_WINDOW),
            unacked: 0,
            remaining: None,
            sent: 0,
        }
    }

    /// Counts DATA against the `content-length`: false when the message carries more, or
    /// ends with less (malformed, RFC 9113 §8.1.1).
    pub fn fits_length(&mut self, len: usize, end: bool) -> bool {
        let Some(remaining) = self.remaining else {
            return true;
        };
        let Some(left) = remaining.checked_sub(len as u64) else {
            return false;
        };
        self.remaining = Some(left);
        !end || left == 0
    }

    /// Nothing is held for the destination.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.trailers.is_none()
    }

    /// Takes a DATA payload (`counted` bytes against the windows, padding included):
    /// sends to `to` what the windows allow at once (no copy) and keeps the rest. Returns
    /// the bytes sent and dropped (padding), which the source may be given back.
    pub fn take(
        &mut self,
        stream: u32,
        data: &[u8],
        counted: usize,
        end: bool,
        to: &mut Peer,
    ) -> usize {
        self.recv_window -= counted as i64;
        self.end |= end;
        let mut passed = counted - data.len();
        if self.pending.is_empty() {
            let room = self.send_window.min(to.send_window).max(0) as usize;
            let now = data.len().min(room);
            let out = to.out.queue();
            let mut rest = &data[..now];
            while !rest.is_empty() {
                let n = rest.len().min(to.max_frame);
                let last =
                    n == rest.len() && now == data.len() && self.end && self.trailers.is_none();
                frame::write(out, kind::DATA, end_flag(last), stream, &rest[..n]);
                rest = &rest[n..];
                self.ended |= last;
            }
            self.send_window -= now as i64;
            to.send_window -= now as i64;
            self.sent += now as u64;
            passed += now;
            self.pending.extend_from_slice(&data[now..]);
        } else {
            self.pending.extend_from_slice(data);
        }
        passed + self.drain(stream, to)
    }

    /// Sends to `to` what waits as far as the windows allow, then the end of the direction
    /// once everything is out. Returns the DATA bytes sent.
    pub fn drain(&mut self, stream: u32, to: &mut Peer) -> usize {
        let mut sent = 0;
        while !self.pending.is_empty() {
            let room = self
                .send_window
                .min(to.send_window)
                .min(to.max_frame as i64);
            if room <= 0 {
                return sent;
            }
            let n = (room as usize).min(self.pending.len());
            let last = n == self.pending.len() && self.end && self.trailers.is_none();
            frame::write(
                to.out.queue(),
                kind::DATA,
                end_flag(last),
                stream,
                &self.pending[..n],
            );
            self.pending.drain(..n);
            self.send_window -= n as i64;
            to.send_window -= n as i64;
            self.sent += n as u64;
            sent += n;
            self.ended |= last;
        }
        if self.pending.capacity() > 0 {
            self.pending = Vec::new();
        }
        if self.end && !self.ended {
            match self.trailers.take() {
                Some(block) => to.write_block(stream, &block, true),
                None => frame::write(to.out.queue(), kind::DATA, flag::END_STREAM, stream, &[]),
            }
            self.ended = true;
        }
        sent
    }

    /// Counts bytes passed on; returns a stream WINDOW_UPDATE's increment when half the
    /// window is owed back and the source may still send.
    pub fn give_back(&mut self, passed: usize) -> Option<u32> {
        self.unacked += passed as u32;
        if self.end || self.unacked < STREAM_WINDOW / 2 {
            return None;
        }
        let increment = std::mem::take(&mut self.unacked);
        self.recv_window += i64::from(increment);
        Some(increment)
    }
}

fn end_flag(last: bool) -> u8 {
    if last {
        flag::END_STREAM
    } else {
        0
    }
}

/// Where a stream's request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Waiting for, or open on, the backend connection in this slot.
    Backend(usize),
    /// Answered by the relay itself (404, 502, ...).
    Local,
}

/// A client stream and its backend stream (the same identifier on both connections).
#[derive(Debug)]
pub struct Stream {
    pub target: Target,
    /// The request's field block for the backend, until it is sent (a stream waits while
    /// its backend connects or is at its stream limit).
    pub request: Option<Vec<u8>>,
    /// Client to backend.
    pub up: Flow,
    /// Backend to client.
    pub down: Flow,
    /// The final response's HEADERS went to the client.
    pub responded: bool,
    /// The path, for log lines.
    pub path: Box<str>,
    /// Its route's index once routed, for the metrics.
    pub route: Option<usize>,
    /// When its request began, for the backend's answer time.
    pub began: std::time::Instant,
    /// Since when it has moved too little (its answer waiting for a client that takes
    /// none of it, or its upload for a backend), and what had been sent then, both ways
    /// ([`Flow::sent`]).
    pub held: Option<(std::time::Instant, u64)>,
    /// Its whole answer came and waits for the client, its backend gone (it reset the
    /// stream with NO_ERROR, or its connection ended): no backend's window counts what it
    /// holds, the relay does ([`super::Relay::detach`]).
    pub detached: bool,
    /// Its access line's facts, while the access log is on.
    pub access: Option<Box<AccessRecord>>,
}

/// What a stream's access line says, kept while the daemon's access log is on (ABI 1.8:
/// [`protocol_api::access`]): one line for each stream, as nginx and HAProxy log each
/// request, beside the daemon's line for the connection.
#[derive(Debug, Default)]
pub struct AccessRecord {
    pub method: Box<str>,
    /// `:path` as the client sent it.
    pub target: Box<str>,
    /// The final answer's status, once one went to the client.
    pub status: Option<u16>,
    /// Field blocks' bytes from and to the client (DATA is counted by the flows).
    pub blocks_in: u64,
    pub blocks_out: u64,
    /// Why the stream ended without its answer whole (a reset), if it did.
    pub reason: Option<String>,
    /// The request's `:authority` (or `host`), `origin`, `referer` and `user-agent`, cut
    /// at [`LOGGED_FIELD`].
    pub named: [Option<Box<str>>; 4],
}

/// Most bytes of a named field (`user-agent` and the like) a line shows: a quarter of what
/// the daemon shows of an HTTP/1.1 request's, as HPACK lets a client send each again for a
/// byte, so that a stream's line stays within about 1.6 KB (a browser's `User-Agent` is
/// about 110 bytes, a gRPC client's 30).
pub const LOGGED_FIELD: usize = 128;

/// Most bytes of a request's `:path` (and a tenth as many of its `:method`) an access
/// line shows: HPACK lets a client send a 16 KiB path again for a byte or two, and the
/// line would be 16 KiB each time.
pub const LOGGED_TARGET: usize = 1024;

impl AccessRecord {
    /// A request's record, its method and target as they came, cut (marked `...`);
    /// `field(name)` gives a field of its block.
    pub fn new<'a>(field: impl Fn(&[u8]) -> Option<&'a [u8]>, block_len: usize) -> AccessRecord {
        let host = field(b":authority").or_else(|| field(b"host"));
        let named = [
            host,
            field(b"origin"),
            field(b"referer"),
            field(b"user-agent"),
        ];
        AccessRecord {
            method: cut(field(b":method").unwrap_or(b"-"), LOGGED_TARGET / 10),
            target: cut(field(b":path").unwrap_or(b"-"), LOGGED_TARGET),
            blocks_in: block_len as u64,
            named: named.map(|value| value.map(|value| cut(value, LOGGED_FIELD))),
            ..AccessRecord::default()
        }
    }

    /// The named fields as the daemon takes them.
    pub fn named(&self) -> protocol_api::access::Named<'_> {
        let [host, origin, referer, user_agent] = self.named.each_ref().map(Option::as_deref);
        protocol_api::access::Named {
            host,
            origin,
            referer,
            user_agent,
        }
    }
}

/// `bytes` as text, at most `max` bytes of it (at a character's end) and `...` if cut
/// (the relay's stream lines and the hyper engine's, [`crate::stream_log`]).
pub(crate) fn cut(bytes: &[u8], max: usize) -> Box<str> {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= max {
        return text.into();
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", &text[..end]).into()
}

impl Stream {
    /// Open on its backend: HEADERS went out.
    pub fn is_open_on_backend(&self) -> bool {
        matches!(self.target, Target::Backend(_)) && self.request.is_none()
    }

    /// Both directions are over.
    pub fn is_done(&self) -> bool {
        self.up.ended && self.down.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Head;

    #[test]
    fn an_access_record_cuts_a_long_path_at_a_character() {
        let record = AccessRecord::new(fields(b"GET", b"/short?x=1"), 12);
        assert_eq!((&*record.method, &*record.target), ("GET", "/short?x=1"));
        assert_eq!(record.blocks_in, 12);
        assert_eq!(record.named().host, Some("h.example"));
        assert_eq!(record.named().user_agent, Some("grpc-go/1.60"));
        assert_eq!(record.named().origin, None);
        let mut long = b"/".to_vec();
        long.extend("\u{e9}".repeat(LOGGED_TARGET).as_bytes());
        let record = AccessRecord::new(fields(&[b'M'; 500], &long), 0);
        assert_eq!(record.method.len(), LOGGED_TARGET / 10 + 3);
        assert!(record.target.ends_with("\u{e9}..."), "{}", record.target);
        assert_eq!(
            record.target.len(),
            LOGGED_TARGET - 1 + 3,
            "cut before a 2-byte character"
        );
        assert_eq!(
            &*AccessRecord::new(fields(b"\xff", b"/"), 0).method,
            "\u{fffd}"
        );
    }

    /// A block's fields: `:method` and `:path` as given, an authority and a user agent.
    fn fields<'a>(method: &'a [u8], path: &'a [u8]) -> impl Fn(&[u8]) -> Option<&'a [u8]> {
        move |name| match name {
            b":method" => Some(method),
            b":path" => Some(path),
            b":authority" => Some(b"h.example"),
            b"user-agent" => Some(b"grpc-go/1.60"),
            _ => None,
        }
    }

    fn frames(mut bytes: &[u8]) -> Vec<(Head, Vec<u8>)> {
        let mut all = Vec::new();
        while let Some(head) = Head::parse(bytes) {
            let end = frame::HEAD_LEN + head.len as usize;
            all.push((head, bytes[frame::HEAD_LEN..end].to_vec()));
            bytes = &bytes[end..];
        }
        all
    }

    /// A peer whose connection window is `window`, its SETTINGS as they start.
    fn peer(window: i64) -> Peer {
        let mut peer = Peer::new();
        peer.send_window = window;
        peer
    }

    #[test]
    fn data_within_the_windows_passes_at_once_in_frames_of_the_largest_size() {
        let mut flow = Flow::new(65_535);
        let mut to = peer(1 << 20);
        let passed = flow.take(3, &[1; 40_000], 40_000, true, &mut to);
        assert_eq!(passed, 40_000);
        let sent = frames(to.out.queue());
        let lens: Vec<u32> = sent.iter().map(|(h, _)| h.len).collect();
        assert_eq!(lens, [16_384, 16_384, 7_232]);
        assert_eq!(sent[2].0.flags, flag::END_STREAM);
        assert!(flow.ended && flow.is_empty());
        assert_eq!(to.send_window, (1 << 20) - 40_000);
    }

    #[test]
    fn data_past_the_window_waits_then_goes_with_its_trailers() {
        let mut flow = Flow::new(10);
        let mut to = peer(1 << 20);
        assert_eq!(flow.take(1, b"0123456789abcdef", 16, false, &mut to), 10);
        flow.end = true;
        flow.trailers = Some(vec![0x88]);
        assert_eq!(flow.drain(1, &mut to), 0);
        assert!(!flow.ended);
        flow.send_window += 100;
        assert_eq!(flow.drain(1, &mut to), 6);
        let sent = frames(to.out.queue());
        assert_eq!(sent[1].1, b"abcdef");
        assert_eq!(sent[1].0.flags, 0);
        assert_eq!(sent[2].0.kind, kind::HEADERS);
        assert_eq!(sent[2].0.flags, flag::END_STREAM | flag::END_HEADERS);
        assert!(flow.ended);
    }

    /// RFC 7541 §4.2: trailers may be the first block after a peer lowered its table size;
    /// they then carry the update.
    #[test]
    fn trailers_carry_a_table_size_update_owed() {
        let mut flow = Flow::new(10);
        let mut to = peer(1 << 20);
        to.table_size_update = Some(0);
        flow.end = true;
        flow.trailers = Some(vec![0x88]);
        flow.drain(1, &mut to);
        let sent = frames(to.out.queue());
        assert_eq!(sent[0].1, [0x20, 0x88]);
        assert_eq!(to.table_size_update, None);
    }

    #[test]
    fn the_connection_window_holds_every_stream_back() {
        let mut flow = Flow::new(65_535);
        let mut to = peer(5);
        assert_eq!(flow.take(1, b"0123456789", 10, false, &mut to), 5);
        assert_eq!(flow.pending, b"56789");
        assert_eq!(to.send_window, 0);
    }

    #[test]
    fn a_burst_of_resets_is_one_run_and_only_the_latest_runs_are_remembered() {
        let mut sent = ResetSent::default();
        // 1,000 refusals in a row: one run.
        for id in (1..2_000).step_by(2) {
            sent.note(id);
        }
        assert!(sent.contains(1) && sent.contains(1_001) && sent.contains(1_999));
        assert!(!sent.contains(2_001) && !sent.contains(2));
        // Runs of one, each apart: the oldest go.
        for id in (3_001..).step_by(4).take(RESETS_REMEMBERED) {
            sent.note(id);
        }
        assert!(!sent.contains(1), "the first run was pushed out");
        assert!(sent.contains(3_001));
    }

    #[test]
    fn a_stream_the_client_ended_is_forgotten_and_its_run_split() {
        let mut sent = ResetSent::default();
        for id in [1, 3, 5, 7, 9] {
            sent.note(id);
        }
        assert!(sent.forget(5));
        assert!(!sent.forget(5), "once");
        assert!(!sent.contains(5));
        assert!(sent.forget(1) && sent.forget(9));
        assert!(sent.contains(3) && sent.contains(7));
        assert!(sent.forget(3) && sent.forget(7));
        assert!(!sent.contains(3) && sent.runs.is_empty());
    }

    #[test]
    fn window_is_given_back_by_halves_and_not_after_the_end() {
        let mut flow = Flow::new(65_535);
        assert_eq!(flow.give_back(30_000), None);
        assert_eq!(flow.give_back(3_000), Some(33_000));
        flow.end = true;
        assert_eq!(flow.give_back(40_000), None);
    }
}
