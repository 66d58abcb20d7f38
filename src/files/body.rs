//! Body: a file (or a byte range of one) read from disk in bounded chunks,
//! one chunk each time the connection asks for more.
//!
//! Reads happen on the runtime thread, as nginx's do without `aio
//! threads`: a page-cache read of one chunk costs microseconds, and a
//! thread hand-off per chunk would cost more than it saves. Memory per
//! download is one chunk plus what the connection buffers, whatever the
//! file's size.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::sendfile::{self, Spans};

/// Largest chunk read at once.
const CHUNK: u64 = 64 * 1024;

/// The bytes of an open file from an offset, `len` of them.
#[derive(Debug)]
pub struct FileBody {
    file: Option<File>,
    /// Where the next byte is in `file` (its position too, once read from).
    offset: u64,
    remaining: u64,
    /// Set: the bytes go by `sendfile`, and this body yields placeholders.
    zero_copy: Option<Arc<Spans>>,
}

impl FileBody {
    /// `len` bytes of `file` from `offset`.
    pub(super) fn new(mut file: File, offset: u64, len: u64) -> io::Result<Self> {
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        Ok(FileBody {
            file: (len > 0).then_some(file),
            offset,
            remaining: len,
            zero_copy: None,
        })
    }

    /// No bytes (HEAD, 304, 416).
    pub(super) fn empty() -> Self {
        FileBody {
            file: None,
            offset: 0,
            remaining: 0,
            zero_copy: None,
        }
    }

    /// Hands the bytes to the connection's `sendfile` (see
    /// [`crate::sendfile`]) when the body is big enough to gain from it.
    /// The caller vouches that every byte of this body reaches that
    /// connection unchanged (no compression, plain HTTP/1).
    pub fn send_by(&mut self, spans: &Arc<Spans>) {
        // A smaller file goes in one read and leaves with its head in one
        // writev: as few system calls, and one packet, not two.
        if self.remaining > CHUNK && self.file.is_some() {
            self.zero_copy = Some(spans.clone());
        }
    }

    /// The next placeholder, the file queued for the connection first.
    fn placeholder(&mut self) -> Option<Bytes> {
        if let (Some(spans), Some(file)) = (&self.zero_copy, self.file.take()) {
            spans.push(file, self.offset, self.remaining);
        }
        if self.remaining == 0 {
            return None;
        }
        let chunk = sendfile::placeholder(self.remaining);
        self.remaining -= chunk.len() as u64;
        Some(chunk)
    }

    fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let want = self.remaining.min(CHUNK);
        // One read() straight into the spare capacity: no zeroing first,
        // and no small probing reads (std's read_to_end starts at 8 KiB).
        let mut buf = Vec::with_capacity(want as usize);
        loop {
            match rustix::io::read(&*file, rustix::buffer::spare_capacity(&mut buf)) {
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => break,
            }
        }
        if buf.is_empty() {
            // The file shrank under us: the length already sent is a lie,
            // so the response must end in an error, not short.
            self.file = None;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being sent",
            ));
        }
        self.remaining -= buf.len() as u64;
        self.offset += buf.len() as u64;
        if self.remaining == 0 {
            // Close the file as soon as its last byte is read.
            self.file = None;
        }
        Ok(Some(Bytes::from(buf)))
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.zero_copy.is_some() {
            return Poll::Ready(this.placeholder().map(|c| Ok(Frame::data(c))));
        }
        Poll::Ready(this.read_chunk().transpose().map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
