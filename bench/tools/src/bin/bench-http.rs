//! Fast HTTP/1.1 backend: `GET /...` answers 1 KiB; `GET /download` streams
//! 1 GiB (or `?bytes=N`); a request with a body (`POST`/`PUT /upload`) is read
//! and discarded, and the answer says how many bytes arrived.
//!
//! bench-http --listen 127.0.0.1:18080

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

const CHUNK: usize = 256 * 1024;

/// A body of `left` bytes made of clones of one static chunk.
struct Stream {
    chunk: Bytes,
    left: u64,
}

impl Body for Stream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

enum Out {
    Small(Option<Bytes>),
    Big(Stream),
}

impl Body for Out {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Out::Small(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Out::Big(s) => Pin::new(s).poll_frame(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            Out::Small(b) => b.is_none(),
            Out::Big(s) => s.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            Out::Small(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Out::Big(s) => s.size_hint(),
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    small: Bytes,
    big: Bytes,
) -> Result<Response<Out>, Infallible> {
    let path = req.uri().path().to_string();
    if path.starts_with("/download") {
        let n = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("bytes="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1u64 << 30);
        let mut r = Response::new(Out::Big(Stream {
            chunk: big,
            left: n,
        }));
        r.headers_mut()
            .insert("content-type", "application/octet-stream".parse().unwrap());
        return Ok(r);
    }
    let mut body = req.into_body();
    let mut got: u64 = 0;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    got += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    if got > 0 || path.starts_with("/upload") {
        return Ok(Response::new(Out::Small(Some(Bytes::from(format!(
            "received {got}\n"
        ))))));
    }
    let mut r = Response::new(Out::Small(Some(small)));
    r.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    Ok(r)
}

fn main() {
    let args = switchyard_bench_tools::Args::parse();
    let listen = args.str("listen", "127.0.0.1:18080");
    switchyard_bench_tools::runtime().block_on(async move {
        let l = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        eprintln!("bench-http listening on {listen}");
        let small = Bytes::from(vec![b'x'; 1024]);
        let big = Bytes::from(vec![b'z'; CHUNK]);
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let (small, big) = (small.clone(), big.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |r| handle(r, small.clone(), big.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}
