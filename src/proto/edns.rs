//! EDNS options of the TLS leg: what a client's OPT record asks of dotgate,
//! what of it goes upstream, and the options dotgate writes into replies.
//!
//! Options 11 (edns-tcp-keepalive, RFC 7828) and 12 (padding, RFC 7830)
//! describe the connection they travel on, so they are hop-by-hop: dotgate
//! answers them itself on the TLS leg and never forwards them (R22); any
//! padding or keepalive the upstream puts in its reply is about the upstream
//! leg and is removed before dotgate adds its own (R18).
//!
//! Everything here works on the RDATA of a single OPT record as bytes, is
//! pure, and allocates nothing: finding the OPT inside a message is the job
//! of [`crate::proto::dns`].

use std::ops::Range;
use std::time::Duration;

/// edns-tcp-keepalive (RFC 7828).
pub const KEEPALIVE: u16 = 11;
/// Padding (RFC 7830).
pub const PADDING: u16 = 12;
/// EDNS Client Subnet (RFC 7871).
pub const CLIENT_SUBNET: u16 = 8;
/// Block size replies are padded to (RFC 8467 §4.1, the recommended
/// block-length strategy for responses).
pub const RESPONSE_BLOCK: usize = 468;
/// Option code and option length.
const OPTION_HEADER: usize = 4;
/// A keepalive option carrying a timeout: header and a 16-bit value.
const KEEPALIVE_LEN: usize = OPTION_HEADER + 2;
/// The largest message the 2-byte length prefix of the TLS leg can carry.
const MAX_MESSAGE: usize = u16::MAX as usize;

/// RCODE BADVERS (RFC 6891 §6.1.3): 16, of which the OPT record carries the
/// upper eight bits.
pub const BADVERS: u16 = 16;
/// RCODE FORMERR.
const FORMERR: u16 = 1;

/// Whether an option belongs to the connection it arrived on.
fn is_hop_by_hop(code: u16) -> bool {
    code == KEEPALIVE || code == PADDING
}

/// OPT RDATA that is not a sequence of whole options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedOptions;

/// One option: its code, and where it lies (header included) within the
/// RDATA it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawOption {
    code: u16,
    range: Range<usize>,
}

impl RawOption {
    fn data_len(&self) -> usize {
        self.range.len() - OPTION_HEADER
    }
}

/// Walks the options of OPT RDATA; yields one error and stops at an option
/// that runs past the end.
struct Options<'a> {
    rdata: &'a [u8],
    pos: usize,
}

fn options(rdata: &[u8]) -> Options<'_> {
    Options { rdata, pos: 0 }
}

impl Iterator for Options<'_> {
    type Item = Result<RawOption, MalformedOptions>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.rdata.len() {
            return None;
        }
        let start = self.pos;
        let parsed = self.rdata.get(start..start + OPTION_HEADER).and_then(|h| {
            let code = u16::from_be_bytes([h[0], h[1]]);
            let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let end = start + OPTION_HEADER + len;
            (end <= self.rdata.len()).then_some(RawOption {
                code,
                range: start..end,
            })
        });
        match parsed {
            Some(option) => {
                self.pos = option.range.end;
                Some(Ok(option))
            }
            None => {
                self.pos = self.rdata.len();
                Some(Err(MalformedOptions))
            }
        }
    }
}

/// True when OPT RDATA is a sequence of whole options.
pub fn options_well_formed(rdata: &[u8]) -> bool {
    options(rdata).all(|option| option.is_ok())
}

/// What a client's OPT record asks of the TLS leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    /// Option 11 without data: the reply advertises the idle timeout (R14).
    pub keepalive: bool,
    /// Option 12: the reply is padded to a multiple of 468 bytes (R18).
    pub padding: bool,
    /// Option 8: the client sent its own client subnet (RFC 7871).
    pub client_subnet: bool,
}

impl Request {
    /// True when the query carries options that must not go upstream.
    pub fn has_hop_by_hop(&self) -> bool {
        self.keepalive || self.padding
    }
}

