//! Sendfile: file bytes handed from disk to a plain-HTTP socket by the
//! kernel (`sendfile(2)`), never copied through the proxy, as nginx's
//! `sendfile on` and Caddy's `file_server` do on plain HTTP.
//!
//! hyper writes every response and has no zero-copy body path, so the hand
//! over goes around it: a file body ([`Spans::push`]) queues its file here
//! and gives hyper *placeholder* chunks of the same length, slices of
//! [`PLACEHOLDER`], a static never read. hyper frames them (Content-Length)
//! and writes them in order, with the head, through [`Zerocopy`], which
//! recognises a placeholder by its address and sends that many bytes of the
//! queued file instead. So the byte stream on the wire is exactly what it
//! would have been, and hyper's framing, keep-alive and pipelining are
//! untouched.
//!
//! This holds only while every byte of the body reaches the socket through
//! `Zerocopy` unchanged: plain HTTP/1 (no TLS record layer, no HTTP/2
//! framing), no compression, and hyper's queued (vectored) write strategy,
//! which keeps each body chunk as its own slice instead of copying it into
//! one buffer ([`crate::connection`] sets it). The connection offers a
//! [`Spans`] only there; nothing else ever sees a placeholder.
//!
//! A file that shrinks mid-download makes `sendfile` return 0 early: the
//! write fails and the connection closes, a visibly short response, as
//! when the bytes are read (never the `SIGBUS` a mapped file would give).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::prefixed::Prefixed;
use crate::socket::TcpSocket;

/// Largest placeholder chunk (one per poll of a file body).
const PLACEHOLDER_LEN: usize = 1 << 20;

/// Stands in for file bytes in hyper's write queue; never read. Zeroed and
/// never touched, it takes no memory (it lives in `.bss`).
static PLACEHOLDER: [u8; PLACEHOLDER_LEN] = [0; PLACEHOLDER_LEN];

/// Whether `buf` is (part of) a placeholder.
fn is_placeholder(buf: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    !buf.is_empty() && at >= start && at < start + PLACEHOLDER_LEN
}

/// A placeholder of `len` bytes (at most [`PLACEHOLDER_LEN`]).
pub fn placeholder(len: u64) -> Bytes {
    let len = usize::try_from(len).map_or(PLACEHOLDER_LEN, |l| l.min(PLACEHOLDER_LEN));
    Bytes::from_static(&PLACEHOLDER[..len])
}

/// A file's bytes still to be sent: `left` of them from `offset`.
#[derive(Debug)]
struct Span {
    file: File,
    offset: u64,
    left: u64,
}

/// The files a connection's responses have queued, in the order their
/// placeholders will reach the socket (HTTP/1 writes responses in order;
/// with pipelining the next body may queue before the last is written).
#[derive(Debug, Default)]
pub struct Spans(Mutex<VecDeque<Span>>);

