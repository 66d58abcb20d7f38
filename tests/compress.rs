//! `compress = true` over real sockets (issue 17): pool responses encoded
//! with gzip, br or zstd over HTTP/1.1 (plain and TLS) and HTTP/2 and
//! decoded byte for byte; Accept-Encoding negotiation; everything that is
//! never compressed (HEAD, other statuses, no-transform, encoded already,
//! event streams, images, short bodies, routes without `compress`,
//! WebSockets); a paused backend's output reaching the client before the
//! backend goes on; files routes; the metric; and a very large response
//! decoded while it streams. Every wait is bounded by `common::WAIT`.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const HOST: &str = "c.test";
/// The codings the proxy offers, as Content-Encoding tokens.
const CODINGS: [&str; 3] = ["gzip", "br", "zstd"];
/// The backend's strong ETag on every 200.
const ETAG: &str = "\"v1\"";
/// Length of the big JSON and HTML bodies.
const BIG: usize = 200 * 1024;

type Out = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Out {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A body of unknown length (sent chunked) in these pieces.
fn chunked(data: &[u8], pieces: usize) -> Out {
    let size = data.len().div_ceil(pieces).max(1);
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = data
        .chunks(size)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)))
}

/// A piece of a fed body, or its failure.
type Fed = Result<Bytes, &'static str>;

/// A body fed by a channel: each received piece is sent at once (an error
/// fails the body), and the body ends when the sender is dropped.
fn fed(mut rx: mpsc::Receiver<Fed>) -> Out {
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|r| r.map(Frame::data).map_err(std::io::Error::other)))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// ~`len` bytes of JSON, varied enough not to be trivially compressible.
fn json(len: usize) -> Vec<u8> {
    let mut s = String::from("[\n");
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "{{\"id\": {i}, \"name\": \"item-{}\", \"score\": {}, \"tags\": [\"t{}\", \"u{}\"]}},\n",
            i.wrapping_mul(7919) % 10007,
            (i * 31) % 997,
            i % 13,
            i % 7
        ));
        i += 1;
    }
    let mut v = s.into_bytes();
    v.truncate(len);
    v
}

/// ~`len` bytes of HTML.
fn html(len: usize) -> Vec<u8> {
    let mut s = String::from("<!doctype html>\n<html><body>\n");
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "<p class=\"row r{}\">Paragraph {i}: switchyard sends this through.</p>\n",
            i % 17
        ));
        i += 1;
    }
    let mut v = s.into_bytes();
    v.truncate(len);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `body` decoded from `coding` (a Content-Encoding token).
fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("valid gzip");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("valid brotli");
        }
        "zstd" => out = zstd::stream::decode_all(body).expect("valid zstd"),
        other => panic!("unexpected coding {other:?}"),
    }
    out
}

/// A decoder fed frame by frame, its output readable after each frame.
enum Incremental<W: Write> {
    Gzip(Box<flate2::write::GzDecoder<W>>),
    Br(Box<brotli::DecompressorWriter<W>>),
    Zstd(zstd::stream::write::Decoder<'static, W>),
}

impl<W: Write> Incremental<W> {
    fn new(coding: &str, out: W) -> Self {
        match coding {
            "gzip" => Incremental::Gzip(Box::new(flate2::write::GzDecoder::new(out))),
            // A large output buffer: this writer emits at most one buffer
            // of output per write or flush.
            "br" => Incremental::Br(Box::new(brotli::DecompressorWriter::new(out, 1 << 20))),
            "zstd" => Incremental::Zstd(zstd::stream::write::Decoder::new(out).unwrap()),
            other => panic!("unexpected coding {other:?}"),
        }
    }

    /// Decodes `data`; everything decodable so far is then in the output.
    fn feed(&mut self, data: &[u8]) {
        match self {
            Incremental::Gzip(d) => {
                d.write_all(data).expect("valid gzip");
                d.flush().expect("valid gzip");
            }
            Incremental::Br(d) => {
                d.write_all(data).expect("valid brotli");
                d.flush().expect("valid brotli");
            }
            Incremental::Zstd(d) => {
                d.write_all(data).expect("valid zstd");
                d.flush().expect("valid zstd");
            }
        }
    }

    fn output(&self) -> &W {
        match self {
            Incremental::Gzip(d) => d.get_ref(),
            Incremental::Br(d) => d.get_ref(),
            Incremental::Zstd(d) => d.get_ref(),
        }
    }

    /// The output, once the stream is complete (panics if it is cut short).
    fn finish(self) -> W {
        match self {
            Incremental::Gzip(d) => d.finish().expect("a complete gzip stream"),
            Incremental::Br(mut d) => {
                d.close().expect("a complete brotli stream");
                d.into_inner().ok().expect("a complete brotli stream")
            }
            Incremental::Zstd(mut d) => {
                d.flush().expect("a complete zstd stream");
                d.into_inner()
            }
        }
    }
}

// --- backends ----------------------------------------------------------------------

/// A hyper HTTP/1.1 backend answering each request head with `f`'s response.
struct Upstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream<F>(f: F) -> Upstream
where
    F: Fn(&http::request::Parts) -> Response<Out> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let f = Arc::new(f);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let f = f.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (parts, _) = req.into_parts();
                    let resp = f(&parts);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Upstream { addr, task }
}

/// The bodies the app backend serves, made once.
struct Bodies {
    json: Bytes,
    html: Bytes,
    text: Bytes,
    gzipped: Bytes,
    png: Bytes,
}

impl Bodies {
    fn new() -> Arc<Bodies> {
        let text = Bytes::from(html(20 * 1024));
        Arc::new(Bodies {
            json: json(BIG).into(),
            html: html(BIG).into(),
            gzipped: gzip(&text).into(),
            text,
            png: {
                let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
                png.extend(std::iter::repeat_n(0u8, 20 * 1024));
                png.into()
            },
        })
    }
}

