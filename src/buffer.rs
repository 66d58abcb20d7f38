//! Buffer: reading bodies at the speed of the fast side so a slow client
//! never holds a sync worker.
//!
//! Request bodies are read completely before the request joins a pool's
//! queue (`read_request`); response bodies are drained from the server as
//! fast as it sends them (`drain_response`), so the server's slot is freed
//! when the server is done, not when the client is. Both keep what is not
//! passed on yet in a `Spill` (memory, then an unnamed temporary file).
//!
//! The server's slot is whatever the caller hands in (the pool's lease):
//! this module only drops it, so it does not depend on the pool.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc::{self, Permit};

use crate::upstream::{
    Body, BoxError, ExchangeError, Failure, Fault, MEMORY_LIMIT, Pulled, Replay, Spill,
    UpstreamError,
};

/// Bytes of one response held on disk before the server is read more slowly.
const SPILL_LIMIT: u64 = 1 << 30;

/// Why a request body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// Over the pool's `max_body`.
    #[error("request body is larger than max_body ({0} bytes)")]
    TooLarge(u64),
    /// The client's body stream failed (disconnect, bad chunking).
    #[error("reading the request body failed: {0}")]
    Client(#[source] hyper::Error),
    /// The spill file could not be written or read.
    #[error("temporary file for the request body failed: {0}")]
    Spill(#[from] std::io::Error),
}

impl Failure for BufferError {
    fn fault(&self) -> Fault {
        match self {
            BufferError::TooLarge(_) | BufferError::Client(_) => Fault::Client,
            BufferError::Spill(_) => Fault::Proxy,
        }
    }

    /// Never: no server was involved, and another would not change the
    /// body (the client's) or the proxy's disk.
    fn retry_safe(&self) -> bool {
        false
    }
}

/// Reads a whole request body (up to `max_body`) before it is dispatched.
pub(crate) async fn read_request(body: Incoming, max_body: u64) -> Result<Replay, BufferError> {
    if body.size_hint().lower() > max_body {
        return Err(BufferError::TooLarge(max_body));
    }
    let mut body = body;
    let mut spill = Spill::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BufferError::Client)?;
        match frame.into_data() {
            Ok(data) => {
                if spill.len() + data.len() as u64 > max_body {
                    return Err(BufferError::TooLarge(max_body));
                }
                spill.push(data).await?;
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok(Replay::new(spill, trailers))
}

/// Drains a response body from the server as fast as it comes, dropping
/// `lease` (the server's slot) when the server is done, and returns the body
/// the client reads.
///
/// A body whose length is known and small is read inline; anything else gets
/// a task that reads the server and feeds the client concurrently, keeping
/// what the client has not taken yet in memory and then on disk.
pub(crate) async fn drain_response<L: Send + 'static>(
    mut body: Pulled,
    lease: L,
    timeout: Duration,
) -> Result<Body, UpstreamError> {
    if body.is_end_stream() {
        drop(lease);
        return Ok(Body::empty());
    }
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MEMORY_LIMIT as u64);
    if small {
        let mut collected = BytesMut::new();
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame?;
                if let Some(d) = frame.data_ref() {
                    collected.extend_from_slice(d);
                }
            }
            Ok::<_, ExchangeError>(())
        };
        // Nothing has reached the client yet, so a server that broke
        // mid-body is reported as a failed exchange (502, or a retry), never
        // as a short body presented as complete.
        return match tokio::time::timeout(timeout, read).await {
            Ok(Ok(())) => {
                drop(lease);
                Ok(Body::full(collected.freeze()))
            }
            Ok(Err(e)) => Err(UpstreamError::BodyCutShort(e)),
            Err(_) => Err(UpstreamError::Timeout),
        };
    }
    let (tx, rx) = mpsc::channel(4);
    let pipe = Pipe {
        upstream: body,
        lease: Some(lease),
        tx,
        spill: Spill::default(),
        trailers: None,
        upstream_done: false,
    };
    tokio::spawn(pipe.run(timeout));
    Ok(Body::Channel { rx })
}

type FrameResult = Result<Frame<Bytes>, BoxError>;

/// What the pipe's loop woke up for. (The select! holds a borrow of the
/// pipe until it ends, so the work that needs all of it is done after.)
enum Step {
    /// The server sent nothing for `read_timeout`.
    Stalled,
    /// The server's next frame, or its end.
    Frame(Option<Result<Frame<Bytes>, ExchangeError>>),
    /// The client was sent the next chunk.
    Fed,
    /// Nothing more to do.
    Done,
}

