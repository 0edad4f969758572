//! Header fields for the relay (RFC 7541): decoded into one flat list per field block, and
//! encoded as literals, which a connection's [`encoder`] writes again with its table.
//!
//! Decoding is `loona-hpack`'s (a maintained fork of the `hpack` crate, the decoder the
//! `fluke`/`loona` HTTP/2 server runs): it must follow whatever the peer's encoder does,
//! Huffman and dynamic table included; which fields came never indexed is noted
//! ([`Fields::is_never_indexed`]), as an intermediary must pass them on so. Encoding here
//! is deliberately plain: a field found whole in the static table is its index, a name
//! found there an indexed name with a literal value, anything else a literal; never
//! Huffman. Such a block refers to no table, so a request's can wait for any backend
//! connection, and the [`encoder`] of the connection it goes on writes it again with that
//! connection's table when it is sent.

use std::borrow::Cow;

pub mod encoder;

/// One field block's fields, in order, in one buffer.
#[derive(Debug, Default)]
pub struct Fields {
    bytes: Vec<u8>,
    /// Name start, name end (= value start), value end, in `bytes`.
    spans: Vec<[u32; 3]>,
    /// RFC 9113 §6.5.2: each field counts its name, value and 32.
    list_size: usize,
    /// The positions of the fields that came as never indexed (RFC 7541 §6.2.3).
    never: Vec<u32>,
}

