//! The buckets, bans, grouping and table bound of [`super`], with time
//! driven by the tests (every `Instant` is the start plus a chosen offset).

use super::*;
use crate::config::proxy::Cidr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn settings(per_ip: Option<Rate>, ban: Option<BanSettings>) -> RateLimitSettings {
    RateLimitSettings {
        per_ip,
        per_client_id: None,
        v6_prefix: 56,
        action: Action::Refused,
        exempt: Vec::new(),
        ban,
        table_size: 4096,
    }
}

fn rate(per_sec: u32, burst: u32) -> Option<Rate> {
    Some(Rate { per_sec, burst })
}

fn limiter(settings: &RateLimitSettings, start: Instant) -> (RateLimiter, Stats) {
    let stats = Stats::new().unwrap();
    let limiter = RateLimiter::new(settings, &stats, start).expect("a limit is on");
    (limiter, stats)
}

/// Sends a query every `every` for `length` from `addr`; counts what was
/// served.
fn flood(
    limiter: &RateLimiter,
    addr: IpAddr,
    from: Instant,
    every: Duration,
    length: Duration,
) -> (usize, Vec<Decision>) {
    let mut served = 0;
    let mut decisions = Vec::new();
    let mut at = from;
    while at < from + length {
        let decision = limiter.judge(addr, None, Transport::Dot, at);
        if decision == Decision::Serve {
            served += 1;
        }
        decisions.push(decision);
        at += every;
    }
    (served, decisions)
}

#[test]
fn off_without_a_limit() {
    let stats = Stats::new().unwrap();
    assert!(RateLimiter::new(&settings(None, None), &stats, Instant::now()).is_none());
}

/// 100 queries a second against 10 a second with a burst of 5: the burst,
/// then the rate, and every other query REFUSED and counted.
#[test]
fn holds_a_client_at_its_rate_plus_the_burst() {
    let start = Instant::now();
    let (limiter, stats) = limiter(&settings(rate(10, 5), None), start);
    let (served, decisions) = flood(
        &limiter,
        ip("192.0.2.1"),
        start,
        Duration::from_millis(10),
        Duration::from_secs(3),
    );
    // 5 at once, then one every 100 ms for 3 s.
    assert!((34..=36).contains(&served), "served {served}");
    assert!(decisions[..5].iter().all(|d| *d == Decision::Serve));
    assert_eq!(decisions[5], Decision::Refuse);
    let refused = decisions.len() - served;
    assert_eq!(
        stats.rate_limited(Transport::Dot, Limit::Ip).get(),
        refused as u64
    );
    // Another address has its own bucket.
    assert_eq!(
        limiter.judge(
            ip("192.0.2.2"),
            None,
            Transport::Doh,
            start + Duration::from_secs(3)
        ),
        Decision::Serve
    );
}

/// The action chosen is what an over-limit query gets.
#[test]
fn the_action_decides_what_an_over_limit_query_gets() {
    for (action, expected) in [
        (Action::Refused, Decision::Refuse),
        (Action::Drop, Decision::Drop),
        (Action::Close, Decision::Close),
    ] {
        let start = Instant::now();
        let mut s = settings(rate(1, 1), None);
        s.action = action;
        let (limiter, _) = limiter(&s, start);
        assert_eq!(
            limiter.judge(ip("192.0.2.1"), None, Transport::Dot, start),
            Decision::Serve
        );
        assert_eq!(
            limiter.judge(ip("192.0.2.1"), None, Transport::Dot, start),
            expected
        );
    }
}

/// Over the limit without pause for --ban-after: banned (once, counted),
/// refused at accept for --ban-for, then forgiven.
#[test]
fn keeps_exceeding_then_banned_for_a_while() {
    let start = Instant::now();
    let ban = BanSettings {
        after: Duration::from_secs(2),
        length: Duration::from_secs(60),
    };
    let (limiter, stats) = limiter(&settings(rate(10, 10), Some(ban)), start);
    let flooder = ip("192.0.2.66");
    let (_, decisions) = flood(
        &limiter,
        flooder,
        start,
        Duration::from_millis(10),
        Duration::from_secs(4),
    );
    // The bucket empties after 10 queries (0.1 s); the streak starts then,
    // and the ban 2 s later.
    let first_close = decisions
        .iter()
        .position(|d| *d == Decision::Close)
        .expect("banned");
    assert!(
        (205..=215).contains(&first_close),
        "banned at query {first_close}"
    );
    assert!(decisions[first_close..]
        .iter()
        .all(|d| *d == Decision::Close));
    assert_eq!(stats.bans.get(), 1, "one ban, counted once");
    assert!(limiter.banned(flooder, start + Duration::from_secs(30)));
    assert!(!limiter.banned(ip("192.0.2.67"), start + Duration::from_secs(30)));
    let over = start + Duration::from_millis(2_110) + ban.length + Duration::from_millis(1);
    assert!(!limiter.banned(flooder, over));
    assert_eq!(
        limiter.judge(flooder, None, Transport::Dot, over),
        Decision::Serve
    );
}

