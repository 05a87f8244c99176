//! DNS wire-format work for the hot path: header checks, ID patching, OPT
//! presence and editing, and synthesized error replies.
//!
//! dotgate never decodes a whole message on the hot path. It reads the header,
//! walks the question, and steps over resource records only as far as it needs
//! to find the OPT record. Everything here works on byte slices and is pure, so
//! it is unit-tested without sockets.
//!
//! Invariants:
//! * a query accepted by [`parse_query`] has exactly one question, written
//!   without compression pointers, and at most one OPT record;
//! * a reply handed to a client carries the client's ID and has an OPT record
//!   exactly when the client's query had one (R17);
//! * only the OPT record of an upstream reply is ever edited (the options of
//!   the TLS leg, [`crate::proto::edns`]); every other byte passes through, unless
//!   the OPT is not the last record and must change (the rare re-encoding
//!   path).
//!
//! Over 700 lines: half of it is the unit tests of the wire rules; the code
//! itself is about 640 lines, one reader and writer of one message format.

use std::ops::Range;

use crate::proto::edns::{self, EdnsError, LegOptions};

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;

/// EDNS UDP payload size advertised toward a UDP upstream, whatever the
/// client said: a TCP client's buffer size means nothing on the UDP leg, and
/// 1232 avoids IP fragmentation (DNS flag day 2020, R20).
pub const UPSTREAM_UDP_PAYLOAD: u16 = 1232;

/// EDNS payload size dotgate itself advertises in OPT records it writes.
const OWN_PAYLOAD: u16 = 1232;

const TYPE_OPT: u16 = 41;
const TYPE_TSIG: u16 = 250;
const OPT_RR_LEN: usize = 11;

/// Response codes dotgate synthesizes or inspects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    Refused = 5,
    /// Extended (RFC 6891): the header carries 0, the OPT record 1.
    BadVers = edns::BADVERS,
}

/// Why a query that has a readable header cannot be forwarded. Each of these
/// is answered with FORMERR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the QR bit is set: a response was sent as a query")]
    NotAQuery,
    #[error("QDCOUNT is {0}, dotgate forwards exactly one question")]
    QuestionCount(u16),
    #[error("the question section is malformed")]
    BadQuestion,
    #[error("a resource record runs past the end of the message")]
    BadRecord,
    #[error("bytes follow the last record of the query")]
    TrailingBytes,
    #[error("the query carries more than one OPT record")]
    MultipleOpt,
    #[error("the OPT record's owner is not the root name")]
    BadOptOwner,
}

/// What dotgate needs to know about a client's query, found in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryInfo {
    /// The client's message ID, restored on the reply.
    pub id: u16,
    /// Byte range of the question section (name, type, class).
    pub question: Range<usize>,
    /// Byte range of the OPT record, if the query has one.
    pub opt: Option<Range<usize>>,
    /// What the OPT record asks of the TLS leg (keepalive, padding); nothing
    /// without an OPT record or when it is refused.
    pub edns: edns::Request,
    /// Set when the OPT record is refused (BADVERS, or FORMERR for its
    /// options): such a query is answered by dotgate, not forwarded.
    pub edns_error: Option<EdnsError>,
}

/// Reads the message ID. The caller guarantees at least a full header.
pub fn id(msg: &[u8]) -> u16 {
    u16::from_be_bytes([msg[0], msg[1]])
}

/// Overwrites the message ID.
pub fn set_id(msg: &mut [u8], id: u16) {
    msg[..2].copy_from_slice(&id.to_be_bytes());
}

fn is_response(msg: &[u8]) -> bool {
    msg[2] & 0x80 != 0
}

/// True when the TC (truncated) bit is set.
pub fn is_truncated(msg: &[u8]) -> bool {
    msg.len() >= HEADER_LEN && msg[2] & 0x02 != 0
}

/// The 4-bit RCODE of the header.
pub fn rcode(msg: &[u8]) -> u8 {
    msg[3] & 0x0f
}

/// Offsets within an OPT record whose owner is the root name (one byte):
/// TYPE at 1, CLASS (payload size) at 3, extended RCODE at 5, version at 6,
/// flags at 7, RDLENGTH at 9, RDATA from 11.
const OPT_EXT_RCODE: usize = 5;
const OPT_VERSION: usize = 6;
const OPT_RDLEN: usize = 9;

fn count(msg: &[u8], index: usize) -> u16 {
    let at = 4 + 2 * index;
    u16::from_be_bytes([msg[at], msg[at + 1]])
}

fn set_count(msg: &mut [u8], index: usize, value: u16) {
    let at = 4 + 2 * index;
    msg[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

const QD: usize = 0;
const AN: usize = 1;
const NS: usize = 2;
const AR: usize = 3;

/// Steps over an uncompressed name starting at `pos`; returns the offset after
/// it. Queries have no earlier name a pointer could usefully refer to, so a
/// pointer in a question is treated as malformed.
fn skip_plain_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        pos += 1 + len;
    }
    (pos - start <= 255 && pos <= msg.len()).then_some(pos)
}

