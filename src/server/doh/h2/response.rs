//! A response's header block, HPACK-encoded (RFC 7541) without state:
//! every field is an index into the static table or a literal that is not
//! indexed, with its name from the static table and its value as is. The
//! encoder then keeps no dynamic table for the connection's life, and the
//! peer's SETTINGS_HEADER_TABLE_SIZE never matters; a DoH response has four
//! short fields, so what indexing would save is a few dozen bytes.

use crate::server::doh::exchange::ResponseHeaders;

/// Static table indices (RFC 7541 Appendix A) of the fields written here.
mod index {
    pub const STATUS: usize = 8;
    pub const STATUS_200: usize = 8;
    pub const STATUS_400: usize = 12;
    pub const STATUS_404: usize = 13;
    pub const ALLOW: usize = 22;
    pub const CACHE_CONTROL: usize = 24;
    pub const CONTENT_LENGTH: usize = 28;
    pub const CONTENT_TYPE: usize = 31;
    pub const RETRY_AFTER: usize = 53;
}

/// Appends the header block of a response: `:status`, `content-type`,
/// `content-length`, and the others `headers` asks for.
pub fn head_block(out: &mut Vec<u8>, status: u16, headers: &ResponseHeaders, length: usize) {
    match status {
        200 => indexed(out, index::STATUS_200),
        400 => indexed(out, index::STATUS_400),
        404 => indexed(out, index::STATUS_404),
        other => literal(out, index::STATUS, Decimal::of(u64::from(other)).digits()),
    }
    literal(out, index::CONTENT_TYPE, headers.content_type.as_bytes());
    literal(
        out,
        index::CONTENT_LENGTH,
        Decimal::of(length as u64).digits(),
    );
    if let Some(seconds) = headers.max_age {
        let digits = Decimal::of(u64::from(seconds));
        let mut value = [0u8; 28];
        value[..8].copy_from_slice(b"max-age=");
        let end = 8 + digits.digits().len();
        value[8..end].copy_from_slice(digits.digits());
        literal(out, index::CACHE_CONTROL, &value[..end]);
    }
    if let Some(allow) = headers.allow {
        literal(out, index::ALLOW, allow.as_bytes());
    }
    if let Some(after) = headers.retry_after {
        literal(out, index::RETRY_AFTER, after.as_bytes());
    }
}

/// A number in decimal, without allocating.
struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    fn of(mut value: u64) -> Decimal {
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break Decimal { buf, start };
            }
        }
    }

    fn digits(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// An indexed field (§6.1).
fn indexed(out: &mut Vec<u8>, index: usize) {
    integer(out, 0x80, 7, index);
}

/// A literal field without indexing, its name from the static table
/// (§6.2.2), its value not Huffman-coded.
fn literal(out: &mut Vec<u8>, name: usize, value: &[u8]) {
    integer(out, 0x00, 4, name);
    integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// An integer with an `n`-bit prefix under the bits `high` (§5.1).
fn integer(out: &mut Vec<u8>, high: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::doh::exchange::ResponseHeaders;

    const DNS: ResponseHeaders = ResponseHeaders {
        content_type: "application/dns-message",
        max_age: Some(300),
        allow: None,
        retry_after: None,
    };

    #[test]
    fn decimals() {
        assert_eq!(Decimal::of(0).digits(), b"0");
        assert_eq!(Decimal::of(65_535).digits(), b"65535");
        assert_eq!(Decimal::of(u64::MAX).digits(), b"18446744073709551615");
    }

    #[test]
    fn integers_follow_rfc_7541_c_1() {
        // C.1.1: 10 in a 5-bit prefix; C.1.2: 1337 in a 5-bit prefix.
        let mut out = Vec::new();
        integer(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0a]);
        out.clear();
        integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn a_dns_response_head_is_indexed_status_and_literal_fields() {
        let mut out = Vec::new();
        head_block(&mut out, 200, &DNS, 45);
        let mut expected = vec![0x88, 0x0f, 0x10, 23];
        expected.extend_from_slice(b"application/dns-message");
        expected.extend_from_slice(&[0x0f, 0x0d, 2]);
        expected.extend_from_slice(b"45");
        expected.extend_from_slice(&[0x0f, 0x09, 11]);
        expected.extend_from_slice(b"max-age=300");
        assert_eq!(out, expected);
    }

    #[test]
    fn other_statuses_are_literals_with_the_status_name() {
        let refused = ResponseHeaders {
            content_type: "text/plain; charset=utf-8",
            max_age: None,
            allow: Some("GET, POST"),
            retry_after: None,
        };
        let mut out = Vec::new();
        head_block(&mut out, 405, &refused, 10);
        assert_eq!(&out[..5], &[0x08, 3, b'4', b'0', b'5']);
        assert!(out.ends_with(b"\x0f\x07\x09GET, POST"));
    }
}