/// The backend of the app pool; it answers by the path's last segments
/// (whatever route prefix the request came through):
/// `json`, `html` (200 KiB, Content-Length, strong ETag, `Vary: Cookie`,
/// `Accept-Ranges`), `chunked` (the JSON, unknown length), `len/N` and
/// `chunked-len/N` (N bytes of text), `status/204|206|304`, `no-transform`,
/// `encoded` (gzip already), `sse`, `png`, and `stream` or `broken`
/// (pieces, or a failure, from the test through `feed`).
fn app(
    bodies: Arc<Bodies>,
    feed: Arc<Mutex<Option<mpsc::Receiver<Fed>>>>,
) -> impl Fn(&http::request::Parts) -> Response<Out> + Send + Sync + 'static {
    move |parts| {
        let path = parts.uri.path();
        let b = &bodies;
        let typed = |ct: &str, body: Out| {
            Response::builder()
                .header("content-type", ct)
                .body(body)
                .unwrap()
        };
        let cacheable = |ct: &str, body: Out| {
            Response::builder()
                .header("content-type", ct)
                .header("etag", ETAG)
                .header("vary", "Cookie")
                .header("accept-ranges", "bytes")
                .body(body)
                .unwrap()
        };
        if path.ends_with("/json") {
            cacheable("application/json", full(b.json.clone()))
        } else if path.ends_with("/html") {
            cacheable("text/html; charset=utf-8", full(b.html.clone()))
        } else if path.ends_with("/chunked") {
            cacheable("application/json", chunked(&b.json, 13))
        } else if let Some(n) = path.rsplit_once("/chunked-len/") {
            let n: usize = n.1.parse().unwrap();
            typed("text/plain", chunked(&b.text[..n], 3))
        } else if let Some(n) = path.rsplit_once("/len/") {
            let n: usize = n.1.parse().unwrap();
            typed("text/plain", full(b.text.slice(..n)))
        } else if path.ends_with("/status/204") {
            Response::builder()
                .status(204)
                .header("content-type", "text/plain")
                .body(full(Bytes::new()))
                .unwrap()
        } else if path.ends_with("/status/304") {
            Response::builder()
                .status(304)
                .header("content-type", "text/html")
                .header("etag", ETAG)
                .body(full(Bytes::new()))
                .unwrap()
        } else if path.ends_with("/status/206") {
            let len = b.text.len();
            Response::builder()
                .status(206)
                .header("content-type", "text/html")
                .header("content-range", format!("bytes 0-4999/{len}"))
                .body(full(b.text.slice(..5000)))
                .unwrap()
        } else if path.ends_with("/no-transform") {
            Response::builder()
                .header("content-type", "text/html")
                .header("cache-control", "public, no-transform")
                .body(full(b.text.clone()))
                .unwrap()
        } else if path.ends_with("/encoded") {
            Response::builder()
                .header("content-type", "text/html")
                .header("content-encoding", "gzip")
                .body(full(b.gzipped.clone()))
                .unwrap()
        } else if path.ends_with("/sse") {
            typed("text/event-stream", full(b.text.clone()))
        } else if path.ends_with("/png") {
            typed("image/png", full(b.png.clone()))
        } else if path.ends_with("/stream") || path.ends_with("/broken") {
            let rx = feed.lock().unwrap().take().expect("a feed for /stream");
            typed("application/json", fed(rx))
        } else {
            Response::builder()
                .status(404)
                .body(full(Bytes::new()))
                .unwrap()
        }
    }
}

/// A WebSocket echo backend (tokio-tungstenite).
async fn ws_echo() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Upstream { addr, task }
}

// --- the fixture ---------------------------------------------------------------------

/// A proxy for `c.test` (TLS too) in front of the app backend:
/// - `/off/`: pool `web`, no `compress`;
/// - `/direct/`: pool `direct` (`buffering = false`), `compress`;
/// - `/ws/`: WebSockets to the echo backend, plain requests to `web`, `compress`;
/// - `/`: pool `web` (buffering, the default), `compress`.
struct Fx {
    site: TlsSite,
    bodies: Arc<Bodies>,
    feed: Arc<Mutex<Option<mpsc::Receiver<Fed>>>>,
    _app: Upstream,
    _ws: Upstream,
}

async fn fixture() -> Fx {
    let bodies = Bodies::new();
    let feed = Arc::new(Mutex::new(None));
    let app = upstream(app(bodies.clone(), feed.clone())).await;
    let ws = ws_echo().await;
    let (a, w) = (app.addr, ws.addr);
    let rest = format!(
        "[pools.web]\nservers = [\"{a}\"]\n\
         [pools.direct]\nservers = [\"{a}\"]\nbuffering = false\n\
         [pools.live]\nservers = [\"{w}\"]\n\
         [[routes]]\nname = \"off\"\npath = \"/off/\"\npool = \"web\"\n\
         [[routes]]\nname = \"direct\"\npath = \"/direct/\"\npool = \"direct\"\ncompress = true\n\
         [[routes]]\nname = \"sockets\"\npath = \"/ws/\"\nwebsocket = \"live\"\npool = \"web\"\ncompress = true\n\
         [[routes]]\nname = \"app\"\npath = \"/\"\npool = \"web\"\ncompress = true\n"
    );
    let site = TlsSite::start(HOST, &rest).await;
    Fx {
        site,
        bodies,
        feed,
        _app: app,
        _ws: ws,
    }
}

impl Fx {
    async fn get(&self, via: Via, path: &str, accept: Option<&str>) -> Got {
        self.send(via, "GET", path, accept, &[]).await
    }