/// Steps over a possibly compressed name starting at `pos`, without following
/// pointers: a pointer ends the name in place.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => pos += 1 + len as usize,
            0xc0..=0xff => {
                msg.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

/// One resource record's position: its type and byte range.
struct RecordSpan {
    rtype: u16,
    range: Range<usize>,
}

/// Steps over one resource record starting at `pos`.
fn skip_record(msg: &[u8], pos: usize) -> Option<RecordSpan> {
    let after_name = skip_name(msg, pos)?;
    let fixed = msg.get(after_name..after_name + 10)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
    let end = after_name + 10 + rdlen;
    (end <= msg.len()).then_some(RecordSpan {
        rtype,
        range: pos..end,
    })
}

/// How long an HTTP cache may keep `reply` (RFC 8484 §5.1): the smallest
/// TTL of its answer section, or for a negative answer (NXDOMAIN or no
/// data) the smallest of its authority section, the SOA whose TTL the
/// resolver has already cut to the negative-caching time (RFC 2308 §5).
/// `None` for any other RCODE, a reply without those records, or one that
/// does not walk: such replies get no freshness at all.
pub fn freshness(reply: &[u8]) -> Option<u32> {
    if reply.len() < HEADER_LEN || !matches!(rcode(reply), 0 | 3) {
        return None;
    }
    let mut pos = HEADER_LEN;
    for _ in 0..count(reply, QD) {
        pos = skip_name(reply, pos)? + 4;
    }
    let answers = usize::from(count(reply, AN));
    let authority = usize::from(count(reply, NS));
    let mut smallest: Option<u32> = None;
    for index in 0..answers + authority {
        if index == answers && smallest.is_some() {
            break;
        }
        let after_name = skip_name(reply, pos)?;
        let fixed = reply.get(after_name..after_name + 10)?;
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        // A TTL with the top bit set means 0 (RFC 2181 §8).
        let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
        smallest = Some(smallest.map_or(ttl, |s| s.min(ttl)));
        pos = after_name + 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    }
    (pos <= reply.len()).then_some(smallest).flatten()
}

/// Positions of the question and of the records after it. Found without
/// allocating: one walk per message, for the query and for the reply.
struct Layout {
    question: Range<usize>,
    /// The first OPT record found in the additional section.
    opt: Option<Range<usize>>,
    /// How many OPT records the additional section holds.
    opts: usize,
    /// How many OPT records end the message, one after another, and where
    /// the first of them starts (the message's end when there are none).
    trailing_opts: usize,
    trailing_start: usize,
    /// Offset just past the last record.
    end: usize,
    /// Type of the last record of the message, if any.
    last_type: Option<u16>,
    /// Where the last record starts (the question's end without records).
    last_start: usize,
}

fn question_end(msg: &[u8]) -> Option<usize> {
    let name_end = skip_plain_name(msg, HEADER_LEN)?;
    let end = name_end + 4;
    (end <= msg.len()).then_some(end)
}

/// Walks all records after a single question. Returns `None` when any record
/// runs past the end of the message.
fn layout(msg: &[u8], question: Range<usize>) -> Option<Layout> {
    let mut pos = question.end;
    let mut opt = None;
    let mut opts = 0;
    let mut trailing_opts = 0;
    let mut trailing_start = pos;
    let mut last_type = None;
    let mut last_start = pos;
    let in_answer_or_authority = count(msg, AN) as usize + count(msg, NS) as usize;
    let total = in_answer_or_authority + count(msg, AR) as usize;
    for index in 0..total {
        let span = skip_record(msg, pos)?;
        if index >= in_answer_or_authority && span.rtype == TYPE_OPT {
            if opt.is_none() {
                opt = Some(span.range.clone());
            }
            opts += 1;
            if trailing_opts == 0 {
                trailing_start = span.range.start;
            }
            trailing_opts += 1;
        } else {
            trailing_opts = 0;
        }
        last_type = Some(span.rtype);
        last_start = span.range.start;
        pos = span.range.end;
    }
    if trailing_opts == 0 {
        trailing_start = pos;
    }
    Some(Layout {
        question,
        opt,
        opts,
        trailing_opts,
        trailing_start,
        end: pos,
        last_type,
        last_start,
    })
}

/// Checks a client's query and finds its question and OPT record.
///
/// The caller has already made sure the message holds a full header (the
/// framing layer closes the connection on anything shorter).
pub fn parse_query(msg: &[u8]) -> Result<QueryInfo, QueryError> {
    debug_assert!(msg.len() >= HEADER_LEN);
    if is_response(msg) {
        return Err(QueryError::NotAQuery);
    }
    let qdcount = count(msg, QD);
    if qdcount != 1 {
        return Err(QueryError::QuestionCount(qdcount));
    }
    let question = HEADER_LEN..question_end(msg).ok_or(QueryError::BadQuestion)?;
    let layout = layout(msg, question).ok_or(QueryError::BadRecord)?;
    // The OPT record added upstream goes at the end of the message: after
    // stray bytes, a parser would take them for the additional record.
    if layout.end != msg.len() {
        return Err(QueryError::TrailingBytes);
    }
    if layout.opts > 1 {
        return Err(QueryError::MultipleOpt);
    }
    // The OPT owner must be the root name (RFC 6891 §6.1.2); the in-place
    // edits rely on its fixed fields starting one byte in.
    if layout.opt.as_ref().is_some_and(|opt| msg[opt.start] != 0) {
        return Err(QueryError::BadOptOwner);
    }
    let opt = layout.opt;
    let request = match &opt {
        Some(opt) => edns::read_request(
            msg[opt.start + OPT_VERSION],
            &msg[opt.start + OPT_RR_LEN..opt.end],
        ),
        None => Ok(edns::Request::default()),
    };
    let (edns, edns_error) = match request {
        Ok(request) => (request, None),
        Err(e) => (edns::Request::default(), Some(e)),
    };
    Ok(QueryInfo {
        id: id(msg),
        question: layout.question,
        opt,
        edns,
        edns_error,
    })
}

/// Builds the message sent upstream: the client's query with `upstream_id`,
/// an EDNS payload size of [`UPSTREAM_UDP_PAYLOAD`], and without the
/// hop-by-hop options 11 and 12 (R22). Every other byte, the other options
/// (cookies, ECS...), the DO bit and the header flags are the client's,
/// except that with a `subnet` option (`--upstream-ecs`), that option
/// replaces any client subnet the client sent.
///
/// A query without OPT gets one appended when its additional section is
/// empty, so that the upstream may answer up to 1232 bytes over UDP instead
/// of truncating at 512; the OPT is stripped again from the reply.
pub fn upstream_query(
    msg: &[u8],
    info: &QueryInfo,
    upstream_id: u16,
    subnet: Option<&[u8]>,
) -> Vec<u8> {
    let extra = OPT_RR_LEN + subnet.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(msg.len() + extra);
    write_upstream_query(&mut out, msg, info, upstream_id, false, subnet);
    out
}

/// An empty edns-tcp-keepalive option: a client's request for the server's
/// idle timeout (RFC 7828 §3.2.1).
const KEEPALIVE_REQUEST: [u8; 4] = {
    let code = edns::KEEPALIVE.to_be_bytes();
    [code[0], code[1], 0, 0]
};

/// The framed query for a pooled stream connection (`tcp://`, `tls://`):
/// [`upstream_query`] with ID 0 (each connection sets its own), behind its
/// 2-byte length prefix, and with an empty keepalive option in its OPT,
/// asking the upstream how long it keeps the connection open (RFC 7828).
/// Built in one allocation: the frame is written around the query rather
/// than copied into it.
///
/// The option is left out when the query has no OPT and none can be added
/// (other records in its additional section), or when it would not fit the
/// 16-bit length.
pub fn stream_query(msg: &[u8], info: &QueryInfo, subnet: Option<&[u8]>) -> Vec<u8> {
    let extra = OPT_RR_LEN + KEEPALIVE_REQUEST.len() + subnet.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(2 + msg.len() + extra);
    out.extend_from_slice(&[0, 0]);
    write_upstream_query(&mut out, msg, info, 0, true, subnet);
    // At most 65535: `msg` came through a 16-bit frame, and nothing is
    // added that would not fit (see `write_upstream_query`).
    let len = u16::try_from(out.len() - 2).unwrap_or(u16::MAX);
    debug_assert_eq!(usize::from(len), out.len() - 2);
    out[..2].copy_from_slice(&len.to_be_bytes());
    out
}

/// Appends the upstream form of the query (see [`upstream_query`]) to `out`,
/// with an empty keepalive option in its OPT when `keepalive` is set, and
/// `subnet` in place of the client's own client subnet option when given.
/// Whatever `out` held before (a PROXY header) is left in front.
pub fn write_upstream_query(
    out: &mut Vec<u8>,
    msg: &[u8],
    info: &QueryInfo,
    upstream_id: u16,
    keepalive: bool,
    subnet: Option<&[u8]>,
) {
    let base = out.len();
    // Every addition must keep the message within 16 bits: a frame whose
    // prefix announced less than was written would desynchronise a pooled
    // upstream connection that other clients' queries share.
    let fits = |extra: usize| msg.len() + extra <= usize::from(u16::MAX);
    let adds_opt = info.opt.is_none() && count(msg, AR) == 0 && fits(OPT_RR_LEN);
    let opt_extra = if adds_opt { OPT_RR_LEN } else { 0 };
    let has_opt = info.opt.is_some() || adds_opt;
    let keepalive = keepalive && has_opt && fits(KEEPALIVE_REQUEST.len() + opt_extra);
    let own_extra = if keepalive {
        KEEPALIVE_REQUEST.len()
    } else {
        0
    };
    // With dotgate's own subnet option configured, the client's is removed
    // even when dotgate's cannot be added: it would let a client speak for
    // another address.
    let drops_subnet = subnet.is_some() && info.edns.client_subnet;
    let subnet = subnet.filter(|s| has_opt && fits(s.len() + own_extra + opt_extra));
    match &info.opt {
        Some(opt)
            if keepalive || info.edns.has_hop_by_hop() || drops_subnet || subnet.is_some() =>
        {
            // One copy still: the bytes up to the OPT's options, the options
            // that are forwarded (and the keepalive request), then whatever
            // follows the OPT. Only bytes after the OPT move; in a query that
            // is at most a TSIG record, whose owner can only point at the
            // question, which stays put.
            let rdata = opt.start + OPT_RR_LEN;
            out.extend_from_slice(&msg[..rdata]);
            let mut kept = edns::push_forwarded_options(out, &msg[rdata..opt.end], drops_subnet);
            if keepalive {
                out.extend_from_slice(&KEEPALIVE_REQUEST);
                kept += KEEPALIVE_REQUEST.len();
            }
            if let Some(subnet) = subnet {
                out.extend_from_slice(subnet);
                kept += subnet.len();
            }
            // Within a message checked to fit 16 bits.
            let rdlen_at = base + opt.start + OPT_RDLEN;
            out[rdlen_at..rdlen_at + 2].copy_from_slice(&(kept as u16).to_be_bytes());
            out.extend_from_slice(&msg[opt.end..]);
        }
        _ => out.extend_from_slice(msg),
    }
    set_id(&mut out[base..], upstream_id);
    match &info.opt {
        Some(opt) => {
            // OPT owner is the root name (one byte), then TYPE, then CLASS,
            // which carries the payload size.
            let class_at = base + opt.start + 3;
            out[class_at..class_at + 2].copy_from_slice(&UPSTREAM_UDP_PAYLOAD.to_be_bytes());
        }
        None if adds_opt => {
            push_opt(out, UPSTREAM_UDP_PAYLOAD);
            let rdlen_at = out.len() - 2;
            let mut rdlen = 0;
            if keepalive {
                out.extend_from_slice(&KEEPALIVE_REQUEST);
                rdlen += KEEPALIVE_REQUEST.len();
            }
            if let Some(subnet) = subnet {
                out.extend_from_slice(subnet);
                rdlen += subnet.len();
            }
            // A few dozen bytes at most.
            out[rdlen_at..rdlen_at + 2].copy_from_slice(&(rdlen as u16).to_be_bytes());
            set_count(&mut out[base..], AR, 1);
        }
        None => {}
    }
}

/// The edns-tcp-keepalive timeout an upstream's reply advertises (RFC 7828
/// §3.3.2), in 100 ms units: the first option 11 carrying a value in the
/// reply's OPT record. `None` without one, or for a message that does not
/// parse that far. Walks the records without allocating.
pub fn reply_keepalive(reply: &[u8]) -> Option<u16> {
    if reply.len() < HEADER_LEN || count(reply, AR) == 0 {
        return None;
    }
    let mut pos = HEADER_LEN;
    for _ in 0..count(reply, QD) {
        pos = skip_name(reply, pos)? + 4;
    }
    let before_additional = usize::from(count(reply, AN)) + usize::from(count(reply, NS));
    let total = before_additional + usize::from(count(reply, AR));
    for index in 0..total {
        let span = skip_record(reply, pos)?;
        if index >= before_additional && span.rtype == TYPE_OPT {
            let rdata = rdlen_offset(reply, &span.range)? + 2;
            return edns::keepalive_timeout(reply.get(rdata..span.range.end)?);
        }
        pos = span.range.end;
    }
    None
}

fn push_opt(out: &mut Vec<u8>, payload: u16) {
    out.push(0); // root owner name
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // extended RCODE, version 0, flags
    out.extend_from_slice(&[0, 0]); // no options
}

/// Compares two question sections: the name case-insensitively (upstreams
/// may echo 0x20-randomized case), type and class exactly.
fn same_question(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a[a.len() - 4..] == b[b.len() - 4..]
        && a[..a.len() - 4].eq_ignore_ascii_case(&b[..b.len() - 4])
}

/// How an upstream's message relates to the question dotgate asked.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyMatch {
    /// A reply to this question.
    Answer,
    /// An error reply without a question section (some servers send FORMERR
    /// or REFUSED that way); its RCODE is kept, the question restored.
    ErrorWithoutQuestion(u8),
    /// The right question, but records that run past the message or an OPT
    /// record whose options do not parse: it cannot be passed on. Counted,
    /// and ignored like a mismatch, so that a valid reply may still come.
    Broken,
    /// Not a reply to this question: ignored (RFC 5452), the real one may
    /// still come.
    Mismatch,
}

