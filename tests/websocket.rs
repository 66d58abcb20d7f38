//! WebSocket proxying over real sockets: the HTTP/1.1 upgrade handshake and
//! HTTP/2 extended CONNECT (RFC 8441), messages of every size class,
//! fragmentation, close codes, protocol violations, extensions' RSV bits,
//! per-route limits (idle timeout, pings, message size), a vanishing
//! backend, metrics, and load: many concurrent sessions and many sequential
//! ones without leaking sessions or file descriptors.
//!
//! Every wait is bounded; nothing synchronises on a sleep (the only sleeps
//! are the short pauses of bounded polling loops on metrics and on the
//! process's file descriptor count).

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HsRequest, Response as HsResponse,
};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Bound on waits that move a lot of data or many sessions.
const LONG: Duration = Duration::from_secs(120);

/// Tests that count the process's file descriptors (or load it heavily)
/// take this exclusively; every other test takes it shared, so nothing else
/// in this test binary opens sockets while they measure.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Awaits `f` for at most `limit`, panicking with `what` on timeout.
async fn within<F: Future>(what: &str, limit: Duration, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

// ---------------------------------------------------------------------------
// The echo backend
// ---------------------------------------------------------------------------

/// What the echo backend saw on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    /// A text message (up to 256 bytes; longer ones are `Long`).
    Text(String),
    /// A data message too long to keep, by length.
    Long(usize),
    Binary(usize),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame and its code.
    Close(Option<u16>),
    /// The connection ended.
    Ended,
}

/// The handshake request the backend received.
#[derive(Debug, Clone)]
struct Handshake {
    method: Method,
    /// The request target exactly as it came on the request line.
    target: String,
    headers: http::HeaderMap,
}

/// An async WebSocket backend (tokio-tungstenite) that echoes data messages
/// and records handshakes and events. Text commands:
/// `close:CODE` closes with CODE; `send:N` sends a binary message of N
/// bytes; `frag` sends "frag" + "ment" as two fragments with a ping between.
struct WsBackend {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    events: watch::Sender<Vec<(usize, Ev)>>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.vanish();
    }
}

impl WsBackend {
    async fn start() -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let (events, _) = watch::channel(Vec::new());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (hs, ev, cs) = (handshakes.clone(), events.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            let mut next = 0;
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let id = next;
                next += 1;
                let task = tokio::spawn(serve_ws(id, tcp, hs.clone(), ev.clone()));
                cs.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        WsBackend {
            addr,
            handshakes,
            events,
            conns,
            accept,
        }
    }

    /// Stops accepting and drops every connection at once, as a crashed
    /// backend would.
    fn vanish(&self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().iter() {
            c.abort();
        }
    }

    fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }

    fn last_handshake(&self) -> Handshake {
        self.handshakes()
            .last()
            .cloned()
            .expect("the backend saw a handshake")
    }

    /// Events of one connection.
    fn events_of(&self, conn: usize) -> Vec<Ev> {
        self.events
            .borrow()
            .iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Waits until some connection has seen `ev`; returns that connection.
    async fn wait_for(&self, ev: Ev) -> usize {
        let mut rx = self.events.subscribe();
        let found = within(
            &format!("backend event {ev:?}"),
            WAIT,
            rx.wait_for(|v| v.iter().any(|(_, e)| *e == ev)),
        )
        .await
        .unwrap();
        found.iter().find(|(_, e)| *e == ev).unwrap().0
    }

    /// Waits until connection `conn` has seen `ev`.
    async fn wait_for_on(&self, conn: usize, ev: Ev) {
        let mut rx = self.events.subscribe();
        within(
            &format!("backend event {ev:?} on connection {conn}"),
            WAIT,
            rx.wait_for(|v| v.iter().any(|(c, e)| *c == conn && *e == ev)),
        )
        .await
        .unwrap();
    }

    /// Waits until `n` connections have ended.
    async fn wait_ended(&self, n: usize, limit: Duration) {
        let mut rx = self.events.subscribe();
        within(
            &format!("{n} backend connections to end"),
            limit,
            rx.wait_for(|v| v.iter().filter(|(_, e)| *e == Ev::Ended).count() >= n),
        )
        .await
        .unwrap();
    }
}

async fn serve_ws(
    id: usize,
    tcp: TcpStream,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    events: watch::Sender<Vec<(usize, Ev)>>,
) {
    let push = |ev: Ev| events.send_modify(|v| v.push((id, ev)));
    let _ = tcp.set_nodelay(true);
    #[allow(clippy::result_large_err)] // the signature tungstenite asks for
    let callback = |req: &HsRequest, mut resp: HsResponse| -> Result<HsResponse, ErrorResponse> {
        handshakes.lock().unwrap().push(Handshake {
            method: req.method().clone(),
            target: req.uri().to_string(),
            headers: req.headers().clone(),
        });
        // Choose the first subprotocol offered.
        let first = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|p| p.trim().to_string());
        if let Some(p) = first {
            resp.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        Ok(resp)
    };
    let mut ws =
        match tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(ws_config()))
            .await
        {
            Ok(ws) => ws,
            Err(_) => {
                push(Ev::Ended);
                return;
            }
        };
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { break };
        let sent = match msg {
            Message::Text(t) => {
                push(if t.len() <= 256 {
                    Ev::Text(t.to_string())
                } else {
                    Ev::Long(t.len())
                });
                if let Some(code) = t.strip_prefix("close:") {
                    let frame = CloseFrame {
                        code: CloseCode::from(code.parse::<u16>().unwrap()),
                        reason: "bye".into(),
                    };
                    ws.close(Some(frame)).await
                } else if let Some(n) = t.strip_prefix("send:") {
                    let n: usize = n.parse().unwrap();
                    ws.send(Message::Binary(vec![7u8; n].into())).await
                } else if t.as_str() == "frag" {
                    let first = Frame::message(
                        Bytes::from_static(b"frag"),
                        OpCode::Data(Data::Text),
                        false,
                    );
                    let last = Frame::message(
                        Bytes::from_static(b"ment"),
                        OpCode::Data(Data::Continue),
                        true,
                    );
                    async {
                        ws.feed(Message::Frame(first)).await?;
                        ws.feed(Message::Ping(Bytes::from_static(b"mid"))).await?;
                        ws.send(Message::Frame(last)).await
                    }
                    .await
                } else {
                    ws.send(Message::Text(t)).await
                }
            }
            Message::Binary(b) => {
                push(Ev::Binary(b.len()));
                ws.send(Message::Binary(b)).await
            }
            Message::Ping(p) => {
                push(Ev::Ping(p.to_vec()));
                Ok(())
            }
            Message::Pong(p) => {
                push(Ev::Pong(p.to_vec()));
                Ok(())
            }
            Message::Close(c) => {
                push(Ev::Close(c.map(|c| u16::from(c.code))));
                Ok(())
            }
            Message::Frame(_) => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    push(Ev::Ended);
}

// ---------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------

