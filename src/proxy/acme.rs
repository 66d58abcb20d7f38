//! ACME http-01 (RFC 8555 §8.3): with `[acme]` configured,
//! `/.well-known/acme-challenge/` on the plain listeners belongs to the
//! proxy. It is answered before `redirect_https` and routing (the CA
//! follows no redirect to a site without a certificate yet), and an
//! unknown token is a 404 that never reaches a pool.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{Ctx, Finish, ProxyError, ResponseBody, response};
use crate::routing::Route;
use crate::upstream::Body;

/// What a request was answered with, and the route it counts under.
type Answer<'a> = (&'a Arc<Route>, Result<Response<ResponseBody>, ProxyError>);

/// The answer to an http-01 request, or `None` for any other request.
pub(super) fn http01<'a>(cx: &Ctx<'a>, req: &Request<Incoming>) -> Option<Answer<'a>> {
    if cx.conn.client().https || cx.generation.config.acme.is_none() {
        return None;
    }
    let token = req.uri().path().strip_prefix(crate::acme::HTTP01_PREFIX)?;
    let router = &cx.generation.router;
    // Counted under the site the Host names, if any.
    let route = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| router.site(h))
        .map_or(&router.unknown, |s| &s.unrouted);
    let Some(key_authorization) = router.challenges.http01(token) else {
        return Some((route, Err(ProxyError::UnknownChallenge)));
    };
    tracing::info!(token, "ACME: answering an http-01 challenge");
    let mut resp = Response::new(Body::full(key_authorization));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let finish = Finish::new(
        route.clone(),
        cx.started,
        req.method().clone(),
        StatusCode::OK,
        None,
        None,
    );
    Some((route, Ok(response::finish_plain(resp, finish))))
}
