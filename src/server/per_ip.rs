//! Per-client-address admission: a loose cap on open connections and an
//! optional rate limit on new handshakes (R16).
//!
//! The cap is generous by default because many users share one address
//! behind NAT (RFC 7766 §6.2.2); its job is to keep one address from taking
//! every slot of the global cap. The handshake rate limit is off by default:
//! handshakes are the expensive part of a DoT connection, and an operator who
//! sees floods can turn it on.
//!
//! IPv4-mapped IPv6 addresses (from the dual-stack `[::]` listener) count as
//! their IPv4 address; other IPv6 addresses count per /64, the block one
//! host usually controls whole.
//!
//! One mutex guards the table; it is taken once per accepted connection and
//! once per close, never per query and never across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `--max-connections-per-ip`.
    TooManyConnections,
    /// Over `--max-handshakes-per-ip-per-sec`.
    HandshakeRate,
}

/// How often entries of addresses with no open connection and a full
/// handshake allowance are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Entry {
    open: usize,
    /// Handshake allowance left (a token bucket refilled at the rate).
    tokens: f64,
    refilled: Instant,
}

struct Table {
    entries: HashMap<IpAddr, Entry>,
    swept: Instant,
}

/// The per-address limits and their table.
pub struct PerIp {
    max_open: usize,
    handshakes_per_sec: Option<u32>,
    table: Mutex<Table>,
}

/// A connection's place under its address's cap; released on drop.
pub struct IpSlot {
    limits: Arc<PerIp>,
    key: IpAddr,
}

impl PerIp {
    pub fn new(max_open: usize, handshakes_per_sec: Option<u32>, now: Instant) -> Arc<Self> {
        Arc::new(Self {
            max_open,
            handshakes_per_sec,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                swept: now,
            }),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Every operation leaves the table consistent, so a poisoned lock
        // (a panic elsewhere while holding it) is safe to keep using.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `ip` at time `now`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<IpSlot, Refusal> {
        let key = key_of(ip);
        let mut table = self.table();
        if now.saturating_duration_since(table.swept) >= SWEEP_EVERY {
            self.sweep(&mut table, now);
        }
        let burst = self.handshakes_per_sec.map_or(0.0, f64::from);
        let entry = table.entries.entry(key).or_insert(Entry {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        if entry.open >= self.max_open {
            return Err(Refusal::TooManyConnections);
        }
        if let Some(rate) = self.handshakes_per_sec {
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * f64::from(rate)).min(burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                return Err(Refusal::HandshakeRate);
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        Ok(IpSlot {
            limits: self.clone(),
            key,
        })
    }

    /// Forgets addresses that hold nothing: no open connection, and a
    /// handshake allowance that has refilled.
    fn sweep(&self, table: &mut Table, now: Instant) {
        let rate = self.handshakes_per_sec;
        table.entries.retain(|_, e| {
            let refilled = match rate {
                Some(rate) => {
                    now.saturating_duration_since(e.refilled).as_secs_f64() * f64::from(rate)
                        + e.tokens
                        >= f64::from(rate)
                }
                None => true,
            };
            e.open > 0 || !refilled
        });
        table.swept = now;
    }

    /// Number of addresses currently tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.table().entries.len()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.limits.table();
        let rate_limited = self.limits.handshakes_per_sec.is_some();
        if let Some(entry) = table.entries.get_mut(&self.key) {
            entry.open = entry.open.saturating_sub(1);
            // Without a rate limit there is nothing to remember.
            if entry.open == 0 && !rate_limited {
                table.entries.remove(&self.key);
            }
        }
    }
}

/// The table key of a client address.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_open_connections_per_address() {
        let now = Instant::now();
        let limits = PerIp::new(2, None, now);
        let a = limits.admit(ip("192.0.2.1"), now).unwrap();
        let _b = limits.admit(ip("192.0.2.1"), now).unwrap();
        assert_eq!(
            limits.admit(ip("192.0.2.1"), now).err(),
            Some(Refusal::TooManyConnections)
        );
        // Another address is not affected.
        let _c = limits.admit(ip("192.0.2.2"), now).unwrap();
        drop(a);
        assert!(limits.admit(ip("192.0.2.1"), now).is_ok());
    }

    #[test]
    fn mapped_ipv4_and_one_ipv6_block_share_an_entry() {
        let now = Instant::now();
        let limits = PerIp::new(1, None, now);
        let _a = limits.admit(ip("192.0.2.1"), now).unwrap();
        assert!(limits.admit(ip("::ffff:192.0.2.1"), now).is_err());
        let _b = limits.admit(ip("2001:db8::1"), now).unwrap();
        assert!(limits.admit(ip("2001:db8::2"), now).is_err());
        assert!(limits.admit(ip("2001:db8:0:1::1"), now).is_ok());
    }

    #[test]
    fn limits_the_handshake_rate_and_refills() {
        let start = Instant::now();
        let limits = PerIp::new(100, Some(3), start);
        for _ in 0..3 {
            drop(limits.admit(ip("192.0.2.1"), start).unwrap());
        }
        assert_eq!(
            limits.admit(ip("192.0.2.1"), start).err(),
            Some(Refusal::HandshakeRate)
        );
        // A third of a second later, one more handshake is allowed.
        let later = start + Duration::from_millis(340);
        assert!(limits.admit(ip("192.0.2.1"), later).is_ok());
        assert!(limits.admit(ip("192.0.2.1"), later).is_err());
        // Other addresses keep their own allowance.
        assert!(limits.admit(ip("192.0.2.9"), start).is_ok());
    }

    #[test]
    fn forgets_idle_addresses() {
        let start = Instant::now();
        let limits = PerIp::new(10, Some(5), start);
        drop(limits.admit(ip("192.0.2.1"), start).unwrap());
        let held = limits.admit(ip("192.0.2.2"), start).unwrap();
        assert_eq!(limits.tracked(), 2);
        let later = start + SWEEP_EVERY + Duration::from_secs(1);
        drop(limits.admit(ip("192.0.2.3"), later).unwrap());
        // .1 refilled and holds nothing: forgotten; .2 still open; .3 new.
        assert_eq!(limits.tracked(), 2);
        drop(held);

        let no_rate = PerIp::new(10, None, start);
        drop(no_rate.admit(ip("192.0.2.1"), start).unwrap());
        assert_eq!(no_rate.tracked(), 0);
    }
}