impl Spans {
    /// A connection's (empty) queue.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Queues `len` bytes of `file` from `offset`, to be sent in place of
    /// the next `len` placeholder bytes written.
    pub fn push(&self, file: File, offset: u64, len: u64) {
        if len > 0 {
            self.lock().push_back(Span {
                file,
                offset,
                left: len,
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Span>> {
        // Nothing here can panic while holding the lock; a poisoned queue
        // is still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A socket `sendfile` can write to.
pub trait SendfileTarget {
    /// Sends up to `len` bytes of `file` from `*offset`, advancing it;
    /// `Pending` until the socket is writable.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &File,
        offset: &mut u64,
        len: usize,
    ) -> Poll<io::Result<usize>>;
}

impl SendfileTarget for TcpSocket {
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &File,
        offset: &mut u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let send =
            |tcp: &std::net::TcpStream| rustix::fs::sendfile(tcp, file, Some(&mut *offset), len);
        // A short send may be the file's end, not a full socket: the
        // readiness is kept.
        self.poll_io(cx, Interest::WRITABLE, send, |_| false)
    }
}

impl<IO: SendfileTarget> SendfileTarget for Prefixed<IO> {
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &File,
        offset: &mut u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        // The prefix is read-side only: writes go straight to the socket.
        self.get_ref().poll_sendfile(cx, file, offset, len)
    }
}

/// A plain-HTTP connection's stream: writes pass through, except that
/// placeholders are replaced by the queued files' bytes (see the module).
#[derive(Debug)]
pub struct Zerocopy<IO> {
    io: IO,
    spans: Arc<Spans>,
}

impl<IO> Zerocopy<IO> {
    /// `io`, sending the files `spans` queues.
    pub fn new(io: IO, spans: Arc<Spans>) -> Self {
        Zerocopy { io, spans }
    }

    /// The stream underneath (for an upgrade: no response is in flight, so
    /// nothing is queued).
    pub fn into_inner(self) -> IO {
        self.io
    }
}

impl<IO: SendfileTarget> Zerocopy<IO> {
    /// Sends up to `want` bytes of the oldest queued file.
    fn poll_send(&self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let mut spans = self.spans.lock();
        let Some(span) = spans.front_mut() else {
            return Poll::Ready(Err(io::Error::other(
                "sendfile: a placeholder was written with no file queued",
            )));
        };
        let len = usize::try_from(span.left).map_or(want, |left| left.min(want));
        let n = ready!(self.io.poll_sendfile(cx, &span.file, &mut span.offset, len))?;
        if n == 0 {
            // The file shrank under us: what the head promised can't be
            // sent, so the response must end in an error, not short.
            spans.pop_front();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being sent",
            )));
        }
        span.left -= n as u64;
        if span.left == 0 {
            // Closes the file as soon as its last byte is sent.
            spans.pop_front();
        }
        Poll::Ready(Ok(n))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Zerocopy<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + SendfileTarget + Unpin> AsyncWrite for Zerocopy<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if is_placeholder(buf) {
            return this.poll_send(cx, buf.len());
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Ordinary bytes up to the first placeholder go in one writev; a
        // placeholder at the front goes by sendfile.
        match bufs.iter().position(|b| is_placeholder(b)) {
            Some(0) => this.poll_send(cx, bufs[0].len()),
            Some(i) => Pin::new(&mut this.io).poll_write_vectored(cx, &bufs[..i]),
            None => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn file_with(data: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[test]
    fn only_placeholder_slices_are_placeholders() {
        assert!(is_placeholder(&placeholder(10)));
        assert!(is_placeholder(&placeholder(10)[3..]));
        assert!(!is_placeholder(&placeholder(10)[..0]));
        assert!(!is_placeholder(&[0u8; 10]));
        assert_eq!(placeholder(u64::MAX).len(), PLACEHOLDER_LEN);
    }

    #[tokio::test]
    async fn placeholders_become_the_queued_files_bytes_in_order() {
        let (client, server) = pair().await;
        let spans = Spans::new();
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        spans.push(file_with(&a), 1000, 200_000);
        spans.push(file_with(b"hello, world"), 7, 5);
        let mut z = Zerocopy::new(TcpSocket::from_tokio(server).unwrap(), spans.clone());
        let writer = async move {
            z.write_all(b"HEAD\n").await.unwrap();
            // The placeholder as hyper would queue it, split anyhow.
            z.write_all(&placeholder(150_000)).await.unwrap();
            z.write_all(&placeholder(50_000)).await.unwrap();
            z.write_all(b"|").await.unwrap();
            z.write_all(&placeholder(5)).await.unwrap();
            z.shutdown().await.unwrap();
        };
        let mut client = client;
        let reader = async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        let mut want = b"HEAD\n".to_vec();
        want.extend_from_slice(&a[1000..201_000]);
        want.extend_from_slice(b"|world");
        assert!(got == want, "bytes differ");
        assert!(spans.lock().is_empty());
    }

    #[tokio::test]
    async fn a_file_shorter_than_queued_fails_the_write() {
        let (_client, server) = pair().await;
        let spans = Spans::new();
        spans.push(file_with(b"short"), 0, 100);
        let mut z = Zerocopy::new(TcpSocket::from_tokio(server).unwrap(), spans);
        let err = z.write_all(&placeholder(100)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_placeholder_with_nothing_queued_is_an_error_not_zeros() {
        let (_client, server) = pair().await;
        let mut z = Zerocopy::new(TcpSocket::from_tokio(server).unwrap(), Spans::new());
        assert!(z.write_all(&placeholder(10)).await.is_err());
    }
}
