//! Pure wire code: DNS messages ([`dns`]), the EDNS options of the TLS leg
//! ([`edns`]), the 2-byte length framing of DNS over TCP and TLS
//! ([`framing`], and [`message_reader`] for clients' queries) and the PROXY protocol header ([`proxy_header`]). Nothing
//! here imports another layer of dotgate.

pub mod dns;
pub mod edns;
pub mod framing;
pub mod message_reader;
pub mod proxy_header;
