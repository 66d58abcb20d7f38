//! Upstream: the HTTP/1.1 client that carries requests to pool servers, with
//! keep-alive connection reuse and the connect and response timeouts.
//!
//! Each server keeps its own stack of HTTP/1.1 connections ([`Connections`]).
//! A connection goes back on the stack as soon as its response head is in;
//! while its body is still streaming hyper reports it not ready and it is
//! passed over, so returning it needs no task or hook per request. The most
//! recently used ready connection is taken first (its socket is warm and the
//! others can age out).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::Body;
use crate::pool::Server;

/// How long an idle connection is kept for reuse.
const IDLE_KEEP: Duration = Duration::from_secs(60);

/// How an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be made (refused, unreachable, timed out).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection failed before a response head arrived (reset, EOF,
    /// malformed response).
    #[error("no valid response: {0}")]
    Response(String),
    /// No response head within `upstream_response`.
    #[error("no response within the upstream_response timeout")]
    Timeout,
    /// The client's request body failed while it was being sent (bad
    /// chunking, a disconnect): the client's fault, not the server's.
    #[error("the request body failed: {0}")]
    RequestBody(String),
}

impl UpstreamError {
    /// Whether the exchange failed before any response byte came back
    /// (connect refused, reset before the status line), so an idempotent
    /// request without a body may be retried on another server.
    pub fn before_response(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::Response(_))
    }
}

/// Keep-alive connections to one server: idle ones, and busy ones whose
/// response body is still being read.
#[derive(Default)]
pub struct Connections {
    stack: Mutex<Vec<Pooled>>,
}

struct Pooled {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Connections {
    /// Takes the most recently used connection that can carry a request now,
    /// dropping those that closed or sat idle too long.
    fn take(&self, now: Instant) -> Option<SendRequest<Body>> {
        let mut stack = self.stack.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = stack.len();
        while i > 0 {
            i -= 1;
            let c = &stack[i];
            if c.sender.is_closed() {
                stack.swap_remove(i);
            } else if c.sender.is_ready() {
                let c = stack.swap_remove(i);
                if now.duration_since(c.since) < IDLE_KEEP {
                    return Some(c.sender);
                }
            }
        }
        None
    }

    /// Puts a connection back once its response head is in.
    fn put(&self, sender: SendRequest<Body>, now: Instant) {
        if !sender.is_closed() {
            let mut stack = self.stack.lock().unwrap_or_else(PoisonError::into_inner);
            stack.push(Pooled { sender, since: now });
        }
    }

    /// Connections held (idle or busy), for tests.
    pub fn len(&self) -> usize {
        self.stack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The timeouts every upstream exchange of a configuration runs under.
#[derive(Clone, Debug)]
pub struct Upstream {
    response_timeout: Duration,
    connect_timeout: Duration,
}

impl Upstream {
    /// A client with these timeouts.
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        Upstream {
            response_timeout,
            connect_timeout,
        }
    }

    /// Whether this client was built with these timeouts (so a reload can keep it).
    pub fn has_timeouts(&self, connect: Duration, response: Duration) -> bool {
        self.connect_timeout == connect && self.response_timeout == response
    }

    /// Sends a request (origin-form URI) to `server` over a kept-alive
    /// connection or a new one, and waits for the response head.
    pub async fn send(
        &self,
        server: &Server,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.exchange(server, req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(r) => r,
        }
    }

    async fn exchange(
        &self,
        server: &Server,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // Bounded: each pass takes a pooled connection off the stack, or
        // opens a new one and ends.
        loop {
            let (mut sender, fresh) = match server.connections.take(Instant::now()) {
                Some(sender) => (sender, false),
                None => (self.connect(server).await?, true),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    server.connections.put(sender, Instant::now());
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // The kept-alive connection closed before the request
                    // went out: nothing was sent, try the next one.
                    Some(unsent) if !fresh => req = unsent,
                    _ => {
                        let e = e.into_error();
                        let msg = error_chain(&e);
                        return Err(if request_body_failed(&e) {
                            UpstreamError::RequestBody(msg)
                        } else {
                            UpstreamError::Response(msg)
                        });
                    }
                },
            }
        }
    }

    /// Opens a connection to `server`; its driver runs in its own task until
    /// the connection closes.
    async fn connect(&self, server: &Server) -> Result<SendRequest<Body>, UpstreamError> {
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*server.addr))
                .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => return Err(UpstreamError::Connect(e.to_string())),
                Err(_) => return Err(UpstreamError::Connect("timed out".to_string())),
            };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %error_chain(&e), "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
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

/// An error and its sources, joined, for logs an operator can act on.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
