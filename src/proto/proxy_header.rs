//! The PROXY protocol (HAProxy's `proxy-protocol.txt`), versions 1 (text:
//! nginx, stunnel) and 2 (binary: HAProxy, cloud load balancers), read
//! before the TLS handshake so that the client's real address, not the load
//! balancer's, is used for the per-address limits and in logs.
//!
//! Invariants:
//! * exactly the header's bytes are consumed, never a byte of the TLS
//!   ClientHello behind it;
//! * reads are bounded: a v1 line is at most 107 bytes (the spec's maximum),
//!   a v2 payload at most [`V2_MAX_PAYLOAD`];
//! * the parsers are pure functions over bytes; only [`read_header`] does
//!   I/O, and the caller bounds it in time (the handshake timeout);
//! * anything that is not a well-formed header is an error: the connection
//!   is then closed, never served with the socket's address instead.
//!
//! A v2 `LOCAL` command (the balancer's own health check), a v1 `UNKNOWN`
//! and v2 `UNSPEC` or `AF_UNIX` addresses carry no client address: the
//! socket's peer is used then.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 line, CRLF included (spec §2.1).
pub const V1_MAX_LINE: usize = 107;

/// The largest v2 payload (addresses and TLVs) accepted. Addresses take at
/// most 216 bytes; the rest is TLVs (AWS and GCP add a few dozen bytes), so
/// 4 KiB is ample and still bounds what a peer can make us read.
pub const V2_MAX_PAYLOAD: usize = 4096;

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header (the connection starts with neither \"PROXY \" nor the v2 signature)")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one v1 or v2 header from `reader`, consuming exactly its bytes.
/// Returns the client's address, or `None` when the header carries none
/// (use the socket's peer then).
pub async fn read_header<R>(reader: &mut R) -> Result<Option<SocketAddr>, ProxyError>
where
    R: AsyncRead + Unpin,
{
    // 12 bytes are safe to read in both versions: the v2 signature is 12
    // bytes, and the shortest v1 line ("PROXY UNKNOWN\r\n") is 15.
    let mut start = [0u8; 12];
    reader.read_exact(&mut start).await?;
    if start == V2_SIGNATURE {
        let mut head = [0u8; 4];
        reader.read_exact(&mut head).await?;
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyError::V2("payload longer than 4096 bytes"));
        }
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload).await?;
        return parse_v2(head[0], head[1], &payload);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyError::Missing);
    }
    let mut line = Vec::with_capacity(V1_MAX_LINE);
    line.extend_from_slice(&start);
    // Byte by byte, so that nothing past the CRLF is consumed; at most 95
    // reads, once per connection.
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX_LINE {
            return Err(ProxyError::V1("no CRLF within 107 bytes"));
        }
        line.push(reader.read_u8().await?);
    }
    parse_v1(&line)
}

/// Parses a v1 line, CRLF included.
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let bad = ProxyError::V1;
    let text = line.strip_suffix(b"\r\n").ok_or(bad("missing CRLF"))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("not ASCII"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family, src, dst, sport, dport] => {
            let (src, _dst): (IpAddr, IpAddr) = match *family {
                "TCP4" => (
                    IpAddr::V4(
                        src.parse::<Ipv4Addr>()
                            .map_err(|_| bad("bad IPv4 source"))?,
                    ),
                    IpAddr::V4(
                        dst.parse::<Ipv4Addr>()
                            .map_err(|_| bad("bad IPv4 destination"))?,
                    ),
                ),
                "TCP6" => (
                    IpAddr::V6(
                        src.parse::<Ipv6Addr>()
                            .map_err(|_| bad("bad IPv6 source"))?,
                    ),
                    IpAddr::V6(
                        dst.parse::<Ipv6Addr>()
                            .map_err(|_| bad("bad IPv6 destination"))?,
                    ),
                ),
                _ => return Err(bad("protocol is not TCP4, TCP6 or UNKNOWN")),
            };
            let sport = port(sport).ok_or(bad("bad source port"))?;
            port(dport).ok_or(bad("bad destination port"))?;
            Ok(Some(SocketAddr::new(src, sport)))
        }
        ["PROXY", ..] => Err(bad("wrong number of fields")),
        _ => Err(bad("does not start with \"PROXY \"")),
    }
}

