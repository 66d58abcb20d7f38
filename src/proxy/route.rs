//! Route: the second phase of a request. Refuse what cannot be routed
//! safely (ambiguous framing, more than one Host), then find the site by
//! host (and the TLS site it must agree with) and the route by path.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Uri, Version};
use hyper::body::Incoming;

use super::{Downstream, ProxyError};
use crate::routing::{Route, Router};

/// Where a request goes.
pub(super) struct Routed<'a> {
    /// The route that matched, borrowed from the generation (the response's
    /// `Finish` takes the one clone a request keeps).
    pub(super) route: &'a Arc<Route>,
    /// The host as the client sent it (sent upstream as `X-Forwarded-Host`).
    pub(super) host: HeaderValue,
}

/// Finds the site and route for `req`, or the route to count its refusal
/// under and why.
pub(super) fn route<'a>(
    router: &'a Router,
    conn: &dyn Downstream,
    req: &Request<Incoming>,
) -> Result<Routed<'a>, (&'a Arc<Route>, ProxyError)> {
    let host_value = request_host(req).map_err(|e| (&router.unknown, e))?;
    let host = host_value.to_str().unwrap_or_default();
    let Some(site) = router.site(host) else {
        return Err((&router.unknown, ProxyError::UnknownHost));
    };
    if let Some(tls_site) = conn.tls_site() {
        // A connection whose certificate was for another site may not be
        // reused for this one (RFC 9110 §15.5.20).
        if !Arc::ptr_eq(tls_site, site) && tls_site.name != site.name {
            return Err((&site.unrouted, ProxyError::Misdirected));
        }
    }
    if !conn.client().https && site.acme_pending {
        // Redirecting to https would only lead to a failed handshake.
        return Err((&site.unrouted, ProxyError::CertificatePending));
    }
    if !conn.client().https && site.redirect_https {
        let location = redirect_location(host, conn.https_port(), req.uri());
        return Err((&site.unrouted, ProxyError::Redirect(location)));
    }
    let Some(route) = site.route(req.uri().path()) else {
        return Err((&site.unrouted, ProxyError::NoRoute));
    };
    Ok(Routed {
        route,
        host: host_value,
    })
}

pub(super) fn check_framing<B>(req: &Request<B>) -> Result<(), ProxyError> {
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
