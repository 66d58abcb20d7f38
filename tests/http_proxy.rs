//! Plain HTTP proxying over real sockets: TLS/SNI, h1 and h2 downstream,
//! routing, forwarded headers, streaming, upstream failures, redirects, metrics.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    pki: Pki,
    _cfg: ConfigDir,
    proxy: Proxy,
}

/// Two TLS sites, `a.test` (routes / and /api/) and `b.test`, plus a plain
/// site `r.test` that redirects to https.
async fn setup(a_root: &Backend, a_api: &Backend, b: &Backend, extra: &str) -> Setup {
    let pki = Pki::new();
    let (a_crt, a_key) = pki.leaf("a", &["a.test", "www.a.test"]);
    let (b_crt, b_key) = pki.leaf("b", &["b.test"]);
    let (r_crt, r_key) = pki.leaf("r", &["r.test"]);
    let site_a = format!(
        r#"hosts = ["a.test", "WWW.A.test"]
{}
[pools.root]
servers = ["{}"]
[pools.api]
servers = ["{}"]
[[routes]]
name = "root"
path = "/"
pool = "root"
[[routes]]
name = "api"
path = "/api/"
pool = "api"
"#,
        tls_toml(&a_crt, &a_key),
        a_root.addr,
        a_api.addr
    );
    let site_b = format!(
        "hosts = [\"b.test\"]\n{}\n[pools.web]\nservers = [\"{}\"]\n[[routes]]\npath = \"/only/\"\npool = \"web\"\n",
        tls_toml(&b_crt, &b_key),
        b.addr
    );
    let site_r = format!(
        "hosts = [\"r.test\"]\n{}\nredirect_https = true\n[pools.web]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
        tls_toml(&r_crt, &r_key),
        b.addr
    );
    let cfg = ConfigDir::new(
        &main_toml(extra),
        &[("a", site_a), ("b", site_b), ("r", site_r)],
    );
    let proxy = Proxy::start(cfg.load()).await;
    Setup {
        pki,
        _cfg: cfg,
        proxy,
    }
}

async fn three() -> (Backend, Backend, Backend) {
    (
        Backend::named("a-root").await,
        Backend::named("a-api").await,
        Backend::named("b").await,
    )
}

#[tokio::test]
async fn sni_selects_the_site_certificate_and_unknown_names_fail() {
    let (ar, aa, b) = three().await;
    let s = setup(&ar, &aa, &b, "").await;
    // Each name verifies against its own site's certificate.
    for (sni, host, path, want) in [
        ("a.test", "a.test", "/", "a-root"),
        ("www.a.test", "www.a.test", "/", "a-root"),
        ("b.test", "b.test", "/only/x", "b"),
    ] {
        let r = https_request(&s.pki, s.proxy.https, sni, false, get(host, path))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{sni}");
        assert_eq!(r.body(), want);
    }
    // A name no site claims: the handshake is refused and counted.
    let err = tls_connect(&s.pki, s.proxy.https, "nobody.test", &[b"h2"]).await;
    assert!(err.is_err());
    // Plaintext on the TLS port gets a plain 400 and is counted.
    let mut tcp = tokio::net::TcpStream::connect(s.proxy.https).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let m = s.proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            &[
                "switchyard_tls_handshake_failures_total",
                "reason=\"no_sni_match\""
            ]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            &[
                "switchyard_tls_handshake_failures_total",
                "reason=\"not_tls\""
            ]
        ),
        1.0
    );
    // Other connections were not disturbed.
    let r = https_request(&s.pki, s.proxy.https, "a.test", true, get("a.test", "/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn h1_and_h2_downstream_both_reach_the_pool_over_http1() {
    let (ar, aa, b) = three().await;
    let s = setup(&ar, &aa, &b, "").await;
    for h2 in [false, true] {
        let req = Request::get("https://a.test/api/v1?x=1&y=%20z")
            .header("host", "a.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let req = if h2 {
            req
        } else {
            let (mut p, b) = req.into_parts();
            p.uri = "/api/v1?x=1&y=%20z".parse().unwrap();
            Request::from_parts(p, b)
        };
        let r = https_request(&s.pki, s.proxy.https, "a.test", h2, req)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), "a-api");
        assert_eq!(
            r.version(),
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        let seen = aa.last();
        assert_eq!(seen.version, http::Version::HTTP_11);
        assert_eq!(
            seen.uri.to_string(),
            "/api/v1?x=1&y=%20z",
            "raw query string kept"
        );
        assert_eq!(seen.headers["host"], "a.test");
    }
}

