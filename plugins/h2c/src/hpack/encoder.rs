//! A connection's HPACK encoder: the relay's literal field blocks (see the parent module)
//! written again with the connection's dynamic table (RFC 7541 §2.3.2, §4), so that what
//! every message of a connection repeats crosses as an index of a byte or two, not as a
//! literal the peer copies out again each time. A backend connection's requests
//! (`:authority`, `user-agent`, `content-type`, the forwarding fields, a gRPC method's
//! `:path`: the relay sent nghttpd 56 bytes a request, h2load alone 14, and nghttpd spent
//! 3.47 us a request on the relay's against 3.15 with the table), and a client
//! connection's answers (`server`, `content-type`, `cache-control`, `date` while it
//! stays the same second: 122 bytes an answer from nghttpd as literals, 11 with the
//! table) and trailers (gRPC's `grpc-status`). Every block the relay sends a peer goes
//! through its connection's encoder, in the order it goes out
//! ([`crate::relay::peer::Peer::write_block`]).
//!
//! What is never indexed: a field that came never indexed (RFC 7541 §7.1.3: an
//! intermediary keeps that representation), credentials (`authorization`,
//! `proxy-authorization`, `cookie`, `set-cookie`), fields whose values change with each
//! message ([`CHURNS`], and a `:path` with a query), and an entry past a quarter of the
//! table (it would evict the rest). What a block may cost is bounded: 64 fields looked
//! up, a pass over 64 entries at most each, 16 added; a table is two allocations, 5 KiB
//! and 1 KiB at most, grown as entries come (a few hundred bytes for a few fields). The
//! table is used only once the peer's SETTINGS came and while it never lowered
//! SETTINGS_HEADER_TABLE_SIZE ([`Encoder::transcode`]'s `usable`): a decoder that shrinks
//! its table before the encoder says so (seen) would otherwise lose entries referred to.
//! A connection gone quiet lets its table go ([`Encoder::forget`]).

use super::{integer, read_integer, string, walk, Part, STATIC_TABLE};
use std::collections::VecDeque;

/// The table's size, the protocol's initial SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2):
/// a backend that announces more is not asked for it (a table size update would be owed).
pub const TABLE_SIZE: usize = 4_096;
/// Fields of one block looked up in the table; the rest go as they came. A look is a pass
/// over the table's entries ([`MOST_ENTRIES`] at most): a client that sent the header
/// list's limit in fields of a byte each, each a reference to its own table, had the relay
/// pass over the table some 480 times a request. Requests and answers have fewer than 30
/// fields as a rule.
const MOST_LOOKED_UP: usize = 64;
/// Fields one block may add to the table; past them, a field not found goes as it came.
/// A block of new fields each time (a review: 62 fields cycling over 130 names) would
/// otherwise replace the table's entries with each block, a copy and an eviction each.
const MOST_ADDED: usize = 16;
/// Entries the table holds at most, whatever their size: the bound of a look's pass (the
/// smallest entries would let 4,096 bytes hold 124).
const MOST_ENTRIES: usize = 64;
/// The entries' bytes are kept in one buffer, appended at its end and moved to its front
/// when the end would pass this: the table's bytes and one entry's more at most.
const BUFFER: usize = TABLE_SIZE + TABLE_SIZE / 4;
/// Credentials: never indexed, as nghttp2's encoder keeps them.
const SENSITIVE: &[&[u8]] = &[
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"set-cookie",
];
/// Fields whose values change with each request: indexed, they would only evict the
/// fields that repeat (nghttp2's encoder leaves the same out).
const CHURNS: &[&[u8]] = &[
    b"content-length",
    b"if-modified-since",
    b"if-none-match",
    b"etag",
    b"age",
    b"location",
    b"grpc-timeout",
    b"x-request-id",
    b"traceparent",
];

/// One table entry: where its name and value are in [`Encoder::bytes`], and their hashes
/// ([`hash`]), which a look compares before any byte.
#[derive(Clone, Copy)]
struct Entry {
    at: u32,
    name: u16,
    value: u16,
    name_hash: u32,
    hash: u32,
}