impl Fields {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.list_size = 0;
        self.never.clear();
    }

    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name);
        let middle = self.bytes.len() as u32;
        self.bytes.extend_from_slice(value);
        self.spans.push([start, middle, self.bytes.len() as u32]);
        self.list_size += name.len() + value.len() + 32;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|&[a, b, c]| {
            (
                &self.bytes[a as usize..b as usize],
                &self.bytes[b as usize..c as usize],
            )
        })
    }

    /// Whether the field at `position` (in [`Fields::iter`]'s order) came as never indexed:
    /// an intermediary passes it on so (RFC 7541 §7.1.3).
    pub fn is_never_indexed(&self, position: usize) -> bool {
        self.never.binary_search(&(position as u32)).is_ok()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The decoded size of the list, as SETTINGS_MAX_HEADER_LIST_SIZE counts it.
    pub fn list_size(&self) -> usize {
        self.list_size
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// A field block the decoder could not read: a connection error (COMPRESSION_ERROR), as
/// the decoder's table can no longer follow the peer's.
#[derive(Debug)]
pub struct CompressionError;

/// A peer's encoder state, as seen from this side.
pub struct Decoder {
    inner: loona_hpack::Decoder<'static>,
    /// A block with its Huffman-coded strings decoded ([`raw_strings`]), kept for the next.
    raw: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        let mut inner = loona_hpack::Decoder::new();
        // SETTINGS_HEADER_TABLE_SIZE is never sent, so its initial 4,096 is the most a peer
        // may ask the table to grow to.
        inner.set_max_allowed_table_size(4_096);
        Decoder {
            inner,
            raw: Vec::new(),
        }
    }
}

impl Decoder {
    /// Decodes a whole field block into `fields` (cleared first). Fields past `max_list`
    /// bytes are still decoded, to keep the table in step, but not kept; the caller sees
    /// the size went over by [`Fields::list_size`].
    pub fn decode(
        &mut self,
        block: &[u8],
        fields: &mut Fields,
        max_list: usize,
    ) -> Result<(), CompressionError> {
        fields.clear();
        let mut over = 0usize;
        let (huffman, never) = scan(block)?;
        let never = match never {
            true => never_indexed_positions(block),
            false => Vec::new(),
        };
        let block = match huffman {
            false => block,
            true => {
                self.raw.clear();
                raw_strings(block, &mut self.raw)?;
                &self.raw[..]
            }
        };
        let decoded = self
            .inner
            .decode_with_cb(block, |name: Cow<[u8]>, value: Cow<[u8]>| {
                if fields.list_size + over <= max_list {
                    fields.push(&name, &value);
                } else {
                    over += name.len() + value.len() + 32;
                }
            })
            .map_err(|_| CompressionError);
        if self.raw.capacity() > 4 * 1024 {
            // One large block's buffer is not kept for good: 400 idle connections after
            // one 40,000-character header held 42 kB each (a review).
            self.raw = Vec::new();
        }
        decoded?;
        fields.list_size += over;
        fields.never = never;
        Ok(())
    }
}

/// One field representation's parts (RFC 7541 §6): its first byte's prefix size for the
/// integer that follows, and how many strings come after that integer.
fn representation(first: u8) -> (u32, fn(usize) -> usize) {
    match first {
        0x80..=0xff => (7, |_| 0),                                  // §6.1 indexed
        0x40..=0x7f => (6, |index| if index == 0 { 2 } else { 1 }), // §6.2.1
        0x20..=0x3f => (5, |_| 0),                                  // §6.3 table size update
        _ => (4, |index| if index == 0 { 2 } else { 1 }),           // §6.2.2, §6.2.3
    }
}

/// RFC 7541 §5.1: the integer at the start of `input` with a `prefix`-bit prefix, and the
/// bytes it took; values past 2^32 are refused (no field block needs one).
fn read_integer(input: &[u8], prefix: u32) -> Result<(usize, usize), CompressionError> {
    let max = (1usize << prefix) - 1;
    let first = *input.first().ok_or(CompressionError)? as usize & max;
    if first < max {
        return Ok((first, 1));
    }
    let mut value = max;
    for (at, &byte) in input.iter().enumerate().skip(1).take(5) {
        value += ((byte & 0x7f) as usize) << (7 * (at - 1));
        if byte & 0x80 == 0 {
            return match value <= u32::MAX as usize {
                true => Ok((value, at + 1)),
                false => Err(CompressionError),
            };
        }
    }
    Err(CompressionError)
}

/// A part of a field block, as [`walk`] finds it.
enum Part<'b> {
    /// A representation's first bytes: its kind and its integer (§6).
    Head(&'b [u8]),
    /// A string literal's bytes (§5.2), Huffman-coded or not.
    String { huffman: bool, bytes: &'b [u8] },
}

/// Walks `block`'s representations, handing `part` each part in order.
fn walk<'b>(
    block: &'b [u8],
    mut part: impl FnMut(Part<'b>) -> Result<(), CompressionError>,
) -> Result<(), CompressionError> {
    let mut at = 0;
    while at < block.len() {
        let (prefix, strings) = representation(block[at]);
        let (index, taken) = read_integer(&block[at..], prefix)?;
        part(Part::Head(&block[at..at + taken]))?;
        at += taken;
        for _ in 0..strings(index) {
            let huffman = *block.get(at).ok_or(CompressionError)? & 0x80 != 0;
            let (len, taken) = read_integer(&block[at..], 7)?;
            let bytes = block
                .get(at + taken..at + taken + len)
                .ok_or(CompressionError)?;
            part(Part::String { huffman, bytes })?;
            at += taken + len;
        }
    }
    Ok(())
}

/// Whether any string of `block` is Huffman-coded (most blocks of a busy connection are
/// indexed fields only, and go to the decoder as they are), and whether any field is
/// never indexed.
fn scan(block: &[u8]) -> Result<(bool, bool), CompressionError> {
    let (mut huffman, mut never) = (false, false);
    walk(block, |part| {
        match part {
            Part::String { huffman: h, .. } => huffman |= h,
            Part::Head(head) => never |= head[0] & 0xf0 == 0x10,
        }
        Ok(())
    })?;
    Ok((huffman, never))
}

/// The positions, among the fields `block` decodes to, of those never indexed (§6.2.3);
/// `block` checked by [`scan`] already.
fn never_indexed_positions(block: &[u8]) -> Vec<u32> {
    let mut positions = Vec::new();
    let mut field = 0;
    let _ = walk(block, |part| {
        if let Part::Head(head) = part {
            match head[0] {
                0x20..=0x3f => {} // §6.3: a table size update is no field
                first => {
                    if first & 0xf0 == 0x10 {
                        positions.push(field);
                    }
                    field += 1;
                }
            }
        }
        Ok(())
    });
    positions
}

/// `block` with every Huffman-coded string decoded ([`crate::huffman`]) and written raw
/// (§5.2, H = 0), into `out`: the same fields, for a decoder that then decodes no Huffman.
fn raw_strings(block: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
    let mut text = Vec::new();
    walk(block, |part| {
        match part {
            Part::Head(bytes) => out.extend_from_slice(bytes),
            Part::String {
                huffman: false,
                bytes,
            } => string(out, bytes),
            Part::String {
                huffman: true,
                bytes,
            } => {
                text.clear();
                crate::huffman::decode(bytes, &mut text).map_err(|_| CompressionError)?;
                string(out, &text);
            }
        }
        Ok(())
    })
}

/// Appends `fields` to `out` as a field block (see the module docs for how).
pub fn encode<'f>(fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>, out: &mut Vec<u8>) {
    for (name, value) in fields {
        field(out, name, value);
    }
}

/// Appends one field (RFC 7541 §6.1 indexed, §6.2.2 without indexing).
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let mut name_index = 0;
    for (i, &(n, v)) in STATIC_TABLE.iter().enumerate() {
        if n.as_bytes() == name {
            if v.as_bytes() == value {
                integer(out, 7, 0x80, i + 1);
                return;
            }
            if name_index == 0 {
                name_index = i + 1;
            }
        }
    }
    if name_index > 0 {
        integer(out, 4, 0x00, name_index);
    } else {
        out.push(0x00);
        string(out, name);
    }
    string(out, value);
}

