//! Who the client is: forwarded headers from untrusted and trusted clients on
//! every request path (HTTP/1.1, HTTP/2, both WebSocket handshakes), the
//! PROXY protocol (v1 and v2, split and byte by byte, refused when missing,
//! malformed, truncated, slow, oversized or from an untrusted peer), one
//! Host, and the access log's client fields. Real sockets throughout; raw
//! TCP where a client library would not send the bytes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

fn access_lines_with(needle: &str) -> Vec<String> {
    // The text format quotes string values; compare without the quotes.
    log_lines()
        .into_iter()
        .map(|l| l.replace('"', ""))
        .filter(|l| l.contains("switchyard::access") && l.contains(needle))
        .collect()
}

// --- setup -------------------------------------------------------------------

struct Setup {
    pki: Pki,
    _cfg: ConfigDir,
    proxy: Proxy,
    web: Backend,
    live: Backend,
}

/// Site `a.test`: `/ws/` to `live` (which refuses every handshake with 403,
/// after recording it), the rest to `web`. `listen` goes into [listen].
async fn setup(listen: &str, timeouts: &str) -> Setup {
    capture_logs();
    let web = Backend::named("web").await;
    let live = Backend::with(|_| async {
        let mut r = http::Response::new(Full::new(Bytes::from_static(b"no\n")));
        *r.status_mut() = StatusCode::FORBIDDEN;
        r
    })
    .await;
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let site = format!(
        r#"hosts = ["a.test"]
{}
[pools.web]
servers = ["{}"]
[pools.live]
servers = ["{}"]
[[routes]]
name = "ws"
path = "/ws/"
websocket = "live"
[[routes]]
name = "app"
path = "/"
pool = "web"
"#,
        tls_toml(&crt, &key),
        web.addr,
        live.addr
    );
    let main = format!(
        "[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n{listen}\n{timeouts}\n"
    );
    let cfg = ConfigDir::new(&main, &[("a", site)]);
    let proxy = Proxy::start(cfg.load()).await;
    Setup {
        pki,
        _cfg: cfg,
        proxy,
        web,
        live,
    }
}