/// A hash of `bytes` that reads at most 16 of them (its length, its first and last eight):
/// an entry that differs only in its middle costs a comparison of bytes, and a long value
/// costs no more to look up than a short one.
fn hash(bytes: &[u8]) -> u32 {
    let word = |part: &[u8]| {
        let mut eight = [0u8; 8];
        eight[..part.len()].copy_from_slice(part);
        u64::from_le_bytes(eight)
    };
    let n = bytes.len();
    let (head, tail) = (word(&bytes[..n.min(8)]), word(&bytes[n - n.min(8)..]));
    let mixed = head.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ tail.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ n as u64;
    (mixed >> 32) as u32 ^ mixed as u32
}

impl Entry {
    fn end(&self) -> usize {
        self.at as usize + self.name as usize + self.value as usize
    }

    /// RFC 7541 §4.1: name, value and 32.
    fn size(&self) -> usize {
        self.name as usize + self.value as usize + 32
    }
}

/// The dynamic table as the peer's decoder holds it: entries newest first (index 62 is
/// the front, RFC 7541 §2.3.3), their bytes in one buffer (two allocations a table, however
/// many entries: a table of small entries took 122, 7.0 KB, in a review).
#[derive(Default)]
pub struct Encoder {
    /// The entries' names and values, oldest first, from the oldest's `at` to the end.
    bytes: Vec<u8>,
    entries: VecDeque<Entry>,
    /// The entries' size as RFC 7541 §4.1 counts it.
    size: usize,
    /// The table was let go with entries in it ([`Encoder::forget`]): the next block
    /// that uses it empties the decoder's first.
    emptying_owed: bool,
}

impl Encoder {
    /// Appends `block`, a field block of the relay's making (literals without indexing or
    /// never indexed, static indices, raw strings), to `out` with the table used where it
    /// may be: a field in the table as its index, a field worth indexing added to it
    /// (§6.2.1), the rest as they came. With `usable` false (the backend's SETTINGS not
    /// come yet, or its table lowered) the block goes as it is and the table is not
    /// referred to again until it is usable.
    pub fn transcode(&mut self, block: &[u8], out: &mut Vec<u8>, usable: bool) {
        if !usable || !is_literal_block(block) {
            debug_assert!(is_literal_block(block), "not a block of the relay's making");
            self.clear();
            out.extend_from_slice(block);
            return;
        }
        if !block.is_empty() && std::mem::take(&mut self.emptying_owed) {
            // §6.3: a table size update to 0 empties the decoder's table, one back to the
            // initial size lets it grow again (§4.2 allows two at a block's start). Not
            // in a block of no field (decoders refuse a block of updates alone).
            integer(out, 5, 0x20, 0);
            integer(out, 5, 0x20, TABLE_SIZE);
        }
        let mut at = 0;
        let (mut looked_up, mut added) = (0, 0);
        while at < block.len() {
            let first = block[at];
            let (index, taken) =
                read_integer(&block[at..], if first >= 0x80 { 7 } else { 4 }).expect("checked");
            let head = &block[at..at + taken];
            at += taken;
            if first >= 0x80 {
                out.extend_from_slice(head);
                continue;
            }
            let start = at;
            let name = match index {
                0 => {
                    let (name, next) = read_string(block, at);
                    at = next;
                    name
                }
                index => STATIC_TABLE[index - 1].0.as_bytes(),
            };
            let (value, next) = read_string(block, at);
            at = next;
            let never = first & 0xf0 == 0x10;
            looked_up += usize::from(!never);
            let written = !never
                && looked_up <= MOST_LOOKED_UP
                && self.field(out, index, name, value, &mut added);
            if !written {
                out.extend_from_slice(head);
                out.extend_from_slice(&block[start..at]);
            }
        }
    }

    /// A table whose first block empties the decoder's first (`owed`): what was let go
    /// of a peer's ([`Encoder::forget`]).
    pub fn owing_emptying(owed: bool) -> Encoder {
        Encoder {
            emptying_owed: owed,
            ..Encoder::default()
        }
    }

    /// The next block that uses the table empties the decoder's first.
    pub fn owes_emptying(&self) -> bool {
        self.emptying_owed
    }