/// RCODEs with which a server may answer without echoing the question:
/// FORMERR, SERVFAIL, NOTIMP and REFUSED (it could not, or would not, read
/// it). A question-less NOERROR or NXDOMAIN is never accepted: one spoofed
/// datagram with the right ID could otherwise turn any name into NXDOMAIN.
const QUESTIONLESS_RCODES: [u8; 4] = [1, 2, 4, 5];

/// Decides whether `reply` answers `question` (the bytes of the question
/// section that was sent). The caller has already matched source and ID.
pub fn match_reply(reply: &[u8], question: &[u8]) -> ReplyMatch {
    if reply.len() < HEADER_LEN || !is_response(reply) {
        return ReplyMatch::Mismatch;
    }
    match count(reply, QD) {
        0 if QUESTIONLESS_RCODES.contains(&rcode(reply)) => {
            ReplyMatch::ErrorWithoutQuestion(rcode(reply))
        }
        1 => match question_end(reply) {
            Some(end) if same_question(&reply[HEADER_LEN..end], question) => {
                if records_well_formed(reply, end) {
                    ReplyMatch::Answer
                } else {
                    ReplyMatch::Broken
                }
            }
            _ => ReplyMatch::Mismatch,
        },
        _ => ReplyMatch::Mismatch,
    }
}

/// True when every record after the question (which ends at `question_end`)
/// lies within the message and every OPT record's options parse: what
/// [`client_reply`] needs to pass the reply on. One walk, no allocation.
fn records_well_formed(reply: &[u8], question_end: usize) -> bool {
    let before_additional = usize::from(count(reply, AN)) + usize::from(count(reply, NS));
    let total = before_additional + usize::from(count(reply, AR));
    let mut pos = question_end;
    for index in 0..total {
        let Some(span) = skip_record(reply, pos) else {
            return false;
        };
        if index >= before_additional && span.rtype == TYPE_OPT {
            let well_formed = rdlen_offset(reply, &span.range)
                .and_then(|at| reply.get(at + 2..span.range.end))
                .is_some_and(edns::options_well_formed);
            if !well_formed {
                return false;
            }
        }
        pos = span.range.end;
    }
    true
}

/// Why an upstream reply cannot be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the upstream reply is malformed")]
    Malformed,
    #[error("the reply would exceed 65535 bytes")]
    TooLarge,
}

/// Turns an upstream reply into the client's reply, in place where possible:
/// restores the client's ID, makes OPT presence mirror the query (R17), and
/// replaces the upstream's hop-by-hop options with the TLS leg's `leg`
/// (keepalive, padding: R14, R18).
///
/// Only the OPT record is edited; the rest of the message is passed through
/// byte for byte, and a reply that needs no change is not changed at all.
/// The fast path is an OPT record at the end of the message (the common
/// case), whose options are rewritten in place; anything else that needs a
/// change takes the `reencode` slow path. A TSIG record that ends the
/// message is set aside first and put back last (`signed_reply`).
pub fn client_reply(
    mut reply: Vec<u8>,
    query: &QueryInfo,
    leg: LegOptions,
) -> Result<Vec<u8>, ReplyError> {
    set_id(&mut reply, query.id);
    let question_end = question_end(&reply).ok_or(ReplyError::Malformed)?;
    let layout = layout(&reply, HEADER_LEN..question_end).ok_or(ReplyError::Malformed)?;
    // Anything past the last record (padding garbage) is dropped.
    reply.truncate(layout.end);
    if layout.opts == 0 && query.opt.is_none() {
        // Nothing to edit: passed on as it came, a TSIG record's bytes and
        // compression included.
        return fits_a_frame(reply);
    }
    if layout.last_type == Some(TYPE_TSIG) && count(&reply, AR) > 0 {
        return signed_reply(reply, query, leg, layout.last_start, question_end);
    }
    unsigned_reply(reply, query, leg, layout, 0)
}

/// [`client_reply`] for a reply without a TSIG record at its end, whose
/// records `layout` found, and after which `trailer` bytes will be put
/// back (padding counts them).
fn unsigned_reply(
    mut reply: Vec<u8>,
    query: &QueryInfo,
    leg: LegOptions,
    layout: Layout,
    trailer: usize,
) -> Result<Vec<u8>, ReplyError> {
    let wants_opt = query.opt.is_some();
    match (layout.opts, layout.opt) {
        (0, _) if !wants_opt => {}
        (0, _) => {
            if layout.last_type == Some(TYPE_TSIG) {
                // A second TSIG record (the last one was set aside).
                return reencode(&reply, query, leg, trailer);
            }
            push_own_opt(&mut reply, leg, trailer)?;
        }
        (1, Some(opt)) if wants_opt => {
            let rdlen_at = rdlen_offset(&reply, &opt).ok_or(ReplyError::Malformed)?;
            if opt.end == reply.len() {
                edns::rewrite_tail_before(&mut reply, rdlen_at, leg, trailer)
                    .map_err(ReplyError::from)?;
            } else if !leg.is_empty() || edns::needs_rewrite(&reply[rdlen_at + 2..opt.end], leg) {
                return reencode(&reply, query, leg, trailer);
            }
        }
        (opts, _) => {
            // Remove every OPT record. A record is only ever removed from the
            // end of the message, so no compression pointer can be left
            // pointing at moved bytes: the OPT records that end the message
            // go, and any other takes the slow path (from what is left).
            reply.truncate(layout.trailing_start);
            let ar = count(&reply, AR);
            // At most ARCOUNT of them.
            let removed = u16::try_from(layout.trailing_opts).unwrap_or(u16::MAX);
            set_count(&mut reply, AR, ar.saturating_sub(removed));
            if layout.trailing_opts != opts {
                return reencode(&reply, query, leg, trailer);
            }
            if wants_opt {
                push_own_opt(&mut reply, leg, trailer)?;
            }
        }
    }
    fits_a_frame(reply)
}

/// [`client_reply`] for a reply whose last record, starting at `tsig_start`,
/// is a TSIG record (RFC 8945): the rest of the message is made the client's
/// reply as an unsigned one would be, and the TSIG record put back after it,
/// byte for byte, as the last record of the additional section (where a
/// verifier looks for it). An OPT record dotgate adds goes before it.
///
/// The TSIG record's owner may be a compression pointer into the message:
/// the question never moves, so a pointer there is kept as it is; a pointer
/// further on (to bytes that a rewrite may move) is replaced by the name it
/// stands for (the MAC covers the key name in canonical form, not its
/// compression).
fn signed_reply(
    mut reply: Vec<u8>,
    query: &QueryInfo,
    leg: LegOptions,
    tsig_start: usize,
    question_end: usize,
) -> Result<Vec<u8>, ReplyError> {
    let tsig = reply.split_off(tsig_start);
    // Counted in ARCOUNT, as the last record is in the additional section.
    let ar = count(&reply, AR).saturating_sub(1);
    set_count(&mut reply, AR, ar);
    let owner_end = skip_name(&tsig, 0).ok_or(ReplyError::Malformed)?;
    let pointer = (owner_end >= 2 && tsig[owner_end - 2] >= 0xc0).then(|| {
        usize::from(u16::from_be_bytes([tsig[owner_end - 2], tsig[owner_end - 1]]) & 0x3fff)
    });
    let tsig = match pointer {
        Some(target) if target >= question_end => {
            let mut expanded = Vec::with_capacity(tsig.len() + 255);
            push_expanded_name(&mut expanded, &reply, &tsig)?;
            expanded.extend_from_slice(&tsig[owner_end..]);
            expanded
        }
        _ => tsig,
    };
    let layout = layout(&reply, HEADER_LEN..question_end).ok_or(ReplyError::Malformed)?;
    let mut out = unsigned_reply(reply, query, leg, layout, tsig.len())?;
    let ar = count(&out, AR)
        .checked_add(1)
        .ok_or(ReplyError::Malformed)?;
    set_count(&mut out, AR, ar);
    out.extend_from_slice(&tsig);
    fits_a_frame(out)
}

/// Writes the owner name of `record` without compression, following its
/// pointers into `msg`, the message it was part of. At most 255 bytes, and
/// as many jumps as a name can have labels.
fn push_expanded_name(out: &mut Vec<u8>, msg: &[u8], record: &[u8]) -> Result<(), ReplyError> {
    let start = out.len();
    let (mut bytes, mut pos) = (record, 0);
    for _ in 0..128 {
        let len = *bytes.get(pos).ok_or(ReplyError::Malformed)?;
        match len {
            0 => {
                out.push(0);
                return if out.len() - start <= 255 {
                    Ok(())
                } else {
                    Err(ReplyError::Malformed)
                };
            }
            1..=63 => {
                let label = bytes
                    .get(pos..pos + 1 + usize::from(len))
                    .ok_or(ReplyError::Malformed)?;
                out.extend_from_slice(label);
                pos += label.len();
            }
            0xc0..=0xff => {
                let low = *bytes.get(pos + 1).ok_or(ReplyError::Malformed)?;
                pos = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                bytes = msg;
            }
            _ => return Err(ReplyError::Malformed),
        }
        if out.len() - start > 255 {
            return Err(ReplyError::Malformed);
        }
    }
    Err(ReplyError::Malformed)
}

