//! Proxy: one request's way through switchyard — site and route selection,
//! the pool lease, forwarding upstream, and the response back.
//!
//! WebSocket upgrades branch off to [`crate::websocket`] after routing.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::access::{self, AccessRecord};
use crate::body::{Body, BoxError};
use crate::buffer;
use crate::forwarded;
use crate::headers;
use crate::pool::{Lease, PoolError};
use crate::routing::{Route, Site};
use crate::state::{Generation, Shared};
use crate::upstream::UpstreamError;
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
    pub activity: Option<Arc<crate::connection::Activity>>,
}

/// Handles one request to completion of its response head.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let generation = shared.generation.load_full();
    let method = req.method().clone();
    let version = req.version();
    // Identify the client: the real address, for the backend and the log.
    let real = forwarded::real_client(
        req.headers(),
        &conn.client,
        &generation.config.listen.trusted_proxies,
    );
    let record = AccessRecord::new(real, conn.client.peer, req.uri(), req.headers());
    let (route, response) = match check_framing(&req) {
        Ok(()) => route_and_forward(&shared, &generation, &conn, req, started, &record).await,
        Err(e) => (generation.router.unknown.clone(), Err(e)),
    };
    let mut resp = match response {
        Ok(resp) => resp,
        Err(e) => {
            let mut resp = e.into_response();
            let status = resp.status();
            if status == StatusCode::BAD_REQUEST && version < Version::HTTP_2 {
                // After a malformed request, what follows on the connection
                // cannot be trusted to start a new request (RFC 9112 §6.3).
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            finish_plain(
                resp,
                Finish::new(route, started, method, status, None, None),
            )
        }
    };
    if let Some(finish) = resp.body_mut().finish.as_mut() {
        finish.record = Some(record);
    }
    resp
}

pub(crate) fn finish_plain(resp: Response<Body>, mut finish: Finish) -> Response<ResponseBody> {
    // An empty body (a 101, a 204) is whole once its head is written;
    // hyper never polls it, so say so now.
    finish.complete = http_body::Body::is_end_stream(resp.body());
    resp.map(|body| ResponseBody {
        body,
        finish: Some(finish),
        active: None,
    })
}

/// Finds the site and route, then forwards. Returns the route for metrics.
async fn route_and_forward(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    started: Instant,
    record: &AccessRecord,
) -> (Arc<Route>, Result<Response<ResponseBody>, ProxyError>) {
    let router = &generation.router;
    let host_value = match request_host(&req) {
        Ok(h) => h,
        Err(e) => return (router.unknown.clone(), Err(e)),
    };
    let host = host_value.to_str().unwrap_or_default();
    let Some(site) = router.site(host) else {
        return (router.unknown.clone(), Err(ProxyError::UnknownHost));
    };
    if let Some(tls_site) = &conn.tls_site {
        // A connection whose certificate was for another site may not be
        // reused for this one (RFC 9110 §15.5.20).
        if !Arc::ptr_eq(tls_site, site) && tls_site.name != site.name {
            return (site.unrouted.clone(), Err(ProxyError::Misdirected));
        }
    }
    if !conn.client.https && site.redirect_https {
        return (
            site.unrouted.clone(),
            Err(ProxyError::Redirect(redirect_location(
                host,
                conn.https_port,
                req.uri(),
            ))),
        );
    }
    let Some(route) = site.route(req.uri().path()) else {
        return (site.unrouted.clone(), Err(ProxyError::NoRoute));
    };
    let route = route.clone();
    let result = match websocket::classify(&req) {
        websocket::Upgrade::None => {
            forward(
                generation,
                conn,
                &route,
                req,
                &host_value,
                started,
                record.client,
            )
            .await
        }
        websocket::Upgrade::Malformed(why) => Err(ProxyError::BadUpgrade(why)),
        websocket::Upgrade::WebSocket => match &route.websocket {
            None => Err(ProxyError::NoWebSocketOnRoute),
            // Boxed: a handshake is rare next to plain requests, whose
            // future (moved and boxed per request) need not be this large.
            Some(pool) => {
                Box::pin(websocket::proxy(
                    shared,
                    generation,
                    conn,
                    &route,
                    pool,
                    req,
                    &host_value,
                    started,
                    record,
                ))
                .await
            }
        },
    };
    (route, result)
}

