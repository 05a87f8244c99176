//! What counting costs on the hot path: dotgate's typed metrics (the
//! `prometheus` crate's `IntCounter` and `Histogram`, as `Stats` holds
//! them) against the hand-written atomics they replaced (an `AtomicU64`
//! per counter, and the `Latency` histogram copied below).
//!
//! ```text
//! cargo run --release --example metrics_hot_path
//! ```
//!
//! Each measurement runs 10M operations on each of 1 and 2 threads, all on
//! the same metric (as queries on every connection count on the same
//! `dotgate_queries_total`), nine times; it prints the fastest and the
//! median run in nanoseconds per operation of one thread (wall time / 10M).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dotgate::metrics::stats::{Stats, LATENCY_BUCKETS};

const OPS: usize = 10_000_000;
const ROUNDS: usize = 9;

/// The histogram dotgate used before its metrics became the prometheus
/// crate's typed ones: one `fetch_add` on the bucket hit and one on the sum.
#[derive(Default)]
struct HandWrittenLatency {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl HandWrittenLatency {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Wall nanoseconds per operation when `threads` threads each run `op`
/// `OPS` times at once.
fn run(threads: usize, op: &(dyn Fn(usize) + Sync)) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..OPS {
                    op(black_box(i + t));
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / OPS as f64
}

fn main() -> Result<(), prometheus::Error> {
    // Latencies from 50 µs to about 390 ms, spread over most buckets.
    let samples: Vec<Duration> = (0..1024)
        .map(|i| Duration::from_nanos((50_000.0 * 1.01f64.powi(i % 900)) as u64))
        .collect();
    let sample = |i: usize| samples[i & 1023];
    let stats = Stats::new()?;
    let atomic = AtomicU64::new(0);
    let latency = HandWrittenLatency::default();
    let cases: [(&str, &(dyn Fn(usize) + Sync)); 4] = [
        ("counter, hand-written AtomicU64::fetch_add", &|_| {
            atomic.fetch_add(1, Ordering::Relaxed);
        }),
        ("counter, typed IntCounter::inc", &|_| {
            stats.queries[0].inc()
        }),
        ("histogram, hand-written Latency::observe", &|i| {
            latency.observe(sample(i))
        }),
        ("histogram, typed Histogram::observe", &|i| {
            stats.query_duration.observe(sample(i).as_secs_f64())
        }),
    ];
    for threads in [1, 2] {
        let mut runs = vec![Vec::with_capacity(ROUNDS); cases.len()];
        // Interleaved, so that a burst of load elsewhere hits every case.
        for _ in 0..ROUNDS {
            for ((_, op), runs) in cases.iter().zip(&mut runs) {
                runs.push(run(threads, op));
            }
        }
        for ((name, _), runs) in cases.iter().zip(&mut runs) {
            runs.sort_by(f64::total_cmp);
            println!(
                "{threads} thread(s)  {name:44} min {:6.2}  median {:6.2} ns/op",
                runs[0],
                runs[ROUNDS / 2]
            );
        }
    }
    black_box((atomic.load(Ordering::Relaxed), &latency.sum_nanos));
    Ok(())
}
