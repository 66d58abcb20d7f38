//! The two ends of a WebSocket session, unwrapped from hyper's upgrade.
//!
//! hyper hands an upgraded connection back as a boxed trait object that
//! still carries what the HTTP connection needed (its activity tracking, the
//! protocol sniffer's rewind buffer). A session can last for days, so each
//! end is taken back to the TLS, TCP or unix stream underneath (the downstream
//! connection, which knows its own wrappers, does the unwrapping and builds
//! an [`End`] here): the relay then polls it directly, and an idle session
//! holds nothing it does not use. HTTP/2 streams (RFC 8441) cannot be
//! unwrapped and stay as they are.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::prefixed::Prefixed;
use crate::socket::{TcpSocket, UnixSocket};
use crate::tls::TlsRecords;
use crate::upstream::Stream;

/// `read`, boxed, or nothing when it is empty: an empty slice of hyper's
/// read buffer would keep that buffer allocated for the session's life, and
/// an empty `Bytes` inline would take 32 bytes in every session's state.
fn ahead(read: Bytes) -> Option<Box<Bytes>> {
    (!read.is_empty()).then(|| Box::new(read))
}

/// The stream under one end of a session.
enum Inner {
    /// A downstream TLS connection (our own record layer).
    Records(Box<TlsRecords>),
    /// A plain TCP connection (to the backend, or a plain-HTTP client).
    Tcp(TcpSocket),
    /// A unix socket connection to the backend.
    Unix(UnixSocket),
    /// Anything hyper would not hand back unwrapped (an HTTP/2 stream).
    Upgraded(Box<TokioIo<Upgraded>>),
}

/// One end of a session: its stream, and the bytes hyper had already read
/// from it past the upgrade (they are read first).
pub struct End {
    /// Boxed: almost always there is none once the session is running.
    pre: Option<Box<Bytes>>,
    inner: Inner,
}

impl End {
    /// The client's end over TLS (downstream HTTPS); `read` is what hyper
    /// had read past the upgrade.
    pub(crate) fn client_tls(tls: TlsRecords, read: Bytes) -> Self {
        End {
            pre: ahead(read),
            inner: Inner::Records(Box::new(tls)),
        }
    }

    /// The client's end over plain TCP; `read` is what hyper had read past
    /// the upgrade.
    pub(crate) fn client_plain(stream: Prefixed<TcpSocket>, read: Bytes) -> Self {
        // Bytes read past a PROXY header were read before anything hyper
        // read from the socket (and are always gone by now).
        let (tcp, past_proxy) = stream.into_parts();
        let pre = if past_proxy.is_empty() {
            ahead(read)
        } else {
            Some(Box::new([&read[..], &past_proxy[..]].concat().into()))
        };
        End {
            pre,
            inner: Inner::Tcp(tcp),
        }
    }

    /// An end hyper would not hand back unwrapped (an HTTP/2 stream).
    pub(crate) fn upgraded(upgraded: Upgraded) -> Self {
        End {
            pre: None,
            inner: Inner::Upgraded(Box::new(TokioIo::new(upgraded))),
        }
    }

    /// The backend's end, from hyper's client-side upgrade.
    pub fn upstream(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<Stream>>() {
            Ok(parts) => End {
                pre: ahead(parts.read_buf),
                inner: match parts.io.into_inner() {
                    Stream::Tcp(tcp) => Inner::Tcp(tcp),
                    Stream::Unix(unix) => Inner::Unix(unix),
                },
            },
            Err(upgraded) => End {
                pre: None,
                inner: Inner::Upgraded(Box::new(TokioIo::new(upgraded))),
            },
        }
    }
}

/// Calls `$method` on whichever stream `$end` holds (all are `Unpin`).
macro_rules! on_inner {
    ($end:expr, $method:ident($($arg:expr),*)) => {
        match &mut $end.get_mut().inner {
            Inner::Records(s) => Pin::new(&mut **s).$method($($arg),*),
            Inner::Tcp(s) => Pin::new(s).$method($($arg),*),
            Inner::Unix(s) => Pin::new(s).$method($($arg),*),
            Inner::Upgraded(s) => Pin::new(&mut **s).$method($($arg),*),
        }
    };
}

impl AsyncRead for End {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(pre) = self.pre.as_mut() {
            let n = pre.len().min(buf.remaining());
            buf.put_slice(&pre[..n]);
            pre.advance(n);
            if pre.is_empty() {
                // Let go of hyper's read buffer.
                self.pre = None;
            }
            return Poll::Ready(Ok(()));
        }
        on_inner!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_inner!(self, poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_inner!(self, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Records(s) => s.is_write_vectored(),
            Inner::Tcp(s) => s.is_write_vectored(),
            Inner::Unix(s) => s.is_write_vectored(),
            Inner::Upgraded(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_inner!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_inner!(self, poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response, StatusCode, header};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::upstream::{Body, handshake};

    /// Bound on every wait here.
    const WAIT: Duration = Duration::from_secs(10);

    /// The backend's end of an upgrade over a unix socket is the socket
    /// itself, with the bytes the backend sent right after its 101 first.
    #[tokio::test]
    async fn an_upstream_unix_socket_is_unwrapped() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|mut req: Request<hyper::body::Incoming>| {
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let mut io = TokioIo::new(on.await.unwrap());
                    let mut buf = [0u8; 4];
                    io.read_exact(&mut buf).await.unwrap();
                    io.write_all(&buf).await.unwrap();
                });
                let mut resp = Response::new(http_body_util::Empty::<Bytes>::new());
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                resp.headers_mut()
                    .insert(header::UPGRADE, "test".parse().unwrap());
                resp.headers_mut()
                    .insert(header::CONNECTION, "upgrade".parse().unwrap());
                async { Ok::<_, std::convert::Infallible>(resp) }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(theirs), svc)
                .with_upgrades()
                .await
        });
        let (mut send, conn) = handshake(Stream::Unix(
            UnixSocket::new(ours.into_std().unwrap()).unwrap(),
        ))
        .await
        .unwrap();
        tokio::spawn(conn.with_upgrades());
        let req = Request::get("/")
            .header(header::UPGRADE, "test")
            .header(header::CONNECTION, "upgrade")
            .body(Body::empty())
            .unwrap();
        let work = async {
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            let mut end = End::upstream(hyper::upgrade::on(resp).await.unwrap());
            assert!(
                matches!(end.inner, Inner::Unix(_)),
                "unwrapped to the socket"
            );
            end.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            end.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        };
        tokio::time::timeout(WAIT, work).await.unwrap();
    }
}