/// A decimal port: digits only (no sign, no spaces), at most 65535.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a v2 header after its signature: the version-and-command byte,
/// the family-and-transport byte, and the payload.
pub fn parse_v2(
    version_command: u8,
    family_transport: u8,
    payload: &[u8],
) -> Result<Option<SocketAddr>, ProxyError> {
    let bad = ProxyError::V2;
    if version_command >> 4 != 2 {
        return Err(bad("version is not 2"));
    }
    match version_command & 0x0f {
        // LOCAL: the balancer speaking for itself (health checks).
        0 => return Ok(None),
        1 => {}
        _ => return Err(bad("command is neither LOCAL nor PROXY")),
    }
    let family = family_transport >> 4;
    let transport = family_transport & 0x0f;
    match family {
        // UNSPEC and AF_UNIX: no IP address to use.
        0 | 3 => return Ok(None),
        1 | 2 => {}
        _ => return Err(bad("unknown address family")),
    }
    if transport != 1 {
        return Err(bad("transport is not STREAM (TCP)"));
    }
    let (ip, rest): (IpAddr, &[u8]) = if family == 1 {
        if payload.len() < 12 {
            return Err(bad("payload too short for IPv4 addresses"));
        }
        let octets: [u8; 4] = [payload[0], payload[1], payload[2], payload[3]];
        (IpAddr::from(octets), &payload[8..])
    } else {
        if payload.len() < 36 {
            return Err(bad("payload too short for IPv6 addresses"));
        }
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&payload[..16]);
        (IpAddr::from(octets), &payload[32..])
    };
    let sport = u16::from_be_bytes([rest[0], rest[1]]);
    Ok(Some(SocketAddr::new(ip, sport)))
}

/// The transport a v2 header describes (its lower family-byte nibble).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP, and TLS over TCP.
    Stream = 1,
    /// UDP: the header precedes every datagram.
    Datagram = 2,
}

/// `PP2_TYPE_AUTHORITY`: the host name the client asked for, here the TLS
/// server name (SNI) of its connection.
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// The size of a v2 header with IPv6 addresses and an authority of `len`
/// bytes, at most: what [`write_v2`] may append.
pub fn v2_len(authority_len: usize) -> usize {
    16 + 36
        + if authority_len > 0 {
            3 + authority_len
        } else {
            0
        }
}

