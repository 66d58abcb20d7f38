//! Respond: the response body that records its request when it ends —
//! metrics, the access line, and the pool slot it may still hold.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use http_body::{Frame, SizeHint};

use super::access::{self, AccessRecord};
use crate::accept_encoding::{self, Coding, Codings};
use crate::compress;
use crate::pool::Lease;
use crate::routing::Route;
use crate::upstream::{Body, BoxError};

/// What a response still depends on of the client's request, kept while
/// the request itself goes upstream.
pub(super) struct Kept {
    /// The conditional and range headers for a file an `X-Accel-Redirect`
    /// may name (sites with files).
    pub(super) accel: Option<HeaderMap>,
    /// The codings the client takes, best first (routes that compress, or
    /// whose site has files a redirect may name a precompressed copy of).
    pub(super) codings: Codings,
}

impl Kept {
    /// What `route`'s responses may need of a request with these headers.
    pub(super) fn new(route: &Route, headers: &HeaderMap) -> Self {
        let accel = super::files::saved_headers(route, headers);
        Kept {
            codings: if route.compress || accel.is_some() {
                accept_encoding::preferred(headers)
            } else {
                Codings::default()
            },
            accel,
        }
    }
}

/// `resp` of a route that compresses: compressed for a client that takes
/// `codings` when the contract's conditions hold (see
/// [`compress::eligible`]), and counted; told to vary by Accept-Encoding
/// whenever it could have been.
pub(super) fn compressed(
    route: &Route,
    method: &Method,
    codings: &[Coding],
    resp: Response<Body>,
) -> Response<Body> {
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .or_else(|| http_body::Body::size_hint(resp.body()).exact());
    let mut resp = resp;
    if resp.status() == StatusCode::NOT_MODIFIED {
        if *method != Method::HEAD && !codings.is_empty() {
            compress::not_modified(resp.headers_mut());
        }
        return resp;
    }
    if !compress::eligible(resp.status(), resp.headers(), length) {
        return resp;
    }
    // Compressed or not, it depends on Accept-Encoding (nginx gzip_vary).
    compress::add_vary(resp.headers_mut());
    // The client's favourite; never for HEAD, whose head stays the plain one.
    let Some(&coding) = codings.first().filter(|_| *method != Method::HEAD) else {
        return resp;
    };
    route.metrics.compressed[coding.index()].increment(1);
    compress::apply(
        resp,
        coding,
        |body, encoder| Body::Compressed {
            inner: Box::pin(compress::CompressBody::new(body, encoder)),
        },
        |body| body,
    )
}

/// `resp`, recorded by `finish` when its body ends.
pub(crate) fn finish_plain(resp: Response<Body>, mut finish: Finish) -> Response<ResponseBody> {
    // An empty body (a 101, a 204) is whole once its head is written;
    // hyper never polls it, so say so now.
    finish.complete = http_body::Body::is_end_stream(resp.body());
    resp.map(|body| ResponseBody {
        body,
        finish: Some(finish),
    })
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
    /// What the request said about itself, for the access log (see
    /// [`Finish::keep_record`]).
    record: Option<Box<AccessRecord>>,
    /// Request body bytes from the client.
    pub received: Received,
    /// Who caused the error, when the proxy answered one itself.
    pub fault: Option<crate::upstream::Fault>,
    bytes: u64,
    complete: bool,
}

impl Finish {
    /// Starts tracking a response. `upstream` names the server in the
    /// access line.
    ///
    /// What only the access line needs is kept only when it is written:
    /// otherwise it would be copied (and its shared counts touched) on
    /// every request for nothing.
    pub fn new(
        route: Arc<Route>,
        started: Instant,
        method: Method,
        status: StatusCode,
        lease: Option<Lease>,
        upstream: Option<&Arc<str>>,
    ) -> Self {
        let upstream = upstream.filter(|_| access::enabled()).cloned();
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
            fault: None,
            bytes: 0,
            complete: false,
        }
    }

    /// Keeps the request's record for its access line, if one is written.
    pub(crate) fn keep_record(&mut self, record: AccessRecord) {
        if access::enabled() {
            // Boxed: the response (its body holds this) is moved several
            // times on its way out.
            self.record = Some(Box::new(record));
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
            self.record.as_deref(),
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
                fault: self.fault,
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
    }
}

impl ResponseBody {
    /// The request's record, while the body has not ended.
    pub(crate) fn finish_mut(&mut self) -> Option<&mut Finish> {
        self.finish.as_mut()
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
                if this.body.is_end_stream()
                    && let Some(mut f) = this.finish.take()
                {
                    f.complete = true;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut f) = this.finish.take() {
                    f.complete = true;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.finish.take();
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