    async fn send(
        &self,
        via: Via,
        method: &str,
        path: &str,
        accept: Option<&str>,
        more: &[(&str, &str)],
    ) -> Got {
        let mut headers: Vec<(&str, &str)> = more.to_vec();
        if let Some(a) = accept {
            headers.push(("accept-encoding", a));
        }
        self.site
            .send(via, method, path, &headers, Bytes::new())
            .await
    }
}

impl Fx {
    /// Opens `GET path` (Accept-Encoding: `coding`) on a path the app answers
    /// with a fed body (`/stream`, `/broken`), `first` already fed; returns
    /// the sender that feeds the rest and the response, its body streaming.
    async fn open_fed(
        &self,
        via: Via,
        path: &str,
        coding: &str,
        first: &[u8],
    ) -> (mpsc::Sender<Fed>, Response<Incoming>) {
        let (tx, rx) = mpsc::channel(4);
        *self.feed.lock().unwrap() = Some(rx);
        tx.send(Ok(Bytes::copy_from_slice(first))).await.unwrap();
        let resp = self
            .site
            .open(via, "GET", path, &[("accept-encoding", coding)])
            .await;
        (tx, resp)
    }
}

fn h<'a>(r: &'a Got, name: &str) -> &'a str {
    header_str(r.headers(), name)
}

/// Every Vary field name, lower-cased.
fn vary(r: &Got) -> Vec<String> {
    r.headers()
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
        .collect()
}

/// Asserts `r` is a 200 compressed with `coding` that decodes to `plain`.
#[track_caller]
fn assert_compressed(r: &Got, coding: &str, plain: &[u8], what: &str) {
    assert_eq!(r.status(), StatusCode::OK, "{what}");
    assert_eq!(h(r, "content-encoding"), coding, "{what}: Content-Encoding");
    assert!(
        r.headers().get("content-length").is_none(),
        "{what}: no Content-Length, got {:?}",
        h(r, "content-length")
    );
    assert!(
        vary(r).contains(&"accept-encoding".to_string()),
        "{what}: Vary has Accept-Encoding: {:?}",
        vary(r)
    );
    assert!(
        r.headers().get("accept-ranges").is_none(),
        "{what}: no Accept-Ranges"
    );
    let got = decode(coding, r.body());
    assert!(
        got == plain,
        "{what}: decoded {} bytes, want the original {} bytes",
        got.len(),
        plain.len()
    );
}

/// Asserts `r` is a 200 sent as the backend sent it (`plain`, identity).
#[track_caller]
fn assert_identity(r: &Got, plain: &[u8], what: &str) {
    assert_eq!(r.status(), StatusCode::OK, "{what}");
    assert_eq!(h(r, "content-encoding"), "", "{what}: not encoded");
    assert!(
        r.body().as_ref() == plain,
        "{what}: body of {} bytes, want the backend's {} bytes",
        r.body().len(),
        plain.len()
    );
}

/// Asserts `r` is a 304 with the ETag (`etag`) and the Vary (Accept-Encoding)
/// of the compressed 200 it revalidates.
#[track_caller]
fn assert_304_as_its_200(r: &Got, etag: &str, what: &str) {
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{what}");
    assert_eq!(h(r, "etag"), etag, "{what}: the 304's ETag");
    assert!(
        vary(r).contains(&"accept-encoding".to_string()),
        "{what}: the 304's Vary: {:?}",
        vary(r)
    );
}

// --- 1. compressed responses -------------------------------------------------------

#[tokio::test]
async fn pool_responses_are_compressed_with_each_coding_and_decode_exactly_over_h1_tls_and_h2() {
    let fx = fixture().await;
    let b = &fx.bodies;
    // (path, original, has the backend's strong ETag and Vary: Cookie)
    let cases: [(&str, &[u8]); 5] = [
        ("/api/json", &b.json),
        ("/page/html", &b.html),
        ("/api/chunked", &b.json),
        ("/direct/json", &b.json),
        ("/direct/chunked", &b.json),
    ];
    for via in Via::ALL {
        for coding in CODINGS {
            for (path, plain) in cases {
                let what = format!("{via:?} GET {path} with Accept-Encoding: {coding}");
                let r = fx.get(via, path, Some(coding)).await;
                assert_compressed(&r, coding, plain, &what);
                assert_eq!(h(&r, "etag"), format!("W/{ETAG}"), "{what}: ETag made weak");
                let v = vary(&r);
                assert!(
                    v.contains(&"cookie".to_string()) && v.contains(&"accept-encoding".to_string()),
                    "{what}: Vary merged, got {v:?}"
                );
                assert_eq!(
                    v.iter().filter(|f| *f == "accept-encoding").count(),
                    1,
                    "{what}: Accept-Encoding once in Vary: {v:?}"
                );
                assert!(
                    r.body().len() < plain.len() / 2,
                    "{what}: {} bytes compressed is not much smaller than {}",
                    r.body().len(),
                    plain.len()
                );
            }
        }
    }
}

// --- 2. negotiation ----------------------------------------------------------------

