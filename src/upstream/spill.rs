//! Spill: a body's bytes kept in arrival order — the first [`MEMORY_LIMIT`]
//! in memory, the rest in an unnamed temporary file — and read back from the
//! front, while more may still be arriving.
//!
//! The one spill buffer behind both directions, so that a slow client never
//! holds a sync worker and memory per body stays bounded: a request body
//! read whole before it joins a pool's queue, then played back upstream by
//! [`Replay`]; and a response drained from its server faster than the client
//! takes it (`crate::buffer`).

use std::collections::VecDeque;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::error::BoxError;

/// Bytes of one body held in memory before the rest goes to a temporary file.
pub(crate) const MEMORY_LIMIT: usize = 1 << 20;
/// Size of each chunk read back from the file.
const CHUNK: usize = 64 * 1024;

/// A body's bytes in arrival order, in memory and then on disk.
#[derive(Debug, Default)]
pub(crate) struct Spill {
    memory: VecDeque<Bytes>,
    /// Bytes in `memory`.
    in_memory: usize,
    /// Made when the first chunk does not fit in memory; from then on every
    /// chunk goes there, behind what memory holds, so order is kept.
    file: Option<SpillFile>,
    /// Bytes ever pushed.
    len: u64,
}

impl Spill {
    /// Bytes ever pushed.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes pushed and not yet taken.
    pub(crate) fn unread(&self) -> u64 {
        self.in_memory as u64 + self.on_disk()
    }

    /// Bytes waiting in the file.
    pub(crate) fn on_disk(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.write_pos - f.read_pos)
    }

    /// Adds a chunk at the end: in memory while it fits, else in the file.
    pub(crate) async fn push(&mut self, data: Bytes) -> io::Result<()> {
        self.len += data.len() as u64;
        if self.file.is_none() && self.in_memory + data.len() <= MEMORY_LIMIT {
            self.in_memory += data.len();
            self.memory.push_back(data);
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(SpillFile::create().await?),
        };
        file.append(&data).await
    }

    /// Takes the next chunk held in memory, leaving the file alone.
    pub(crate) fn pop_memory(&mut self) -> Option<Bytes> {
        let b = self.memory.pop_front()?;
        self.in_memory -= b.len();
        Some(b)
    }

    /// Takes the next chunk: memory first, then the file; `None` when
    /// everything pushed so far has been taken.
    pub(crate) fn poll_pop(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(b) = self.pop_memory() {
            return Poll::Ready(Some(Ok(b)));
        }
        match &mut self.file {
            Some(f) if f.read_pos < f.write_pos => f.poll_read_chunk(cx).map(Some),
            _ => Poll::Ready(None),
        }
    }

    /// [`Spill::poll_pop`], awaited.
    pub(crate) async fn pop(&mut self) -> Option<io::Result<Bytes>> {
        std::future::poll_fn(|cx| self.poll_pop(cx)).await
    }
}

/// A temporary file written at the end and read from the front. Reads and
/// writes share the file's one cursor, so each moves it where it needs it.
#[derive(Debug)]
struct SpillFile {
    file: tokio::fs::File,
    /// Where the next read starts.
    read_pos: u64,
    /// Where the next write goes: the bytes written so far.
    write_pos: u64,
    /// Where the file's cursor is (as far as the last operation left it).
    cursor: u64,
    /// Written since the last flush: flushed before reading, so a write
    /// error is reported and the read sees the bytes.
    dirty: bool,
    /// A seek to `read_pos` was started and not yet seen complete.
    seeking: bool,
}

