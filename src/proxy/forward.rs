//! Forward: the hand-over of a plain request to its pool. The body is
//! read whole first (on a buffered pool, so a slow upload never holds a
//! worker's slot), a slot is leased from the pool's queue, the request is
//! rewritten for the backend and sent, and a failure before any response
//! is retried once on another server when that is safe.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;

use super::response::{Kept, compressed, finish_plain};
use super::{Ctx, Finish, ProxyError, Received, ResponseBody, files};
use crate::accept_encoding::Coding;
use crate::buffer;
use crate::forwarded;
use crate::headers;
use crate::pool::{Pool, PoolError};
use crate::routing::Route;
use crate::upstream::{Body, Failure, Server, UpstreamError, retry};

/// Rewrites a client request into the request sent to a backend: hop-by-hop
/// headers out, origin-form target, HTTP/1.1. Returns the forwarded
/// headers, for the encoder to write after the request's own (see
/// [`forwarded::forwarded_fields`]).
pub(super) fn upstream_request(
    parts: &mut http::request::Parts,
    client: &forwarded::Client,
    host: &HeaderValue,
    real: IpAddr,
) -> forwarded::Fields {
    let trailers = headers::remove_hop_by_hop(&mut parts.headers);
    if trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let fields = forwarded::forwarded_fields(&mut parts.headers, client, real, host);
    if !parts.headers.contains_key(header::HOST) {
        parts.headers.insert(header::HOST, host.clone());
    }
    // Origin form: the request target is written as given.
    if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_none() {
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
            .into();
    }
    parts.version = Version::HTTP_11;
    fields
}

/// Sends a plain request to `route`'s pool and returns the response.
///
/// One function, not one per step: each `.await` on a helper would move
/// the request and response (several hundred bytes) in and out of its
/// future, on every request (measured with callgrind).
pub(super) async fn forward(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    req: Box<Request<Incoming>>,
    host: &HeaderValue,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(pool) = &route.pool else {
        return Err(ProxyError::WebSocketOnly);
    };
    let (buffering, max_body, several_servers) = pool.hand_over_settings();
    let method = req.method().clone();
    let (mut parts, body) = (*req).into_parts();
    // A request without a body may be retried on another server (when there
    // is one: the head is copied for it) if the first could not be reached.
    let idempotent = is_idempotent(&method);
    let replayable = hyper::body::Body::is_end_stream(&body);
    let retryable = idempotent && replayable && several_servers;
    // When the request asks for a server: as it started, unless its body
    // was read in first. Clock reads cost tens of ns in a VM, and a lease
    // that did not queue says so, so the common case reads none here.
    let (body, received, mut queued) = if buffering && !replayable {
        let (body, received) = buffered_body(&mut parts, body, max_body).await?;
        (body, received, Instant::now())
    } else {
        let (body, received) = streamed_body(body, max_body)?;
        (body, received, cx.started)
    };
    let mut body = Some(body);
    let kept = Kept::new(route, &parts.headers);
    let mut failed_on = None;
    let timeout = route.upstream_response;
    loop {
        let lease = pool.acquire(failed_on.as_ref()).await;
        let lease = lease.map_err(ProxyError::Pool)?;
        // One instant serves the queue wait, the response deadline and the
        // keep-alive stack's idle check.
        let leased = lease.granted(queued);
        let queue_wait = leased.saturating_duration_since(queued);
        let Some(server) = lease.server().cloned() else {
            return Err(ProxyError::Pool(PoolError::NoHealthyServer));
        };
        let (req, fields) = attempt(cx, &mut parts, retryable, host, body.take());
        let sent = cx
            .generation
            .upstream
            .send(&server, req, fields.as_slice(), leased, timeout)
            .await;
        let (e, lease) = match sent {
            Err(e) => (e, Some(lease)),
            Ok(resp) if resp.headers().contains_key(&files::X_ACCEL_REDIRECT) => {
                let waited = (queue_wait, received);
                return files::accel(cx, route, &method, &server, (resp, lease), waited, kept);
            }
            Ok(resp) => {
                let (mut rparts, rbody) = resp.into_parts();
                headers::remove_hop_by_hop(&mut rparts.headers);
                let body = if buffering {
                    // The whole (small) body is in before the client sees
                    // anything, so a server that dies mid-body can still be
                    // answered cleanly or retried.
                    buffer::drain_response(rbody, lease, timeout)
                        .await
                        .map(|b| (b, None))
                } else {
                    Ok((Body::timed(rbody, timeout), Some(lease)))
                };
                match body {
                    Err(e) => (e, None),
                    Ok((body, lease)) => {
                        let resp = Response::from_parts(rparts, body);
                        let accounting = (queue_wait, received, &kept.codings[..]);
                        return Ok(answered(
                            cx, route, method, &server, resp, lease, accounting,
                        ));
                    }
                }
            }
        };
        failed(pool, &server, &e);
        // The slot is freed once the failure is counted, before any retry
        // queues again.
        drop(lease);
        let attempt = u32::from(failed_on.is_some());
        if !(several_servers && retry::should_retry(&e, attempt, idempotent, replayable)) {
            return Err(ProxyError::Upstream(e));
        }
        failed_on = Some(server);
        body = Some(Body::empty());
        queued = Instant::now();
    }
}

