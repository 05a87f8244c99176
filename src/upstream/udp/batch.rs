//! Many datagrams per system call: `recvmmsg(2)` into one set of buffers per
//! worker thread (Linux only; the crate's only `unsafe`).
//!
//! Replies to a burst of queries arrive together; reading them one `recv`
//! at a time cost one system call each, and one more that found the socket
//! empty. [`Batch::receive`] takes up to [`CAPACITY`] at once and says when
//! it found the socket empty, so that the caller needs no extra call to
//! learn it.
//!
//! Memory: the buffers belong to the worker thread, not to a socket (sockets
//! are replaced every thousand queries), and are used between two awaits
//! only. The first is as large as any datagram; the others are
//! [`SLOT`] bytes, over three times the 1,232 bytes dotgate asks its UDP
//! upstreams for (`dns::UPSTREAM_UDP_PAYLOAD`): 188 KiB per worker thread.
//! A datagram longer than its buffer is cut by the kernel and marked
//! (`MSG_TRUNC`): [`Datagram::Truncated`], never passed on as a reply.
//!
//! Why not quinn-udp: its receive reports no truncation per message, so
//! every buffer would have to be 64 KiB; and it turns on GRO, which joins
//! datagrams into one buffer that must then be split. One system call on
//! plain buffers is all this needs.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Datagrams read by one system call at most.
pub const CAPACITY: usize = 32;

/// The first buffer's size: the largest UDP payload.
const FIRST: usize = 65_535;

/// The other buffers' size.
pub const SLOT: usize = 4_096;

/// What one buffer holds after a receive.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// The whole datagram.
    Whole(&'a [u8]),
    /// Its first bytes only: the rest did not fit.
    Truncated(&'a [u8]),
}

/// The length of one received datagram, and whether it was cut.
#[derive(Debug, Clone, Copy, Default)]
struct Received {
    len: usize,
    truncated: bool,
}

/// The buffers of one receive and what it put there.
pub struct Batch {
    first: Box<[u8]>,
    /// `CAPACITY - 1` buffers of [`SLOT`] bytes, one after the other.
    rest: Box<[u8]>,
    received: [Received; CAPACITY],
    count: usize,
}

impl Batch {
    pub fn new() -> Self {
        Self {
            first: vec![0; FIRST].into_boxed_slice(),
            rest: vec![0; SLOT * (CAPACITY - 1)].into_boxed_slice(),
            received: [Received::default(); CAPACITY],
            count: 0,
        }
    }

    /// Reads the datagrams waiting on `fd`, up to [`CAPACITY`], without
    /// waiting. `Ok(true)`: the socket was found empty (fewer than
    /// [`CAPACITY`] read, or none: then [`io::ErrorKind::WouldBlock`] is
    /// not an error here). An error of the socket with none read is
    /// returned; after one or more, the kernel keeps it for the next call.
    pub fn receive(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        self.count = 0;
        let mut iovecs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; CAPACITY];
        let buffers = std::iter::once(&mut self.first[..]).chain(self.rest.chunks_exact_mut(SLOT));
        for (iovec, buffer) in iovecs.iter_mut().zip(buffers) {
            iovec.iov_base = buffer.as_mut_ptr().cast();
            iovec.iov_len = buffer.len();
        }
        // SAFETY: mmsghdr is a C struct of integers and pointers, for which
        // all zeroes (null pointers, zero lengths) is a valid value.
        let mut headers: [libc::mmsghdr; CAPACITY] = unsafe { std::mem::zeroed() };
        for (header, iovec) in headers.iter_mut().zip(iovecs.iter_mut()) {
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `headers` holds CAPACITY valid headers, each pointing to
        // one iovec of `iovecs`, which points into a buffer of `self` of the
        // length it states; all of them are borrowed mutably for this call
        // only and outlive it. No address or control buffer is given (null,
        // length 0), nor a timeout (null). The kernel writes only into the
        // buffers and into each header's msg_len and msg_flags.
        let read = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                headers.as_mut_ptr(),
                CAPACITY as _,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        let Ok(read) = usize::try_from(read) else {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(true),
                _ => Err(e),
            };
        };
        self.count = read.min(CAPACITY);
        for (received, header) in self.received.iter_mut().zip(&headers[..self.count]) {
            *received = Received {
                len: header.msg_len as usize,
                truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            };
        }
        Ok(self.count < CAPACITY)
    }

    /// The datagrams of the last receive, in the order they came.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> {
        let buffers = std::iter::once(&self.first[..]).chain(self.rest.chunks_exact(SLOT));
        self.received[..self.count]
            .iter()
            .zip(buffers)
            .map(|(received, buffer)| {
                let bytes = &buffer[..received.len.min(buffer.len())];
                if received.truncated {
                    Datagram::Truncated(bytes)
                } else {
                    Datagram::Whole(bytes)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        (a, b)
    }

    #[test]
    fn reads_what_is_queued_in_order_and_says_when_empty() {
        let (a, b) = pair();
        let mut batch = Batch::new();
        assert!(batch.receive(b.as_fd()).unwrap(), "nothing queued");
        assert_eq!(batch.datagrams().count(), 0);
        for i in 0..CAPACITY + 3 {
            a.send(&[i as u8; 7]).unwrap();
        }
        assert!(
            !batch.receive(b.as_fd()).unwrap(),
            "a full batch: maybe more"
        );
        let first: Vec<_> = batch.datagrams().collect();
        assert_eq!(first.len(), CAPACITY);
        assert_eq!(first[5], Datagram::Whole(&[5; 7]));
        assert!(batch.receive(b.as_fd()).unwrap(), "the rest, then empty");
        let rest: Vec<_> = batch.datagrams().collect();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[2], Datagram::Whole(&[CAPACITY as u8 + 2; 7]));
    }

    #[test]
    fn a_datagram_longer_than_its_buffer_is_marked_cut() {
        let (a, b) = pair();
        let big = vec![9u8; SLOT + 1];
        a.send(&big).unwrap();
        a.send(&big).unwrap();
        let mut batch = Batch::new();
        assert!(batch.receive(b.as_fd()).unwrap());
        let got: Vec<_> = batch.datagrams().collect();
        assert_eq!(
            got[0],
            Datagram::Whole(&big),
            "the first buffer takes any size"
        );
        assert_eq!(got[1], Datagram::Truncated(&big[..SLOT]));
    }
}