impl SpillFile {
    async fn create() -> io::Result<Self> {
        // Unnamed: the file is gone from the disk as soon as it is closed,
        // even if the process is killed.
        let f = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(io::Error::other)??;
        Ok(SpillFile {
            file: tokio::fs::File::from_std(f),
            read_pos: 0,
            write_pos: 0,
            cursor: 0,
            dirty: false,
            seeking: false,
        })
    }

    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.cursor != self.write_pos {
            // Supersedes any seek a read started.
            self.seeking = false;
            self.file.seek(SeekFrom::Start(self.write_pos)).await?;
        }
        self.dirty = true;
        self.file.write_all(data).await?;
        self.write_pos += data.len() as u64;
        self.cursor = self.write_pos;
        Ok(())
    }

    /// Reads up to one chunk from `read_pos`.
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        if self.dirty {
            ready!(Pin::new(&mut self.file).poll_flush(cx))?;
            self.dirty = false;
        }
        while self.cursor != self.read_pos {
            if !self.seeking {
                Pin::new(&mut self.file).start_seek(SeekFrom::Start(self.read_pos))?;
                self.seeking = true;
            }
            let pos = ready!(Pin::new(&mut self.file).poll_complete(cx));
            self.seeking = false;
            self.cursor = pos?;
        }
        let left = self.write_pos - self.read_pos;
        let mut buf = BytesMut::zeroed(usize::try_from(left).unwrap_or(CHUNK).min(CHUNK));
        let mut rb = ReadBuf::new(&mut buf);
        ready!(Pin::new(&mut self.file).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spill file ended early",
            )));
        }
        buf.truncate(n);
        self.read_pos += n as u64;
        self.cursor = self.read_pos;
        Poll::Ready(Ok(buf.freeze()))
    }
}

/// A buffered body played back: its bytes from a `Spill`, then its trailers.
#[derive(Debug)]
pub struct Replay {
    spill: Spill,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// A body of these bytes and trailer fields.
    pub(crate) fn new(spill: Spill, trailers: Option<HeaderMap>) -> Self {
        Replay { spill, trailers }
    }

    /// Total length of the body.
    pub(crate) fn len(&self) -> u64 {
        self.spill.len()
    }

    /// The trailer fields that will follow the body, if any.
    pub(crate) fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        Poll::Ready(match ready!(this.spill.poll_pop(cx)) {
            Some(Ok(data)) => Some(Ok(Frame::data(data))),
            Some(Err(e)) => Some(Err(e.into())),
            None => this.trailers.take().map(|t| Ok(Frame::trailers(t))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.spill.unread() == 0 && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.trailers.is_some() {
            // Trailers need chunked framing, which an exact size would rule out.
            return SizeHint::default();
        }
        SizeHint::with_exact(self.spill.unread())
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// Chunks of distinct bytes, `n` bytes each.
    fn chunk(i: usize, n: usize) -> Bytes {
        Bytes::from(vec![(i % 251) as u8; n])
    }

    #[tokio::test]
    async fn bytes_come_back_in_order_from_memory_then_disk_while_more_arrive() {
        let mut spill = Spill::default();
        let n = 300 * 1024;
        let mut expect = Vec::new();
        let mut got = Vec::new();
        // Past MEMORY_LIMIT, with reads in between writes.
        for i in 0..12 {
            spill.push(chunk(i, n)).await.unwrap();
            expect.extend_from_slice(&chunk(i, n));
            if i % 3 == 2 {
                let b = spill.pop().await.unwrap().unwrap();
                got.extend_from_slice(&b);
            }
        }
        assert!(spill.on_disk() > 0, "some of it spilled");
        assert_eq!(spill.len(), 12 * n as u64);
        while let Some(b) = spill.pop().await {
            got.extend_from_slice(&b.unwrap());
        }
        assert_eq!(spill.unread(), 0);
        assert!(got == expect, "same bytes, same order");
    }

    #[tokio::test]
    async fn a_replay_yields_the_whole_body_then_its_trailers() {
        let mut spill = Spill::default();
        let mut expect = Vec::new();
        for i in 0..5 {
            spill.push(chunk(i, 400 * 1024)).await.unwrap();
            expect.extend_from_slice(&chunk(i, 400 * 1024));
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let replay = Replay::new(spill, Some(trailers.clone()));
        assert_eq!(replay.len(), expect.len() as u64);
        assert!(http_body::Body::size_hint(&replay).exact().is_none());
        let body = replay.collect().await.unwrap();
        assert_eq!(body.trailers(), Some(&trailers));
        assert!(body.to_bytes() == expect);

        let replay = Replay::new(Spill::default(), None);
        assert!(http_body::Body::is_end_stream(&replay));
    }
}
