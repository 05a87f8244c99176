//! The floor: what the work no DoT forwarder can avoid costs per query on
//! this machine, to state dotgate's CPU per query as a multiple of it
//! (docs/performance.md, "The floor").
//!
//! ```text
//! cargo bench --bench floor
//! ```
//!
//! Per query, a forwarder must at least: open the query's TLS record and
//! seal the reply's (AES-256-GCM, which rustls and OpenSSL's clients agree
//! on here); parse the query and edit it and the reply (timed apart by
//! `hot_paths`, "whole path"); send the query to the upstream in a datagram
//! and receive the reply (a share of one `recvmmsg`); and read the query
//! from, and write the reply to, the client's TCP connection (a share of
//! one `read` and one `write`, as many queries and replies sharing them as
//! the benchmark's load gives). The system calls here run between two
//! sockets of this process on loopback, so the cost of delivering each
//! datagram or segment to the peer's socket is counted, as it is for
//! dotgate; waking a sleeping peer is not, which keeps this a floor.
//!
//! Each case runs [`ROUNDS`] rounds of [`PER_ROUND`] operations and prints
//! the median round in nanoseconds per query. Without `--bench` (under
//! `cargo test`) each case runs one short round, as a smoke test.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// Rounds timed per case; the median is printed.
const ROUNDS: usize = 15;
/// Operations (queries) per round.
const PER_ROUND: usize = 4096;

/// A framed query record's plaintext: the 2-byte prefix, a 40-byte query
/// (`n123.bench.test. A` with an OPT record), TLS 1.3's content type byte.
const QUERY_RECORD: usize = 2 + 40 + 1;
/// A reply record's plaintext: prefix, an 80-byte reply, content type.
const REPLY_RECORD: usize = 2 + 80 + 1;
/// The datagram toward the upstream (the query with dotgate's OPT).
const DATAGRAM: usize = 51;

/// Times `round` (which does `ops` queries' worth of work and returns the
/// time it counts) over [`ROUNDS`] rounds; prints and returns the median in
/// nanoseconds per query.
fn measure(name: &str, ops: usize, smoke: bool, mut round: impl FnMut() -> Duration) -> f64 {
    let rounds = if smoke { 1 } else { ROUNDS };
    // One round to warm caches, connections and the branch predictors.
    round();
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| round().as_nanos() as f64 / ops as f64)
        .collect();
    let median = median(&mut samples);
    println!("{name:<70} {median:>8.1}");
    median
}

/// Times a two-phase operation on `batch` queries (`step` returns the time
/// of each phase) over [`ROUNDS`] rounds of `per_round` queries; returns
/// each phase's median in nanoseconds per query.
fn measure_split(
    smoke: bool,
    per_round: usize,
    batch: usize,
    mut step: impl FnMut() -> (Duration, Duration),
) -> (f64, f64) {
    let steps = (per_round / batch).max(1);
    let mut round = || {
        let (mut first, mut second) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..steps {
            let (a, b) = step();
            first += a;
            second += b;
        }
        let ops = (steps * batch) as f64;
        (
            first.as_nanos() as f64 / ops,
            second.as_nanos() as f64 / ops,
        )
    };
    // One round to warm caches, sockets and the branch predictors.
    round();
    let rounds = if smoke { 1 } else { ROUNDS };
    let (mut firsts, mut seconds): (Vec<f64>, Vec<f64>) = (0..rounds).map(|_| round()).unzip();
    (median(&mut firsts), median(&mut seconds))
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// AES-256-GCM open of a query record and seal of a reply record, as TLS
/// 1.3 does them (5-byte header as associated data, 16-byte tag).
fn aead(smoke: bool, per_round: usize) -> f64 {
    let key =
        |k: u8| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[k; 32]).expect("a 32-byte key"));
    let (client, server) = (key(1), key(2));
    let nonce = |seq: u64| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let header = |len: usize| {
        let len = u16::try_from(len + 16).expect("a small record");
        let [hi, lo] = len.to_be_bytes();
        [23, 3, 3, hi, lo]
    };
    // The client's sealed query records, made before the clock starts.
    let queries: Vec<Vec<u8>> = (0..per_round as u64)
        .map(|seq| {
            let mut record = vec![0x42; QUERY_RECORD];
            let aad = Aad::from(header(QUERY_RECORD));
            client
                .seal_in_place_append_tag(nonce(seq), aad, &mut record)
                .expect("sealed");
            record
        })
        .collect();
    let reply = vec![0x24; REPLY_RECORD];
    measure(
        "TLS: open a query record and seal a reply record (AES-256-GCM)",
        per_round,
        smoke,
        || {
            let mut inputs = queries.clone();
            let mut out = Vec::with_capacity(REPLY_RECORD + 16);
            let start = Instant::now();
            for (seq, record) in inputs.iter_mut().enumerate() {
                let seq = seq as u64;
                let aad = Aad::from(header(QUERY_RECORD));
                let plain = client
                    .open_in_place(nonce(seq), aad, record)
                    .expect("opened");
                black_box(plain);
                out.clear();
                out.extend_from_slice(&reply);
                let aad = Aad::from(header(REPLY_RECORD));
                server
                    .seal_in_place_append_tag(nonce(seq), aad, &mut out)
                    .expect("sealed");
                black_box(&out);
            }
            start.elapsed()
        },
    )
}

