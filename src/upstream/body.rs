//! Body: the one body type that flows through the proxy in both directions.
//!
//! An enum rather than a boxed trait object, so forwarding a streamed body
//! costs no allocation and no dynamic dispatch per chunk. It lives with the
//! upstream client because two of its kinds are the client's: a server's
//! response body ([`Pulled`](super::Pulled)) and a buffered body played back
//! ([`Replay`](super::Replay)); the proxy, admin and buffer modules use it
//! from here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::error::BoxError;

pin_project_lite::pin_project! {
    /// A request or response body: empty, a fixed buffer, or streamed from a peer.
    #[project = BodyProj]
    pub enum Body {
        /// No bytes.
        Empty,
        /// A complete body in memory (proxy-generated responses, buffered requests).
        Full { data: Option<Bytes> },
        /// Streamed from the other side of the proxy.
        Stream { #[pin] inner: Incoming },
        /// A client's upload streamed to an unbuffered pool, its bytes
        /// counted for the access log.
        Counted {
            #[pin] inner: Incoming,
            count: std::sync::Arc<std::sync::atomic::AtomicU64>,
        },
        /// Streamed from a server that must not go silent for longer than
        /// `timeout` between frames (an unbuffered response).
        Timed {
            #[pin] inner: super::client::Pulled,
            // Made the first time the server has nothing ready, so a body
            // that arrives whole costs no timer. Boxed: the client needs an
            // Unpin body, and Sleep is not.
            stalled: Option<Pin<Box<tokio::time::Sleep>>>,
            timeout: std::time::Duration,
        },
        /// Replayed from a buffered (possibly spilled) body. Boxed: it is
        /// several times the size of the other kinds, and every request and
        /// response moves its body several times on the way through.
        Replay { inner: Box<super::spill::Replay> },
        /// Fed by a task that drains the server (see [`crate::buffer`]).
        Channel { rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>> },
        /// Read from disk (a files route, or X-Accel-Redirect).
        File { #[pin] inner: crate::files::FileBody },
        /// Compressed at the proxy (boxed: the encoder is large and rare).
        Compressed { inner: Pin<Box<crate::compress::CompressBody<Body>>> },
    }
}

impl Body {
    /// An empty body.
    pub(crate) fn empty() -> Self {
        Body::Empty
    }

    /// A body holding these bytes.
    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        if data.is_empty() {
            Body::Empty
        } else {
            Body::Full { data: Some(data) }
        }
    }
}

impl Body {
    /// A streamed body that fails if the sender goes silent for `timeout`.
    pub(crate) fn timed(inner: super::client::Pulled, timeout: std::time::Duration) -> Self {
        Body::Timed {
            inner,
            stalled: None,
            timeout,
        }
    }
}

impl From<crate::files::FileBody> for Body {
    fn from(inner: crate::files::FileBody) -> Self {
        Body::File { inner }
    }
}

impl From<Incoming> for Body {
    fn from(inner: Incoming) -> Self {
        Body::Stream { inner }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            BodyProj::Empty => Poll::Ready(None),
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Stream { inner } => inner.poll_frame(cx).map_err(Into::into),
            BodyProj::Counted { inner, count } => {
                let r = inner.poll_frame(cx).map_err(Into::into);
                if let Poll::Ready(Some(Ok(f))) = &r
                    && let Some(d) = f.data_ref()
                {
                    count.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                r
            }
            BodyProj::Timed {
                inner,
                stalled,
                timeout,
            } => match inner.poll_frame(cx) {
                Poll::Ready(r) => {
                    if let Some(s) = stalled {
                        s.as_mut().reset(tokio::time::Instant::now() + *timeout);
                    }
                    Poll::Ready(r.map(|f| f.map_err(Into::into)))
                }
                Poll::Pending => {
                    let s = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(*timeout)));
                    match s.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(
                            "upstream response body stalled longer than upstream_response".into(),
                        ))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
            BodyProj::Replay { inner } => Pin::new(inner.as_mut()).poll_frame(cx),
            BodyProj::Channel { rx } => rx.poll_recv(cx),
            BodyProj::File { inner } => inner.poll_frame(cx).map_err(Into::into),
            BodyProj::Compressed { inner } => inner.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full { data } => data.is_none(),
            Body::Stream { inner } | Body::Counted { inner, .. } => inner.is_end_stream(),
            Body::Timed { inner, .. } => inner.is_end_stream(),
            Body::Replay { inner } => inner.is_end_stream(),
            Body::Channel { .. } => false,
            Body::File { inner } => inner.is_end_stream(),
            Body::Compressed { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Stream { inner } | Body::Counted { inner, .. } => inner.size_hint(),
            Body::Timed { inner, .. } => inner.size_hint(),
            Body::Replay { inner } => inner.size_hint(),
            Body::Channel { .. } => SizeHint::default(),
            Body::File { inner } => inner.size_hint(),
            Body::Compressed { inner } => inner.size_hint(),
        }
    }
}
