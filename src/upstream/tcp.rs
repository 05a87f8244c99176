//! One-shot TCP exchange with the upstream, used when a UDP answer comes back
//! truncated (R19) and the upstream is told each client by a PROXY header:
//! the header names one client per connection, so the connection serves one
//! retry. Without PROXY, truncated answers are retried over the pooled,
//! pipelined connections of `stream`.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::origin::Origin;
use super::reply::{classify, Reply, UpstreamError, Verdict};
use crate::metrics::stats::Stats;
use crate::proto::dns::{self, QueryInfo};
use crate::proto::framing::FrameReader;

/// With PROXY toward the upstream, the connection starts with the client's
/// header, like a datagram.
pub async fn exchange(
    upstream: SocketAddr,
    msg: &[u8],
    info: &QueryInfo,
    origin: &Origin,
    stats: &Stats,
) -> Result<Reply, UpstreamError> {
    let id: u16 = rand::random();
    let mut out = origin.stream_prelude();
    out.extend_from_slice(&dns::frame(&dns::upstream_query(
        msg,
        info,
        id,
        origin.subnet(),
    )));
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&out).await?;
    let question = &msg[info.question.clone()];
    let mut reader = FrameReader::new(stream);
    // A malformed reply is passed over: a valid one may follow.
    let mut broken = false;
    while let Some(reply) = reader.read_frame().await? {
        let verdict = if dns::id(&reply) == id {
            classify(&reply, question)
        } else {
            Verdict::Mismatch
        };
        match verdict {
            Verdict::Reply(result) => return Ok(result),
            Verdict::Broken => {
                broken = true;
                stats.upstream_bad_replies.inc();
            }
            Verdict::Mismatch => stats.mismatched_replies.inc(),
        }
    }
    Err(if broken {
        UpstreamError::BadReply
    } else {
        UpstreamError::Closed
    })
}
