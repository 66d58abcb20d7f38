//! Errors: how an exchange with a pool server fails, who caused a failure
//! ([`Fault`]), and whether it may be retried on another server
//! ([`Failure::retry_safe`]).
//!
//! An error keeps the real cause (`io::Error`, `hyper::Error`) as its
//! `source()`, for code that needs to look at it, and its message spells
//! the cause chain out as well: a log line or a client's error text then
//! reads whole without anyone walking the chain.

use std::error::Error;
use std::fmt;
use std::time::Duration;

/// Errors a body can yield while streaming.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Who caused a failed request: where an operator should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The client (a broken, cut off or oversized request body).
    Client,
    /// A pool server, or the pool's capacity (refused, reset, slow, busy, down).
    Upstream,
    /// The proxy itself (a temporary file it could not write).
    Proxy,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Proxy => "proxy",
        })
    }
}

/// What a failure on a request's way to a server says about itself; one
/// interface for [`UpstreamError`], `PoolError` and `BufferError`, so the
/// retry policy and logs treat them alike.
pub(crate) trait Failure: Error {
    /// Who caused it.
    fn fault(&self) -> Fault;

    /// Whether sending the request again, to another server, is safe after
    /// this failure, for an idempotent request whose body can be sent again
    /// (RFC 9110 §9.2.2): true when the server answered nothing the client
    /// has seen and is not still working on it.
    fn retry_safe(&self) -> bool;
}

/// How an exchange with a pool server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be made (refused, unreachable).
    #[error("connect failed: {}", Chain(.0))]
    Connect(#[source] std::io::Error),
    /// No TCP connection within the connect timeout (`upstream_connect`).
    #[error("connect failed: timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The HTTP/1.1 handshake on a new connection failed.
    #[error("HTTP/1.1 handshake failed: {}", Chain(.0))]
    Handshake(#[source] hyper::Error),
    /// The connection failed before a response head arrived (reset, EOF,
    /// malformed response).
    #[error("no valid response: {}", Chain(.0))]
    Response(#[source] ExchangeError),
    /// A response body being buffered broke off before any of it reached
    /// the client.
    #[error("no valid response: the response body was cut short: {}", Chain(.0))]
    BodyCutShort(#[source] ExchangeError),
    /// No response head within `upstream_response`.
    #[error("no response within the upstream_response timeout")]
    Timeout,
    /// The client's request body failed while it was being sent (bad
    /// chunking, a disconnect): the client's fault, not the server's.
    #[error("the request body failed: {}", Chain(.0))]
    RequestBody(#[source] ExchangeError),
}

/// How one HTTP/1.1 exchange on a server's connection failed. Its message
/// leaves the cause to [`Chain`], which follows `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing to or reading from the connection failed.
    #[error("the connection failed")]
    Io(#[source] std::io::Error),
    /// The server closed the connection before its response was complete.
    #[error("the server closed the connection before the response was complete")]
    Closed,
    /// The response broke HTTP/1.1.
    #[error("the response broke HTTP/1.1")]
    Protocol(#[source] super::codec::ProtocolError),
    /// The client's request body failed while it was being sent.
    #[error("the client's request body failed")]
    Body(#[source] BoxError),
    /// The request body was longer or shorter than its Content-Length.
    #[error("the request body did not match its Content-Length")]
    BodyLength,
    /// An exchange made through hyper (WebSocket handshakes, health checks).
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

impl ExchangeError {
    /// Whether the client's body caused it (the client's fault, not the server's).
    pub(crate) fn is_request_body(&self) -> bool {
        matches!(self, ExchangeError::Body(_) | ExchangeError::BodyLength)
    }

    /// Whether the connection was lost with nothing malformed received: on a
    /// kept-alive connection, the server closing it as the request went out.
    pub(crate) fn is_connection_lost(&self) -> bool {
        matches!(self, ExchangeError::Io(_) | ExchangeError::Closed)
    }
}

impl Failure for UpstreamError {
    fn fault(&self) -> Fault {
        match self {
            UpstreamError::RequestBody(_) => Fault::Client,
            _ => Fault::Upstream,
        }
    }

    fn retry_safe(&self) -> bool {
        match self {
            // Nothing was sent.
            UpstreamError::Connect(_)
            | UpstreamError::ConnectTimeout(_)
            | UpstreamError::Handshake(_) => true,
            // Sent, but nothing came back that the client has seen.
            UpstreamError::Response(_) | UpstreamError::BodyCutShort(_) => true,
            // The server may still be working on it, and the client has
            // waited a whole upstream_response already.
            UpstreamError::Timeout => false,
            // The body is spent, and would fail on any server.
            UpstreamError::RequestBody(_) => false,
        }
    }
}

/// An error and its causes, joined by `: `, for messages an operator can act on.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_shows_every_cause() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(Chain(&e).to_string(), "outer: inner");
        let e = UpstreamError::Connect(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(e.to_string(), "connect failed: connection refused");
        assert!(e.source().is_some(), "the io::Error is kept");
    }

    /// A real hyper error: a server that answers garbage.
    async fn hyper_error() -> hyper::Error {
        use tokio::io::AsyncWriteExt;
        let (client, mut server) = tokio::io::duplex(1024);
        let (mut send, conn) = crate::upstream::handshake(client).await.unwrap();
        tokio::spawn(conn);
        tokio::spawn(async move {
            let _ = server.write_all(b"garbage\r\n\r\n").await;
        });
        let req = http::Request::get("/")
            .body(crate::upstream::Body::empty())
            .unwrap();
        send.send_request(req).await.unwrap_err()
    }

    #[tokio::test]
    async fn fault_and_retry_safety_per_variant() {
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases = [
            (UpstreamError::Connect(refused()), Fault::Upstream, true),
            (
                UpstreamError::ConnectTimeout(Duration::from_secs(3)),
                Fault::Upstream,
                true,
            ),
            (
                UpstreamError::Handshake(hyper_error().await),
                Fault::Upstream,
                true,
            ),
            (
                UpstreamError::Response(hyper_error().await.into()),
                Fault::Upstream,
                true,
            ),
            (
                UpstreamError::BodyCutShort(ExchangeError::Closed),
                Fault::Upstream,
                true,
            ),
            (UpstreamError::Timeout, Fault::Upstream, false),
            (
                UpstreamError::RequestBody(ExchangeError::Body("cut off".into())),
                Fault::Client,
                false,
            ),
        ];
        for (e, fault, safe) in cases {
            assert_eq!(e.fault(), fault, "{e}");
            assert_eq!(e.retry_safe(), safe, "{e}");
            assert!(
                matches!(e, UpstreamError::ConnectTimeout(_) | UpstreamError::Timeout)
                    || e.source().is_some(),
                "{e}: the cause is kept"
            );
        }
    }
}