/// Refuses ambiguous message framing (RFC 9112 §6.3): Content-Length with
/// Transfer-Encoding, and a Content-Length that is repeated or not a plain
/// number. hyper rejects the rest (bad chunking, unknown codings).
fn check_framing<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let h = req.headers();
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.next().is_some() {
            return Err(ProxyError::BadRequest("duplicate Content-Length"));
        }
        let v = first.as_bytes();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err(ProxyError::BadRequest("malformed Content-Length"));
        }
        if h.contains_key(header::TRANSFER_ENCODING) {
            return Err(ProxyError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
    }
    Ok(())
}

/// The host a request is for: `:authority` / absolute-form, else `Host`.
/// A header value (from `Host`, shared, not copied) since it goes upstream
/// as `X-Forwarded-Host`; it is always valid as a `str`.
fn request_host(req: &Request<Incoming>) -> Result<HeaderValue, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        // Routing and the backend could each pick a different one
        // (RFC 9112 §3.2: a request with more than one Host is refused).
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let from_header = req
        .headers()
        .get(header::HOST)
        .map(|h| {
            h.to_str()
                .map(|s| (h, s))
                .map_err(|_| ProxyError::BadRequest("the Host header is not valid"))
        })
        .transpose()?;
    match (req.uri().authority(), from_header) {
        (Some(a), Some((v, h))) if req.version() < Version::HTTP_2 => {
            // Absolute-form: the target's host must agree with Host.
            if crate::routing::normalize_host(a.as_str()) != crate::routing::normalize_host(h) {
                return Err(ProxyError::BadRequest(
                    "the request target's host disagrees with the Host header",
                ));
            }
            Ok(v.clone())
        }
        (Some(a), Some((_, h)))
            if crate::routing::normalize_host(a.as_str()) != crate::routing::normalize_host(h) =>
        {
            // RFC 9113 §8.3.1: a Host naming another entity than
            // :authority makes the request malformed.
            Err(ProxyError::BadRequest(
                "the Host header disagrees with the request's :authority",
            ))
        }
        (Some(a), _) => HeaderValue::from_str(a.as_str())
            .map_err(|_| ProxyError::BadRequest("the request's authority is not valid")),
        (None, Some((v, h))) if !h.is_empty() => Ok(v.clone()),
        _ => Err(ProxyError::BadRequest("the request has no Host header")),
    }
}

fn redirect_location(host: &str, https_port: u16, uri: &Uri) -> String {
    let bare = crate::routing::strip_port(host);
    let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    if https_port == 443 {
        format!("https://{bare}{pq}")
    } else {
        format!("https://{bare}:{https_port}{pq}")
    }
}

/// Rewrites a client request into the request sent to a pool server.
pub(crate) fn upstream_request(
    parts: &mut http::request::Parts,
    conn: &ConnInfo,
    host: &HeaderValue,
    real: IpAddr,
) {
    let trailers = headers::remove_hop_by_hop(&mut parts.headers);
    if trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    forwarded::set_forwarded(&mut parts.headers, &conn.client, real, host);
    if !parts.headers.contains_key(header::HOST) {
        parts.headers.insert(header::HOST, host.clone());
    }
    // Origin form: hyper's connection writes the request target as given.
    if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_none() {
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
            .into();
    }
    parts.version = Version::HTTP_11;
}

