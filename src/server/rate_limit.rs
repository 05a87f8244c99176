//! Per-client query rate limits and temporary bans (`--max-qps-per-ip`,
//! `--max-qps-per-client-id`, `--ban-after`), shared by every transport.
//!
//! Each transport adapter asks [`RateLimiter::judge`] about every query it
//! has read, before the one query path ([`crate::server::respond::answer`]),
//! and does what the [`Decision`] says; accept asks [`RateLimiter::banned`]
//! about every new connection. A query judged over the limit never reaches
//! the upstream.
//!
//! The state is a token bucket per client address (IPv4, or an IPv6
//! prefix) and per client ID, in fixed tables of their own ([`Table`]):
//! memory is set at start whatever the number of addresses, and a scan from
//! many addresses only forgets the least recently seen ones (bans last).
//! Time is passed in, so the tests drive it.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};

use crate::config::rate_limit::{Action, BanSettings, Rate, RateLimitSettings};
use crate::metrics::stats::{Stats, Transport};

/// Refusals further apart than this end a streak of going over the limit:
/// a client that only now and then bursts past it is never banned.
const STREAK_GAP: Duration = Duration::from_secs(1);

/// Slots a key may occupy in a table (its set): the least recently seen of
/// them is replaced when all are taken.
const WAYS: usize = 8;

/// Locks per table. A query takes one for a few dozen nanoseconds: with 64,
/// two cores almost never wait for each other.
const SHARDS: usize = 64;

/// What a transport does with one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Under every limit: on to the upstream.
    Serve,
    /// Over a limit, `--rate-limit-action refused`: a REFUSED reply.
    Refuse,
    /// Over a limit, `drop`: no reply (DoT), 429 (DoH).
    Drop,
    /// Over a limit with `close`, or the address is banned: the connection
    /// is closed (DoH: 429, then closed).
    Close,
}

/// Which limit a query went over: the metric's label type, declared with
/// the metrics.
pub use crate::metrics::stats::RateLimitLabel as Limit;

/// One bucket's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Over,
    /// Banned; `started` for the query that began the ban.
    Banned {
        started: bool,
    },
}

/// The limits of one server, over all its transports.
pub struct RateLimiter {
    ip: Option<Table>,
    client_id: Option<Table>,
    settings: RateLimitSettings,
    ids: RandomState,
    /// `dotgate_rate_limited_total`, indexed by [`Transport`] then [`Limit`].
    limited: [[IntCounter; 3]; 2],
    bans: IntCounter,
}

impl RateLimiter {
    /// The limiter of `settings`, or `None` when no limit is on (the query
    /// path then asks nothing). The tables are allocated here, whole.
    pub fn new(settings: &RateLimitSettings, stats: &Stats, now: Instant) -> Option<Self> {
        if !settings.enabled() {
            return None;
        }
        let table = |rate: Option<Rate>, ban: Option<BanSettings>| {
            rate.map(|rate| {
                Table::new(
                    rate,
                    ban,
                    settings.table_size,
                    now,
                    stats.rate_limit_entries.clone(),
                    stats.rate_limit_evictions.clone(),
                )
            })
        };
        Some(Self {
            ip: table(settings.per_ip, settings.ban),
            client_id: table(settings.per_client_id, None),
            settings: settings.clone(),
            ids: RandomState::new(),
            limited: Transport::ALL.map(|t| Limit::ALL.map(|l| stats.rate_limited(t, l))),
            bans: stats.bans.clone(),
        })
    }