/// RFC 7541 §6.2.2: a literal header field without indexing, new name, raw strings.
pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    string(out, name);
    string(out, value);
}

/// RFC 7541 §6.2.3: a literal header field never indexed, by the static table's name
/// index if it has the name: no intermediary may index it.
pub fn never_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match STATIC_TABLE.iter().position(|&(n, _)| n.as_bytes() == name) {
        Some(at) => integer(out, 4, 0x10, at + 1),
        None => {
            out.push(0x10);
            string(out, name);
        }
    }
    string(out, value);
}

/// RFC 7541 §5.2: a string literal with H = 0.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    integer(out, 7, 0x00, bytes.len());
    out.extend_from_slice(bytes);
}

/// RFC 7541 §5.1: an integer with an `prefix`-bit prefix; `high` holds the first byte's
/// other bits.
pub fn integer(out: &mut Vec<u8>, prefix: u32, high: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7541_c_1_integers() {
        let mut out = Vec::new();
        integer(&mut out, 5, 0, 10);
        assert_eq!(out, [10]); // C.1.1
        out.clear();
        integer(&mut out, 5, 0, 1337);
        assert_eq!(out, [31, 154, 10]); // C.1.2
        out.clear();
        integer(&mut out, 8, 0, 42);
        assert_eq!(out, [42]); // C.1.3
    }

    #[test]
    fn rfc7541_c_2_representations_we_send() {
        let mut out = Vec::new();
        field(&mut out, b":method", b"GET");
        assert_eq!(out, [0x82]); // C.2.4: indexed
        out.clear();
        field(&mut out, b":path", b"/sample/path");
        // C.2.2: a literal without indexing, name index 4.
        assert_eq!(&out[..2], &[0x04, 0x0c]);
        assert_eq!(&out[2..], b"/sample/path");
        out.clear();
        literal(&mut out, b"password", b"secret");
        assert_eq!(out[0], 0x00);
        assert_eq!(&out[1..10], b"\x08password");
    }

    #[test]
    fn what_we_encode_decodes_to_the_same_fields_and_leaves_no_table_behind() {
        let sent = [
            (&b":status"[..], &b"200"[..]),
            (b"content-type", b"application/grpc"),
            (b"x-custom", b"v"),
            (b"grpc-status", b"0"),
        ];
        let mut block = Vec::new();
        encode(sent.iter().copied(), &mut block);
        let mut decoder = Decoder::default();
        let mut fields = Fields::default();
        decoder.decode(&block, &mut fields, 16_384).unwrap();
        assert!(fields.iter().eq(sent.iter().copied()));
        // Decoded again by the same decoder: the same, so no entry went into its table.
        let mut again = Fields::default();
        decoder.decode(&block, &mut again, 16_384).unwrap();
        assert!(again.iter().eq(sent.iter().copied()));
    }

    #[test]
    fn rfc7541_c_4_huffman_and_the_dynamic_table_are_followed() {
        // C.4.1, then C.4.2, which refers to the table entry the first made.
        let first = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let second = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        let mut decoder = Decoder::default();
        let mut fields = Fields::default();
        decoder.decode(&first, &mut fields, 16_384).unwrap();
        assert_eq!(fields.get(b":authority"), Some(&b"www.example.com"[..]));
        decoder.decode(&second, &mut fields, 16_384).unwrap();
        assert_eq!(fields.get(b":authority"), Some(&b"www.example.com"[..]));
        assert_eq!(fields.get(b"cache-control"), Some(&b"no-cache"[..]));
    }

    /// Huffman-coded strings are decoded before the table's decoder sees the block (the
    /// attacker's review of run 21: its own decoder took 174 ns a byte), in every
    /// representation: a new name and value indexed (C.4.3), never indexed, after a table
    /// size update; a string that is not one is still a COMPRESSION_ERROR.
    #[test]
    fn rfc7541_c_4_3_and_every_representation_with_huffman_strings() {
        let c_4_3 = [
            0x3f, 0xe1, 0x01, // §6.3: a table size update (to 256) first, then C.4.3's block
            0x82, 0x87, 0x85, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89,
            0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            // §6.2.3 never indexed, new name, both coded ("custom-key: custom-value").
            0x10, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89, 0x25, 0xa8, 0x49,
            0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
        ];
        let mut decoder = Decoder::default();
        let mut fields = Fields::default();
        decoder.decode(&c_4_3, &mut fields, 16_384).unwrap();
        let got: Vec<(&[u8], &[u8])> = fields.iter().collect();
        let want: [(&[u8], &[u8]); 6] = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/index.html"),
            (b":authority", b"www.example.com"),
            (b"custom-key", b"custom-value"),
            (b"custom-key", b"custom-value"),
        ];
        assert_eq!(got, want);
        assert!((0..6).all(|at| fields.is_never_indexed(at) == (at == 5)));
        // The indexed entry is followed: index 62 is custom-key: custom-value.
        decoder.decode(&[0xbe], &mut fields, 16_384).unwrap();
        assert_eq!(fields.get(b"custom-key"), Some(&b"custom-value"[..]));
        // Bad padding (zeros), and a string cut short.
        for broken in [&[0x00, 0x81, 0x00, 0x80][..], &[0x00, 0x85, 0xf1, 0xe3][..]] {
            assert!(Decoder::default()
                .decode(broken, &mut fields, 16_384)
                .is_err());
        }
    }

    #[test]
    fn fields_past_the_limit_are_counted_not_kept() {
        let mut block = Vec::new();
        for i in 0..100 {
            literal(&mut block, format!("x-{i}").as_bytes(), &[b'v'; 100]);
        }
        let mut fields = Fields::default();
        Decoder::default()
            .decode(&block, &mut fields, 1_000)
            .unwrap();
        assert!(fields.list_size() > 10_000);
        assert!(fields.iter().count() < 10);
    }

    #[test]
    fn a_broken_block_is_a_compression_error() {
        let mut fields = Fields::default();
        // Index 70 does not exist in an empty dynamic table.
        assert!(Decoder::default()
            .decode(&[0x80 | 70], &mut fields, 16_384)
            .is_err());
    }
}
