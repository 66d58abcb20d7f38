//! Connection: one downstream connection, served by hyper (HTTP/1.1 or
//! HTTP/2), watched for the header and keep-alive idle timeouts, and closed
//! gracefully when the proxy drains.
//!
//! hyper's own header timer also runs while a keep-alive connection sits
//! idle, which would make `idle` no longer than `header`; so both timeouts
//! are kept here instead, from an [`Activity`] record the I/O wrapper and the
//! request service update.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
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
    /// Whether the bytes being read are (probably) an HTTP/1 request head,
    /// checked for line endings hyper tolerates but we refuse.
    scanning: AtomicBool,
    /// Where the scan of the current head is.
    scan: Mutex<HeadScan>,
    /// A head was ambiguous (see [`Activity::scan_head`]); its request is
    /// answered 400.
    bad_head: AtomicBool,
    /// Polls of the connection's future so far: a corked stream's bytes
    /// are due once this moves on (see [`Cork`]).
    polls: AtomicU32,
}

/// What [`Activity::scan_head`] has seen of one request head.
#[derive(Debug, Default)]
struct HeadScan {
    /// The last four bytes.
    window: u32,
    /// The start of the current line, lower-cased (enough for a name).
    line: [u8; 24],
    line_len: usize,
    content_length: u32,
    transfer_encoding: u32,
}

/// The last four bytes seen once `bytes` follow a stream whose last four
/// were `window`, as a big-endian word.
fn last_four(window: u32, bytes: &[u8]) -> u32 {
    bytes[bytes.len().saturating_sub(4)..]
        .iter()
        .fold(window, |w, &b| (w << 8) | u32::from(b))
}

/// Whether `line` starts with `name` (lower-case), in any case.
fn starts_with_name(line: &[u8], name: &[u8]) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
}

impl HeadScan {
    /// More of a line that goes on in the next read: keeps its start.
    fn push_line(&mut self, part: &[u8]) {
        let n = part.len().min(self.line.len() - self.line_len);
        self.line[self.line_len..self.line_len + n].copy_from_slice(&part[..n]);
        self.line_len += n;
    }

    /// A line ended (`last`: its part in this read): count the framing headers.
    fn end_line(&mut self, last: &[u8]) {
        let line = if self.line_len == 0 {
            last
        } else {
            self.push_line(last);
            &self.line[..self.line_len]
        };
        // Most lines start with neither name: one byte tells.
        match line.first() {
            Some(b'c' | b'C') if starts_with_name(line, b"content-length:") => {
                self.content_length += 1;
            }
            Some(b't' | b'T') if starts_with_name(line, b"transfer-encoding:") => {
                self.transfer_encoding += 1;
            }
            _ => {}
        }
        self.line_len = 0;
    }

    /// Whether the head's framing is ambiguous in a way hyper would
    /// quietly resolve (it drops Content-Length next to
    /// Transfer-Encoding and merges equal repeated ones).
    fn ambiguous(&self) -> bool {
        self.content_length > 1 || (self.content_length > 0 && self.transfer_encoding > 0)
    }
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_io_ms: AtomicU64::new(0),
            // The first request head is due `header` after the connection
            // starts, as with nginx's client_header_timeout.
            head_started_ms: AtomicU64::new(1),
            scanning: AtomicBool::new(true),
            scan: Mutex::new(HeadScan::default()),
            bad_head: AtomicBool::new(false),
            polls: AtomicU32::new(0),
        })
    }

    /// Looks at the raw bytes of an HTTP/1 request head for what hyper
    /// accepts but a proxy must refuse, since the server behind it may frame
    /// the request differently (RFC 9112 §6.3, §11.2): a bare LF line ending
    /// (hyper takes it as CRLF), Content-Length repeated (hyper merges equal
    /// values) or next to Transfer-Encoding (hyper drops it). Only the bytes
    /// from the start of a head, read while the connection was idle, to its
    /// blank line are looked at; a head pipelined behind an earlier request
    /// is not, and keeps hyper's own checks only.
    fn scan_head(&self, bytes: &[u8]) {
        if !self.scanning.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut scan) = self.scan.lock() else {
            return;
        };
        // Line end to line end: only a line's first bytes (for its name)
        // and the bytes around each LF are looked at.
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[start..nl];
            start = nl + 1;
            let window = last_four(scan.window, &bytes[..=nl]);
            if (window >> 8) & 0xff != u32::from(b'\r') {
                self.bad_head.store(true, Ordering::Relaxed);
                self.scanning.store(false, Ordering::Relaxed);
                return;
            }
            scan.end_line(line);
            if window == 0x0d0a_0d0a {
                if scan.ambiguous() {
                    self.bad_head.store(true, Ordering::Relaxed);
                }
                self.scanning.store(false, Ordering::Relaxed);
                return;
            }
        }
        scan.push_line(&bytes[start..]);
        scan.window = last_four(scan.window, bytes);
    }

    /// Whether the head just read used a bare LF (and clears the mark).
    fn take_bad_head(&self) -> bool {
        self.bad_head.swap(false, Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Bytes moved: the connection is not idle.
    fn touch(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
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
            // The state may change while this sleeps (a head starts, a
            // request ends), so never sleep past the shorter timeout: each
            // limit is then enforced within twice its length at worst.
            let wait = Duration::from_millis(deadline.saturating_sub(now).max(1))
                .min(header.min(idle).max(Duration::from_millis(1)));
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
        a.touch();
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Idle again: the next bytes start a new request head.
            if let Ok(mut scan) = a.scan.lock() {
                *scan = HeadScan::default();
            }
            a.scanning.store(true, Ordering::Relaxed);
        }
    }
}

