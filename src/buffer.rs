//! Buffer: reading bodies at the speed of the fast side so a slow client
//! never holds a sync worker.
//!
//! Request bodies are read completely before the request joins a pool's
//! queue ([`read_request`]); response bodies are drained from the server as
//! fast as it sends them ([`drain_response`]), so the server's slot is freed
//! when the server is done, not when the client is. Both keep up to
//! [`MEMORY_LIMIT`] in memory and spill the rest to an unnamed temporary file.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use crate::pool::Lease;
use crate::upstream::UpstreamError;
use crate::upstream::{Body, BoxError};

/// Bytes of one body held in memory before the rest goes to a temporary file.
pub const MEMORY_LIMIT: usize = 1 << 20;
/// Bytes of one response held on disk before the server is read more slowly.
pub const SPILL_LIMIT: u64 = 1 << 30;
/// Size of each chunk read back from a spill file.
const CHUNK: usize = 64 * 1024;

/// Why a request body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// Over the pool's `max_body`.
    #[error("request body is larger than max_body ({0} bytes)")]
    TooLarge(u64),
    /// The client's body stream failed (disconnect, bad chunking).
    #[error("reading the request body failed: {0}")]
    Client(String),
    /// The spill file could not be written or read.
    #[error("temporary file for the request body failed: {0}")]
    Spill(#[from] std::io::Error),
}

/// A body held in memory, then in a temporary file; replayed in order.
#[derive(Debug, Default)]
pub struct Spilled {
    memory: VecDeque<Bytes>,
    file: Option<tokio::fs::File>,
    /// Bytes still to read from `file`.
    file_remaining: u64,
    trailers: Option<HeaderMap>,
    len: u64,
}

impl Spilled {
    /// Total length of the body.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The trailer fields that will follow the body, if any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    async fn push(&mut self, data: Bytes) -> std::io::Result<()> {
        self.len += data.len() as u64;
        let in_memory: usize = self.memory.iter().map(Bytes::len).sum();
        if self.file.is_none() && in_memory + data.len() <= MEMORY_LIMIT {
            self.memory.push_back(data);
            return Ok(());
        }
        if self.file.is_none() {
            let f = tokio::task::spawn_blocking(tempfile::tempfile)
                .await
                .map_err(std::io::Error::other)??;
            self.file = Some(tokio::fs::File::from_std(f));
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&data).await?;
            self.file_remaining += data.len() as u64;
        }
        Ok(())
    }

    async fn rewind(&mut self) -> std::io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush().await?;
            f.seek(SeekFrom::Start(0)).await?;
        }
        Ok(())
    }

    /// Polls the next chunk: memory first, then the file, then trailers.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(b) = self.memory.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if self.file_remaining > 0
            && let Some(f) = self.file.as_mut()
        {
            let want = (self.file_remaining as usize).min(CHUNK);
            let mut buf = BytesMut::zeroed(want);
            let mut rb = ReadBuf::new(&mut buf);
            return match Pin::new(f).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Some(Err("spill file ended early".into())));
                    }
                    buf.truncate(n);
                    self.file_remaining -= n as u64;
                    Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
                }
            };
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end(&self) -> bool {
        self.memory.is_empty() && self.file_remaining == 0 && self.trailers.is_none()
    }
}

/// Reads a whole request body (up to `max_body`) before it is dispatched.
pub async fn read_request(body: Incoming, max_body: u64) -> Result<Spilled, BufferError> {
    if body.size_hint().lower() > max_body {
        return Err(BufferError::TooLarge(max_body));
    }
    let mut body = body;
    let mut out = Spilled::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BufferError::Client(e.to_string()))?;
        match frame.into_data() {
            Ok(data) => {
                if out.len + data.len() as u64 > max_body {
                    return Err(BufferError::TooLarge(max_body));
                }
                out.push(data).await?;
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    out.trailers = Some(t);
                }
            }
        }
    }
    out.rewind().await?;
    Ok(out)
}

/// Request or response body replayed from a [`Spilled`] buffer.
#[derive(Debug)]
pub struct Replay(pub Spilled);

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().0.poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        if self.0.trailers.is_some() {
            // Trailers need chunked framing, which an exact size would rule out.
            return SizeHint::default();
        }
        let rest =
            self.0.memory.iter().map(|b| b.len() as u64).sum::<u64>() + self.0.file_remaining;
        SizeHint::with_exact(rest)
    }
}

/// Drains a response body from the server as fast as it comes, releasing
/// `lease` when the server is done, and returns the body the client reads.
///
/// A body whose length is known and small is read inline; anything else gets
/// a task that reads the server and feeds the client concurrently, keeping
/// what the client has not taken yet in memory and then on disk.
pub async fn drain_response(
    mut body: crate::upstream::Pulled,
    lease: Lease,
    timeout: std::time::Duration,
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
            Ok::<_, hyper::Error>(())
        };
        // Nothing has reached the client yet, so a server that broke
        // mid-body is reported as a failed exchange (502, or a retry), never
        // as a short body presented as complete.
        return match tokio::time::timeout(timeout, read).await {
            Ok(Ok(())) => {
                drop(lease);
                Ok(Body::full(collected.freeze()))
            }
            Ok(Err(e)) => Err(UpstreamError::Response(format!(
                "response body cut short: {}",
                crate::upstream::error_chain(&e)
            ))),
            Err(_) => Err(UpstreamError::Timeout),
        };
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(pipe(body, lease, tx, timeout));
    Ok(Body::Channel { rx })
}

