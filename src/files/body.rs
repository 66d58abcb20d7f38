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
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Largest chunk read at once.
const CHUNK: u64 = 64 * 1024;

/// The bytes of an open file from an offset, `len` of them.
#[derive(Debug)]
pub struct FileBody {
    file: Option<File>,
    remaining: u64,
}

impl FileBody {
    /// `len` bytes of `file` from `offset`.
    pub(super) fn new(mut file: File, offset: u64, len: u64) -> io::Result<Self> {
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        Ok(FileBody {
            file: (len > 0).then_some(file),
            remaining: len,
        })
    }

    /// No bytes (HEAD, 304, 416).
    pub(super) fn empty() -> Self {
        FileBody {
            file: None,
            remaining: 0,
        }
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
        Poll::Ready(this.read_chunk().transpose().map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