#[tokio::test]
async fn accept_encoding_q_values_ties_and_wildcards_choose_the_coding() {
    let fx = fixture().await;
    let json = &fx.bodies.json;
    // (Accept-Encoding, the coding chosen; "" for none)
    let cases: &[(Option<&str>, &str)] = &[
        (Some("gzip;q=0.5, br;q=0.9"), "br"),
        (Some("br;q=0.2, gzip;q=0.8, zstd;q=0.5"), "gzip"),
        (Some("zstd;q=0, gzip"), "gzip"),
        (Some("zstd;q=0, gzip, br"), "br"),
        (Some("*, zstd;q=0"), "br"),
        (Some("gzip, br, zstd"), "zstd"),
        (Some("gzip, deflate, br"), "br"),
        (Some("*"), "zstd"),
        (Some("*;q=0"), ""),
        (Some("identity"), ""),
        (Some("deflate, compress"), ""),
        (Some(""), ""),
        (None, ""),
        (Some("identity;q=0, gzip"), "gzip"),
        (Some("x-gzip"), "gzip"),
        (Some("GZIP;Q=0.5"), "gzip"),
    ];
    for via in [Via::Plain, Via::H2] {
        for (accept, want) in cases {
            let what = format!("{via:?} Accept-Encoding: {accept:?}");
            let r = fx.get(via, "/api/json", *accept).await;
            if want.is_empty() {
                assert_identity(&r, json, &what);
                assert_eq!(h(&r, "content-length"), json.len().to_string(), "{what}");
                assert_eq!(h(&r, "etag"), ETAG, "{what}: ETag kept strong");
                // Another client would have had it compressed: a cache must
                // know the answer depends on Accept-Encoding.
                let v = vary(&r);
                assert!(
                    v.contains(&"accept-encoding".to_string()) && v.contains(&"cookie".to_string()),
                    "{what}: Vary has Cookie and Accept-Encoding: {v:?}"
                );
            } else {
                assert_compressed(&r, want, json, &what);
            }
        }
    }
}

// --- 3. never compressed -------------------------------------------------------------

#[tokio::test]
async fn head_is_answered_with_the_uncompressed_head_and_no_body() {
    let fx = fixture().await;
    let len = fx.bodies.json.len().to_string();
    for via in Via::ALL {
        let what = format!("{via:?} HEAD /api/json");
        let r = fx
            .send(via, "HEAD", "/api/json", Some("gzip, br, zstd"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{what}");
        assert!(r.body().is_empty(), "{what}: no body");
        // Not compressed, so the head is the identity representation's,
        // consistent with itself: its length and its strong validator.
        assert_eq!(h(&r, "content-encoding"), "", "{what}");
        assert_eq!(h(&r, "content-length"), len, "{what}");
        assert_eq!(h(&r, "etag"), ETAG, "{what}");
        assert_eq!(h(&r, "accept-ranges"), "bytes", "{what}");
        assert!(
            vary(&r).contains(&"accept-encoding".to_string()),
            "{what}: Vary as for GET: {:?}",
            vary(&r)
        );
    }
}

#[tokio::test]
async fn statuses_other_than_200_pass_uncompressed() {
    let fx = fixture().await;
    for via in Via::ALL {
        let accept = Some("gzip, br, zstd");
        let r = fx.get(via, "/x/status/204", accept).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{via:?} 204");
        assert_eq!(h(&r, "content-encoding"), "", "{via:?} 204");
        assert!(r.body().is_empty(), "{via:?} 204");

        let r = fx.get(via, "/x/status/304", accept).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{via:?} 304");
        assert_eq!(h(&r, "content-encoding"), "", "{via:?} 304");
        assert!(r.body().is_empty(), "{via:?} 304");

        let r = fx.get(via, "/x/status/206", accept).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{via:?} 206");
        assert_eq!(h(&r, "content-encoding"), "", "{via:?} 206");
        let len = fx.bodies.text.len();
        assert_eq!(h(&r, "content-range"), format!("bytes 0-4999/{len}"));
        assert_eq!(h(&r, "content-length"), "5000", "{via:?} 206");
        assert_eq!(r.body(), &fx.bodies.text[..5000], "{via:?} 206");
    }
}

#[tokio::test]
async fn a_304_from_the_pool_on_a_compress_route_carries_the_weak_etag_and_vary_of_its_200() {
    let fx = fixture().await;
    for via in Via::ALL {
        let what = format!("{via:?} GET /x/json then /x/status/304 (gzip)");
        // What the client has cached: the compressed 200.
        let r = fx.get(via, "/x/json", Some("gzip")).await;
        assert_eq!(h(&r, "content-encoding"), "gzip", "{what}");
        let weak = h(&r, "etag").to_owned();
        assert_eq!(weak, format!("W/{ETAG}"), "{what}");
        // Its revalidation: the backend (as Django's ConditionalGetMiddleware
        // would) answers 304 with its own strong tag.
        let inm = [("if-none-match", weak.as_str())];
        let r = fx
            .send(via, "GET", "/x/status/304", Some("gzip"), &inm)
            .await;
        // RFC 9110 §15.4.5: the 304 carries the ETag and Vary the 200 would
        // have had, or a cache cannot match it to the stored gzip response.
        assert_304_as_its_200(&r, &weak, &what);
    }
}

#[tokio::test]
async fn no_transform_encoded_event_streams_and_images_pass_byte_identical() {
    let fx = fixture().await;
    let b = &fx.bodies;
    let cases: [(&str, &[u8]); 4] = [
        ("/x/no-transform", &b.text),
        ("/x/encoded", &b.gzipped),
        ("/x/sse", &b.text),
        ("/x/png", &b.png),
    ];
    for via in Via::ALL {
        for (path, sent) in cases {
            let what = format!("{via:?} GET {path}");
            let r = fx.get(via, path, Some("gzip, br, zstd")).await;
            assert_eq!(r.status(), StatusCode::OK, "{what}");
            assert!(
                r.body().as_ref() == sent,
                "{what}: {} bytes, want the backend's {} bytes as they were",
                r.body().len(),
                sent.len()
            );
            assert_eq!(h(&r, "content-length"), sent.len().to_string(), "{what}");
            let ce = if path.ends_with("/encoded") {
                "gzip"
            } else {
                ""
            };
            assert_eq!(h(&r, "content-encoding"), ce, "{what}");
        }
    }
    // The backend's own gzip is the representation the client decodes.
    let r = fx.get(Via::Plain, "/x/encoded", Some("zstd")).await;
    assert_eq!(decode("gzip", r.body()), b.text.as_ref());
}

#[tokio::test]
async fn a_1023_byte_body_is_sent_as_is_and_1024_bytes_or_an_unknown_length_are_compressed() {
    let fx = fixture().await;
    let text = &fx.bodies.text;
    for via in Via::ALL {
        for coding in CODINGS {
            let r = fx.get(via, "/x/len/1023", Some(coding)).await;
            assert_identity(&r, &text[..1023], &format!("{via:?} {coding} 1023 bytes"));
            assert_eq!(h(&r, "content-length"), "1023");
            let r = fx.get(via, "/x/len/1024", Some(coding)).await;
            assert_compressed(&r, coding, &text[..1024], &format!("{via:?} 1024 bytes"));
            // Of unknown length (chunked), even a short body is compressed.
            let r = fx.get(via, "/x/chunked-len/1023", Some(coding)).await;
            assert_compressed(&r, coding, &text[..1023], &format!("{via:?} chunked"));
        }
    }
}

#[tokio::test]
async fn a_route_without_compress_never_compresses() {
    let fx = fixture().await;
    let json = &fx.bodies.json;
    for via in Via::ALL {
        for accept in ["gzip, br, zstd", "gzip", "br", "zstd", "*"] {
            let what = format!("{via:?} /off/json with {accept}");
            let r = fx.get(via, "/off/json", Some(accept)).await;
            assert_identity(&r, json, &what);
            assert_eq!(h(&r, "content-length"), json.len().to_string(), "{what}");
            assert_eq!(h(&r, "etag"), ETAG, "{what}");
            assert_eq!(h(&r, "accept-ranges"), "bytes", "{what}");
            assert_eq!(vary(&r), ["cookie"], "{what}");
        }
    }
}

#[tokio::test]
async fn websocket_upgrades_on_a_compress_route_pass_frames_unchanged() {
    let fx = fixture().await;
    let text = String::from_utf8(html(8 * 1024)).unwrap();
    let binary = json(8 * 1024);
    for tls in [false, true] {
        let mut req = format!("ws://{HOST}/ws/echo")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("accept-encoding", "gzip, br, zstd".parse().unwrap());
        let p = &fx.site.proxy;
        let connect = async {
            let io: Box<dyn Io> = if tls {
                Box::new(
                    tls_connect(&fx.site.pki, p.https, HOST, &[b"http/1.1"])
                        .await
                        .unwrap(),
                )
            } else {
                Box::new(tokio::net::TcpStream::connect(p.http).await.unwrap())
            };
            tokio_tungstenite::client_async(req, io).await.unwrap()
        };
        let (mut ws, resp) = tokio::time::timeout(WAIT, connect)
            .await
            .expect("WebSocket handshake in time");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS, "tls {tls}");
        assert!(
            resp.headers().get("content-encoding").is_none(),
            "tls {tls}: no Content-Encoding on the 101"
        );
        for msg in [Message::text(text.clone()), Message::binary(binary.clone())] {
            tokio::time::timeout(WAIT, ws.send(msg.clone()))
                .await
                .expect("send in time")
                .unwrap();
            let echoed = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("echo in time")
                .expect("session open")
                .unwrap();
            assert!(echoed == msg, "tls {tls}: the echo is the frame as sent");
        }
        let _ = ws.close(None).await;
    }
}

/// TCP and TLS streams as one type.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

// --- 4. streaming ----------------------------------------------------------------------

/// The next data of `body` (skipping trailers), None at its end; panics
/// when nothing comes within `WAIT`.
async fn next_data(body: &mut Incoming, what: &str) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))?
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

