//! Client: the HTTP/1.1 client that carries requests to pool servers, with
//! keep-alive connection reuse ([`super::keepalive`]) and the response
//! timeout (the route's, given with each request).
//!
//! It is ours rather than hyper's: the request using a connection writes
//! it and reads it itself, first for the response head ([`Upstream::send`])
//! and then from the response body ([`Pulled`]), with no channel, no
//! driver task and no envelope between them. hyper's client cost a tenth
//! of the CPU of a pool request under two workers (its request channel,
//! oneshot and dispatcher; bench/README.md, issue 20). The wire format is
//! in [`super::codec`].
//!
//! [`handshake`] is hyper's HTTP/1.1 handshake, which WebSocket handshakes
//! and health checks still go through.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::Body;
use super::codec::{self, Decoded, Decoder, Framing, Parsed};
use super::connect::connect;
use super::error::{ExchangeError, UpstreamError};
use super::keepalive::Conn;
use super::server::Server;

/// A response body from a pool server. It reads the connection it arrives
/// on, and puts the connection back on the server's stack once it has ended.
pub struct Pulled {
    /// The connection, until the body has ended or failed.
    conn: Option<Conn>,
    decoder: Decoder,
    /// The request's body, when the server answered before it was all sent.
    sending: Option<Box<Outgoing>>,
    /// Whether the server lets the connection carry another request.
    keep_alive: bool,
    /// The server it came from, whose stack the connection goes back on.
    server: Arc<Server>,
}

impl Pulled {
    /// The server sending this body.
    pub(crate) fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Gives the connection back for reuse if the exchange ended cleanly
    /// (the request all sent, nothing read past the response); else closes it.
    fn release(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && self.keep_alive
            && self.sending.is_none()
            && conn.buf().is_empty()
        {
            self.server.connections.put(conn, Instant::now());
        }
    }

    /// Sends more of a request body the server answered early.
    fn send_more(&mut self, cx: &mut Context<'_>) {
        let (Some(out), Some(conn)) = (self.sending.as_mut(), self.conn.as_mut()) else {
            return;
        };
        match out.poll_send(conn, cx) {
            Poll::Ready(Ok(())) => self.sending = None,
            Poll::Ready(Err(_)) => {
                // The response still counts; the connection is done after it.
                self.keep_alive = false;
                self.sending = None;
            }
            Poll::Pending => {}
        }
    }
}

impl http_body::Body for Pulled {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        if this.sending.is_some() {
            this.send_more(cx);
        }
        // Bounded: each pass takes bytes off the buffer or reads more.
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = match this.decoder.decode(conn.buf()) {
                Ok(d) => d,
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(ExchangeError::Protocol(e))));
                }
            };
            match decoded {
                Decoded::Data(data) => {
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::Trailers(t) => {
                    this.release();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Decoded::End => {
                    this.release();
                    return Poll::Ready(None);
                }
                Decoded::More => match conn.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) if this.decoder == Decoder::Close => {
                        // Its end is the connection's.
                        this.decoder = Decoder::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(0)) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(ExchangeError::Closed)));
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(ExchangeError::Io(e))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The connect timeout every upstream connection of a configuration opens
/// under.
#[derive(Clone, Debug)]
pub struct Upstream {
    connect_timeout: Duration,
}

