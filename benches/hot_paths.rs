//! Micro-benchmarks of the pure functions every query goes through: framing,
//! reading a message, parsing the query, the upstream rewrite (ID, OPT
//! edits), reply matching, and the client's reply (ID restored, OPT
//! mirrored, keepalive and padding of the TLS leg), and the rate limiter's
//! judgement of a query under its limit.
//!
//! ```text
//! cargo bench --bench hot_paths            # all, about 15 s
//! cargo bench --bench hot_paths -- reply   # those whose name contains "reply"
//! ```
//!
//! Without `--bench` (which `cargo bench` passes, and `cargo test` does
//! not), each case runs a few times untimed, as a smoke test.
//!
//! A harness of our own rather than a framework (a few lines, no
//! dependency): each case is warmed up, then timed over [`ROUNDS`] rounds
//! of enough iterations to last about [`ROUND`]; it prints the fastest and
//! the median round in nanoseconds per operation. Inputs and results pass
//! through `black_box`. Cases that consume their input (`client_reply`
//! takes the reply by value) get fresh copies made before the clock starts,
//! and their results are dropped after it stops.

use std::hint::black_box;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use dotgate::config::rate_limit::{Action, BanSettings, Rate, RateLimitSettings};
use dotgate::metrics::stats::Transport;
use dotgate::proto::dns::{self, QueryInfo};
use dotgate::proto::edns::LegOptions;
use dotgate::proto::framing;
use dotgate::proto::message_reader::{MessageReader, ReadLimits};
use dotgate::server::rate_limit::RateLimiter;

#[path = "common/messages.rs"]
mod messages;
use messages::Edns;

/// Rounds timed per case.
const ROUNDS: usize = 15;
/// About how long one round lasts.
const ROUND: Duration = Duration::from_millis(10);
/// Inputs made at once for a case that consumes them.
const CHUNK: u64 = 64;
/// Warm-up, which also measures how many iterations fill a round.
const WARM_UP: Duration = Duration::from_millis(50);

struct Harness {
    filter: Option<String>,
    /// Run each case a few times, untimed (under `cargo test`).
    smoke: bool,
}

impl Harness {
    fn from_args() -> Self {
        // `cargo bench` passes `--bench`; anything else is a name filter.
        let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
        let smoke = !std::env::args().any(|a| a == "--bench");
        if smoke {
            println!("smoke test: each case a few times, untimed (cargo bench times them)");
            return Self { filter, smoke };
        }
        println!(
            "{:<58} {:>10} {:>10}",
            "case (ns per operation)", "min", "median"
        );
        Self { filter, smoke }
    }

    fn wanted(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// Times `f`, called once per operation.
    fn run<T>(&self, name: &str, f: impl FnMut() -> T) {
        self.run_n(name, 1, f);
    }

    /// Times `f`, which does `ops` operations per call.
    fn run_n<T>(&self, name: &str, ops: u64, mut f: impl FnMut() -> T) {
        if !self.wanted(name) {
            return;
        }
        if self.smoke {
            for _ in 0..3 {
                black_box(f());
            }
            return;
        }
        let per_round = calibrate(|n| {
            let start = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            start.elapsed()
        });
        let mut samples: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..per_round {
                    black_box(f());
                }
                start.elapsed().as_nanos() as f64 / (per_round * ops) as f64
            })
            .collect();
        report(name, &mut samples);
    }

    /// Times `f` on inputs made by `setup` before the clock starts; what
    /// `f` returns is dropped after it stops.
    fn run_batched<I, O>(
        &self,
        name: &str,
        mut setup: impl FnMut() -> I,
        mut f: impl FnMut(I) -> O,
    ) {
        if !self.wanted(name) {
            return;
        }
        // In chunks, so that the inputs stay in cache as they would on the
        // hot path (a reply is handled just after it arrived).
        let mut timed = |n: u64| {
            let mut elapsed = Duration::ZERO;
            let mut left = n;
            while left > 0 {
                let chunk = left.min(CHUNK);
                left -= chunk;
                let inputs: Vec<I> = (0..chunk).map(|_| setup()).collect();
                let mut outputs = Vec::with_capacity(inputs.len());
                let start = Instant::now();
                for input in inputs {
                    outputs.push(f(black_box(input)));
                }
                elapsed += start.elapsed();
                black_box(&outputs);
            }
            elapsed
        };
        let per_round = calibrate(&mut timed);
        let mut samples: Vec<f64> = (0..ROUNDS)
            .map(|_| timed(per_round).as_nanos() as f64 / per_round as f64)
            .collect();
        report(name, &mut samples);
    }
}

