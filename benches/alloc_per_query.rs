//! Heap allocations per query on the server's hot path.
//!
//! ```text
//! cargo bench --bench alloc_per_query
//! ALLOC_SITES=20 cargo bench --bench alloc_per_query   # and where they come from
//! ```
//!
//! dotgate runs in-process as the integration tests start it
//! (`dotgate::server::run` on a bound listener, a configuration from the
//! command line, a self-signed certificate), on a tokio runtime of its own
//! whose threads are the only ones counted: a counting global allocator
//! around the system one counts allocations (and reallocations, each a new
//! block) and their bytes on threads that set a thread-local flag, which
//! the server runtime's `on_thread_start` does. The upstream is a small UDP
//! responder on a plain thread, and the client a tokio-rustls connection on
//! another runtime on the main thread; neither is counted.
//!
//! For each kind of query (no OPT, an empty OPT, keepalive and padding to
//! 128 bytes) it sends 200 warm-up queries on one TLS connection, resets
//! the counters, sends 10,000 queries and reads every reply: pipelined
//! (a window of 32 outstanding), then one at a time. It prints allocations
//! and bytes per query.
//!
//! Without `--bench` (which `cargo bench` passes, and `cargo test` does
//! not), it runs as a smoke test: 20 warm-up and 100 measured queries.
//!
//! With `ALLOC_SITES=N`, one counted allocation in N of the measured runs
//! records its backtrace (guarded against the recursion that recording
//! allocates itself), and the most frequent call sites are printed at the
//! end. The backtraces name functions only where there are symbols: build
//! with line tables for dotgate to see inlined frames too:
//!
//! ```text
//! ALLOC_SITES=20 cargo bench --bench alloc_per_query \
//!     --config 'profile.bench.package.dotgate.debug="line-tables-only"'
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use dotgate::config::cli::{Cli, Command};
use dotgate::config::Config;
use dotgate::tls::client::{self, Trust};

#[path = "common/messages.rs"]
mod messages;
use messages::Edns;

// ---------- the counting allocator ----------

struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
/// Record one backtrace in this many counted allocations (0: none).
static SAMPLE_EVERY: AtomicU64 = AtomicU64::new(0);
/// Backtraces are recorded only while a measured run is going on.
static SAMPLING: AtomicBool = AtomicBool::new(false);
static SITES: Mutex<Vec<(Backtrace, usize)>> = Mutex::new(Vec::new());

thread_local! {
    /// Set on the server runtime's threads: their allocations count.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
    /// Set while this thread records a backtrace, whose own allocations
    /// must neither count nor record another.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize, realloc: bool) {
    // `try_with`: allocations during a thread's teardown are not counted.
    let counted = COUNTED.try_with(Cell::get).unwrap_or(false)
        && !IN_HOOK.try_with(Cell::get).unwrap_or(true);
    if !counted {
        return;
    }
    let n = ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if realloc {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
    }
    let every = SAMPLE_EVERY.load(Ordering::Relaxed);
    if every > 0 && n.is_multiple_of(every) && SAMPLING.load(Ordering::Relaxed) {
        IN_HOOK.with(|h| h.set(true));
        let trace = Backtrace::force_capture();
        SITES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((trace, size));
        IN_HOOK.with(|h| h.set(false));
    }
}

// SAFETY: every call is passed on to `System` unchanged; counting touches
// only atomics and const-initialised thread-locals, and the backtrace hook
// cannot recurse (IN_HOOK).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), false);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), false);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size, true);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[derive(Clone, Copy)]
struct Counts {
    allocs: u64,
    bytes: u64,
    reallocs: u64,
}

fn reset() {
    ALLOCS.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    REALLOCS.store(0, Ordering::Relaxed);
}

fn counts() -> Counts {
    Counts {
        allocs: ALLOCS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
        reallocs: REALLOCS.load(Ordering::Relaxed),
    }
}

// ---------- the upstream: a UDP responder on a plain thread ----------

/// Answers every query with a reply of `size` bytes (A records, and the
/// OPT record dotgate's upstream query carries).
fn start_upstream(size: usize) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = sock.local_addr().expect("upstream address");
    std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let reply = messages::reply(&buf[..n], size.max(n + 16));
                let _ = sock.send_to(&reply, from);
            }
        })
        .expect("spawn the upstream");
    addr
}

// ---------- dotgate in-process ----------

