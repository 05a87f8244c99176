//! HPACK (RFC 7541): decoding the header blocks of dotgate's HTTP/2 server.
//!
//! One [`Decoder`] per connection: its dynamic table is the connection's,
//! kept in step with the client's encoder block after block. dotgate never
//! sends request headers, so there is no encoder here (responses are
//! written with static-table references and literals by the server).
//!
//! What it costs, since it runs once per DoH request and lives as long as
//! an idle connection:
//!
//! - [`Decoder::new`] allocates nothing; the dynamic table grows with what
//!   the client inserts (`table`), and the Huffman scratch buffer is
//!   dropped after a block that made it large ([`SCRATCH_KEEP`]);
//! - fields go to a callback as slices into the block, the table or the
//!   scratch buffer: an indexed field or a raw literal costs no allocation,
//!   a Huffman-coded one none once the scratch buffer has grown;
//! - Huffman strings are decoded by table lookups (`huffman`), prefix
//!   integers bounded to `u32` (`integer`).
//!
//! Errors: [`HpackError::ListTooLarge`] is the stream's (the block was
//! still decoded to its end, so the connection can go on); every other
//! error leaves the table out of step with the encoder's, and the caller
//! must close the connection with COMPRESSION_ERROR (RFC 9113 §4.3).

mod huffman;
mod integer;
mod table;
#[cfg(test)]
mod tests;

use table::{DynamicTable, Name, ENTRY_OVERHEAD};

/// Scratch capacity kept between blocks: a block whose Huffman strings
/// needed more gives it back, so one big request does not make an idle
/// connection big.
pub const SCRATCH_KEEP: usize = 4096;

/// Why a header block could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HpackError {
    /// A prefix integer over `u32::MAX` or with more than 5 continuation
    /// bytes.
    #[error("HPACK integer too large")]
    IntegerOverflow,
    /// The block ends inside a representation (an integer or a string).
    #[error("HPACK block truncated")]
    Truncated,
    /// Index 0, which names no field (§6.1).
    #[error("HPACK index 0")]
    ZeroIndex,
    /// An index past the static and dynamic tables (§2.3.3).
    #[error("HPACK index {0} not in the table")]
    BadIndex(u32),
    /// The EOS symbol inside a Huffman-coded string (§5.2).
    #[error("HPACK Huffman string contains EOS")]
    HuffmanEos,
    /// Huffman padding longer than 7 bits or not all ones (§5.2).
    #[error("HPACK Huffman padding invalid")]
    HuffmanPadding,
    /// A dynamic table size update above the size dotgate advertised
    /// (§6.3).
    #[error("HPACK table size update to {size}, above the maximum {max}")]
    TableSizeTooLarge {
        /// The size the encoder asked for.
        size: u32,
        /// The advertised maximum.
        max: usize,
    },
    /// A dynamic table size update after a field of the block (§4.2: only
    /// at a block's start).
    #[error("HPACK table size update after a header field")]
    TableSizeUpdateLate,
    /// The fields' sizes (name + value + 32 each) add up past the header
    /// list limit. The block was decoded to its end: the table is in step,
    /// only this request is refused.
    #[error("header list larger than the limit")]
    ListTooLarge,
}

/// Decodes the header blocks of one HTTP/2 connection (one decoder per
/// connection: the dynamic table is the connection's).
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The SETTINGS_HEADER_TABLE_SIZE advertised: the most a size update
    /// may set.
    max_table_size: usize,
    /// Huffman output of the field being decoded (name then value).
    scratch: Vec<u8>,
}

/// Where a decoded string is: in the block, or in the scratch buffer.
#[derive(Debug, Clone, Copy)]
enum Span {
    Block(usize, usize),
    Scratch(usize, usize),
}

impl Span {
    fn bytes<'a>(self, block: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
        let (from, start, end) = match self {
            Span::Block(s, e) => (block, s, e),
            Span::Scratch(s, e) => (scratch, s, e),
        };
        from.get(start..end).unwrap_or_default()
    }
}