    /// Lets the table go (a quiet connection keeps nothing of its busy times); the next
    /// block that uses it has the decoder's emptied first, four bytes.
    pub fn forget(&mut self) {
        if !self.entries.is_empty() {
            self.emptying_owed = true;
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.bytes = Vec::new();
        self.entries = VecDeque::new();
        self.size = 0;
    }

    fn name(&self, entry: &Entry) -> &[u8] {
        let at = entry.at as usize;
        &self.bytes[at..at + entry.name as usize]
    }

    fn value(&self, entry: &Entry) -> &[u8] {
        &self.bytes[entry.at as usize + entry.name as usize..entry.end()]
    }

    /// Writes a field whose static name index is `static_name` (0: none) by the table: its
    /// index, or a literal that adds it (`added` counts the block's); `false` when
    /// neither is worth it (the caller writes it as it came).
    fn field(
        &mut self,
        out: &mut Vec<u8>,
        static_name: usize,
        name: &[u8],
        value: &[u8],
        added: &mut usize,
    ) -> bool {
        // One pass: the field whole, or the newest entry with its name; hashes first.
        let name_hash = hash(name);
        let field_hash = hash(value) ^ name_hash.rotate_left(7);
        let mut same_name = None;
        for (at, entry) in self.entries.iter().enumerate() {
            if entry.name_hash == name_hash && self.name(entry) == name {
                if entry.hash == field_hash && self.value(entry) == value {
                    integer(out, 7, 0x80, STATIC_TABLE.len() + 1 + at);
                    return true;
                }
                same_name.get_or_insert(at);
            }
        }
        let size = name.len() + value.len() + 32;
        let churns = CHURNS.contains(&name) || (name == b":path" && value.contains(&b'?'));
        if *added >= MOST_ADDED || size > TABLE_SIZE / 4 || SENSITIVE.contains(&name) || churns {
            return false;
        }
        *added += 1;
        // The static table's name, or one already in the table, or a literal name.
        let name_index = match (static_name, same_name) {
            (0, Some(at)) => STATIC_TABLE.len() + 1 + at,
            (index, _) => index,
        };
        integer(out, 6, 0x40, name_index);
        if name_index == 0 {
            string(out, name);
        }
        string(out, value);
        while self.size + size > TABLE_SIZE || self.entries.len() >= MOST_ENTRIES {
            let evicted = self.entries.pop_back().expect("the size counts entries");
            self.size -= evicted.size();
        }
        // The oldest entry's bytes onwards are kept; moved to the front when the buffer
        // would pass its bound (at most the table's 4,096 bytes, once an entry's worth was
        // added: a copy for a quarter of the table added, at least).
        let oldest = self
            .entries
            .back()
            .map_or(self.bytes.len(), |e| e.at as usize);
        if self.bytes.len() + name.len() + value.len() > BUFFER {
            self.bytes.drain(..oldest);
            for entry in self.entries.iter_mut() {
                entry.at -= oldest as u32;
            }
        } else if self.entries.is_empty() {
            self.bytes.clear();
        }
        // Grown as entries come, doubling, to [`BUFFER`] at most: a table of a few fields
        // keeps a few hundred bytes (5 KiB reserved at once cost 10 KiB a connection with a
        // stream, its client's table and its backend's: the many-quiet-clients load went
        // from 4.0 to 8.5 KiB a connection).
        let needed = self.bytes.len() + name.len() + value.len();
        if needed > self.bytes.capacity() {
            let grown = (self.bytes.capacity() * 2).clamp(128, BUFFER).max(needed);
            self.bytes.reserve_exact(grown - self.bytes.len());
        }
        let at = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.entries.push_front(Entry {
            at,
            name: name.len() as u16,
            value: value.len() as u16,
            name_hash,
            hash: field_hash,
        });
        self.size += size;
        true
    }
}

/// The string at `at` of a checked literal block, and where the next part starts.
fn read_string(block: &[u8], at: usize) -> (&[u8], usize) {
    let (len, taken) = read_integer(&block[at..], 7).expect("checked");
    (&block[at + taken..at + taken + len], at + taken + len)
}

/// Whether `block` has only what the relay writes: static indices, literals without
/// indexing or never indexed with a static name or a literal one, raw strings.
fn is_literal_block(block: &[u8]) -> bool {
    let mut ok = true;
    let checked = walk(block, |part| {
        match part {
            Part::Head(head) => {
                let first = head[0];
                ok &= match first {
                    0x80..=0xff => read_integer(head, 7).is_ok_and(|(i, _)| (1..=61).contains(&i)),
                    0x00..=0x1f => read_integer(head, 4).is_ok_and(|(i, _)| i <= 61),
                    _ => false,
                };
            }
            Part::String { huffman, .. } => ok &= !huffman,
        }
        Ok(())
    });
    checked.is_ok() && ok
}

#[cfg(test)]
mod tests {
    use super::super::{field, never_indexed, Decoder, Fields};
    use super::*;

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            field(&mut out, name.as_bytes(), value.as_bytes());
        }
        out
    }

    fn decoded(decoder: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Fields::default();
        decoder.decode(block, &mut fields, 1 << 20).unwrap();
        (fields.iter())
            .map(|(n, v)| {
                let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                (text(n), text(v))
            })
            .collect()
    }

    fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        (fields.iter())
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc7541_2_3_repeated_fields_cross_as_indices_and_decode_the_same() {
        let request = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "127.0.0.1:8080"),
            (":path", "/index.html"),
            ("user-agent", "h2load nghttp2/1.52.0"),
            ("x-forwarded-for", "192.0.2.7"),
        ];
        let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
        let mut first = Vec::new();
        encoder.transcode(&block(&request), &mut first, true);
        assert_eq!(decoded(&mut decoder, &first), owned(&request));
        let mut second = Vec::new();
        encoder.transcode(&block(&request), &mut second, true);
        assert_eq!(decoded(&mut decoder, &second), owned(&request));
        // :method, :scheme and :path are static; the others were added in order, so the
        // last is 62 (0xbe) and :authority 64.
        assert_eq!(second, [0x82, 0x86, 0xc0, 0x85, 0xbf, 0xbe]);
        assert!(first.len() > 40);
    }

    #[test]
    fn credentials_churn_and_never_indexed_fields_stay_literals() {
        let mut plain = block(&[
            ("authorization", "Bearer secret"),
            ("cookie", "a=b"),
            ("content-length", "12"),
        ]);
        never_indexed(&mut plain, b"x-secret", b"s3cret");
        let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
        for _ in 0..2 {
            let mut out = Vec::new();
            encoder.transcode(&plain, &mut out, true);
            assert_eq!(out, plain, "the block goes as it came");
            assert_eq!(decoded(&mut decoder, &out).len(), 4);
        }
        assert!(encoder.entries.is_empty());
    }

    #[test]
    fn rfc7541_4_4_the_table_evicts_oldest_first_and_the_decoder_follows() {
        let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
        // 300 requests, each with a value of its own and one shared: the table fills and
        // evicts many times over.
        for i in 0..300 {
            let own = format!("value-{i}-{}", "x".repeat(i % 200));
            let fields = [
                ("x-own", own.as_str()),
                ("x-shared", "same"),
                ("x-old", "0"),
            ];
            let mut out = Vec::new();
            encoder.transcode(&block(&fields), &mut out, true);
            assert_eq!(decoded(&mut decoder, &out), owned(&fields), "request {i}");
            assert!(encoder.size <= TABLE_SIZE);
            let counted: usize = encoder.entries.iter().map(Entry::size).sum();
            assert_eq!(encoder.size, counted);
            assert!(encoder.bytes.capacity() <= BUFFER);
        }
        // An entry past a quarter of the table is never added.
        let long = "y".repeat(TABLE_SIZE / 4);
        let mut out = Vec::new();
        encoder.transcode(&block(&[("x-long", &long)]), &mut out, true);
        assert!(encoder.entries.iter().all(|e| encoder.name(e) != b"x-long"));
        assert_eq!(decoded(&mut decoder, &out), owned(&[("x-long", &long)]));
    }

    #[test]
    fn rfc7541_6_3_a_table_forgotten_is_emptied_at_the_decoder_by_the_next_block() {
        let fields = [("server", "nghttpd"), ("x-a", "1")];
        let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
        let mut out = Vec::new();
        encoder.transcode(&block(&fields), &mut out, true);
        decoded(&mut decoder, &out);
        encoder.forget();
        assert_eq!(encoder.entries.capacity(), 0, "nothing kept");
        out.clear();
        encoder.transcode(&[], &mut out, true);
        assert!(
            out.is_empty(),
            "a block of updates alone is refused by decoders"
        );
        encoder.transcode(&block(&fields), &mut out, true);
        assert_eq!(&out[..4], &[0x20, 0x3f, 0xe1, 0x1f], "sizes 0, then 4,096");
        assert_eq!(decoded(&mut decoder, &out), owned(&fields));
        // The decoder's table holds what the encoder's does, no more: 62 is the newest
        // entry, 64 is past the end.
        assert_eq!(decoded(&mut decoder, &[0xbf]), owned(&fields[..1]));
        let mut fields_out = Fields::default();
        assert!(decoder.decode(&[0xc0], &mut fields_out, 1 << 20).is_err());
        // Forgetting an empty table owes nothing.
        let mut empty = Encoder::default();
        empty.forget();
        out.clear();
        empty.transcode(&block(&[(":method", "GET")]), &mut out, true);
        assert_eq!(out, [0x82]);
    }

    /// What one block may cost: 64 fields looked up (a pass over 64 entries at most each),
    /// 16 added; the rest go as they came.
    #[test]
    fn a_block_looks_up_64_fields_and_adds_16_at_most() {
        let names: Vec<String> = (0..100).map(|i| format!("x-{i}")).collect();
        let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
        for added in [16, 32, 48, 64] {
            let mut out = Vec::new();
            encoder.transcode(&block(&fields), &mut out, true);
            assert_eq!(decoded(&mut decoder, &out), owned(&fields));
            assert_eq!(encoder.entries.len(), added);
        }
        let mut out = Vec::new();
        encoder.transcode(&block(&fields), &mut out, true);
        assert_eq!(decoded(&mut decoder, &out), owned(&fields));
        assert_eq!(
            out.len(),
            64 + block(&fields[64..]).len(),
            "64 indices, then literals"
        );
        assert_eq!(encoder.entries.len(), MOST_ENTRIES);
        assert!(encoder.bytes.capacity() <= BUFFER);
    }

    /// Values alike in their length and first and last eight bytes hash alike: the bytes
    /// tell them apart.
    #[test]
    fn fields_that_hash_alike_are_told_apart_by_their_bytes() {
        let one = [("x-id", "aaaaaaaa-1-bbbbbbbb")];
        let two = [("x-id", "aaaaaaaa-2-bbbbbbbb")];
        assert_eq!(hash(one[0].1.as_bytes()), hash(two[0].1.as_bytes()));
        let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
        for fields in [&one, &two, &one, &two] {
            let mut out = Vec::new();
            encoder.transcode(&block(fields), &mut out, true);
            assert_eq!(decoded(&mut decoder, &out), owned(fields));
        }
        assert_eq!(encoder.entries.len(), 2);
    }

    /// A table is grown as entries come: one of a few fields holds a few hundred bytes, not
    /// the 5 KiB a full one may (an idle connection with a stream keeps two).
    #[test]
    fn a_table_of_a_few_fields_keeps_a_few_hundred_bytes() {
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        let fields = [
            ("server", "nghttpd nghttp2/1.52.0"),
            ("cache-control", "max-age=3600"),
        ];
        encoder.transcode(&block(&fields), &mut out, true);
        assert!(
            encoder.bytes.capacity() <= 128,
            "{}",
            encoder.bytes.capacity()
        );
        assert!(
            encoder.entries.capacity() <= 8,
            "{}",
            encoder.entries.capacity()
        );
    }

    /// A `:path` with a query (tokens, ids: a new value each time) is not added; one
    /// without (a gRPC method's) is.
    #[test]
    fn a_path_with_a_query_is_not_indexed() {
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        let with_query = block(&[(":path", "/api?token=1")]);
        encoder.transcode(&with_query, &mut out, true);
        assert_eq!(out, with_query);
        out.clear();
        encoder.transcode(&block(&[(":path", "/pkg.Service/Method")]), &mut out, true);
        assert_eq!(out[0], 0x44, "added, by the static name :path");
    }

    #[test]
    fn a_table_not_usable_is_not_referred_to_until_it_is_again() {
        let fields = [("user-agent", "curl/8"), ("x-a", "1")];
        let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
        let mut out = Vec::new();
        encoder.transcode(&block(&fields), &mut out, true);
        decoded(&mut decoder, &out);
        out.clear();
        encoder.transcode(&block(&fields), &mut out, false);
        assert_eq!(out, block(&fields));
        // A decoder whose table was emptied (lowered to 0 and back) still reads what
        // follows: the encoder starts again from an empty table.
        let mut emptied = Decoder::default();
        out.clear();
        encoder.transcode(&block(&fields), &mut out, true);
        assert_eq!(decoded(&mut emptied, &out), owned(&fields));
    }
}
