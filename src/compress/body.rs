//! Body: a response body compressed as it streams.
//!
//! Each chunk from the inner body goes into the encoder; compressed bytes
//! go out once enough have collected, and whenever the inner body has
//! nothing ready (the backend paused) the encoder is flushed, so what the
//! backend sent in pieces reaches the client in pieces. Memory is the
//! encoder's state plus one chunk, whatever the body's length.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::codec::Encoder;
/// Errors of the bodies compressed (the same boxed type the proxy uses).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Compressed output is sent once this much has collected (or at a flush).
const SEND_AT: usize = 16 * 1024;

pin_project_lite::pin_project! {
    /// `B`, compressed with one encoder.
    pub struct CompressBody<B> {
        #[pin]
        inner: B,
        // None once the stream is finished.
        encoder: Option<Encoder>,
        // Bytes written since the last flush.
        dirty: bool,
        // The finished stream's last bytes, then the inner trailers.
        tail: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
    }
}

impl<B> CompressBody<B> {
    /// `inner`, compressed by `encoder`.
    pub(crate) fn new(inner: B, encoder: Encoder) -> Self {
        CompressBody {
            inner,
            encoder: Some(encoder),
            dirty: false,
            tail: None,
            trailers: None,
        }
    }
}

impl<B> Body for CompressBody<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                // Finished: the last bytes, then the trailers, then the end.
                if let Some(tail) = this.tail.take() {
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        encoder.write(&data)?;
                        *this.dirty = true;
                        if encoder.output().len() >= SEND_AT {
                            let out = std::mem::take(encoder.output());
                            return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body: finish, then send them.
                        *this.trailers = frame.into_trailers().ok();
                        finish(this.encoder, this.tail)?;
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => finish(this.encoder, this.tail)?,
                Poll::Pending => {
                    if !*this.dirty {
                        return Poll::Pending;
                    }
                    // The backend paused: what it sent so far goes out now.
                    *this.dirty = false;
                    encoder.flush()?;
                    let out = std::mem::take(encoder.output());
                    if out.is_empty() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.tail.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Ends the stream; its last bytes (with any not yet sent) wait in `tail`.
fn finish(encoder: &mut Option<Encoder>, tail: &mut Option<Bytes>) -> Result<(), BoxError> {
    if let Some(mut e) = encoder.take() {
        let mut out = std::mem::take(e.output());
        out.extend(e.finish_into()?);
        *tail = (!out.is_empty()).then(|| out.into());
    }
    Ok(())
}