fn start_server(
    rt: &tokio::runtime::Runtime,
    upstream: SocketAddr,
) -> (SocketAddr, CancellationToken) {
    let argv = [
        "dotgate",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--self-signed",
        "dns.test",
        "--upstream",
        &upstream.to_string(),
        // No health probe during a run: its queries would count.
        "--health-check-interval",
        "1h",
    ];
    let args = match Cli::try_parse_from(argv).expect("serve flags").command {
        Command::Serve(args) => *args,
        _ => unreachable!("a serve command line"),
    };
    let config = Config::from_args(&args, Path::new("/nonexistent/resolv.conf"))
        .expect("a valid configuration");
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind the listener");
    let addr = listener.local_addr().expect("listener address");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    rt.spawn(async move {
        if let Err(e) = dotgate::server::run(config, vec![listener], token).await {
            panic!("dotgate::server::run failed: {e}");
        }
    });
    (addr, shutdown)
}

// ---------- the client ----------

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Sends `queries` (framed, IDs 0..n) with at most `window` unanswered,
/// reads every reply, and checks each answers its own query.
async fn exchange(tls: &mut Tls, queries: &[Vec<u8>], window: usize) {
    let (r, mut w) = tokio::io::split(tls);
    let mut r = BufReader::new(r);
    let room = Semaphore::new(window);
    let send = async {
        for q in queries {
            room.acquire().await.expect("never closed").forget();
            w.write_all(q).await.expect("write a query");
            w.flush().await.expect("flush");
        }
    };
    let receive = async {
        let mut answered = vec![false; queries.len()];
        for _ in 0..queries.len() {
            let mut prefix = [0u8; 2];
            r.read_exact(&mut prefix).await.expect("a reply");
            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
            r.read_exact(&mut msg).await.expect("a whole reply");
            let id = usize::from(u16::from_be_bytes([msg[0], msg[1]]));
            assert!(!answered[id], "a second reply to query {id}");
            answered[id] = true;
            assert_eq!(msg[3] & 0x0f, 0, "NOERROR for query {id}");
            assert!(u16::from_be_bytes([msg[6], msg[7]]) > 0, "an answer");
            room.add_permits(1);
        }
    };
    tokio::join!(send, receive);
}

fn framed_queries(n: usize, edns: Edns) -> Vec<Vec<u8>> {
    (0..n)
        .map(|id| messages::framed(&messages::query(id as u16, edns)))
        .collect()
}

const WARM_UP: usize = 200;
const QUERIES: usize = 10_000;
const WINDOW: usize = 32;
/// The counts under `cargo test`, a smoke test.
const SMOKE_WARM_UP: usize = 20;
const SMOKE_QUERIES: usize = 100;

fn main() {
    let every = std::env::var("ALLOC_SITES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    SAMPLE_EVERY.store(every, Ordering::Relaxed);
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (warm_up, measured) = if smoke {
        println!("smoke test: {SMOKE_QUERIES} queries per run (cargo bench sends {QUERIES})");
        (SMOKE_WARM_UP, SMOKE_QUERIES)
    } else {
        (WARM_UP, QUERIES)
    };

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| COUNTED.with(|c| c.set(true)))
        .build()
        .expect("the server runtime");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the client runtime");

    let upstream = start_upstream(100);
    let (addr, shutdown) = start_server(&server_rt, upstream);

    println!(
        "{:<24} {:>8} {:>12} {:>12} {:>14} {:>10}",
        "queries", "window", "allocs/query", "bytes/query", "reallocs/query", "queries/s"
    );
    client_rt.block_on(async {
        let config = client::client_config(&Trust::Insecure).expect("client config");
        for edns in Edns::ALL {
            let mut tls = client::dial(addr, "dns.test", Arc::clone(&config))
                .await
                .expect("TLS connection to dotgate");
            let warm = framed_queries(warm_up, edns);
            exchange(&mut tls, &warm, WINDOW).await;
            exchange(&mut tls, &warm, 1).await;
            for window in [WINDOW, 1] {
                let queries = framed_queries(measured, edns);
                // Let the connection settle (replies written, buffers given
                // back) before counting.
                tokio::time::sleep(Duration::from_millis(20)).await;
                reset();
                SAMPLING.store(true, Ordering::Relaxed);
                let started = Instant::now();
                exchange(&mut tls, &queries, window).await;
                let took = started.elapsed();
                tokio::time::sleep(Duration::from_millis(20)).await;
                SAMPLING.store(false, Ordering::Relaxed);
                let c = counts();
                let q = measured as f64;
                println!(
                    "{:<24} {:>8} {:>12.2} {:>12.0} {:>14.2} {:>10.0}",
                    format!("{} ({} B)", edns.label(), queries[0].len() - 2),
                    window,
                    c.allocs as f64 / q,
                    c.bytes as f64 / q,
                    c.reallocs as f64 / q,
                    q / took.as_secs_f64(),
                );
            }
            tls.shutdown().await.ok();
        }
    });
    shutdown.cancel();
    drop(server_rt);

    if every > 0 {
        print_sites(every);
    }
}