struct Setup {
    pki: Pki,
    /// One client TLS config (ALPN http/1.1) for every connection, so its
    /// session cache lets later connections resume.
    h1_tls: Arc<rustls::ClientConfig>,
    _cfg: ConfigDir,
    proxy: Proxy,
    web: Backend,
}

/// Site `ws` (host `ws.test`): route `sockets` on `/ws/` sends upgrades to
/// pool `live` at `live` (with `route_extra` lines), route `app` on `/`
/// sends plain requests to pool `web` (a recording hyper backend).
async fn setup(live: SocketAddr, route_extra: &str) -> Setup {
    // SWITCHYARD_TEST_LOG=switchyard=debug shows the proxy's logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env(
            "SWITCHYARD_TEST_LOG",
        ))
        .with_test_writer()
        .try_init();
    let web = Backend::named("web").await;
    let pki = Pki::new();
    let (crt, key) = pki.leaf("ws", &["ws.test"]);
    let site = format!(
        r#"hosts = ["ws.test"]
{}
[pools.live]
servers = ["{live}"]
[pools.web]
servers = ["{}"]
[[routes]]
name = "sockets"
path = "/ws/"
websocket = "live"
{route_extra}
[[routes]]
name = "app"
path = "/"
pool = "web"
"#,
        tls_toml(&crt, &key),
        web.addr
    );
    let cfg = ConfigDir::new(&main_toml(""), &[("ws", site)]);
    let proxy = Proxy::start(cfg.load()).await;
    Setup {
        h1_tls: pki.client_config(&[b"http/1.1"]),
        pki,
        _cfg: cfg,
        proxy,
        web,
    }
}

const SITE: &str = "site=\"ws\"";
const ROUTE: &str = "route=\"sockets\"";

impl Setup {
    /// A TLS connection to the proxy's https listener offering http/1.1.
    async fn tls(&self) -> std::io::Result<TlsStream> {
        self.tls_with(self.h1_tls.clone()).await
    }

