//! The TLS record layer as far as [`super::server_stream`] must see it
//! without decrypting: where the next record ends, how much may be held,
//! and the bytes that make rustls send a fatal alert of a known kind.
//!
//! Pure functions over bytes, so the limits are unit-tested apart from any
//! socket.

/// A record header: type, legacy version, length.
pub const HEADER_LEN: usize = 5;

/// The largest record payload rustls accepts (2^14 plus the 2048 bytes of
/// expansion TLS 1.2 allows); a header announcing this much or more is
/// refused by rustls as soon as it sees the header.
pub const MAX_PAYLOAD: usize = 16_384 + 2048;

/// The largest record on the wire.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_PAYLOAD;

/// Bytes of records a connection may hold for one handshake message that
/// has not all arrived (the records stay in the buffer, decrypted in
/// place, until the message is complete).
///
/// Why this much: rustls' own buffered reader caps a handshake message at
/// 64 KiB of received bytes, and the largest message a DoT client sends is
/// its ClientHello (post-quantum key shares make it a few KiB; 64 KiB is
/// the most rustls' [`rustls::server::Acceptor`] takes). After the
/// handshake a client sends only KeyUpdate, 5 bytes. Padding and empty
/// fragments cost wire bytes but carry none of the message, which is how a
/// client could once make a connection hold a gigabyte; they count here.
pub const MAX_HELD: usize = 64 * 1024 + 4096;

// The largest ClientHello rustls' acceptor takes (64 KiB), in full
// plaintext records, fits under the limit.
const _: () = assert!(0xffff + 4 + 4 * HEADER_LEN <= MAX_HELD);

/// What comes next in received bytes, judged on the record header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A whole record of this many bytes (header included).
    Record(usize),
    /// A header rustls will refuse (a length over [`MAX_PAYLOAD`]): handed
    /// over alone, so that rustls refuses it with its alert at once rather
    /// than after the announced bytes have been waited for.
    BadHeader,
    /// The record has not all arrived.
    Partial,
}

/// Looks at the record at the start of `bytes`.
pub fn next(bytes: &[u8]) -> Next {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Next::Partial;
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len >= MAX_PAYLOAD {
        return Next::BadHeader;
    }
    if bytes.len() >= HEADER_LEN + len {
        Next::Record(HEADER_LEN + len)
    } else {
        Next::Partial
    }
}

/// Bytes that, handed to rustls after what it already holds, make it
/// queue a fatal alert of its own (encrypted under the connection's current
/// keys) where it would otherwise send none. rustls' public API has no call
/// that sends an alert of the caller's choosing, and only rustls holds the
/// keys, so the alert is provoked with a record it refuses in a known way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provoke {
    /// A record header with content type 0, which no TLS version defines:
    /// rustls refuses it before anything else, in any state, with
    /// `decode_error`.
    DecodeError,
    /// A plaintext ChangeCipherSpec. After the handshake no version expects
    /// one, and during a TLS 1.3 handshake one with a payload other than 1
    /// is refused: rustls answers either with `unexpected_message`. Only
    /// valid while no handshake message is being reassembled (a
    /// non-handshake record then is refused without an alert).
    UnexpectedMessage {
        /// A TLS 1.3 handshake is in progress (its middlebox-compatible
        /// CCS of payload 1 would be accepted and dropped).
        tls13_handshake: bool,
    },
}

impl Provoke {
    /// The record to hand to rustls.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Provoke::DecodeError => &[0x00, 0x03, 0x03, 0x00, 0x01, 0x00],
            Provoke::UnexpectedMessage {
                tls13_handshake: true,
            } => &[0x14, 0x03, 0x03, 0x00, 0x01, 0x02],
            Provoke::UnexpectedMessage {
                tls13_handshake: false,
            } => &[0x14, 0x03, 0x03, 0x00, 0x01, 0x01],
        }
    }
}

/// A plaintext fatal alert record, for errors before any keys exist (the
/// ClientHello stage): TLS 1.2 record version, level fatal, `description`.
pub fn plaintext_alert(description: rustls::AlertDescription) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(description)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_records_and_waits_for_partial_ones() {
        assert_eq!(next(&[]), Next::Partial);
        assert_eq!(next(&[0x17, 3, 3, 0]), Next::Partial);
        assert_eq!(next(&[0x17, 3, 3, 0, 2, 9]), Next::Partial);
        assert_eq!(next(&[0x17, 3, 3, 0, 2, 9, 9]), Next::Record(7));
        assert_eq!(next(&[0x17, 3, 3, 0, 2, 9, 9, 0x17]), Next::Record(7));
        // An empty record is whole at its header (rustls judges its type).
        assert_eq!(next(&[0x17, 3, 3, 0, 0]), Next::Record(5));
    }

    #[test]
    fn an_oversized_header_is_handed_over_without_waiting() {
        let len = (MAX_PAYLOAD as u16).to_be_bytes();
        assert_eq!(next(&[0x17, 3, 3, len[0], len[1]]), Next::BadHeader);
        let len = ((MAX_PAYLOAD - 1) as u16).to_be_bytes();
        assert_eq!(next(&[0x17, 3, 3, len[0], len[1]]), Next::Partial);
        assert_eq!(next(&[0x17, 3, 3, 0xff, 0xff]), Next::BadHeader);
    }
}
