//! The pool's own HTTP/1.1 client (`src/upstream/client.rs`, `codec.rs`,
//! `keepalive.rs`) end to end through the proxy, against raw TCP backends
//! that send exactly the bytes under test: body framings, interim and
//! malformed responses, keep-alive reuse and its failure cases, early
//! answers to uploads, and chunked uploads.
//!
//! Every wait is bounded by `WAIT`; tests synchronise on channels, never
//! on sleeps.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Collected, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

const HOST: &str = "u.test";
/// Path prefix of the route to the buffered pool (the default settings).
const BUFFERED: &str = "/b/";
/// Path prefix of the route to the same server in a `buffering = false` pool.
const STREAMED: &str = "/s/";
/// Both routes, for tests that hold for either pool.
const BOTH: [&str; 2] = [BUFFERED, STREAMED];

// --- the proxy -----------------------------------------------------------------

struct Site {
    _cfg: ConfigDir,
    proxy: Proxy,
}

/// A proxy with one plain-HTTP site whose two routes go to two pools on
/// `backend`: `BUFFERED` (default settings) and `STREAMED`.
async fn site(backend: SocketAddr) -> Site {
    let text = format!(
        "hosts = [\"{HOST}\"]\n\
         [pools.buffered]\nservers = [\"{backend}\"]\n\
         [pools.streamed]\nservers = [\"{backend}\"]\nbuffering = false\n\
         [[routes]]\npath = \"{BUFFERED}\"\npool = \"buffered\"\n\
         [[routes]]\npath = \"{STREAMED}\"\npool = \"streamed\"\n"
    );
    let cfg = ConfigDir::new(&main_toml(""), &[("u", text)]);
    let proxy = Proxy::start(cfg.load()).await;
    Site { _cfg: cfg, proxy }
}

// --- raw backends ----------------------------------------------------------------

/// A connection a raw backend accepted, with the bytes read and not taken yet.
struct Wire {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    /// Reads more; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Takes the bytes up to and including the first `delim`; None at the end.
    async fn take_through(&mut self, delim: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(delim.len()).position(|w| w == delim) {
                return Some(self.buf.drain(..i + delim.len()).collect());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Takes exactly `n` bytes; None at the end.
    async fn take_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Reads a request head (without its blank line); None at the end.
    async fn head(&mut self) -> Option<String> {
        let head = self.take_through(b"\r\n\r\n").await?;
        Some(String::from_utf8_lossy(&head[..head.len() - 4]).into_owned())
    }

    /// Reads the body `head` frames (a length, chunked, or none),
    /// de-chunked; None at a premature end.
    async fn body(&mut self, head: &str) -> Option<Vec<u8>> {
        if header(head, "transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line = self.take_through(b"\r\n").await?;
                let line = std::str::from_utf8(&line[..line.len() - 2]).ok()?;
                let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    // Trailer fields up to the blank line.
                    while self.take_through(b"\r\n").await?.len() > 2 {}
                    return Some(body);
                }
                body.extend(self.take_exact(size).await?);
                self.take_exact(2).await?;
            }
        }
        let len = header(head, "content-length").map_or(0, |v| v.parse().unwrap());
        self.take_exact(len).await
    }

    /// Reads a whole request: its head and its body.
    async fn request(&mut self) -> Option<(String, Vec<u8>)> {
        let head = self.head().await?;
        let body = self.body(&head).await?;
        Some((head, body))
    }

    /// Writes `bytes`; false if the proxy has gone.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).await.is_ok()
    }

    /// Waits until the proxy closes the connection, dropping what it sends.
    async fn closed(&mut self) {
        while self.fill().await {
            self.buf.clear();
        }
    }
}

/// The first value of header `name` in a head's text (case-insensitive).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A raw TCP backend: each connection it accepts goes to `serve` with its
/// index (0 first). Stops accepting when dropped.
struct Raw {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Raw {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Starts a raw backend on an ephemeral loopback port (see [`Raw`]).
async fn raw<F, Fut>(serve: F) -> Raw
where
    F: Fn(Wire, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(
                Wire {
                    tcp,
                    buf: Vec::new(),
                },
                n,
            ));
        }
    });
    Raw {
        addr,
        accepted,
        task,
    }
}

