//! Connection: one downstream connection, served by hyper (HTTP/1.1 or
//! HTTP/2), watched for the header and keep-alive idle timeouts (its
//! [`Activity`]), and closed gracefully when the proxy drains.
//!
//! It knows nothing of what a request does: [`serve`] is generic over the
//! handler, and [`ConnInfo`], what the connection knows of itself, reaches
//! the handler as a [`proxy::Downstream`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::conn::auto::upgrade::downcast;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::activity::{ActiveGuard, Activity};
use crate::config::Config;
use crate::forwarded;
use crate::prefixed::Prefixed;
use crate::proxy;
use crate::routing::Site;
use crate::sendfile::{Spans, Zerocopy};
use crate::socket::TcpSocket;
use crate::tls::TlsRecords;
use crate::websocket;

/// What a connection knows about itself, shared by its requests.
pub struct ConnInfo {
    /// Who the client is (TCP peer, PROXY header, trust).
    pub client: forwarded::Client,
    /// The site whose certificate the TLS handshake presented.
    pub tls_site: Option<Arc<Site>>,
    /// The port of the first https listener, for redirects.
    pub https_port: u16,
    /// The connection's activity record, for its idle timeout.
    activity: Option<Arc<Activity>>,
    /// Where file bodies queue files for `sendfile` (plain HTTP only).
    sendfile: Option<Arc<Spans>>,
}

impl ConnInfo {
    /// A connection's facts, before it is served.
    pub fn new(client: forwarded::Client, tls_site: Option<Arc<Site>>, https_port: u16) -> Self {
        ConnInfo {
            client,
            tls_site,
            https_port,
            activity: None,
            sendfile: None,
        }
    }

    /// The facts of a plain-HTTP connection served over [`Zerocopy`] with
    /// these `spans`.
    pub fn with_sendfile(self, spans: Arc<Spans>) -> Self {
        ConnInfo {
            sendfile: Some(spans),
            ..self
        }
    }
}

impl proxy::Downstream for ConnInfo {
    fn client(&self) -> &forwarded::Client {
        &self.client
    }

    fn tls_site(&self) -> Option<&Arc<Site>> {
        self.tls_site.as_ref()
    }

    fn https_port(&self) -> u16 {
        self.https_port
    }

    fn hold(&self) -> Option<ActiveGuard> {
        self.activity.as_ref().map(Activity::begin)
    }

    fn upgraded_end(&self) -> websocket::EndFromUpgrade {
        upgraded_end
    }

    fn sendfile(&self) -> Option<&Arc<Spans>> {
        self.sendfile.as_ref()
    }
}

/// What a downstream HTTPS connection is served over (see [`serve`]).
type ServedTls = TokioIo<Tracked<TlsRecords>>;
/// What a downstream plain-HTTP connection is served over.
type ServedPlain = TokioIo<Tracked<Zerocopy<Prefixed<TcpSocket>>>>;

/// The client's end of an upgraded connection, taken back to the TLS or
/// TCP stream underneath (hyper hands it over boxed, with this module's
/// wrappers still on); an HTTP/2 stream stays as it is.
fn upgraded_end(upgraded: Upgraded) -> io::Result<websocket::End> {
    let upgraded = match downcast::<ServedTls>(upgraded) {
        Ok(parts) => {
            let tls = parts.io.into_inner().into_inner();
            return Ok(websocket::End::client_tls(tls, parts.read_buf));
        }
        Err(upgraded) => upgraded,
    };
    Ok(match downcast::<ServedPlain>(upgraded) {
        Ok(parts) => {
            let stream = parts.io.into_inner().into_inner().into_inner();
            websocket::End::client_plain(stream, parts.read_buf)
        }
        Err(upgraded) => websocket::End::upgraded(upgraded),
    })
}

/// Corked bytes are written out before the buffer grows past this (two
/// full TLS records).
const CORK_MAX: usize = 32 * 1024;
/// What a batch of corked writes starts with: one TLS record's plaintext,
/// room for about a dozen small responses.
const CORK_FIRST: usize = 16 * 1024;

