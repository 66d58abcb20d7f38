//! Client: the HTTP/1.1 client that carries requests to pool servers, with
//! keep-alive connection reuse ([`super::keepalive`]) and the response
//! timeout (the route's, given with each request).
//!
//! The request using a connection drives it, first while waiting for the
//! response head and then from the response body ([`Pulled`]), so a
//! response reaches the client without a hop between tasks; once the body
//! has ended the connection goes back on its server's stack.
//!
//! [`handshake`] is the one HTTP/1.1 handshake every upstream connection
//! goes through: pool requests here, WebSocket handshakes and health checks.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::Body;
use super::connect::connect;
use super::error::UpstreamError;
use super::keepalive::Conn;
use super::server::Server;

/// A response body from a pool server. It drives the connection it arrives
/// on, and puts the connection back on the server's stack once it has ended.
pub struct Pulled {
    body: Incoming,
    /// The connection, until the body has ended.
    conn: Option<Conn>,
    /// The server it came from, whose stack the connection goes back on.
    server: Arc<Server>,
}

impl Pulled {
    /// The server sending this body.
    pub(crate) fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Gives the connection back for reuse if it is idle and open (one more
    /// poll lets hyper finish the exchange's bookkeeping); else closes it.
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(mut conn) = self.conn.take()
            && (conn.ready()
                || conn.poll_folded(cx, |conn, cx| Poll::Ready(conn.drive(cx) && conn.ready()))
                    == Poll::Ready(true))
        {
            self.server.connections.put(conn, Instant::now());
        }
    }
}

impl http_body::Body for Pulled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.conn.is_none() && this.body.is_end_stream() {
            // Released after its last byte: nothing drives the channel now.
            return Poll::Ready(None);
        }
        // The body first, so that hyper sees it wanted before the
        // connection is polled to fill it.
        let body = &mut this.body;
        let r = match this.conn.as_mut() {
            Some(conn) => conn.poll_folded(cx, |conn, cx| {
                let r = Pin::new(&mut *body).poll_frame(cx);
                if r.is_pending() && conn.drive(cx) {
                    return Pin::new(&mut *body).poll_frame(cx);
                }
                r
            }),
            None => Pin::new(body).poll_frame(cx),
        };
        match &r {
            Poll::Ready(None) => this.release(cx),
            // hyper stops polling once the body says it has ended.
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(cx),
            // A body that failed leaves the connection in no state to reuse.
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
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
    /// The request comes boxed: an `async fn` keeps its arguments in its
    /// future beside the locals they move into, so a request passed by
    /// value would be laid out in this future and in `exchange`'s, and
    /// copied with them, on every request.
    pub(crate) async fn send(
        &self,
        server: &Arc<Server>,
        req: Box<Request<Body>>,
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
        match tokio::time::timeout_at(deadline, self.exchange(server, req, now)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(r) => r,
        }
    }

    async fn exchange(
        &self,
        server: &Arc<Server>,
        mut req: Box<Request<Body>>,
        now: Instant,
    ) -> Result<Response<Pulled>, UpstreamError> {
        // Bounded: each pass takes a kept connection off the stack, or
        // opens a new one and ends.
        loop {
            let (mut conn, fresh) = match server.connections.take(now) {
                Some(conn) => (conn, false),
                // Boxed: a connect's future is large and rarely needed.
                None => (Box::pin(self.connect(server)).await?, true),
            };
            if !fresh {
                // One poll finds a connection the server closed while it was
                // idle, and readies a live one for the next request.
                let alive = std::future::poll_fn(|cx| {
                    conn.poll_folded(cx, |conn, cx| Poll::Ready(conn.drive(cx)))
                })
                .await;
                if !alive || !conn.ready() {
                    continue;
                }
            }
            // The driver is polled next, in the same poll: no wake needed.
            let unboxed = *req;
            let mut response = pin!(conn.quietly(|sender| sender.try_send_request(unboxed)));
            let result = std::future::poll_fn(|cx| {
                conn.poll_folded(cx, |conn, cx| {
                    conn.drive(cx);
                    response.as_mut().poll(cx)
                })
            })
            .await;
            match result {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let mut body = Pulled {
                        body,
                        conn: Some(conn),
                        server: server.clone(),
                    };
                    if http_body::Body::is_end_stream(&body.body) {
                        // No body to read (HEAD, 204, 304, length 0): the
                        // body will never be polled, so give it back now.
                        std::future::poll_fn(|cx| {
                            body.release(cx);
                            Poll::Ready(())
                        })
                        .await;
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // The kept-alive connection closed before the request
                    // went out: nothing was sent, try the next one.
                    Some(unsent) if !fresh => *req = unsent,
                    _ => {
                        let e = e.into_error();
                        return Err(if request_body_failed(&e) {
                            UpstreamError::RequestBody(e)
                        } else {
                            UpstreamError::Response(e)
                        });
                    }
                },
            }
        }
    }

    /// Opens a connection to `server`; the request that opened it drives it.
    async fn connect(&self, server: &Server) -> Result<Conn, UpstreamError> {
        let stream = connect(&server.address, self.connect_timeout).await?;
        let (sender, driver) = handshake(stream).await?;
        Ok(Conn::new(sender, driver))
    }
}

/// The HTTP/1.1 handshake on a new connection to a pool server. The one
/// every upstream connection goes through, so all speak to servers alike.
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

/// Whether hyper gave up because the request body (the client's stream) failed.
fn request_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return true;
        }
        src = s.source();
    }
    false
}
