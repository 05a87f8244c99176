//! Forwarding to the upstream resolver: UDP over shared sockets with
//! rewritten IDs, and a retry over TCP when the UDP answer is truncated.
//!
//! This layer answers one question: "what did the upstream say to this
//! query, within the upstream timeout?". Turning that into the client's
//! reply (ID, OPT, SERVFAIL) is the connection's job.

mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::dns::{self, QueryInfo};
use crate::stats::Stats;

/// What the upstream said.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// A complete reply to the question, in the upstream's form (upstream ID).
    Message(Vec<u8>),
    /// An error reply without a question section: only its RCODE is kept.
    Rcode(u8),
}

/// Why no reply came back. Each becomes SERVFAIL for the client.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the TCP connection without answering")]
    Closed,
    #[error("the upstream sent a malformed TCP frame: {0}")]
    Framing(#[from] crate::framing::FrameError),
    #[error("too many queries in flight toward the upstream")]
    Busy,
}

/// One upstream resolver.
pub struct Upstream {
    addr: SocketAddr,
    udp: udp::UdpTransport,
    timeout: Duration,
    stats: Arc<Stats>,
}

impl Upstream {
    /// Opens the shared UDP sockets toward `addr`. Must run inside a tokio
    /// runtime: each socket gets a receive task.
    pub async fn new(
        addr: SocketAddr,
        timeout: Duration,
        stats: Arc<Stats>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            addr,
            udp: udp::UdpTransport::new(addr, stats.clone()).await?,
            timeout,
            stats,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks the upstream the client's query `msg` (described by `info`).
    /// Tries UDP first and repeats a truncated answer over TCP (R19), all
    /// within the upstream timeout.
    pub async fn exchange(&self, msg: &[u8], info: &QueryInfo) -> Result<Reply, UpstreamError> {
        let attempt = async {
            let reply = self.udp.exchange(msg, info).await?;
            match reply {
                Reply::Message(m) if dns::is_truncated(&m) => {
                    self.stats.count(&self.stats.tc_fallbacks);
                    tcp::exchange(self.addr, msg, info, &self.stats).await
                }
                other => Ok(other),
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.stats.count(&self.stats.upstream_timeouts);
                Err(UpstreamError::Timeout)
            }
        }
    }
}

/// Classifies a message from the upstream for a sent question.
fn classify(reply: &[u8], question: &[u8]) -> Option<Reply> {
    match dns::match_reply(reply, question) {
        dns::ReplyMatch::Answer => Some(Reply::Message(reply.to_vec())),
        dns::ReplyMatch::ErrorWithoutQuestion(rcode) => Some(Reply::Rcode(rcode)),
        dns::ReplyMatch::Mismatch => None,
    }
}