impl Upstream {
    /// A client with this connect timeout.
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        Upstream { connect_timeout }
    }

    /// Whether this client was built with this connect timeout (so a
    /// reload can keep it).
    pub(crate) fn has_connect_timeout(&self, connect: Duration) -> bool {
        self.connect_timeout == connect
    }

    /// Sends a request (origin-form URI) to `server` over a kept-alive
    /// connection or a new one, and waits for the response head at most
    /// `response_timeout` (the route's `upstream_response`) from `now`.
    ///
    /// The request comes boxed, and is encoded where it lies: only its
    /// body moves on. The fields `added` are written after its own.
    pub(crate) async fn send(
        &self,
        server: &Arc<Server>,
        req: Box<Request<Body>>,
        added: &[(&HeaderName, HeaderValue)],
        now: Instant,
        response_timeout: Duration,
    ) -> Result<Response<Pulled>, UpstreamError> {
        // A timeout too large to add is as good as none (as tokio's own
        // `timeout` treats it).
        const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
        let deadline = now
            .checked_add(response_timeout)
            .unwrap_or_else(|| now + FAR);
        let deadline = tokio::time::Instant::from_std(deadline);
        let exchange = self.exchange(server, req, added, now);
        match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(r) => r,
        }
    }

    async fn exchange(
        &self,
        server: &Arc<Server>,
        mut req: Box<Request<Body>>,
        added: &[(&HeaderName, HeaderValue)],
        now: Instant,
    ) -> Result<Response<Pulled>, UpstreamError> {
        let mut out = Outgoing::new(&mut req, added);
        let method = std::mem::replace(req.method_mut(), Method::GET);
        drop(req);
        // The exchange may be repeated below: `out` is replaced, never moved.
        // A request with no body that may be repeated is sent again on a
        // new connection when a kept-alive one turns out closed under it.
        let again = out.body.is_none() && idempotent(&method);
        // Bounded: each pass takes a kept connection off the stack, or
        // opens a new one and ends.
        loop {
            let (mut conn, fresh) = match server.connections.take(now) {
                Some(conn) => (conn, false),
                // Boxed: a connect's future is large and rarely needed.
                None => (Box::pin(self.connect(server)).await?, true),
            };
            if !fresh && !std::future::poll_fn(|cx| Poll::Ready(conn.alive(cx))).await {
                continue;
            }
            let result =
                std::future::poll_fn(|cx| poll_exchange(&mut conn, &mut out, &method, cx)).await;
            let head = match result {
                Ok(head) => head,
                Err(e) if !fresh && again && e.is_connection_lost() => {
                    out.again();
                    continue;
                }
                Err(e) if e.is_request_body() => return Err(UpstreamError::RequestBody(e)),
                Err(e) => return Err(UpstreamError::Response(e)),
            };
            // A request still being sent goes on with the response body,
            // as the server may still be reading it.
            let keep_alive = head.keep_alive && out.state != Sending::Failed;
            let unsent = matches!(out.state, Sending::Head | Sending::Body);
            let mut body = Pulled {
                conn: Some(conn),
                decoder: head.body,
                sending: unsent.then(|| Box::new(out)),
                keep_alive,
                server: server.clone(),
            };
            if body.decoder.is_done() {
                // No body to read (HEAD, 204, 304, length 0): the body will
                // never be polled, so give the connection back now.
                body.release();
            }
            let mut resp = Response::new(body);
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            return Ok(resp);
        }
    }

    /// Opens a connection to `server`.
    async fn connect(&self, server: &Server) -> Result<Conn, UpstreamError> {
        let stream = connect(&server.address, self.connect_timeout).await?;
        Ok(Conn::new(stream))
    }
}

/// Methods whose requests may be sent twice (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Writes the request (until the server answers) and reads the response
/// head, skipping interim (1xx) responses.
fn poll_exchange(
    conn: &mut Conn,
    out: &mut Outgoing,
    method: &Method,
    cx: &mut Context<'_>,
) -> Poll<Result<codec::Head, ExchangeError>> {
    if out.state == Sending::Body || out.state == Sending::Head {
        match out.poll_send(conn, cx) {
            Poll::Ready(Ok(())) => {}
            // The server may have answered before it stopped reading (a
            // 413, say): its answer is still read.
            Poll::Ready(Err(ExchangeError::Io(e))) => out.failed = Some(e),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
    }
    // Bounded: each pass takes a head off the buffer or reads more.
    loop {
        match codec::parse_head(conn.buf(), method).map_err(ExchangeError::Protocol)? {
            Parsed::Final(head) => return Poll::Ready(Ok(head)),
            Parsed::Interim => continue,
            Parsed::Partial => {}
        }
        match conn.poll_fill(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(match out.failed.take() {
                    Some(e) => ExchangeError::Io(e),
                    None => ExchangeError::Closed,
                }));
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
        }
    }
}