/// Why a client's OPT record is refused. The query is then answered by
/// dotgate and not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EdnsError {
    /// Answered with BADVERS: the meaning of the rest of the OPT record is
    /// unknown at this version (RFC 6891 §6.1.3).
    #[error("EDNS version {0} is not supported")]
    BadVersion(u8),
    /// A client must send option 11 empty (RFC 7828).
    #[error("edns-tcp-keepalive in a query carries a value")]
    KeepaliveWithValue,
    #[error("the OPT record's options are malformed")]
    MalformedOptions,
}

impl EdnsError {
    /// The (extended) RCODE of the reply.
    pub fn rcode(self) -> u16 {
        match self {
            EdnsError::BadVersion(_) => BADVERS,
            EdnsError::KeepaliveWithValue | EdnsError::MalformedOptions => FORMERR,
        }
    }
}

/// Reads what a query's OPT record asks for, given its EDNS version and its
/// RDATA. A version above 0 is refused before the options are read, as
/// their meaning may differ at that version.
pub fn read_request(version: u8, rdata: &[u8]) -> Result<Request, EdnsError> {
    if version > 0 {
        return Err(EdnsError::BadVersion(version));
    }
    let mut request = Request::default();
    for option in options(rdata) {
        let option = option.map_err(|_| EdnsError::MalformedOptions)?;
        match option.code {
            KEEPALIVE if option.data_len() != 0 => return Err(EdnsError::KeepaliveWithValue),
            KEEPALIVE => request.keepalive = true,
            PADDING => request.padding = true,
            CLIENT_SUBNET => request.client_subnet = true,
            _ => {}
        }
    }
    Ok(request)
}

/// Appends to `out` the options of `rdata` except the hop-by-hop ones (and
/// the client subnet when `drop_subnet`: dotgate then sends its own), in
/// their order; returns how many bytes were appended. Stops at malformed
/// options (which [`read_request`] has refused before anything is
/// forwarded).
pub fn push_forwarded_options(out: &mut Vec<u8>, rdata: &[u8], drop_subnet: bool) -> usize {
    let before = out.len();
    for option in options(rdata).map_while(Result::ok) {
        let dropped = is_hop_by_hop(option.code) || (drop_subnet && option.code == CLIENT_SUBNET);
        if !dropped {
            out.extend_from_slice(&rdata[option.range]);
        }
    }
    out.len() - before
}

/// The timeout of the first edns-tcp-keepalive option in OPT RDATA that
/// carries one (a server's form, RFC 7828 §3.1: two bytes, 100 ms units).
/// An empty or odd-sized option 11 is not a timeout and is skipped; options
/// after malformed bytes are not read.
pub fn keepalive_timeout(rdata: &[u8]) -> Option<u16> {
    options(rdata)
        .map_while(Result::ok)
        .find(|o| o.code == KEEPALIVE && o.data_len() == 2)
        .and_then(|o| rdata.get(o.range.start + OPTION_HEADER..o.range.end))
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
}

/// True when `rdata` holds options 11 or 12 (which a reply must not pass
/// on), a client subnet that `leg` strips, or is malformed.
pub fn needs_rewrite(rdata: &[u8], leg: LegOptions) -> bool {
    options(rdata).any(|o| o.map_or(true, |o| leg.removes(o.code)))
}

/// The largest client subnet option: header, family, two prefix lengths
/// and a whole IPv6 address.
pub const CLIENT_SUBNET_MAX: usize = OPTION_HEADER + 4 + 16;

