//! One DoH connection after its TLS handshake (or, behind a reverse proxy,
//! its accept): HTTP/2 goes to dotgate's own server ([`super::h2`]);
//! HTTP/1.1 runs hyper's server over the stream, with the limits DoT has
//! (idle, read and write timeouts, retirement, the drain).
//!
//! For HTTP/1.1, hyper owns the framing; this module owns the connection's
//! life. A request head begun and not finished within `--read-timeout`
//! ([`super::watch`]) closes the connection at once. It closes gracefully
//! (the end of keep-alive) when the connection has been idle, has lived
//! `--max-connection-age`, or on shutdown (`--max-queries-per-connection`
//! is DoT's: an HTTP client spreads its requests over connections of its
//! own accord); the requests in progress are answered first, within the
//! write timeout and the TLS linger, after which the connection is dropped
//! whatever the client does.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::activity::Activity;
use super::alert_first::AlertFirst;
use super::h1::{self, Context};
use super::protocol::Protocol;
use super::watch::Watched;
use crate::metrics::stats::CloseReason;
use crate::server::client::Client;
use crate::server::connection::{retire_after, Shared};
use crate::tls::server_stream::LINGER;

/// HTTP/1.1 read buffer: a request line with the largest GET, and headers.
const MAX_HTTP1_BUFFER: usize = 96 * 1024;

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
    match protocol {
        Protocol::Http2 => super::h2::serve(io, client, shared, shutdown).await,
        // Boxed: hyper's connection state is kilobytes, and unboxed it would
        // size every HTTP/2 connection's task too.
        Protocol::Http1 => Box::pin(serve_http1(io, client, shared, shutdown)).await,
    }
}

/// Serves one HTTP/1.1 connection with hyper until it closes.
async fn serve_http1<S>(
    io: S,
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
        // A request head is whole once hyper hands it over.
        ctx.activity.message_ended();
        async move { Ok::<_, Infallible>(h1::respond(req, &ctx).await) }
    });
    let io = TokioIo::new(Watched::new(
        AlertFirst::new(io, shared.stats.clone()),
        activity.clone(),
    ));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Not hyper's: it runs while a keep-alive connection waits for its
        // next request too, and would close it at the read timeout instead
        // of the idle timeout. The read timeout of a head begun is judged
        // below (slow loris).
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_HTTP1_BUFFER)
        .serve_connection(io, service);
    let ended = run(conn, &activity, limits, (&shutdown, &close), |c| {
        c.graceful_shutdown()
    })
    .await;
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
