//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/*`: minimised
//! fuzzer finds, hand-made seeds, regression inputs) through the property
//! checks the fuzz targets run (`tests/fuzz_props/mod.rs`), on stable and
//! without cargo-fuzz, so that CI keeps every input that ever found a bug.
//!
//! Besides the files themselves, each one is replayed with a few mutations
//! from a fixed-seed generator: reproducible, and a little wider than the
//! corpus.

mod fuzz_props;

use std::path::{Path, PathBuf};

/// Mutations per corpus file (fixed seed: the same ones on every run).
const MUTATIONS: usize = 8;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut m = data.to_vec();
    for _ in 0..1 + rng.below(4) {
        if m.is_empty() {
            m.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(m.len());
        match rng.below(4) {
            0 => m[at] = rng.next() as u8,
            1 => m[at] ^= 1 << rng.below(8),
            2 => m.insert(at, rng.next() as u8),
            _ => {
                m.remove(at);
            }
        }
    }
    m
}

/// Runs `check` on one input, naming the input in the failure.
fn replay(target: &str, name: &str, data: &[u8], check: fuzz_props::Check) {
    let outcome = std::panic::catch_unwind(|| check(data));
    if let Err(panic) = outcome {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(non-string panic)");
        panic!(
            "{target}: property failed on {name} ({} bytes: {}): {msg}",
            data.len(),
            hex(&data[..data.len().min(64)]),
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn replay_target(target: &str) {
    let check = fuzz_props::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap()
        .1;
    let files = corpus(target);
    assert!(!files.is_empty(), "empty corpus for {target}");
    let mut rng = Rng(0x5eed_0d07_9a7e ^ target.len() as u64);
    for (path, data) in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        replay(target, &name, data, check);
        for i in 0..MUTATIONS {
            let m = mutate(&mut rng, data);
            replay(target, &format!("{name} mutation {i}"), &m, check);
        }
    }
}

#[test]
fn every_target_has_a_corpus() {
    for (target, _) in fuzz_props::TARGETS {
        assert!(corpus_dir(target).is_dir(), "fuzz/corpus/{target}");
    }
}

#[test]
fn framing_corpus() {
    replay_target("framing");
}

#[test]
fn dns_query_corpus() {
    replay_target("dns_query");
}

#[test]
fn dns_reply_corpus() {
    replay_target("dns_reply");
}

#[test]
fn proxy_corpus() {
    replay_target("proxy");
}

#[test]
fn doh_request_corpus() {
    replay_target("doh_request");
}

/// The budget seeds reach what they are for: readers that wait for the
/// shared message budget (a property of the seeds, not of dotgate; without
/// it the budget properties could pass without ever being exercised).
#[test]
fn framing_budget_seeds_reach_the_wait() {
    for (path, data) in corpus("framing") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed-budget-") {
            assert!(
                fuzz_props::framing_budget_waits(&data) > 0,
                "{name}: no reader waited for budget"
            );
        }
    }
}

#[test]
fn tls_stream_corpus() {
    replay_target("tls_stream");
}

#[test]
fn hpack_decode_corpus() {
    replay_target("hpack_decode");
}

#[test]
fn h2_session_corpus() {
    replay_target("h2_session");
}