/// Appends an EDNS Client Subnet option (RFC 7871 §6) for `ip`, cut to
/// `v4_prefix` or `v6_prefix` bits by its family: the address is sent in as
/// few bytes as the prefix needs, with the bits past the prefix zeroed, and
/// a scope of 0. An IPv4-mapped IPv6 address counts as IPv4.
pub fn push_client_subnet(out: &mut Vec<u8>, ip: std::net::IpAddr, v4_prefix: u8, v6_prefix: u8) {
    let (family, prefix, octets): (u16, u8, Vec<u8>) = match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => (1, v4_prefix.min(32), v4.octets().to_vec()),
        std::net::IpAddr::V6(v6) => (2, v6_prefix.min(128), v6.octets().to_vec()),
    };
    let bytes = usize::from(prefix).div_ceil(8);
    out.extend_from_slice(&CLIENT_SUBNET.to_be_bytes());
    // At most 4 + 16.
    out.extend_from_slice(&((4 + bytes) as u16).to_be_bytes());
    out.extend_from_slice(&family.to_be_bytes());
    out.push(prefix);
    out.push(0);
    let start = out.len();
    out.extend_from_slice(&octets[..bytes]);
    let spare = bytes * 8 - usize::from(prefix);
    if spare > 0 {
        if let Some(last) = out[start..].last_mut() {
            *last &= 0xffu8 << spare;
        }
    }
}

/// The options dotgate writes into the OPT record of one reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegOptions {
    /// edns-tcp-keepalive timeout to advertise, in units of 100 ms.
    pub keepalive: Option<u16>,
    /// Pad the reply to a multiple of [`RESPONSE_BLOCK`] bytes.
    pub padding: bool,
    /// Remove the upstream's client subnet option: dotgate added one the
    /// client did not send (RFC 7871 §7.2.2).
    pub strip_subnet: bool,
}

impl LegOptions {
    /// No option of dotgate's own: for replies to queries without EDNS, or
    /// refused at the EDNS level.
    pub const NONE: LegOptions = LegOptions {
        keepalive: None,
        padding: false,
        strip_subnet: false,
    };

    /// The options owed to `request` on a connection with this idle timeout.
    /// A connection that is being retired advertises a timeout of 0, telling
    /// the client not to send more on it (RFC 7828, R15).
    pub fn for_request(request: Request, idle: Duration, retiring: bool) -> LegOptions {
        LegOptions {
            keepalive: request
                .keepalive
                .then(|| if retiring { 0 } else { keepalive_units(idle) }),
            padding: request.padding,
            strip_subnet: false,
        }
    }

    /// The options owed to `request` over HTTP (DoH): padding as on DoT,
    /// but never a keepalive, which describes a DNS-over-TCP connection and
    /// means nothing to an HTTP client (RFC 8484 §5.3 leaves connection
    /// management to HTTP).
    pub fn for_http(request: Request) -> LegOptions {
        LegOptions {
            keepalive: None,
            padding: request.padding,
            strip_subnet: false,
        }
    }

    /// True when dotgate adds no option of its own (it may still remove
    /// some, see [`LegOptions::removes`]).
    pub fn is_empty(&self) -> bool {
        self.keepalive.is_none() && !self.padding
    }

    /// Whether an upstream reply's option `code` is removed on this leg:
    /// the hop-by-hop ones always, the client subnet when stripped.
    pub fn removes(&self, code: u16) -> bool {
        is_hop_by_hop(code) || (self.strip_subnet && code == CLIENT_SUBNET)
    }
}

/// A duration in the 100 ms units of edns-tcp-keepalive, saturating at the
/// largest value the option can carry (about 109 minutes).
pub fn keepalive_units(idle: Duration) -> u16 {
    u16::try_from(idle.as_millis() / 100).unwrap_or(u16::MAX)
}

/// Length of the padding option's data that brings a message of `len` bytes
/// (without a padding option) to a multiple of [`RESPONSE_BLOCK`] once the
/// option is added; `None` when the padded message would not fit the 2-byte
/// length prefix, in which case the reply goes unpadded.
pub fn padding_len(len: usize) -> Option<usize> {
    let with_header = len + OPTION_HEADER;
    let pad = (RESPONSE_BLOCK - with_header % RESPONSE_BLOCK) % RESPONSE_BLOCK;
    (with_header + pad <= MAX_MESSAGE).then_some(pad)
}

/// Why [`rewrite_tail`] could not rewrite an OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteError {
    /// The options do not parse.
    Malformed,
    /// The message would outgrow the 2-byte length prefix.
    TooLarge,
}