// ---------- where the allocations come from ----------

/// Frames that belong to the allocator, the backtrace or the standard
/// library's allocation plumbing, not to the code that asked for memory.
fn is_plumbing(frame: &str) -> bool {
    const SKIP: [&str; 10] = [
        "std::backtrace",
        "alloc_per_query",
        "__rust",
        "__rdl",
        "alloc::alloc::",
        "alloc/src/alloc.rs",
        "alloc::raw_vec::",
        "alloc/src/raw_vec",
        "<alloc::alloc::Global",
        "Backtrace",
    ];
    SKIP.iter().any(|s| frame.contains(s))
}

/// Frames shown per call site.
const DEPTH: usize = 5;

/// Prints the most frequent call sites among the recorded backtraces: the
/// first few frames past the allocation plumbing, and the first dotgate
/// frame below them.
fn print_sites(every: u64) {
    let sites = std::mem::take(&mut *SITES.lock().unwrap_or_else(|e| e.into_inner()));
    let total = sites.len();
    let mut by_site: HashMap<String, (usize, usize)> = HashMap::new();
    for (trace, size) in &sites {
        let text = trace.to_string();
        let mut frames: Vec<String> = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let line = line.trim();
            // "N: function", optionally followed by "at file:line".
            let Some((_, name)) = line.split_once(": ") else {
                continue;
            };
            if !line.starts_with(|c: char| c.is_ascii_digit()) {
                continue;
            }
            let at = lines
                .peek()
                .map(|l| l.trim())
                .filter(|l| l.starts_with("at "))
                .map(|l| l.trim_start_matches("at ").to_string());
            let name = strip_hash(name);
            frames.push(match at {
                Some(at) => format!("{name} ({})", short_path(&at)),
                None => name,
            });
        }
        let useful: Vec<&String> = frames.iter().filter(|f| !is_plumbing(f)).collect();
        let mut key: Vec<String> = useful.iter().take(DEPTH).map(|f| f.to_string()).collect();
        let is_ours = |f: &str| f.contains("dotgate::") || f.contains("./src/");
        if let Some(ours) = useful
            .iter()
            .skip(DEPTH)
            .find(|f| is_ours(f) && !key.iter().any(|k| is_ours(k)))
        {
            key.push(format!("... {ours}"));
        }
        let entry = by_site.entry(key.join("\n      <- ")).or_default();
        entry.0 += 1;
        entry.1 += size;
    }
    let mut sorted: Vec<_> = by_site.into_iter().collect();
    sorted.sort_by_key(|site| std::cmp::Reverse(site.1 .0));
    println!(
        "\nallocation sites: {total} backtraces, one in {every} counted allocations of the \
         measured runs (all kinds of query, both windows)"
    );
    for (site, (n, bytes)) in sorted.iter().take(25) {
        println!(
            "\n{:5.1}% ({} samples, {} B average)\n      {site}",
            100.0 * *n as f64 / total as f64,
            n,
            bytes / n
        );
    }
}

/// A symbol without its `::h0123...` hash.
fn strip_hash(name: &str) -> String {
    match name.rfind("::h") {
        Some(at) if name[at + 3..].chars().all(|c| c.is_ascii_hexdigit()) => name[..at].to_string(),
        _ => name.to_string(),
    }
}

/// A source path from `src/` or the crate's directory on.
fn short_path(path: &str) -> &str {
    for marker in ["/src/", "/registry/src/", "/rustc/"] {
        if let Some(at) = path.rfind(marker) {
            if marker == "/src/" {
                // Keep the crate's folder name: ".../tokio-1.47.0/src/x.rs".
                let before = &path[..at];
                let krate = before.rfind('/').map_or(0, |i| i + 1);
                return &path[krate..];
            }
            return &path[at + 1..];
        }
    }
    path
}
