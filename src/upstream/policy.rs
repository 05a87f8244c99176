//! Picking an upstream for a query, without locks or allocation.
//!
//! * `first-available`: the first healthy upstream in the order given; the
//!   others are standbys that only see probes and failovers.
//! * `round-robin`: the healthy upstreams in turn (a shared counter; a down
//!   upstream's turn goes to the next healthy one).
//! * `least-outstanding`: the healthy upstream with the fewest queries in
//!   flight from this dotgate, ties to the first in order (dnsdist's
//!   default), which moves load away from a slow upstream.

use std::sync::atomic::{AtomicUsize, Ordering};

pub use crate::config::UpstreamPolicy as Policy;

/// What the policy sees of one upstream.
pub trait Candidate {
    fn is_up(&self) -> bool;
    fn outstanding(&self) -> usize;
}

/// Picks an upstream index among `members`, never `exclude` (the upstream
/// that just failed this query): among the healthy ones when any is up, and
/// otherwise among all of them ("panic mode", as load balancers do): a
/// wrong health verdict then costs latency, never answers, and an upstream
/// that is really gone costs what it would have cost anyway. `None` only
/// when there is no upstream but `exclude`.
pub fn choose<C: Candidate>(
    policy: Policy,
    members: &[C],
    next: &AtomicUsize,
    exclude: Option<usize>,
) -> Option<usize> {
    let any_up = members.iter().any(Candidate::is_up);
    let eligible = |i: usize| Some(i) != exclude && (!any_up || members[i].is_up());
    match policy {
        Policy::FirstAvailable => (0..members.len()).find(|&i| eligible(i)),
        Policy::RoundRobin => {
            let n = members.len();
            if n == 0 {
                return None;
            }
            let start = next.fetch_add(1, Ordering::Relaxed) % n;
            (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
        }
        Policy::LeastOutstanding => (0..members.len())
            .filter(|&i| eligible(i))
            .min_by_key(|&i| (members[i].outstanding(), i)),
    }
}

/// True when [`choose`] would find another upstream than `index` for a
/// failover: then a try on `index` gets only the per-try timeout, keeping
/// time for the second try.
pub fn has_alternative<C: Candidate>(members: &[C], index: usize) -> bool {
    let any_up = members.iter().any(Candidate::is_up);
    members
        .iter()
        .enumerate()
        .any(|(i, m)| i != index && (!any_up || m.is_up()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct M(bool, usize);
    impl Candidate for M {
        fn is_up(&self) -> bool {
            self.0
        }
        fn outstanding(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn first_available_skips_down_and_excluded() {
        let next = AtomicUsize::new(0);
        let ms = [M(false, 0), M(true, 0), M(true, 0)];
        assert_eq!(choose(Policy::FirstAvailable, &ms, &next, None), Some(1));
        assert_eq!(choose(Policy::FirstAvailable, &ms, &next, Some(1)), Some(2));
        // Every upstream down: panic mode, all of them are candidates.
        let down = [M(false, 0), M(false, 0)];
        assert_eq!(choose(Policy::FirstAvailable, &down, &next, None), Some(0));
        assert_eq!(
            choose(Policy::FirstAvailable, &down, &next, Some(0)),
            Some(1)
        );
        assert!(has_alternative(&down, 0));
        assert_eq!(
            choose(Policy::FirstAvailable, &down[..1], &next, Some(0)),
            None
        );
        assert!(!has_alternative(&down[..1], 0));
    }

    #[test]
    fn round_robin_takes_turns_among_the_healthy() {
        let next = AtomicUsize::new(0);
        let ms = [M(true, 0), M(false, 0), M(true, 0)];
        let picks: Vec<_> = (0..6)
            .map(|_| choose(Policy::RoundRobin, &ms, &next, None).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 0);
        assert!(picks.contains(&0) && picks.contains(&2));
        let all = [M(true, 0), M(true, 0), M(true, 0)];
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[choose(Policy::RoundRobin, &all, &next, None).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn least_outstanding_prefers_the_idle() {
        let next = AtomicUsize::new(0);
        let ms = [M(true, 5), M(true, 2), M(true, 2)];
        assert_eq!(choose(Policy::LeastOutstanding, &ms, &next, None), Some(1));
        assert_eq!(
            choose(Policy::LeastOutstanding, &ms, &next, Some(1)),
            Some(2)
        );
        assert!(has_alternative(&ms, 0));
        assert!(!has_alternative(&[M(true, 0), M(false, 0)], 0));
    }
}