/// Where the RDLENGTH field of the record at `record` is (its owner may be
/// any name in an upstream's reply).
fn rdlen_offset(msg: &[u8], record: &Range<usize>) -> Option<usize> {
    let at = skip_name(msg, record.start)? + 8;
    (at + 2 <= record.end).then_some(at)
}

/// Appends dotgate's own OPT record, carrying `leg`'s options, to a message
/// that has none (and that `trailer` bytes will follow).
fn push_own_opt(reply: &mut Vec<u8>, leg: LegOptions, trailer: usize) -> Result<(), ReplyError> {
    push_opt(reply, OWN_PAYLOAD);
    let ar = count(reply, AR);
    set_count(reply, AR, ar.saturating_add(1));
    let rdlen_at = reply.len() - 2;
    edns::rewrite_tail_before(reply, rdlen_at, leg, trailer).map_err(ReplyError::from)
}

impl From<edns::RewriteError> for ReplyError {
    fn from(e: edns::RewriteError) -> Self {
        match e {
            edns::RewriteError::Malformed => ReplyError::Malformed,
            edns::RewriteError::TooLarge => ReplyError::TooLarge,
        }
    }
}

/// A reply must fit the 16-bit length prefix of the TLS leg.
fn fits_a_frame(reply: Vec<u8>) -> Result<Vec<u8>, ReplyError> {
    if reply.len() > usize::from(u16::MAX) {
        return Err(ReplyError::TooLarge);
    }
    Ok(reply)
}

/// The rare slow path of [`client_reply`]: an OPT record that must change
/// but is not at the end of the message (so editing it in place could move
/// bytes a compression pointer refers to), or a message ending in two TSIG
/// records (one is set aside by [`signed_reply`]). Decodes and
/// re-encodes the whole message, keeping the upstream's EDNS fields and
/// options except the hop-by-hop ones, which are replaced by `leg`'s.
fn reencode(
    reply: &[u8],
    query: &QueryInfo,
    leg: LegOptions,
    trailer: usize,
) -> Result<Vec<u8>, ReplyError> {
    use hickory_proto::op::{Edns, Message};
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    let mut msg = Message::from_vec(reply).map_err(|_| ReplyError::Malformed)?;
    msg.metadata.id = query.id;
    let upstream_edns = msg.edns.take();
    if query.opt.is_some() {
        let mut edns = upstream_edns.unwrap_or_else(|| {
            let mut edns = Edns::new();
            edns.set_max_payload(OWN_PAYLOAD);
            edns
        });
        let options = edns.options_mut();
        options.remove(EdnsCode::Keepalive);
        options.remove(EdnsCode::Padding);
        if leg.strip_subnet {
            options.remove(EdnsCode::Subnet);
        }
        if let Some(timeout) = leg.keepalive {
            options.insert(EdnsOption::Unknown(
                edns::KEEPALIVE,
                timeout.to_be_bytes().to_vec(),
            ));
        }
        msg.edns = Some(edns);
    }
    let encoded = msg.to_vec().map_err(|_| ReplyError::Malformed)?;
    if !leg.padding || msg.edns.is_none() {
        return fits_a_frame(encoded);
    }
    let Some(pad) = edns::padding_len(encoded.len() + trailer) else {
        return fits_a_frame(encoded);
    };
    // The padding option adds exactly its own length: the encoding is
    // otherwise the same.
    if let Some(edns) = msg.edns.as_mut() {
        edns.options_mut()
            .insert(EdnsOption::Unknown(edns::PADDING, vec![0; pad]));
    }
    fits_a_frame(msg.to_vec().map_err(|_| ReplyError::Malformed)?)
}

/// Builds an error reply for `query` with the given RCODE, which may be an
/// extended one (BADVERS).
///
/// The reply carries the client's ID, opcode, RD and CD bits, its question
/// (QDCOUNT 1, which Android's validation requires, R11) when `info` is
/// known, and an OPT record (version 0) when the query had one (R17), with
/// the options of `leg`. An extended RCODE is only expressible with an OPT
/// record; without one, its lower four bits are all that is sent.
pub fn error_reply(query: &[u8], info: Option<&QueryInfo>, rcode: u16, leg: LegOptions) -> Vec<u8> {
    let question = info.map(|i| &query[i.question.clone()]).unwrap_or(&[]);
    let has_opt = info.is_some_and(|i| i.opt.is_some());
    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + OPT_RR_LEN);
    out.extend_from_slice(&query[..2]);
    // QR=1, opcode and RD from the query; RA=1; CD from the query.
    out.push(0x80 | (query[2] & 0x79));
    out.push(0x80 | (query[3] & 0x10) | (rcode & 0x0f) as u8);
    out.extend_from_slice(&u16::from(!question.is_empty()).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(has_opt).to_be_bytes());
    out.extend_from_slice(question);
    if has_opt {
        let opt_start = out.len();
        push_opt(&mut out, OWN_PAYLOAD);
        // The upper eight bits of a 12-bit RCODE.
        out[opt_start + OPT_EXT_RCODE] = (rcode >> 4) as u8;
        let rdlen_at = out.len() - 2;
        // Cannot fail: the RDATA is empty and the message a few hundred
        // bytes at most. Should it, the reply simply goes without options.
        let _ = edns::rewrite_tail(&mut out, rdlen_at, leg);
    }
    out
}

