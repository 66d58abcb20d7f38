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
/// Most connections kept per server; past it a connection is closed once
/// its response is done instead of going back on the stack.
const MAX_KEPT: usize = 512;
/// How often a server's whole stack is swept for closed and stale
/// connections (between sweeps only its top is looked at).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

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
///
/// Closed connections and ones idle past `IDLE_KEEP` are dropped as the
/// stack is used (dropping a connection's sender closes it); a server that
/// gets no requests at all keeps its idle connections until it closes them.
#[derive(Default)]
pub struct Connections {
    stack: Mutex<Stack>,
}

#[derive(Default)]
struct Stack {
    conns: Vec<Pooled>,
    swept: Option<Instant>,
}

struct Pooled {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Stack {
    /// Drops closed and stale connections, every `SWEEP_EVERY`.
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.conns.retain(|c| {
            let stale = c.sender.is_ready() && now.duration_since(c.since) >= IDLE_KEEP;
            !(c.sender.is_closed() || stale)
        });
    }
}

impl Connections {
    /// Takes the most recently used connection that can carry a request now,
    /// dropping those that closed or sat idle too long.
    fn take(&self, now: Instant) -> Option<SendRequest<Body>> {
        let mut stack = self.stack.lock().unwrap_or_else(PoisonError::into_inner);
        stack.sweep(now);
        let conns = &mut stack.conns;
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            let c = &conns[i];
            if c.sender.is_closed() {
                conns.swap_remove(i);
            } else if c.sender.is_ready() {
                let c = conns.swap_remove(i);
                if now.duration_since(c.since) < IDLE_KEEP {
                    return Some(c.sender);
                }
            }
        }
        None
    }

    /// Puts a connection back once its response head is in (or lets it
    /// close after its response, when `MAX_KEPT` are kept already).
    fn put(&self, sender: SendRequest<Body>, now: Instant) {
        if sender.is_closed() {
            return;
        }
        let mut stack = self.stack.lock().unwrap_or_else(PoisonError::into_inner);
        stack.sweep(now);
        if stack.conns.len() < MAX_KEPT {
            stack.conns.push(Pooled { sender, since: now });
        }
    }

    /// Connections kept (idle, or finishing a response body).
    pub fn kept(&self) -> usize {
        self.stack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conns
            .len()
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
                // Boxed: a connect's future is large and rarely needed.
                None => (Box::pin(self.connect(server)).await?, true),
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
        let tcp = connect_tcp(&server.addr, self.connect_timeout).await?;
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

/// Opens a TCP connection to a pool server (`Nagle` off), within `timeout`.
pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(UpstreamError::Connect(e.to_string())),
        Err(_) => Err(UpstreamError::Connect("timed out".to_string())),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use hyper::body::Bytes;
    use tokio::net::TcpListener;

    use super::*;
    use crate::metrics::Metrics;

    /// Bound on every wait in these tests.
    const WAIT: Duration = Duration::from_secs(10);

    /// A keep-alive backend answering "ok"; counts the connections it accepts
    /// and closes each after `per_conn` requests (0: never).
    async fn backend(per_conn: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let served = Arc::new(AtomicUsize::new(0));
                let svc = hyper::service::service_fn(move |_req| {
                    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                    async move {
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                        if n == per_conn {
                            resp.headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (addr, accepted)
    }

    async fn get(up: &Upstream, server: &Server) {
        let req = Request::get("/").body(Body::empty()).unwrap();
        let resp = tokio::time::timeout(WAIT, up.send(server, req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Read the body to its end, as the proxy does.
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap();
    }

    /// Waits (bounded) until the server's kept connections are ready again.
    async fn settle(server: &Server) {
        for _ in 0..1000 {
            let ready = {
                let stack = server.connections.stack.lock().unwrap();
                stack
                    .conns
                    .iter()
                    .all(|c| c.sender.is_ready() || c.sender.is_closed())
            };
            if ready {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("connections did not become ready");
    }

    #[tokio::test]
    async fn a_connection_is_reused_dropped_when_stale_and_replaced_when_closed() {
        let metrics = Metrics::new();
        let up = Upstream::new(WAIT, WAIT);

        let (addr, accepted) = backend(0).await;
        let server = Server::new(&addr, &metrics, "s", "p").unwrap();
        for _ in 0..5 {
            get(&up, &server).await;
            settle(&server).await;
        }
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "one connection, reused"
        );
        assert_eq!(server.connections.kept(), 1);

        // Idle past IDLE_KEEP: not handed out, dropped.
        let now = Instant::now();
        let sender = server.connections.take(now).unwrap();
        server
            .connections
            .put(sender, now - IDLE_KEEP - Duration::from_secs(1));
        assert!(server.connections.take(now).is_none());
        assert_eq!(server.connections.kept(), 0);
        get(&up, &server).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "a new connection");

        // A backend that closes after each response: every request gets a
        // fresh connection and nothing closed is kept.
        let (addr, accepted) = backend(1).await;
        let server = Server::new(&addr, &metrics, "s", "q").unwrap();
        for i in 1..=3 {
            get(&up, &server).await;
            assert_eq!(accepted.load(Ordering::Relaxed), i);
            for _ in 0..1000 {
                if server.connections.take(Instant::now()).is_none() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(server.connections.kept(), 0);
    }
}
