//! Huffman-coded string literals (RFC 7541 §5.2, Appendix B).
//!
//! The code is canonical: the code lengths of the 257 symbols ([`LENGTHS`])
//! determine it, codes being handed out in order of (length, symbol). So
//! the decoder keeps only the lengths and builds, once per process
//! ([`Tables::get`]), what a canonical decoder needs:
//!
//! - for each length, the limit of its codes left-aligned in 32 bits: a
//!   window of the input below the limit of length L, and not below that of
//!   L-1, starts with a code of length L (canonical codes of one length sort
//!   below all longer ones once left-aligned);
//! - a [`FAST_BITS`]-bit lookup table that settles every code up to that
//!   length (the symbols a DoH request uses most: lower-case letters,
//!   digits, `/`, `-`, `=`, `.`) in one load.
//!
//! Input comes in through a 64-bit accumulator a byte at a time, a symbol
//! goes out per step: no bit-by-bit walk of a tree.
//!
//! The end of a string is padding, not a symbol: at most 7 bits, all ones
//! (a prefix of EOS). A decoded EOS, longer padding, or padding with a zero
//! bit is an error (§5.2).

use std::sync::OnceLock;

use super::HpackError;

/// Code length in bits of each symbol, 0..=255 then EOS (256), from the
/// table of RFC 7541 Appendix B.
pub(super) const LENGTHS: [u8; 257] = [
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

/// The EOS symbol: never valid inside a string.
const EOS: u16 = 256;
/// The longest code (EOS's).
const MAX_LEN: usize = 30;
/// Bits settled by one lookup in [`Tables::fast`].
const FAST_BITS: u32 = 9;

/// The decoding structures derived from [`LENGTHS`].
struct Tables {
    /// `limit[len]`: one past the last code of length `len`, left-aligned
    /// in 32 bits (u64: the last limit is 2^32).
    limit: [u64; MAX_LEN + 1],
    /// `first[len]`: the first code of length `len` (right-aligned).
    first: [u32; MAX_LEN + 1],
    /// `offset[len]`: where the symbols of length `len` start in `symbols`.
    offset: [u16; MAX_LEN + 1],
    /// Symbols in code order, i.e. sorted by (length, symbol).
    symbols: [u16; 257],
    /// By the first [`FAST_BITS`] bits of a window: `symbol | len << 9`
    /// when a code of at most that length starts it, 0 otherwise.
    fast: [u16; 1 << FAST_BITS],
}

impl Tables {
    fn get() -> &'static Tables {
        static TABLES: OnceLock<Tables> = OnceLock::new();
        TABLES.get_or_init(Tables::build)
    }

    fn build() -> Tables {
        let mut count = [0u16; MAX_LEN + 1];
        for &len in &LENGTHS {
            count[usize::from(len)] += 1;
        }
        let mut t = Tables {
            limit: [0; MAX_LEN + 1],
            first: [0; MAX_LEN + 1],
            offset: [0; MAX_LEN + 1],
            symbols: [0; 257],
            fast: [0; 1 << FAST_BITS],
        };
        let mut code = 0u32;
        let mut offset = 0u16;
        for (len, &n) in count.iter().enumerate().skip(1) {
            t.first[len] = code;
            t.offset[len] = offset;
            code += u32::from(n);
            offset += n;
            t.limit[len] = u64::from(code) << (32 - len);
            code <<= 1;
        }
        let mut next = t.offset;
        for (symbol, &len) in (0u16..).zip(LENGTHS.iter()) {
            let len = usize::from(len);
            t.symbols[usize::from(next[len])] = symbol;
            next[len] += 1;
        }
        let mut fast = [0u16; 1 << FAST_BITS];
        for (prefix, slot) in (0u64..).zip(fast.iter_mut()) {
            let window = prefix << (32 - FAST_BITS);
            if let Some((symbol, len)) = t.slow(window) {
                if len <= FAST_BITS {
                    *slot = symbol | (len as u16) << 9;
                }
            }
        }
        t.fast = fast;
        t
    }

    /// The symbol and code length that start `window` (32 bits,
    /// left-aligned), by the canonical limits. Every window starts with
    /// some code: the code is complete (EOS is all ones).
    fn slow(&self, window: u64) -> Option<(u16, u32)> {
        let len = (1..=MAX_LEN).find(|&len| window < self.limit[len])?;
        let code = (window >> (32 - len)) as u32;
        let index = usize::from(self.offset[len]) + code.checked_sub(self.first[len])? as usize;
        Some((*self.symbols.get(index)?, len as u32))
    }

    /// As [`Tables::slow`], through [`Tables::fast`] when it settles it.
    #[inline]
    fn symbol(&self, window: u64) -> Option<(u16, u32)> {
        let entry = self.fast[(window >> (32 - FAST_BITS)) as usize];
        if entry != 0 {
            Some((entry & 0x1ff, u32::from(entry >> 9)))
        } else {
            self.slow(window)
        }
    }
}