/// Prefixes a message with its 2-byte length, making the unit the writer
/// sends in one piece (RFC 7766 §8).
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    // Messages longer than 65535 bytes cannot be produced: every path builds
    // them from a framed query or a reply read through a 16-bit length.
    debug_assert!(msg.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(msg.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` with the given type, optionally with an OPT record.
    fn query(id: u16, name: &str, qtype: u16, opt: bool) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt)]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        if opt {
            push_opt(&mut m, 4096);
        }
        m
    }

    /// Turns a query into a reply with one A record (compressed owner name).
    fn answer(q: &[u8], with_opt: bool) -> Vec<u8> {
        let qend = question_end(q).unwrap();
        let mut r = q[..qend].to_vec();
        r[2] |= 0x80;
        set_count(&mut r, AN, 1);
        set_count(&mut r, AR, u16::from(with_opt));
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        if with_opt {
            push_opt(&mut r, 1232);
        }
        r
    }

    /// The freshness of a reply is its smallest answer TTL; a negative
    /// answer's is its SOA's; errors, empty and broken replies have none.
    #[test]
    fn freshness_is_the_smallest_ttl_that_applies() {
        let q = query(7, "fresh.test.", 1, true);
        let mut two = answer(&q, true);
        assert_eq!(freshness(&two), Some(60));
        // A second answer with TTL 30, before the OPT record.
        let opt_at = two.len() - OPT_RR_LEN;
        let opt = two.split_off(opt_at);
        two.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 2]);
        two.extend_from_slice(&opt);
        set_count(&mut two, AN, 2);
        assert_eq!(freshness(&two), Some(30));
        // NXDOMAIN with an SOA of TTL 900 in the authority section.
        let mut nx = q[..question_end(&q).unwrap()].to_vec();
        nx[2] |= 0x80;
        nx[3] = (nx[3] & 0xf0) | 3;
        set_count(&mut nx, AR, 0);
        set_count(&mut nx, NS, 1);
        nx.extend_from_slice(&[0xc0, 12, 0, 6, 0, 1, 0, 0, 0x03, 0x84, 0, 22]);
        nx.extend_from_slice(&[
            0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5,
        ]);
        nx.extend_from_slice(&[0; 0]);
        assert_eq!(freshness(&nx), Some(900));
        // The top bit set reads as 0.
        let mut negative = answer(&q, false);
        let ttl_at = negative.len() - 10;
        negative[ttl_at..ttl_at + 4].copy_from_slice(&[0x80, 0, 0, 1]);
        assert_eq!(freshness(&negative), Some(0));
        // SERVFAIL, no records, a record cut short.
        let mut servfail = answer(&q, false);
        servfail[3] = (servfail[3] & 0xf0) | 2;
        assert_eq!(freshness(&servfail), None);
        let mut empty = q[..question_end(&q).unwrap()].to_vec();
        empty[2] |= 0x80;
        set_count(&mut empty, AR, 0);
        assert_eq!(freshness(&empty), None);
        let cut = answer(&q, false);
        assert_eq!(freshness(&cut[..cut.len() - 1]), None);
        assert_eq!(freshness(&[0u8; 5]), None);
    }

    /// Adds options to the OPT record that ends `m`.
    fn with_options(mut m: Vec<u8>, options: &[(u16, &[u8])]) -> Vec<u8> {
        let rdlen_at = m.len() - 2;
        assert_eq!(&m[rdlen_at..], &[0, 0], "an empty OPT ends the message");
        for (code, data) in options {
            m.extend_from_slice(&code.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        let rdlen = (m.len() - rdlen_at - 2) as u16;
        m[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        m
    }

    /// A reply to `q` whose additional section holds an OPT record with
    /// `options` and then an A record: the OPT is not the last record.
    fn opt_then_a(q: &[u8], options: &[(u16, &[u8])]) -> Vec<u8> {
        let mut r = with_options(answer(q, true), options);
        set_count(&mut r, AR, 2);
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 2]);
        r
    }

    /// The options of the only OPT record of `m`, as (code, data).
    fn opt_options(m: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let l = layout(m, 12..question_end(m).unwrap()).unwrap();
        assert_eq!(l.opts, 1, "one OPT record");
        let opt = l.opt.unwrap();
        let mut rd = &m[opt.start + OPT_RR_LEN..opt.end];
        let rdlen = u16::from_be_bytes([m[opt.start + 9], m[opt.start + 10]]);
        assert_eq!(usize::from(rdlen), rd.len());
        let mut out = Vec::new();
        while !rd.is_empty() {
            let code = u16::from_be_bytes([rd[0], rd[1]]);
            let len = usize::from(u16::from_be_bytes([rd[2], rd[3]]));
            out.push((code, rd[4..4 + len].to_vec()));
            rd = &rd[4 + len..];
        }
        out
    }

    const KEEPALIVE_AND_PADDING: LegOptions = LegOptions {
        keepalive: Some(300),
        padding: true,
        strip_subnet: false,
    };

    #[test]
    fn parses_a_plain_query() {
        let q = query(7, "example.com", 1, false);
        let info = parse_query(&q).unwrap();
        assert_eq!(info.id, 7);
        assert_eq!(info.question, 12..q.len());
        assert_eq!(info.opt, None);
    }

    #[test]
    fn finds_the_opt_record() {
        let q = query(7, "example.com", 28, true);
        let info = parse_query(&q).unwrap();
        assert_eq!(info.opt, Some(q.len() - OPT_RR_LEN..q.len()));
    }

    #[test]
    fn rejects_malformed_queries() {
        let mut q = query(1, "a.b", 1, false);
        q[5] = 2;
        assert_eq!(parse_query(&q), Err(QueryError::QuestionCount(2)));

        let mut q = query(1, "a.b", 1, false);
        q[2] |= 0x80;
        assert_eq!(parse_query(&q), Err(QueryError::NotAQuery));

        let q = query(1, "example.com", 1, false);
        assert_eq!(parse_query(&q[..q.len() - 2]), Err(QueryError::BadQuestion));

        let mut q = query(1, "a.b", 1, false);
        q[12] = 0xc0; // pointer in the question
        assert_eq!(parse_query(&q), Err(QueryError::BadQuestion));

        let mut q = query(1, "a.b", 1, true);
        push_opt(&mut q, 512);
        set_count(&mut q, AR, 2);
        assert_eq!(parse_query(&q), Err(QueryError::MultipleOpt));

        let mut q = query(1, "a.b", 1, false);
        set_count(&mut q, AR, 1);
        assert_eq!(parse_query(&q), Err(QueryError::BadRecord));

        // Stray bytes after the last record (found by fuzzing): the OPT
        // added upstream would follow them and not be read as a record.
        for opt in [false, true] {
            let mut q = query(1, "a.b", 1, opt);
            q.extend_from_slice(&[1, 2, 3]);
            assert_eq!(parse_query(&q), Err(QueryError::TrailingBytes));
        }
    }

    #[test]
    fn upstream_query_rewrites_id_and_payload() {
        let q = query(7, "example.com", 1, true);
        let info = parse_query(&q).unwrap();
        let up = upstream_query(&q, &info, 0xbeef, None);
        assert_eq!(id(&up), 0xbeef);
        let opt = info.opt.unwrap();
        assert_eq!(&up[opt.start + 3..opt.start + 5], &1232u16.to_be_bytes());
        assert_eq!(up.len(), q.len());

        let q = query(7, "example.com", 1, false);
        let info = parse_query(&q).unwrap();
        let up = upstream_query(&q, &info, 9, None);
        let up_info = parse_query(&up).unwrap();
        assert!(up_info.opt.is_some());
    }

    /// The client subnet options of a message's OPT record, as bytes.
    fn subnets(msg: &[u8]) -> Vec<Vec<u8>> {
        let m = hickory_proto::op::Message::from_vec(msg).unwrap();
        let Some(edns) = m.edns else {
            return Vec::new();
        };
        let mut rdata = Vec::new();
        let opt = edns.options();
        for (code, option) in opt.as_ref() {
            if u16::from(*code) == edns::CLIENT_SUBNET {
                rdata.push(Vec::<u8>::try_from(option).unwrap());
            }
        }
        rdata
    }

    #[test]
    fn a_configured_subnet_replaces_the_clients() {
        let mut ours = Vec::new();
        edns::push_client_subnet(&mut ours, "192.0.2.77".parse().unwrap(), 24, 56);
        let ours_data = ours[4..].to_vec();
        // No OPT: one is added, carrying the subnet.
        let q = query(7, "example.com", 1, false);
        let info = parse_query(&q).unwrap();
        let up = upstream_query(&q, &info, 9, Some(&ours));
        assert_eq!(subnets(&up), std::slice::from_ref(&ours_data));
        let framed = stream_query(&q, &info, Some(&ours));
        assert_eq!(subnets(&framed[2..]), std::slice::from_ref(&ours_data));
        assert!(parse_query(&framed[2..]).unwrap().edns.client_subnet);
        // The client's own subnet is dropped, ours sent instead.
        let theirs = [0u8, 8, 0, 7, 0, 1, 24, 0, 203, 0, 113];
        let q = with_options(
            query(7, "example.com", 1, true),
            &[(edns::CLIENT_SUBNET, &theirs[4..])],
        );
        let info = parse_query(&q).unwrap();
        assert!(info.edns.client_subnet);
        assert_eq!(
            subnets(&upstream_query(&q, &info, 1, None)),
            [theirs[4..].to_vec()]
        );
        assert_eq!(
            subnets(&upstream_query(&q, &info, 1, Some(&ours))),
            std::slice::from_ref(&ours_data)
        );
        assert_eq!(
            subnets(&stream_query(&q, &info, Some(&ours))[2..]),
            [ours_data]
        );
    }

    #[test]
    fn a_subnet_the_client_did_not_send_leaves_the_reply() {
        let q = query(7, "example.com", 1, true);
        let info = parse_query(&q).unwrap();
        let mut ecs = Vec::new();
        edns::push_client_subnet(&mut ecs, "192.0.2.77".parse().unwrap(), 24, 56);
        let r = with_options(answer(&q, true), &[(edns::CLIENT_SUBNET, &ecs[4..])]);
        assert_eq!(subnets(&r).len(), 1);
        let kept = client_reply(r.clone(), &info, LegOptions::NONE).unwrap();
        assert_eq!(subnets(&kept).len(), 1);
        let strip = LegOptions {
            strip_subnet: true,
            ..LegOptions::NONE
        };
        let stripped = client_reply(r, &info, strip).unwrap();
        assert!(subnets(&stripped).is_empty());
        assert!(hickory_proto::op::Message::from_vec(&stripped)
            .unwrap()
            .edns
            .is_some());
    }

    /// A TSIG record (hmac-sha256, a 32-byte MAC) with `owner` as its name.
    fn tsig(owner: &[u8], original_id: u16) -> Vec<u8> {
        let mut rdata = b"\x0bhmac-sha256\x00".to_vec();
        rdata.extend_from_slice(&[0, 0, 0x65, 0x43, 0x21, 0x00, 1, 44, 0, 32]);
        rdata.extend((0..32).map(|i| i as u8 ^ 0xa5));
        rdata.extend_from_slice(&original_id.to_be_bytes());
        rdata.extend_from_slice(&[0, 0, 0, 0]);
        let mut record = owner.to_vec();
        record.extend_from_slice(&[0, 250, 0, 255, 0, 0, 0, 0]);
        record.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        record.extend_from_slice(&rdata);
        record
    }

    /// `reply` with `record` appended to its additional section.
    fn with_additional(mut reply: Vec<u8>, record: &[u8]) -> Vec<u8> {
        reply.extend_from_slice(record);
        let ar = count(&reply, AR);
        set_count(&mut reply, AR, ar + 1);
        reply
    }

    /// The types of the additional records of `msg`, in order, and where
    /// the last record starts.
    fn additional_types(msg: &[u8]) -> (Vec<u16>, usize) {
        let qend = question_end(msg).unwrap();
        let mut pos = qend;
        let mut types = Vec::new();
        let before = usize::from(count(msg, AN)) + usize::from(count(msg, NS));
        let mut last = pos;
        for index in 0..before + usize::from(count(msg, AR)) {
            let span = skip_record(msg, pos).unwrap();
            if index >= before {
                types.push(span.rtype);
            }
            last = span.range.start;
            pos = span.range.end;
        }
        assert_eq!(pos, msg.len(), "nothing after the last record");
        (types, last)
    }

    #[test]
    fn a_signed_reply_keeps_its_tsig_last_and_untouched() {
        let q = query(9, "example.com", 1, true);
        let info = parse_query(&q).unwrap();
        let key = b"\x03key\x07example\x00";
        for (upstream_opt, leg) in [
            (false, LegOptions::NONE),
            (false, KEEPALIVE_AND_PADDING),
            (true, LegOptions::NONE),
            (true, KEEPALIVE_AND_PADDING),
        ] {
            let record = tsig(key, 0x4242);
            let reply = with_additional(answer(&q, upstream_opt), &record);
            let out = client_reply(reply, &info, leg).unwrap();
            let (types, last) = additional_types(&out);
            assert_eq!(types, [TYPE_OPT, TYPE_TSIG], "{upstream_opt} {leg:?}");
            assert_eq!(&out[last..], record.as_slice(), "TSIG bytes as sent");
            assert_eq!(id(&out), 9);
            if leg.padding {
                assert_eq!(out.len() % edns::RESPONSE_BLOCK, 0, "padded, TSIG included");
            }
        }
        // Owner compressed to the question: kept as it is.
        let record = tsig(&[0xc0, 12], 7);
        let out = client_reply(
            with_additional(answer(&q, false), &record),
            &info,
            KEEPALIVE_AND_PADDING,
        )
        .unwrap();
        let (types, last) = additional_types(&out);
        assert_eq!(types, [TYPE_OPT, TYPE_TSIG]);
        assert_eq!(&out[last..], record.as_slice());
        // A query without OPT: a signed reply without OPT passes unchanged.
        let plain = query(9, "example.com", 1, false);
        let plain_info = parse_query(&plain).unwrap();
        let reply = with_additional(answer(&plain, false), &tsig(key, 9));
        assert_eq!(
            client_reply(reply.clone(), &plain_info, LegOptions::NONE).unwrap(),
            reply
        );
    }

    #[test]
    fn a_tsig_owner_pointing_at_rewritten_bytes_is_written_out() {
        let q = query(9, "example.com", 1, true);
        let info = parse_query(&q).unwrap();
        // An OPT in the middle (it must change: the slow path re-encodes),
        // then an NS record owning key.example., then the TSIG whose owner
        // points at that name.
        let mut reply = answer(&q, true);
        reply = with_options(reply, &[(12, &[0; 4])]);
        let key_at = reply.len();
        let ns = [
            b"\x03key\x07example\x00".as_slice(),
            &[0, 2, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12],
        ]
        .concat();
        reply = with_additional(reply, &ns);
        let pointer = [0xc0 | (key_at >> 8) as u8, key_at as u8];
        let record = tsig(&pointer, 9);
        reply = with_additional(reply, &record);
        let out = client_reply(reply, &info, KEEPALIVE_AND_PADDING).unwrap();
        let (types, last) = additional_types(&out);
        assert_eq!(types.last(), Some(&TYPE_TSIG));
        assert_eq!(types.iter().filter(|t| **t == TYPE_OPT).count(), 1);
        let expanded = [b"\x03key\x07example\x00".as_slice(), &record[2..]].concat();
        assert_eq!(
            &out[last..],
            expanded.as_slice(),
            "the same name, written out"
        );
        assert_eq!(out.len() % edns::RESPONSE_BLOCK, 0, "padded, TSIG included");
    }

    #[test]
    fn a_reply_to_the_question_with_broken_records_is_told_apart() {
        let q = query(7, "example.com", 1, true);
        let question = &q[parse_query(&q).unwrap().question];
        let good = answer(&q, true);
        assert_eq!(match_reply(&good, question), ReplyMatch::Answer);
        // The header claims one more answer than there is.
        let mut missing = good.clone();
        set_count(&mut missing, AN, count(&good, AN) + 1);
        assert_eq!(match_reply(&missing, question), ReplyMatch::Broken);
        // The last record cut short.
        let cut = good[..good.len() - 1].to_vec();
        assert_eq!(match_reply(&cut, question), ReplyMatch::Broken);
        // An OPT option whose length runs past its RDATA.
        let bad_option = with_options(good.clone(), &[(3, b"nsid")]);
        let mut bad_option = bad_option;
        let at = bad_option.len() - 4 - 2;
        bad_option[at..at + 2].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(match_reply(&bad_option, question), ReplyMatch::Broken);
        assert!(
            client_reply(bad_option, &parse_query(&q).unwrap(), KEEPALIVE_AND_PADDING).is_err()
        );
    }

    #[test]
    fn matches_replies_by_question() {
        let q = query(7, "Example.com", 1, false);
        let info = parse_query(&q).unwrap();
        let mut r = answer(&q, false);
        // Case differs: still the same question.
        r[13] = b'e';
        assert_eq!(
            match_reply(&r, &q[info.question.clone()]),
            ReplyMatch::Answer
        );
        let other = answer(&query(7, "example.net", 1, false), false);
        assert_eq!(
            match_reply(&other, &q[info.question.clone()]),
            ReplyMatch::Mismatch
        );
        let other_type = answer(&query(7, "Example.com", 28, false), false);
        assert_eq!(
            match_reply(&other_type, &q[info.question.clone()]),
            ReplyMatch::Mismatch
        );
        let mut formerr = vec![0, 7, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            match_reply(&formerr, &q[info.question.clone()]),
            ReplyMatch::ErrorWithoutQuestion(1)
        );
        for (rcode, accepted) in [
            (0, false),
            (1, true),
            (2, true),
            (3, false), // NXDOMAIN: a spoofer's favourite
            (4, true),
            (5, true),
            (6, false),
            (9, false),
        ] {
            formerr[3] = 0x80 | rcode;
            let expected = if accepted {
                ReplyMatch::ErrorWithoutQuestion(rcode)
            } else {
                ReplyMatch::Mismatch
            };
            assert_eq!(
                match_reply(&formerr, &q[info.question.clone()]),
                expected,
                "question-less reply with RCODE {rcode}"
            );
        }
    }

    #[test]
    fn client_reply_mirrors_opt_presence() {
        // No OPT in the query: the upstream's OPT is stripped.
        let q = query(7, "example.com", 1, false);
        let info = parse_query(&q).unwrap();
        let mut r = answer(&q, true);
        set_id(&mut r, 999);
        let out = client_reply(r.clone(), &info, LegOptions::NONE).unwrap();
        assert_eq!(id(&out), 7);
        assert_eq!(count(&out, AR), 0);
        assert_eq!(out.len(), r.len() - OPT_RR_LEN);

        // OPT in the query, none in the reply: one is added.
        let q = query(7, "example.com", 1, true);
        let info = parse_query(&q).unwrap();
        let out = client_reply(answer(&q, false), &info, LegOptions::NONE).unwrap();
        assert_eq!(count(&out, AR), 1);
        let l = layout(&out, 12..question_end(&out).unwrap()).unwrap();
        assert_eq!(l.opts, 1);

        // OPT in both: passed through byte for byte (but the ID).
        let r = answer(&q, true);
        assert_eq!(client_reply(r.clone(), &info, LegOptions::NONE).unwrap(), r);
    }

    /// A reply with several OPT records (which a query may not have) loses
    /// them all: those that end the message in place, the rest through the
    /// slow path; the client gets one OPT exactly when it sent one.
    #[test]
    fn client_reply_removes_every_upstream_opt() {
        for client_opt in [false, true] {
            let q = query(7, "example.com", 1, client_opt);
            let info = parse_query(&q).unwrap();
            // Two OPT records ending the message.
            let mut r = answer(&q, true);
            push_opt(&mut r, 512);
            set_count(&mut r, AR, 2);
            let out = client_reply(r, &info, LegOptions::NONE).unwrap();
            let l = layout(&out, 12..question_end(&out).unwrap()).unwrap();
            assert_eq!(l.opts, usize::from(client_opt));
            assert_eq!(count(&out, AR), u16::from(client_opt));
            assert_eq!(l.end, out.len());
            assert_eq!(count(&out, AN), 1);
            if client_opt {
                let opt = l.opt.unwrap();
                assert_eq!(
                    &out[opt.start + 3..opt.start + 5],
                    &OWN_PAYLOAD.to_be_bytes()
                );
            }

            // OPT, A, OPT: the last goes in place, the first by re-encoding.
            let mut r = opt_then_a(&q, &[]);
            push_opt(&mut r, 512);
            set_count(&mut r, AR, 3);
            let out = client_reply(r, &info, LegOptions::NONE).unwrap();
            let msg = hickory_proto::op::Message::from_vec(&out).unwrap();
            assert_eq!(msg.edns.is_some(), client_opt);
            assert_eq!(msg.additionals.len(), 1, "the A record stays");
            assert_eq!(msg.answers.len(), 1);
            assert_eq!(id(&out), 7);
        }
    }

    #[test]
    fn parses_what_the_opt_asks_for() {
        let q = query(7, "example.com", 1, true);
        let info = parse_query(&q).unwrap();
        assert_eq!(info.edns, edns::Request::default());
        assert_eq!(info.edns_error, None);

        let q = with_options(
            query(7, "example.com", 1, true),
            &[(11, &[]), (12, &[0; 8])],
        );
        let info = parse_query(&q).unwrap();
        assert!(info.edns.keepalive && info.edns.padding);
        assert_eq!(info.edns_error, None);

        let q = with_options(query(7, "example.com", 1, true), &[(11, &[0, 1])]);
        let info = parse_query(&q).unwrap();
        assert_eq!(info.edns_error, Some(EdnsError::KeepaliveWithValue));

        let mut q = query(7, "example.com", 1, true);
        let opt = parse_query(&q).unwrap().opt.unwrap();
        q[opt.start + OPT_VERSION] = 1;
        let info = parse_query(&q).unwrap();
        assert_eq!(info.edns_error, Some(EdnsError::BadVersion(1)));
        assert_eq!(info.question, 12..opt.start, "the question is still known");
    }

    #[test]
    fn upstream_query_strips_hop_by_hop_options_only() {
        let cookie: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
        let ecs: &[u8] = &[0, 1, 24, 0, 192, 0, 2];
        let mut q = with_options(
            query(7, "example.com", 1, true),
            &[(11, &[]), (10, cookie), (12, &[0; 60]), (8, ecs)],
        );
        // DO bit and CD bit set by the client.
        let opt = parse_query(&q).unwrap().opt.unwrap();
        q[opt.start + 7] = 0x80;
        q[3] |= 0x10;
        let info = parse_query(&q).unwrap();
        let up = upstream_query(&q, &info, 0x4242, None);
        assert_eq!(up.len(), q.len() - 4 - 4 - 60);
        assert_eq!(id(&up), 0x4242);
        let up_info = parse_query(&up).unwrap();
        assert!(!up_info.edns.has_hop_by_hop());
        assert_eq!(opt_options(&up), [(10, cookie.to_vec()), (8, ecs.to_vec())]);
        let up_opt = up_info.opt.unwrap();
        assert_eq!(up[up_opt.start + 7], 0x80, "DO passes through");
        assert_eq!(up[3] & 0x10, 0x10, "CD passes through");
        assert_eq!(
            &up[up_opt.start + 3..up_opt.start + 5],
            &1232u16.to_be_bytes()
        );
        assert_eq!(&up[2..up_opt.start], &q[2..opt.start], "all else unchanged");

        // Without hop-by-hop options, the query goes as it came (but ID and
        // payload size).
        let q = with_options(query(7, "example.com", 1, true), &[(10, cookie)]);
        let info = parse_query(&q).unwrap();
        let up = upstream_query(&q, &info, 7, None);
        let mut expected = q.clone();
        let class_at = info.opt.unwrap().start + 3;
        expected[class_at..class_at + 2].copy_from_slice(&1232u16.to_be_bytes());
        assert_eq!(up, expected);
    }

    #[test]
    fn stream_queries_ask_for_keepalive() {
        let cookie: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
        // A client OPT with its own keepalive and padding: both replaced by
        // one empty keepalive; the cookie stays.
        let q = with_options(
            query(7, "example.com", 1, true),
            &[(11, &[]), (10, cookie), (12, &[0; 20])],
        );
        let info = parse_query(&q).unwrap();
        let framed = stream_query(&q, &info, None);
        let up = &framed[2..];
        assert_eq!(
            usize::from(u16::from_be_bytes([framed[0], framed[1]])),
            up.len()
        );
        assert_eq!(id(up), 0);
        assert_eq!(opt_options(up), [(10, cookie.to_vec()), (11, vec![])]);
        assert!(parse_query(up).unwrap().edns.keepalive);
        // The same bytes as the UDP form, but the keepalive request (and
        // the RDLENGTH counting it).
        let plain = upstream_query(&q, &info, 0, None);
        let rdlen_at = info.opt.unwrap().start + OPT_RDLEN;
        assert_eq!(up.len(), plain.len() + 4);
        assert_eq!(&up[..rdlen_at], &plain[..rdlen_at]);
        assert_eq!(&up[rdlen_at + 2..plain.len()], &plain[rdlen_at + 2..]);

        // A client OPT without options gains the request.
        let q = query(8, "example.com", 1, true);
        let info = parse_query(&q).unwrap();
        let framed = stream_query(&q, &info, None);
        assert_eq!(opt_options(&framed[2..]), [(11, vec![])]);

        // No client OPT: one is added, carrying the request.
        let q = query(9, "example.com", 28, false);
        let info = parse_query(&q).unwrap();
        let framed = stream_query(&q, &info, None);
        let up = &framed[2..];
        assert_eq!(count(up, AR), 1);
        assert_eq!(opt_options(up), [(11, vec![])]);
        let opt = parse_query(up).unwrap().opt.unwrap();
        assert_eq!(&up[opt.start + 3..opt.start + 5], &1232u16.to_be_bytes());
    }

    /// A query of `len` bytes: the question for `example.com`, then one
    /// authority record (type NULL) whose data fills the rest; `opt` puts
    /// an OPT record (with `opt_len` bytes of option data) after it.
    fn big_query(len: usize, opt: Option<usize>) -> Vec<u8> {
        let mut q = query(5, "example.com", 1, false);
        set_count(&mut q, NS, 1);
        let tail = opt.map_or(0, |data| OPT_RR_LEN + data);
        let rdlen = len - q.len() - 11 - tail;
        q.extend_from_slice(&[0, 0, 10, 0, 1, 0, 0, 0, 0]);
        q.extend_from_slice(&(rdlen as u16).to_be_bytes());
        q.resize(q.len() + rdlen, 0xaa);
        if let Some(data) = opt {
            set_count(&mut q, AR, 1);
            push_opt(&mut q, 4096);
            let rdlen_at = q.len() - 2;
            q[rdlen_at..].copy_from_slice(&(data as u16).to_be_bytes());
            // One unknown option (65001) holding the rest.
            q.extend_from_slice(&65001u16.to_be_bytes());
            q.extend_from_slice(&((data - 4) as u16).to_be_bytes());
            q.resize(q.len() + data - 4, 0);
        }
        assert_eq!(q.len(), len);
        q
    }

    /// Near the 16-bit limit nothing is added that would not fit: the
    /// length prefix always announces exactly the bytes that follow, so a
    /// pooled upstream connection is never desynchronised.
    #[test]
    fn stream_queries_never_outgrow_their_prefix() {
        for len in [65_535, 65_530, 65_524, 65_520, 65_500, 60_000] {
            for opt in [None, Some(4)] {
                let q = big_query(len, opt);
                let info = parse_query(&q).unwrap();
                let framed = stream_query(&q, &info, None);
                let body = &framed[2..];
                assert_eq!(
                    usize::from(u16::from_be_bytes([framed[0], framed[1]])),
                    body.len(),
                    "query of {len} bytes, OPT {opt:?}"
                );
                assert!(body.len() <= 65_535);
                let up = parse_query(body).unwrap();
                assert_eq!(&body[up.question.clone()], &q[info.question.clone()]);
                let udp = upstream_query(&q, &info, 3, None);
                assert!(udp.len() <= 65_535, "UDP form of {len} bytes, OPT {opt:?}");
                assert_eq!(id(&udp), 3);
            }
        }
        // Room left: the OPT and the keepalive request are added as usual.
        let q = big_query(60_000, None);
        let framed = stream_query(&q, &parse_query(&q).unwrap(), None);
        assert_eq!(opt_options(&framed[2..]), [(11, vec![])]);
    }

    #[test]
    fn reads_the_keepalive_of_a_reply() {
        let q = query(7, "example.com", 1, true);
        assert_eq!(reply_keepalive(&answer(&q, true)), None, "no option");
        assert_eq!(reply_keepalive(&answer(&q, false)), None, "no OPT");
        let r = with_options(answer(&q, true), &[(12, &[0; 9]), (11, &[0, 10])]);
        assert_eq!(reply_keepalive(&r), Some(10));
        let r = with_options(answer(&q, true), &[(11, &[0, 0])]);
        assert_eq!(reply_keepalive(&r), Some(0));
        // An empty option 11 (a client's form) is no timeout.
        let r = with_options(answer(&q, true), &[(11, &[])]);
        assert_eq!(reply_keepalive(&r), None);
        // Found whatever the OPT's place among the additional records.
        let r = opt_then_a(&q, &[(11, &[1, 0])]);
        assert_eq!(reply_keepalive(&r), Some(256));
    }

    #[test]
    fn client_reply_adds_keepalive_and_padding() {
        let q = with_options(query(7, "example.com", 1, true), &[(11, &[]), (12, &[])]);
        let info = parse_query(&q).unwrap();
        for upstream_opt in [false, true] {
            let out = client_reply(answer(&q, upstream_opt), &info, KEEPALIVE_AND_PADDING).unwrap();
            assert_eq!(out.len() % 468, 0);
            let options = opt_options(&out);
            assert_eq!(options[0], (11, vec![0x01, 0x2c]));
            assert_eq!(options[1].0, 12);
            assert!(options[1].1.iter().all(|&b| b == 0));
            assert_eq!(options.len(), 2);
            assert_eq!(count(&out, AN), 1);
        }
        // Keepalive only.
        let leg = LegOptions {
            keepalive: Some(0),
            padding: false,
            strip_subnet: false,
        };
        let out = client_reply(answer(&q, true), &info, leg).unwrap();
        assert_eq!(opt_options(&out), [(11, vec![0, 0])]);
        assert_eq!(out.len(), answer(&q, true).len() + 6);
    }

    #[test]
    fn client_reply_replaces_upstream_padding() {
        let q = query(7, "example.com", 1, true);
        let info = parse_query(&q).unwrap();
        let nsid: &[u8] = b"upstream";
        let r = with_options(
            answer(&q, true),
            &[(12, &[0; 77]), (3, nsid), (11, &[0, 9])],
        );
        // The client did not ask: upstream padding and keepalive go, the
        // rest stays.
        let out = client_reply(r.clone(), &info, LegOptions::NONE).unwrap();
        assert_eq!(opt_options(&out), [(3, nsid.to_vec())]);
        assert_eq!(
            &out[..out.len() - 14],
            &r[..out.len() - 14],
            "all but the OPT's RDATA unchanged"
        );
        // The client asked: padded to the block by dotgate.
        let leg = LegOptions {
            keepalive: None,
            padding: true,
            strip_subnet: false,
        };
        let out = client_reply(r, &info, leg).unwrap();
        assert_eq!(out.len() % 468, 0);
        let options = opt_options(&out);
        assert_eq!(options[0], (3, nsid.to_vec()));
        assert_eq!(options[1].0, 12);
        assert_eq!(options.len(), 2);
    }

    #[test]
    fn client_reply_keeps_the_extended_rcode_and_flags() {
        let q = query(7, "example.com", 1, true);
        let info = parse_query(&q).unwrap();
        let mut r = with_options(answer(&q, true), &[(10, &[1; 24])]);
        let opt = layout(&r, 12..question_end(&r).unwrap())
            .unwrap()
            .opt
            .unwrap();
        r[opt.start + OPT_EXT_RCODE] = 1; // BADCOOKIE = 23 = 1 << 4 | 7
        r[3] = (r[3] & 0xf0) | 7;
        r[opt.start + 7] = 0x80; // DO
        let out = client_reply(r.clone(), &info, KEEPALIVE_AND_PADDING).unwrap();
        assert_eq!(
            &out[..opt.start + OPT_RR_LEN - 2],
            &r[..opt.start + OPT_RR_LEN - 2]
        );
    }

    /// The slow path: an OPT that is not the last record.
    #[test]
    fn client_reply_reencodes_an_opt_in_the_middle() {
        use hickory_proto::op::{Message, ResponseCode};
        use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
        let q = query(7, "example.com", 1, true);
        let info = parse_query(&q).unwrap();

        // Nothing to change: passed through byte for byte.
        let r = opt_then_a(&q, &[(3, b"id")]);
        assert_eq!(client_reply(r.clone(), &info, LegOptions::NONE).unwrap(), r);

        // Upstream padding to remove, keepalive and padding to add.
        let r = opt_then_a(&q, &[(12, &[0; 9]), (3, b"id")]);
        let out = client_reply(r, &info, KEEPALIVE_AND_PADDING).unwrap();
        assert_eq!(out.len() % 468, 0);
        let msg = Message::from_vec(&out).unwrap();
        assert_eq!(msg.metadata.id, 7);
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert_eq!(msg.answers.len(), 1);
        assert_eq!(msg.additionals.len(), 1, "the A record after the OPT");
        let edns = msg.edns.unwrap();
        assert_eq!(
            edns.option(EdnsCode::Keepalive),
            Some(&EdnsOption::Unknown(11, vec![1, 0x2c]))
        );
        assert!(edns.option(EdnsCode::Padding).is_some());
        assert!(edns.option(EdnsCode::NSID).is_some(), "other options kept");
        assert_eq!(edns.options().as_ref().len(), 3);

        // Upstream padding only: removed.
        let r = opt_then_a(&q, &[(12, &[0; 9])]);
        let out = client_reply(r, &info, LegOptions::NONE).unwrap();
        let edns = Message::from_vec(&out).unwrap().edns.unwrap();
        assert!(edns.options().as_ref().is_empty());
    }

    #[test]
    fn error_replies_carry_badvers_and_leg_options() {
        let mut q = query(0x1234, "example.com", 28, true);
        let opt = parse_query(&q).unwrap().opt.unwrap();
        q[opt.start + OPT_VERSION] = 1;
        let info = parse_query(&q).unwrap();
        let refused = info.edns_error.unwrap().rcode();
        assert_eq!(refused, Rcode::BadVers as u16);
        let r = error_reply(&q, Some(&info), refused, LegOptions::NONE);
        assert_eq!(id(&r), 0x1234);
        assert_eq!(rcode(&r), 0, "header RCODE 0");
        assert_eq!(count(&r, QD), 1);
        let ropt = r.len() - OPT_RR_LEN..r.len();
        assert_eq!(r[ropt.start + OPT_EXT_RCODE], 1, "extended RCODE 1");
        assert_eq!(r[ropt.start + OPT_VERSION], 0, "version 0");
        let msg = hickory_proto::op::Message::from_vec(&r).unwrap();
        // hickory names 16 BADSIG (its TSIG meaning); the number is what counts.
        assert_eq!(u16::from(msg.metadata.response_code), 16);

        let q = with_options(query(9, "example.com", 1, true), &[(11, &[]), (12, &[])]);
        let info = parse_query(&q).unwrap();
        let r = error_reply(
            &q,
            Some(&info),
            Rcode::ServFail as u16,
            KEEPALIVE_AND_PADDING,
        );
        assert_eq!(r.len() % 468, 0);
        assert_eq!(rcode(&r), 2);
        assert_eq!(opt_options(&r)[0], (11, vec![1, 0x2c]));
    }

    /// Hostile bytes must never panic the parser: mutate valid messages at
    /// random and feed them to every entry point, with and without the TLS
    /// leg's options.
    #[test]
    fn mutated_messages_never_panic() {
        let seeds = [
            query(1, "example.com", 1, true),
            answer(&query(2, "a.b.c", 28, false), true),
            answer(&query(3, "x", 16, true), false),
            with_options(query(4, "pad.test", 1, true), &[(11, &[]), (12, &[0; 20])]),
            with_options(
                answer(&query(5, "up.test", 1, false), true),
                &[(10, &[1; 8]), (12, &[0; 30])],
            ),
            opt_then_a(&query(6, "mid.test", 1, true), &[(12, &[0; 9])]),
        ];
        let legs = [
            LegOptions::NONE,
            LegOptions {
                keepalive: Some(300),
                padding: true,
                strip_subnet: false,
            },
        ];
        for _ in 0..20_000 {
            let mut m = seeds[rand::random_range(0..seeds.len())].clone();
            for _ in 0..rand::random_range(1..6) {
                let at = rand::random_range(0..m.len());
                match rand::random_range(0..3) {
                    0 => m[at] = rand::random(),
                    1 => m.truncate(at.max(HEADER_LEN)),
                    _ => m.insert(at.max(HEADER_LEN), rand::random()),
                }
            }
            let leg = legs[rand::random_range(0..legs.len())];
            if let Ok(info) = parse_query(&m) {
                let up = upstream_query(&m, &info, 5, None);
                let framed = stream_query(&m, &info, None);
                assert_eq!(
                    usize::from(u16::from_be_bytes([framed[0], framed[1]])),
                    framed.len() - 2
                );
                let _ = reply_keepalive(&framed[2..]);
                let _ = client_reply(up.clone(), &info, leg);
                let _ = match_reply(&up, &m[info.question.clone()]);
                let _ = error_reply(&m, Some(&info), 2, leg);
                let _ = error_reply(&m, Some(&info), Rcode::BadVers as u16, LegOptions::NONE);
            }
            let _ = error_reply(&m, None, 1, leg);
            let _ = match_reply(&m, b"\x01a\x00\x00\x01\x00\x01");
            let _ = reply_keepalive(&m);
            if let Some(end) = question_end(&m) {
                for opt in [None, Some(0..0)] {
                    let info = QueryInfo {
                        id: 0,
                        question: HEADER_LEN..end,
                        opt,
                        edns: edns::Request::default(),
                        edns_error: None,
                    };
                    if let Ok(out) = client_reply(m.clone(), &info, leg) {
                        if leg.padding && info.opt.is_some() && out.len() < 65_000 {
                            assert_eq!(out.len() % edns::RESPONSE_BLOCK, 0);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_reply_that_would_outgrow_the_length_prefix_is_refused() {
        let q = query(7, "example.com", 16, true);
        let info = parse_query(&q).unwrap();
        let mut r = q[..question_end(&q).unwrap()].to_vec();
        r[2] |= 0x80;
        set_count(&mut r, AN, 1);
        set_count(&mut r, AR, 0);
        let rdlen = u16::MAX as usize - r.len() - 12;
        r.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
        r.extend_from_slice(&(rdlen as u16).to_be_bytes());
        r.resize(r.len() + rdlen, b'x');
        assert_eq!(r.len(), u16::MAX as usize);
        // Adding the OPT record the client is owed would not fit.
        assert_eq!(
            client_reply(r, &info, LegOptions::NONE),
            Err(ReplyError::TooLarge)
        );
    }

    #[test]
    fn error_reply_keeps_question_and_opt() {
        let q = query(0x1234, "example.com", 28, true);
        let info = parse_query(&q).unwrap();
        let r = error_reply(&q, Some(&info), Rcode::ServFail as u16, LegOptions::NONE);
        assert_eq!(id(&r), 0x1234);
        assert!(is_response(&r));
        assert_eq!(rcode(&r), 2);
        assert_eq!(count(&r, QD), 1);
        assert_eq!(count(&r, AR), 1);
        assert_eq!(&r[12..12 + info.question.len()], &q[info.question.clone()]);
        assert_eq!(r[2] & 0x01, 0x01, "RD copied");

        let r = error_reply(&q, None, Rcode::FormErr as u16, LegOptions::NONE);
        assert_eq!(r.len(), HEADER_LEN);
        assert_eq!(rcode(&r), 1);
    }
}