#[tokio::test]
async fn a_paused_backend_s_first_piece_reaches_the_client_decodable_before_it_goes_on() {
    let fx = fixture().await;
    let piece1 = json(10 * 1024);
    let mut piece2 = b"\n/* piece two */\n".to_vec();
    piece2.extend(html(5000));
    for path in ["/api/stream", "/direct/stream"] {
        for via in Via::ALL {
            for coding in CODINGS {
                let what = format!("{via:?} GET {path} ({coding})");
                let (tx, resp) = fx.open_fed(via, path, coding, &piece1).await;
                assert_eq!(resp.status(), StatusCode::OK, "{what}");
                assert_eq!(
                    header_str(resp.headers(), "content-encoding"),
                    coding,
                    "{what}"
                );
                let mut body = resp.into_body();
                let mut dec = Incremental::new(coding, Vec::new());
                // Piece 2 is not sent until piece 1 is decoded here: a proxy
                // that held piece 1 back would time this out.
                while dec.output().len() < piece1.len() {
                    let Some(data) = next_data(&mut body, &format!("{what}: piece 1")).await else {
                        panic!("{what}: the body ended before piece 2 was sent");
                    };
                    dec.feed(&data);
                }
                assert!(dec.output() == &piece1, "{what}: piece 1 decoded exactly");
                tx.send(Ok(Bytes::from(piece2.clone()))).await.unwrap();
                drop(tx);
                while let Some(data) = next_data(&mut body, &format!("{what}: the rest")).await {
                    dec.feed(&data);
                }
                let all = dec.finish();
                assert!(
                    all.len() == piece1.len() + piece2.len()
                        && all[..piece1.len()] == piece1[..]
                        && all[piece1.len()..] == piece2[..],
                    "{what}: decoded {} bytes, want both pieces",
                    all.len()
                );
            }
        }
    }
}

