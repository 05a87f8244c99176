//! The indexing tables (RFC 7541 §2.3): the static table (Appendix A,
//! indices 1 to 61) and one connection's dynamic table (indices 62 and up,
//! newest first), with the size accounting and eviction of §4.
//!
//! The dynamic table is a `VecDeque` of entries, each one boxed slice
//! holding name then value, and the split point. Why this layout:
//!
//! - a field that refers to an entry is handed to the caller as two slices
//!   of that box, with no copy (a byte ring would split entries that wrap
//!   around its end);
//! - memory follows what the peer actually inserted: an idle connection
//!   whose client sent a few small fields holds a few hundred bytes, not
//!   the advertised maximum allocated up front;
//! - the cost per entry (24 bytes in the deque plus the allocator's header)
//!   stays under the 32 bytes of overhead RFC 7541 §4.1 charges for it, so
//!   the bytes held are bounded by the table size the peer may use (plus
//!   the deque's spare capacity).
//!
//! An entry is allocated only when inserted (a literal with incremental
//! indexing), never when referenced.

use std::collections::VecDeque;

/// RFC 7541 §4.1: the size of an entry is its name and value lengths
/// plus 32.
pub(super) const ENTRY_OVERHEAD: usize = 32;

/// RFC 7541 Appendix A.
pub(super) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The name of a field to insert: its bytes, or the index of an entry
/// (static or dynamic) whose name it takes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Name<'a> {
    Literal(&'a [u8]),
    Indexed(usize),
}

/// One dynamic table entry: name and value in one allocation.
#[derive(Debug)]
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn field(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.name_len.min(self.bytes.len()))
    }

    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// A connection's dynamic table.
#[derive(Debug, Default)]
pub(super) struct DynamicTable {
    /// Newest first: index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes (RFC accounting).
    size: usize,
    /// The current maximum size, as last set by a size update.
    max_size: usize,
}

impl DynamicTable {
    /// An empty table of maximum size `max_size`; allocates nothing.
    pub(super) fn new(max_size: usize) -> DynamicTable {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// The field at `index` (1-based, static table first), if any.
    pub(super) fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        match index {
            0 => None,
            1..=61 => STATIC.get(index - 1).copied(),
            _ => self.entries.get(index - 62).map(Entry::field),
        }
    }

    /// Inserts a field (§4.4): evicts the oldest entries until it fits; a
    /// field larger than the whole table empties it and is not stored.
    /// Returns false if `name` is an index with no entry.
    pub(super) fn insert(&mut self, name: Name<'_>, value: &[u8]) -> bool {
        let name = match name {
            Name::Literal(name) => name,
            Name::Indexed(index) => match self.get(index) {
                Some((name, _)) => name,
                None => return false,
            },
        };
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return true;
        }
        // Copied before evicting: the name may be that of an entry about
        // to go (§4.4).
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        let name_len = name.len();
        self.evict_to(self.max_size - size);
        self.entries.push_front(Entry {
            bytes: bytes.into_boxed_slice(),
            name_len,
        });
        self.size += size;
        true
    }

    /// Applies a dynamic table size update (§4.3, §6.3); the caller has
    /// checked it against the advertised limit.
    pub(super) fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
        if self.entries.is_empty() {
            // A table emptied on purpose gives its memory back.
            self.entries = VecDeque::new();
        }
    }

    /// Evicts the oldest entries until the size is at most `target`.
    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.entries.pop_back() {
                Some(entry) => self.size -= entry.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    /// The table's size by RFC accounting.
    #[cfg(test)]
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// The number of entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Heap bytes held: the deque's slots and the entries' bytes.
    pub(super) fn held(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.entries.iter().map(|e| e.bytes.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_table_ends() {
        let t = DynamicTable::new(4096);
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(1), Some((&b":authority"[..], &b""[..])));
        assert_eq!(t.get(2), Some((&b":method"[..], &b"GET"[..])));
        assert_eq!(t.get(61), Some((&b"www-authenticate"[..], &b""[..])));
        assert_eq!(t.get(62), None);
    }

    #[test]
    fn newest_first_and_oldest_evicted() {
        // Each entry: 1 + 1 + 32 = 34; three fit in 102, not four.
        let mut t = DynamicTable::new(102);
        for (n, v) in [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")] {
            t.insert(Name::Literal(n), v);
        }
        assert_eq!((t.len(), t.size()), (3, 102));
        assert_eq!(t.get(62), Some((&b"c"[..], &b"3"[..])));
        assert_eq!(t.get(64), Some((&b"a"[..], &b"1"[..])));
        t.insert(Name::Literal(b"d"), b"4");
        assert_eq!((t.len(), t.size()), (3, 102));
        assert_eq!(t.get(62), Some((&b"d"[..], &b"4"[..])));
        assert_eq!(t.get(64), Some((&b"b"[..], &b"2"[..])), "'a' evicted first");
        assert_eq!(t.get(65), None);
        // A bigger entry evicts as many as it needs, oldest first.
        t.insert(Name::Literal(b"ee"), b"55555");
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(62), Some((&b"ee"[..], &b"55555"[..])));
        assert_eq!(t.get(63), Some((&b"d"[..], &b"4"[..])));
        assert_eq!(t.size(), 39 + 34);
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it() {
        let mut t = DynamicTable::new(40);
        t.insert(Name::Literal(b"a"), b"1");
        t.insert(Name::Literal(b"name"), b"value");
        assert_eq!((t.len(), t.size()), (0, 0));
    }

    #[test]
    fn inserting_a_name_from_an_entry_it_evicts() {
        // The new entry reuses the name of the one it pushes out.
        let mut t = DynamicTable::new(40);
        assert!(t.insert(Name::Literal(b"name"), b"v1"));
        assert!(t.insert(Name::Indexed(62), b"v2"));
        assert!(!t.insert(Name::Indexed(63), b"v3"), "no entry 63");
        assert_eq!(t.get(62), Some((&b"name"[..], &b"v2"[..])));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_smaller_maximum_evicts_and_zero_frees() {
        let mut t = DynamicTable::new(4096);
        t.insert(Name::Literal(b"a"), b"1");
        t.insert(Name::Literal(b"b"), b"2");
        t.set_max_size(34);
        assert_eq!((t.len(), t.size()), (1, 34));
        assert_eq!(t.get(62), Some((&b"b"[..], &b"2"[..])));
        t.set_max_size(0);
        assert_eq!((t.len(), t.size(), t.held()), (0, 0, 0));
    }
}