/// A datagram sent on a connected socket to a loopback socket, and its
/// share of a `recvmmsg` that reads `batch` of them.
fn udp(smoke: bool, per_round: usize, batch: usize) -> (f64, f64) {
    let upstream = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    upstream.set_nonblocking(true).expect("non-blocking");
    let sender = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    sender
        .connect(upstream.local_addr().expect("an address"))
        .expect("connected");
    let datagram = [0x33u8; DATAGRAM];
    let mut bufs = vec![[0u8; 1232]; batch];
    let (send, recv) = measure_split(smoke, per_round, batch, || {
        let start = Instant::now();
        for _ in 0..batch {
            sender.send(black_box(&datagram)).expect("sent");
        }
        let between = Instant::now();
        let got = receive(&upstream, &mut bufs);
        let received = between.elapsed();
        assert_eq!(got, batch, "every datagram arrived");
        (between.duration_since(start), received)
    });
    let name = format!("UDP: send one {DATAGRAM} B datagram (connected, to loopback)");
    println!("{name:<70} {send:>8.1}");
    let name = format!("UDP: receive one reply, {batch} per recvmmsg");
    println!("{name:<70} {recv:>8.1}");
    (send, recv)
}

/// Reads the datagrams waiting on `sock` with one `recvmmsg`.
fn receive(sock: &UdpSocket, bufs: &mut [[u8; 1232]]) -> usize {
    use std::os::fd::AsRawFd;
    let mut iovecs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero mmsghdr is valid (no name, no control).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let len = libc::c_uint::try_from(headers.len()).expect("a small batch");
    // SAFETY: `headers` and the buffers they point to outlive the call.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            headers.as_mut_ptr(),
            len,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    usize::try_from(n).unwrap_or(0)
}

/// `batch` replies written to a loopback TCP connection in one `write`,
/// and read at the other end, per reply (TCP_NODELAY, as dotgate sets).
fn tcp(smoke: bool, per_round: usize, batch: usize) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
    let mut writer = TcpStream::connect(listener.local_addr().expect("an address")).expect("dial");
    let (mut reader, _) = listener.accept().expect("accepted");
    writer.set_nodelay(true).expect("nodelay");
    let record = REPLY_RECORD + 5 + 16;
    let out = vec![0x55u8; record * batch];
    let mut buf = vec![0u8; 64 * 1024];
    let (write, read) = measure_split(smoke, per_round, batch, || {
        let start = Instant::now();
        writer.write_all(black_box(&out)).expect("written");
        let between = Instant::now();
        let mut got = 0;
        while got < out.len() {
            got += reader.read(&mut buf).expect("read");
        }
        (between.duration_since(start), between.elapsed())
    });
    let name = format!("TCP: write, {batch} reply record(s) of {record} B per write, per record");
    println!("{name:<70} {write:>8.1}");
    let name = format!("TCP: read, {batch} record(s) per read, per record");
    println!("{name:<70} {read:>8.1}");
    (write, read)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let per_round = if smoke { 64 } else { PER_ROUND };
    println!("{:<70} {:>8}", "case (ns per query, median)", "ns");
    let tls = aead(smoke, per_round);
    let mut udp_batches = Vec::new();
    for batch in [8, 16, 32] {
        udp_batches.push((batch, udp(smoke, per_round, batch)));
    }
    let mut tcp_batches = Vec::new();
    for batch in [1, 2, 4, 8] {
        tcp_batches.push((batch, tcp(smoke, per_round, batch)));
    }
    // The floor at a few batch sizes: the TLS and system-call costs above
    // summed (the pure path is `hot_paths`' "whole path", about 0.1 µs).
    println!();
    println!(
        "floor without the pure path (TLS + UDP send + share of recvmmsg + TCP read + TCP write):"
    );
    for (udp_batch, (send, recv)) in &udp_batches {
        for (tcp_batch, (write, read)) in &tcp_batches {
            let floor = tls + send + recv + write + read;
            println!(
                "  {udp_batch:>2} replies per recvmmsg, {tcp_batch} per TCP read and write: {floor:>8.1} ns"
            );
        }
    }
}