/// Runs `timed(n)` for [`WARM_UP`], doubling `n`; returns the iteration
/// count that lasts about [`ROUND`].
fn calibrate(mut timed: impl FnMut(u64) -> Duration) -> u64 {
    let started = Instant::now();
    let mut n = 1u64;
    let mut per_op = Duration::ZERO;
    while started.elapsed() < WARM_UP {
        let took = timed(n);
        per_op = took / n.try_into().unwrap_or(u32::MAX);
        if took < ROUND {
            n *= 2;
        }
    }
    let per_op = per_op.as_nanos().max(1) as u64;
    (ROUND.as_nanos() as u64 / per_op).max(1)
}

fn report(name: &str, samples: &mut [f64]) {
    samples.sort_by(f64::total_cmp);
    let min = samples[0];
    let median = samples[samples.len() / 2];
    println!("{name:<58} {min:>10.1} {median:>10.1}");
}

/// The TLS leg's options for a query, as the connection decides them (30 s
/// idle timeout, not retiring).
fn leg_for(info: &QueryInfo) -> LegOptions {
    LegOptions::for_request(info.edns, Duration::from_secs(30), false)
}

fn main() {
    let h = Harness::from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _runtime = rt.enter();

    // ---- framing ----
    for edns in Edns::ALL {
        let q = messages::query(0x1234, edns);
        let f = messages::framed(&q);
        h.run(
            &format!(
                "framing::split_frame, {} query ({} B)",
                edns.label(),
                q.len()
            ),
            || {
                framing::split_frame(black_box(&f))
                    .map(|o| o.unwrap_or(0))
                    .unwrap_or(0)
            },
        );
    }
    let q = messages::query(1, Edns::Opt);
    let f = messages::framed(&q);
    h.run("framing::split_frame, 1 byte (prefix incomplete)", || {
        framing::split_frame(black_box(&f[..1])).map(|o| o.is_none())
    });

    // ---- MessageReader: 64 messages back to back in memory ----
    const BURST: usize = 64;
    for edns in [Edns::Opt, Edns::Padded] {
        let q = messages::query(1, edns);
        let stream: Vec<u8> = (0..BURST).flat_map(|_| messages::framed(&q)).collect();
        let name = format!(
            "MessageReader::read_message, {} query ({} B), per message",
            edns.label(),
            q.len()
        );
        h.run_n(&name, BURST as u64, || {
            let mut io: &[u8] = black_box(&stream);
            let mut reader = MessageReader::new(ReadLimits::default());
            let mut n = 0;
            while let Some(Ok(Some(msg))) = reader.read_message(&mut io).now_or_never() {
                n += black_box(msg).len();
            }
            assert_eq!(n, BURST * q.len());
            n
        });
    }

    // ---- parsing the query ----
    for edns in Edns::ALL {
        let q = messages::query(0x1234, edns);
        h.run(
            &format!("dns::parse_query, {} ({} B)", edns.label(), q.len()),
            || dns::parse_query(black_box(&q)),
        );
    }

    // ---- the upstream rewrite ----
    for edns in Edns::ALL {
        let q = messages::query(0x1234, edns);
        let info = dns::parse_query(&q).unwrap();
        h.run(
            &format!(
                "dns::upstream_query (UDP), {} ({} B)",
                edns.label(),
                q.len()
            ),
            || dns::upstream_query(black_box(&q), black_box(&info), 0x5678, None),
        );
    }
    for edns in Edns::ALL {
        let q = messages::query(0x1234, edns);
        let info = dns::parse_query(&q).unwrap();
        h.run(
            &format!(
                "dns::stream_query (TCP/TLS), {} ({} B)",
                edns.label(),
                q.len()
            ),
            || dns::stream_query(black_box(&q), black_box(&info), None),
        );
    }
    let mut q = messages::query(0x1234, Edns::Opt);
    h.run("dns::set_id", || {
        dns::set_id(black_box(&mut q), black_box(0x4321));
    });

    // ---- reply matching: does the upstream's reply answer the question? ----
    for size in [100, 1200] {
        let q = messages::query(0x1234, Edns::Opt);
        let info = dns::parse_query(&q).unwrap();
        let up = dns::upstream_query(&q, &info, 0x5678, None);
        let r = messages::reply(&up, size);
        let question = &q[info.question.clone()];
        h.run(&format!("dns::match_reply, {size} B reply"), || {
            dns::match_reply(black_box(&r), black_box(question))
        });
        // What the UDP receive loop does for an answer (`upstream::reply::
        // classify`): match, then copy the datagram out of the shared buffer.
        h.run(
            &format!("dns::match_reply + to_vec, {size} B reply"),
            || match dns::match_reply(black_box(&r), black_box(question)) {
                dns::ReplyMatch::Answer => Some(r.to_vec()),
                _ => None,
            },
        );
        let mut other = r.clone();
        other[14] ^= 0x20; // 0x20 case: still the question
        h.run(
            &format!("dns::match_reply, {size} B reply, mixed case"),
            || dns::match_reply(black_box(&other), black_box(question)),
        );
    }

    // ---- the client's reply ----
    for size in [100, 1200] {
        for edns in Edns::ALL {
            let q = messages::query(0x1234, edns);
            let info = dns::parse_query(&q).unwrap();
            let up = dns::upstream_query(&q, &info, 0x5678, None);
            let r = messages::reply(&up, size);
            let leg = leg_for(&info);
            let out = dns::client_reply(r.clone(), &info, leg).unwrap();
            h.run_batched(
                &format!(
                    "dns::client_reply, {size} B reply, {} query -> {} B",
                    edns.label(),
                    out.len()
                ),
                || r.clone(),
                |r| dns::client_reply(r, &info, leg),
            );
        }
    }
    {
        let q = messages::query(0x1234, Edns::Opt);
        let info = dns::parse_query(&q).unwrap();
        let r = messages::reply(&dns::upstream_query(&q, &info, 7, None), 100);
        h.run_batched(
            "baseline: Vec clone of the 100 B reply (setup, not timed)",
            || (),
            |()| r.clone(),
        );
        h.run("dns::reply_keepalive, 100 B reply", || {
            dns::reply_keepalive(black_box(&r))
        });
    }
    for edns in [Edns::None, Edns::Padded] {
        let q = messages::query(0x1234, edns);
        let info = dns::parse_query(&q).unwrap();
        let leg = leg_for(&info);
        h.run(
            &format!("dns::error_reply SERVFAIL, {} query", edns.label()),
            || dns::error_reply(black_box(&q), Some(&info), 2, leg),
        );
    }
    // What the connection does with each reply: the length prefix and the
    // message appended to the write batch.
    {
        let q = messages::query(0x1234, Edns::Opt);
        let info = dns::parse_query(&q).unwrap();
        let r = messages::reply(&dns::upstream_query(&q, &info, 7, None), 100);
        let mut batch = Vec::with_capacity(16 * 1024);
        h.run("write batch: prefix + 100 B reply appended", || {
            if batch.len() > 16 * 1024 - 200 {
                batch.clear();
            }
            batch.extend_from_slice(&(r.len() as u16).to_be_bytes());
            batch.extend_from_slice(black_box(&r));
            batch.len()
        });
    }

    // ---- one query's whole pure path, 100 B reply ----
    for edns in Edns::ALL {
        let q = messages::query(0x1234, edns);
        let info = dns::parse_query(&q).unwrap();
        let r = messages::reply(&dns::upstream_query(&q, &info, 0x5678, None), 100);
        h.run_batched(
            &format!(
                "whole path: parse, upstream_query, match, to_vec, client_reply; {}",
                edns.label()
            ),
            || (),
            |()| {
                let info = dns::parse_query(black_box(&q)).unwrap();
                let up = dns::upstream_query(&q, &info, 0x5678, None);
                let question = &up[info.question.clone()];
                let reply = match dns::match_reply(black_box(&r), question) {
                    dns::ReplyMatch::Answer => r.to_vec(),
                    _ => unreachable!(),
                };
                let leg = leg_for(&info);
                (up, dns::client_reply(reply, &info, leg))
            },
        );
    }

    // ---- the rate limiter (--max-qps-per-ip), under the limit ----
    let stats = dotgate::metrics::stats::Stats::new().expect("metrics");
    let settings = RateLimitSettings {
        per_ip: Some(Rate {
            per_sec: 1_000_000,
            burst: 1_000_000,
        }),
        per_client_id: None,
        v6_prefix: 56,
        action: Action::Refused,
        exempt: Vec::new(),
        ban: Some(BanSettings {
            after: Duration::from_secs(10),
            length: Duration::from_secs(300),
        }),
        table_size: 65_536,
    };
    let start = Instant::now();
    let limiter = RateLimiter::new(&settings, &stats, start).expect("a limit");
    for clients in [1u32, 10_000] {
        let mut n = 0u32;
        h.run(
            &format!("RateLimiter::judge, under the limit, {clients} client(s) in turn"),
            || {
                n = (n + 1) % clients;
                let addr = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
                limiter.judge(black_box(addr), None, Transport::Dot, Instant::now())
            },
        );
    }

    hpack(&h);
}