async fn forward(
    generation: &Arc<Generation>,
    conn: &ConnInfo,
    route: &Arc<Route>,
    req: Request<Incoming>,
    host: &HeaderValue,
    started: Instant,
    real: IpAddr,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(pool) = &route.pool else {
        return Err(ProxyError::WebSocketOnly);
    };
    let (buffering, max_body, several_servers) = {
        let m = pool.members();
        (
            m.settings.buffering,
            m.settings.max_body,
            m.servers.len() > 1,
        )
    };
    let method = req.method().clone();
    let (mut parts, body) = req.into_parts();
    // A request without a body may be retried on another server when the
    // first one could not be reached.
    // (Only with another server to retry on: the head is copied for it.)
    let retryable =
        is_idempotent(&method) && hyper::body::Body::is_end_stream(&body) && several_servers;
    let mut received = Received::Nothing;
    let mut body = Some(if buffering && !hyper::body::Body::is_end_stream(&body) {
        // Read the whole body before taking a worker's slot, so a slow
        // upload never holds one.
        let spilled = Box::pin(buffer::read_request(body, max_body))
            .await
            .map_err(ProxyError::Body)?;
        received = Received::Known(spilled.len());
        parts.headers.remove(header::TRANSFER_ENCODING);
        match spilled.trailers() {
            None => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(spilled.len()));
            }
            Some(trailers) => {
                // Announce the trailers so HTTP/1.1 chunked framing carries them.
                parts.headers.remove(header::CONTENT_LENGTH);
                let names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
                if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
                    parts.headers.insert(header::TRAILER, v);
                }
            }
        }
        Body::Replay {
            inner: buffer::Replay(spilled),
        }
    } else {
        if hyper::body::Body::size_hint(&body).lower() > max_body {
            return Err(ProxyError::Body(buffer::BufferError::TooLarge(max_body)));
        }
        if hyper::body::Body::is_end_stream(&body) {
            Body::from(body)
        } else {
            let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
            received = Received::Counted(count.clone());
            Body::Counted { inner: body, count }
        }
    });
    let mut failed_on = None;
    loop {
        let queued = Instant::now();
        let lease = pool
            .acquire(failed_on.as_ref())
            .await
            .map_err(ProxyError::Pool)?;
        let queue_wait = queued.elapsed();
        let Some(server) = lease.server().cloned() else {
            return Err(ProxyError::Pool(PoolError::NoHealthyServer));
        };
        let mut p = if retryable {
            clone_parts(&parts)
        } else {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        upstream_request(&mut p, conn, host, real);
        let b = body.take().unwrap_or_else(Body::empty);
        let timeout = generation.config.timeouts.upstream_response;
        let exchange = match generation
            .upstream
            .send(&server, Request::from_parts(p, b))
            .await
        {
            Ok(resp) => {
                let (mut rparts, rbody) = resp.into_parts();
                headers::remove_hop_by_hop(&mut rparts.headers);
                if buffering {
                    // The whole (small) body is in before the client sees
                    // anything, so a server that dies mid-body can still be
                    // answered cleanly or retried.
                    buffer::drain_response(rbody, lease, timeout)
                        .await
                        .map(|body| (rparts, body, None))
                        .map_err(|e| (e, None))
                } else {
                    Ok((rparts, Body::timed(rbody, timeout), Some(lease)))
                }
            }
            Err(e) => Err((e, Some(lease))),
        };
        match exchange {
            Ok((rparts, body, lease)) => {
                server.report_success();
                let status = rparts.status;
                let mut finish = Finish::new(
                    route.clone(),
                    started,
                    method,
                    status,
                    lease,
                    Some(server.addr.clone()),
                );
                finish.queue_wait = Some(queue_wait);
                finish.received = received;
                return Ok(finish_plain(Response::from_parts(rparts, body), finish));
            }
            Err((e, lease)) => {
                let before_response = e.before_response();
                if !matches!(e, UpstreamError::Timeout | UpstreamError::RequestBody(_)) {
                    server.report_failure();
                }
                tracing::warn!(
                    site = %pool.site, pool = %pool.name, server = %server.addr,
                    error = %e, "upstream request failed"
                );
                drop(lease);
                if before_response && retryable && failed_on.is_none() {
                    failed_on = Some(server);
                    body = Some(Body::empty());
                    continue;
                }
                return Err(ProxyError::Upstream(e));
            }
        }
    }
}

fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r.into_parts().0
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

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
    #[error("{0}")]
    Pool(PoolError),
    /// The upstream exchange failed.
    #[error("{0}")]
    Upstream(UpstreamError),
    /// The request body could not be buffered.
    #[error("{0}")]
    Body(buffer::BufferError),
}

