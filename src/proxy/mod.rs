//! Proxy: one request's way through switchyard, in named phases.
//!
//! 1. **Identify** the client: [`forwarded::real_client`], kept in an
//!    [`AccessRecord`] for the backend and the log.
//! 2. **Route**: refuse ambiguous framing, answer ACME http-01 challenges
//!    ([`acme`]), find the site by host and the route by path ([`route`]).
//! 3. **Hand over**: a plain request to its pool ([`forward`]) or to disk
//!    ([`files`], which also takes a pool's `X-Accel-Redirect`), a
//!    WebSocket upgrade to its async backend ([`websocket`]).
//! 4. **Respond**: the response body records the request when it ends
//!    ([`response`]); errors the proxy answers itself are [`ProxyError`]s.
//! 5. **Log**: metrics and one access line ([`access`]).
//!
//! The downstream connection is known only through [`Downstream`], so the
//! proxy does not depend on how connections are served.

mod access;
mod acme;
mod error;
mod files;
mod forward;
mod response;
mod route;
mod websocket;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::activity::ActiveGuard;
use crate::forwarded;
use crate::routing::{Route, Site};
use crate::state::{Generation, Pinned, Shared};
use crate::upstream::Failure;

pub use access::AccessRecord;
pub use error::ProxyError;
pub use response::{Finish, Received, ResponseBody};

/// What the proxy needs to know of the downstream connection a request
/// came on.
pub trait Downstream: Send + Sync {
    /// Who the client is (TCP peer, PROXY header, trust).
    fn client(&self) -> &forwarded::Client;
    /// The site whose certificate the TLS handshake presented.
    fn tls_site(&self) -> Option<&Arc<Site>>;
    /// The port of the first https listener, for redirects.
    fn https_port(&self) -> u16;
    /// Keeps the connection out of its idle timeout while held (an HTTP/2
    /// stream carrying a WebSocket session outlives its request).
    fn hold(&self) -> Option<ActiveGuard>;
    /// Unwraps the client's side of an upgraded connection into the stream
    /// a WebSocket session relays over.
    fn upgraded_end(&self) -> crate::websocket::EndFromUpgrade;
    /// Where a file body can queue its file for `sendfile`: a plain-HTTP
    /// connection's (see [`crate::sendfile`]); `None` elsewhere.
    fn sendfile(&self) -> Option<&Arc<crate::sendfile::Spans>>;
}

/// Handles one request to completion of its response head, with the
/// state and generation `pinned` (see [`Shared::pin`]).
pub fn handle(
    pinned: Arc<Pinned>,
    conn: Arc<dyn Downstream>,
    req: Request<Incoming>,
) -> impl Future<Output = Response<ResponseBody>> + Send {
    // Boxed once here and passed down boxed: an `async fn` keeps each
    // argument in its future beside the local it moves into, so a request
    // by value would be laid out twice at every phase (and the whole
    // future is copied as it is made and boxed, on every request).
    handle_boxed(pinned, conn, Box::new(req))
}