type FrameResult = Result<Frame<Bytes>, BoxError>;

/// Reads the server into memory/disk and feeds the client from it.
///
/// A server that sends nothing for `read_timeout` while more is expected is
/// cut off, so a stalled server cannot hold its slot forever.
async fn pipe(
    mut upstream: crate::upstream::Pulled,
    lease: Lease,
    tx: mpsc::Sender<FrameResult>,
    read_timeout: std::time::Duration,
) {
    let stalled = tokio::time::sleep(read_timeout);
    tokio::pin!(stalled);
    let mut lease = Some(lease);
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let mut pending_bytes = 0usize;
    // Spill file: written at the end, read from the front.
    let mut spill: Option<SpillFile> = None;
    let mut on_disk = 0u64;
    let mut trailers: Option<HeaderMap> = None;
    let mut upstream_done = false;
    loop {
        let has_pending = pending_bytes > 0 || on_disk > 0;
        if upstream_done && !has_pending {
            if let Some(t) = trailers.take() {
                let _ = tx.send(Ok(Frame::trailers(t))).await;
            }
            return;
        }
        let can_read = !upstream_done && on_disk < SPILL_LIMIT;
        tokio::select! {
            biased;
            () = &mut stalled, if can_read => {
                let addr = lease.as_ref().and_then(|l| l.server()).map(|s| s.addr.clone());
                tracing::warn!(
                    server = addr.as_deref().unwrap_or("-"),
                    "upstream response body stalled longer than upstream_response; cut off"
                );
                lease.take();
                while let Some(b) = pending.pop_front() {
                    if tx.send(Ok(Frame::data(b))).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Err("upstream response body stalled".into())).await;
                return;
            }
            frame = upstream.frame(), if can_read => match frame {
                None => {
                    upstream_done = true;
                    lease.take();
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "upstream response body failed mid-stream");
                    // Deliver what arrived, then the error, so the client
                    // sees a truncated response.
                    lease.take();
                    while let Some(b) = pending.pop_front() {
                        if tx.send(Ok(Frame::data(b))).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                Some(Ok(frame)) => {
                    stalled.as_mut().reset(tokio::time::Instant::now() + read_timeout);
                    match frame.into_data() {
                    Ok(data) => {
                        if spill.is_none() && pending_bytes + data.len() <= MEMORY_LIMIT {
                            pending_bytes += data.len();
                            pending.push_back(data);
                        } else {
                            if spill.is_none() {
                                match SpillFile::open().await {
                                    Ok(f) => spill = Some(f),
                                    Err(e) => {
                                        let _ = tx.send(Err(e.into())).await;
                                        return;
                                    }
                                }
                            }
                            if let Some(f) = spill.as_mut() {
                                if let Err(e) = f.append(&data).await {
                                    let _ = tx.send(Err(e.into())).await;
                                    return;
                                }
                                on_disk += data.len() as u64;
                            }
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                    }
                    }
                }
            },
            permit = tx.reserve(), if has_pending => {
                // Time the client takes is not the server's stall.
                stalled.as_mut().reset(tokio::time::Instant::now() + read_timeout);
                let Ok(permit) = permit else {
                    // The client went away: stop reading the server.
                    return;
                };
                if let Some(b) = pending.pop_front() {
                    pending_bytes -= b.len();
                    permit.send(Ok(Frame::data(b)));
                } else if let Some(f) = spill.as_mut() {
                    match f.read_chunk().await {
                        Ok(b) => {
                            on_disk -= b.len() as u64;
                            permit.send(Ok(Frame::data(b)));
                        }
                        Err(e) => {
                            permit.send(Err(e.into()));
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// A temporary file written at the end and read from the front.
struct SpillFile {
    file: tokio::fs::File,
    read_pos: u64,
    write_pos: u64,
}

impl SpillFile {
    async fn open() -> std::io::Result<Self> {
        let f = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(std::io::Error::other)??;
        Ok(SpillFile {
            file: tokio::fs::File::from_std(f),
            read_pos: 0,
            write_pos: 0,
        })
    }

    async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(self.write_pos)).await?;
        self.file.write_all(data).await?;
        self.file.flush().await?;
        self.write_pos += data.len() as u64;
        Ok(())
    }

    /// Reads up to one chunk from the read position.
    async fn read_chunk(&mut self) -> std::io::Result<Bytes> {
        use tokio::io::AsyncReadExt;
        let want = ((self.write_pos - self.read_pos) as usize).min(CHUNK);
        self.file.seek(SeekFrom::Start(self.read_pos)).await?;
        let mut buf = BytesMut::zeroed(want);
        self.file.read_exact(&mut buf).await?;
        self.read_pos += want as u64;
        Ok(buf.freeze())
    }
}
