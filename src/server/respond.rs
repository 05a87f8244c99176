//! The reply policy: what the client gets for one query. The upstream's
//! answer with the TLS leg's EDNS options, or a reply dotgate makes itself
//! (FORMERR, BADVERS, SERVFAIL), each counted once in the metrics.

use std::time::Instant;

use crate::metrics::stats::{Stats, Synthesized, Transport};
use crate::proto::dns::{self, Rcode};
use crate::proto::edns::{LegOptions, Request};
use crate::upstream::{Origin, Pool, Reply, UpstreamError};

/// The REFUSED reply to a query over a rate limit, made here and never
/// sent upstream; counted as a query read and a reply.
pub fn refused(stats: &Stats, transport: Transport, msg: &[u8]) -> Vec<u8> {
    stats.count_query(transport);
    stats.count_reply(Rcode::Refused as u16);
    let info = dns::parse_query(msg).ok();
    dns::error_reply(msg, info.as_ref(), Rcode::Refused as u16, LegOptions::NONE)
}

/// Produces the reply to one query: the upstream's answer, FORMERR for a
/// query dotgate cannot read past the header, FORMERR or BADVERS for an OPT
/// record it refuses, SERVFAIL when the upstream fails. Never fails itself.
///
/// The one query path of every transport: `transport` only labels the
/// count, and `leg` says which options of its own the transport adds to a
/// reply for the client's EDNS request (called once the upstream has
/// answered, so a DoT connection that began retiring meanwhile advertises a
/// keepalive of 0).
///
/// `asked` is when the transport had the query, by the runtime's clock (the
/// same as the system's but in tests, where it can be paused and driven, as
/// the upstream's timers are): the upstream's deadline, resend timer and
/// health count from it, so the transport's own reading serves them all.
pub async fn answer(
    upstream: &Pool,
    origin: &Origin,
    stats: &Stats,
    transport: Transport,
    msg: Vec<u8>,
    asked: Instant,
    leg: impl FnOnce(Request) -> LegOptions,
) -> Vec<u8> {
    match dns::parse_query(&msg) {
        Ok(info) => answer_parsed(upstream, origin, stats, transport, msg, info, asked, leg).await,
        Err(e) => {
            stats.count_query(transport);
            tracing::debug!(error = %e, "FORMERR");
            stats.count_synthesized(Synthesized::FormErrUnparsable);
            stats.count_reply(Rcode::FormErr as u16);
            dns::error_reply(&msg, None, Rcode::FormErr as u16, LegOptions::NONE)
        }
    }
}

/// As [`answer`], for a query its transport has already parsed (`info` is
/// `dns::parse_query(&msg)`): DoH parses each message to tell a 400 from a
/// query, and need not have it parsed twice.
#[allow(clippy::too_many_arguments)]
pub async fn answer_parsed(
    upstream: &Pool,
    origin: &Origin,
    stats: &Stats,
    transport: Transport,
    msg: Vec<u8>,
    info: dns::QueryInfo,
    asked: Instant,
    leg: impl FnOnce(Request) -> LegOptions,
) -> Vec<u8> {
    stats.count_query(transport);
    if let Some(refused) = info.edns_error {
        // Answered here, not forwarded: the version or the hop-by-hop
        // options are dotgate's to judge (RFC 6891 §6.1.3, RFC 7828).
        tracing::debug!(qid = info.id, error = %refused, "EDNS refused");
        stats.count_synthesized(if refused.rcode() == Rcode::FormErr as u16 {
            Synthesized::FormErrEdns
        } else {
            Synthesized::BadVersEdns
        });
        stats.count_reply(refused.rcode());
        return dns::error_reply(&msg, Some(&info), refused.rcode(), LegOptions::NONE);
    }
    let outcome = upstream.exchange(&msg, &info, origin, asked).await;
    if outcome.is_ok() {
        let answered = tokio::time::Instant::now().into_std();
        stats
            .upstream_rtt
            .observe(answered.saturating_duration_since(asked).as_secs_f64());
        stats.note_upstream_answer(answered);
    }
    // Decided now, not when the query was read: a connection that began
    // retiring in the meantime advertises a keepalive of 0 (R14, R15).
    let mut leg = leg(info.edns);
    // dotgate sent a client subnet the client did not (RFC 7871 §7.2.2).
    leg.strip_subnet = origin.subnet().is_some() && !info.edns.client_subnet;
    let failure = match outcome {
        Ok(Reply::Message(reply)) => match dns::client_reply(reply, &info, leg) {
            Ok(reply) => {
                // The header's 4 bits: the upstream's reply passes its
                // extended RCODE (if any) through unchanged.
                stats.count_reply(u16::from(reply.get(3).map_or(0, |b| b & 0x0f)));
                return reply;
            }
            Err(e) => (Synthesized::ServFailBadReply, e.to_string()),
        },
        Ok(Reply::Rcode(rcode)) => {
            stats.count_reply(u16::from(rcode));
            return dns::error_reply(&msg, Some(&info), u16::from(rcode), leg);
        }
        Err(UpstreamError::BadReply) => (
            Synthesized::ServFailBadReply,
            UpstreamError::BadReply.to_string(),
        ),
        Err(UpstreamError::Timeout) => (
            Synthesized::ServFailTimeout,
            UpstreamError::Timeout.to_string(),
        ),
        Err(e) => (Synthesized::ServFailUpstream, e.to_string()),
    };
    let (cause, failure) = failure;
    tracing::debug!(qid = info.id, error = %failure, "SERVFAIL");
    stats.count_synthesized(cause);
    stats.count_reply(Rcode::ServFail as u16);
    dns::error_reply(&msg, Some(&info), Rcode::ServFail as u16, leg)
}