/// What every spoofing request claims about itself.
const SPOOF: [(&str, &str); 6] = [
    ("x-forwarded-for", "203.0.113.9"),
    ("x-real-ip", "203.0.113.9"),
    ("x-forwarded-proto", "gopher"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-port", "1"),
    ("forwarded", "for=203.0.113.9;proto=https"),
];

fn spoofing(mut b: http::request::Builder) -> http::request::Builder {
    for (k, v) in SPOOF {
        b = b.header(k, v);
    }
    b
}

/// The forwarded headers a backend saw, one string each (values joined).
fn forwarded_of(seen: &Seen) -> [String; 6] {
    let h = header_map(&seen.headers);
    let get = |k: &str| h.get(k).cloned().unwrap_or_else(|| "<none>".into());
    [
        get("x-forwarded-for"),
        get("x-real-ip"),
        get("x-forwarded-proto"),
        get("x-forwarded-host"),
        get("x-forwarded-port"),
        get("forwarded"),
    ]
}

fn expect_untrusted(what: &str, seen: &Seen, client: &str, proto: &str, host: &str, port: u16) {
    assert_eq!(
        forwarded_of(seen),
        [
            client.to_string(),
            client.to_string(),
            proto.to_string(),
            host.to_string(),
            port.to_string(),
            "<none>".to_string(),
        ],
        "{what}: forwarded headers seen by the backend"
    );
}

async fn h2_sender(s: &Setup) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tls = tls_connect(&s.pki, s.proxy.https, "a.test", &[b"h2"])
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

/// Sends an HTTP/2 extended CONNECT for a WebSocket (RFC 8441); returns the status.
async fn h2_websocket(s: &Setup, spoof: bool) -> StatusCode {
    let mut send = h2_sender(s).await;
    // The server's SETTINGS (enabling extended CONNECT) arrive with the
    // first response; a plain GET first makes sure they have.
    let probe = Request::get("https://a.test/").body(Empty::new()).unwrap();
    let r = tokio::time::timeout(WAIT, send.send_request(probe))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut b = Request::builder()
        .method(Method::CONNECT)
        .uri("https://a.test/ws/chat")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13");
    if spoof {
        b = spoofing(b);
    }
    let resp = tokio::time::timeout(WAIT, send.send_request(b.body(Empty::new()).unwrap()))
        .await
        .unwrap()
        .unwrap();
    resp.status()
}

fn h1_upgrade(spoof: bool) -> Request<Full<Bytes>> {
    let mut b = Request::get("/ws/chat")
        .header("host", "a.test")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if spoof {
        b = spoofing(b);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn spoofed_get(path: &str) -> Request<Full<Bytes>> {
    spoofing(Request::get(path).header("host", "a.test"))
        .header("user-agent", "spoof-test/1.0 (probe)")
        .header("referer", "https://a.test/from")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

// --- untrusted clients ---------------------------------------------------------

#[tokio::test]
async fn an_untrusted_client_cannot_spoof_its_address_on_any_path() {
    let s = setup("", "").await;
    let https_port = s.proxy.https.port();

    // HTTP/1.1 over TLS.
    let r = https_request(&s.pki, s.proxy.https, "a.test", false, spoofed_get("/h1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    expect_untrusted(
        "h1",
        &s.web.last(),
        "127.0.0.1",
        "https",
        "a.test",
        https_port,
    );

    // HTTP/2.
    let mut req = spoofed_get("https://a.test/h2");
    req.headers_mut().remove("host");
    let r = https_request(&s.pki, s.proxy.https, "a.test", true, req)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    expect_untrusted(
        "h2",
        &s.web.last(),
        "127.0.0.1",
        "https",
        "a.test",
        https_port,
    );

    // Plain HTTP.
    let r = plain_request(s.proxy.http, spoofed_get("/plain"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    expect_untrusted(
        "plain",
        &s.web.last(),
        "127.0.0.1",
        "http",
        "a.test",
        s.proxy.http.port(),
    );

    // WebSocket handshake over HTTP/1.1 (Upgrade).
    let r = https_request(&s.pki, s.proxy.https, "a.test", false, h1_upgrade(true))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    expect_untrusted(
        "ws h1",
        &s.live.last(),
        "127.0.0.1",
        "https",
        "a.test",
        https_port,
    );

    // WebSocket handshake over HTTP/2 (RFC 8441).
    assert_eq!(h2_websocket(&s, true).await, StatusCode::FORBIDDEN);
    expect_untrusted(
        "ws h2",
        &s.live.last(),
        "127.0.0.1",
        "https",
        "a.test",
        https_port,
    );
    assert_eq!(s.live.count(), 2);

    // The access log names the real client and what it sent about itself.
    let lines = access_lines_with("path=/h1");
    let line = lines.last().expect("an access line for /h1");
    for field in [
        "client=127.0.0.1",
        "method=GET",
        "status=200",
        "bytes_sent=3",
        "bytes_received=0",
        "user_agent=spoof-test/1.0 (probe)",
        "referer=https://a.test/from",
        "upstream=",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(!line.contains("203.0.113.9"), "{line}");
    assert!(!line.contains("peer="), "the peer is the client: {line}");
}

// --- trusted proxies -----------------------------------------------------------

#[tokio::test]
async fn a_chain_through_trusted_hops_names_the_rightmost_untrusted_address() {
    // The test client (127.0.0.1) plays a trusted load balancer, and
    // 10.0.0.0/8 holds further trusted hops.
    let s = setup("trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]", "").await;
    let chain = |b: http::request::Builder| {
        b.header("x-forwarded-for", "198.51.100.1, 203.0.113.9")
            .header("x-forwarded-for", "10.1.2.3")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "www.a.example")
            .header("x-forwarded-port", "443")
    };
    let want = [
        "198.51.100.1, 203.0.113.9, 10.1.2.3, 127.0.0.1".to_string(),
        "203.0.113.9".to_string(),
        "https".to_string(),
        "www.a.example".to_string(),
        "443".to_string(),
        "<none>".to_string(),
    ];

    // Plain HTTP from the "load balancer": its proto/host/port are kept.
    let req = chain(Request::get("/chain").header("host", "a.test"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = plain_request(s.proxy.http, req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(forwarded_of(&s.web.last()), want, "plain");

    // HTTP/2.
    let mut send = h2_sender(&s).await;
    let req = chain(Request::get("https://a.test/chain2"))
        .body(Empty::new())
        .unwrap();
    let r = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(forwarded_of(&s.web.last()), want, "h2");

    // A WebSocket handshake.
    let req = chain(
        Request::get("/ws/chat")
            .header("host", "a.test")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    )
    .body(Full::new(Bytes::new()))
    .unwrap();
    let r = plain_request(s.proxy.http, req).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(forwarded_of(&s.live.last()), want, "ws");

    // Without headers of its own, the trusted hop is the client, and the
    // rest comes from the connection.
    let r = plain_request(s.proxy.http, get("a.test", "/bare"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    expect_untrusted(
        "bare trusted hop",
        &s.web.last(),
        "127.0.0.1",
        "http",
        "a.test",
        s.proxy.http.port(),
    );

    // The access log shows the real client, and the hop it came through.
    let line = access_lines_with("path=/chain ")
        .pop()
        .expect("access line");
    assert!(line.contains("client=203.0.113.9"), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}

// --- PROXY protocol ------------------------------------------------------------

fn v2_header(source: SocketAddr, destination: SocketAddr, tlv: bool) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    let mut body = Vec::new();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("mixed families"),
    }
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    if tlv {
        // A unique-id TLV and an AWS VPC endpoint TLV: skipped.
        body.extend_from_slice(&[0x05, 0, 4, b'a', b'b', b'c', b'd']);
        body.extend_from_slice(&[0xea, 0, 5, 1, b'v', b'p', b'c', b'e']);
    }
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

fn plain_get(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nhost: a.test\r\nx-forwarded-for: 203.0.113.9\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Reads until the peer closes (bounded); returns what arrived.
async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection in time");
    out
}

/// Writes `bytes` in the given pieces (each flushed on its own, Nagle off).
async fn write_pieces<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8], cuts: &[usize]) {
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        s.write_all(&bytes[at..cut]).await.unwrap();
        s.flush().await.unwrap();
        at = cut;
    }
}

async fn rejected(s: &Setup, listener: SocketAddr, scheme: &str, reason: &str) -> f64 {
    s.proxy
        .metric(&[
            "switchyard_connections_rejected_total",
            &format!("listener=\"{scheme}://{listener}\""),
            &format!("reason=\"{reason}\""),
        ])
        .await
}

const PROXY_ON: &str = "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]";

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client_on_http_however_the_header_arrives() {
    let s = setup(PROXY_ON, "").await;
    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 8080\r\n".to_vec();
    let v1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 8080\r\n".to_vec();
    let v2 = v2_header(
        "192.0.2.8:40000".parse().unwrap(),
        "198.51.100.1:8081".parse().unwrap(),
        true,
    );
    let v2_6 = v2_header(
        "[2001:db8::8]:40000".parse().unwrap(),
        "[2001:db8::1]:8082".parse().unwrap(),
        false,
    );
    let cases: [(&str, &[u8], &str, u16); 4] = [
        ("v1 TCP4", &v1, "192.0.2.7", 8080),
        ("v1 TCP6", &v1_6, "2001:db8::7", 8080),
        ("v2 TCP4 + TLVs", &v2, "192.0.2.8", 8081),
        ("v2 TCP6", &v2_6, "2001:db8::8", 8082),
    ];
    for (name, header, client, port) in cases {
        let bytes = [header, &plain_get("/pp")].concat();
        // In one write; split inside the header; header and request apart;
        // and byte by byte through the header.
        let mut splits: Vec<Vec<usize>> =
            vec![vec![], vec![5], vec![header.len() - 1], vec![header.len()]];
        splits.push((1..=header.len()).collect());
        for cuts in splits {
            let before = s.web.count();
            let mut tcp = TcpStream::connect(s.proxy.http).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            write_pieces(&mut tcp, &bytes, &cuts).await;
            let out = read_to_close(&mut tcp).await;
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 200"), "{name} {cuts:?}: {text}");
            assert_eq!(s.web.count(), before + 1);
            // The PROXY client is not a trusted proxy: its own header is dropped.
            expect_untrusted(name, &s.web.last(), client, "http", "a.test", port);
        }
    }
    // v2 LOCAL (the balancer's own health check): the TCP peer is the
    // client, and it is trusted, so nothing is replaced but added to.
    let mut tcp = TcpStream::connect(s.proxy.http).await.unwrap();
    tcp.write_all(&[V2_LOCAL, &plain_get("/local")].concat())
        .await
        .unwrap();
    let out = read_to_close(&mut tcp).await;
    assert!(out.starts_with(b"HTTP/1.1 200"));
    let h = header_map(&s.web.last().headers);
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(
        rejected(&s, s.proxy.http, "http", "proxy_protocol").await,
        0.0
    );

    // The access log names the PROXY client and the TCP peer it came through.
    let line = access_lines_with("path=/pp").pop().expect("access line");
    assert!(line.contains("client=2001:db8::8"), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}

#[tokio::test]
async fn proxy_protocol_comes_before_tls_on_https_and_serves_h1_h2_and_websockets() {
    let s = setup(PROXY_ON, "").await;
    let header = v2_header(
        "192.0.2.9:1234".parse().unwrap(),
        "203.0.113.1:443".parse().unwrap(),
        false,
    );
    let connect = |alpn: &'static [&'static [u8]]| {
        let header = header.clone();
        let addr = s.proxy.https;
        let config = s.pki.client_config(alpn);
        async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&header).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .unwrap()
        }
    };
    // HTTP/1.1, with a WebSocket handshake on the same connection after it.
    let tls = connect(&[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let r = send.send_request(spoofed_get("/tls1")).await.unwrap();
    assert_eq!(r.status(), 200);
    expect_untrusted(
        "https h1",
        &s.web.last(),
        "192.0.2.9",
        "https",
        "a.test",
        443,
    );
    let r = send.send_request(h1_upgrade(true)).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    expect_untrusted(
        "https ws",
        &s.live.last(),
        "192.0.2.9",
        "https",
        "a.test",
        443,
    );

    // HTTP/2.
    let tls = connect(&[b"h2"]).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = spoofed_get("https://a.test/tls2");
    req.headers_mut().remove("host");
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    expect_untrusted(
        "https h2",
        &s.web.last(),
        "192.0.2.9",
        "https",
        "a.test",
        443,
    );
    assert_eq!(
        s.proxy
            .metric(&["switchyard_tls_handshake_failures_total"])
            .await,
        0.0
    );
}

#[tokio::test]
async fn bad_proxy_headers_close_the_connection_and_are_counted() {
    let s = setup(PROXY_ON, "[timeouts]\nheader = \"300ms\"").await;
    let mut big = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
    big.extend_from_slice(&[0u8; 64]);
    let cases: [(&str, Vec<u8>, bool); 6] = [
        ("missing (a plain request)", plain_get("/x"), false),
        (
            "malformed v1",
            b"PROXY TCP4 192.0.2.300 198.51.100.1 1 2\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
            false,
        ),
        (
            "v1 without CR",
            b"PROXY TCP4 192.0.2.3 198.51.100.1 1 2\nGET / HTTP/1.1\r\n\r\n".to_vec(),
            false,
        ),
        ("oversized v2", big, false),
        (
            "truncated, then closed",
            b"PROXY TCP4 192.0.2.3 19".to_vec(),
            true,
        ),
        (
            "a TLS ClientHello on plain http",
            b"\x16\x03\x01\x00\xa5\x01".to_vec(),
            false,
        ),
    ];
    let mut want = 0.0;
    for (name, bytes, close_after) in cases {
        let mut tcp = TcpStream::connect(s.proxy.http).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        if close_after {
            tcp.shutdown().await.unwrap();
        }
        let out = read_to_close(&mut tcp).await;
        assert!(out.is_empty(), "{name}: nothing is answered, got {out:?}");
        want += 1.0;
        assert_eq!(
            rejected(&s, s.proxy.http, "http", "proxy_protocol").await,
            want,
            "{name}"
        );
    }
    // Slow: half a header, then nothing; closed after timeouts.header.
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(s.proxy.http).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.3 ").await.unwrap();
    let out = read_to_close(&mut tcp).await;
    assert!(out.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the header timeout: {:?}",
        started.elapsed()
    );
    want += 1.0;
    assert_eq!(
        rejected(&s, s.proxy.http, "http", "proxy_protocol").await,
        want
    );
    // On https too: a client that skips the balancer and starts TLS.
    let r = tls_connect(&s.pki, s.proxy.https, "a.test", &[b"http/1.1"]).await;
    assert!(r.is_err(), "TLS without a PROXY header must fail");
    assert_eq!(
        rejected(&s, s.proxy.https, "https", "proxy_protocol").await,
        1.0
    );
    assert_eq!(s.web.count(), 0, "nothing reached the pool");
}

#[tokio::test]
async fn a_proxy_header_from_outside_trusted_proxies_is_refused() {
    let s = setup(
        "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]",
        "",
    )
    .await;
    let mut tcp = TcpStream::connect(s.proxy.http).await.unwrap();
    let bytes = [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 8080\r\n".as_slice(),
        &plain_get("/"),
    ]
    .concat();
    // The proxy may close before reading it all; a failed write is fine.
    let _ = tcp.write_all(&bytes).await;
    let out = read_to_close(&mut tcp).await;
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        rejected(&s, s.proxy.http, "http", "untrusted_proxy").await,
        1.0
    );
    assert_eq!(s.web.count(), 0);
}

// --- one Host ------------------------------------------------------------------

#[tokio::test]
async fn two_host_headers_are_refused_and_close_the_connection() {
    let s = setup("", "").await;
    capture_logs();
    let mut tcp = TcpStream::connect(s.proxy.http).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\nGET /next HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await
    .unwrap();
    let out = read_to_close(&mut tcp).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("more than one Host"), "{text}");
    let line = access_lines_with("status=400").pop().expect("access line");
    assert!(line.contains("fault=client"), "who caused it: {line}");
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "the pipelined request after it is not served: {text}"
    );
    assert_eq!(s.web.count(), 0, "nothing forwarded");

    // The same host twice is refused too (RFC 9112 §3.2: exactly one).
    let mut tcp = TcpStream::connect(s.proxy.http).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut tcp).await;
    assert!(out.starts_with(b"HTTP/1.1 400"));
    assert_eq!(s.web.count(), 0);
}

#[tokio::test]
async fn an_http2_host_that_differs_from_authority_is_refused() {
    let s = setup("", "").await;
    let mut send = h2_sender(&s).await;
    let req = Request::get("https://a.test/")
        .header("host", "b.test")
        .body(Empty::new())
        .unwrap();
    let r = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.web.count(), 0, "nothing forwarded");
    // The same host (any case, with the default port) is fine, and the
    // connection still serves.
    let req = Request::get("https://a.test/")
        .header("host", "A.test")
        .body(Empty::new())
        .unwrap();
    let r = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.web.count(), 1);
}