/// A client that goes over now and then (a burst every 2 s) is refused
/// those queries but never banned: the streak ends between bursts.
#[test]
fn occasional_bursts_are_not_banned() {
    let start = Instant::now();
    let ban = BanSettings {
        after: Duration::from_secs(1),
        length: Duration::from_secs(60),
    };
    let (limiter, stats) = limiter(&settings(rate(5, 5), Some(ban)), start);
    for burst in 0..10u64 {
        let at = start + Duration::from_secs(2 * burst);
        let (served, _) = flood(
            &limiter,
            ip("192.0.2.1"),
            at,
            Duration::from_millis(1),
            Duration::from_millis(8),
        );
        assert_eq!(served, 5);
    }
    assert_eq!(stats.bans.get(), 0);
    assert!(!limiter.banned(ip("192.0.2.1"), start + Duration::from_secs(20)));
}

/// IPv6 addresses of one /56 share a bucket, the next /56 does not; an
/// IPv4-mapped address is its IPv4 address.
#[test]
fn ipv6_groups_by_prefix_and_mapped_ipv4_is_ipv4() {
    let start = Instant::now();
    let (limiter, _) = limiter(&settings(rate(1, 1), None), start);
    let judge = |addr: &str| limiter.judge(ip(addr), None, Transport::Dot, start);
    assert_eq!(judge("2001:db8:0:100::1"), Decision::Serve);
    assert_eq!(judge("2001:db8:0:1ff:ffff::2"), Decision::Refuse);
    assert_eq!(judge("2001:db8:0:200::1"), Decision::Serve);
    assert_eq!(judge("192.0.2.1"), Decision::Serve);
    assert_eq!(judge("::ffff:192.0.2.1"), Decision::Refuse);
    assert_eq!(
        ip_key(ip("2001:db8::1"), 128),
        u128::from("2001:db8::1".parse::<Ipv6Addr>().unwrap())
    );
    assert_eq!(
        Group(ip("2001:db8:0:1ff::2"), 56).to_string(),
        "2001:db8:0:100::/56"
    );
}

/// --rate-limit-exempt networks are neither limited nor banned.
#[test]
fn exempt_networks_are_never_limited() {
    let start = Instant::now();
    let mut s = settings(
        rate(1, 1),
        Some(BanSettings {
            after: Duration::from_secs(1),
            length: Duration::from_secs(60),
        }),
    );
    s.exempt = vec!["10.0.0.0/8".parse::<Cidr>().unwrap()];
    let (limiter, _) = limiter(&s, start);
    let (served, _) = flood(
        &limiter,
        ip("10.1.2.3"),
        start,
        Duration::from_millis(1),
        Duration::from_secs(3),
    );
    assert_eq!(served, 3000);
    assert!(!limiter.banned(ip("10.1.2.3"), start + Duration::from_secs(3)));
    assert_eq!(limiter.tracked(), 0, "exempt clients are not even tracked");
}

/// --max-qps-per-client-id: one ID's queries share a bucket whatever
/// address they come from; queries without an ID are not judged by it.
#[test]
fn client_ids_have_buckets_of_their_own() {
    let start = Instant::now();
    let mut s = settings(None, None);
    s.per_client_id = rate(2, 2);
    let (limiter, stats) = limiter(&s, start);
    let judge = |addr: &str, id| limiter.judge(ip(addr), id, Transport::Doh, start);
    assert_eq!(judge("192.0.2.1", Some("kid")), Decision::Serve);
    assert_eq!(judge("192.0.2.2", Some("kid")), Decision::Serve);
    assert_eq!(judge("192.0.2.3", Some("kid")), Decision::Refuse);
    assert_eq!(judge("192.0.2.3", Some("parent")), Decision::Serve);
    assert_eq!(judge("192.0.2.3", None), Decision::Serve);
    assert_eq!(stats.rate_limited(Transport::Doh, Limit::ClientId).get(), 1);
}

/// A scan from a million distinct addresses: the table stays within its
/// bound (counted evictions make the room), a ban made before the scan
/// survives it, and the cost per query is printed (the figure in
/// docs/abuse.md: `cargo test --release --lib rate_limit -- --nocapture`).
#[test]
fn a_scan_of_a_million_addresses_stays_within_the_bound() {
    let start = Instant::now();
    let ban = BanSettings {
        after: Duration::from_secs(1),
        length: Duration::from_secs(600),
    };
    let mut s = settings(rate(10, 10), Some(ban));
    s.table_size = 16_384;
    let (limiter, stats) = limiter(&s, start);
    let flooder = ip("198.51.100.7");
    flood(
        &limiter,
        flooder,
        start,
        Duration::from_millis(10),
        Duration::from_secs(2),
    );
    assert!(limiter.banned(flooder, start + Duration::from_secs(2)));

    let scan_start = std::time::Instant::now();
    let at = start + Duration::from_secs(3);
    for n in 0..1_000_000u32 {
        let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        limiter.judge(addr, None, Transport::Dot, at);
    }
    let took = scan_start.elapsed();
    println!(
        "scan of 1,000,000 addresses: {:?} ({} ns per query), table {} of {} entries ({} KiB), {} evictions",
        took,
        took.as_nanos() / 1_000_000,
        limiter.tracked(),
        limiter.capacity(),
        limiter.capacity() * std::mem::size_of::<Slot>() / 1024,
        stats.rate_limit_evictions.get(),
    );
    assert_eq!(limiter.capacity(), 16_384);
    assert_eq!(limiter.tracked(), limiter.capacity());
    assert_eq!(stats.rate_limit_entries.get(), limiter.capacity() as i64);
    assert_eq!(
        stats.rate_limit_evictions.get(),
        1_000_001 - limiter.capacity() as u64
    );
    assert!(
        limiter.banned(flooder, at),
        "the scan did not evict the ban"
    );
}