    /// A TLS connection to the proxy's https listener with this client config.
    async fn tls_with(&self, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream> {
        let tcp = TcpStream::connect(self.proxy.https).await?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from("ws.test").unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }

    async fn active(&self) -> f64 {
        self.proxy
            .metric(&["switchyard_websocket_sessions_active", SITE, ROUTE])
            .await
    }

    /// Waits (polling the metric, bounded) until this many sessions are open.
    async fn wait_active(&self, want: f64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.active().await;
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sessions_active stayed at {now}, expected {want} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;
type Client = WebSocketStream<TlsStream>;

/// A tungstenite client over TLS (ALPN http/1.1) through the proxy.
async fn try_connect(
    s: &Setup,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, http::Response<Option<Vec<u8>>>), WsError> {
    let tls = s.tls().await.map_err(WsError::Io)?;
    let mut req = format!("wss://ws.test{path}").into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::client_async_with_config(req, tls, Some(ws_config())).await
}

/// A tungstenite client handshake for `wss://ws.test{path}` over `io`.
async fn handshake_over<S>(io: S, path: &str) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = format!("wss://ws.test{path}")
        .into_client_request()
        .unwrap();
    within(
        "WebSocket handshake",
        WAIT,
        tokio_tungstenite::client_async_with_config(req, io, Some(ws_config())),
    )
    .await
    .unwrap()
    .0
}

async fn connect(s: &Setup, path: &str) -> Client {
    within("WebSocket handshake", WAIT, try_connect(s, path, &[]))
        .await
        .expect("handshake")
        .0
}

/// The next message, pings and pongs included.
async fn recv_any<S>(ws: &mut WebSocketStream<S>, limit: Duration) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match within("a message", limit, ws.next()).await {
        Some(Ok(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next data or close message (pings and pongs skipped).
async fn recv<S>(ws: &mut WebSocketStream<S>, limit: Duration) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match recv_any(ws, limit).await {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// Reads until a close frame arrives and returns its code (None: no code),
/// then reads on to the end of the stream (errors after the close frame are
/// tolerated: the transport may end without TLS close_notify).
async fn expect_close<S>(ws: &mut WebSocketStream<S>) -> Option<u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = loop {
        match within("a close frame", WAIT, ws.next()).await {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    finish(ws).await;
    code
}

/// Reads to the end of the stream (bounded).
async fn finish<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within("the stream to end", WAIT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Client-initiated close with `code`; returns the code of the reply.
async fn close_with<S>(ws: &mut WebSocketStream<S>, code: u16) -> Option<u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let sent = within(
        "sending close",
        WAIT,
        ws.close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        })),
    )
    .await;
    if let Err(e) = sent {
        // Over HTTP/2 (RFC 8441) the close frame can be on its way while
        // the client's connection task has not yet reported it flushed; the
        // proxy may meanwhile relay it, finish the close handshake and end
        // the stream: END_STREAM, then RST_STREAM(NO_ERROR), which RFC 9113
        // §8.1 says is not an error. Only that is tolerated here, and the
        // reply must still arrive below.
        assert!(
            format!("{e:?}").contains("BodyWrite") && format!("{e:?}").contains("NO_ERROR"),
            "send close: {e:?}"
        );
    }
    expect_close(ws).await
}

fn text_of(n: usize) -> String {
    (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

/// Sends `b` as a binary message and checks its echo, each within `limit`.
async fn echo_binary<S>(ws: &mut WebSocketStream<S>, b: &[u8], what: &str, limit: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within("send", limit, ws.send(Message::binary(b.to_vec())))
        .await
        .unwrap();
    match recv(ws, limit).await {
        Message::Binary(got) => assert_same(what, &got, b),
        other => panic!("{what}: got {other:?}"),
    }
}

fn binary_of(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

// --- raw clients and frames ------------------------------------------------

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Reads an HTTP head byte by byte so nothing after it is consumed.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16384, "head too long");
        let n = s.read(&mut b).await.expect("read head");
        assert_eq!(n, 1, "EOF in head: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8(head).expect("utf-8 head")
}

/// A TLS connection that did the upgrade by hand; returns it and the head.
async fn raw_upgrade(s: &Setup, path: &str, extra: &str) -> (TlsStream, String) {
    let mut tls = within("TLS connect", WAIT, s.tls()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let head = within("101 head", WAIT, read_head(&mut tls)).await;
    (tls, head)
}

/// One frame: (first byte, payload unmasked, whether it was masked).
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>, bool)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await?;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut l = [0u8; 2];
        s.read_exact(&mut l).await?;
        len = u64::from(u16::from_be_bytes(l));
    } else if len == 127 {
        let mut l = [0u8; 8];
        s.read_exact(&mut l).await?;
        len = u64::from_be_bytes(l);
    }
    let masked = h[1] & 0x80 != 0;
    let mut mask = [0u8; 4];
    if masked {
        s.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok((h[0], payload, masked))
}

/// A client frame, masked.
fn masked_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    assert!(payload.len() < 126);
    let mut f = vec![b0, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// Reads frames until a close frame; returns its code. Other frames
/// (such as pings) are skipped.
async fn raw_expect_close<S: AsyncRead + Unpin>(s: &mut S) -> u16 {
    loop {
        let (b0, payload, masked) = within("a close frame", WAIT, read_frame(s))
            .await
            .expect("read frame");
        assert!(!masked, "frames to the client are never masked");
        if b0 & 0x0f == 0x8 {
            assert_eq!(b0, 0x88, "close frame with FIN and no RSV");
            assert!(payload.len() >= 2, "close frame carries a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

// ---------------------------------------------------------------------------
// 1. The HTTP/1.1 handshake
// ---------------------------------------------------------------------------

#[tokio::test]
async fn handshake_passes_headers_and_subprotocol() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;

    let (mut ws, resp) = within(
        "handshake",
        WAIT,
        try_connect(
            &s,
            "/ws/chat?room=7",
            &[
                ("cookie", "sessionid=abc123; csrftoken=xyz"),
                ("origin", "https://ws.test"),
                ("sec-websocket-protocol", "chat.v2, chat.v1"),
                ("x-forwarded-for", "10.9.8.7"),
            ],
        ),
    )
    .await
    .expect("handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let rh = header_map(resp.headers());
    assert_eq!(
        rh.get("sec-websocket-protocol").map(String::as_str),
        Some("chat.v2"),
        "{rh:?}"
    );
    assert!(
        rh.get("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{rh:?}"
    );
    assert!(rh.contains_key("sec-websocket-accept"), "{rh:?}");

    let hs = backend.last_handshake();
    let h = header_map(&hs.headers);
    assert_eq!(hs.method, Method::GET);
    assert_eq!(
        h.get("cookie").map(String::as_str),
        Some("sessionid=abc123; csrftoken=xyz"),
        "{h:?}"
    );
    assert_eq!(
        h.get("origin").map(String::as_str),
        Some("https://ws.test"),
        "{h:?}"
    );
    assert_eq!(
        h.get("sec-websocket-protocol").map(String::as_str),
        Some("chat.v2, chat.v1"),
        "{h:?}"
    );
    assert_eq!(
        h.get("sec-websocket-version").map(String::as_str),
        Some("13"),
        "{h:?}"
    );
    assert!(h.contains_key("sec-websocket-key"), "{h:?}");
    assert!(
        h.get("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{h:?}"
    );
    assert!(
        h.get("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{h:?}"
    );
    // The client is not a trusted proxy: its X-Forwarded-For is replaced.
    assert_eq!(
        h.get("x-forwarded-for").map(String::as_str),
        Some("127.0.0.1"),
        "{h:?}"
    );
    assert_eq!(
        h.get("x-real-ip").map(String::as_str),
        Some("127.0.0.1"),
        "{h:?}"
    );
    assert_eq!(
        h.get("x-forwarded-proto").map(String::as_str),
        Some("https"),
        "{h:?}"
    );
    assert_eq!(
        h.get("x-forwarded-host").map(String::as_str),
        Some("ws.test"),
        "{h:?}"
    );
    // Backends (uvicorn/h11, Node's ws, Channels routing) route on the
    // request target, so it must be origin-form like the client's.
    assert_eq!(
        hs.target, "/ws/chat?room=7",
        "request target sent to the backend"
    );

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(recv(&mut ws, WAIT).await, Message::text("hello"));
    assert_eq!(close_with(&mut ws, 1000).await, Some(1000));
    // The plain pool never saw any of it.
    assert_eq!(s.web.count(), 0);
}

fn upgrade_request(path: &str, key: Option<&str>, version: &str) -> Request<Full<Bytes>> {
    let mut b = Request::get(path)
        .header("host", "ws.test")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", version);
    if let Some(k) = key {
        b = b.header("sec-websocket-key", k);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// A WebSocket client session on the stream of an extended CONNECT's 200.
async fn h2_session(
    resp: &mut http::Response<hyper::body::Incoming>,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let upgraded = within("upgrade", WAIT, hyper::upgrade::on(resp))
        .await
        .unwrap();
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, Some(ws_config())).await
}

/// An HTTP/2 connection to the proxy (ALPN h2) whose SETTINGS allowed
/// extended CONNECT.
async fn h2_client(s: &Setup) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tls = within(
        "TLS connect",
        WAIT,
        tls_connect(&s.pki, s.proxy.https, "ws.test", &[b"h2"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    // The server's SETTINGS come before any response, so once a response
    // arrived they have been applied. A plain GET on the WebSocket-only
    // route is answered by the proxy itself (426), touching no backend.
    let probe = Request::get("https://ws.test/ws/")
        .body(Empty::new())
        .unwrap();
    let mut conn = Box::pin(conn);
    let resp = within("h2 GET", WAIT, async {
        tokio::select! {
            r = send.send_request(probe) => r.unwrap(),
            r = conn.as_mut() => panic!("the connection ended: {r:?}"),
        }
    })
    .await;
    assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
    assert!(
        conn.is_extended_connect_protocol_enabled(),
        "the server's SETTINGS carry SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441 section 3)"
    );
    tokio::spawn(conn);
    send
}

fn h2_connect_request(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://ws.test{path}"))
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat.v2")
        .header("origin", "https://ws.test")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn backend_refusal_is_relayed_as_a_normal_response() {
    let _g = EXCLUSIVE.read().await;
    let refusing = Backend::with(|_| async {
        let mut r = http::Response::new(Full::new(Bytes::from_static(b"denied by auth\n")));
        *r.status_mut() = StatusCode::FORBIDDEN;
        r
    })
    .await;
    let s = setup(refusing.addr, "").await;

    let resp = https_request(
        &s.pki,
        s.proxy.https,
        "ws.test",
        false,
        upgrade_request("/ws/chat", Some(KEY), "13"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(&resp.body()[..], b"denied by auth\n");
    assert_eq!(refusing.count(), 1);
    let seen = refusing.last();
    assert!(
        seen.headers
            .get("upgrade")
            .is_some_and(|v| v == "websocket")
    );

    // tungstenite sees it as a refused handshake with that status.
    match within("handshake", WAIT, try_connect(&s, "/ws/chat", &[])).await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), StatusCode::FORBIDDEN),
        other => panic!("expected an HTTP error, got {:?}", other.map(|x| x.1)),
    }

    // And over HTTP/2 extended CONNECT.
    let mut send = h2_client(&s).await;
    let resp = within(
        "h2 CONNECT",
        WAIT,
        send.send_request(h2_connect_request("/ws/chat")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(refusing.count(), 3);
    assert_eq!(s.active().await, 0.0);
    assert_eq!(s.web.count(), 0);
}

#[tokio::test]
async fn upgrade_on_a_route_without_websocket_is_400() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;

    let resp = https_request(
        &s.pki,
        s.proxy.https,
        "ws.test",
        false,
        upgrade_request("/app", Some(KEY), "13"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = String::from_utf8_lossy(resp.body()).to_lowercase();
    assert!(body.contains("websocket"), "body should say why: {body:?}");

    // Extended CONNECT on the same route.
    let mut send = h2_client(&s).await;
    let resp = within(
        "h2 CONNECT",
        WAIT,
        send.send_request(h2_connect_request("/app")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    assert_eq!(s.web.count(), 0, "the pool must never see the upgrade");
    assert!(backend.handshakes().is_empty());
    // A plain request there still works.
    let resp = https_request(
        &s.pki,
        s.proxy.https,
        "ws.test",
        false,
        get("ws.test", "/app"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(s.web.count(), 1);
}

#[tokio::test]
async fn malformed_upgrades_are_400() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;

    for (what, req) in [
        (
            "no Sec-WebSocket-Key",
            upgrade_request("/ws/chat", None, "13"),
        ),
        ("version 12", upgrade_request("/ws/chat", Some(KEY), "12")),
        (
            "a short key",
            upgrade_request("/ws/chat", Some("c2hvcnQ="), "13"),
        ),
    ] {
        let resp = https_request(&s.pki, s.proxy.https, "ws.test", false, req)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{what}");
    }
    // A POST asking to upgrade.
    let mut req = upgrade_request("/ws/chat", Some(KEY), "13");
    *req.method_mut() = Method::POST;
    let resp = https_request(&s.pki, s.proxy.https, "ws.test", false, req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "POST upgrade");

    // Extended CONNECT with the wrong version.
    let mut send = h2_client(&s).await;
    let mut req = h2_connect_request("/ws/chat");
    req.headers_mut()
        .insert("sec-websocket-version", "12".parse().unwrap());
    let resp = within("h2 CONNECT", WAIT, send.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "h2 version 12");

    assert!(
        backend.handshakes().is_empty(),
        "nothing reached the backend"
    );
    assert_eq!(s.web.count(), 0);
}

// ---------------------------------------------------------------------------
// 2. Messages, fragmentation, close codes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_every_size_class_arrive_intact() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let mut ws = connect(&s, "/ws/sizes").await;
    let started = Instant::now();
    for n in [0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20, 16 << 20] {
        let t = text_of(n);
        within("send text", LONG, ws.send(Message::text(t.clone())))
            .await
            .unwrap();
        match recv(&mut ws, LONG).await {
            Message::Text(got) => {
                assert_same(&format!("text of {n}"), got.as_bytes(), t.as_bytes())
            }
            other => panic!("text of {n}: got {other:?}"),
        }
        echo_binary(&mut ws, &binary_of(n), &format!("binary of {n}"), LONG).await;
    }
    eprintln!(
        "size classes up to 16 MiB echoed in {:?}",
        started.elapsed()
    );
    assert_eq!(close_with(&mut ws, 1000).await, Some(1000));
}

#[tokio::test]
async fn tls12_sessions_relay_like_tls13_ones() {
    // TLS 1.2 sessions run on the same record layer (keys from rustls,
    // no key updates in 1.2).
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let tls12 = s
        .pki
        .client_config_for(&[&rustls::version::TLS12], &[b"http/1.1"]);
    let tls = within("TLS 1.2 handshake", WAIT, s.tls_with(tls12))
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut ws = handshake_over(tls, "/ws/tls12").await;
    for n in [5, 70_000] {
        echo_binary(&mut ws, &binary_of(n), &format!("binary of {n}"), WAIT).await;
    }
    assert_eq!(close_with(&mut ws, 1000).await, Some(1000));
}

#[tokio::test]
async fn fragmented_messages_with_interleaved_pings() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let mut ws = connect(&s, "/ws/frag").await;

    // Client → backend: a text message in three fragments, pings between.
    let frag = |data: &'static [u8], op: Data, fin: bool| {
        Message::Frame(Frame::message(
            Bytes::from_static(data),
            OpCode::Data(op),
            fin,
        ))
    };
    ws.feed(frag(b"frag-", Data::Text, false)).await.unwrap();
    ws.feed(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    ws.feed(frag(b"men", Data::Continue, false)).await.unwrap();
    ws.feed(Message::Ping(Bytes::from_static(b"p2")))
        .await
        .unwrap();
    ws.send(frag(b"t!", Data::Continue, true)).await.unwrap();
    // The backend answered both pings (before the echo, mid-message for it).
    assert_eq!(
        recv_any(&mut ws, WAIT).await,
        Message::Pong(Bytes::from_static(b"p1"))
    );
    assert_eq!(
        recv_any(&mut ws, WAIT).await,
        Message::Pong(Bytes::from_static(b"p2"))
    );
    assert_eq!(recv_any(&mut ws, WAIT).await, Message::text("frag-ment!"));
    let conn = backend.wait_for(Ev::Text("frag-ment!".into())).await;
    assert_eq!(
        backend.events_of(conn),
        vec![
            Ev::Ping(b"p1".to_vec()),
            Ev::Ping(b"p2".to_vec()),
            Ev::Text("frag-ment!".into())
        ],
        "the pings reached the backend in the middle of the message"
    );

    // A binary message in big fragments (each larger than the relay's
    // buffer), an empty one among them, and a ping in the middle.
    let parts: [usize; 4] = [70_000, 1, 0, 100_003];
    let whole = binary_of(parts.iter().sum());
    let mut at = 0;
    for (i, n) in parts.iter().enumerate() {
        let op = if i == 0 { Data::Binary } else { Data::Continue };
        let chunk = Bytes::copy_from_slice(&whole[at..at + n]);
        at += n;
        let fin = i == parts.len() - 1;
        ws.feed(Message::Frame(Frame::message(chunk, OpCode::Data(op), fin)))
            .await
            .unwrap();
        if i == 1 {
            ws.feed(Message::Ping(Bytes::from_static(b"p3")))
                .await
                .unwrap();
        }
    }
    ws.flush().await.unwrap();
    assert_eq!(
        recv_any(&mut ws, WAIT).await,
        Message::Pong(Bytes::from_static(b"p3"))
    );
    match recv_any(&mut ws, WAIT).await {
        Message::Binary(got) => assert_same("fragmented binary", &got, &whole),
        other => panic!("got {other:?}"),
    }

    // Backend → client: fragments with a ping between; the client's pong
    // goes back to the backend.
    ws.send(Message::text("frag")).await.unwrap();
    assert_eq!(
        recv_any(&mut ws, WAIT).await,
        Message::Ping(Bytes::from_static(b"mid"))
    );
    assert_eq!(recv_any(&mut ws, WAIT).await, Message::text("fragment"));
    backend.wait_for_on(conn, Ev::Pong(b"mid".to_vec())).await;

    assert_eq!(close_with(&mut ws, 1000).await, Some(1000));
}

#[tokio::test]
async fn close_codes_pass_both_ways() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;

    // The backend closes with 4001.
    let mut ws = connect(&s, "/ws/a").await;
    ws.send(Message::text("close:4001")).await.unwrap();
    let code = within("close", WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(c)))) => {
                    break (u16::from(c.code), c.reason.to_string());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected close, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(code, (4001, "bye".to_string()));
    finish(&mut ws).await;
    let a = backend.wait_for(Ev::Text("close:4001".into())).await;
    // The client's reply reached the backend.
    backend.wait_for_on(a, Ev::Close(Some(4001))).await;
    backend.wait_for_on(a, Ev::Ended).await;

    // The client closes with 4002.
    let mut ws = connect(&s, "/ws/b").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut ws, WAIT).await, Message::text("hi"));
    assert_eq!(close_with(&mut ws, 4002).await, Some(4002));
    let b = backend.wait_for(Ev::Close(Some(4002))).await;
    assert_ne!(a, b);
    backend.wait_for_on(b, Ev::Ended).await;
    s.wait_active(0.0, WAIT).await;
}

// ---------------------------------------------------------------------------
// 3. Protocol violations, RSV bits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unmasked_client_frame_closes_with_1002() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let (mut tls, head) = raw_upgrade(&s, "/ws/raw", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains(&format!(
        "sec-websocket-accept: {}",
        derive_accept_key(KEY.as_bytes()).to_ascii_lowercase()
    )));

    // A masked frame first goes through...
    tls.write_all(&masked_frame(0x81, b"masked")).await.unwrap();
    let (b0, payload, _) = within("echo", WAIT, read_frame(&mut tls)).await.unwrap();
    assert_eq!((b0, &payload[..]), (0x81, &b"masked"[..]));
    // ...an unmasked one does not.
    tls.write_all(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'])
        .await
        .unwrap();
    assert_eq!(raw_expect_close(&mut tls).await, 1002);
    let conn = backend.wait_for(Ev::Close(Some(1002))).await;
    assert_eq!(
        backend.events_of(conn)[..2],
        [Ev::Text("masked".into()), Ev::Close(Some(1002))],
        "the unmasked frame never reached the backend"
    );
    // (The proxy waits briefly for peers to close their side; don't make it.)
    drop(tls);
    s.wait_active(0.0, WAIT).await;
}

/// A backend that answers the upgrade by hand (optionally negotiating
/// permessage-deflate) and hands its raw socket to the test.
async fn raw_backend(extension: bool) -> (SocketAddr, tokio::sync::oneshot::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let head = read_head(&mut tcp).await;
        let key = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .unwrap();
        let ext = if extension {
            "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        } else {
            ""
        };
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{ext}\r\n",
            derive_accept_key(key.as_bytes())
        );
        tcp.write_all(resp.as_bytes()).await.unwrap();
        let _ = tx.send(tcp);
    });
    (addr, rx)
}

#[tokio::test]
async fn rsv_bits_pass_when_an_extension_was_negotiated() {
    let _g = EXCLUSIVE.read().await;
    let (addr, upstream) = raw_backend(true).await;
    let s = setup(addr, "").await;
    let (mut tls, head) = raw_upgrade(
        &s,
        "/ws/deflate",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    let mut up = within("backend connection", WAIT, upstream).await.unwrap();

    // Backend → client: a "compressed" text frame (RSV1) arrives byte for byte.
    let from_backend = [0xc1u8, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    up.write_all(&from_backend).await.unwrap();
    let mut got = [0u8; 9];
    within("RSV1 frame at the client", WAIT, tls.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, from_backend);

    // Client → backend: the same, masked.
    let from_client = masked_frame(0xc1, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    tls.write_all(&from_client).await.unwrap();
    let mut got = vec![0u8; from_client.len()];
    within("RSV1 frame at the backend", WAIT, up.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, from_client);

    // Close from the client, answered by the backend.
    tls.write_all(&masked_frame(0x88, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let (b0, payload, _) = within("close at backend", WAIT, read_frame(&mut up))
        .await
        .unwrap();
    assert_eq!((b0, payload), (0x88, 1000u16.to_be_bytes().to_vec()));
    up.write_all(&[0x88, 0x02, 0x03, 0xe8]).await.unwrap();
    assert_eq!(raw_expect_close(&mut tls).await, 1000);
    s.wait_active(0.0, WAIT).await;
}

#[tokio::test]
async fn rsv_bits_without_an_extension_close_with_1002() {
    let _g = EXCLUSIVE.read().await;
    let (addr, upstream) = raw_backend(false).await;
    let s = setup(addr, "").await;
    let (mut tls, head) = raw_upgrade(&s, "/ws/plain", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut up = within("backend connection", WAIT, upstream).await.unwrap();
    up.write_all(&[0xc1, 0x03, b'a', b'b', b'c']).await.unwrap();
    assert_eq!(raw_expect_close(&mut tls).await, 1002);
    // The backend is told too.
    let (b0, payload, masked) = within("close at backend", WAIT, read_frame(&mut up))
        .await
        .unwrap();
    assert_eq!(b0, 0x88);
    assert!(masked, "frames to the backend are masked");
    assert_eq!(payload[..2], 1002u16.to_be_bytes());
    drop((tls, up));
    s.wait_active(0.0, WAIT).await;
}

// ---------------------------------------------------------------------------
// 4. HTTP/2 extended CONNECT
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_extended_connect_end_to_end() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let mut send = h2_client(&s).await;

    // Two sessions on one HTTP/2 connection, side by side.
    let mut sessions = Vec::new();
    for path in ["/ws/one", "/ws/two?x=1"] {
        within("ready", WAIT, send.ready()).await.unwrap();
        let mut resp = within("CONNECT", WAIT, send.send_request(h2_connect_request(path)))
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "extended CONNECT answers 200"
        );
        let h = header_map(resp.headers());
        assert_eq!(
            h.get("sec-websocket-protocol").map(String::as_str),
            Some("chat.v2"),
            "{h:?}"
        );
        assert!(!h.contains_key("sec-websocket-accept"), "{h:?}");
        assert!(
            !h.contains_key("upgrade") && !h.contains_key("connection"),
            "{h:?}"
        );
        sessions.push(h2_session(&mut resp).await);
    }

    // The backend got ordinary HTTP/1.1 upgrades.
    let hss = backend.handshakes();
    assert_eq!(hss.len(), 2);
    for hs in &hss {
        let h = header_map(&hs.headers);
        assert_eq!(hs.method, Method::GET);
        assert!(
            h.get("upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "{h:?}"
        );
        assert!(h.contains_key("sec-websocket-key"), "{h:?}");
        assert_eq!(
            h.get("sec-websocket-version").map(String::as_str),
            Some("13")
        );
        assert_eq!(
            h.get("sec-websocket-protocol").map(String::as_str),
            Some("chat.v2")
        );
        assert_eq!(h.get("origin").map(String::as_str), Some("https://ws.test"));
        assert_eq!(
            h.get("x-forwarded-proto").map(String::as_str),
            Some("https")
        );
        assert_eq!(
            h.get("x-forwarded-host").map(String::as_str),
            Some("ws.test")
        );
    }
    let mut targets: Vec<_> = hss.iter().map(|h| h.target.clone()).collect();
    targets.sort();
    assert_eq!(targets, ["/ws/one", "/ws/two?x=1"]);
    s.wait_active(2.0, WAIT).await;

    // Echo on both, interleaved, including one message bigger than the
    // default HTTP/2 flow-control windows.
    let big = binary_of(1 << 20);
    for round in 0..10 {
        for (i, ws) in sessions.iter_mut().enumerate() {
            let m = format!("session {i} round {round}");
            ws.send(Message::text(m.clone())).await.unwrap();
            assert_eq!(recv(ws, WAIT).await, Message::text(m));
        }
    }
    for ws in sessions.iter_mut() {
        ws.send(Message::binary(big.clone())).await.unwrap();
        match recv(ws, LONG).await {
            Message::Binary(got) => assert_same("1 MiB over h2", &got, &big),
            other => panic!("got {other:?}"),
        }
    }
    // One closes from the client side, the other from the backend.
    let mut two = sessions.pop().unwrap();
    let mut one = sessions.pop().unwrap();
    assert_eq!(close_with(&mut one, 1000).await, Some(1000));
    backend.wait_for(Ev::Close(Some(1000))).await;
    two.send(Message::text("still here")).await.unwrap();
    assert_eq!(recv(&mut two, WAIT).await, Message::text("still here"));
    two.send(Message::text("close:4001")).await.unwrap();
    assert_eq!(expect_close(&mut two).await, Some(4001));
    backend.wait_ended(2, WAIT).await;
    s.wait_active(0.0, WAIT).await;

    // The connection is still usable for plain requests.
    within("ready", WAIT, send.ready()).await.unwrap();
    let req = Request::get("https://ws.test/app")
        .body(Empty::new())
        .unwrap();
    let resp = within("GET over h2", WAIT, send.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------
// 5. Metrics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn metrics_after_a_known_exchange() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let m = |parts: &'static [&'static str]| {
        let p = &s.proxy;
        async move { p.metric(parts).await }
    };
    assert_eq!(
        m(&["switchyard_websocket_sessions_total", SITE, ROUTE]).await,
        0.0
    );

    let mut ws = connect(&s, "/ws/metrics").await;
    s.wait_active(1.0, WAIT).await;
    assert_eq!(
        m(&["switchyard_websocket_sessions_total", SITE, ROUTE]).await,
        1.0
    );
    ws.send(Message::text("hello")).await.unwrap(); // 2 + 4 + 5 = 11 bytes
    assert_eq!(recv(&mut ws, WAIT).await, Message::text("hello")); // 2 + 5 = 7
    ws.send(Message::binary(vec![1u8; 200])).await.unwrap(); // 2 + 2 + 4 + 200 = 208
    assert!(matches!(recv(&mut ws, WAIT).await, Message::Binary(b) if b.len() == 200)); // 204
    // Close 1000 without a reason: 2 + 4 + 2 = 8 bytes; the reply: 4.
    assert_eq!(close_with(&mut ws, 1000).await, Some(1000));
    drop(ws);
    s.wait_active(0.0, WAIT).await;

    let text = s.proxy.metrics().await;
    let v = |parts: &[&str]| metric_value(&text, parts);
    let frames = |dir: &str, op: &str| {
        v(&[
            "switchyard_websocket_frames_total",
            SITE,
            ROUTE,
            &format!("direction=\"{dir}\""),
            &format!("opcode=\"{op}\""),
        ])
    };
    let c2u = "client_to_upstream";
    let u2c = "upstream_to_client";
    for dir in [c2u, u2c] {
        assert_eq!(frames(dir, "text"), 1.0, "{dir} text\n{text}");
        assert_eq!(frames(dir, "binary"), 1.0, "{dir} binary\n{text}");
        assert_eq!(frames(dir, "close"), 1.0, "{dir} close\n{text}");
        for op in ["continuation", "ping", "pong"] {
            assert_eq!(frames(dir, op), 0.0, "{dir} {op}\n{text}");
        }
    }
    // Bytes on the wire, frame headers and masks included.
    let bytes = |dir: &str| {
        v(&[
            "switchyard_websocket_bytes_total",
            SITE,
            ROUTE,
            &format!("direction=\"{dir}\""),
        ])
    };
    assert_eq!(bytes(c2u), (11 + 208 + 8) as f64, "{text}");
    assert_eq!(bytes(u2c), (7 + 204 + 4) as f64, "{text}");
    assert_eq!(
        v(&["switchyard_websocket_sessions_total", SITE, ROUTE]),
        1.0
    );
    assert_eq!(
        v(&["switchyard_websocket_sessions_active", SITE, ROUTE]),
        0.0
    );
    assert_eq!(
        v(&[
            "switchyard_websocket_session_duration_seconds_count",
            SITE,
            ROUTE
        ]),
        1.0,
        "{text}"
    );
    assert!(
        v(&[
            "switchyard_websocket_session_duration_seconds_sum",
            SITE,
            ROUTE
        ]) > 0.0
    );
    // Nothing was counted against the plain route.
    assert_eq!(
        v(&["switchyard_websocket_sessions_total", SITE, "route=\"app\""]),
        0.0
    );
}

// ---------------------------------------------------------------------------
// 6, 7. Load
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_sessions_lose_no_message() {
    const SESSIONS: usize = 1000;
    const MESSAGES: usize = 100;
    const WINDOW: usize = 10;
    let _g = EXCLUSIVE.write().await;
    let backend = WsBackend::start().await;
    let s = Arc::new(setup(backend.addr, "").await);
    let started = Instant::now();

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (go_tx, go_rx) = watch::channel(false);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(100));
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..SESSIONS {
        let (s, ready_tx, mut go_rx, handshakes) = (
            s.clone(),
            ready_tx.clone(),
            go_rx.clone(),
            handshakes.clone(),
        );
        tasks.spawn(async move {
            let mut ws = {
                let _p = handshakes.acquire().await.unwrap();
                connect(&s, &format!("/ws/load/{id}")).await
            };
            ready_tx.send(()).unwrap();
            within("go", LONG, go_rx.wait_for(|g| *g)).await.unwrap();
            // Messages go out in windows of WINDOW (one flush each) and
            // every echo is checked, in order.
            let mut echoed = 0;
            let msg = |i: usize| {
                let body = format!("session {id} message {i} {}", "x".repeat(i));
                if i.is_multiple_of(2) {
                    Message::text(body)
                } else {
                    Message::binary(body.into_bytes())
                }
            };
            for start in (0..MESSAGES).step_by(WINDOW) {
                let window = start..(start + WINDOW).min(MESSAGES);
                for i in window.clone() {
                    within("feed", WAIT, ws.feed(msg(i))).await.unwrap();
                }
                within("flush", WAIT, ws.flush()).await.unwrap();
                for i in window {
                    assert_eq!(recv(&mut ws, WAIT).await, msg(i), "session {id}");
                    echoed += 1;
                }
            }
            assert_eq!(close_with(&mut ws, 1000).await, Some(1000));
            echoed
        });
    }
    drop(ready_tx);
    within("all sessions open", LONG, async {
        for _ in 0..SESSIONS {
            ready_rx.recv().await.expect("a session failed to open");
        }
    })
    .await;
    let opened = started.elapsed();
    // All of them are open at the same time.
    s.wait_active(SESSIONS as f64, WAIT).await;
    go_tx.send(true).unwrap();
    let mut total = 0;
    within("all sessions done", LONG, async {
        while let Some(r) = tasks.join_next().await {
            total += r.expect("session task");
        }
    })
    .await;
    assert_eq!(total, SESSIONS * MESSAGES);
    s.wait_active(0.0, LONG).await;
    backend.wait_ended(SESSIONS, LONG).await;
    let text = s.proxy.metrics().await;
    assert_eq!(
        metric_value(&text, &["switchyard_websocket_sessions_total", SITE, ROUTE]),
        SESSIONS as f64
    );
    for dir in ["client_to_upstream", "upstream_to_client"] {
        let data: f64 = ["text", "binary"]
            .iter()
            .map(|op| {
                metric_value(
                    &text,
                    &[
                        "switchyard_websocket_frames_total",
                        SITE,
                        ROUTE,
                        &format!("direction=\"{dir}\""),
                        &format!("opcode=\"{op}\""),
                    ],
                )
            })
            .sum();
        assert_eq!(data, (SESSIONS * MESSAGES) as f64, "{dir}");
    }
    eprintln!(
        "{SESSIONS} sessions x {MESSAGES} messages: opened in {opened:?}, all done in {:?}",
        started.elapsed()
    );
}

/// Open file descriptors of this process: (all, sockets).
fn open_fds() -> (usize, usize) {
    let mut all = 0;
    let mut sockets = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        all += 1;
        if std::fs::read_link(e.path()).is_ok_and(|p| p.to_string_lossy().starts_with("socket:")) {
            sockets += 1;
        }
    }
    (all, sockets)
}

/// One short session ended one of three ways: a client close, a backend
/// close, or the client just dropping the connection.
async fn short_session(s: &Setup, id: usize) {
    let mut ws = connect(s, &format!("/ws/churn/{id}")).await;
    let m = Message::text(format!("hello {id}"));
    within("send", WAIT, ws.send(m.clone())).await.unwrap();
    assert_eq!(recv(&mut ws, WAIT).await, m);
    match id % 3 {
        0 => assert_eq!(close_with(&mut ws, 1000).await, Some(1000)),
        1 => {
            within("send", WAIT, ws.send(Message::text("close:4001")))
                .await
                .unwrap();
            assert_eq!(expect_close(&mut ws).await, Some(4001));
        }
        _ => drop(ws),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sessions_leak_nothing() {
    const SESSIONS: usize = 10_000;
    const BATCH: usize = 200;
    let _g = EXCLUSIVE.write().await;
    let backend = WsBackend::start().await;
    let s = Arc::new(setup(backend.addr, "").await);
    // Warm up (lazily created resources), then measure.
    for id in 0..3 {
        short_session(&s, id).await;
    }
    s.wait_active(0.0, WAIT).await;
    backend.wait_ended(3, WAIT).await;
    let before = open_fds();
    let started = Instant::now();

    let permits = Arc::new(tokio::sync::Semaphore::new(BATCH));
    let mut tasks = tokio::task::JoinSet::new();
    for id in 3..SESSIONS + 3 {
        let (s, permits) = (s.clone(), permits.clone());
        tasks.spawn(async move {
            let _p = permits.acquire().await.unwrap();
            short_session(&s, id).await;
        });
    }
    let mut peak = before;
    within("10,000 sessions", Duration::from_secs(300), async {
        let mut done = 0;
        while let Some(r) = tasks.join_next().await {
            r.expect("session task");
            done += 1;
            if done % 500 == 0 {
                let now = open_fds();
                peak = (peak.0.max(now.0), peak.1.max(now.1));
            }
        }
    })
    .await;
    let churned = started.elapsed();
    s.wait_active(0.0, LONG).await;
    backend.wait_ended(SESSIONS + 3, LONG).await;
    assert_eq!(
        s.proxy
            .metric(&["switchyard_websocket_sessions_total", SITE, ROUTE])
            .await,
        (SESSIONS + 3) as f64
    );
    // Descriptors come back (sockets close a moment after the sessions end).
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let now = open_fds();
        if (now.0 <= before.0 + 16 && now.1 <= before.1 + 2) || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "{SESSIONS} sessions in batches of {BATCH}: {churned:?}; fds (all, sockets) before {before:?}, peak {peak:?}, after {after:?}"
    );
    assert!(
        after.0 <= before.0 + 16 && after.1 <= before.1 + 2,
        "file descriptors leaked: (all, sockets) before {before:?}, after {after:?}"
    );
}

// ---------------------------------------------------------------------------
// 8. Route limits: idle timeout, pings, message size
// ---------------------------------------------------------------------------

#[tokio::test]
async fn idle_session_is_closed_with_1001() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "idle_timeout = \"300ms\"").await;
    let mut ws = connect(&s, "/ws/idle").await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(recv(&mut ws, WAIT).await, Message::text("one"));
    let quiet_since = Instant::now();
    assert_eq!(expect_close(&mut ws).await, Some(1001));
    assert!(
        quiet_since.elapsed() >= Duration::from_millis(250),
        "closed after only {:?}",
        quiet_since.elapsed()
    );
    let conn = backend.wait_for(Ev::Close(Some(1001))).await;
    backend.wait_for_on(conn, Ev::Ended).await;
    s.wait_active(0.0, WAIT).await;
}

#[tokio::test]
async fn pings_keep_an_answering_client_open_and_never_reach_the_backend() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "ping_interval = \"200ms\"").await;
    let mut ws = connect(&s, "/ws/ping").await;
    ws.send(Message::text("first")).await.unwrap();
    assert_eq!(recv(&mut ws, WAIT).await, Message::text("first"));
    // tungstenite answers each ping with a pong as it reads on.
    let mut pings = 0;
    while pings < 5 {
        match recv_any(&mut ws, WAIT).await {
            Message::Ping(p) => {
                assert!(p.len() <= 125);
                pings += 1;
            }
            other => panic!("expected only pings, got {other:?}"),
        }
    }
    ws.send(Message::text("still open")).await.unwrap();
    assert_eq!(recv(&mut ws, WAIT).await, Message::text("still open"));
    assert_eq!(close_with(&mut ws, 1000).await, Some(1000));
    let conn = backend.wait_for(Ev::Text("still open".into())).await;
    backend.wait_for_on(conn, Ev::Ended).await;
    let evs = backend.events_of(conn);
    assert!(
        !evs.iter().any(|e| matches!(e, Ev::Ping(_) | Ev::Pong(_))),
        "the backend saw the proxy's pings or the client's pongs: {evs:?}"
    );
    s.wait_active(0.0, WAIT).await;
    let text = s.proxy.metrics().await;
    for op in ["ping", "pong"] {
        assert_eq!(
            metric_value(
                &text,
                &[
                    "switchyard_websocket_frames_total",
                    SITE,
                    ROUTE,
                    &format!("opcode=\"{op}\"")
                ]
            ),
            0.0,
            "the proxy's own pings and the pongs it consumed are not relayed frames"
        );
    }
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_dropped() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "ping_interval = \"100ms\"").await;
    let (mut tls, head) = raw_upgrade(&s, "/ws/deaf", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Never answer; the backend is told the client went away.
    let conn = backend.wait_for(Ev::Close(Some(1001))).await;
    // The client got a ping, then the connection ended.
    let (b0, payload, _) = within("ping", WAIT, read_frame(&mut tls)).await.unwrap();
    assert_eq!(b0, 0x89, "a ping");
    assert!(payload.len() <= 125);
    within("the connection to end", WAIT, async {
        let mut buf = [0u8; 256];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    drop(tls);
    backend.wait_for_on(conn, Ev::Ended).await;
    s.wait_active(0.0, WAIT).await;
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "max_message_bytes = \"64KiB\"").await;

    // Exactly at the limit: fine.
    let mut ws = connect(&s, "/ws/big").await;
    let at_limit = binary_of(65536);
    ws.send(Message::binary(at_limit.clone())).await.unwrap();
    match recv(&mut ws, WAIT).await {
        Message::Binary(b) => assert_same("64 KiB", &b, &at_limit),
        other => panic!("got {other:?}"),
    }
    // One byte more, in one frame.
    ws.send(Message::binary(binary_of(65537))).await.unwrap();
    assert_eq!(expect_close(&mut ws).await, Some(1009));
    drop(ws);
    let c1 = backend.wait_for(Ev::Close(Some(1009))).await;
    assert_eq!(
        backend.events_of(c1)[..2],
        [Ev::Binary(65536), Ev::Close(Some(1009))]
    );

    // Over the limit only in sum, across fragments.
    let mut ws = connect(&s, "/ws/big").await;
    for (i, fin) in [(0, false), (1, false), (2, true)] {
        let op = if i == 0 { Data::Text } else { Data::Continue };
        let part = Bytes::from(text_of(30_000));
        let _ = ws
            .send(Message::Frame(Frame::message(part, OpCode::Data(op), fin)))
            .await;
    }
    assert_eq!(expect_close(&mut ws).await, Some(1009));
    drop(ws);

    // Backend → client.
    let mut ws = connect(&s, "/ws/big").await;
    ws.send(Message::text("send:70000")).await.unwrap();
    assert_eq!(expect_close(&mut ws).await, Some(1009));
    drop(ws);
    let c3 = backend.wait_for(Ev::Text("send:70000".into())).await;
    backend.wait_for_on(c3, Ev::Close(Some(1009))).await;
    s.wait_active(0.0, WAIT).await;
}

// ---------------------------------------------------------------------------
// 9. A vanishing backend
// ---------------------------------------------------------------------------

#[tokio::test]
async fn vanished_backend_closes_the_client_with_1011() {
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let mut ws = connect(&s, "/ws/doomed").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(recv(&mut ws, WAIT).await, Message::text("before"));
    backend.vanish();
    assert_eq!(expect_close(&mut ws).await, Some(1011));
    drop(ws);
    s.wait_active(0.0, WAIT).await;
    // With the backend gone, a new handshake fails with 502.
    let resp = https_request(
        &s.pki,
        s.proxy.https,
        "ws.test",
        false,
        upgrade_request("/ws/x", Some(KEY), "13"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
}

// ---------------------------------------------------------------------------
// 5. TLS key updates on relayed sessions (issue 18)
// ---------------------------------------------------------------------------

/// A client TLS stream that sends a `KeyUpdate` (asking for one in return)
/// before its next write whenever `refresh` is set: the same thing a
/// browser's TLS stack does on its own, on demand.
struct Refreshing {
    tls: TlsStream,
    refresh: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
}

impl Refreshing {
    /// `tls`, with the flag that asks for a key update before the next
    /// write and the count of updates sent.
    fn new(tls: TlsStream) -> (Refreshing, Arc<AtomicBool>, Arc<AtomicUsize>) {
        let refresh = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let io = Refreshing {
            tls,
            refresh: refresh.clone(),
            sent: sent.clone(),
        };
        (io, refresh, sent)
    }
}

impl AsyncRead for Refreshing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Refreshing {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.refresh.swap(false, Ordering::SeqCst) {
            self.tls.get_mut().1.refresh_traffic_keys().unwrap();
            self.sent.fetch_add(1, Ordering::SeqCst);
        }
        std::pin::Pin::new(&mut self.tls).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Echoes `rounds` messages of varying sizes over `ws`, a key update
/// asked for before each one (`refresh`), and checks every echo.
async fn echo_through_key_updates<S>(
    ws: &mut WebSocketStream<S>,
    refresh: &AtomicBool,
    rounds: usize,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for round in 0..rounds {
        refresh.store(true, Ordering::SeqCst);
        let b = binary_of(1 + round * 7919 % 70_000);
        echo_binary(ws, &b, &format!("round {round}"), WAIT).await;
    }
}

#[tokio::test]
async fn client_key_updates_mid_session_lose_nothing() {
    // A TLS 1.3 client that updates its keys (asking for ours too) before
    // every message, a hundred times in a row: the proxy follows each
    // update, answers it, and relays every message in order.
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let tls = within("TLS connect", WAIT, s.tls()).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let (io, refresh, sent) = Refreshing::new(tls);
    let mut ws = handshake_over(io, "/ws/keys").await;
    echo_through_key_updates(&mut ws, &refresh, 100).await;
    assert_eq!(sent.load(Ordering::SeqCst), 100);
    assert_eq!(close_with(&mut ws, 1000).await, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_key_updates_on_an_http2_connection_carrying_websockets() {
    // RFC 8441: the key updates are the HTTP/2 connection's; two sessions
    // on it keep relaying through a hundred of them.
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let tls = within(
        "TLS connect",
        WAIT,
        tls_connect(&s.pki, s.proxy.https, "ws.test", &[b"h2"]),
    )
    .await
    .unwrap();
    let (io, refresh, sent) = Refreshing::new(tls);
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut sessions = Vec::new();
    for path in ["/ws/h2-keys-one", "/ws/h2-keys-two"] {
        within("ready", WAIT, send.ready()).await.unwrap();
        let mut resp = within("CONNECT", WAIT, send.send_request(h2_connect_request(path)))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        sessions.push(h2_session(&mut resp).await);
    }
    for ws in sessions.iter_mut() {
        echo_through_key_updates(ws, &refresh, 50).await;
    }
    assert!(sent.load(Ordering::SeqCst) >= 90);
    for mut ws in sessions {
        assert_eq!(close_with(&mut ws, 1000).await, Some(1000));
    }
}

#[tokio::test]
async fn a_client_record_that_does_not_open_ends_the_session_with_1011_upstream() {
    // The record layer refuses the client's bytes: the backend hears 1011
    // (the session failed), not 1001 (the client left).
    let _g = EXCLUSIVE.read().await;
    let backend = WsBackend::start().await;
    let s = setup(backend.addr, "").await;
    let mut ws = connect(&s, "/ws/forged").await;
    within("send", WAIT, ws.send(Message::text("fine")))
        .await
        .unwrap();
    assert!(matches!(recv(&mut ws, WAIT).await, Message::Text(_)));
    let conn = backend.wait_for(Ev::Text("fine".into())).await;
    // A forged application-data record, straight onto the TCP stream.
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend([0x5a; 40]);
    ws.get_mut().get_mut().0.write_all(&forged).await.unwrap();
    backend.wait_for_on(conn, Ev::Close(Some(1011))).await;
}