/// A backend answering every request with `reply` on connections it never
/// closes itself: any reuse the proxy attempts would work, so the accept
/// count shows the proxy's choice alone.
async fn answering(reply: impl Into<Bytes>) -> Raw {
    let reply: Bytes = reply.into();
    raw(move |mut wire, _| {
        let reply = reply.clone();
        async move {
            while wire.request().await.is_some() {
                if !wire.send(&reply).await {
                    return;
                }
            }
        }
    })
    .await
}

/// A backend that sends `reply` to the first request on each connection,
/// then waits for the proxy to close it and reports that on the channel.
async fn once_then_report(reply: Vec<u8>) -> (Raw, mpsc::UnboundedReceiver<usize>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let reply = Arc::new(reply);
    let backend = raw(move |mut wire, n| {
        let (tx, reply) = (tx.clone(), reply.clone());
        async move {
            if wire.request().await.is_some() {
                wire.send(&reply).await;
                wire.closed().await;
            }
            let _ = tx.send(n);
        }
    })
    .await;
    (backend, rx)
}

/// Waits (bounded) until the backend reports a connection closed.
async fn report(rx: &mut mpsc::UnboundedReceiver<usize>, what: &str) -> usize {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no report within {WAIT:?}"))
        .expect("the backend is running")
}

// --- clients ---------------------------------------------------------------------

