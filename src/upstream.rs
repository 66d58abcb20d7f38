//! Upstream: the HTTP/1.1 client that carries requests to pool servers, with
//! keep-alive connection reuse and the connect and response timeouts.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;

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

/// The client shared by every pool; hyper pools idle connections per server.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    response_timeout: Duration,
    connect_timeout: Duration,
}

impl Upstream {
    /// A client with these timeouts.
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .retry_canceled_requests(true)
            .set_host(false)
            .build(connector);
        Upstream {
            client,
            response_timeout,
            connect_timeout,
        }
    }

    /// Whether this client was built with these timeouts (so a reload can keep it).
    pub fn has_timeouts(&self, connect: Duration, response: Duration) -> bool {
        self.connect_timeout == connect && self.response_timeout == response
    }

    /// Sends a request and waits for the response head.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let msg = error_chain(&e);
                if request_body_failed(&e) {
                    Err(UpstreamError::RequestBody(msg))
                } else if e.is_connect() {
                    Err(UpstreamError::Connect(msg))
                } else {
                    Err(UpstreamError::Response(msg))
                }
            }
        }
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
