//! The DNS messages both benchmarks use, built byte by byte: a query for
//! `www.example.com A` without EDNS (33 bytes), with an empty OPT record
//! (44 bytes), and with keepalive and padding options padded to 128 bytes
//! (RFC 8467's block for queries); and replies of a chosen size.

#![allow(dead_code)]

/// The name every query asks for.
pub const NAME: &[&str] = &["www", "example", "com"];

/// How a query's EDNS looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edns {
    /// No OPT record.
    None,
    /// An OPT record (payload 4096) without options.
    Opt,
    /// An OPT record asking for keepalive and padding, padded to 128 bytes.
    Padded,
}

impl Edns {
    pub const ALL: [Edns; 3] = [Edns::None, Edns::Opt, Edns::Padded];

    pub fn label(self) -> &'static str {
        match self {
            Edns::None => "no OPT",
            Edns::Opt => "OPT",
            Edns::Padded => "padded",
        }
    }
}

/// Option codes of the TLS leg.
const KEEPALIVE: u16 = 11;
const PADDING: u16 = 12;

/// The query for `www.example.com A`, RD set.
pub fn query(id: u16, edns: Edns) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&id.to_be_bytes());
    let arcount = u8::from(edns != Edns::None);
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, arcount]);
    for label in NAME {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    match edns {
        Edns::None => {}
        Edns::Opt => push_opt(&mut m, 4096),
        Edns::Padded => {
            push_opt(&mut m, 4096);
            let rdlen_at = m.len() - 2;
            m.extend_from_slice(&KEEPALIVE.to_be_bytes());
            m.extend_from_slice(&[0, 0]);
            m.extend_from_slice(&PADDING.to_be_bytes());
            let pad = 128 - m.len() - 2;
            m.extend_from_slice(&(pad as u16).to_be_bytes());
            m.resize(128, 0);
            let rdlen = (m.len() - rdlen_at - 2) as u16;
            m[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        }
    }
    m
}

fn push_opt(m: &mut Vec<u8>, payload: u16) {
    m.push(0);
    m.extend_from_slice(&41u16.to_be_bytes());
    m.extend_from_slice(&payload.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

/// Offset just past the question of a message with one question.
pub fn question_end(msg: &[u8]) -> usize {
    let mut pos = 12;
    while msg[pos] != 0 {
        pos += 1 + usize::from(msg[pos]);
    }
    pos + 5
}

/// A reply of exactly `size` bytes to `query` (as sent upstream): its
/// header (QR, RA) and question, A records (compressed owner) and one TXT
/// record to make up the size, and an OPT record (payload 1232, no
/// options) at the end when the query has one, as resolvers answer.
pub fn reply(query: &[u8], size: usize) -> Vec<u8> {
    let qend = question_end(query);
    let with_opt = query.len() > qend;
    let mut r = Vec::with_capacity(size);
    r.extend_from_slice(&query[..qend]);
    r[2] |= 0x80;
    r[3] |= 0x80;
    r[8..12].copy_from_slice(&[0, 0, 0, u8::from(with_opt)]);
    let opt_len = if with_opt { 11 } else { 0 };
    let room = size - qend - opt_len;
    // A records of 16 bytes; whatever is left, at least 13 bytes, is a TXT
    // record (12 bytes of owner and fixed fields, then the strings).
    let mut a_records = room / 16;
    while room - 16 * a_records != 0 && room - 16 * a_records < 13 {
        a_records -= 1;
    }
    let txt = room - 16 * a_records;
    for i in 0..a_records {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]);
        r.extend_from_slice(&[192, 0, 2, i as u8]);
    }
    let mut ancount = a_records;
    if txt > 0 {
        ancount += 1;
        let rdlen = txt - 12;
        r.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0x0e, 0x10]);
        r.extend_from_slice(&(rdlen as u16).to_be_bytes());
        let mut left = rdlen;
        while left > 0 {
            let s = (left - 1).min(255);
            r.push(s as u8);
            r.resize(r.len() + s, b'x');
            left -= 1 + s;
        }
    }
    r[6..8].copy_from_slice(&(ancount as u16).to_be_bytes());
    if with_opt {
        push_opt(&mut r, 1232);
    }
    assert_eq!(r.len(), size);
    r
}

/// A message behind its 2-byte length prefix.
pub fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}