    /// Judges one query from `addr` (with client ID `id`) at `now`; counts
    /// it if it is over a limit, and logs a ban when it begins one.
    pub fn judge(
        &self,
        addr: IpAddr,
        id: Option<&str>,
        transport: Transport,
        now: Instant,
    ) -> Decision {
        if self.exempt(addr) {
            return Decision::Serve;
        }
        let mut over = None;
        if let Some(table) = &self.ip {
            let key = ip_key(addr, self.settings.v6_prefix);
            match table.check(key, now) {
                Verdict::Allow => {}
                Verdict::Over => over = Some(Limit::Ip),
                Verdict::Banned { started } => {
                    if started {
                        self.bans.inc();
                        tracing::warn!(
                            client = %Group(addr, self.settings.v6_prefix),
                            ban_for = ?self.settings.ban.map(|b| b.length),
                            "banned: over --max-qps-per-ip for --ban-after; its connections are closed and refused"
                        );
                    }
                    self.limited[transport as usize][Limit::Banned as usize].inc();
                    return Decision::Close;
                }
            }
        }
        if let (None, Some(table), Some(id)) = (over, &self.client_id, id) {
            if table.check(u128::from(self.ids.hash_one(id)), now) != Verdict::Allow {
                over = Some(Limit::ClientId);
            }
        }
        match over {
            None => Decision::Serve,
            Some(limit) => {
                self.limited[transport as usize][limit as usize].inc();
                match self.settings.action {
                    Action::Refused => Decision::Refuse,
                    Action::Drop => Decision::Drop,
                    Action::Close => Decision::Close,
                }
            }
        }
    }

    /// True while `addr` is banned: its new connections are refused.
    pub fn banned(&self, addr: IpAddr, now: Instant) -> bool {
        match &self.ip {
            Some(table) if table.ban.is_some() && !self.exempt(addr) => {
                table.banned(ip_key(addr, self.settings.v6_prefix), now)
            }
            _ => false,
        }
    }

    fn exempt(&self, addr: IpAddr) -> bool {
        self.settings.exempt.iter().any(|net| net.contains(addr))
    }

    /// Entries the address table holds now (for tests and the bound).
    pub fn tracked(&self) -> usize {
        self.ip.as_ref().map_or(0, Table::tracked)
    }

    /// The most entries the address table can hold.
    pub fn capacity(&self) -> usize {
        self.ip.as_ref().map_or(0, Table::capacity)
    }
}

/// The table key of a client address: IPv4 (mapped or not) as the
/// IPv4-mapped IPv6 address, IPv6 cut to `v6_prefix` bits.
fn ip_key(addr: IpAddr, v6_prefix: u8) -> u128 {
    match addr.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & prefix_mask(v6_prefix),
    }
}

fn prefix_mask(len: u8) -> u128 {
    match len {
        0 => 0,
        len if len >= 128 => u128::MAX,
        len => !(u128::MAX >> len),
    }
}

/// A client address as its bucket sees it, for the ban log line: the
/// IPv4 address, or the IPv6 prefix.
struct Group(IpAddr, u8);

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.to_canonical() {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => {
                let net = Ipv6Addr::from(u128::from(v6) & prefix_mask(self.1));
                write!(f, "{net}/{}", self.1)
            }
        }
    }
}

/// One tracked key. Times are nanoseconds since the table's start, plus
/// one, so that 0 means "never".
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    key: u128,
    /// When the bucket was last refilled (its last query); 0 for an empty
    /// slot.
    seen: u64,
    /// When the current streak of refusals began; 0 for none.
    over_since: u64,
    /// The streak's latest refusal.
    last_over: u64,
    /// Until when the key is banned; 0 for not.
    banned_until: u64,
    tokens: f32,
}

/// A fixed-size, set-associative table of token buckets: a key hashes to
/// one shard and, in it, one set of 8 slots (`WAYS`). A new key takes an
/// empty slot of its set, else the least recently seen one that is not
/// banned (else the least recently seen). Never allocates after
/// [`Table::new`].
pub struct Table {
    rate: Rate,
    ban: Option<BanSettings>,
    start: Instant,
    hasher: RandomState,
    sets_per_shard: usize,
    shards: Box<[Mutex<Box<[Slot]>>]>,
    occupied: AtomicUsize,
    entries: IntGauge,
    evictions: IntCounter,
}