/// HTTP/2 writes are held to the end of the connection task's poll and
/// sent together (`connection::Cork`): many streams answered at once must
/// each get their whole response, and a lone request afterwards must not
/// wait for company.
#[tokio::test]
async fn many_concurrent_h2_streams_on_one_connection_all_complete() {
    let (ar, aa, b) = three().await;
    let s = setup(&ar, &aa, &b, "").await;
    let send = h2_connect(&s.pki, s.proxy.https, "a.test").await;
    let mut streams = Vec::new();
    for i in 0..200 {
        let mut send = send.clone();
        let (path, want) = if i % 2 == 0 {
            ("/", "a-root")
        } else {
            ("/api/x", "a-api")
        };
        let req = Request::get(format!("https://a.test{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        streams.push(async move {
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200, "stream {i}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, want, "stream {i}");
        });
    }
    tokio::time::timeout(WAIT, futures_util::future::join_all(streams))
        .await
        .expect("200 streams answered");
    assert_eq!(ar.count() + aa.count(), 200);
    // Then one request alone on the now quiet connection.
    let mut send = send;
    let req = Request::get("https://a.test/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("a lone request is answered")
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "a-root");
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    use std::sync::atomic::Ordering;
    let (ar, aa, b) = three().await;
    let s = setup(&ar, &aa, &b, "").await;
    // One client connection, requests one after another: one upstream
    // connection carries them all.
    let tls = tls_connect(&s.pki, s.proxy.https, "a.test", &[b"http/1.1"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..40 {
        send.ready().await.unwrap();
        let resp = send.send_request(get("a.test", "/")).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "a-root");
    }
    assert_eq!(ar.count(), 40);
    assert_eq!(
        ar.accepted.load(Ordering::Relaxed),
        1,
        "one upstream connection"
    );
    // Eight clients at once, several requests each: at most eight more.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (pki, addr) = (&s.pki, s.proxy.https);
        clients.push(async move {
            for _ in 0..5 {
                let r = https_request(pki, addr, "a.test", false, get("a.test", "/api/x"))
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        });
    }
    futures_util::future::join_all(clients).await;
    assert_eq!(aa.count(), 40);
    let opened = aa.accepted.load(Ordering::Relaxed);
    assert!(
        (1..=8).contains(&opened),
        "{opened} upstream connections for 8 clients"
    );
}

#[tokio::test]
async fn routing_longest_prefix_and_404s() {
    let (ar, aa, b) = three().await;
    let s = setup(&ar, &aa, &b, "").await;
    let cases = [
        ("a.test", "/", 200, Some("a-root")),
        ("A.TEST:8443", "/api/x", 200, Some("a-api")),
        ("a.test", "/api", 200, Some("a-root")),
        ("www.a.test", "/api/", 200, Some("a-api")),
        ("b.test", "/only/", 200, Some("b")),
        ("b.test", "/", 404, None),
        ("unknown.test", "/", 404, None),
    ];
    for (host, path, status, body) in cases {
        let r = plain_request(s.proxy.http, get(host, path)).await.unwrap();
        assert_eq!(r.status(), status, "{host}{path}");
        if let Some(b) = body {
            assert_eq!(r.body(), b, "{host}{path}");
        }
    }
    let m = s.proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            &[
                "switchyard_requests_total",
                "site=\"a\"",
                "route=\"api\"",
                "status=\"200\"",
                "method=\"GET\""
            ]
        ),
        2.0
    );
    assert_eq!(
        metric_value(&m, &["switchyard_requests_total", "status=\"404\""]),
        2.0
    );
    assert!(m.contains("switchyard_request_duration_seconds_bucket{site=\"a\",route=\"root\""));
}