#[tokio::test]
async fn a_backend_failing_mid_body_cuts_the_compressed_response_off_with_an_error() {
    let fx = fixture().await;
    let piece = json(8 * 1024);
    for path in ["/x/broken", "/direct/broken"] {
        for via in Via::ALL {
            for coding in CODINGS {
                let what = format!("{via:?} GET {path} ({coding})");
                let (tx, resp) = fx.open_fed(via, path, coding, &piece).await;
                assert_eq!(resp.status(), StatusCode::OK, "{what}");
                assert_eq!(header_str(resp.headers(), "content-encoding"), coding);
                let mut body = resp.into_body();
                let mut dec = Incremental::new(coding, Vec::new());
                while dec.output().len() < piece.len() {
                    let Some(data) = next_data(&mut body, &what).await else {
                        panic!("{what}: the body ended before the backend failed");
                    };
                    dec.feed(&data);
                }
                // Now the backend dies mid-body.
                tx.send(Err("backend died mid-body")).await.unwrap();
                let failed = loop {
                    let frame = tokio::time::timeout(WAIT, body.frame())
                        .await
                        .unwrap_or_else(|_| panic!("{what}: neither data nor an end in time"));
                    match frame {
                        Some(Ok(_)) => {}
                        Some(Err(_)) => break true,
                        None => break false,
                    }
                };
                assert!(
                    failed,
                    "{what}: the client must see the response fail, not end as if complete"
                );
            }
        }
    }
}

// --- 5. files ----------------------------------------------------------------------------

/// A proxy whose `/static/` files route has `compress = true`, over a
/// directory with `site.css` (10 KiB, no sibling), `sib.css` with a real
/// `sib.css.gz`, and `img.png`; returns it with those bytes.
struct FilesFx {
    _root: tempfile::TempDir,
    site: TlsSite,
    css: Vec<u8>,
    sib_gz: Vec<u8>,
    png: Vec<u8>,
}

async fn files_fixture() -> FilesFx {
    let root = tempfile::tempdir().unwrap();
    let css: Vec<u8> = (0..400)
        .map(|i| {
            format!(
                ".c{i} {{ color: #{:06x}; margin: {}px }}\n",
                i * 4099,
                i % 9
            )
        })
        .collect::<String>()
        .into_bytes()[..10 * 1024]
        .to_vec();
    let sib = html(10 * 1024);
    let sib_gz = gzip(&sib);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(std::iter::repeat_n(b'a', 10 * 1024));
    write_file(root.path(), "site.css", &css);
    write_file(root.path(), "sib.css", &sib);
    write_file(root.path(), "sib.css.gz", &sib_gz);
    write_file(root.path(), "img.png", &png);
    let dir = root.path().display().to_string();
    let rest = format!(
        "[[routes]]\nname = \"static\"\npath = \"/static/\"\nfiles = {dir:?}\ncompress = true\n"
    );
    let site = TlsSite::start(HOST, &rest).await;
    FilesFx {
        _root: root,
        site,
        css,
        sib_gz,
        png,
    }
}

impl FilesFx {
    async fn get(&self, via: Via, path: &str, headers: &[(&str, &str)]) -> Got {
        self.site
            .send(via, "GET", path, headers, Bytes::new())
            .await
    }
}

#[tokio::test]
async fn a_files_route_compresses_a_css_file_without_sibling_and_revalidates_its_weak_etag() {
    let fx = files_fixture().await;
    for via in Via::ALL {
        for coding in CODINGS {
            let what = format!("{via:?} /static/site.css ({coding})");
            let ae = [("accept-encoding", coding)];
            let r = fx.get(via, "/static/site.css", &ae).await;
            assert_compressed(&r, coding, &fx.css, &what);
            let etag = h(&r, "etag").to_owned();
            assert!(
                etag.starts_with("W/\""),
                "{what}: a weak ETag, got {etag:?}"
            );
            let cond = [("accept-encoding", coding), ("if-none-match", &etag)];
            let r = fx.get(via, "/static/site.css", &cond).await;
            assert_eq!(
                r.status(),
                StatusCode::NOT_MODIFIED,
                "{what}: If-None-Match"
            );
            assert!(r.body().is_empty(), "{what}: 304");
            assert_eq!(h(&r, "content-encoding"), "", "{what}: 304");
        }
    }
}

#[tokio::test]
async fn a_304_for_a_compressed_file_carries_the_weak_etag_its_200_had() {
    let fx = files_fixture().await;
    for via in Via::ALL {
        let what = format!("{via:?} /static/site.css (gzip)");
        let ae = [("accept-encoding", "gzip")];
        let r = fx.get(via, "/static/site.css", &ae).await;
        assert_eq!(h(&r, "content-encoding"), "gzip", "{what}");
        let etag = h(&r, "etag").to_owned();
        let cond = [("accept-encoding", "gzip"), ("if-none-match", &etag)];
        let r = fx.get(via, "/static/site.css", &cond).await;
        // RFC 9110 §15.4.5: a 304 carries the ETag (and Vary) the 200 would
        // have had, or a cache takes the strong tag for the gzip bytes.
        assert_304_as_its_200(&r, &etag, &what);
    }
}

