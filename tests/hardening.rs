//! Hardening: hostile clients, broken backends and resource limits, over
//! real sockets. Raw bytes are written where a well-behaved client library
//! would refuse to send them (HTTP/1 smuggling attempts, HTTP/2 frames).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Log lines mentioning `needle`.
fn log_lines_with(needle: &str) -> Vec<String> {
    log_lines()
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

/// Waits (bounded) until some log line contains every one of `parts`.
async fn wait_for_log(parts: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        // A backend's ephemeral port can be a later proxy's listener port:
        // that proxy's "listening" line is not about the backend.
        if let Some(l) = log_lines_with(parts[0])
            .into_iter()
            .find(|l| !l.contains(" listening ") && parts.iter().all(|p| l.contains(p)))
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?}; lines with {:?}: {:#?}",
            parts[0],
            log_lines_with(parts[0])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- a backend that counts only complete requests ------------------------------

/// A hyper backend that records the path of every request whose body
/// arrived complete, and counts heads whose body failed.
struct Recorder {
    addr: SocketAddr,
    complete: Arc<Mutex<Vec<String>>>,
    aborted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let complete = Arc::new(Mutex::new(Vec::new()));
        let aborted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (c, a, s) = (complete.clone(), aborted.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => return },
                    () = s.cancelled() => return,
                };
                let (c, a, s) = (c.clone(), a.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (c, a) = (c.clone(), a.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            match req.into_body().collect().await {
                                Ok(_) => c.lock().unwrap().push(path),
                                Err(_) => {
                                    a.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = s.cancelled() => {}
                    }
                });
            }
        });
        Recorder {
            addr,
            complete,
            aborted,
            stop,
        }
    }

    fn paths(&self) -> Vec<String> {
        self.complete.lock().unwrap().clone()
    }
}

// --- raw HTTP/1 helpers ------------------------------------------------------

/// What came back for a raw request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A response head with this status.
    Status(u16),
    /// The connection closed (or reset) before any response.
    Closed,
}

/// Reads a response head (or EOF) from `s`, bounded by `WAIT`.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Answer {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return Answer::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]);
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return Answer::Status(status);
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("no response head and no close")
}

/// Sends `raw` and returns the answer, or `None` if the proxy answered but
/// kept the connection open (so it would read what follows as a request).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, raw: &[u8]) -> Option<Answer> {
    // The proxy may answer and close before reading everything.
    let _ = s.write_all(raw).await;
    let _ = s.flush().await;
    let answer = read_head(&mut s).await;
    let closed = async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), closed)
        .await
        .ok()?;
    Some(answer)
}

// --- request smuggling ----------------------------------------------------------

