//! Errors the proxy answers itself: each variant knows its status, the
//! response body an operator or client can act on, who caused it, and
//! (through the errors it wraps, which keep their causes) why.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::buffer;
use crate::config::ErrorPages;
use crate::pool::PoolError;
use crate::upstream::{Body, Failure, Fault, UpstreamError};

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No site claims the host.
    #[error("no site is configured for this host")]
    UnknownHost,
    /// No route matches the path.
    #[error("no route matches this path")]
    NoRoute,
    /// The TLS certificate was for another site.
    #[error("this connection was opened for another site")]
    Misdirected,
    /// Plain HTTP on a site that redirects to https.
    #[error("redirect to {0}")]
    Redirect(String),
    /// A malformed request.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A WebSocket upgrade on a route without `websocket`.
    #[error("this route does not accept WebSocket upgrades")]
    NoWebSocketOnRoute,
    /// A malformed WebSocket upgrade.
    #[error("malformed WebSocket upgrade: {0}")]
    BadUpgrade(&'static str),
    /// A plain request on a route that only has `websocket`.
    #[error("this route only accepts WebSocket upgrades")]
    WebSocketOnly,
    /// The pool turned the request away.
    #[error(transparent)]
    Pool(PoolError),
    /// The upstream exchange failed.
    #[error(transparent)]
    Upstream(UpstreamError),
    /// The request body could not be buffered.
    #[error(transparent)]
    Body(buffer::BufferError),
    /// No file at this path of a files route (or an `internal` route).
    #[error("no such file")]
    FileNotFound,
    /// A method other than GET or HEAD on a route that only serves files.
    #[error("this route serves files: only GET and HEAD are allowed")]
    MethodNotAllowed,
    /// The file exists but the proxy may not read it.
    #[error("the proxy is not allowed to read this file")]
    FileForbidden,
    /// Opening or reading the file failed.
    #[error("the file could not be read: {0}")]
    File(#[source] std::io::Error),
    /// An ACME site's first certificate has not arrived yet.
    #[error("this site's certificate has not been issued yet; try again shortly")]
    CertificatePending,
    /// An http-01 token no order is waiting on.
    #[error("no such ACME challenge")]
    UnknownChallenge,
    /// A pool response's `X-Accel-Redirect` named a path that no files
    /// route of the site serves.
    #[error("the upstream's X-Accel-Redirect to {0:?} matches no files route of this site")]
    AccelTarget(String),
}

impl Failure for ProxyError {
    fn fault(&self) -> Fault {
        match self {
            ProxyError::Pool(e) => e.fault(),
            ProxyError::Upstream(e) => e.fault(),
            ProxyError::Body(e) => e.fault(),
            ProxyError::AccelTarget(_) => Fault::Upstream,
            ProxyError::FileForbidden | ProxyError::File(_) | ProxyError::CertificatePending => {
                Fault::Proxy
            }
            // Everything else is the request itself: a host, path, method
            // or header the configuration does not serve.
            _ => Fault::Client,
        }
    }

    fn retry_safe(&self) -> bool {
        match self {
            ProxyError::Pool(e) => e.retry_safe(),
            ProxyError::Upstream(e) => e.retry_safe(),
            ProxyError::Body(e) => e.retry_safe(),
            _ => false,
        }
    }
}

impl ProxyError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost
            | ProxyError::NoRoute
            | ProxyError::FileNotFound
            | ProxyError::UnknownChallenge => StatusCode::NOT_FOUND,
            ProxyError::CertificatePending => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::FileForbidden => StatusCode::FORBIDDEN,
            ProxyError::File(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::AccelTarget(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Redirect(_) => StatusCode::PERMANENT_REDIRECT,
            ProxyError::BadRequest(_)
            | ProxyError::NoWebSocketOnRoute
            | ProxyError::BadUpgrade(_) => StatusCode::BAD_REQUEST,
            ProxyError::WebSocketOnly => StatusCode::UPGRADE_REQUIRED,
            ProxyError::Pool(PoolError::NoHealthyServer) => StatusCode::BAD_GATEWAY,
            ProxyError::Pool(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(UpstreamError::RequestBody(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Body(buffer::BufferError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Body(buffer::BufferError::Client(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Body(buffer::BufferError::Spill(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response sent to the client: the site's page for the status
    /// (as HTML) when it has one, else a line of text saying what happened.
    pub fn into_response(self, pages: &ErrorPages) -> Response<Body> {
        let status = self.status();
        let (body, content_type) = match pages.get(status.as_u16()) {
            Some(page) => (Body::full(page.clone()), "text/html; charset=utf-8"),
            None => (
                Body::full(format!("{}\n", self.text(status))),
                "text/plain; charset=utf-8",
            ),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        match self {
            ProxyError::Redirect(location) => {
                if let Ok(v) = HeaderValue::try_from(location) {
                    h.insert(header::LOCATION, v);
                }
            }
            ProxyError::Pool(PoolError::QueueTimeout | PoolError::QueueFull)
            | ProxyError::CertificatePending => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ProxyError::WebSocketOnly => {
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            _ => {}
        }
        resp
    }

    /// The plain-text body for this error, answered with `status`.
    fn text(&self, status: StatusCode) -> String {
        match self {
            ProxyError::Upstream(_) => match status {
                StatusCode::GATEWAY_TIMEOUT => "upstream server did not answer in time".to_string(),
                StatusCode::BAD_REQUEST => {
                    "the request body was malformed or incomplete".to_string()
                }
                _ => "no upstream server could be reached".to_string(),
            },
            // The path is the backend's business; the log has it.
            ProxyError::AccelTarget(_) => {
                "the upstream server named a file this site does not serve".to_string()
            }
            ProxyError::File(_) => "the file could not be read".to_string(),
            other => other.to_string(),
        }
    }
}
