//! Query IDs toward an upstream: a fresh random 16-bit ID per query, unused
//! among the queries in flight on the same socket or connection (RFC 5452
//! §9.2), and removal that never takes a later query's entry.
//!
//! An abandoned query (its try timed out, its client left) removes its own
//! entry; by then the reply may have been delivered and the ID handed to a
//! new query. Each entry therefore carries a sequence number, and the
//! [`Ticket`] of a query removes only the entry it made. The UDP sockets and
//! the stream connections both keep their in-flight queries in an [`Ids`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Random draws before the search for a free ID turns to a scan: with the
/// map full to all but a few IDs, a draw rarely hits one, and the search
/// must end in bounded time.
const DRAWS: usize = 64;

/// The most queries in flight at once: one ID is always left free.
pub const MAX_IN_FLIGHT: usize = u16::MAX as usize;

/// Names one query's entry: its ID, and which use of that ID it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub id: u16,
    seq: u64,
}

struct Slot<T> {
    seq: u64,
    value: T,
}

/// Hashes an ID with one multiplication (Fibonacci hashing): the IDs are
/// drawn at random by dotgate, never chosen by a peer, so the keyed hash
/// that guards a map against chosen keys buys nothing here, and it was
/// computed about five times per query. A reply's ID, which a peer does
/// choose, is only looked up.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u16(u16::from(b));
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = (self.0 ^ u64::from(id)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The queries in flight on one socket or connection, by ID.
pub struct Ids<T> {
    map: HashMap<u16, Slot<T>, BuildHasherDefault<IdHasher>>,
    next_seq: u64,
}

impl<T> Default for Ids<T> {
    fn default() -> Self {
        Self {
            map: HashMap::default(),
            next_seq: 0,
        }
    }
}

impl<T> Ids<T> {
    /// Queries in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Registers `value` under a random unused ID; `None` when
    /// [`MAX_IN_FLIGHT`] queries are already in flight.
    pub fn insert(&mut self, value: T) -> Option<Ticket> {
        if self.map.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let id = self.free_id()?;
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.map.insert(id, Slot { seq, value });
        Some(Ticket { id, seq })
    }

    /// A random ID not in use: drawn, or after [`DRAWS`] misses the first
    /// free one from a random start.
    fn free_id(&self) -> Option<u16> {
        for _ in 0..DRAWS {
            let id: u16 = rand::random();
            if !self.map.contains_key(&id) {
                return Some(id);
            }
        }
        let start: u16 = rand::random();
        (0..=u16::MAX)
            .map(|offset| start.wrapping_add(offset))
            .find(|id| !self.map.contains_key(id))
    }

    /// The query waiting under `id`, whichever it is.
    #[cfg(test)]
    pub fn get(&self, id: u16) -> Option<&T> {
        self.map.get(&id).map(|slot| &slot.value)
    }

    /// The query waiting under `id`, to note something about it.
    pub fn get_mut(&mut self, id: u16) -> Option<&mut T> {
        self.map.get_mut(&id).map(|slot| &mut slot.value)
    }

    /// The query of `ticket`, if it is still waiting.
    pub fn get_ticket(&self, ticket: Ticket) -> Option<&T> {
        self.map
            .get(&ticket.id)
            .filter(|slot| slot.seq == ticket.seq)
            .map(|slot| &slot.value)
    }

    /// Removes the query waiting under `id` (its reply came).
    pub fn remove(&mut self, id: u16) -> Option<T> {
        self.map.remove(&id).map(|slot| slot.value)
    }

    /// Removes the query of `ticket`, never a later one that reuses the ID.
    pub fn remove_ticket(&mut self, ticket: Ticket) -> Option<T> {
        match self.map.entry(ticket.id) {
            Entry::Occupied(slot) if slot.get().seq == ticket.seq => Some(slot.remove().value),
            _ => None,
        }
    }

    /// Removes every query (the connection is gone).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.map.drain().map(|(_, slot)| slot.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_flight_are_distinct_and_found() {
        let mut ids = Ids::default();
        let tickets: Vec<Ticket> = (0..1000).map(|n| ids.insert(n).unwrap()).collect();
        let distinct: std::collections::HashSet<u16> = tickets.iter().map(|t| t.id).collect();
        assert_eq!(distinct.len(), 1000);
        for (n, ticket) in tickets.iter().enumerate() {
            assert_eq!(ids.get(ticket.id), Some(&n));
        }
    }

    #[test]
    fn ids_are_not_predictable_from_the_previous_ones() {
        let mut ids = Ids::default();
        let drawn: Vec<u16> = (0..64)
            .map(|_| {
                let ticket = ids.insert(()).unwrap();
                ids.remove(ticket.id);
                ticket.id
            })
            .collect();
        // Neither a counter nor a constant: consecutive IDs rarely differ by one.
        let steps = drawn.windows(2).filter(|w| w[1] == w[0].wrapping_add(1));
        assert!(steps.count() < 4, "{drawn:?}");
    }

    #[test]
    fn an_abandoned_query_never_removes_the_next_user_of_its_id() {
        let mut ids = Ids::default();
        let old = ids.insert("old").unwrap();
        assert_eq!(ids.remove(old.id), Some("old"), "its reply came");
        // Later queries, until one is given the old query's ID.
        let newer = (0..10_000_000)
            .find_map(|_| {
                let ticket = ids.insert("new").unwrap();
                if ticket.id == old.id {
                    return Some(ticket);
                }
                ids.remove_ticket(ticket);
                None
            })
            .expect("every ID comes up within ten million draws");
        assert_eq!(ids.get(old.id), Some(&"new"));
        assert_eq!(ids.get_ticket(old), None);
        assert_eq!(ids.get_ticket(newer), Some(&"new"));
        assert_eq!(ids.remove_ticket(old), None, "the stale guard drops");
        assert_eq!(ids.remove_ticket(newer), Some("new"));
        assert!(ids.is_empty());
    }

    #[test]
    fn a_full_map_refuses_and_a_freed_id_is_found_by_the_scan() {
        let mut ids = Ids::default();
        let tickets: Vec<Ticket> = (0..MAX_IN_FLIGHT)
            .map(|_| ids.insert(()).unwrap())
            .collect();
        assert_eq!(ids.insert(()), None, "one ID always left free");
        let freed = tickets[12_345];
        ids.remove_ticket(freed).unwrap();
        // Two IDs free among 65536: the draws almost always miss, the scan
        // finds one of them.
        let again = ids.insert(()).unwrap();
        assert!(ids.get(again.id).is_some());
        assert_eq!(ids.len(), MAX_IN_FLIGHT);
        assert_eq!(ids.drain().count(), MAX_IN_FLIGHT);
        assert!(ids.is_empty());
    }
}