#[tokio::test]
async fn a_files_route_sends_a_gz_sibling_as_is_and_never_compresses_png_or_ranges() {
    let fx = files_fixture().await;
    for via in Via::ALL {
        let get = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
            let site = &fx.site;
            async move { site.send(via, "GET", path, &headers, Bytes::new()).await }
        };
        let what = format!("{via:?} /static/sib.css");
        let r = get("/static/sib.css", vec![("accept-encoding", "gzip")]).await;
        assert_eq!(r.status(), StatusCode::OK, "{what}");
        assert_eq!(h(&r, "content-encoding"), "gzip", "{what}");
        assert!(
            r.body().as_ref() == fx.sib_gz,
            "{what}: the sibling's bytes as they are on disk"
        );
        assert_eq!(h(&r, "content-length"), fx.sib_gz.len().to_string());

        let what = format!("{via:?} /static/img.png");
        let r = get(
            "/static/img.png",
            vec![("accept-encoding", "gzip, br, zstd")],
        )
        .await;
        assert_identity(&r, &fx.png, &what);
        assert_eq!(h(&r, "content-length"), fx.png.len().to_string(), "{what}");

        let what = format!("{via:?} /static/site.css with Range");
        let headers = vec![
            ("accept-encoding", "gzip, br, zstd"),
            ("range", "bytes=100-1099"),
        ];
        let r = get("/static/site.css", headers).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{what}");
        assert_eq!(h(&r, "content-encoding"), "", "{what}");
        assert_eq!(
            h(&r, "content-range"),
            format!("bytes 100-1099/{}", fx.css.len())
        );
        assert_eq!(h(&r, "content-length"), "1000", "{what}");
        assert_eq!(r.body(), &fx.css[100..1100], "{what}");
    }
}

// --- 6. the metric -------------------------------------------------------------------------

#[tokio::test]
async fn compressed_responses_are_counted_by_site_route_and_encoding() {
    let fx = fixture().await;
    let accepts = [("gzip", 2), ("br", 1), ("zstd", 3)];
    for (coding, n) in accepts {
        for _ in 0..n {
            let r = fx.get(Via::H2, "/api/json", Some(coding)).await;
            assert_eq!(h(&r, "content-encoding"), coding);
        }
    }
    let r = fx.get(Via::Plain, "/direct/chunked", Some("gzip")).await;
    assert_eq!(h(&r, "content-encoding"), "gzip");
    // Not compressed, not counted.
    for path in ["/off/json", "/x/png", "/x/len/100", "/x/status/204"] {
        let r = fx.get(Via::Plain, path, Some("gzip, br, zstd")).await;
        assert_eq!(h(&r, "content-encoding"), "", "{path}");
    }
    fx.get(Via::Plain, "/api/json", None).await;
    fx.send(Via::Plain, "HEAD", "/api/json", Some("gzip"), &[])
        .await;

    let text = fx.site.proxy.metrics().await;
    let count = |route: &str, encoding: &str| {
        let route = format!("route=\"{route}\"");
        let encoding = format!("encoding=\"{encoding}\"");
        metric_value(
            &text,
            &[
                "switchyard_compressed_responses_total",
                "site=\"site\"",
                &route,
                &encoding,
            ],
        )
    };
    assert_eq!(count("app", "gzip"), 2.0, "{text}");
    assert_eq!(count("app", "br"), 1.0, "{text}");
    assert_eq!(count("app", "zstd"), 3.0, "{text}");
    assert_eq!(count("direct", "gzip"), 1.0, "{text}");
    assert_eq!(count("direct", "br") + count("direct", "zstd"), 0.0);
    for encoding in CODINGS {
        assert_eq!(count("off", encoding), 0.0, "{text}");
    }
    let total = metric_value(&text, &["switchyard_compressed_responses_total"]);
    assert_eq!(total, 7.0, "every compressed response once: {text}");

    let files = files_fixture().await;
    for coding in CODINGS {
        let ae = [("accept-encoding", coding)];
        let r = files.get(Via::H1, "/static/site.css", &ae).await;
        assert_eq!(h(&r, "content-encoding"), coding);
    }
    // A sibling is sent, not compressed: not counted.
    let ae = [("accept-encoding", "gzip")];
    files.get(Via::H1, "/static/sib.css", &ae).await;
    let text = files.site.proxy.metrics().await;
    for coding in CODINGS {
        let encoding = format!("encoding=\"{coding}\"");
        let n = metric_value(
            &text,
            &[
                "switchyard_compressed_responses_total",
                "route=\"static\"",
                &encoding,
            ],
        );
        assert_eq!(n, 1.0, "static {coding}: {text}");
    }
}

// --- 7. a very large response ---------------------------------------------------------------

/// A proxy for `c.test` (TLS too) in front of the backend at `a`: `/direct/`
/// through pool `direct` (`buffering = false`), `/` through pool `web`, both
/// with `compress` and these `route_extra` lines.
async fn direct_and_web_site(a: SocketAddr, route_extra: &str) -> TlsSite {
    let rest = format!(
        "[pools.web]\nservers = [\"{a}\"]\n\
         [pools.direct]\nservers = [\"{a}\"]\nbuffering = false\n\
         [[routes]]\nname = \"direct\"\npath = \"/direct/\"\npool = \"direct\"\ncompress = true\n{route_extra}\
         [[routes]]\nname = \"app\"\npath = \"/\"\npool = \"web\"\ncompress = true\n{route_extra}"
    );
    TlsSite::start(HOST, &rest).await
}

/// Checks what it is written against `pattern` repeated, and counts it.
struct Repeated {
    pattern: Bytes,
    at: u64,
}