/// Appends a v2 PROXY header (command PROXY) for traffic from `src` to
/// `dst` over `transport`, with `authority` in a `PP2_TYPE_AUTHORITY` TLV
/// when given (and short enough for one).
///
/// An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4
/// client) is written as IPv4, which is what the resolver's access rules
/// are written for. A header cannot mix families: a destination of the
/// other family is written as the unspecified address of the source's.
pub fn write_v2(
    out: &mut Vec<u8>,
    src: SocketAddr,
    dst: SocketAddr,
    transport: Transport,
    authority: Option<&str>,
) {
    let src_ip = src.ip().to_canonical();
    let dst_ip = dst.ip().to_canonical();
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    let len_at = out.len() + 1;
    match src_ip {
        IpAddr::V4(s) => {
            let d = match dst_ip {
                IpAddr::V4(d) => d,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            out.extend_from_slice(&[0x10 | transport as u8, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        IpAddr::V6(s) => {
            let d = match dst_ip {
                IpAddr::V6(d) => d,
                IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
            };
            out.extend_from_slice(&[0x20 | transport as u8, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    if let Some(name) = authority.filter(|n| !n.is_empty() && n.len() <= 255) {
        out.push(PP2_TYPE_AUTHORITY);
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    // At most 36 bytes of addresses and ports and 258 of TLV.
    let payload = (out.len() - len_at - 2) as u16;
    out[len_at..len_at + 2].copy_from_slice(&payload.to_be_bytes());
}

/// Appends a v2 header with the LOCAL command: dotgate speaking for itself
/// (its health probes), which the receiver treats as coming from the
/// socket's own peer.
pub fn write_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A v2 header for a TCP connection from `src` to `dst`, with `tlv`
    /// bytes after the addresses.
    pub fn v2(src: SocketAddr, dst: SocketAddr, tlv: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        let family = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                payload.extend_from_slice(&s.octets());
                payload.extend_from_slice(&d.octets());
                0x11
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                payload.extend_from_slice(&s.octets());
                payload.extend_from_slice(&d.octets());
                0x21
            }
            _ => panic!("mixed families"),
        };
        payload.extend_from_slice(&src.port().to_be_bytes());
        payload.extend_from_slice(&dst.port().to_be_bytes());
        payload.extend_from_slice(tlv);
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x21);
        out.push(family);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    async fn read_all(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut reader = bytes;
        let result = read_header(&mut reader).await;
        (result, reader.to_vec())
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 853\r\n").unwrap(),
            Some(addr("192.0.2.7:56324"))
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 853\r\n").unwrap(),
            Some(addr("[2001:db8::7]:4000"))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap(),
            None
        );
    }

    #[test]
    fn v1_malformed_lines_are_errors() {
        for line in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 853\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 853\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +80 853\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 80 853\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 80 853\r\n",
            b"proxy TCP4 192.0.2.7 198.51.100.1 80 853\r\n",
        ] {
            assert!(
                parse_v1(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn v2_inet_inet6_local_and_unix() {
        let h = v2(addr("192.0.2.7:56324"), addr("198.51.100.1:853"), &[]);
        assert_eq!(
            parse_v2(h[12], h[13], &h[16..]).unwrap(),
            Some(addr("192.0.2.7:56324"))
        );
        let h = v2(
            addr("[2001:db8::7]:4000"),
            addr("[2001:db8::1]:853"),
            &[1, 0, 1, 9],
        );
        assert_eq!(
            parse_v2(h[12], h[13], &h[16..]).unwrap(),
            Some(addr("[2001:db8::7]:4000"))
        );
        assert_eq!(parse_v2(0x20, 0x00, &[]).unwrap(), None, "LOCAL");
        assert_eq!(parse_v2(0x21, 0x31, &[0; 216]).unwrap(), None, "AF_UNIX");
    }

    #[test]
    fn v2_malformed_headers_are_errors() {
        assert!(parse_v2(0x11, 0x11, &[0; 12]).is_err(), "version 1");
        assert!(parse_v2(0x22, 0x11, &[0; 12]).is_err(), "command 2");
        assert!(parse_v2(0x21, 0x11, &[0; 11]).is_err(), "short IPv4");
        assert!(parse_v2(0x21, 0x21, &[0; 35]).is_err(), "short IPv6");
        assert!(parse_v2(0x21, 0x12, &[0; 12]).is_err(), "UDP");
        assert!(parse_v2(0x21, 0x41, &[0; 12]).is_err(), "family 4");
    }

    #[tokio::test]
    async fn read_header_consumes_exactly_the_header() {
        let mut bytes = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 853\r\n".to_vec();
        bytes.extend_from_slice(&[0x16, 0x03, 0x01]);
        let (result, rest) = read_all(&bytes).await;
        assert_eq!(result.unwrap(), Some(addr("192.0.2.7:56324")));
        assert_eq!(rest, [0x16, 0x03, 0x01]);

        let mut bytes = v2(addr("192.0.2.8:1"), addr("198.51.100.1:853"), &[4, 0, 0]);
        bytes.extend_from_slice(&[0x16, 0x03, 0x01]);
        let (result, rest) = read_all(&bytes).await;
        assert_eq!(result.unwrap(), Some(addr("192.0.2.8:1")));
        assert_eq!(rest, [0x16, 0x03, 0x01]);
    }

    #[tokio::test]
    async fn read_header_refuses_bad_starts_long_lines_and_big_payloads() {
        let (result, _) = read_all(&[0x16, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await;
        assert!(matches!(result, Err(ProxyError::Missing)), "{result:?}");
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        let (result, _) = read_all(long.as_bytes()).await;
        assert!(matches!(result, Err(ProxyError::V1(_))), "{result:?}");
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0x10, 0x01]);
        let (result, _) = read_all(&big).await;
        assert!(matches!(result, Err(ProxyError::V2(_))), "{result:?}");
        let (result, _) = read_all(b"PROXY TCP4 1.2.3.4").await;
        assert!(matches!(result, Err(ProxyError::Io(_))), "{result:?}");
    }

    #[test]
    fn written_headers_parse_back() {
        let mut h = Vec::new();
        write_v2(
            &mut h,
            addr("[::ffff:192.0.2.7]:5000"),
            addr("[::]:853"),
            Transport::Stream,
            Some("alice.dns.test"),
        );
        assert_eq!(h[13], 0x11, "mapped IPv4 written as IPv4 over TCP");
        assert_eq!(
            parse_v2(h[12], h[13], &h[16..]).unwrap(),
            Some(addr("192.0.2.7:5000"))
        );
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        assert_eq!(h.len(), 16 + len);
        let tlv = &h[16 + 12..];
        assert_eq!(tlv[0], PP2_TYPE_AUTHORITY);
        assert_eq!(&tlv[3..], b"alice.dns.test");
        assert!(h.len() <= v2_len("alice.dns.test".len()));

        let mut h = Vec::new();
        write_v2(
            &mut h,
            addr("[2001:db8::7]:4000"),
            addr("127.0.0.1:853"),
            Transport::Datagram,
            None,
        );
        assert_eq!(h[13], 0x22, "IPv6 over UDP");
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[16 + 16..16 + 32], &[0; 16], "other family: unspecified");

        let mut h = Vec::new();
        write_v2_local(&mut h);
        assert_eq!(parse_v2(h[12], h[13], &h[16..]).unwrap(), None);
    }
}
