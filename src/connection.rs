//! Connection: one downstream connection, served by hyper (HTTP/1.1 or
//! HTTP/2), watched for the header and keep-alive idle timeouts, and closed
//! gracefully when the proxy drains.
//!
//! hyper's own header timer also runs while a keep-alive connection sits
//! idle, which would make `idle` no longer than `header`; so both timeouts
//! are kept here instead, from an [`Activity`] record the I/O wrapper and the
//! request service update.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;

/// What a connection is doing, for its timeouts.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Requests whose response has not finished (and WebSocket sessions over HTTP/2).
    in_flight: AtomicUsize,
    /// Last byte read or written, ms since `epoch`.
    last_io_ms: AtomicU64,
    /// When the first byte of a new request head arrived, ms since `epoch`
    /// plus one (0: not reading a head).
    head_started_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_io_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms.store(now + 1, Ordering::Relaxed);
        }
    }

    /// Marks a request (or session) as active until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Resolves when the connection has been idle longer than `idle`, or a
    /// request head has taken longer than `header`.
    async fn expired(&self, header: Duration, idle: Duration) {
        loop {
            let now = self.now_ms();
            let head = self.head_started_ms.load(Ordering::Relaxed);
            let deadline = if self.in_flight.load(Ordering::Relaxed) > 0 {
                now + idle.as_millis() as u64
            } else if head != 0 {
                head - 1 + header.as_millis() as u64
            } else {
                self.last_io_ms.load(Ordering::Relaxed) + idle.as_millis() as u64
            };
            if deadline <= now && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            let wait = Duration::from_millis(deadline.saturating_sub(now).max(1));
            tokio::time::sleep(wait).await;
        }
    }
}

/// Keeps a connection out of its idle timeout while alive.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_io_ms.store(a.now_ms(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// An I/O stream that records activity.
    pub struct Tracked<IO> {
        #[pin]
        io: IO,
        activity: Arc<Activity>,
    }
}

impl<IO: AsyncRead> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        r
    }
}

impl<IO: AsyncWrite> AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity
                .last_io_ms
                .store(this.activity.now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity
                .last_io_ms
                .store(this.activity.now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// hyper's server settings for a configuration.
fn builder(config: &Config, https: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .max_buf_size(config.limits.max_header_bytes.max(8192))
        .half_close(false)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(256)
        .max_header_list_size(config.limits.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(None);
    if https { b } else { b.http1_only() }
}

/// Serves one accepted (and, for https, handshaken) connection until it
/// closes, times out, or `stop` is cancelled and its requests finish.
pub async fn serve<IO>(shared: Arc<Shared>, io: IO, info: ConnInfo, stop: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let generation = shared.generation.load_full();
    let config = &generation.config;
    let (header, idle) = (config.timeouts.header, config.timeouts.idle);
    let activity = Activity::new();
    let info = Arc::new(ConnInfo {
        activity: Some(activity.clone()),
        ..info
    });
    let b = builder(config, info.https);
    drop(generation);
    let io = Tracked {
        io,
        activity: activity.clone(),
    };
    let svc_shared = shared.clone();
    let svc_activity = activity.clone();
    let service = service_fn(move |req| {
        let guard = svc_activity.begin();
        let fut = proxy::handle(svc_shared.clone(), info.clone(), req);
        async move {
            let resp = fut.await;
            Ok::<_, std::convert::Infallible>(resp.map(|b| b.with_active(guard)))
        }
    });
    let conn = b.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        () = activity.expired(header, idle) => {
            tracing::debug!("connection timed out (header or idle)");
            return;
        }
        () = stop.cancelled() => {}
    }
    // Draining: finish what is in flight, accept nothing new.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error while draining");
            }
        }
        () = activity.expired(header, idle) => {}
    }
}
