//! Connect: the one way to open a connection to a pool server, whatever
//! kind of address it has, for pool requests, WebSocket handshakes and
//! health checks alike.
//!
//! [`Address`] is the single place that grows with a new kind of address:
//! parsing it in [`Address::parse`] and connecting to it in [`connect`],
//! under the configured connect timeout. Every connection is a [`Stream`].

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::UpstreamError;
use crate::socket::{self, TcpSocket, UnixSocket};

/// The prefix of a unix socket server (`unix:/run/app.sock`).
const UNIX_PREFIX: &str = "unix:";

/// Where a pool server listens, parsed from its configured string.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Address {
    /// `host:port`, over TCP.
    Tcp(http::uri::Authority),
    /// `unix:PATH`, a unix stream socket (the path resolved at load).
    Unix(PathBuf),
}

impl Address {
    /// Parses a server address as configured: `host:port`, or `unix:PATH`
    /// where `socket` is the path as resolved at load (else PATH as written).
    pub(crate) fn parse(s: &str, socket: Option<&Path>) -> Result<Self, http::uri::InvalidUri> {
        match s.strip_prefix(UNIX_PREFIX) {
            Some(path) => Ok(Address::Unix(
                socket.map_or_else(|| PathBuf::from(path), Path::to_path_buf),
            )),
            None => s.parse().map(Address::Tcp),
        }
    }

    /// The value for a `Host` header of a request this proxy makes itself
    /// (health checks): the authority, or `localhost` for a socket.
    pub(crate) fn host<'a>(&self, written: &'a str) -> &'a str {
        match self {
            Address::Tcp(_) => written,
            Address::Unix(_) => "localhost",
        }
    }
}

/// A connection to a pool server, over TCP or a unix socket.
#[derive(Debug)]
pub(crate) enum Stream {
    /// A TCP connection (`TCP_NODELAY` set).
    Tcp(TcpSocket),
    /// A unix stream socket connection.
    Unix(UnixSocket),
}

/// Calls `$method` on whichever stream `$s` holds (both are `Unpin`).
macro_rules! on_stream {
    ($s:expr, $method:ident($($arg:expr),*)) => {
        match $s.get_mut() {
            Stream::Tcp(s) => Pin::new(s).$method($($arg),*),
            Stream::Unix(s) => Pin::new(s).$method($($arg),*),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_stream!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, poll_shutdown(cx))
    }
}

/// Opens a connection to `addr` within `timeout`. A socket path that is
/// missing or refuses fails as a refused TCP connect does.
pub(crate) async fn connect(addr: &Address, timeout: Duration) -> Result<Stream, UpstreamError> {
    let connected = match addr {
        Address::Tcp(authority) => {
            // TCP_NODELAY is set: requests are written whole.
            tokio::time::timeout(timeout, socket::connect_tcp(authority.as_str()))
                .await
                .map(|r| r.map(Stream::Tcp))
        }
        Address::Unix(path) => tokio::time::timeout(timeout, socket::connect_unix(path))
            .await
            .map(|r| r.map(Stream::Unix)),
    };
    match connected {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(UpstreamError::Connect(e)),
        Err(_) => Err(UpstreamError::ConnectTimeout(timeout)),
    }
}
