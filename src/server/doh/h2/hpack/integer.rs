//! Prefix integers (RFC 7541 §5.1): a value in the low N bits of a first
//! byte, or, when those bits are all ones, continued in 7-bit groups, least
//! significant first, each byte's top bit saying another follows.
//!
//! The peer picks the number of continuation bytes, so the decoder bounds
//! them: at most [`MAX_CONTINUATION`] bytes and a value of at most
//! `u32::MAX`. No index, string length or table size dotgate accepts comes
//! near that, and a fixed bound keeps the arithmetic free of overflow.

use super::HpackError;

/// The most continuation bytes an integer may have: 5 × 7 bits cover
/// `u32::MAX` with any prefix; a sixth byte could only add bits above it
/// (or be a zero-padded encoding, which no honest encoder sends).
pub(super) const MAX_CONTINUATION: usize = 5;

/// Decodes the integer whose first byte is at `*pos` in `block`, with a
/// `prefix_bits`-bit prefix (1..=8; the caller has read the flag bits above
/// it), and moves `*pos` past it.
pub(super) fn decode(block: &[u8], pos: &mut usize, prefix_bits: u8) -> Result<u32, HpackError> {
    let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
    let max_prefix: u8 = if prefix_bits >= 8 {
        u8::MAX
    } else {
        (1u8 << prefix_bits) - 1
    };
    let prefix = first & max_prefix;
    *pos += 1;
    if prefix < max_prefix {
        return Ok(u32::from(prefix));
    }
    let mut value = u64::from(max_prefix);
    for i in 0..MAX_CONTINUATION {
        let byte = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return u32::try_from(value).map_err(|_| HpackError::IntegerOverflow);
        }
    }
    Err(HpackError::IntegerOverflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8], prefix: u8) -> Result<(u32, usize), HpackError> {
        let mut pos = 0;
        decode(bytes, &mut pos, prefix).map(|v| (v, pos))
    }

    /// RFC 7541 C.1.1-C.1.3.
    #[test]
    fn rfc_examples() {
        assert_eq!(dec(&[0b0000_1010], 5), Ok((10, 1)));
        assert_eq!(
            dec(&[0b0001_1111, 0b1001_1010, 0b0000_1010], 5),
            Ok((1337, 3))
        );
        assert_eq!(dec(&[42], 8), Ok((42, 1)));
    }

    /// Flag bits above the prefix are not part of the value.
    #[test]
    fn flags_above_the_prefix_are_ignored() {
        assert_eq!(dec(&[0b1110_1010], 5), Ok((10, 1)));
        assert_eq!(dec(&[0xff, 0x00], 7), Ok((127, 2)));
    }

    #[test]
    fn largest_value_and_one_past_it() {
        // u32::MAX - 31 = 0xffff_ffe0 in 7-bit groups after a full 5-bit prefix.
        let groups = |mut v: u64| {
            let mut out = vec![0x1f];
            while v >= 0x80 {
                out.push((v as u8 & 0x7f) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
            out
        };
        let max = groups(u64::from(u32::MAX) - 31);
        assert_eq!(max.len(), 6);
        assert_eq!(dec(&max, 5), Ok((u32::MAX, 6)));
        assert_eq!(
            dec(&groups(u64::from(u32::MAX) - 30), 5),
            Err(HpackError::IntegerOverflow)
        );
    }

    #[test]
    fn too_many_continuation_bytes() {
        // Zero-valued continuation bytes that never end.
        let mut bytes = vec![0x1f];
        bytes.extend([0x80; 5]);
        bytes.push(0);
        assert_eq!(dec(&bytes, 5), Err(HpackError::IntegerOverflow));
    }

    #[test]
    fn truncated() {
        assert_eq!(dec(&[], 5), Err(HpackError::Truncated));
        assert_eq!(dec(&[0x1f], 5), Err(HpackError::Truncated));
        assert_eq!(dec(&[0x1f, 0x80], 5), Err(HpackError::Truncated));
    }
}
