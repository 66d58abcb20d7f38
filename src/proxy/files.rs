//! Files: the hand-over of a request to a files route (served from disk,
//! or passed to the route's pool when there is no file, as nginx's
//! `try_files $uri @app`), and `X-Accel-Redirect`, by which a pool response
//! hands a download back to the proxy so the worker is free while the
//! bytes flow.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::response::{Kept, compressed, finish_plain};
use super::{Ctx, Finish, ProxyError, Received, ResponseBody};
use crate::accept_encoding::{self, Coding};
use crate::files::{FileBody, Files, Served};
use crate::pool::Lease;
use crate::routing::Route;
use crate::upstream::{Body, Pulled, Server};

/// The response header by which a pool names a file for the proxy to send.
pub(super) static X_ACCEL_REDIRECT: HeaderName = HeaderName::from_static("x-accel-redirect");

/// Where a request on a files route goes.
// Returned once per request and matched at once; boxing the response
// would cost an allocation per file for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Direct {
    /// Answered from disk (or refused).
    Answered(Result<Response<ResponseBody>, ProxyError>),
    /// No file here: the route's pool serves it (the request as it came,
    /// boxed as `forward` takes it).
    ToPool(Box<Request<Incoming>>),
}

/// Serves a client's request on a files route.
pub(super) fn direct(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    files: &Files,
    req: Box<Request<Incoming>>,
) -> Direct {
    if files.internal {
        return Direct::Answered(Err(ProxyError::FileNotFound));
    }
    let uri = req.uri();
    let codings = accept_encoding::preferred(req.headers());
    let served = files.serve(
        req.method(),
        uri.path(),
        uri.query(),
        req.headers(),
        &codings,
    );
    let result = match served {
        Served::Response(mut resp) => {
            if super::body_unread(&req) {
                // The body is never read: see `handle`'s error path.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let method = req.method().clone();
            let resp = outgoing(cx, route, files, &method, &codings, resp);
            let finish = Finish::new(route.clone(), cx.started, method, resp.status(), None, None);
            Ok(finish_plain(resp, finish))
        }
        Served::Missing | Served::MethodNotAllowed if route.pool.is_some() => {
            return Direct::ToPool(req);
        }
        other => Err(refusal(other)),
    };
    Direct::Answered(result)
}

/// A file response as it goes out: compressed if its files route says so
/// (a file's 304 already carries what its 200 would, see `files::Files`),
/// or else handed to the connection's `sendfile` if it has one.
fn outgoing(
    cx: &Ctx<'_>,
    route: &Route,
    files: &Files,
    method: &Method,
    codings: &[Coding],
    resp: Response<FileBody>,
) -> Response<Body> {
    if files.compress && resp.status() != http::StatusCode::NOT_MODIFIED {
        return compressed(route, method, codings, resp.map(Body::from));
    }
    resp.map(|mut body| {
        // Uncompressed, the bytes reach the connection as they are.
        if let Some(spans) = cx.conn.sendfile() {
            body.send_by(spans);
        }
        Body::from(body)
    })
}

/// The error for a request that was not served from disk.
fn refusal(served: Served) -> ProxyError {
    match served {
        Served::MethodNotAllowed => ProxyError::MethodNotAllowed,
        Served::Forbidden => ProxyError::FileForbidden,
        Served::Failed(e) => ProxyError::File(e),
        Served::Missing | Served::Response(_) => ProxyError::FileNotFound,
    }
}

/// The client's conditional and range headers, kept while the request
/// goes to the pool in case it answers with X-Accel-Redirect (its
/// Accept-Encoding is kept parsed, in [`Kept`]).
pub(super) fn saved_headers(route: &Route, headers: &HeaderMap) -> Option<HeaderMap> {
    if route.site_files.is_empty() {
        return None;
    }
    let mut saved = HeaderMap::new();
    for name in [
        header::RANGE,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ] {
        for v in headers.get_all(&name) {
            saved.append(name.clone(), v.clone());
        }
    }
    Some(saved)
}

/// Headers of the pool's response that the file response keeps.
const KEPT: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::CONTENT_DISPOSITION,
    header::CACHE_CONTROL,
    header::SET_COOKIE,
    header::EXPIRES,
];

/// Serves the file a pool response named in `X-Accel-Redirect`: the
/// upstream body is dropped and the slot released first (the worker is
/// done), then the file comes from the site's files route matching that
/// path, internal or not, with the client's conditionals and range
/// (`kept`), under the pool's own Content-Type, Content-Disposition,
/// Cache-Control, Set-Cookie and Expires. `waited` holds the queue wait and
/// request bytes, for the log.
pub(super) fn accel(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    method: &Method,
    server: &Server,
    (resp, lease): (Response<Pulled>, Lease),
    (queue_wait, received): (Duration, Received),
    kept: Kept,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut upstream, body) = resp.into_parts();
    drop(body);
    drop(lease);
    server.report_success();
    let Some(target) = upstream.headers.remove(&X_ACCEL_REDIRECT) else {
        return Err(ProxyError::AccelTarget(String::new()));
    };
    let bad_target = || {
        let target = String::from_utf8_lossy(target.as_bytes()).into_owned();
        tracing::warn!(
            site = %route.site, route = %route.name, server = %server.addr, %target,
            "X-Accel-Redirect names a path no files route of this site serves"
        );
        ProxyError::AccelTarget(target)
    };
    let Ok(target_str) = std::str::from_utf8(target.as_bytes()) else {
        return Err(bad_target());
    };
    let (path, query) = match target_str.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target_str, None),
    };
    let Some(files) = route.site_files.find(path) else {
        return Err(bad_target());
    };
    // As nginx: the internal redirect is a GET (a HEAD stays a HEAD).
    let method = if *method == Method::HEAD {
        Method::HEAD
    } else {
        Method::GET
    };
    let saved = kept.accel.unwrap_or_default();
    let mut resp = match files.serve(&method, path, query, &saved, &kept.codings) {
        Served::Response(resp) => resp,
        other => return Err(refusal(other)),
    };
    let h = resp.headers_mut();
    for name in &KEPT {
        let mut values = upstream.headers.get_all(name).iter();
        if let Some(first) = values.next() {
            h.insert(name.clone(), first.clone());
            for v in values {
                h.append(name.clone(), v.clone());
            }
        }
    }
    let resp = outgoing(cx, route, files, &method, &kept.codings, resp);
    let addr = Some(&server.addr);
    let mut finish = Finish::new(route.clone(), cx.started, method, resp.status(), None, addr);
    finish.queue_wait = Some(queue_wait);
    finish.received = received;
    Ok(finish_plain(resp, finish))
}
