//! The HTTP/1.1 connection over a scripted transport: input arrives in the pieces a test
//! chooses, the socket takes as much output as a test allows, and the connection is
//! turned as the event loop turns it (a readable event, then `turn`). What is checked is
//! what the client would see on the wire.

use super::*;
use crate::daemon::config::Config;
use protocol_api::kernel_share::KERNEL_UNSENT_LIMIT;
use std::collections::VecDeque;

/// What one read of the scripted socket returns.
enum Arrival {
    Bytes(Vec<u8>),
    /// The peer's end (a read of 0).
    End,
    Reset,
}

/// A socket whose input is scripted and whose output is kept.
#[derive(Default)]
struct Scripted {
    reads: VecDeque<Arrival>,
    /// What the client received.
    sent: Vec<u8>,
    /// Bytes writes may still take before `WouldBlock` (the client's window).
    room: usize,
    write_shut: bool,
    /// The kernel holds what was written unsent past this many bytes of `sent` (`None`:
    /// the transport cannot say).
    sent_through: Option<usize>,
    /// What the connection last asked of the socket's writable reports.
    writable_below: Option<Option<u32>>,
    /// What the peer has acknowledged, as the kernel would say (`None`: cannot say).
    acked: Option<u32>,
}

impl io::Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.reads.pop_front() {
            None => Err(io::ErrorKind::WouldBlock.into()),
            Some(Arrival::End) => {
                self.reads.push_front(Arrival::End);
                Ok(0)
            }
            Some(Arrival::Reset) => Err(io::ErrorKind::ConnectionReset.into()),
            Some(Arrival::Bytes(mut bytes)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                if n < bytes.len() {
                    self.reads.push_front(Arrival::Bytes(bytes.split_off(n)));
                }
                Ok(n)
            }
        }
    }
}

impl io::Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.write_shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.sent.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Scripted {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        Ok(())
    }

    fn acked(&self) -> Option<u32> {
        self.acked
    }

    fn unsent(&self) -> Option<usize> {
        self.sent_through.map(|through| self.sent.len() - through)
    }

    fn report_writable_below(&mut self, bytes: Option<u32>) -> bool {
        self.writable_below = Some(bytes);
        bytes.is_none()
            || self
                .unsent()
                .is_none_or(|unsent| unsent < bytes.unwrap() as usize)
    }
}

/// A connection of a daemon with these settings and no plugins, and what a loop would
/// lend it.
struct Harness {
    conn: HttpConn<Scripted>,
    shared: &'static Shared,
    date: DateCache,
    scratch: Vec<u8>,
    metrics: MetricsCache,
    now: Instant,
}

impl Harness {
    fn with(settings: &[(&str, &str)]) -> Harness {
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = Config::from_lookup(|name| {
            settings
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("valid settings");
        let registry: &'static Registry = Box::leak(Box::default());
        let shared: &'static Shared = Box::leak(Box::new(Shared::new(config, registry, None)));
        let now = Instant::now();
        let ticket = shared.try_open().expect("room for a connection");
        let stream = Scripted {
            room: usize::MAX,
            ..Scripted::default()
        };
        let peer = "192.0.2.7:40000".parse().unwrap();
        let mut conn = HttpConn::new(stream, peer, ticket, shared, now);
        conn.admit();
        Harness {
            conn,
            shared,
            date: DateCache::default(),
            scratch: vec![0; SCRATCH_BYTES],
            metrics: MetricsCache::default(),
            now,
        }
    }

    fn new() -> Harness {
        Harness::with(&[])
    }

    fn cx(&mut self) -> Context<'_> {
        Context {
            shared: self.shared,
            date: &mut self.date,
            scratch: &mut self.scratch,
            now: self.now,
            metrics: &mut self.metrics,
        }
    }

    /// The client sends `bytes`; the loop gets a readable event and turns the connection.
    fn send(&mut self, bytes: &[u8]) -> After {
        self.conn
            .stream
            .reads
            .push_back(Arrival::Bytes(bytes.to_vec()));
        self.turn()
    }

    fn arrive(&mut self, arrival: Arrival) -> After {
        self.conn.stream.reads.push_back(arrival);
        self.turn()
    }

    fn turn(&mut self) -> After {
        self.conn.readable = true;
        self.conn.writable = true;
        let mut conn = std::mem::replace(&mut self.conn, placeholder(self.shared));
        let after = conn.turn(&mut self.cx());
        self.conn = conn;
        after
    }

    fn expire_at(&mut self, at: Instant) -> After {
        self.now = at;
        let mut conn = std::mem::replace(&mut self.conn, placeholder(self.shared));
        let after = conn.expire(&mut self.cx());
        self.conn = conn;
        after
    }

    /// Everything the client has received, as text.
    fn received(&self) -> String {
        String::from_utf8_lossy(&self.conn.stream.sent).into_owned()
    }

    /// The status codes of the responses the client has received, in order.
    fn statuses(&self) -> Vec<u16> {
        let received = self.received();
        received
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| received[at + 9..at + 12].parse().unwrap())
            .collect()
    }
}