/// The task between a server's response body and the client's.
struct Pipe<L> {
    upstream: Pulled,
    /// The server's slot, held until the server has sent everything.
    lease: Option<L>,
    tx: mpsc::Sender<FrameResult>,
    /// What the server sent and the client has not taken yet.
    spill: Spill,
    trailers: Option<HeaderMap>,
    upstream_done: bool,
}

impl<L> Pipe<L> {
    /// Reads the server into memory/disk and feeds the client from it.
    ///
    /// A server that sends nothing for `read_timeout` while more is expected
    /// is cut off, so a stalled server cannot hold its slot forever.
    async fn run(mut self, read_timeout: Duration) {
        let stalled = tokio::time::sleep(read_timeout);
        tokio::pin!(stalled);
        loop {
            let has_pending = self.spill.unread() > 0;
            if self.upstream_done && !has_pending {
                if let Some(t) = self.trailers.take() {
                    let _ = self.tx.send(Ok(Frame::trailers(t))).await;
                }
                return;
            }
            let can_read = !self.upstream_done && self.spill.on_disk() < SPILL_LIMIT;
            let step = tokio::select! {
                biased;
                () = &mut stalled, if can_read => Step::Stalled,
                frame = self.upstream.frame(), if can_read => Step::Frame(frame),
                permit = self.tx.reserve(), if has_pending => {
                    // Time the client takes is not the server's stall.
                    stalled.as_mut().reset(tokio::time::Instant::now() + read_timeout);
                    match permit {
                        Ok(permit) => feed(&mut self.spill, permit).await,
                        // The client went away: stop reading the server.
                        Err(_) => Step::Done,
                    }
                }
            };
            match step {
                Step::Stalled => {
                    tracing::warn!(
                        server = %self.upstream.server().addr,
                        "upstream response body stalled longer than upstream_response; cut off"
                    );
                    self.fail("upstream response body stalled".into()).await;
                    return;
                }
                Step::Frame(None) => {
                    self.upstream_done = true;
                    self.lease.take();
                }
                Step::Frame(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream response body failed mid-stream");
                    self.fail(e.into()).await;
                    return;
                }
                Step::Frame(Some(Ok(frame))) => {
                    stalled
                        .as_mut()
                        .reset(tokio::time::Instant::now() + read_timeout);
                    if let Err(e) = self.keep(frame).await {
                        let _ = self.tx.send(Err(e.into())).await;
                        return;
                    }
                }
                Step::Fed => {}
                Step::Done => return,
            }
        }
    }

    /// Keeps a frame from the server until the client takes it.
    async fn keep(&mut self, frame: Frame<Bytes>) -> std::io::Result<()> {
        match frame.into_data() {
            Ok(data) => self.spill.push(data).await,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    self.trailers = Some(t);
                }
                Ok(())
            }
        }
    }

    /// The server failed: frees its slot, delivers what is in memory, then
    /// the error, so the client sees a truncated response. Not what is on
    /// disk: that can be up to `SPILL_LIMIT`, and reading it back would keep
    /// this task going on behalf of a server that has failed.
    async fn fail(&mut self, error: BoxError) {
        self.lease.take();
        while let Some(b) = self.spill.pop_memory() {
            if self.tx.send(Ok(Frame::data(b))).await.is_err() {
                return;
            }
        }
        let _ = self.tx.send(Err(error)).await;
    }
}

/// Sends the client the next chunk the spill holds; `Done` if reading it
/// failed (the client is sent the error).
async fn feed(spill: &mut Spill, permit: Permit<'_, FrameResult>) -> Step {
    match spill.pop().await {
        Some(Ok(b)) => permit.send(Ok(Frame::data(b))),
        Some(Err(e)) => {
            permit.send(Err(e.into()));
            return Step::Done;
        }
        None => {}
    }
    Step::Fed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_errors_are_the_clients_or_the_proxys_and_never_retried() {
        let cases = [
            (BufferError::TooLarge(1), Fault::Client),
            (
                BufferError::Spill(std::io::Error::other("disk full")),
                Fault::Proxy,
            ),
        ];
        for (e, fault) in cases {
            assert_eq!(e.fault(), fault, "{e}");
            assert!(!e.retry_safe(), "{e}");
        }
    }
}