/// A smuggling attempt: raw bytes with `{host}` for the Host header value.
/// Each one carries a second request, `/smuggled`, where a parser that got
/// the framing wrong would find one.
const SMUGGLING: &[(&str, &str)] = &[
    (
        "content-length and transfer-encoding",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "transfer-encoding and content-length",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "two differing content-lengths",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "differing content-lengths in one line",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0, 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "duplicate equal content-lengths",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "malformed content-length",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: +0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "transfer-encoding xchunked",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "space before the colon",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "chunked not last",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "chunked not last, over two lines",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "obs-fold",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "obs-fold of transfer-encoding",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "invalid chunk size",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "negative chunk size",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "overflowing chunk size",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "invalid chunk after a valid one",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nq\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "NUL in a header value",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nX-Nul: a\0b\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "bare CR in a header value",
        "POST /a HTTP/1.1\r\nHost: {host}\r\nX-Cr: a\rTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "bare LF request line",
        "POST /a HTTP/1.1\nHost: {host}\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "bare LF header lines",
        "POST /a HTTP/1.1\r\nHost: {host}\nContent-Length: 0\n\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "absolute-form target disagreeing with Host",
        "GET http://other.test/a HTTP/1.1\r\nHost: {host}\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
    (
        "absolute-form target naming another configured site",
        "GET http://{other}/a HTTP/1.1\r\nHost: {host}\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ),
];

struct SmuggleSetup {
    pki: Pki,
    _cfg: ConfigDir,
    proxy: Proxy,
    buffered: Recorder,
    streaming: Recorder,
}

/// `b.test` (buffered, the default) and `s.test` (`buffering = false`),
/// both on TLS and plain HTTP, each with its own recording backend.
async fn smuggle_setup() -> SmuggleSetup {
    let pki = Pki::new();
    let buffered = Recorder::start().await;
    let streaming = Recorder::start().await;
    let (b_crt, b_key) = pki.leaf("b", &["b.test"]);
    let (s_crt, s_key) = pki.leaf("s", &["s.test"]);
    let site = |host: &str, tls: String, addr: SocketAddr, extra: &str| {
        format!(
            "hosts = [\"{host}\"]\n{tls}\n[pools.web]\nservers = [\"{addr}\"]\n{extra}\n[[routes]]\npath = \"/\"\npool = \"web\"\n"
        )
    };
    let cfg = ConfigDir::new(
        &main_toml(""),
        &[
            (
                "b",
                site("b.test", tls_toml(&b_crt, &b_key), buffered.addr, ""),
            ),
            (
                "s",
                site(
                    "s.test",
                    tls_toml(&s_crt, &s_key),
                    streaming.addr,
                    "buffering = false",
                ),
            ),
        ],
    );
    let proxy = Proxy::start(cfg.load()).await;
    SmuggleSetup {
        pki,
        _cfg: cfg,
        proxy,
        buffered,
        streaming,
    }
}

#[tokio::test]
async fn smuggling_corpus_is_refused_over_http_and_tls() {
    let s = smuggle_setup().await;
    let mut sent = 0;
    let mut failures = Vec::new();
    for (host, other, backend) in [
        ("b.test", "s.test", &s.buffered),
        ("s.test", "b.test", &s.streaming),
    ] {
        for (name, template) in SMUGGLING {
            let raw = template.replace("{host}", host).replace("{other}", other);
            for tls in [false, true] {
                let answer = if tls {
                    let stream = tls_connect(&s.pki, s.proxy.https, host, &[b"http/1.1"])
                        .await
                        .unwrap();
                    exchange(stream, raw.as_bytes()).await
                } else {
                    let stream = TcpStream::connect(s.proxy.http).await.unwrap();
                    exchange(stream, raw.as_bytes()).await
                };
                if !matches!(answer, Some(Answer::Status(400) | Answer::Closed)) {
                    failures.push(format!("{name} ({host}, tls: {tls}): got {answer:?}"));
                }
                // A good request afterwards, on a fresh connection: once it
                // has arrived, anything the bad one smuggled would have too.
                let ok = if tls {
                    https_request(&s.pki, s.proxy.https, host, false, get(host, "/ok")).await
                } else {
                    plain_request(s.proxy.http, get(host, "/ok")).await
                }
                .unwrap();
                if ok.status() != StatusCode::OK {
                    failures.push(format!(
                        "after {name} ({host}, tls: {tls}) a good request got {}",
                        ok.status()
                    ));
                } else {
                    sent += 1;
                }
                let paths = backend.paths();
                if !paths.iter().all(|p| p == "/ok") {
                    failures.push(format!(
                        "{name} ({host}, tls: {tls}) reached the backend: {paths:?}"
                    ));
                    backend.complete.lock().unwrap().retain(|p| p == "/ok");
                }
            }
        }
        assert_eq!(backend.paths().len(), sent);
        sent = 0;
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Heads the streaming pool forwarded before the body turned out to be
    // bad were aborted: the backend never saw a complete request.
    assert_eq!(s.buffered.aborted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn gzip_then_chunked_is_accepted() {
    let s = smuggle_setup().await;
    for host in ["b.test", "s.test"] {
        let raw = format!(
            "POST /gz HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let stream = TcpStream::connect(s.proxy.http).await.unwrap();
        assert_eq!(
            exchange(stream, raw.as_bytes()).await,
            Some(Answer::Status(200))
        );
    }
    assert_eq!(s.buffered.paths(), ["/gz"]);
    assert_eq!(s.streaming.paths(), ["/gz"]);
}

// --- raw HTTP/2 helpers --------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u8, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// A literal header field without indexing, new name, no Huffman coding.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

fn request_block(authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/h2"),
        (":authority", authority),
    ]
    .iter()
    .chain(extra)
    {
        hpack_literal(&mut b, n, v.as_bytes());
    }
    b
}

type Frame = (u8, u8, u32, Vec<u8>);

/// The next frame, or None at EOF / reset.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Option<Frame> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).await.ok()?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((h[3], h[4], stream, payload))
}

/// The server's first SETTINGS as (id, value) pairs.
async fn h2_open(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<(u16, u32)>) {
    let mut s = tls_connect(pki, addr, sni, &[b"h2"]).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let (ty, _, _, payload) = tokio::time::timeout(WAIT, read_frame(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ty, SETTINGS);
    let settings = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    s.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
    (s, settings)
}

/// How the server answered stream `id`.
#[derive(Debug, PartialEq, Eq)]
enum H2Answer {
    /// A response HEADERS frame; `true` if it is `:status 400` (static index 12).
    Headers { bad_request: bool },
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection ended.
    Closed,
}

async fn h2_answer<S: AsyncRead + Unpin>(s: &mut S, id: u32) -> H2Answer {
    let read = async {
        loop {
            let Some((ty, _, stream, payload)) = read_frame(s).await else {
                return H2Answer::Closed;
            };
            match ty {
                HEADERS if stream == id => {
                    return H2Answer::Headers {
                        bad_request: payload.first() == Some(&0x8c),
                    };
                }
                RST_STREAM if stream == id => {
                    return H2Answer::Reset(u32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]));
                }
                GOAWAY => {
                    return H2Answer::GoAway(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("no answer")
}

#[tokio::test]
async fn h2_connection_specific_headers_are_refused() {
    let s = smuggle_setup().await;
    for host in ["b.test", "s.test"] {
        for extra in [
            &[("transfer-encoding", "chunked")][..],
            &[("connection", "keep-alive")],
            &[("connection", "close"), ("x-a", "1")],
            &[("keep-alive", "timeout=5")],
            &[("upgrade", "websocket")],
            &[("te", "gzip")],
            &[("content-length", "0"), ("content-length", "5")],
        ] {
            let (mut c, _) = h2_open(&s.pki, s.proxy.https, host).await;
            let block = request_block(host, extra);
            let mut out = frame(HEADERS, END_HEADERS, 1, &block);
            // A body that disagrees with content-length, for the last case.
            out.extend(frame(DATA, END_STREAM, 1, b"hello"));
            c.write_all(&out).await.unwrap();
            let answer = h2_answer(&mut c, 1).await;
            assert!(
                matches!(
                    answer,
                    H2Answer::Reset(_)
                        | H2Answer::GoAway(_)
                        | H2Answer::Closed
                        | H2Answer::Headers { bad_request: true }
                ),
                "{extra:?} on {host}: {answer:?}"
            );
        }
        // The same connection type still works for a clean request.
        let ok = https_request(&s.pki, s.proxy.https, host, true, get(host, "/ok"))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
    assert_eq!(s.buffered.paths(), ["/ok"]);
    assert_eq!(s.streaming.paths(), ["/ok"]);
}

// --- slow and greedy clients ----------------------------------------------------

struct One {
    pki: Pki,
    _cfg: ConfigDir,
    proxy: Proxy,
}

/// One TLS site `a.test` in front of `backend`, with this switchyard.toml
/// extra text and this pool extra text.
async fn one_site(backend: SocketAddr, main_extra: &str, pool_extra: &str) -> One {
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let site = format!(
        "hosts = [\"a.test\"]\n{}\n[pools.web]\nservers = [\"{backend}\"]\n{pool_extra}\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
        tls_toml(&crt, &key)
    );
    let cfg = ConfigDir::new(&main_toml(main_extra), &[("a", site)]);
    let proxy = Proxy::start(cfg.load()).await;
    One {
        pki,
        _cfg: cfg,
        proxy,
    }
}

#[tokio::test]
async fn slowloris_is_cut_by_the_header_timeout() {
    let backend = Backend::named("ok").await;
    let s = one_site(backend.addr, "[timeouts]\nheader = \"1s\"\n", "").await;
    let mut c = TcpStream::connect(s.proxy.http).await.unwrap();
    let started = Instant::now();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .unwrap();
    // One header byte every 100 ms: always active, never done.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if c.write_all(b"x").await.is_err() {
                return;
            }
            let mut b = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), c.read(&mut b)).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, trickle)
        .await
        .expect("slowloris was never cut off");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn heads_over_max_header_bytes_get_431() {
    let backend = Backend::named("ok").await;
    let s = one_site(backend.addr, "[limits]\nmax_header_bytes = 16384\n", "").await;
    // Under the limit: fine.
    let big = "y".repeat(8000);
    let ok = plain_request(
        s.proxy.http,
        Request::get("/")
            .header("host", "a.test")
            .header("x-big", &big)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // Over it, plain and TLS HTTP/1.1, and HTTP/2.
    let huge = "z".repeat(40_000);
    let raw = format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Huge: {huge}\r\n\r\n");
    let c = TcpStream::connect(s.proxy.http).await.unwrap();
    assert_eq!(exchange(c, raw.as_bytes()).await, Some(Answer::Status(431)));
    let c = tls_connect(&s.pki, s.proxy.https, "a.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(exchange(c, raw.as_bytes()).await, Some(Answer::Status(431)));
    let h2 = https_request(
        &s.pki,
        s.proxy.https,
        "a.test",
        true,
        Request::get("https://a.test/")
            .header("x-huge", &huge)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    match h2 {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => {
            // hyper's client may refuse to send past the peer's
            // SETTINGS_MAX_HEADER_LIST_SIZE, or see the stream refused.
            let msg = format!("{e:?}");
            assert!(
                msg.contains("header") || msg.contains("REFUSED") || msg.contains("size"),
                "{msg}"
            );
        }
    }
    assert_eq!(backend.count(), 1);
}

/// How long a keep-alive connection stays open after one answered request,
/// with these idle and header timeouts (waiting at most `wait` for the close).
async fn kept_open_after_one_request(idle: &str, header: &str, wait: Duration) -> Duration {
    let backend = Backend::named("ok").await;
    let s = one_site(
        backend.addr,
        &format!("[timeouts]\nidle = \"{idle}\"\nheader = \"{header}\"\n"),
        "",
    )
    .await;
    let mut c = TcpStream::connect(s.proxy.http).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_head(&mut c).await, Answer::Status(200));
    // tokio's clock, so that a test on a paused clock measures virtual time.
    let answered = tokio::time::Instant::now();
    let mut b = [0u8; 64];
    let closed = tokio::time::timeout(wait, c.read(&mut b)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "connection was not closed: {closed:?}"
    );
    answered.elapsed()
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_idle() {
    let idle = kept_open_after_one_request("1s", "5s", WAIT).await;
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(4),
        "closed after {idle:?}"
    );
}

/// hyper's own header timer (30 s unless turned off) must not close a
/// keep-alive connection before `idle`. On tokio's paused clock, which jumps
/// to the next timer whenever every task waits, so this takes no real time.
#[tokio::test(start_paused = true)]
async fn keep_alive_outlives_hypers_default_header_timer() {
    let idle = kept_open_after_one_request("300s", "5s", Duration::from_secs(600)).await;
    assert!(
        idle >= Duration::from_secs(299) && idle < Duration::from_secs(320),
        "closed after {idle:?} of a 300 s idle timeout"
    );
}

#[tokio::test]
async fn at_max_connections_new_ones_wait_and_open_ones_keep_working() {
    let backend = Backend::named("ok").await;
    let s = one_site(backend.addr, "[limits]\nmax_connections = 2\n", "").await;
    let req = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.proxy.http).await.unwrap();
        c.write_all(req).await.unwrap();
        assert_eq!(read_head(&mut c).await, Answer::Status(200));
        open.push(c);
    }
    // A third connects (the kernel's backlog) but is not served yet.
    let mut third = TcpStream::connect(s.proxy.http).await.unwrap();
    third.write_all(req).await.unwrap();
    let mut b = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut b))
            .await
            .is_err(),
        "served beyond max_connections"
    );
    // The open ones still work, repeatedly.
    for c in &mut open {
        for _ in 0..3 {
            c.write_all(req).await.unwrap();
            assert_eq!(read_head(c).await, Answer::Status(200));
        }
    }
    // One leaves: the waiting one is served.
    drop(open.pop());
    assert_eq!(read_head(&mut third).await, Answer::Status(200));
}

#[tokio::test]
async fn at_max_connections_a_connection_waiting_past_the_header_timeout_is_closed_and_counted() {
    let backend = Backend::named("ok").await;
    let s = one_site(
        backend.addr,
        "[limits]\nmax_connections = 1\n[timeouts]\nheader = \"1s\"\n",
        "",
    )
    .await;
    let req = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let mut open = TcpStream::connect(s.proxy.http).await.unwrap();
    open.write_all(req).await.unwrap();
    assert_eq!(read_head(&mut open).await, Answer::Status(200));
    let started = Instant::now();
    let mut waiting = TcpStream::connect(s.proxy.http).await.unwrap();
    waiting.write_all(req).await.unwrap();
    // Closed without an answer once the header timeout passes.
    let mut b = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), waiting.read(&mut b))
        .await
        .expect("the waiting connection was neither served nor closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "served beyond max_connections: {read:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?} of a 1 s header timeout"
    );
    let rejected = s
        .proxy
        .metric_until(
            &[
                "switchyard_connections_rejected_total",
                "reason=\"max_connections\"",
            ],
            Duration::from_secs(5),
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(rejected, 1.0);
    // The open one still works, and a newcomer is served once it leaves.
    open.write_all(req).await.unwrap();
    assert_eq!(read_head(&mut open).await, Answer::Status(200));
    drop(open);
    let mut next = TcpStream::connect(s.proxy.http).await.unwrap();
    next.write_all(req).await.unwrap();
    assert_eq!(read_head(&mut next).await, Answer::Status(200));
}

#[tokio::test]
async fn h2_advertises_limits_and_survives_rapid_reset_and_continuation_flood() {
    let backend = Backend::named("ok").await;
    let s = one_site(backend.addr, "[limits]\nmax_header_bytes = 16384\n", "").await;
    let (mut c, settings) = h2_open(&s.pki, s.proxy.https, "a.test").await;
    // SETTINGS_MAX_CONCURRENT_STREAMS (3) and SETTINGS_MAX_HEADER_LIST_SIZE (6).
    assert!(settings.contains(&(3, 256)), "{settings:?}");
    assert!(settings.contains(&(6, 16384)), "{settings:?}");

    // Rapid reset (CVE-2023-44487): open and cancel streams in a burst.
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("a.test", &[]),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let writer = async {
        let _ = c.write_all(&burst).await;
    };
    let _ = tokio::time::timeout(WAIT, writer).await;
    let goaway = tokio::time::timeout(WAIT, async {
        loop {
            match read_frame(&mut c).await {
                None => return None,
                Some((GOAWAY, _, _, p)) => {
                    return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                Some(_) => {}
            }
        }
    })
    .await
    .expect("rapid reset neither got GOAWAY nor a close");
    // ENHANCE_YOUR_CALM (0xb), or the connection simply closed.
    assert!(matches!(goaway, None | Some(0xb)), "{goaway:?}");
    assert!(
        backend.count() < 5000,
        "every reset stream was forwarded: {}",
        backend.count()
    );

    // CONTINUATION flood: one header block that never ends.
    let (mut c, _) = h2_open(&s.pki, s.proxy.https, "a.test").await;
    c.write_all(&frame(HEADERS, 0, 1, &request_block("a.test", &[])))
        .await
        .unwrap();
    let mut piece = Vec::new();
    hpack_literal(&mut piece, "x-flood", &[b'f'; 1000]);
    let cont = frame(CONTINUATION, 0, 1, &piece);
    let mut sent = 0usize;
    let (mut rd, mut wr) = tokio::io::split(c);
    let flood = async {
        while sent < 64 << 20 {
            if wr.write_all(&cont).await.is_err() {
                return;
            }
            sent += cont.len();
        }
    };
    let ended = async {
        loop {
            match read_frame(&mut rd).await {
                None | Some((GOAWAY, ..)) => return,
                Some((RST_STREAM | HEADERS, _, 1, _)) => return,
                Some(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, async {
        tokio::select! {
            () = flood => {}
            () = ended => {}
        }
    })
    .await
    .expect("CONTINUATION flood was neither refused nor cut off");
    assert!(sent < 64 << 20, "accepted {sent} bytes of one header block");

    // The proxy still serves.
    let ok = https_request(&s.pki, s.proxy.https, "a.test", true, get("a.test", "/"))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

// --- broken backends ------------------------------------------------------------

/// A backend that reads a request head on each connection, writes `reply`
/// and then closes (`close`) or holds the connection open.
struct Broken {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Broken {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn broken(reply: Vec<u8>, close: bool) -> Broken {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (a, s) = (accepts.clone(), stop.clone());
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        loop {
            let mut tcp = tokio::select! {
                r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => return },
                () = s.cancelled() => return,
            };
            a.fetch_add(1, Ordering::SeqCst);
            let (reply, s) = (reply.clone(), s.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                tokio::select! {
                    _ = tcp.write_all(&reply) => {}
                    () = s.cancelled() => return,
                }
                if !close {
                    s.cancelled().await;
                }
            });
        }
    });
    Broken {
        addr,
        accepts,
        stop,
    }
}

/// The client saw a 502 or a response it can tell is incomplete.
fn assert_failed_visibly(
    case: &str,
    r: Result<Got, Box<dyn std::error::Error + Send + Sync>>,
    statuses: &[StatusCode],
) {
    match r {
        Ok(resp) => assert!(
            statuses.contains(&resp.status()),
            "{case}: presented as complete: {} {:?}",
            resp.status(),
            resp.body()
        ),
        Err(e) => {
            // The body failed: detectably truncated.
            let _ = e;
        }
    }
}

#[tokio::test]
async fn broken_backends_give_502_or_a_visibly_truncated_response() {
    capture_logs();
    let big = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "b".repeat(1 << 20)
    );
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "invalid status line",
            b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            true,
        ),
        ("garbage", b"\x00\x01\x02 hello\r\n\r\n".to_vec(), true),
        ("oversized headers", big.into_bytes(), true),
        (
            "content-length not honoured, then close",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
            true,
        ),
        (
            "content-length not honoured, held open",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
            false,
        ),
        (
            "close mid chunked body",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
            true,
        ),
        (
            "close mid large body",
            {
                let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n".to_vec();
                v.extend(std::iter::repeat_n(b'x', 2_000_000));
                v
            },
            true,
        ),
    ];
    for buffering in [true, false] {
        for (case, reply, close) in &cases {
            let b = broken(reply.clone(), *close).await;
            let pool = format!("buffering = {buffering}");
            let s = one_site(b.addr, "[timeouts]\nupstream_response = \"1s\"\n", &pool).await;
            let case = format!("{case} (buffering: {buffering})");
            for round in 0..2 {
                let r = tokio::time::timeout(
                    WAIT,
                    https_request(&s.pki, s.proxy.https, "a.test", false, get("a.test", "/")),
                )
                .await
                .unwrap_or_else(|_| panic!("{case}: client hung"));
                // A server that stalls mid-body is cut after
                // upstream_response: 504 when nothing had reached the client
                // yet (buffered), a truncated body otherwise.
                let allowed: &[StatusCode] = if *close {
                    &[StatusCode::BAD_GATEWAY]
                } else {
                    &[StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT]
                };
                assert_failed_visibly(&case, r, allowed);
                // Never more than one request per connection: a reused
                // connection would carry the second request to a server
                // that no longer reads, and the client would get a 504.
                // (The second may also be refused at once while the server
                // is in its passive-failure backoff.)
                assert!(b.accepts.load(Ordering::SeqCst) <= round + 1, "{case}");
            }
            let addr = b.addr.to_string();
            let line = wait_for_log(&[&addr]).await;
            assert!(
                line.contains("upstream request failed") || line.contains("complete=false"),
                "{case}: {line}"
            );
        }
    }
}

#[tokio::test]
async fn a_backend_that_never_answers_gets_504_after_upstream_response() {
    for buffering in [true, false] {
        let b = broken(Vec::new(), false).await;
        // Hold the reply forever: the `broken` task writes nothing useful.
        let pool = format!("buffering = {buffering}");
        let s = one_site(b.addr, "[timeouts]\nupstream_response = \"1s\"\n", &pool).await;
        let started = Instant::now();
        let r = https_request(&s.pki, s.proxy.https, "a.test", true, get("a.test", "/"))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}

// --- the real binary in a child process -----------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `switchyard run` in a child process, its log kept in memory.
struct Child {
    child: std::process::Child,
    http: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Child {
    /// Starts the binary on free ports; `nofile` lowers RLIMIT_NOFILE.
    async fn start(
        sites: &[(&str, String)],
        main_extra: &str,
        nofile: Option<u32>,
    ) -> (Child, ConfigDir) {
        let (http, https, admin) = (free_port(), free_port(), free_port());
        let main = format!(
            "[listen]\nhttps = [\"127.0.0.1:{https}\"]\nhttp = [\"127.0.0.1:{http}\"]\nadmin = \"127.0.0.1:{admin}\"\n{main_extra}\n"
        );
        let cfg = ConfigDir::new(&main, sites);
        let bin = env!("CARGO_BIN_EXE_switchyard");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = std::process::Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" run -c \"$1\""))
                    .arg(bin)
                    .arg(cfg.path());
                c
            }
            None => {
                let mut c = std::process::Command::new(bin);
                c.arg("run").arg("-c").arg(cfg.path());
                c
            }
        };
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env("RUST_LOG", "info");
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        let c = Child {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            https: SocketAddr::from(([127, 0, 0, 1], https)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            log,
        };
        c.wait_for_log("admin listening").await;
        (c, cfg)
    }

    async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "child never logged {needle:?}:\n{}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// CPU time used so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which ends with ')'): utime is the
        // 12th, stime the 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    async fn connections_active(&self) -> f64 {
        let resp = plain_request(self.admin, get("admin", "/metrics"))
            .await
            .unwrap();
        metric_value(
            &String::from_utf8_lossy(resp.body()),
            &["switchyard_connections_active"],
        )
    }

    /// Waits (bounded by `limit`) until the active connection gauge satisfies `ok`.
    async fn wait_connections(&self, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.connections_active().await;
            if ok(n) {
                return n;
            }
            assert!(Instant::now() < deadline, "connections_active stuck at {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn plain_site(backend: SocketAddr) -> String {
    format!(
        "hosts = [\"a.test\"]\n[pools.web]\nservers = [\"{backend}\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n"
    )
}

#[tokio::test]
async fn running_out_of_descriptors_makes_accept_back_off() {
    let backend = Backend::named("ok").await;
    let (child, _cfg) = Child::start(&[("a", plain_site(backend.addr))], "", Some(64)).await;
    let ok = plain_request(child.http, get("a.test", "/")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // More connections than descriptors: the rest wait in the backlog and
    // accept(2) fails with EMFILE.
    let mut conns = Vec::new();
    for _ in 0..150 {
        conns.push(TcpStream::connect(child.http).await.unwrap());
    }
    child.wait_for_log("accept failed").await;
    // Backing off, not spinning: well under half a core over a second.
    let before = child.cpu_ticks();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = child.cpu_ticks() - before;
    let ticks_per_sec = 100; // USER_HZ on Linux
    assert!(
        (used as f64) < 0.3 * ticks_per_sec as f64 * t.elapsed().as_secs_f64(),
        "accept loop used {used} ticks in {:?}",
        t.elapsed()
    );
    let mut child = child;
    assert!(
        child.child.try_wait().unwrap().is_none(),
        "the proxy exited"
    );
    // Descriptors come back: service resumes.
    drop(conns);
    let deadline = Instant::now() + WAIT;
    loop {
        match plain_request(child.http, get("a.test", "/")).await {
            Ok(r) if r.status() == StatusCode::OK => break,
            other => assert!(Instant::now() < deadline, "not serving again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens `n` connections to `addr` and writes `first` on each (nothing if
/// empty), in batches, each once the proxy has accepted the one before
/// (so the listen backlog never overflows); `base` connections were open
/// already.
async fn open_many(
    child: &Child,
    addr: SocketAddr,
    n: usize,
    base: usize,
    first: &'static [u8],
) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(250);
        let conns = futures_util::future::join_all((0..batch).map(|_| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            if !first.is_empty() {
                c.write_all(first).await.unwrap();
            }
            c
        }))
        .await;
        out.extend(conns);
        let want = (base + out.len()) as f64;
        child
            .wait_connections(Duration::from_secs(30), |a| a >= want)
            .await;
    }
    out
}

#[tokio::test]
async fn idle_and_half_open_connections_leave_service_and_memory_intact() {
    let backend = Backend::named("ok").await;
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let site = format!(
        "hosts = [\"a.test\"]\n{}\n[pools.web]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
        tls_toml(&crt, &key),
        backend.addr
    );
    let (child, _cfg) = Child::start(
        &[("a", site)],
        "[timeouts]\nheader = \"60s\"\nidle = \"60s\"\n",
        None,
    )
    .await;
    let request = || async {
        let started = Instant::now();
        let r = https_request(&pki, child.https, "a.test", false, get("a.test", "/"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let h2 = https_request(&pki, child.https, "a.test", true, get("a.test", "/"))
            .await
            .unwrap();
        assert_eq!(h2.status(), StatusCode::OK);
        let p = plain_request(child.http, get("a.test", "/")).await.unwrap();
        assert_eq!(p.status(), StatusCode::OK);
        started.elapsed()
    };
    for _ in 0..20 {
        request().await;
    }
    child.wait_connections(WAIT, |n| n == 0.0).await;
    let baseline = child.rss_kib();

    // A TLS record header announcing a 512-byte ClientHello, and 4 bytes of it.
    const PARTIAL_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc";
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let idle = open_many(&child, child.http, 5000, 0, b"").await;
        let half_hello = open_many(&child, child.https, 500, 5000, PARTIAL_HELLO).await;
        let silent = open_many(&child, child.https, 500, 5500, b"").await;
        let loaded = child.rss_kib();
        let took = request().await;
        assert!(
            took < Duration::from_secs(1),
            "three requests took {took:?} next to 6000 idle connections"
        );
        drop(idle);
        drop(half_hello);
        drop(silent);
        child
            .wait_connections(Duration::from_secs(30), |n| n == 0.0)
            .await;
        request().await;
        // The proxy gives freed memory back a moment after a burst recedes.
        let deadline = Instant::now() + WAIT;
        let mut after = child.rss_kib();
        while (after as f64) > baseline as f64 * 1.10 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = child.rss_kib();
        }
        rounds.push((loaded, after, took));
    }
    eprintln!("RSS KiB: baseline {baseline}; per round (loaded, after, request time): {rounds:?}");
    for (loaded, after, _) in rounds {
        assert!(
            (after as f64) <= baseline as f64 * 1.10,
            "RSS {after} KiB after the connections left, {baseline} KiB before ({loaded} KiB loaded)"
        );
    }
}