/// A stand-in while the real connection is borrowed out (its ticket comes from the
/// same daemon, so the limit counts one more for a moment).
fn placeholder(shared: &'static Shared) -> HttpConn<Scripted> {
    let ticket = shared.try_open().expect("room for a connection");
    HttpConn::new(
        Scripted::default(),
        "192.0.2.1:1".parse().unwrap(),
        ticket,
        shared,
        Instant::now(),
    )
}

fn is_keep(after: &After) -> bool {
    matches!(after, After::Keep)
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";

#[test]
fn a_head_split_at_every_byte_is_answered_once_when_whole() {
    for split in 1..HEALTHZ.len() {
        let mut h = Harness::new();
        assert!(is_keep(&h.send(&HEALTHZ[..split])));
        assert_eq!(
            h.received(),
            "",
            "answered before the head was whole (split {split})"
        );
        assert!(is_keep(&h.send(&HEALTHZ[split..])));
        assert_eq!(h.statuses(), [200], "split at {split}");
        assert!(
            h.conn.is_idle(),
            "ready for the next request (split {split})"
        );
    }
}

#[test]
fn a_head_sent_a_byte_at_a_time_is_answered_once() {
    let mut h = Harness::new();
    for byte in HEALTHZ {
        h.send(&[*byte]);
    }
    assert_eq!(h.statuses(), [200]);
}

#[test]
fn pipelined_requests_in_one_read_are_answered_in_order() {
    let mut h = Harness::new();
    let mut three = Vec::new();
    three.extend_from_slice(HEALTHZ);
    three.extend_from_slice(b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n");
    three.extend_from_slice(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(is_keep(&h.send(&three)));
    // 404: with no plugin loaded nothing would switch (426 needs a protocol to name).
    assert_eq!(h.statuses(), [200, 404, 200]);
    let text = h.received();
    let head_answer = &text[text.rfind("HTTP/1.1 200").unwrap()..];
    assert!(
        head_answer.ends_with("\r\n\r\n"),
        "the HEAD answer has no body: {head_answer:?}"
    );
}

#[test]
fn a_request_split_across_a_pipelined_one_keeps_its_bytes() {
    let mut h = Harness::new();
    let mut both = HEALTHZ.to_vec();
    both.extend_from_slice(HEALTHZ);
    let cut = HEALTHZ.len() + 5;
    h.send(&both[..cut]);
    assert_eq!(h.statuses(), [200]);
    h.send(&both[cut..]);
    assert_eq!(h.statuses(), [200, 200]);
}

#[test]
fn a_client_that_reads_nothing_is_not_read_past_the_output_limit() {
    let mut h = Harness::new();
    h.conn.stream.room = 0; // the client's window is shut
    let many: Vec<u8> = HEALTHZ.repeat(5_000); // ~175 KB of requests
    h.send(&many);
    while h.conn.wants_again() {
        h.turn(); // as the loop turns it again, a share of requests a turn
    }
    let owed = h.conn.output.owed();
    assert!(
        (OUTPUT_LIMIT..OUTPUT_LIMIT + 1024).contains(&owed),
        "stopped answering at the limit, owing {owed}"
    );
    assert!(
        !h.conn.input.is_empty(),
        "the unanswered requests wait, unparsed"
    );
    // What waits unparsed is at most a head's limit (and a byte): the rest waits in the
    // client's socket (a 64 KiB read of it was kept before, an attacker's review).
    let max_head = h.shared.config.max_header_bytes;
    assert!(
        h.conn.input.len() <= max_head + 1,
        "{} bytes of requests held",
        h.conn.input.len()
    );
    // The client reads: everything is answered, nothing lost.
    h.conn.stream.room = usize::MAX;
    for _ in 0..100 {
        if h.statuses().len() == 5_000 {
            break;
        }
        h.turn();
    }
    assert_eq!(h.statuses().len(), 5_000);
    assert!(h.statuses().iter().all(|s| *s == 200));
}

/// The attacker's review of run 21: a client that reads its answers and pipelines requests
/// had 7,700 of them answered (and logged) in one turn, the kernel taking the answers, while
/// every other connection of the loop waited. A turn answers at most
/// [`REQUESTS_PER_TURN`]; the loop turns the connection again after the others, and every
/// request is answered, in order, nothing lost.
#[test]
fn a_turn_answers_a_share_of_pipelined_requests_and_the_rest_come_after() {
    let mut h = Harness::new();
    let many: Vec<u8> = HEALTHZ.repeat(1_000);
    assert!(is_keep(&h.send(&many)));
    assert_eq!(h.statuses().len(), REQUESTS_PER_TURN as usize);
    assert!(
        h.conn.wants_again(),
        "more to answer, after the loop's others"
    );
    let max_head = h.shared.config.max_header_bytes;
    assert!(
        h.conn.input.len() <= max_head + 1,
        "the rest waits in the socket"
    );
    let mut turns = 1;
    while h.conn.wants_again() {
        assert!(is_keep(&h.turn()));
        turns += 1;
        assert!(turns <= 1_000, "no progress");
    }
    assert_eq!(h.statuses().len(), 1_000);
    assert!(h.statuses().iter().all(|s| *s == 200));
    assert_eq!(turns, 1_000usize.div_ceil(REQUESTS_PER_TURN as usize));
}

/// The attacker's review of run 21: a client pipelining requests it never reads the answers
/// of had megabytes of them taken by the kernel (2.8 MB a connection) before the output
/// limit counted any. Once the kernel holds more than [`KERNEL_UNSENT_LIMIT`] unsent,
/// requests wait, and the socket is made to report writable only below half of it; when it
/// does, they go on, nothing lost.
#[test]
fn a_client_that_reads_nothing_has_the_kernel_hold_little_of_ours() {
    let mut h = Harness::new();
    h.conn.stream.sent_through = Some(0); // the client's window is shut: nothing leaves
    h.send(&HEALTHZ.repeat(5_000));
    let mut turns = 0;
    while h.conn.wants_again() && turns < 1_000 {
        h.conn.readable = true; // no writable event: the socket does not report one
        let mut conn = std::mem::replace(&mut h.conn, placeholder(h.shared));
        conn.turn(&mut h.cx());
        h.conn = conn;
        turns += 1;
    }
    let held = h.conn.stream.unsent().unwrap();
    assert!(h.conn.kernel.is_full(), "waits for the client");
    assert!(
        (KERNEL_UNSENT_LIMIT..KERNEL_UNSENT_LIMIT + 16 * 1024).contains(&held),
        "the kernel holds {held} bytes of answers"
    );
    let limit = KERNEL_UNSENT_LIMIT as u32;
    assert_eq!(h.conn.stream.writable_below, Some(Some(limit / 2)));
    // The client reads; the socket reports writable: the rest is answered.
    h.conn.stream.sent_through = None;
    for _ in 0..1_000 {
        if h.statuses().len() == 5_000 {
            break;
        }
        h.turn();
    }
    assert_eq!(h.statuses().len(), 5_000);
    assert_eq!(
        h.conn.stream.writable_below,
        Some(None),
        "as the system has it again"
    );
}

/// Review of cbe55e6: a client that pipelined requests and then sent its end (as
/// `printf ... | nc` does) had the connection closed after the first turn's share of
/// answers, the rest of its requests dropped. They are all answered, then it closes.
#[test]
fn requests_pipelined_before_the_clients_end_are_all_answered() {
    let mut h = Harness::new();
    h.conn
        .stream
        .reads
        .push_back(Arrival::Bytes(HEALTHZ.repeat(1_000)));
    let mut after = h.arrive(Arrival::End);
    let mut turns = 1;
    while is_keep(&after) && turns < 1_000 {
        after = h.turn();
        turns += 1;
    }
    assert_eq!(h.statuses().len(), 1_000, "every request answered");
    assert!(matches!(after, After::Close), "then closed");
}

/// Review of 7fd9fc3: requests waiting for a client to take our answers from the kernel
/// were cut at the head time-out (408 and a reset) though the client was reading, slowly.
/// They have the write time-out, renewed while the client takes something, as a static
/// file's reader has; a client that takes nothing for it is closed.
#[test]
fn requests_waiting_on_the_kernel_have_the_write_time_out_while_the_client_takes() {
    let mut h = Harness::new();
    h.conn.stream.sent_through = Some(0);
    h.conn.stream.acked = Some(0);
    h.send(&HEALTHZ.repeat(5_000));
    while h.conn.wants_again() {
        h.conn.readable = true;
        let mut conn = std::mem::replace(&mut h.conn, placeholder(h.shared));
        conn.turn(&mut h.cx());
        h.conn = conn;
    }
    assert!(h.conn.kernel.is_full());
    let write_timeout = h.shared.config.write_timeout;
    let head_timeout = h.shared.config.header_timeout;
    let mut at = h.now + head_timeout + Duration::from_millis(1);
    assert!(is_keep(&h.expire_at(at)), "not the head time-out");
    // The client takes a little each time: kept.
    for taken in 1..4 {
        h.conn.stream.acked = Some(taken * 1000);
        at += write_timeout;
        assert!(is_keep(&h.expire_at(at)), "still taking");
    }
    // Then nothing for the write time-out: closed.
    at += write_timeout;
    assert!(matches!(h.expire_at(at), After::Close));
    let answered = h.statuses().len();
    assert!(answered < 5_000 && h.statuses().iter().all(|s| *s == 200));
}

#[test]
fn an_answer_the_socket_takes_in_pieces_arrives_whole() {
    let mut h = Harness::new();
    h.conn.stream.room = 7;
    h.send(HEALTHZ);
    assert_eq!(h.conn.stream.sent.len(), 7);
    while !h.conn.output.is_done() {
        h.conn.stream.room = 7;
        h.turn();
    }
    assert_eq!(h.statuses(), [200]);
    assert!(h.received().ends_with("\r\n\r\nok\n"), "{}", h.received());
}

#[test]
fn an_end_mid_head_closes_without_an_answer() {
    let mut h = Harness::new();
    h.send(&HEALTHZ[..10]);
    let after = h.arrive(Arrival::End);
    assert!(matches!(after, After::Close));
    assert_eq!(h.received(), "");
}

#[test]
fn an_end_after_a_whole_request_still_gets_its_answer() {
    let mut h = Harness::new();
    h.conn.stream.room = 0; // the client is slow to read
    assert!(is_keep(&h.send(HEALTHZ)));
    assert!(
        is_keep(&h.arrive(Arrival::End)),
        "the answer is owed: the connection stays until it is written"
    );
    h.conn.stream.room = usize::MAX;
    assert!(matches!(h.turn(), After::Close));
    assert_eq!(h.statuses(), [200]);
    assert!(h.received().ends_with("ok\n"), "the whole answer went out");
}

#[test]
fn a_reset_closes() {
    let mut h = Harness::new();
    h.send(&HEALTHZ[..5]);
    assert!(matches!(h.arrive(Arrival::Reset), After::Close));
}

#[test]
fn a_bad_head_gets_400_then_our_side_is_shut() {
    let mut h = Harness::new();
    h.send(b"GET / HTTP/1.1\r\nHost: a\r\nBad header\r\n\r\n");
    assert_eq!(h.statuses(), [400]);
    assert!(h.received().contains("Connection: close"));
    assert!(
        h.conn.stream.write_shut,
        "lingering: write side shut, reading on"
    );
    // What the client sends while we linger is read and dropped, not answered.
    h.send(HEALTHZ);
    assert_eq!(h.statuses(), [400]);
    assert!(matches!(h.arrive(Arrival::End), After::Close));
}

#[test]
fn rfc9112_head_time_out_is_408_but_idle_keep_alive_just_closes() {
    let mut h = Harness::new();
    let timeout = h.shared.config.header_timeout;
    h.send(&HEALTHZ[..10]);
    let later = h.now + timeout + Duration::from_millis(1);
    h.expire_at(later);
    assert_eq!(h.statuses(), [408]);

    let mut h = Harness::new();
    h.send(HEALTHZ);
    let later = h.now + timeout * 2;
    assert!(matches!(h.expire_at(later), After::Close));
    assert_eq!(h.statuses(), [200], "no 408 to a client between requests");
}

#[test]
fn a_body_of_a_plain_request_is_skipped_and_the_next_request_served() {
    let mut h = Harness::new();
    let mut bytes = b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n".to_vec();
    h.send(&bytes);
    bytes = b"hello".to_vec();
    bytes.extend_from_slice(HEALTHZ);
    h.send(&bytes[..3]);
    h.send(&bytes[3..]);
    assert_eq!(h.statuses(), [405, 200]);
}

#[test]
fn a_head_over_the_limit_is_431_however_it_arrives() {
    let mut h = Harness::with(&[("SWITCHYARD_MAX_HEADER_BYTES", "1024")]);
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 2_000));
    for piece in head.chunks(100) {
        h.send(piece);
    }
    assert_eq!(h.statuses(), [431]);
    assert!(
        h.conn.input.len() < 4 * 1024,
        "not read past the limit: {}",
        h.conn.input.len()
    );
}

#[test]
fn a_client_over_its_connection_share_gets_503_before_it_sends() {
    let h = Harness::with(&[
        ("SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT", "1"),
        ("SWITCHYARD_WORKERS_PER_CLIENT", "1"),
    ]);
    // The harness's connection is the client's one; a second from the same address:
    let shared = h.shared;
    let ticket = shared.try_open().unwrap();
    let stream = Scripted {
        room: usize::MAX,
        ..Scripted::default()
    };
    let mut second = Harness {
        conn: HttpConn::new(stream, h.conn.peer, ticket, shared, h.now),
        shared,
        date: DateCache::default(),
        scratch: vec![0; SCRATCH_BYTES],
        metrics: MetricsCache::default(),
        now: h.now,
    };
    second.conn.admit();
    second.turn();
    assert_eq!(second.statuses(), [503]);
    assert!(second.received().contains("Retry-After: 1\r\n"));
}

#[test]
fn a_request_and_the_clients_end_in_one_event_are_both_seen() {
    let mut h = Harness::new();
    // Both arrive before the loop looks: one readable event that also says the peer shut
    // its side. A short read alone would not show the end that follows the bytes.
    h.conn
        .stream
        .reads
        .push_back(Arrival::Bytes(HEALTHZ.to_vec()));
    h.conn.hung_up = true;
    let after = h.arrive(Arrival::End);
    assert!(matches!(after, After::Close), "the end is seen at once");
    assert_eq!(h.statuses(), [200], "after the answer");
}