/// Where a request's sending is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// The head (and no body) is being written.
    Head,
    /// The body is being written.
    Body,
    /// All of it is written.
    Done,
    /// Writing failed.
    Failed,
}

/// A request on its way to a server: bytes queued for the socket and the
/// body still to come.
struct Outgoing {
    /// The encoded head, kept whole so a bodiless request can go again.
    head: Vec<u8>,
    /// How much of the head is written.
    head_sent: usize,
    /// The body's bytes queued after the head.
    queue: Pieces,
    /// `None` once its end has been queued.
    body: Option<Body>,
    framing: Framing,
    /// The trailer fields the request announced (a chunked body's only).
    announced: Vec<HeaderName>,
    state: Sending,
    /// Why writing failed, until a response says otherwise.
    failed: Option<std::io::Error>,
}

/// The CRLF after a chunk's data.
const CRLF: Bytes = Bytes::from_static(b"\r\n");

impl Outgoing {
    /// Encodes `req`'s head (with the fields `added`) and takes its body.
    fn new(req: &mut Request<Body>, added: &[(&HeaderName, HeaderValue)]) -> Self {
        let body = std::mem::replace(req.body_mut(), Body::Empty);
        let body = (!body.is_end_stream()).then_some(body);
        let known = body.as_ref().map(|b| b.size_hint().exact());
        let mut head = Vec::new();
        // The headers are taken out (they are not needed again) so the
        // target can be borrowed beside them.
        let mut headers = std::mem::take(req.headers_mut());
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let framing =
            codec::encode_head(req.method(), target, &mut headers, added, known, &mut head);
        let announced = match framing {
            Framing::Chunked => codec::announced_trailers(&headers),
            Framing::Length(_) => Vec::new(),
        };
        let state = if body.is_some() {
            Sending::Body
        } else {
            Sending::Head
        };
        Outgoing {
            head,
            head_sent: 0,
            queue: Pieces::default(),
            body,
            framing,
            announced,
            state,
            failed: None,
        }
    }

    /// Readies a bodiless request to be sent again from its start.
    fn again(&mut self) {
        self.head_sent = 0;
        self.queue = Pieces::default();
        self.state = Sending::Head;
        self.failed = None;
    }

    /// Whether nothing is waiting to be written.
    fn written(&self) -> bool {
        self.head_sent == self.head.len() && self.queue.is_empty()
    }

    /// Drops the first `n` bytes waiting, which were written.
    fn advance(&mut self, n: usize) {
        let from_head = n.min(self.head.len() - self.head_sent);
        self.head_sent += from_head;
        self.queue.advance(n - from_head);
    }