/// Rewrites the options of the OPT record that ends `msg`, whose RDLENGTH
/// field is at `rdlen_at` and whose RDATA runs to the end of `msg`: removes
/// options 11 and 12 (and 8 when `leg` strips it), keeps every other option in place and order, then
/// appends the keepalive and the padding of `leg`.
///
/// Because the OPT record is the last one, only its RDATA and RDLENGTH change
/// and nothing after it moves. When there is nothing to remove or add, `msg`
/// is left untouched. On an error, `msg` is untouched too.
pub fn rewrite_tail(
    msg: &mut Vec<u8>,
    rdlen_at: usize,
    leg: LegOptions,
) -> Result<(), RewriteError> {
    rewrite_tail_before(msg, rdlen_at, leg, 0)
}

/// As [`rewrite_tail`], for a message that `trailer` more bytes will follow
/// (a TSIG record put back after the OPT): the padding brings the whole
/// to the block.
pub fn rewrite_tail_before(
    msg: &mut Vec<u8>,
    rdlen_at: usize,
    leg: LegOptions,
    trailer: usize,
) -> Result<(), RewriteError> {
    let rdata_start = rdlen_at + 2;
    let Some(rdata) = msg.get(rdata_start..) else {
        return Err(RewriteError::Malformed);
    };
    // First pass: validate, and measure what is kept, before changing a byte.
    let mut kept_len = 0;
    let mut hop_by_hop = false;
    for option in options(rdata) {
        let option = option.map_err(|_| RewriteError::Malformed)?;
        if leg.removes(option.code) {
            hop_by_hop = true;
        } else {
            kept_len += option.range.len();
        }
    }
    if !hop_by_hop && leg.is_empty() {
        return Ok(());
    }
    let kept = rdata_start + kept_len;
    let with_keepalive = kept + leg.keepalive.map_or(0, |_| KEEPALIVE_LEN);
    let pad = if leg.padding {
        padding_len(with_keepalive + trailer)
    } else {
        None
    };
    let total = with_keepalive + pad.map_or(0, |pad| OPTION_HEADER + pad);
    if total + trailer > MAX_MESSAGE {
        return Err(RewriteError::TooLarge);
    }
    // Second pass: compact the kept options toward the start of the RDATA;
    // the write position never passes the read position.
    let mut write = rdata_start;
    let mut read = rdata_start;
    while let Some(Ok(option)) = options(&msg[read..]).next() {
        let len = option.range.len();
        if !leg.removes(option.code) {
            msg.copy_within(read..read + len, write);
            write += len;
        }
        read += len;
    }
    debug_assert_eq!(write, kept);
    msg.truncate(kept);
    // The room for the keepalive and the padding at once: one reallocation
    // at most, rather than one per option as the vector doubles.
    msg.reserve_exact(total - kept);
    if let Some(timeout) = leg.keepalive {
        msg.extend_from_slice(&KEEPALIVE.to_be_bytes());
        msg.extend_from_slice(&2u16.to_be_bytes());
        msg.extend_from_slice(&timeout.to_be_bytes());
    }
    if let Some(pad) = pad {
        msg.extend_from_slice(&PADDING.to_be_bytes());
        // pad < RESPONSE_BLOCK, so it fits.
        msg.extend_from_slice(&(pad as u16).to_be_bytes());
        msg.resize(msg.len() + pad, 0);
    }
    // total <= MAX_MESSAGE, so the RDATA length fits 16 bits.
    let rdlen = (total - rdata_start) as u16;
    msg[rdlen_at..rdata_start].copy_from_slice(&rdlen.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(code: u16, data: &[u8]) -> Vec<u8> {
        let mut o = code.to_be_bytes().to_vec();
        o.extend_from_slice(&(data.len() as u16).to_be_bytes());
        o.extend_from_slice(data);
        o
    }

    fn rdata(options: &[(u16, &[u8])]) -> Vec<u8> {
        options.iter().flat_map(|(c, d)| option(*c, d)).collect()
    }

    /// A fake message: `prefix` bytes of anything, then an RDLENGTH field and
    /// the RDATA. Returns the message and where RDLENGTH is.
    fn tail(prefix: usize, rdata: &[u8]) -> (Vec<u8>, usize) {
        let mut m = vec![0xaa; prefix];
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(rdata);
        (m, prefix)
    }

    /// The options after RDLENGTH, checking RDLENGTH matches.
    fn codes(msg: &[u8], rdlen_at: usize) -> Vec<(u16, usize)> {
        let rdlen = u16::from_be_bytes([msg[rdlen_at], msg[rdlen_at + 1]]) as usize;
        assert_eq!(rdlen_at + 2 + rdlen, msg.len(), "RDLENGTH covers the rest");
        options(&msg[rdlen_at + 2..])
            .map(|o| o.unwrap())
            .map(|o| (o.code, o.data_len()))
            .collect()
    }

    #[test]
    fn reads_what_the_client_asks() {
        assert_eq!(read_request(0, &[]), Ok(Request::default()));
        let r = read_request(
            0,
            &rdata(&[(10, &[1; 8]), (KEEPALIVE, &[]), (PADDING, &[0; 40])]),
        );
        assert_eq!(
            r,
            Ok(Request {
                keepalive: true,
                padding: true,
                client_subnet: false,
            })
        );
        assert!(r.unwrap().has_hop_by_hop());
        assert_eq!(
            read_request(0, &rdata(&[(KEEPALIVE, &[0, 100])])),
            Err(EdnsError::KeepaliveWithValue)
        );
        assert_eq!(
            read_request(0, &rdata(&[(PADDING, &[])])).map(|r| r.padding),
            Ok(true)
        );
        assert_eq!(
            read_request(0, &[0, 11, 0]),
            Err(EdnsError::MalformedOptions)
        );
        assert_eq!(
            read_request(0, &[0, 8, 0, 9, 1, 2]),
            Err(EdnsError::MalformedOptions)
        );
        // The version is checked first: unknown options mean nothing at 1.
        assert_eq!(read_request(1, &[0, 11, 0]), Err(EdnsError::BadVersion(1)));
        assert_eq!(EdnsError::BadVersion(1).rcode(), 16);
        assert_eq!(EdnsError::KeepaliveWithValue.rcode(), 1);
    }

    #[test]
    fn forwards_all_but_hop_by_hop_options_in_order() {
        let cookie = option(10, &[7; 8]);
        let ecs = option(8, &[0, 1, 24, 0, 192, 0, 2]);
        let mut rd = option(KEEPALIVE, &[]);
        rd.extend_from_slice(&cookie);
        rd.extend_from_slice(&option(PADDING, &[0; 30]));
        rd.extend_from_slice(&ecs);
        let mut out = vec![9];
        let n = push_forwarded_options(&mut out, &rd, false);
        assert_eq!(n, cookie.len() + ecs.len());
        assert_eq!(out, [vec![9], cookie.clone(), ecs].concat());
        let mut out = Vec::new();
        assert_eq!(push_forwarded_options(&mut out, &rd, true), cookie.len());
        assert_eq!(out, cookie, "the client's subnet dropped");
    }

    #[test]
    fn keepalive_units_saturate() {
        assert_eq!(keepalive_units(Duration::from_secs(30)), 300);
        assert_eq!(keepalive_units(Duration::from_millis(150)), 1);
        assert_eq!(keepalive_units(Duration::ZERO), 0);
        assert_eq!(keepalive_units(Duration::from_secs(7000)), u16::MAX);
        let asked = Request {
            keepalive: true,
            ..Request::default()
        };
        let idle = Duration::from_secs(20);
        assert_eq!(
            LegOptions::for_request(asked, idle, false).keepalive,
            Some(200)
        );
        assert_eq!(
            LegOptions::for_request(asked, idle, true).keepalive,
            Some(0)
        );
        assert!(LegOptions::for_request(Request::default(), idle, true).is_empty());
    }

    #[test]
    fn padding_reaches_the_next_block() {
        assert_eq!(padding_len(0), Some(464));
        assert_eq!(padding_len(464), Some(0));
        assert_eq!(padding_len(465), Some(467));
        assert_eq!(padding_len(100), Some(364));
        for len in 0..2000 {
            let pad = padding_len(len).unwrap();
            assert_eq!((len + 4 + pad) % RESPONSE_BLOCK, 0);
            assert!(pad < RESPONSE_BLOCK);
        }
        assert_eq!(padding_len(MAX_MESSAGE - 4), None);
        assert_eq!(padding_len(65_520 - 4), Some(0), "65520 = 140 * 468");
    }

    #[test]
    fn untouched_when_nothing_to_do() {
        let rd = rdata(&[(10, &[1; 16]), (3, b"nsid")]);
        let (mut m, at) = tail(30, &rd);
        let before = m.clone();
        rewrite_tail(&mut m, at, LegOptions::NONE).unwrap();
        assert_eq!(m, before);
    }

    #[test]
    fn removes_upstream_padding_and_keepalive() {
        let rd = rdata(&[
            (PADDING, &[0; 50]),
            (10, &[1; 16]),
            (KEEPALIVE, &[0, 5]),
            (15, &[0, 3]),
        ]);
        let (mut m, at) = tail(40, &rd);
        rewrite_tail(&mut m, at, LegOptions::NONE).unwrap();
        assert_eq!(codes(&m, at), [(10, 16), (15, 2)]);
        assert_eq!(&m[..40], &[0xaa; 40][..], "nothing before the RDATA moves");
    }

    #[test]
    fn adds_keepalive_then_padding() {
        let rd = rdata(&[(PADDING, &[0; 10]), (15, &[0, 3])]);
        let (mut m, at) = tail(100, &rd);
        let leg = LegOptions {
            keepalive: Some(300),
            padding: true,
            strip_subnet: false,
        };
        rewrite_tail(&mut m, at, leg).unwrap();
        assert_eq!(m.len() % RESPONSE_BLOCK, 0);
        let got = codes(&m, at);
        assert_eq!(got[..2], [(15, 2), (KEEPALIVE, 2)]);
        assert_eq!(got[2].0, PADDING);
        let ka = at + 2 + 6;
        assert_eq!(&m[ka..ka + 6], &[0, 11, 0, 2, 0x01, 0x2c]);
        assert!(m[ka + 10..].iter().all(|&b| b == 0), "padding is zeros");

        // Already padded by dotgate (say, twice): still one block multiple.
        let again = m.clone();
        rewrite_tail(&mut m, at, leg).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn padding_is_skipped_when_it_would_not_fit() {
        let (mut m, at) = tail(MAX_MESSAGE - 2 - 10, &rdata(&[(PADDING, &[0; 6])]));
        assert_eq!(m.len(), MAX_MESSAGE);
        let leg = LegOptions {
            keepalive: None,
            padding: true,
            strip_subnet: false,
        };
        rewrite_tail(&mut m, at, leg).unwrap();
        assert_eq!(
            m.len(),
            MAX_MESSAGE - 10,
            "upstream padding removed, none added"
        );
        assert_eq!(codes(&m, at), Vec::<(u16, usize)>::new());

        let (mut m, at) = tail(MAX_MESSAGE - 2, &[]);
        let before = m.clone();
        let leg = LegOptions {
            keepalive: Some(1),
            padding: false,
            strip_subnet: false,
        };
        assert_eq!(rewrite_tail(&mut m, at, leg), Err(RewriteError::TooLarge));
        assert_eq!(m, before);
    }

    #[test]
    fn malformed_options_are_refused_untouched() {
        let (mut m, at) = tail(20, &[0, 12, 0, 9, 0]);
        let before = m.clone();
        assert_eq!(
            rewrite_tail(&mut m, at, LegOptions::NONE),
            Err(RewriteError::Malformed)
        );
        assert_eq!(m, before);
        let none = LegOptions::NONE;
        assert!(needs_rewrite(&[0, 12, 0, 9, 0], none));
        assert!(needs_rewrite(&rdata(&[(3, b"x"), (PADDING, &[])]), none));
        assert!(!needs_rewrite(&rdata(&[(3, b"x")]), none));
        let ecs = rdata(&[(CLIENT_SUBNET, &[0, 1, 24, 0, 192, 0, 2])]);
        assert!(!needs_rewrite(&ecs, none));
        let strip = LegOptions {
            strip_subnet: true,
            ..none
        };
        assert!(needs_rewrite(&ecs, strip));
        let mut short = vec![1, 2];
        assert_eq!(
            rewrite_tail(&mut short, 5, LegOptions::NONE),
            Err(RewriteError::Malformed)
        );
    }

    /// Random RDATA never panics any entry point.
    #[test]
    fn random_rdata_never_panics() {
        for _ in 0..20_000 {
            let len = rand::random_range(0..40);
            let rd: Vec<u8> = (0..len)
                .map(|_| match rand::random_range(0..4) {
                    0 => 0,
                    1 => 11,
                    2 => 12,
                    _ => rand::random(),
                })
                .collect();
            let _ = read_request(rand::random_range(0..2), &rd);
            let _ = needs_rewrite(&rd, LegOptions::NONE);
            let mut out = Vec::new();
            push_forwarded_options(&mut out, &rd, rand::random());
            let (mut m, at) = tail(rand::random_range(0..600), &rd);
            let leg = LegOptions {
                keepalive: rand::random::<bool>().then(rand::random),
                padding: rand::random(),
                strip_subnet: rand::random(),
            };
            if rewrite_tail(&mut m, at, leg).is_ok() && leg.padding {
                assert_eq!(m.len() % RESPONSE_BLOCK, 0);
            }
        }
    }

    #[test]
    fn client_subnet_is_cut_to_the_prefix() {
        let ecs = |ip: &str, v4, v6| {
            let mut out = Vec::new();
            push_client_subnet(&mut out, ip.parse().unwrap(), v4, v6);
            out
        };
        // Family 1, /24, scope 0, three bytes.
        assert_eq!(
            ecs("192.0.2.77", 24, 56),
            [0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2]
        );
        assert_eq!(
            ecs("::ffff:192.0.2.77", 32, 128),
            [0, 8, 0, 8, 0, 1, 32, 0, 192, 0, 2, 77]
        );
        // /20: the last byte's spare bits are zero.
        assert_eq!(
            ecs("192.0.255.1", 20, 56),
            [0, 8, 0, 7, 0, 1, 20, 0, 192, 0, 240]
        );
        assert_eq!(ecs("192.0.2.1", 0, 0), [0, 8, 0, 4, 0, 1, 0, 0]);
        let v6 = ecs("2001:db8:aaaa:bbbb::1", 24, 56);
        assert_eq!(
            v6,
            [0, 8, 0, 11, 0, 2, 56, 0, 0x20, 0x01, 0x0d, 0xb8, 0xaa, 0xaa, 0xbb]
        );
        assert_eq!(ecs("2001:db8::1", 24, 128).len(), CLIENT_SUBNET_MAX);
    }

    #[test]
    fn a_stripped_subnet_leaves_the_reply() {
        let keep = option(3, b"x");
        let mut rd = option(CLIENT_SUBNET, &[0, 1, 24, 0, 192, 0, 2]);
        rd.extend_from_slice(&keep);
        let (mut m, at) = tail(20, &rd);
        let strip = LegOptions {
            strip_subnet: true,
            ..LegOptions::NONE
        };
        rewrite_tail(&mut m, at, strip).unwrap();
        assert_eq!(&m[at + 2..], &keep[..]);
        let (mut m, at) = tail(20, &rd);
        rewrite_tail(&mut m, at, LegOptions::NONE).unwrap();
        assert_eq!(&m[at + 2..], &rd[..], "kept unless stripped");
    }
}