async fn handle_boxed(
    pinned: Arc<Pinned>,
    conn: Arc<dyn Downstream>,
    req: Box<Request<Incoming>>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let (shared, generation) = (&pinned.shared, &*pinned.generation);
    let method = req.method().clone();
    let version = req.version();
    let body_pending = body_unread(&req);
    // Identify the client: the real address, for the backend and the log.
    let real = forwarded::real_client(
        req.headers(),
        conn.client(),
        &generation.config.listen.trusted_proxies,
    );
    let record = AccessRecord::new(real, conn.client().peer, req.uri(), req.headers());
    let request = Ctx {
        shared,
        generation,
        conn: &*conn,
        started,
        record: &record,
    };
    let (route, response) = match route::check_framing(&req) {
        Ok(()) => request.route_and_hand_over(req).await,
        Err(e) => (&generation.router.unknown, Err(e)),
    };
    let mut resp = match response {
        Ok(resp) => resp,
        Err(e) => {
            let fault = e.fault();
            let mut resp = e.into_response(&route.error_pages);
            if method == http::Method::HEAD {
                // The length the page would have, and no page: HTTP/2 would
                // otherwise send it as DATA on a HEAD stream.
                without_body(&mut resp);
            }
            let status = resp.status();
            // After a malformed request, what follows on the connection
            // cannot be trusted to start a new request (RFC 9112 §6.3); after
            // an answer given before the body was read, the unread body
            // would be taken for the next request, so hyper closes the
            // connection, and the client must know before it reuses it.
            if (status == StatusCode::BAD_REQUEST && version < Version::HTTP_2) || body_pending {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let mut finish = Finish::new(route.clone(), started, method, status, None, None);
            finish.fault = Some(fault);
            response::finish_plain(resp, finish)
        }
    };
    if let Some(finish) = resp.body_mut().finish_mut() {
        finish.keep_record(record);
    }
    resp
}

/// Whether `req` has an HTTP/1.1 body that an answer given now would leave
/// unread: hyper then closes the connection (the body would be taken for
/// the next request), and the answer must say `Connection: close`.
fn body_unread(req: &Request<Incoming>) -> bool {
    req.version() < Version::HTTP_2 && !http_body::Body::is_end_stream(req.body())
}

/// Drops a response's body, keeping its length in `Content-Length`.
fn without_body(resp: &mut Response<crate::upstream::Body>) {
    let len = http_body::Body::size_hint(resp.body()).exact();
    *resp.body_mut() = crate::upstream::Body::empty();
    if let Some(len) = len {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// One request's context through the phases after identification.
struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    generation: &'a Generation,
    conn: &'a dyn Downstream,
    started: Instant,
    record: &'a AccessRecord,
}

impl<'a> Ctx<'a> {
    /// Routes, then hands the request to a pool or a WebSocket backend.
    /// Returns the route for metrics.
    async fn route_and_hand_over(
        &self,
        req: Box<Request<Incoming>>,
    ) -> (&'a Arc<Route>, Result<Response<ResponseBody>, ProxyError>) {
        if let Some(answer) = acme::http01(self, &req) {
            return answer;
        }
        let routed = match route::route(&self.generation.router, self.conn, &req) {
            Ok(r) => r,
            Err((route, e)) => return (route, Err(e)),
        };
        let route = routed.route;
        let result = match crate::websocket::classify(&req) {
            crate::websocket::Upgrade::None => match &route.files {
                None => forward::forward(self, route, req, &routed.host).await,
                Some(f) => match files::direct(self, route, f, req) {
                    files::Direct::Answered(result) => result,
                    files::Direct::ToPool(req) => {
                        forward::forward(self, route, req, &routed.host).await
                    }
                },
            },
            crate::websocket::Upgrade::Malformed(why) => Err(ProxyError::BadUpgrade(why)),
            crate::websocket::Upgrade::WebSocket => match &route.websocket {
                None => Err(ProxyError::NoWebSocketOnRoute),
                // Boxed: a handshake is rare next to plain requests, whose
                // future (moved and boxed per request) need not be this large.
                Some(pool) => {
                    Box::pin(websocket::hand_over(self, route, pool, *req, &routed.host)).await
                }
            },
        };
        (route, result)
    }

    /// The real client's address.
    fn real(&self) -> IpAddr {
        self.record.client
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    /// Every request and response is moved several times on its way
    /// through (into and out of futures, by value through the phases), so
    /// their sizes are kept in check: rare, large kinds of body and the
    /// access record are boxed (callgrind counted 35 copies per request).
    #[test]
    fn bodies_requests_and_responses_stay_small() {
        assert!(size_of::<crate::upstream::Body>() <= 96);
        assert!(size_of::<super::ResponseBody>() <= 256);
        assert!(size_of::<http::Response<super::ResponseBody>>() <= 384);
        assert!(size_of::<http::Request<crate::upstream::Body>>() <= 320);
    }

    /// The size of what `f` returns, without calling it.
    fn output_size<A, B, C, F>(_f: impl Fn(A, B, C) -> F) -> usize {
        size_of::<F>()
    }

    /// A request's future is made and moved into its box on every request,
    /// and written in full each time: it was 5,232 bytes while the request
    /// went down the phases by value (2,808 boxed, with rustc 1.95; the
    /// bound leaves room for other compilers' layouts).
    #[test]
    fn the_future_of_a_request_stays_small() {
        let size = output_size(super::handle_boxed);
        assert!(size <= 4 * 1024, "handle's future is {size} bytes");
    }
}
