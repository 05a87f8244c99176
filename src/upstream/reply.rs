//! What one exchange with an upstream gives: a [`Reply`], or the
//! [`UpstreamError`] that says why none came; and [`classify`], which every
//! transport uses to tell a reply to the question from a stray message.

use super::connect::ConnectError;
use crate::proto::dns;

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
    Framing(#[from] crate::proto::framing::FrameError),
    #[error("too many queries in flight toward the upstream")]
    Busy,
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("the upstream's replies to the question were malformed")]
    BadReply,
}

impl UpstreamError {
    /// Failures that say the upstream cannot serve now (refused connection,
    /// failed TLS handshake, unresolvable name), rather than one slow answer.
    pub(super) fn is_definitive(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// The failure of a TCP retry after a truncated answer over UDP: the
    /// upstream answered, so a refused or failed connection is not its being
    /// down (a resolver may serve UDP only); kept, but never definitive.
    pub(super) fn after_answer(self) -> Self {
        match self {
            UpstreamError::Connect(e) => UpstreamError::Io(std::io::Error::other(e)),
            other => other,
        }
    }

    /// Failures that say nothing about the upstream: dotgate's own limit of
    /// queries in flight toward it.
    pub(super) fn is_local(&self) -> bool {
        matches!(self, UpstreamError::Busy)
    }
}

/// What a message from the upstream is to the query waiting on its ID.
pub(super) enum Verdict {
    /// Its reply: delivered.
    Reply(Reply),
    /// A reply to its question that cannot be passed on (records past the
    /// end, broken OPT options): counted, and the query waits on for a
    /// valid one within its try.
    Broken,
    /// Not a reply to its question (RFC 5452): counted and ignored.
    Mismatch,
}

/// Classifies a message from the upstream for a sent question.
pub(super) fn classify(reply: &[u8], question: &[u8]) -> Verdict {
    match dns::match_reply(reply, question) {
        dns::ReplyMatch::Answer => Verdict::Reply(Reply::Message(reply.to_vec())),
        dns::ReplyMatch::ErrorWithoutQuestion(rcode) => Verdict::Reply(Reply::Rcode(rcode)),
        dns::ReplyMatch::Broken => Verdict::Broken,
        dns::ReplyMatch::Mismatch => Verdict::Mismatch,
    }
}
