//! HTTP/2 for DoH, dotgate's own: the frames ([`frame`]), header
//! decoding ([`hpack`]) and response heads ([`response`]), the protocol of
//! one connection without I/O ([`session`]), and the task that runs a
//! connection over its stream ([`connection`]).

pub mod connection;
pub mod frame;
pub mod hpack;
pub mod response;
pub mod session;
#[cfg(test)]
mod session_tests;

pub use connection::serve;
