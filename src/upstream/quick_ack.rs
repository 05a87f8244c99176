//! A TCP connection toward an upstream (`tcp://`, `tls://`, and the TCP
//! retries of a UDP upstream) that acknowledges what it receives at once.
//!
//! Linux delays acknowledgements on a connection past its first exchanges
//! (up to 40 ms), counting on data going the other way to carry them. A
//! pooled upstream connection often has nothing to send after an answer
//! arrives, and an upstream that writes its answers with Nagle's algorithm
//! on holds its next answer until that acknowledgement comes. The
//! benchmark's NSD behaved so: with truncated answers retried over a kept
//! connection, the 99th percentile latency of `bench/run.sh` went from
//! 2.35 ms (a connection per retry) to 4.80 ms, and back to 2.07 ms with
//! this wrapper, which asks for quick acknowledgements again after every
//! read (`TCP_QUICKACK` is not sticky: the kernel may leave quick mode
//! after any segment). One `setsockopt` per read, on upstream connections
//! only.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// `TcpStream` that re-arms `TCP_QUICKACK` after every read that got bytes.
pub struct QuickAck(pub TcpStream);

impl QuickAck {
    #[cfg(target_os = "linux")]
    fn rearm(&self) {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket, and a c_int option value of its size. A
        // failure only costs the delayed acknowledgement it would avoid.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn rearm(&self) {}
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.rearm();
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
