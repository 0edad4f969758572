//! The h2c relay's field-block decoding (`switchyard_h2c::hpack`): Huffman-coded strings,
//! decoded from the relay's own canonical tables, give what `loona-hpack`'s bit-by-bit
//! decoder gives (the same octets, or a refusal both ways); whole blocks, which the relay
//! hands `loona-hpack` with their Huffman strings decoded, give the fields `loona-hpack`
//! finds decoding them itself, or a refusal both ways. (The older `hpack` crate panics on
//! some malformed blocks: no oracle.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_h2c::hpack::{Decoder, Fields};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        let mut ours = Vec::new();
        let ours = switchyard_h2c::huffman::decode(data, &mut ours).map(|()| ours);
        let theirs = loona_hpack::huffman::HuffmanDecoder::new().decode(data);
        assert_eq!(ours.ok(), theirs.ok(), "Huffman-decoded differently");
    } else {
        let mut fields = Fields::default();
        let ours = Decoder::default().decode(data, &mut fields, 1 << 20);
        let mut theirs = loona_hpack::Decoder::new();
        theirs.set_max_allowed_table_size(4_096);
        let theirs = theirs.decode(data);
        assert_eq!(ours.is_ok(), theirs.is_ok(), "refused by one decoder only");
        if let Ok(theirs) = theirs {
            let ours: Vec<(Vec<u8>, Vec<u8>)> = fields
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(ours, theirs, "decoded to other fields");
        }
    }
});
