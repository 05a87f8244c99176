//! Closes a failed TLS stream (its alert, FIN, the linger) before hyper
//! sees the failure, and counts the failure as DoT's connection does.
//!
//! The TLS stream queues a fatal alert when it fails, and sends it (then
//! FIN, then a lingering read, so that the close is not a reset) when it is
//! shut down. DoT's connection shuts its stream down on every way out.
//! hyper's HTTP/1.1 server was seen to shut a failed stream
//! down too, but nothing in their contract says so, and they may report a
//! failed read on an idle connection as a plain close (so the failure would
//! go uncounted). This wrapper makes both independent of hyper: whenever a
//! read or a write fails with a TLS failure, it counts it, closes the
//! stream, and only then hands hyper the error.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::stats::Stats;
use crate::tls::server_stream::TlsFailure;

/// A stream whose TLS failures are closed (alert, FIN, linger) before they
/// are returned.
pub struct AlertFirst<S> {
    inner: S,
    /// A TLS failure being closed, returned once the close is done.
    failing: Option<io::Error>,
    stats: Arc<Stats>,
}

impl<S> AlertFirst<S> {
    pub fn new(inner: S, stats: Arc<Stats>) -> Self {
        Self {
            inner,
            failing: None,
            stats,
        }
    }
}

impl<S: AsyncWrite + Unpin> AlertFirst<S> {
    /// Passes `result` on, unless it is a TLS failure: then the stream is
    /// closed first, and the failure returned when that is done.
    fn judge<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(Err(e)) if TlsFailure::of(&e).is_some() => {
                if TlsFailure::of(&e) == Some(&TlsFailure::HandshakeTooLarge) {
                    self.stats.tls_handshake_too_large.inc();
                }
                self.failing = Some(e);
                self.finish_failing(cx)
            }
            other => other,
        }
    }

    /// Drives the close of a failed stream; then returns its failure.
    fn finish_failing<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        // The close's own errors do not matter: the stream has failed.
        let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        Poll::Ready(Err(self
            .failing
            .take()
            .unwrap_or_else(|| io::Error::other("TLS stream failed"))))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AlertFirst<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failing.is_some() {
            return this.finish_failing(cx);
        }
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.judge(cx, read)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AlertFirst<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failing.is_some() {
            return this.finish_failing(cx);
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.judge(cx, written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failing.is_some() {
            return this.finish_failing(cx);
        }
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        this.judge(cx, flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