    /// Writes what is queued and queues more of the body, until all is
    /// written (`Ready(Ok)`), the socket or the body has nothing ready, or
    /// either fails.
    fn poll_send(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeError>> {
        let r = self.poll_send_inner(conn, cx);
        match &r {
            Poll::Ready(Ok(())) => self.state = Sending::Done,
            Poll::Ready(Err(_)) => self.state = Sending::Failed,
            Poll::Pending => {}
        }
        r
    }

    fn poll_send_inner(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeError>> {
        let mut body_pending = false;
        // Bounded: each pass queues a frame of the body or writes some of
        // the queue; a socket or body with nothing ready returns.
        loop {
            // The head waits for the body's first frame, to go out with it.
            if !body_pending
                && self.queue.is_empty()
                && let Some(body) = self.body.as_mut()
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => body_pending = true,
                    Poll::Ready(frame) => {
                        self.queue_frame(frame)?;
                        continue;
                    }
                }
            }
            if self.written() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let mut slices = [IoSlice::new(&[]); PIECES + 1];
            slices[0] = IoSlice::new(&self.head[self.head_sent..]);
            let n = self.queue.slices(&mut slices[1..]);
            let first = usize::from(self.head_sent == self.head.len());
            match Pin::new(conn.io()).poll_write_vectored(cx, &slices[first..=n]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(ExchangeError::Io(
                        std::io::ErrorKind::WriteZero.into(),
                    )));
                }
                Poll::Ready(Ok(n)) => self.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
            }
        }
    }

    /// Queues a frame of the body (or its end) in the request's framing.
    fn queue_frame(
        &mut self,
        frame: Option<Result<Frame<Bytes>, super::BoxError>>,
    ) -> Result<(), ExchangeError> {
        let frame = match frame {
            None => return self.queue_end(None),
            Some(Err(e)) => return Err(ExchangeError::Body(e)),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => match &mut self.framing {
                Framing::Length(left) => {
                    *left = left
                        .checked_sub(data.len() as u64)
                        .ok_or(ExchangeError::BodyLength)?;
                    self.queue.push(data);
                }
                Framing::Chunked => {
                    self.queue.push(codec::chunk_line(data.len()));
                    self.queue.push(data);
                    self.queue.push(CRLF);
                }
            },
            Err(frame) => {
                return self.queue_end(frame.trailers_ref());
            }
        }
        if self.body.as_ref().is_some_and(|b| b.is_end_stream()) {
            self.queue_end(None)?;
        }
        Ok(())
    }

    /// Queues the body's end: a length must be met; chunked framing ends
    /// with the last chunk and the announced trailers.
    fn queue_end(&mut self, trailers: Option<&HeaderMap>) -> Result<(), ExchangeError> {
        self.body = None;
        match self.framing {
            Framing::Length(0) => Ok(()),
            Framing::Length(_) => Err(ExchangeError::BodyLength),
            Framing::Chunked => {
                self.queue
                    .push(codec::last_chunk(trailers, &self.announced));
                Ok(())
            }
        }
    }
}

/// Most pieces queued at once: one chunk (its size line, data and CRLF)
/// and the last chunk.
const PIECES: usize = 4;

/// The bytes queued for the socket, written with one `writev`.
#[derive(Default)]
struct Pieces {
    items: [Bytes; PIECES],
    start: usize,
    end: usize,
}

impl Pieces {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Queues `b` (dropped when empty). The queue is only added to when it
    /// is empty, so it never runs out of room.
    fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if self.end == PIECES {
            // Not reached (see above); joining keeps it correct if it were.
            let mut joined = Vec::with_capacity(self.items.iter().map(Bytes::len).sum());
            for item in &mut self.items[self.start..self.end] {
                joined.extend_from_slice(item);
                *item = Bytes::new();
            }
            self.items[0] = Bytes::from(joined);
            self.start = 0;
            self.end = 1;
        }
        self.items[self.end] = b;
        self.end += 1;
    }

    /// Fills `out` with the queued bytes; returns how many slices.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        for (slot, item) in out.iter_mut().zip(&self.items[self.start..self.end]) {
            *slot = IoSlice::new(item);
        }
        self.len()
    }

    /// Drops the first `n` bytes, which were written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.start < self.end {
            let item = &mut self.items[self.start];
            if n < item.len() {
                item.advance(n);
                return;
            }
            n -= item.len();
            *item = Bytes::new();
            self.start += 1;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// hyper's HTTP/1.1 handshake on a new connection to a pool server, for the
/// WebSocket handshakes and health checks.
pub(crate) async fn handshake<T>(
    io: T,
) -> Result<(SendRequest<Body>, http1::Connection<TokioIo<T>, Body>), UpstreamError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Handshake)
}
