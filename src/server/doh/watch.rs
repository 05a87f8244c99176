//! The read side of an HTTP/1.1 DoH connection, watched for what the read
//! timeout judges: whether the client has begun a request head it has not
//! finished. hyper owns the parsing and tells nothing of a request until
//! its head is whole, so a slow loris (a head sent a byte at a time) would
//! otherwise hold its connection until the idle timeout.
//!
//! Bytes that arrive while no request is being answered begin a request
//! head; the head ends when hyper hands the request over (the connection
//! calls [`Activity::message_ended`] then). hyper's own
//! `header_read_timeout` is not used: it runs from the moment hyper waits
//! for a head, so it closed idle keep-alive connections between requests at
//! the read timeout instead of the idle timeout. (HTTP/2 is dotgate's own,
//! [`super::h2`], whose session knows what is begun.)

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::activity::Activity;

/// A connection's stream, telling its [`Activity`] when the client begins a
/// request head as bytes are read; writes pass through.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() && !self.activity.is_busy() {
            self.activity.message_begun();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.saw(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
