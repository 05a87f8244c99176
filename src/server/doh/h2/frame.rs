//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte header every frame starts
//! with, the types, flags, error codes and settings a DoH server meets, and
//! the frames it writes, appended to the connection's output.

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 9;

/// The largest frame payload either side may send without a setting
/// saying otherwise; dotgate never raises its own.
pub const DEFAULT_MAX_FRAME: usize = 16_384;

/// The flow-control window every stream and the connection start with.
pub const DEFAULT_WINDOW: u32 = 65_535;

/// The largest a flow-control window may become (RFC 9113 §6.9.1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Frame types (RFC 9113 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    /// Any other type: ignored (§4.1), extensions included.
    Unknown,
}

impl Kind {
    fn of(code: u8) -> Kind {
        match code {
            0x0 => Kind::Data,
            0x1 => Kind::Headers,
            0x2 => Kind::Priority,
            0x3 => Kind::RstStream,
            0x4 => Kind::Settings,
            0x5 => Kind::PushPromise,
            0x6 => Kind::Ping,
            0x7 => Kind::GoAway,
            0x8 => Kind::WindowUpdate,
            0x9 => Kind::Continuation,
            _ => Kind::Unknown,
        }
    }
}

/// Frame flags; which apply depends on the type.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes of RST_STREAM and GOAWAY (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NoError = 0x0,
    ProtocolError = 0x1,
    FlowControlError = 0x3,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    CompressionError = 0x9,
    EnhanceYourCalm = 0xb,
}

/// Setting identifiers (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length.
    pub len: usize,
    pub kind: Kind,
    pub flags: u8,
    /// The stream, with the reserved bit cleared.
    pub stream: u32,
}

impl Header {
    /// Reads the header at the start of `bytes` (at least
    /// [`HEADER_LEN`] long).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *bytes;
        Header {
            len: usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2),
            kind: Kind::of(kind),
            flags,
            stream: u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]),
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Appends a frame header; `len` is at most 2^24 - 1 (dotgate writes no
/// frame over [`DEFAULT_MAX_FRAME`]).
pub fn write_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len.min(0x00ff_ffff) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;

/// A SETTINGS frame with `values`.
pub fn settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    write_header(out, values.len() * 6, SETTINGS, 0, 0);
    for (id, value) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// The acknowledgement of the peer's SETTINGS.
pub fn settings_ack(out: &mut Vec<u8>) {
    write_header(out, 0, SETTINGS, flag::ACK, 0);
}

/// The answer to a PING, with its payload.
pub fn ping_ack(out: &mut Vec<u8>, payload: &[u8; 8]) {
    write_header(out, 8, PING, flag::ACK, 0);
    out.extend_from_slice(payload);
}

/// GOAWAY: streams after `last_stream` will not be processed.
pub fn goaway(out: &mut Vec<u8>, last_stream: u32, code: ErrorCode) {
    write_header(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&(code as u32).to_be_bytes());
}

pub fn rst_stream(out: &mut Vec<u8>, stream: u32, code: ErrorCode) {
    write_header(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&(code as u32).to_be_bytes());
}

pub fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_header(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment & 0x7fff_ffff).to_be_bytes());
}

/// The payload of a DATA or HEADERS frame without its padding (§6.1,
/// §6.2); `None` when the padding is longer than the frame.
pub fn unpadded<'a>(header: &Header, payload: &'a [u8]) -> Option<&'a [u8]> {
    if !header.has(flag::PADDED) {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_what_was_written() {
        let mut out = Vec::new();
        write_header(&mut out, 70_000, HEADERS, flag::END_HEADERS, 0x8000_0007);
        let header = Header::parse(out[..9].try_into().unwrap());
        assert_eq!(
            header,
            Header {
                len: 70_000,
                kind: Kind::Headers,
                flags: flag::END_HEADERS,
                // The reserved bit is not part of the stream.
                stream: 7,
            }
        );
    }

    #[test]
    fn padding_is_removed_and_checked() {
        let padded = Header {
            len: 5,
            kind: Kind::Data,
            flags: flag::PADDED,
            stream: 1,
        };
        assert_eq!(unpadded(&padded, &[2, b'a', b'b', 0, 0]), Some(&b"ab"[..]));
        assert_eq!(unpadded(&padded, &[5, b'a']), None);
        assert_eq!(unpadded(&padded, &[]), None);
        let plain = Header { flags: 0, ..padded };
        assert_eq!(unpadded(&plain, b"abc"), Some(&b"abc"[..]));
    }
}