/// An HTTP/2 connection's writes, held back to the end of the connection
/// task's poll.
///
/// h2 writes and flushes each response's frames as it goes (a DATA frame
/// is flushed before the next frame is encoded), and over TLS each flush
/// is a record and a `writev`. A poll that answers ten streams thus made
/// ten system calls where one will do: HAProxy sends about one write per
/// ten such responses. Bytes written in one poll of the connection are
/// kept here and go out, as one record, at the first I/O of the next poll
/// (the stream wakes its task to make sure there is one); so the other
/// tasks that were ready (streams finishing their responses) run first and
/// their frames join the same write.
#[derive(Debug, Default)]
struct Cork {
    buf: Vec<u8>,
    /// The poll (`Activity::polls`) in which the buffered bytes were held.
    held_in: Option<u32>,
}

pin_project_lite::pin_project! {
    /// An I/O stream that records activity (and, for HTTP/2, corks writes).
    pub struct Tracked<IO> {
        #[pin]
        io: IO,
        activity: Arc<Activity>,
        cork: Option<Cork>,
    }
}

impl<IO> Tracked<IO> {
    /// The stream, without the tracking (for a WebSocket session, which
    /// outlives the connection's timeouts). Only HTTP/1 connections are
    /// taken apart, and those are never corked, so nothing is held here.
    pub fn into_inner(self) -> IO {
        debug_assert!(self.cork.as_ref().is_none_or(|c| c.buf.is_empty()));
        self.io
    }
}