/// Decodes the Huffman-coded `input`, appending the string to `out`.
pub(super) fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let t = Tables::get();
    // The shortest code is 5 bits: at most 8/5 output bytes per input byte.
    out.reserve(input.len() * 8 / 5 + 1);
    let mut bytes = input.iter();
    // `bits` valid bits, right-aligned in `acc`.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    loop {
        while bits <= 56 {
            match bytes.next() {
                Some(&b) => {
                    acc = acc << 8 | u64::from(b);
                    bits += 8;
                }
                None => break,
            }
        }
        if bits == 0 {
            return Ok(());
        }
        // The next 32 bits, left-aligned; past the input, filled with ones
        // (what valid padding is made of).
        let window = if bits >= 32 {
            (acc >> (bits - 32)) & 0xffff_ffff
        } else {
            ((acc << (32 - bits)) | ((1u64 << (32 - bits)) - 1)) & 0xffff_ffff
        };
        let (symbol, len) = t.symbol(window).ok_or(HpackError::HuffmanEos)?;
        if len > bits {
            // Not a whole code left (the input is exhausted: `bits` would
            // be over 56 otherwise): the rest is padding.
            let ones = (1u64 << bits) - 1;
            return if bits <= 7 && acc & ones == ones {
                Ok(())
            } else {
                Err(HpackError::HuffmanPadding)
            };
        }
        if symbol == EOS {
            return Err(HpackError::HuffmanEos);
        }
        out.push(symbol as u8);
        bits -= len;
        acc &= (1u64 << bits) - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code of `symbol`, as the canonical assignment makes it.
    fn code_of(symbol: usize) -> (u32, u8) {
        let t = Tables::get();
        let len = LENGTHS[symbol];
        let rank = t.symbols[usize::from(t.offset[usize::from(len)])..]
            .iter()
            .position(|&s| usize::from(s) == symbol)
            .unwrap();
        (t.first[usize::from(len)] + rank as u32, len)
    }

    /// Codes as printed in RFC 7541 Appendix B.
    #[test]
    fn canonical_codes_match_the_rfc_table() {
        assert_eq!(code_of(usize::from(b'a')), (0x3, 5));
        assert_eq!(code_of(usize::from(b'0')), (0x0, 5));
        assert_eq!(code_of(usize::from(b' ')), (0x14, 6));
        assert_eq!(code_of(usize::from(b'/')), (0x18, 6));
        assert_eq!(code_of(usize::from(b'z')), (0x7b, 7));
        assert_eq!(code_of(0), (0x1ff8, 13));
        assert_eq!(code_of(255), (0x3ffffee, 26));
        assert_eq!(code_of(256), (0x3fffffff, 30));
    }

    /// The code is complete: the codes fill the code space exactly (Kraft
    /// sum 1), so every window starts with some code.
    #[test]
    fn the_code_is_complete() {
        let kraft: u64 = LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1 << 30);
        assert_eq!(Tables::get().limit[MAX_LEN], 1 << 32);
    }

    /// Encodes with the canonical codes, bit by bit (the reference the
    /// table-driven decoder is checked against), padding with ones.
    fn encode(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in input {
            let (code, len) = code_of(usize::from(b));
            acc = acc << len | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        out
    }

    fn dec(input: &[u8]) -> Result<Vec<u8>, HpackError> {
        let mut out = Vec::new();
        decode(input, &mut out).map(|()| out)
    }

    /// RFC 7541 C.4.1 and C.6.1 strings.
    #[test]
    fn rfc_strings() {
        let hex = |s: &str| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            dec(&hex("f1e3c2e5f23a6ba0ab90f4ff")).unwrap(),
            b"www.example.com"
        );
        assert_eq!(dec(&hex("a8eb10649cbf")).unwrap(), b"no-cache");
        assert_eq!(
            dec(&hex("d07abe941054d444a8200595040b8166e082a62d1bff")).unwrap(),
            b"Mon, 21 Oct 2013 20:13:21 GMT"
        );
    }

    /// Every byte value, alone and in runs that cross the accumulator's
    /// refills, round-trips.
    #[test]
    fn every_symbol_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(dec(&encode(&[b])).unwrap(), [b], "symbol {b}");
        }
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        assert_eq!(dec(&encode(&all)).unwrap(), all);
        assert_eq!(dec(&[]).unwrap(), b"");
    }

    #[test]
    fn eos_inside_a_string_is_an_error() {
        // 'a' (00011) then EOS (30 ones), padded with ones.
        let mut acc: u64 = 0b00011 << 30 | 0x3fff_ffff;
        acc = acc << 5 | 0x1f; // 35 + 5 = 40 bits
        let bytes = acc.to_be_bytes()[3..].to_vec();
        assert_eq!(dec(&bytes), Err(HpackError::HuffmanEos));
        // A whole byte of ones: EOS's prefix, 8 bits of padding.
        assert_eq!(dec(&[0xff]), Err(HpackError::HuffmanPadding));
        assert_eq!(dec(&[0xff, 0xff, 0xff, 0xff]), Err(HpackError::HuffmanEos));
    }

    #[test]
    fn padding_must_be_short_and_all_ones() {
        // 'a' = 00011 then 111: valid.
        assert_eq!(dec(&[0b0001_1111]).unwrap(), b"a");
        // 'a' then 110: a zero in the padding.
        assert_eq!(dec(&[0b0001_1110]), Err(HpackError::HuffmanPadding));
        // 'a' then 11 111111 11: 10 bits of ones.
        assert_eq!(
            dec(&[0b0001_1111, 0b1111_1111]),
            Err(HpackError::HuffmanPadding)
        );
    }
}