impl Table {
    /// A table of at least `size` slots (rounded up to whole sets in every
    /// shard).
    pub fn new(
        rate: Rate,
        ban: Option<BanSettings>,
        size: usize,
        start: Instant,
        entries: IntGauge,
        evictions: IntCounter,
    ) -> Self {
        let sets_per_shard = size.div_ceil(SHARDS * WAYS).max(1);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(vec![Slot::default(); sets_per_shard * WAYS].into_boxed_slice()))
            .collect();
        Self {
            rate,
            ban,
            start,
            hasher: RandomState::new(),
            sets_per_shard,
            shards,
            occupied: AtomicUsize::new(0),
            entries,
            evictions,
        }
    }

    pub fn capacity(&self) -> usize {
        SHARDS * self.sets_per_shard * WAYS
    }

    pub fn tracked(&self) -> usize {
        self.occupied.load(Ordering::Relaxed)
    }

    fn time(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX - 1)
            + 1
    }

    /// The shard and the first slot of `key`'s set in it. The hash is keyed
    /// per process: a client cannot aim its addresses at one set.
    fn place(&self, key: u128) -> (MutexGuard<'_, Box<[Slot]>>, usize) {
        let hash = self.hasher.hash_one(key);
        let shard = (hash as usize) % SHARDS;
        let set = ((hash >> 32) as usize) % self.sets_per_shard;
        // Every operation leaves the slots consistent: a poisoned lock is
        // safe to keep using.
        let guard = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        (guard, set * WAYS)
    }

    /// Takes one token from `key`'s bucket at `now`, tracking it if new.
    pub fn check(&self, key: u128, now: Instant) -> Verdict {
        let t = self.time(now);
        let (mut slots, first) = self.place(key);
        let set = &mut slots[first..first + WAYS];
        let index = match set.iter().position(|s| s.seen != 0 && s.key == key) {
            Some(i) => i,
            None => {
                let i = victim(set, t);
                if set[i].seen == 0 {
                    self.occupied.fetch_add(1, Ordering::Relaxed);
                    self.entries.inc();
                } else {
                    self.evictions.inc();
                }
                set[i] = Slot {
                    key,
                    seen: t,
                    tokens: self.rate.burst as f32,
                    ..Slot::default()
                };
                i
            }
        };
        let slot = &mut set[index];
        if slot.banned_until > t {
            return Verdict::Banned { started: false };
        }
        let elapsed = t.saturating_sub(slot.seen) as f64 / 1e9;
        let tokens = (f64::from(slot.tokens) + elapsed * f64::from(self.rate.per_sec))
            .min(f64::from(self.rate.burst));
        slot.seen = t;
        if tokens >= 1.0 {
            slot.tokens = (tokens - 1.0) as f32;
            return Verdict::Allow;
        }
        slot.tokens = tokens as f32;
        let gap = STREAK_GAP.as_nanos() as u64;
        if slot.over_since == 0 || t.saturating_sub(slot.last_over) > gap {
            slot.over_since = t;
        }
        slot.last_over = t;
        if let Some(ban) = self.ban {
            let after = u64::try_from(ban.after.as_nanos()).unwrap_or(u64::MAX);
            if t - slot.over_since >= after {
                let length = u64::try_from(ban.length.as_nanos()).unwrap_or(u64::MAX);
                slot.banned_until = t.saturating_add(length);
                slot.over_since = 0;
                return Verdict::Banned { started: true };
            }
        }
        Verdict::Over
    }

    /// True while `key` is banned; looks only, tracks nothing new.
    pub fn banned(&self, key: u128, now: Instant) -> bool {
        let t = self.time(now);
        let (slots, first) = self.place(key);
        slots[first..first + WAYS]
            .iter()
            .any(|s| s.seen != 0 && s.key == key && s.banned_until > t)
    }
}

/// The slot of `set` a new key takes at time `t`: an empty one, else the
/// least recently seen unbanned one, else the least recently seen.
fn victim(set: &[Slot], t: u64) -> usize {
    if let Some(empty) = set.iter().position(|s| s.seen == 0) {
        return empty;
    }
    let oldest = |banned: bool| {
        set.iter()
            .enumerate()
            .filter(|(_, s)| (s.banned_until > t) == banned)
            .min_by_key(|(_, s)| s.seen)
            .map(|(i, _)| i)
    };
    oldest(false).or_else(|| oldest(true)).unwrap_or(0)
}

#[cfg(test)]
mod tests;