/// Corked bytes are written out before the buffer grows past this (two
/// full TLS records).
const CORK_MAX: usize = 32 * 1024;

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
fn ambiguous_head_response() -> hyper::Response<proxy::ResponseBody> {
    let mut resp = hyper::Response::new(proxy::ResponseBody::plain(crate::body::Body::full(
        "bad request: ambiguous message framing (bare LF line ending, or Content-Length repeated or with Transfer-Encoding)\n",
    )));
    *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    resp
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
    if https { b } else { b.http1_only() }
}

/// Serves one accepted (and, for https, handshaken) connection until it
/// closes, times out, or `stop` is cancelled and its requests finish.
/// `h2`: TLS negotiated HTTP/2, whose writes are corked (see [`Cork`]).
pub async fn serve<IO>(
    shared: Arc<Shared>,
    io: IO,
    info: ConnInfo,
    h2: bool,
    stop: CancellationToken,
) where
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
    let b = builder(config, info.client.https);
    drop(generation);
    let io = Tracked {
        io,
        activity: activity.clone(),
        cork: h2.then(Cork::default),
    };
    let svc_shared = shared.clone();
    let svc_activity = activity.clone();
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = svc_activity.begin();
        let bad_head = svc_activity.take_bad_head() && req.version() < hyper::Version::HTTP_2;
        // Boxed: the request's future is several KiB, and hyper moves the
        // service future around (for HTTP/2 into a task of its own), which
        // then costs a pointer copy, not a memcpy of the whole state.
        let fut =
            (!bad_head).then(|| Box::pin(proxy::handle(svc_shared.clone(), info.clone(), req)));
        async move {
            let resp = match fut {
                Some(fut) => fut.await,
                None => ambiguous_head_response(),
            };
            Ok::<_, std::convert::Infallible>(resp.map(|b| b.with_active(guard)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time scan `scan_head` must agree with: whether the
    /// head was refused, and whether scanning stopped (at the blank line).
    fn reference(input: &[u8]) -> (bool, bool) {
        let (mut window, mut line) = (0u32, Vec::new());
        let (mut lengths, mut encodings) = (0, 0);
        for &b in input {
            if b == b'\n' {
                if window & 0xff != u32::from(b'\r') {
                    return (true, true);
                }
                lengths += usize::from(line.starts_with(b"content-length:"));
                encodings += usize::from(line.starts_with(b"transfer-encoding:"));
                line.clear();
            } else if b != b'\r' {
                line.push(b.to_ascii_lowercase());
            }
            window = (window << 8) | u32::from(b);
            if window == 0x0d0a_0d0a {
                return (lengths > 1 || (lengths > 0 && encodings > 0), true);
            }
        }
        (false, false)
    }

    #[test]
    fn head_scan_agrees_with_a_byte_at_a_time_scan_however_the_head_is_split() {
        let heads: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\nX: 1\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"GET / HTTP/1.1\r\nA-very-long-header-name-that-goes-on: v\r\ncontent-length:0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Type: x\r\nTE: trailers\r\ncontent-length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"\n",
            b"\r\n\r\n",
            b"",
        ];
        for head in heads {
            let want = reference(head);
            // Every split into two reads, and one read per byte.
            let mut splits: Vec<Vec<&[u8]>> = (0..=head.len())
                .map(|i| vec![&head[..i], &head[i..]])
                .collect();
            splits.push(head.chunks(1).collect());
            for parts in splits {
                let a = Activity::new();
                for part in parts {
                    a.scan_head(part);
                }
                let got = (
                    a.bad_head.load(Ordering::Relaxed),
                    !a.scanning.load(Ordering::Relaxed),
                );
                assert_eq!(got, want, "{:?}", String::from_utf8_lossy(head));
            }
        }
    }
}