impl ProxyError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost | ProxyError::NoRoute => StatusCode::NOT_FOUND,
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

    /// The response sent to the client.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let text = match &self {
            ProxyError::Upstream(_) => match status {
                StatusCode::GATEWAY_TIMEOUT => "upstream server did not answer in time".to_string(),
                StatusCode::BAD_REQUEST => {
                    "the request body was malformed or incomplete".to_string()
                }
                _ => "no upstream server could be reached".to_string(),
            },
            other => other.to_string(),
        };
        let mut resp = Response::new(Body::full(format!("{text}\n")));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            ProxyError::Redirect(location) => {
                if let Ok(v) = HeaderValue::try_from(location) {
                    h.insert(header::LOCATION, v);
                }
            }
            ProxyError::Pool(PoolError::QueueTimeout | PoolError::QueueFull) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::WebSocketOnly => {
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            _ => {}
        }
        resp
    }
}

/// Request body bytes read from the client, for the access log.
#[derive(Debug, Default)]
pub enum Received {
    /// Counted already (a buffered body, or none).
    #[default]
    Nothing,
    /// This many.
    Known(u64),
    /// Counted as the body streams upstream.
    Counted(Arc<std::sync::atomic::AtomicU64>),
}

impl Received {
    fn bytes(&self) -> u64 {
        match self {
            Received::Nothing => 0,
            Received::Known(n) => *n,
            Received::Counted(c) => c.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Records a request when its response is done: metrics and the access log.
pub struct Finish {
    route: Arc<Route>,
    started: Instant,
    method: Method,
    status: StatusCode,
    lease: Option<Lease>,
    upstream: Option<Arc<str>>,
    /// Time spent in the pool's queue.
    pub queue_wait: Option<std::time::Duration>,
    /// What the request said about itself, for the access log.
    pub record: Option<AccessRecord>,
    /// Request body bytes from the client.
    pub received: Received,
    bytes: u64,
    complete: bool,
}

impl Finish {
    /// Starts tracking a response.
    pub fn new(
        route: Arc<Route>,
        started: Instant,
        method: Method,
        status: StatusCode,
        lease: Option<Lease>,
        upstream: Option<Arc<str>>,
    ) -> Self {
        let upstream = upstream.or_else(|| {
            lease
                .as_ref()
                .and_then(|l| l.server())
                .map(|s| s.addr.clone())
        });
        Finish {
            route,
            started,
            method,
            status,
            lease,
            upstream,
            queue_wait: None,
            record: None,
            received: Received::Nothing,
            bytes: 0,
            complete: false,
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // Free the upstream slot before logging.
        self.lease.take();
        let elapsed = self.started.elapsed();
        let m = &self.route.metrics;
        m.requests.inc(&self.method, self.status);
        m.duration.record(elapsed.as_secs_f64());
        access::log(
            self.record.as_ref(),
            &access::Outcome {
                site: &self.route.site,
                route: &self.route.name,
                method: &self.method,
                status: self.status.as_u16(),
                bytes_sent: self.bytes,
                bytes_received: self.received.bytes(),
                duration: elapsed,
                upstream: self.upstream.as_deref(),
                queue_wait: self.queue_wait,
                complete: Some(self.complete),
                session: None,
            },
        );
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the request when it ends or is dropped.
    pub struct ResponseBody {
        #[pin]
        body: Body,
        finish: Option<Finish>,
        active: Option<crate::connection::ActiveGuard>,
    }
}

impl ResponseBody {
    /// A proxy-generated body with no request accounting.
    pub fn plain(body: Body) -> Self {
        ResponseBody {
            body,
            finish: None,
            active: None,
        }
    }

    /// Keeps the connection counted as busy until this body ends.
    pub fn with_active(mut self, guard: crate::connection::ActiveGuard) -> Self {
        if http_body::Body::is_end_stream(&self.body) {
            // Nothing left to send: the request is over once hyper writes the head.
            drop(guard);
        } else {
            self.active = Some(guard);
        }
        self
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let r = this.body.as_mut().poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(f), Some(d)) = (this.finish.as_mut(), frame.data_ref()) {
                    f.bytes += d.len() as u64;
                }
                // hyper stops polling once the body says it has ended, so
                // the request is recorded here rather than on a final None.
                if this.body.is_end_stream() {
                    if let Some(mut f) = this.finish.take() {
                        f.complete = true;
                    }
                    this.active.take();
                }
            }
            Poll::Ready(None) => {
                if let Some(mut f) = this.finish.take() {
                    f.complete = true;
                }
                this.active.take();
            }
            Poll::Ready(Some(Err(_))) => {
                this.finish.take();
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
