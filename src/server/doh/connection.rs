//! One DoH connection after its TLS handshake (or, behind a reverse proxy,
//! its accept): hyper's HTTP/1.1 or HTTP/2 server over the stream, with the
//! limits DoT has (idle, read and write timeouts, in-flight requests,
//! retirement, the drain) and those HTTP/2 needs against floods.
//!
//! hyper owns the framing; this module owns the connection's life. A
//! request head or HTTP/2 frame begun and not finished within
//! `--read-timeout` ([`super::watch`]) closes the connection at once. It
//! closes gracefully (HTTP/2 GOAWAY, or the end of keep-alive on HTTP/1.1)
//! when the connection has been idle, has lived `--max-connection-age`, or
//! on shutdown (`--max-queries-per-connection` is DoT's: an HTTP client
//! spreads its requests over connections of its own accord); the
//! requests in progress are answered first, within the write timeout and
//! the TLS linger, after which the connection is dropped whatever the client
//! does.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::activity::Activity;
use super::alert_first::AlertFirst;
use super::exchange::{self, Context};
use super::protocol::Protocol;
use super::watch::Watched;
use crate::metrics::stats::CloseReason;
use crate::server::client::Client;
use crate::server::connection::{retire_after, Shared};
use crate::tls::server_stream::LINGER;

/// Header block a request may send, in bytes: DoH requests carry a few
/// short headers (a GET's URI holds at most a 64 KiB message in base64).
/// Bounds what a client can make dotgate hold for one stream, and what a
/// CONTINUATION flood can pile up.
const MAX_HEADER_LIST: u32 = 96 * 1024;

/// HTTP/1.1 read buffer: a request line with the largest GET, and headers.
const MAX_HTTP1_BUFFER: usize = 96 * 1024;

/// Flow-control windows: a stream carries one message of at most 64 KiB
/// each way, and a connection a few of them at once. Small windows bound
/// what a client that sends bodies and never reads replies can make dotgate
/// hold.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;

/// Replies a connection may buffer for a client not reading them.
const MAX_SEND_BUFFER: usize = 128 * 1024;

/// Streams a client may reset before hyper has answered them, and streams
/// dotgate itself may reset for errors, before the connection is closed
/// with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
const MAX_PENDING_RESETS: usize = 32;
const MAX_ERROR_RESETS: usize = 256;

/// Serves one DoH connection until it closes; returns why.
pub async fn serve<S>(
    io: S,
    protocol: Protocol,
    client: Client,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let close = CancellationToken::new();
    let timeouts = shared.timeouts;
    let limits = Limits {
        idle: timeouts.idle,
        close_within: timeouts.idle + LINGER,
        max_age: shared.max_age,
        read: timeouts.read,
    };
    let ctx = Arc::new(Context {
        client,
        shared: shared.clone(),
        activity: activity.clone(),
        close: close.clone(),
    });
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        // An HTTP/1.1 request head is whole once hyper hands it over (on
        // HTTP/2 the frames say so).
        if protocol == Protocol::Http1 {
            ctx.activity.message_ended();
        }
        async move { Ok::<_, Infallible>(exchange::respond(req, &ctx).await) }
    });
    let io = TokioIo::new(Watched::new(
        AlertFirst::new(io, shared.stats.clone()),
        protocol,
        activity.clone(),
    ));
    let ended = match protocol {
        Protocol::Http1 => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                // Not hyper's: it runs while a keep-alive connection waits
                // for its next request too, and would close it at the read
                // timeout instead of the idle timeout. The read timeout of
                // a head begun is judged below (slow loris).
                .header_read_timeout(None)
                .keep_alive(true)
                .max_buf_size(MAX_HTTP1_BUFFER)
                .serve_connection(io, service);
            run(conn, &activity, limits, (&shutdown, &close), |c| {
                c.graceful_shutdown()
            })
            .await
        }
        Protocol::Http2 => {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(u32::try_from(shared.max_inflight).unwrap_or(u32::MAX))
                .max_header_list_size(MAX_HEADER_LIST)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_send_buf_size(MAX_SEND_BUFFER)
                .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
                .max_local_error_reset_streams(MAX_ERROR_RESETS);
            let conn = builder.serve_connection(io, service);
            run(conn, &activity, limits, (&shutdown, &close), |c| {
                c.graceful_shutdown()
            })
            .await
        }
    };
    match ended {
        Ok(reason) => reason,
        Err(e) => {
            tracing::debug!(error = %e, "DoH connection failed");
            if e.is_timeout() {
                CloseReason::ReadTimeout
            } else {
                CloseReason::Error
            }
        }
    }
}

/// When a connection is closed.
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle: Duration,
    /// From the decision to close to the connection's end, at most.
    close_within: Duration,
    max_age: Option<Duration>,
    /// How long something the client began may take to finish.
    read: Duration,
}

/// Drives `conn` until it ends, asking it to close gracefully at the first
/// of the idle timeout, the maximum age, shutdown, or `close` (a
/// rate-limited client); it is dropped if it
/// has not ended `close_within` after that, and at once when what the
/// client began is not finished within the read timeout. The error of a
/// connection that failed before any of those is returned.
async fn run<C>(
    conn: C,
    activity: &Activity,
    limits: Limits,
    (shutdown, close): (&CancellationToken, &CancellationToken),
    graceful: impl Fn(Pin<&mut C>),
) -> hyper::Result<CloseReason>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(conn);
    let too_old = retire_after(limits.max_age);
    tokio::pin!(too_old);
    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    let idle = tokio::time::sleep(limits.idle);
    tokio::pin!(idle);
    let unfinished = tokio::time::sleep(limits.read);
    tokio::pin!(unfinished);
    // Far enough never to fire before it is set.
    let forced = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(forced);
    let mut closing: Option<CloseReason> = None;
    loop {
        let reason = tokio::select! {
            biased;
            ended = conn.as_mut() => {
                return match (closing, ended) {
                    // Whatever the way out, the reason it was asked to close.
                    (Some(reason), _) => Ok(reason),
                    (None, Ok(())) => Ok(CloseReason::Client),
                    (None, Err(e)) => Err(e),
                };
            }
            _ = &mut forced, if closing.is_some() => {
                return Ok(closing.unwrap_or(CloseReason::Error));
            }
            _ = &mut unfinished => {
                let now = Instant::now();
                match activity.read_deadline(limits.read) {
                    Some(deadline) if deadline <= now => return Ok(CloseReason::ReadTimeout),
                    Some(deadline) => unfinished.as_mut().reset(deadline),
                    // Looked at again when something begun now would run
                    // out of time.
                    None => unfinished.as_mut().reset(now + limits.read),
                }
                continue;
            }
            _ = &mut stopping, if closing.is_none() => CloseReason::Shutdown,
            _ = close.cancelled(), if closing.is_none() => CloseReason::RateLimited,
            _ = &mut too_old, if closing.is_none() => CloseReason::Retired,
            _ = &mut idle, if closing.is_none() => {
                let now = Instant::now();
                match activity.idle_deadline(limits.idle) {
                    Some(deadline) if deadline <= now => CloseReason::Idle,
                    // A request ended meanwhile, or one is in progress:
                    // look again when the timeout could have run out.
                    Some(deadline) => {
                        idle.as_mut().reset(deadline);
                        continue;
                    }
                    None => {
                        idle.as_mut().reset(now + limits.idle);
                        continue;
                    }
                }
            }
        };
        graceful(conn.as_mut());
        closing = Some(reason);
        forced.as_mut().reset(Instant::now() + limits.close_within);
    }
}