/// `METHOD path` for the site, with no body.
fn req(method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends `req` over a new plain HTTP/1.1 connection and returns as soon as
/// the response head is in.
async fn open(site: &Site, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let addr = site.proxy.http;
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(send.send_request(req).await?)
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("a response head within WAIT")
        .expect("a response head")
}

/// Reads a response's body (and trailers); the error if it broke off.
async fn read_body(resp: Response<Incoming>) -> Result<Collected<Bytes>, hyper::Error> {
    read_all(resp.into_body()).await
}

/// Reads a body to its end (bounded by `WAIT`); the error if it broke off.
async fn read_all(body: Incoming) -> Result<Collected<Bytes>, hyper::Error> {
    tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the body ended or failed within WAIT")
}

/// Sends `req` and reads the whole response, which must arrive intact.
async fn call(site: &Site, req: Request<Full<Bytes>>) -> Got {
    let resp = open(site, req).await;
    let (parts, body) = resp.into_parts();
    let body = read_all(body).await.expect("a whole body").to_bytes();
    Response::from_parts(parts, body)
}

/// GETs `path` asking for trailers (an HTTP/1.1 client gets them only
/// when it does), checks the status is 200 and reads the whole body.
async fn get_with_trailers(site: &Site, path: &str, what: &str) -> Collected<Bytes> {
    let mut r = req("GET", path);
    r.headers_mut().insert("te", "trailers".parse().unwrap());
    let resp = open(site, r).await;
    assert_eq!(resp.status(), 200, "{what}");
    read_body(resp).await.expect("a whole body")
}

/// Reads one response off `rd`: until it is whole by its Content-Length,
/// or the stream ends.
async fn read_response(rd: &mut (impl AsyncRead + Unpin)) -> Option<RawResponse> {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(r) = RawResponse::parse(&got, false)
            && r.header("content-length").is_some()
        {
            return Some(r);
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return RawResponse::parse(&got, false),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

// --- body framings -----------------------------------------------------------------

/// A chunked response (extensions, framing look-alikes in its data, trailers) arrives byte-exact.
#[tokio::test]
async fn a_chunked_response_with_extensions_and_trailers_reaches_the_client_byte_exact() {
    // Data that looks like framing must stay data.
    let tricky = b"line\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n".to_vec();
    // Larger than the client's first reads: spans many of them.
    let big = noise(200 * 1024, 1);
    let mut wire = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
        Transfer-Encoding: chunked\r\nTrailer: x-checksum, x-count\r\n\r\n"
        .to_vec();
    wire.extend_from_slice(b"5;name=value\r\nhello\r\n");
    wire.extend_from_slice(format!("{:X} ; q=\"a;b\"\r\n", tricky.len()).as_bytes());
    wire.extend_from_slice(&tricky);
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(format!("{:x};x;y=z\r\n", big.len()).as_bytes());
    wire.extend_from_slice(&big);
    wire.extend_from_slice(b"\r\n0;final=1\r\nx-checksum: abc123\r\nx-count: 3\r\n\r\n");
    let want = [&b"hello"[..], &tricky, &big].concat();

    let backend = answering(wire).await;
    let s = site(backend.addr).await;
    for path in BOTH {
        for i in 0..2 {
            let body = get_with_trailers(&s, path, &format!("{path} #{i}")).await;
            let trailers = body.trailers().cloned().unwrap_or_default();
            assert_eq!(
                header_map(&trailers),
                [("x-checksum", "abc123"), ("x-count", "3")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into(),
                "{path} #{i}: trailers"
            );
            let body = body.to_bytes();
            assert_eq!(body.len(), want.len(), "{path} #{i}");
            assert!(body == want, "{path} #{i}: body differs");
        }
    }
    // The trailer section was consumed exactly: one connection per pool.
    assert_eq!(backend.accepted(), 2, "connections reused after trailers");
}

/// A close-delimited response arrives whole; each one takes a new backend connection.
#[tokio::test]
async fn a_close_delimited_response_arrives_whole_and_its_connection_is_not_reused() {
    let body = noise(300 * 1024, 2);
    let sent = Arc::new(body.clone());
    let backend = raw(move |mut wire, _| {
        let body = sent.clone();
        async move {
            if wire.request().await.is_none() {
                return;
            }
            wire.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                .await;
            for piece in body.chunks(64 * 1024) {
                wire.send(piece).await;
            }
            // The close ends the body.
        }
    })
    .await;
    let s = site(backend.addr).await;
    let mut n = 0;
    for path in BOTH {
        for i in 0..2 {
            let r = call(&s, req("GET", path)).await;
            assert_eq!(r.status(), 200, "{path} #{i}");
            assert_eq!(r.body().len(), body.len(), "{path} #{i}");
            assert!(r.body()[..] == body[..], "{path} #{i}: body differs");
            n += 1;
            assert_eq!(backend.accepted(), n, "{path} #{i}: a new connection each");
        }
    }
}

/// Interim responses (100, 102, 103) are skipped: the client sees only the 200 and its body.
#[tokio::test]
async fn interim_responses_before_the_final_one_are_skipped() {
    let backend = answering(Bytes::from_static(
        b"HTTP/1.1 100 Continue\r\n\r\n\
          HTTP/1.1 102 Processing\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nhello",
    ))
    .await;
    let s = site(backend.addr).await;
    for path in BOTH {
        for i in 0..2 {
            // Raw, so an interim response passed on would be seen first.
            let raw_req =
                format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
            let r = raw_http(s.proxy.http, raw_req.as_bytes())
                .await
                .expect("a response");
            assert_eq!(r.status, 200, "{path} #{i}: {}", r.head);
            assert_eq!(r.header("x-final"), Some("yes"), "{path} #{i}");
            assert_eq!(
                r.header("link"),
                None,
                "{path} #{i}: the 103's field leaked"
            );
            assert_eq!(r.body, b"hello", "{path} #{i}");
        }
    }
    // The interim heads were taken off exactly: the connection is reused.
    assert_eq!(backend.accepted(), 2, "one connection per pool");
}

/// A response arriving a byte at a time is read the same as one sent whole.
#[tokio::test]
async fn a_response_arriving_a_byte_at_a_time_is_read_whole() {
    let reply: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
        HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
        3;e=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nx-sum: 42\r\n\r\n";
    let backend = raw(move |mut wire, _| async move {
        // Every byte its own segment, each read by the proxy on its own.
        wire.tcp.set_nodelay(true).unwrap();
        while wire.request().await.is_some() {
            for b in reply {
                if !wire.send(std::slice::from_ref(b)).await {
                    return;
                }
                // Lets the proxy's task read before the next byte.
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
    let s = site(backend.addr).await;
    for path in BOTH {
        for i in 0..2 {
            let body = get_with_trailers(&s, path, &format!("{path} #{i}")).await;
            let sum = body.trailers().and_then(|t| t.get("x-sum")).cloned();
            assert_eq!(
                sum.as_ref().map(|v| v.as_bytes()),
                Some(&b"42"[..]),
                "{path} #{i}"
            );
            assert_eq!(body.to_bytes(), "abc0123456789abcdef", "{path} #{i}");
        }
    }
    assert_eq!(backend.accepted(), 2, "one connection per pool");
}

// --- malformed responses -------------------------------------------------------------

/// A malformed response head gives 502, and the proxy closes that backend connection.
#[tokio::test]
async fn a_malformed_response_head_is_502_and_its_connection_closed() {
    let cases: [&[u8]; 3] = [
        b"\x00\x01\x02 this is not HTTP at all\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 2\r\n\r\nok",
    ];
    for head in cases {
        let what = String::from_utf8_lossy(head).into_owned();
        // A fresh server per case: a failure marks a server down a while.
        let (backend, mut closed) = once_then_report(head.to_vec()).await;
        let s = site(backend.addr).await;
        let r = call(&s, req("GET", STREAMED)).await;
        assert_eq!(r.status(), 502, "{what:?}");
        report(&mut closed, &what).await;
        assert_eq!(backend.accepted(), 1, "{what:?}");
    }
}

/// A response head over 64 KiB gives 502, ended or endless; one of 60 KiB passes.
#[tokio::test]
async fn a_response_head_over_64_kib_is_502() {
    let field = |len: usize| format!("X-Big: {}\r\n", "a".repeat(len));
    let whole = format!(
        "HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok",
        field(70 * 1024)
    );
    // Never ends: the proxy must give up at the limit, not wait for more
    // (upstream_response is 60 s, longer than WAIT).
    let endless = format!("HTTP/1.1 200 OK\r\n{}", "a".repeat(70 * 1024));
    for (what, head) in [("whole", whole), ("endless", endless)] {
        let (backend, mut closed) = once_then_report(head.into_bytes()).await;
        let s = site(backend.addr).await;
        let r = call(&s, req("GET", STREAMED)).await;
        assert_eq!(r.status(), 502, "{what}");
        report(&mut closed, what).await;
    }

    let under = format!(
        "HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok",
        field(60 * 1024)
    );
    let (backend, _closed) = once_then_report(under.into_bytes()).await;
    let s = site(backend.addr).await;
    let r = call(&s, req("GET", STREAMED)).await;
    assert_eq!(r.status(), 200, "a 60 KiB head");
    assert_eq!(r.headers()["x-big"].len(), 60 * 1024);
    assert_eq!(r.body(), "ok");
}

/// A backend that answers a request on each connection with `head`, then
/// `tail` once `go` is notified; then it closes the connection (`close`)
/// or waits for the proxy to close it, and reports the close.
async fn in_two_parts(
    head: &'static [u8],
    tail: &'static [u8],
    close: bool,
) -> (Raw, Arc<Notify>, mpsc::UnboundedReceiver<usize>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let go = Arc::new(Notify::new());
    let backend = raw({
        let go = go.clone();
        move |mut wire, n| {
            let (tx, go) = (tx.clone(), go.clone());
            async move {
                if wire.request().await.is_some() {
                    wire.send(head).await;
                    go.notified().await;
                    wire.send(tail).await;
                    if !close {
                        wire.closed().await;
                    }
                }
                drop(wire);
                let _ = tx.send(n);
            }
        }
    })
    .await;
    (backend, go, rx)
}

/// A chunked body malformed after the head went out cuts the client's response off.
#[tokio::test]
async fn a_chunked_body_malformed_after_the_head_cuts_the_response_off() {
    // Both pools cut off rather than answer 502: a chunked body has no
    // length, so even the buffered pool sends the head first and pipes
    // the body (buffer::drain_response only holds a small, known length).
    for path in BOTH {
        let (backend, go, mut closed) = in_two_parts(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"zz\r\nnot a chunk\r\n",
            false,
        )
        .await;
        let s = site(backend.addr).await;
        let resp = open(&s, req("GET", path)).await;
        assert_eq!(resp.status(), 200, "{path}");
        // The head is out; now the body breaks.
        go.notify_one();
        let body = read_body(resp).await;
        assert!(
            body.is_err(),
            "{path}: a broken body must not look complete: {:?}",
            body.map(|c| c.to_bytes())
        );
        // Not kept for another request.
        report(&mut closed, path).await;
    }
}

/// A body cut short of its length: 502 when buffered, a cut-off body when streamed.
#[tokio::test]
async fn a_length_body_cut_short_is_502_when_buffered_and_cut_off_when_streamed() {
    let (backend, go, mut closed) = in_two_parts(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        b"",
        true,
    )
    .await;
    let s = site(backend.addr).await;
    // The backend closes as soon as it is told: for the buffered pool at once.
    go.notify_one();
    let r = call(&s, req("GET", BUFFERED)).await;
    assert_eq!(r.status(), 502, "buffered: the body is read whole first");
    report(&mut closed, BUFFERED).await;
    let resp = open(&s, req("GET", STREAMED)).await;
    assert_eq!(resp.status(), 200, "streamed: the head went out");
    // Closes mid-body once the client has the head.
    go.notify_one();
    let body = read_body(resp).await;
    assert!(
        body.is_err(),
        "streamed: a short body must not look complete: {:?}",
        body.map(|c| c.to_bytes())
    );
}

// --- keep-alive ------------------------------------------------------------------------

/// Sends 5 GETs one after another to each pool (a fresh backend for each
/// answering `reply`); returns the backend connections each pool opened.
async fn connections_for(reply: &'static [u8]) -> [usize; 2] {
    let mut opened = [0; 2];
    for (slot, path) in opened.iter_mut().zip(BOTH) {
        let backend = answering(reply).await;
        let s = site(backend.addr).await;
        for i in 0..5 {
            let r = call(&s, req("GET", path)).await;
            assert_eq!(r.status(), 200, "{path} #{i}");
            assert_eq!(r.body(), "ok", "{path} #{i}");
        }
        *slot = backend.accepted();
    }
    opened
}

/// Five sequential requests share one backend connection.
#[tokio::test]
async fn sequential_requests_reuse_one_backend_connection() {
    let opened = connections_for(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    assert_eq!(opened, [1, 1]);
}

/// A `Connection: close` response is never reused, even if the backend leaves it open.
#[tokio::test]
async fn a_connection_close_response_is_not_reused() {
    let opened =
        connections_for(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
            .await;
    assert_eq!(opened, [5, 5]);
}

/// An HTTP/1.0 response without `Connection: keep-alive` is not reused; with it, it is.
#[tokio::test]
async fn an_http_1_0_response_is_reused_only_with_keep_alive() {
    let opened = connections_for(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    assert_eq!(opened, [5, 5], "HTTP/1.0 without keep-alive");
    let opened = connections_for(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    assert_eq!(opened, [1, 1], "HTTP/1.0 with keep-alive");
}

/// A kept connection the backend closed while idle is replaced for the next GET.
#[tokio::test]
async fn a_kept_connection_closed_while_idle_is_replaced_for_the_next_get() {
    for path in BOTH {
        let (tx, mut closed) = mpsc::unbounded_channel();
        // Answers one request per connection (keep-alive, by its head), then closes.
        let backend = raw(move |mut wire, n| {
            let tx = tx.clone();
            async move {
                if wire.request().await.is_some() {
                    let body = format!("conn{n}");
                    let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{body}");
                    wire.send(reply.as_bytes()).await;
                }
                drop(wire);
                let _ = tx.send(n);
            }
        })
        .await;
        let s = site(backend.addr).await;
        let r = call(&s, req("GET", path)).await;
        assert_eq!(
            (r.status().as_u16(), &r.body()[..]),
            (200, &b"conn0"[..]),
            "{path}"
        );
        assert_eq!(report(&mut closed, path).await, 0);
        let r = call(&s, req("GET", path)).await;
        assert_eq!(
            (r.status().as_u16(), &r.body()[..]),
            (200, &b"conn1"[..]),
            "{path}"
        );
        assert_eq!(backend.accepted(), 2, "{path}");
    }
}

/// A kept connection dropped on the next request: a GET is sent again, a POST gets 502.
#[tokio::test]
async fn a_request_the_backend_drops_on_a_kept_connection_is_resent_only_if_safe() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    // Each connection answers one request, then reads the next and closes
    // without a word (as a server timing out its keep-alive just then).
    let backend = raw(move |mut wire, n| {
        let tx = tx.clone();
        async move {
            let Some((head, _)) = wire.request().await else {
                return;
            };
            let _ = tx.send((n, head.lines().next().unwrap_or("").to_owned()));
            wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            if let Some((head, _)) = wire.request().await {
                let _ = tx.send((n, head.lines().next().unwrap_or("").to_owned()));
            }
        }
    })
    .await;
    let s = site(backend.addr).await;
    let r = call(&s, req("GET", "/b/1")).await;
    assert_eq!(r.status(), 200);
    let r = call(&s, req("GET", "/b/2")).await;
    assert_eq!(r.status(), 200, "the GET is sent again");
    let mut post = req("POST", "/b/3");
    *post.body_mut() = Full::new(Bytes::from_static(b"data"));
    let r = call(&s, post).await;
    assert_eq!(r.status(), 502, "a POST is never sent twice");
    let mut got = Vec::new();
    while let Ok((n, line)) = seen.try_recv() {
        got.push(format!("{n} {line}"));
    }
    assert_eq!(
        got,
        [
            "0 GET /b/1 HTTP/1.1",
            "0 GET /b/2 HTTP/1.1",
            "1 GET /b/2 HTTP/1.1",
            "1 POST /b/3 HTTP/1.1",
        ]
    );
    assert_eq!(backend.accepted(), 2);
}

/// A HEAD response with `Content-Length: 1000` comes at once, and its connection is reused.
#[tokio::test]
async fn a_head_response_is_delivered_at_once_and_its_connection_reused() {
    for path in BOTH {
        let backend = raw(|mut wire, _| async move {
            while let Some((head, _)) = wire.request().await {
                let reply: &[u8] = if head.starts_with("HEAD ") {
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                };
                if !wire.send(reply).await {
                    return;
                }
            }
        })
        .await;
        let s = site(backend.addr).await;
        let r = call(&s, req("HEAD", path)).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-length"], "1000", "{path}");
        assert!(r.body().is_empty(), "{path}");
        let r = call(&s, req("GET", path)).await;
        assert_eq!(r.body(), "hello", "{path}: not taken for the HEAD's body");
        assert_eq!(backend.accepted(), 1, "{path}: one connection");
    }
}

// --- request bodies -------------------------------------------------------------------

/// An upload of 4 MiB.
const UPLOAD: usize = 4 << 20;

/// A backend that reads a request's head only, reports it, answers 413
/// with `Connection: close` and closes (leaving the body unread).
async fn refusing() -> (Raw, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = raw(move |mut wire, _| {
        let tx = tx.clone();
        async move {
            let Some(head) = wire.head().await else {
                return;
            };
            let _ = tx.send(head);
            wire.send(
                b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n\
                  Content-Length: 22\r\n\r\nbackend says: too big!",
            )
            .await;
        }
    })
    .await;
    (backend, rx)
}

/// Streamed pool: a backend's early 413 reaches the client while it is still uploading.
#[tokio::test]
async fn an_early_413_reaches_the_client_while_it_is_still_uploading() {
    // `buffering = false`: a buffered pool reads the whole body before
    // sending anything, so an answer could not come before the upload ends.
    let (backend, mut heads) = refusing().await;
    let s = site(backend.addr).await;
    let tcp = TcpStream::connect(s.proxy.http).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let (answered, answer_in) = oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST {STREAMED}upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {UPLOAD}\r\n\r\n"
        );
        let body = noise(UPLOAD, 3);
        let (most, last) = body.split_at(UPLOAD - 1024);
        // Write errors are expected once the proxy gives the body up.
        let mut ok = wr.write_all(head.as_bytes()).await.is_ok();
        for piece in most.chunks(64 * 1024) {
            ok = ok && wr.write_all(piece).await.is_ok();
        }
        // The rest only after the answer: it must not wait for the body.
        let _ = tokio::time::timeout(WAIT, answer_in).await;
        if ok {
            let _ = wr.write_all(last).await;
        }
        // Kept open: the proxy takes a half-close for the client leaving.
        wr
    });
    let r = tokio::time::timeout(WAIT, read_response(&mut rd))
        .await
        .expect("an answer while the upload is unfinished")
        .expect("a response");
    let _ = answered.send(());
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.body, b"backend says: too big!", "the backend's 413");
    let head = report_head(&mut heads).await;
    assert!(head.starts_with("POST /s/upload "), "{head}");
    tokio::time::timeout(WAIT, writer)
        .await
        .expect("the writer ended")
        .unwrap();
}

/// Buffered pool: a backend's 413 after reading the head alone still reaches the client.
#[tokio::test]
async fn an_early_413_after_a_buffered_upload_reaches_the_client() {
    let (backend, mut heads) = refusing().await;
    let s = site(backend.addr).await;
    let tcp = TcpStream::connect(s.proxy.http).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST {BUFFERED}upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {UPLOAD}\r\n\r\n"
        );
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&noise(UPLOAD, 4)).await;
        // Kept open: the proxy takes a half-close for the client leaving.
        wr
    });
    let r = tokio::time::timeout(WAIT, read_response(&mut rd))
        .await
        .expect("an answer")
        .expect("a response");
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.body, b"backend says: too big!", "the backend's 413");
    let head = report_head(&mut heads).await;
    assert!(head.starts_with("POST /b/upload "), "{head}");
    assert_eq!(header(&head, "content-length"), Some("4194304"));
    tokio::time::timeout(WAIT, writer)
        .await
        .expect("the writer ended")
        .unwrap();
}

/// Waits (bounded) for the request head a backend reports.
async fn report_head(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the backend saw a request")
        .expect("the backend is running")
}

/// A chunked upload arrives exact (streamed: chunked; buffered: with a length); the answer returns.
#[tokio::test]
async fn a_chunked_upload_reaches_the_backend_exact_and_the_answer_returns() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let backend = raw(move |mut wire, _| {
        let tx = tx.clone();
        async move {
            while let Some((head, body)) = wire.request().await {
                let answer = format!("got {}", body.len());
                let reply = format!(
                    "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = tx.send((head, body));
                if !wire.send(reply.as_bytes()).await {
                    return;
                }
            }
        }
    })
    .await;
    let s = site(backend.addr).await;
    let data = noise(100 * 1024 + 17, 5);
    for path in BOTH {
        // Chunks of awkward sizes, one with an extension.
        let mut raw_req = format!(
            "POST {path}up HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        let mut rest = &data[..];
        for (i, size) in [1, 10, 4096, 65536].into_iter().enumerate() {
            let (chunk, tail) = rest.split_at(size);
            let ext = if i == 1 { ";ext=1" } else { "" };
            raw_req.extend_from_slice(format!("{size:x}{ext}\r\n").as_bytes());
            raw_req.extend_from_slice(chunk);
            raw_req.extend_from_slice(b"\r\n");
            rest = tail;
        }
        raw_req.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
        raw_req.extend_from_slice(rest);
        raw_req.extend_from_slice(b"\r\n0\r\n\r\n");

        let r = raw_http(s.proxy.http, &raw_req).await.expect("a response");
        assert_eq!(r.status, 201, "{path}: {}", r.head);
        assert_eq!(r.body, format!("got {}", data.len()).as_bytes(), "{path}");
        let (head, body) = tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("the backend saw the upload")
            .unwrap();
        if path == STREAMED {
            // Streamed as it arrives, its length unknown.
            assert_eq!(
                header(&head, "transfer-encoding"),
                Some("chunked"),
                "{head}"
            );
            assert_eq!(header(&head, "content-length"), None, "{head}");
        } else {
            // Read whole first, so its length is known.
            let len = data.len().to_string();
            assert_eq!(header(&head, "content-length"), Some(&len[..]), "{head}");
            assert_eq!(header(&head, "transfer-encoding"), None, "{head}");
        }
        assert_eq!(body.len(), data.len(), "{path}");
        assert!(body == data, "{path}: the bytes differ");
    }
}