impl<IO: AsyncWrite> Tracked<IO> {
    /// Writes out and flushes what the cork holds.
    fn poll_uncork(
        mut io: Pin<&mut IO>,
        cork: &mut Cork,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !cork.buf.is_empty() {
            let n = ready!(io.as_mut().poll_write(cx, &cork.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            cork.buf.drain(..n);
        }
        cork.held_in = None;
        // An idle connection keeps no buffer.
        cork.buf = Vec::new();
        io.poll_flush(cx)
    }

    /// Takes `len` bytes (written by `put`) into the cork, first writing
    /// out what is due or would overflow it.
    fn poll_cork_write(
        mut io: Pin<&mut IO>,
        cork: &mut Cork,
        activity: &Activity,
        cx: &mut Context<'_>,
        len: usize,
        put: impl FnOnce(&mut Vec<u8>),
    ) -> Poll<io::Result<usize>> {
        let now = activity.polls.load(Ordering::Relaxed);
        let due = cork.held_in.is_some_and(|p| p != now);
        if due || cork.buf.len() + len > CORK_MAX {
            match Self::poll_uncork(io.as_mut(), cork, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if cork.buf.len() + len > CORK_MAX => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        if cork.held_in.is_none() {
            cork.held_in = Some(now);
            // There must be a next poll to write these out in.
            cx.waker().wake_by_ref();
        }
        if cork.buf.capacity() == 0 {
            // One allocation per batch, not a doubling (and copy) per frame.
            cork.buf.reserve(len.max(CORK_FIRST));
        }
        put(&mut cork.buf);
        activity.touch();
        Poll::Ready(Ok(len))
    }
}

impl<IO: AsyncRead + AsyncWrite> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if let Some(cork) = this.cork.as_mut()
            && cork
                .held_in
                .is_some_and(|p| p != this.activity.polls.load(Ordering::Relaxed))
            && let Poll::Ready(Err(e)) = Self::poll_uncork(this.io.as_mut(), cork, cx)
        {
            // Not writable yet: the write side's waker is set, and the
            // bytes go at the next flush.
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
            this.activity.scan_head(&buf.filled()[before..]);
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
        if let Some(cork) = this.cork {
            let put = |b: &mut Vec<u8>| b.extend_from_slice(buf);
            return Self::poll_cork_write(this.io, cork, this.activity, cx, buf.len(), put);
        }
        let r = this.io.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if let Some(cork) = this.cork {
            let len = bufs.iter().map(|b| b.len()).sum();
            let put = |b: &mut Vec<u8>| bufs.iter().for_each(|s| b.extend_from_slice(s));
            return Self::poll_cork_write(this.io, cork, this.activity, cx, len, put);
        }
        let r = this.io.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        // Corked, a vectored write is as cheap as a plain one.
        self.cork.is_some() || self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.cork.as_mut() {
            Some(cork) if !cork.buf.is_empty() => {
                if cork.held_in == Some(this.activity.polls.load(Ordering::Relaxed)) {
                    // Held to the next poll (and that poll is arranged).
                    Poll::Ready(Ok(()))
                } else {
                    Self::poll_uncork(this.io, cork, cx)
                }
            }
            _ => this.io.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if let Some(cork) = this.cork.as_mut() {
            ready!(Self::poll_uncork(this.io.as_mut(), cork, cx))?;
        }
        this.io.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A connection's future, counting its polls for [`Cork`] (only when
    /// its stream is corked: `activity` is `None` otherwise).
    struct Counted<F> {
        #[pin]
        inner: F,
        activity: Option<Arc<Activity>>,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Some(activity) = this.activity {
            activity.polls.fetch_add(1, Ordering::Relaxed);
        }
        this.inner.poll(cx)
    }
}

/// The answer to a request whose head [`Activity::scan_head`] refused.
fn ambiguous_head_response() -> http::Response<http_body_util::Full<Bytes>> {
    let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from_static(
        b"bad request: ambiguous message framing (bare LF line ending, or Content-Length repeated or with Transfer-Encoding)\n",
    )));
    *resp.status_mut() = http::StatusCode::BAD_REQUEST;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection counted as busy until it
    /// ends: the handler's body, or the connection's own refusal.
    pub struct Held<B> {
        #[pin]
        body: http_body_util::Either<B, http_body_util::Full<Bytes>>,
        active: Option<ActiveGuard>,
    }
}

impl<B> Held<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn new(
        body: http_body_util::Either<B, http_body_util::Full<Bytes>>,
        guard: ActiveGuard,
    ) -> Self {
        // Nothing left to send: the request is over once hyper writes the head.
        let active = (!http_body::Body::is_end_stream(&body)).then_some(guard);
        Held { body, active }
    }
}

impl<B> http_body::Body for Held<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let r = this.body.as_mut().poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(_))) if this.active.is_some() => {
                // hyper stops polling once the body says it has ended.
                if http_body::Body::is_end_stream(&*this.body) {
                    this.active.take();
                }
            }
            Poll::Ready(_) => {
                this.active.take();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// hyper's server settings for a configuration.
fn builder(config: &Config, https: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Both head and idle timeouts are `Activity`'s. hyper's own header
        // timer (30 s by default) would also run on an idle keep-alive
        // connection and close it at 30 s whatever `idle` says.
        .header_read_timeout(None)
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
    if https {
        b
    } else {
        // Queued writes keep each body chunk a slice of its own, which
        // `sendfile`'s placeholders rely on (see `crate::sendfile`).
        b.http1().writev(true);
        b.http1_only()
    }
}

/// Serves one accepted (and, for https, handshaken) connection until it
/// closes, times out, or `stop` is cancelled and its requests finish. Each
/// request goes to `handler` with the connection's [`ConnInfo`].
/// `h2`: TLS negotiated HTTP/2, whose writes are corked (see [`Cork`]).
///
/// `stop` should be this connection's own (a child token): it is polled on
/// every wake of the connection, and polling a token locks its node and
/// its waiter list, which one token shared by every connection would make
/// both workers write on every request.
pub async fn serve<IO, H, F, B>(
    config: &Config,
    io: IO,
    info: ConnInfo,
    h2: bool,
    stop: CancellationToken,
    handler: H,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Arc<ConnInfo>, hyper::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = hyper::Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (header, idle) = (config.timeouts.header, config.timeouts.idle);
    let activity = Activity::new();
    let info = Arc::new(ConnInfo {
        activity: Some(activity.clone()),
        ..info
    });
    let b = builder(config, info.client.https);
    let io = Tracked {
        io,
        activity: activity.clone(),
        cork: h2.then(Cork::default),
    };
    let svc_activity = activity.clone();
    let handler = Arc::new(handler);
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let guard = svc_activity.begin();
        let bad_head = svc_activity.take_bad_head() && req.version() < hyper::Version::HTTP_2;
        // Boxed: the request's future is several KiB, and hyper moves the
        // service future around (for HTTP/2 into a task of its own), which
        // then costs a pointer copy, not a memcpy of the whole state.
        let fut = (!bad_head).then(|| Box::pin(handler(info.clone(), req)));
        async move {
            let resp = match fut {
                Some(fut) => fut.await.map(http_body_util::Either::Left),
                None => ambiguous_head_response().map(http_body_util::Either::Right),
            };
            Ok::<_, std::convert::Infallible>(resp.map(|b| Held::new(b, guard)))
        }
    });
    let conn = Counted {
        inner: b.serve_connection_with_upgrades(TokioIo::new(io), service),
        activity: h2.then(|| activity.clone()),
    };
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
    conn.as_mut().project().inner.graceful_shutdown();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error while draining");
            }
        }
        () = activity.expired(header, idle) => {}
    }
}