#[tokio::test]
async fn forwarded_headers_and_hop_by_hop_removal() {
    let (ar, aa, b) = three().await;
    let s = setup(&ar, &aa, &b, "").await;
    let req = Request::get("/")
        .header("host", "a.test")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9v")
        .header("te", "gzip")
        .header("cookie", "a=1")
        .header("x-app", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = https_request(&s.pki, s.proxy.https, "a.test", false, req)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = header_map(&ar.last().headers);
    // The client is not a trusted proxy: what it says of itself is dropped.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "a.test");
    assert_eq!(h["x-forwarded-port"], s.proxy.https.port().to_string());
    assert_eq!(h["host"], "a.test");
    assert_eq!(h["cookie"], "a=1");
    assert_eq!(h["x-app"], "kept");
    for gone in ["x-private", "keep-alive", "proxy-authorization", "te"] {
        assert!(!h.contains_key(gone), "{gone} was forwarded");
    }
    // Over plain HTTP the proto says so.
    plain_request(s.proxy.http, get("a.test", "/"))
        .await
        .unwrap();
    assert_eq!(ar.last().headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn response_semantics_pass_through() {
    let backend = Backend::with(|seen| async move {
        let mut r = Response::builder();
        let path = seen.uri.path().to_string();
        r = match path.as_str() {
            "/cookies" => r
                .header("set-cookie", "a=1; Path=/")
                .header("set-cookie", "b=2; Path=/")
                .header("connection", "x-hop")
                .header("x-hop", "1"),
            "/nocontent" => r.status(204),
            "/notmodified" => r.status(304).header("etag", "\"v1\""),
            // A HEAD answer announces the length a GET would have.
            _ if seen.method == http::Method::HEAD => r.header("content-length", "5"),
            _ => r,
        };
        let body = if seen.method == http::Method::HEAD
            || path == "/nocontent"
            || path == "/notmodified"
        {
            Bytes::new()
        } else {
            Bytes::from_static(b"hello")
        };
        r.body(Full::new(body)).unwrap()
    })
    .await;
    let (aa, b) = (Backend::named("x").await, Backend::named("y").await);
    let s = setup(&backend, &aa, &b, "").await;
    for h2 in [false, true] {
        let r = https_request(
            &s.pki,
            s.proxy.https,
            "a.test",
            h2,
            get("a.test", "/cookies"),
        )
        .await
        .unwrap();
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
        assert!(!r.headers().contains_key("x-hop"));
        let r = https_request(
            &s.pki,
            s.proxy.https,
            "a.test",
            h2,
            get("a.test", "/nocontent"),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 204);
        assert!(r.body().is_empty());
        let r = https_request(
            &s.pki,
            s.proxy.https,
            "a.test",
            h2,
            get("a.test", "/notmodified"),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()["etag"], "\"v1\"");
        let head = Request::head("/x")
            .header("host", "a.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = https_request(&s.pki, s.proxy.https, "a.test", h2, head)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.body().is_empty());
        assert_eq!(r.headers()["content-length"], "5");
    }
}

#[tokio::test]
async fn expect_100_continue_gets_the_body_through() {
    let (ar, aa, b) = three().await;
    let s = setup(&ar, &aa, &b, "").await;
    let mut tcp = tokio::net::TcpStream::connect(s.proxy.http).await.unwrap();
    tcp.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    tcp.write_all(b"hello").await.unwrap();
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(ar.last().body, "hello");
}

#[tokio::test]
async fn redirect_https_answers_308_on_plain_http_only() {
    let (ar, aa, b) = three().await;
    let s = setup(&ar, &aa, &b, "").await;
    let r = plain_request(s.proxy.http, get("r.test", "/p?q=1"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers()["location"],
        format!("https://r.test:{}/p?q=1", s.proxy.https.port()).as_str()
    );
    let r = https_request(&s.pki, s.proxy.https, "r.test", false, get("r.test", "/p"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn unreachable_server_is_502_and_slow_server_is_504() {
    // A port with nothing listening.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let slow = Backend::with(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(Full::new(Bytes::from("late")))
    })
    .await;
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let site = format!(
        "hosts = [\"a.test\"]\n{}\n[pools.dead]\nservers = [\"{closed}\"]\n[pools.slow]\nservers = [\"{}\"]\n[[routes]]\npath = \"/dead\"\npool = \"dead\"\n[[routes]]\npath = \"/slow\"\npool = \"slow\"\n",
        tls_toml(&crt, &key),
        slow.addr
    );
    let cfg = ConfigDir::new(
        &main_toml("[timeouts]\nupstream_response = \"300ms\"\nupstream_connect = \"1s\""),
        &[("a", site)],
    );
    let proxy = Proxy::start(cfg.load()).await;
    let r = https_request(&pki, proxy.https, "a.test", false, get("a.test", "/dead"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let r = https_request(&pki, proxy.https, "a.test", true, get("a.test", "/slow"))
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(&m, &["switchyard_requests_total", "status=\"502\""]),
        1.0
    );
    assert_eq!(
        metric_value(&m, &["switchyard_requests_total", "status=\"504\""]),
        1.0
    );
}

/// A backend that streams a large response in chunks and reads uploads
/// chunk by chunk, reporting the first upload chunk as soon as it arrives.
async fn streaming_backend(
    first_chunk_seen: tokio::sync::mpsc::Sender<()>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tx = first_chunk_seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        if req.method() == http::Method::POST {
                            let mut body = req.into_body();
                            let mut total = 0usize;
                            let mut first = true;
                            while let Some(f) = body.frame().await {
                                if let Ok(Ok(d)) = f.map(|f| f.into_data()) {
                                    total += d.len();
                                }
                                if first && total > 0 {
                                    first = false;
                                    let _ = tx.send(()).await;
                                }
                            }
                            let b: http_body_util::combinators::BoxBody<Bytes, std::io::Error> =
                                Full::new(Bytes::from(total.to_string()))
                                    .map_err(|e| match e {})
                                    .boxed();
                            Ok::<_, std::convert::Infallible>(Response::new(b))
                        } else {
                            // 64 MiB in 64 KiB chunks, generated lazily.
                            let chunks = (0..1024).map(|_| {
                                Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; 65536])))
                            });
                            let stream = futures_util::stream::iter(chunks);
                            Ok(Response::new(StreamBody::new(stream).boxed()))
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let (addr, _task) = streaming_backend(tx).await;
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    // Unbuffered: bodies stream through as they come.
    let site = format!(
        "hosts = [\"a.test\"]\n{}\n[pools.web]\nservers = [\"{addr}\"]\nbuffering = false\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
        tls_toml(&crt, &key)
    );
    let cfg = ConfigDir::new(&main_toml(""), &[("a", site)]);
    let proxy = Proxy::start(cfg.load()).await;

    for h2 in [false, true] {
        // Upload: the backend sees the first chunk while the client still
        // holds the rest back, so the proxy cannot be buffering it whole.
        let (btx, brx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
        let body = StreamBody::new(tokio_stream_from(brx));
        let req = Request::post("/upload")
            .header("host", "a.test")
            .body(body)
            .unwrap();
        let pki2 = &pki;
        let send = https_request(pki2, proxy.https, "a.test", h2, req);
        let feed = async {
            btx.send(Ok(Frame::data(Bytes::from(vec![1u8; 65536]))))
                .await
                .unwrap();
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("first chunk reached backend before the rest was sent");
            for _ in 0..255 {
                btx.send(Ok(Frame::data(Bytes::from(vec![1u8; 65536]))))
                    .await
                    .unwrap();
            }
            drop(btx);
        };
        let (resp, ()) = tokio::join!(send, feed);
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body(), (256 * 65536).to_string().as_str());

        // Download: 64 MiB arrives whole.
        let r = https_request(&pki, proxy.https, "a.test", h2, get("a.test", "/big"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().len(), 64 << 20);
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Unpin {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[tokio::test]
async fn admin_endpoints_and_connection_gauge() {
    let (ar, aa, b) = three().await;
    let s = setup(&ar, &aa, &b, "").await;
    let r = plain_request(s.proxy.admin, get("x", "/healthz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = plain_request(s.proxy.admin, get("x", "/readyz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Hold a TLS connection open and see the gauge count it.
    let tls = tls_connect(&s.pki, s.proxy.https, "a.test", &[b"http/1.1"])
        .await
        .unwrap();
    let label = format!("listener=\"https://{}\"", s.proxy.https);
    let mut seen = 0.0;
    for _ in 0..50 {
        seen = s
            .proxy
            .metric(&["switchyard_connections_active", &label])
            .await;
        if seen == 1.0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(seen, 1.0);
    drop(tls);
}

/// A backend that answers with a chunked body and an `x-checksum` trailer,
/// and reports the request trailers it received in a response header.
async fn trailer_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let collected = req.into_body().collect().await;
                        let got = collected
                            .ok()
                            .and_then(|c| c.trailers().and_then(|t| t.get("x-req-sum").cloned()));
                        let frames = vec![
                            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"payload"))),
                            Ok(Frame::trailers({
                                let mut t = http::HeaderMap::new();
                                t.insert("x-checksum", http::HeaderValue::from_static("abc123"));
                                t
                            })),
                        ];
                        let mut resp =
                            Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                        resp.headers_mut()
                            .insert("trailer", http::HeaderValue::from_static("x-checksum"));
                        if let Some(v) = got {
                            resp.headers_mut().insert("x-got-req-sum", v);
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn trailers_pass_through_both_ways() {
    let (addr, _task) = trailer_backend().await;
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let site = format!(
        "hosts = [\"a.test\"]\n{}\n[pools.buffered]\nservers = [\"{addr}\"]\n[pools.streamed]\nservers = [\"{addr}\"]\nbuffering = false\n[[routes]]\npath = \"/b\"\npool = \"buffered\"\n[[routes]]\npath = \"/s\"\npool = \"streamed\"\n",
        tls_toml(&crt, &key)
    );
    let cfg = ConfigDir::new(&main_toml(""), &[("a", site)]);
    let proxy = Proxy::start(cfg.load()).await;
    for path in ["/s", "/b"] {
        // HTTP/2 carries trailers natively; send one on the request too.
        let frames = vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"up"))),
            Ok(Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("x-req-sum", http::HeaderValue::from_static("r1"));
                t
            })),
        ];
        let req = Request::post(format!("https://a.test{path}"))
            .header("te", "trailers")
            .header("trailer", "x-req-sum")
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let mut send = h2_connect(&pki, proxy.https, "a.test").await;
        let resp = tokio::time::timeout(WAIT, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            resp.headers()
                .get("x-got-req-sum")
                .map(|v| v.to_str().unwrap()),
            Some("r1"),
            "{path}: request trailer"
        );
        let body = tokio::time::timeout(WAIT, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            body.trailers()
                .and_then(|t| t.get("x-checksum"))
                .map(|v| v.to_str().unwrap()),
            Some("abc123"),
            "{path}: response trailer"
        );
        assert_eq!(body.to_bytes(), "payload");
    }
}

#[tokio::test]
async fn a_server_that_stalls_mid_body_is_cut_off_and_frees_its_slot() {
    // Sends a head and one chunk, then goes silent with the socket open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hold_tx, _hold_rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut hold = hold_tx.subscribe();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
                let _ = hold.changed().await;
            });
        }
    });
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let site = format!(
        "hosts = [\"a.test\"]\n{}\n[pools.buffered]\nservers = [\"{addr}\"]\nmax_in_flight = 1\n[pools.streamed]\nservers = [\"{addr}\"]\nmax_in_flight = 1\nbuffering = false\n[[routes]]\npath = \"/b\"\npool = \"buffered\"\n[[routes]]\npath = \"/s\"\npool = \"streamed\"\n",
        tls_toml(&crt, &key)
    );
    let cfg = ConfigDir::new(
        &main_toml("[timeouts]\nupstream_response = \"300ms\""),
        &[("a", site)],
    );
    let proxy = Proxy::start(cfg.load()).await;
    for path in ["/b", "/s"] {
        let r = tokio::time::timeout(
            WAIT,
            https_request(&pki, proxy.https, "a.test", false, get("a.test", path)),
        )
        .await
        .expect("the stalled response ended within the bound");
        // The head was 200, so the only honest ending is a visibly truncated body.
        assert!(
            r.is_err(),
            "{path}: a stalled body must not look complete: {r:?}"
        );
    }
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(&m, &["switchyard_upstream_in_flight"]),
        0.0,
        "slots freed"
    );
}
