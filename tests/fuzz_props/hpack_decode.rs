//! Properties of the `hpack_decode` fuzz target: dotgate's HPACK decoder
//! (`server::doh::h2::hpack`) on header blocks a peer writes.
//!
//! Input: a first byte choosing the decoder's settings and the mode, then:
//!
//! - blocks mode (bit 4 clear): blocks, each a length byte then that many
//!   bytes, decoded in turn on one decoder (so the dynamic table carries
//!   over);
//! - Huffman mode (bit 4 set): the rest is one Huffman-coded string, put
//!   in a literal field and decoded.
//!
//! Properties, besides "no panic":
//!
//! - under a header list limit, the fields passed on are the longest
//!   prefix within it of those a decoder without limit passes on, the
//!   limit is reported exactly when fields were left out, and both
//!   decoders stay in step (same errors, same bytes held) block after
//!   block: the table took every insertion;
//! - the decoder holds a bounded amount after every block (table size plus
//!   per-entry overhead plus the kept scratch), and nothing when new;
//! - Huffman strings decode exactly as a bit-by-bit walk of the canonical
//!   code (built here from RFC 7541 Appendix B's code lengths) decodes
//!   them, errors included.

use std::collections::HashMap;
use std::sync::OnceLock;

use dotgate::server::doh::h2::hpack::{Decoder, HpackError, SCRATCH_KEEP};

/// Code lengths of RFC 7541 Appendix B, symbols 0..=255 then EOS.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const TABLE_SIZES: [usize; 4] = [0, 64, 256, 4096];
const LIST_SIZES: [usize; 4] = [usize::MAX, 100, 1000, 16384];

/// Input: a first byte choosing the decoder's table size (bits 0-1), its
/// header list limit (bits 2-3) and the mode (bit 4), then blocks or one
/// Huffman string (see the module's documentation).
pub fn hpack_decode(data: &[u8]) {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let table_size = TABLE_SIZES[usize::from(settings & 3)];
    let list_size = LIST_SIZES[usize::from(settings >> 2 & 3)];
    if settings & 0x10 != 0 {
        huffman(rest);
    } else {
        blocks(table_size, list_size, rest);
    }
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn blocks(table_size: usize, max_list: usize, mut rest: &[u8]) {
    // `d` under the list limit, `r` without: the same blocks must leave
    // them in the same state.
    let mut d = Decoder::new(table_size);
    let mut r = Decoder::new(table_size);
    assert_eq!(d.held(), 0);
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (block, tail) = tail.split_at(len);
        rest = tail;
        let (mut limited, mut all) = (Fields::new(), Fields::new());
        let result = d.decode(block, max_list, |n, v| {
            limited.push((n.to_vec(), v.to_vec()))
        });
        let reference = r.decode(block, usize::MAX, |n, v| all.push((n.to_vec(), v.to_vec())));
        // The fields passed: the longest prefix of all within the limit.
        let mut total = 0usize;
        let within = all
            .iter()
            .take_while(|(n, v)| {
                total += n.len() + v.len() + 32;
                total <= max_list
            })
            .count();
        assert_eq!(limited, all[..within], "fields passed under the limit");
        match reference {
            Err(e) => {
                assert_eq!(result, Err(e));
                // The connection would be closed: nothing more to decode.
                return;
            }
            Ok(()) if within < all.len() => assert_eq!(result, Err(HpackError::ListTooLarge)),
            Ok(()) => assert_eq!(result, Ok(())),
        }
        // Entries: at most table_size / 32; each costs at most its bytes
        // and a deque slot (24), the deque at most doubling.
        let bound = table_size + 2 * (table_size / 32 + 1) * 24 + SCRATCH_KEEP;
        assert!(d.held() <= bound, "held {} > {bound}", d.held());
        assert_eq!(d.held(), r.held(), "tables in step");
    }
}

fn huffman(payload: &[u8]) {
    // A literal without indexing, name "x", value Huffman-coded.
    let mut block = vec![0x00, 0x01, b'x'];
    let len = payload.len();
    if len < 127 {
        block.push(0x80 | len as u8);
    } else {
        block.push(0xff);
        let mut rest = len - 127;
        while rest >= 0x80 {
            block.push(rest as u8 | 0x80);
            rest >>= 7;
        }
        block.push(rest as u8);
    }
    block.extend_from_slice(payload);
    let mut d = Decoder::new(4096);
    let mut got = None;
    let result = d.decode(&block, usize::MAX, |_, v| got = Some(v.to_vec()));
    let expected = walk(payload);
    match (result, expected) {
        (Ok(()), Ok(want)) => assert_eq!(got.as_deref(), Some(&want[..])),
        (Err(e), Err(want)) => assert_eq!(e, want),
        (result, expected) => panic!("decoder {result:?}, reference {expected:?}"),
    }
}

/// The reference: the code's (length, code) → symbol map, walked one bit
/// at a time.
fn walk(input: &[u8]) -> Result<Vec<u8>, HpackError> {
    static CODES: OnceLock<HashMap<(u32, u32), u16>> = OnceLock::new();
    let codes = CODES.get_or_init(|| {
        let mut codes = HashMap::new();
        let mut order: Vec<u16> = (0..=256).collect();
        order.sort_by_key(|&s| (LENGTHS[usize::from(s)], s));
        let (mut code, mut len) = (0u32, 0u32);
        for s in order {
            let l = u32::from(LENGTHS[usize::from(s)]);
            code <<= l - len;
            len = l;
            codes.insert((len, code), s);
            code += 1;
        }
        codes
    });
    let mut out = Vec::new();
    let (mut code, mut len) = (0u32, 0u32);
    for byte in input {
        for i in (0..8).rev() {
            code = code << 1 | u32::from(byte >> i & 1);
            len += 1;
            if let Some(&s) = codes.get(&(len, code)) {
                if s == 256 {
                    return Err(HpackError::HuffmanEos);
                }
                out.push(s as u8);
                code = 0;
                len = 0;
            }
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err(HpackError::HuffmanPadding);
    }
    Ok(out)
}