impl Write for Repeated {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        let n = self.pattern.len() as u64;
        while !rest.is_empty() {
            let off = (self.at % n) as usize;
            let take = rest.len().min(self.pattern.len() - off);
            if rest[..take] != self.pattern[off..off + take] {
                return Err(std::io::Error::other(format!(
                    "decoded bytes differ from the backend's at offset {}",
                    self.at
                )));
            }
            self.at += take as u64;
            rest = &rest[take..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of the very large response: 64 MiB, not 256, since gzip at both
/// ends in a debug build runs at a few MB/s (256 MiB took over 100 s).
const HUGE: u64 = 64 << 20;

#[tokio::test]
async fn a_64_mib_response_streams_through_gzip_and_decodes_to_the_same_bytes() {
    // 64 KiB frames of one 4 KiB block of JSON records, repeated.
    let chunk = Bytes::from(json(4 * 1024).repeat(16));
    let pieces = HUGE / chunk.len() as u64;
    let sent = chunk.clone();
    let backend = upstream(move |_| {
        let chunk = sent.clone();
        let frames = (0..pieces).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone())));
        Response::builder()
            .header("content-type", "application/json")
            .header("content-length", HUGE.to_string())
            .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap()
    })
    .await;
    let site = direct_and_web_site(backend.addr, "upstream_response = \"120s\"\n").await;
    // Through the default (buffering) pool; one route keeps the time down.
    for path in ["/huge"] {
        let started = std::time::Instant::now();
        let resp = site
            .open(Via::Plain, "GET", path, &[("accept-encoding", "gzip")])
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(header_str(resp.headers(), "content-encoding"), "gzip");
        assert!(resp.headers().get("content-length").is_none(), "{path}");
        let mut body = resp.into_body();
        let mut dec = Incremental::new(
            "gzip",
            Repeated {
                pattern: chunk.clone(),
                at: 0,
            },
        );
        let mut wire = 0u64;
        while let Some(data) = next_data(&mut body, path).await {
            wire += data.len() as u64;
            dec.feed(&data);
        }
        let decoded = dec.finish().at;
        assert_eq!(decoded, HUGE, "{path}: decoded length");
        eprintln!(
            "{path}: {HUGE} bytes as {wire} gzip bytes in {:?}",
            started.elapsed()
        );
    }
}

// --- X-Accel-Redirect ------------------------------------------------------------------------

#[tokio::test]
async fn a_file_named_by_x_accel_redirect_is_compressed_like_any_file() {
    let root = tempfile::tempdir().unwrap();
    let css = html(10 * 1024);
    write_file(root.path(), "site.css", &css);
    let backend = upstream(|_| {
        Response::builder()
            .header("x-accel-redirect", "/protected/site.css")
            .header("content-type", "text/css")
            .body(full(Bytes::new()))
            .unwrap()
    })
    .await;
    let (a, dir) = (backend.addr, root.path().display().to_string());
    let rest = format!(
        "[pools.web]\nservers = [\"{a}\"]\n\
         [[routes]]\nname = \"protected\"\npath = \"/protected/\"\nfiles = {dir:?}\ninternal = true\ncompress = true\n\
         [[routes]]\nname = \"app\"\npath = \"/\"\npool = \"web\"\ncompress = true\n"
    );
    let site = TlsSite::start(HOST, &rest).await;
    for via in Via::ALL {
        for coding in CODINGS {
            let what = format!("{via:?} GET /download ({coding})");
            let ae = [("accept-encoding", coding)];
            let r = site.send(via, "GET", "/download", &ae, Bytes::new()).await;
            assert_compressed(&r, coding, &css, &what);
            let etag = h(&r, "etag").to_owned();
            assert!(etag.starts_with("W/\""), "{what}: weak ETag {etag:?}");
            let cond = [("accept-encoding", coding), ("if-none-match", &etag)];
            let r = site
                .send(via, "GET", "/download", &cond, Bytes::new())
                .await;
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{what}: revalidated");
            assert_eq!(h(&r, "etag"), etag, "{what}: the 304's ETag");
        }
        let r = site.send(via, "GET", "/download", &[], Bytes::new()).await;
        assert_identity(&r, &css, &format!("{via:?} without Accept-Encoding"));
    }
}

#[tokio::test]
async fn an_http_1_0_client_gets_the_compressed_body_delimited_by_the_close() {
    let fx = fixture().await;
    for coding in CODINGS {
        let raw =
            format!("GET /x/json HTTP/1.0\r\nHost: {HOST}\r\nAccept-Encoding: {coding}\r\n\r\n");
        let r = raw_http(fx.site.proxy.http, raw.as_bytes())
            .await
            .expect("a response");
        assert_eq!(r.status, 200, "{coding}: {}", r.head);
        assert_eq!(r.header("content-encoding"), Some(coding), "{}", r.head);
        assert_eq!(r.header("transfer-encoding"), None, "HTTP/1.0: {}", r.head);
        assert_eq!(r.header("content-length"), None, "{}", r.head);
        assert!(
            decode(coding, &r.body) == fx.bodies.json.as_ref(),
            "{coding}: the body up to the close decodes to the original"
        );
    }
}

#[tokio::test]
async fn a_compressed_response_keeps_the_backend_s_trailers_over_h2() {
    let text = html(4 * 1024);
    let sent = Bytes::from(text.clone());
    let backend = upstream(move |_| {
        let frames = vec![
            Ok::<_, std::io::Error>(Frame::data(sent.slice(..1000))),
            Ok(Frame::data(sent.slice(1000..))),
            Ok(Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("x-checksum", http::HeaderValue::from_static("abc123"));
                t
            })),
        ];
        Response::builder()
            .header("content-type", "text/plain")
            .header("trailer", "x-checksum")
            .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap()
    })
    .await;
    let site = direct_and_web_site(backend.addr, "").await;
    for path in ["/t", "/direct/t"] {
        for coding in CODINGS {
            let what = format!("H2 GET {path} ({coding})");
            let headers = [("accept-encoding", coding), ("te", "trailers")];
            let resp = site.open(Via::H2, "GET", path, &headers).await;
            assert_eq!(resp.status(), StatusCode::OK, "{what}");
            assert_eq!(header_str(resp.headers(), "content-encoding"), coding);
            let body = tokio::time::timeout(WAIT, resp.into_body().collect())
                .await
                .unwrap_or_else(|_| panic!("{what}: body in time"))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let trailer = body
                .trailers()
                .and_then(|t| t.get("x-checksum"))
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(trailer.as_deref(), Some("abc123"), "{what}: trailer");
            assert!(decode(coding, &body.to_bytes()) == text, "{what}: body");
        }
    }
}
