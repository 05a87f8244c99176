//! Shared UDP sockets toward one upstream, with unpredictable IDs (R21).
//!
//! Every query from every connection goes out on one of a few connected UDP
//! sockets under a fresh random ID that is not in use on that socket. A reply
//! is delivered only when it comes from the upstream's address (the socket is
//! connected, so the kernel filters the source), carries an ID in use, and
//! repeats the question that was sent (RFC 5452). Anything else is counted and
//! ignored; the real reply may still arrive.
//!
//! The pending map is behind a plain mutex, held only for a map operation and
//! never across an await.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{classify, Reply, UpstreamError};
use crate::dns::{self, QueryInfo};
use crate::stats::Stats;

/// Number of sockets per upstream: more source ports make spoofing harder and
/// spread the receive work over tasks.
const SOCKETS: usize = 4;

/// Requested receive buffer per socket.
const RECV_BUFFER: usize = 4 << 20;

/// Largest datagram the receive buffer takes.
const MAX_DATAGRAM: usize = 65_535;

struct Waiter {
    /// Tells this waiter from a later one that reuses the same ID.
    seq: u64,
    question: Box<[u8]>,
    tx: oneshot::Sender<Reply>,
}

struct Socket {
    sock: UdpSocket,
    pending: Mutex<HashMap<u16, Waiter>>,
    next_seq: AtomicU64,
}

impl Socket {
    fn pending(&self) -> MutexGuard<'_, HashMap<u16, Waiter>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so poisoning is
        // ignored rather than spread.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct UdpTransport {
    sockets: Vec<Arc<Socket>>,
    next: AtomicUsize,
    receivers: Vec<JoinHandle<()>>,
}

impl UdpTransport {
    pub async fn new(upstream: SocketAddr, stats: Arc<Stats>) -> std::io::Result<Self> {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().map_err(std::io::Error::other)?
        } else {
            "[::]:0".parse().map_err(std::io::Error::other)?
        };
        let mut sockets = Vec::with_capacity(SOCKETS);
        let mut receivers = Vec::with_capacity(SOCKETS);
        for _ in 0..SOCKETS {
            let sock = UdpSocket::bind(bind).await?;
            // Replies to a burst of queries arrive together; a larger receive
            // buffer (capped by net.core.rmem_max) keeps them from being
            // dropped before the receive task reads them.
            let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(RECV_BUFFER);
            sock.connect(upstream).await?;
            let socket = Arc::new(Socket {
                sock,
                pending: Mutex::new(HashMap::new()),
                next_seq: AtomicU64::new(0),
            });
            receivers.push(tokio::spawn(receive_loop(socket.clone(), stats.clone())));
            sockets.push(socket);
        }
        Ok(Self {
            sockets,
            next: AtomicUsize::new(0),
            receivers,
        })
    }

    /// Sends one query and waits for its matching reply (no timeout here: the
    /// caller bounds the whole exchange).
    pub async fn exchange(&self, msg: &[u8], info: &QueryInfo) -> Result<Reply, UpstreamError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.sockets.len();
        let socket = &self.sockets[index];
        let (tx, rx) = oneshot::channel();
        let seq = socket.next_seq.fetch_add(1, Ordering::Relaxed);
        let id = {
            let mut pending = socket.pending();
            if pending.len() >= usize::from(u16::MAX) {
                return Err(UpstreamError::Busy);
            }
            loop {
                let id: u16 = rand::random();
                if let Entry::Vacant(slot) = pending.entry(id) {
                    slot.insert(Waiter {
                        seq,
                        question: msg[info.question.clone()].into(),
                        tx,
                    });
                    break id;
                }
            }
        };
        let _guard = PendingGuard { socket, id, seq };
        let out = dns::upstream_query(msg, info, id);
        if let Err(e) = socket.sock.send(&out).await {
            // A connected UDP socket reports an earlier ICMP "port
            // unreachable" on whichever call comes next; that error belongs
            // to an old datagram, not this one, so send once more.
            if e.kind() != std::io::ErrorKind::ConnectionRefused {
                return Err(e.into());
            }
            socket.sock.send(&out).await?;
        }
        // The sender lives in the map until the reply or the guard removes it.
        rx.await.map_err(|_| UpstreamError::Closed)
    }
}

impl Drop for UdpTransport {
    fn drop(&mut self) {
        for task in &self.receivers {
            task.abort();
        }
    }
}

/// Removes a waiter whose query was abandoned (timeout, client gone), but
/// never a later waiter that reuses the ID.
struct PendingGuard<'a> {
    socket: &'a Socket,
    id: u16,
    seq: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = self.socket.pending();
        if pending.get(&self.id).is_some_and(|w| w.seq == self.seq) {
            pending.remove(&self.id);
        }
    }
}

async fn receive_loop(socket: Arc<Socket>, stats: Arc<Stats>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = match socket.sock.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                // ICMP port unreachable shows up here as ECONNREFUSED on a
                // connected socket: the upstream is down, the queries time
                // out, and the socket stays usable.
                tracing::debug!(error = %e, "upstream UDP receive error");
                continue;
            }
        };
        let reply = &buf[..n];
        if n < dns::HEADER_LEN {
            stats.count(&stats.mismatched_replies);
            continue;
        }
        let id = dns::id(reply);
        let mut pending = socket.pending();
        let Some(waiter) = pending.get(&id) else {
            drop(pending);
            stats.count(&stats.mismatched_replies);
            tracing::debug!(id, "upstream reply with an ID not in use: ignored");
            continue;
        };
        match classify(reply, &waiter.question) {
            Some(result) => {
                if let Some(waiter) = pending.remove(&id) {
                    drop(pending);
                    // The receiver may have given up (timeout): nothing to do.
                    let _ = waiter.tx.send(result);
                }
            }
            None => {
                drop(pending);
                stats.count(&stats.mismatched_replies);
                tracing::debug!(id, "upstream reply whose question does not match: ignored");
            }
        }
    }
}