/// HPACK header blocks of DoH requests as curl's encoder writes them (made
/// with an independent encoder; the same as the decoder's unit tests): a
/// first GET, a second GET (the `dns=` path a new Huffman literal, the rest
/// references), a first POST, and a second POST, all references.
const HPACK_GET_1: &str = "8287418b92a42e5f23a6ba0abd454f44aa624a90b76b4b67aff24a91076781761861bb0c30c30c30c3745c5ae7c83e23c5c2ff313e986186ec30e07a8825b650c3cbb6b83f53901d75d0620d263d4c495216a4a840e62f";
const HPACK_GET_2: &str = "8287c144ba624a90b76b4b67aff24a910430c3761861bb0c30c30c30dd85991993c49417161493179a2113febf7c430c3b21bb0c30d7774c30c30c30c30c3fc0bf";
const HPACK_POST_1: &str =
    "8387c24488624a90b76b4b67afc1c05f901d75d0620d263d4c495216a4a840e62f5c82659f";
const HPACK_POST_2: &str = "8387c5c0c3c2bfbe";

/// The HPACK decoder of the HTTP/2 server, per request header block.
fn hpack(h: &Harness) {
    use dotgate::server::doh::h2::hpack::Decoder;
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let [get1, get2, post1, post2] =
        [HPACK_GET_1, HPACK_GET_2, HPACK_POST_1, HPACK_POST_2].map(hex);
    let fields = |d: &mut Decoder, block: &[u8]| {
        let mut n = 0usize;
        let r = d.decode(black_box(block), 16_384, |name, value| {
            n += name.len() + value.len()
        });
        assert!(r.is_ok());
        n
    };
    let mut d = Decoder::new(4096);
    h.run(
        &format!("hpack: first DoH GET, new decoder ({} B)", get1.len()),
        || {
            let mut d = Decoder::new(4096);
            fields(&mut d, &get1)
        },
    );
    fields(&mut d, &get1);
    h.run(
        &format!(
            "hpack: next DoH GET, Huffman :path inserted ({} B)",
            get2.len()
        ),
        || fields(&mut d, &get2),
    );
    let mut d = Decoder::new(4096);
    for block in [&get1, &get2, &post1] {
        fields(&mut d, block);
    }
    h.run(
        &format!("hpack: next DoH POST, all indexed ({} B)", post2.len()),
        || fields(&mut d, &post2),
    );
}
