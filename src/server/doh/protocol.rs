//! The HTTP version of a DoH connection, which the connection's server and
//! the watch over its bytes both depend on.

/// HTTP/2 when ALPN chose `h2` (or a plain connection began with its
/// preface), HTTP/1.1 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}