/// A literal field's name: a table index, or a string.
#[derive(Debug, Clone, Copy)]
enum NameSpan {
    Indexed(usize),
    Literal(Span),
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE dotgate advertises
    /// (the largest size a dynamic table size update may set). Allocates
    /// nothing.
    pub fn new(max_table_size: usize) -> Decoder {
        Decoder {
            table: DynamicTable::new(max_table_size),
            max_table_size,
            scratch: Vec::new(),
        }
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION payloads
    /// already joined), calling `field(name, value)` for each field in
    /// order.
    ///
    /// `max_list_size`: the header list limit (sum of name.len() +
    /// value.len() + 32 over fields, RFC 7541 §4.1 / RFC 9113
    /// SETTINGS_MAX_HEADER_LIST_SIZE). Past it, the rest of the block is
    /// still decoded into the dynamic table (which must stay in step with
    /// the encoder's) without calling `field`, and the result is
    /// `Err(HpackError::ListTooLarge)`. Any other error is a
    /// COMPRESSION_ERROR for the connection.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list_size: usize,
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let result = self.decode_fields(block, max_list_size, &mut field);
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
        result
    }

    /// Bytes the decoder holds now (dynamic table entries + scratch
    /// capacity), for the memory accounting of an idle connection.
    pub fn held(&self) -> usize {
        self.table.held() + self.scratch.capacity()
    }

    fn decode_fields(
        &mut self,
        block: &[u8],
        max_list_size: usize,
        field: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut list_size = 0usize;
        let mut seen_field = false;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = integer::decode(block, &mut pos, 7)?;
                let (name, value) = self.lookup(index)?;
                if add(&mut list_size, name, value, max_list_size) {
                    field(name, value);
                }
                seen_field = true;
                continue;
            }
            if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3), only before any field.
                if seen_field {
                    return Err(HpackError::TableSizeUpdateLate);
                }
                let size = integer::decode(block, &mut pos, 5)?;
                if size as usize > self.max_table_size {
                    return Err(HpackError::TableSizeTooLarge {
                        size,
                        max: self.max_table_size,
                    });
                }
                self.table.set_max_size(size as usize);
                continue;
            }
            // A literal (§6.2): with incremental indexing (01, 6-bit
            // index), without indexing (0000) or never indexed (0001), both
            // with a 4-bit index.
            let indexing = first & 0xc0 == 0x40;
            let prefix = if indexing { 6 } else { 4 };
            self.scratch.clear();
            let index = integer::decode(block, &mut pos, prefix)?;
            let name = if index == 0 {
                NameSpan::Literal(string(block, &mut pos, &mut self.scratch)?)
            } else {
                self.lookup(index)?;
                NameSpan::Indexed(index as usize)
            };
            let value = string(block, &mut pos, &mut self.scratch)?;
            let value = value.bytes(block, &self.scratch);
            let name_bytes = match name {
                NameSpan::Indexed(i) => self.table.get(i).map(|(n, _)| n).unwrap_or_default(),
                NameSpan::Literal(span) => span.bytes(block, &self.scratch),
            };
            if add(&mut list_size, name_bytes, value, max_list_size) {
                field(name_bytes, value);
            }
            seen_field = true;
            if indexing {
                let name = match name {
                    NameSpan::Indexed(i) => Name::Indexed(i),
                    NameSpan::Literal(span) => Name::Literal(span.bytes(block, &self.scratch)),
                };
                self.table.insert(name, value);
            }
        }
        if list_size > max_list_size {
            return Err(HpackError::ListTooLarge);
        }
        Ok(())
    }

    /// The field at `index`, or why there is none.
    fn lookup(&self, index: u32) -> Result<(&[u8], &[u8]), HpackError> {
        if index == 0 {
            return Err(HpackError::ZeroIndex);
        }
        self.table
            .get(index as usize)
            .ok_or(HpackError::BadIndex(index))
    }
}

/// Adds a field's size to the list size; true while the list is within
/// `max` (the field is to be passed on).
fn add(list_size: &mut usize, name: &[u8], value: &[u8], max: usize) -> bool {
    *list_size = list_size.saturating_add(name.len() + value.len() + ENTRY_OVERHEAD);
    *list_size <= max
}

/// Reads a string literal (§5.2) at `*pos`: raw, a span of the block;
/// Huffman-coded, decoded onto the end of `scratch`.
fn string(block: &[u8], pos: &mut usize, scratch: &mut Vec<u8>) -> Result<Span, HpackError> {
    let huffman = block.get(*pos).is_some_and(|b| b & 0x80 != 0);
    let len = integer::decode(block, pos, 7)? as usize;
    let start = *pos;
    let end = start.checked_add(len).ok_or(HpackError::Truncated)?;
    let bytes = block.get(start..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    if !huffman {
        return Ok(Span::Block(start, end));
    }
    let from = scratch.len();
    huffman::decode(bytes, scratch)?;
    Ok(Span::Scratch(from, scratch.len()))
}
