//! Prefixed: a stream whose first bytes were already read from it.
//!
//! Reading a PROXY protocol header takes one `read` of whatever has arrived,
//! which usually includes the start of what follows (a TLS ClientHello, a
//! request head). Those bytes are handed back here, ahead of the socket,
//! so the header costs no extra system call. Once they are read the buffer
//! is freed and the stream is the socket alone.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io`, with `prefix` to be read before anything from it.
#[derive(Debug)]
pub struct Prefixed<IO> {
    /// Unread bytes; `None` once read (or when there never were any).
    prefix: Option<Box<[u8]>>,
    /// How much of `prefix` has been read.
    at: usize,
    io: IO,
}

impl<IO> Prefixed<IO> {
    /// `io` with nothing read ahead.
    pub fn new(io: IO) -> Self {
        Prefixed {
            prefix: None,
            at: 0,
            io,
        }
    }

    /// `io`, to be read after `prefix`.
    pub fn with_prefix(io: IO, prefix: &[u8]) -> Self {
        Prefixed {
            prefix: (!prefix.is_empty()).then(|| prefix.into()),
            at: 0,
            io,
        }
    }

    /// The bytes read ahead and not yet read through this stream.
    pub fn pending(&self) -> &[u8] {
        self.prefix.as_deref().map_or(&[], |p| &p[self.at..])
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The stream underneath, and the bytes read ahead that are still
    /// unread (to be read before it).
    pub fn into_parts(self) -> (IO, Vec<u8>) {
        let rest = self.pending().to_vec();
        (self.io, rest)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(prefix) = &this.prefix {
            let rest = &prefix[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == prefix.len() {
                this.prefix = None;
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_is_read_first_then_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut p = Prefixed::with_prefix(a, b"hello");
        let mut small = [0u8; 3];
        p.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        assert_eq!(p.pending(), b"lo");
        let mut rest = String::new();
        p.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "lo world");
        assert!(p.pending().is_empty());
        assert!(p.prefix.is_none(), "a read prefix is freed");
    }

    #[test]
    fn an_empty_prefix_allocates_nothing() {
        let p = Prefixed::with_prefix((), b"");
        assert!(p.prefix.is_none());
        let (_, rest) = p.into_parts();
        assert!(rest.is_empty());
    }
}