/// The request for one attempt: the head rewritten for the backend (a copy
/// when it may be sent again), and the body, if it has not been sent; with
/// the forwarded headers it goes with.
fn attempt(
    cx: &Ctx<'_>,
    parts: &mut http::request::Parts,
    retryable: bool,
    host: &HeaderValue,
    body: Option<Body>,
) -> (Box<Request<Body>>, forwarded::Fields) {
    let mut p = if retryable {
        clone_parts(parts)
    } else {
        std::mem::replace(parts, Request::new(()).into_parts().0)
    };
    let fields = upstream_request(&mut p, cx.conn.client(), host, cx.real());
    let req = Box::new(Request::from_parts(p, body.unwrap_or_else(Body::empty)));
    (req, fields)
}

/// The response for the client, recorded when it ends (with the time the
/// request queued and the bytes it sent).
fn answered(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    method: Method,
    server: &Server,
    resp: Response<Body>,
    lease: Option<crate::pool::Lease>,
    (queue_wait, received, codings): (std::time::Duration, Received, &[Coding]),
) -> Response<ResponseBody> {
    server.report_success();
    let resp = if route.compress {
        compressed(route, &method, codings, resp)
    } else {
        resp
    };
    let status = resp.status();
    let upstream = Some(&server.addr);
    let mut finish = Finish::new(route.clone(), cx.started, method, status, lease, upstream);
    finish.queue_wait = Some(queue_wait);
    finish.received = received;
    finish_plain(resp, finish)
}

/// Counts and logs a failed exchange with `server`.
fn failed(pool: &Pool, server: &Server, e: &UpstreamError) {
    if !matches!(e, UpstreamError::Timeout | UpstreamError::RequestBody(_)) {
        server.report_failure();
    }
    tracing::warn!(
        site = %pool.site, pool = %pool.name, server = %server.addr,
        error = %e, fault = %e.fault(), "upstream request failed"
    );
}

/// A body streamed upstream as it arrives (an unbuffered pool, or none at
/// all), with its bytes counted for the access log.
fn streamed_body(body: Incoming, max_body: u64) -> Result<(Body, Received), ProxyError> {
    if hyper::body::Body::size_hint(&body).lower() > max_body {
        return Err(ProxyError::Body(buffer::BufferError::TooLarge(max_body)));
    }
    if hyper::body::Body::is_end_stream(&body) {
        return Ok((Body::from(body), Received::Nothing));
    }
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let received = Received::Counted(count.clone());
    Ok((Body::Counted { inner: body, count }, received))
}

/// A body read whole before a worker's slot is taken (a buffered pool), so
/// a slow upload never holds one; the framing headers are set to match.
async fn buffered_body(
    parts: &mut http::request::Parts,
    body: Incoming,
    max_body: u64,
) -> Result<(Body, Received), ProxyError> {
    // Read the whole body before taking a worker's slot, so a slow
    // upload never holds one.
    let spilled = Box::pin(buffer::read_request(body, max_body))
        .await
        .map_err(ProxyError::Body)?;
    let received = Received::Known(spilled.len());
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
    let body = Body::Replay {
        inner: Box::new(spilled),
    };
    Ok((body, received))
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
