//! Pool servers on unix sockets (`servers = ["unix:PATH"]`), over real
//! sockets: plain requests from HTTP/1.1 and HTTP/2 clients, a WebSocket
//! echo through an HTTP/1.1 upgrade, a missing socket (502, and a retry on
//! another server), health checks, and configuration errors.
//!
//! Every wait is bounded; the health tests poll the metric they wait for.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixListener};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;

/// What a unix backend received: method, path, Host header and body.
type Got = (String, String, String, Bytes);

/// A hyper HTTP/1.1 backend on a unix socket answering `NAME` to
/// everything, recording each request.
struct UnixBackend {
    seen: Arc<Mutex<Vec<Got>>>,
    accept: AbortHandle,
}

impl Drop for UnixBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl UnixBackend {
    fn start(path: &Path, name: &'static str) -> UnixBackend {
        let listener = UnixListener::bind(path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let accept = tokio::spawn(async move {
            while let Ok((unix, _)) = listener.accept().await {
                let record = record.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let host = parts
                            .headers
                            .get("host")
                            .map_or("", |h| h.to_str().unwrap());
                        record.lock().unwrap().push((
                            parts.method.to_string(),
                            parts.uri.path().to_owned(),
                            host.to_owned(),
                            body,
                        ));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(name))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(unix), svc),
                );
            }
        })
        .abort_handle();
        UnixBackend { seen, accept }
    }

    /// Requests other than health checks.
    fn app(&self) -> Vec<Got> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|g| g.1 != "/healthz").cloned().collect()
    }
}

/// A WebSocket echo backend (tokio-tungstenite) on a unix socket.
fn ws_echo(path: &Path) -> AbortHandle {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((unix, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(unix).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
    .abort_handle()
}

/// A proxy for site `u` (host `u.test`, also over TLS) with one pool per
/// entry of `pools`: (name, servers, extra lines); route `/NAME/` goes to
/// pool NAME, WebSocket upgrades included.
struct Setup {
    pki: Pki,
    /// Kept: the configuration directory lives as long as the proxy.
    _cfg: ConfigDir,
    proxy: Proxy,
}

async fn setup(pools: &[(&str, &[String], &str)]) -> Setup {
    let pki = Pki::new();
    let (crt, key) = pki.leaf("u", &["u.test"]);
    let mut site = format!("hosts = [\"u.test\"]\n{}\n", tls_toml(&crt, &key));
    for (name, servers, extra) in pools {
        site += &format!("[pools.{name}]\nservers = {servers:?}\n{extra}\n");
    }
    for (name, _, _) in pools {
        site += &format!(
            "[[routes]]\npath = \"/{name}/\"\npool = \"{name}\"\nwebsocket = \"{name}\"\n"
        );
    }
    let cfg = ConfigDir::new(&main_toml(""), &[("u", site)]);
    let proxy = Proxy::start(cfg.load()).await;
    Setup {
        pki,
        _cfg: cfg,
        proxy,
    }
}

/// A socket path in `dir`.
fn sock(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn unix(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// A temporary directory for sockets (short paths, removed with it).
fn socket_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn get_and_post_reach_a_unix_backend_over_h1_and_h2() {
    let dir = socket_dir();
    let path = sock(dir.path(), "app.sock");
    let backend = UnixBackend::start(&path, "unix-app");
    let s = setup(&[("app", &[unix(&path)], "")]).await;

    let r = plain_request(s.proxy.http, get("u.test", "/app/x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "unix-app");
    for h2 in [false, true] {
        let post = Request::post("/app/form")
            .header("host", "u.test")
            .body(Full::new(Bytes::from_static(b"name=value")))
            .unwrap();
        let r = https_request(&s.pki, s.proxy.https, "u.test", h2, post)
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "h2: {h2}");
        assert_eq!(r.body(), "unix-app");
    }
    let seen = backend.app();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].0, "GET");
    assert_eq!(seen[0].1, "/app/x");
    assert_eq!(seen[0].2, "u.test", "the client's Host goes through");
    for got in &seen[1..] {
        assert_eq!((got.0.as_str(), got.1.as_str()), ("POST", "/app/form"));
        assert_eq!(got.3, "name=value");
    }
    // The label is the server as written.
    let label = format!("server=\"{}\"", unix(&path));
    let up = s.proxy.metric(&["switchyard_upstream_up", &label]).await;
    assert_eq!(up, 1.0);
}

#[tokio::test]
async fn a_relative_socket_path_is_resolved_against_the_site_file() {
    // The site file is CFG/sites/u.toml, so "../app.sock" is CFG/app.sock.
    let pki = Pki::new();
    let (crt, key) = pki.leaf("u", &["u.test"]);
    let site = format!(
        "hosts = [\"u.test\"]\n{}\n[pools.app]\nservers = [\"unix:../app.sock\"]\n[[routes]]\npath = \"/\"\npool = \"app\"\n",
        tls_toml(&crt, &key)
    );
    let cfg = ConfigDir::new(&main_toml(""), &[("u", site)]);
    let backend = UnixBackend::start(&cfg.path().join("app.sock"), "relative");
    let proxy = Proxy::start(cfg.load()).await;
    let r = plain_request(proxy.http, get("u.test", "/")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "relative");
    assert_eq!(backend.app().len(), 1);
    let up = proxy
        .metric(&["switchyard_upstream_up", "server=\"unix:../app.sock\""])
        .await;
    assert_eq!(up, 1.0);
}

#[tokio::test]
async fn a_websocket_session_relays_to_a_unix_backend() {
    let dir = socket_dir();
    let path = sock(dir.path(), "ws.sock");
    let echo_task = ws_echo(&path);
    let s = setup(&[("ws", &[unix(&path)], "")]).await;

    let tcp = TcpStream::connect(s.proxy.http).await.unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async("ws://u.test/ws/chat", tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    assert_eq!(resp.status(), 101);
    echo(&mut ws, Message::text("hello over a unix socket")).await;
    echo(&mut ws, Message::binary(vec![7u8; 70_000])).await;
    ws.close(None).await.unwrap();
    // The close handshake completes through the relay.
    let end =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(end.is_ok(), "the session ended");
    echo_task.abort();
}

/// Sends `msg` on `ws` and expects it back.
async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, msg: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(msg.clone()).await.unwrap();
    let back = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .unwrap();
    assert_eq!(back, msg);
}

#[tokio::test]
async fn an_http2_websocket_session_relays_to_a_unix_backend() {
    let dir = socket_dir();
    let (ws_path, app_path) = (sock(dir.path(), "ws.sock"), sock(dir.path(), "app.sock"));
    let echo_task = ws_echo(&ws_path);
    let _app = UnixBackend::start(&app_path, "app");
    let s = setup(&[
        ("ws", &[unix(&ws_path)], ""),
        ("app", &[unix(&app_path)], ""),
    ])
    .await;

    let mut send = h2_connect::<Full<Bytes>>(&s.pki, s.proxy.https, "u.test").await;
    // A response first: the server's SETTINGS (extended CONNECT allowed)
    // have been applied once it arrived.
    let probe = Request::get("https://u.test/app/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = tokio::time::timeout(WAIT, send.send_request(probe))
        .await
        .expect("probe in time")
        .unwrap();
    assert_eq!(r.status(), 200);
    let connect = Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://u.test/ws/chat")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut resp = tokio::time::timeout(WAIT, send.send_request(connect))
        .await
        .expect("CONNECT in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let upgraded = tokio::time::timeout(WAIT, hyper::upgrade::on(&mut resp))
        .await
        .expect("upgrade in time")
        .unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    echo(&mut ws, Message::text("h2 over a unix socket")).await;
    echo(&mut ws, Message::binary(vec![3u8; 20_000])).await;
    echo_task.abort();
}

#[tokio::test]
async fn a_missing_socket_is_502_and_a_get_is_retried_on_another_server() {
    let dir = socket_dir();
    let missing = sock(dir.path(), "missing.sock");
    let good = sock(dir.path(), "good.sock");
    let backend = UnixBackend::start(&good, "good");
    let tcp = Backend::named("tcp").await;
    let s = setup(&[
        ("alone", &[unix(&missing)], ""),
        ("two", &[unix(&missing), unix(&good)], ""),
        ("mixed", &[unix(&missing), tcp.addr.to_string()], ""),
    ])
    .await;

    let r = plain_request(s.proxy.http, get("u.test", "/alone/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    // Round-robin ties: one of the first two requests tries the missing
    // socket first, and is retried on the other server.
    for _ in 0..2 {
        let r = plain_request(s.proxy.http, get("u.test", "/two/"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), "good");
        let r = plain_request(s.proxy.http, get("u.test", "/mixed/"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), "tcp");
    }
    assert_eq!(backend.app().len(), 2);
    assert_eq!(tcp.app_count(), 2);
    let label = format!("server=\"{}\"", unix(&missing));
    for pool in ["alone", "two", "mixed"] {
        let pool = format!("pool=\"{pool}\"");
        let up = s
            .proxy
            .metric(&["switchyard_upstream_up", &label, &pool])
            .await;
        assert_eq!(up, 0.0, "{pool}: a refused connect marks the server down");
    }
}

/// Waits (polling the metric, bounded) until `switchyard_upstream_up` for
/// `server` reads `want`.
async fn wait_up(proxy: &Proxy, server: &str, want: f64) {
    let label = format!("server=\"{server}\"");
    let deadline = Instant::now() + WAIT;
    loop {
        let now = proxy.metric(&["switchyard_upstream_up", &label]).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{server}: up stayed at {now}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_checks_mark_a_missing_socket_down_and_a_listening_one_up() {
    let dir = socket_dir();
    let missing = sock(dir.path(), "missing.sock");
    let good = sock(dir.path(), "good.sock");
    let backend = UnixBackend::start(&good, "good");
    let health = "health = { path = \"/healthz\", interval = \"50ms\", timeout = \"500ms\", rise = 1, fall = 1 }";
    let s = setup(&[("app", &[unix(&missing), unix(&good)], health)]).await;

    wait_up(&s.proxy, &unix(&missing), 0.0).await;
    // The listening socket answers its checks, with a Host of localhost.
    let deadline = Instant::now() + WAIT;
    while backend.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no health check arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let check = backend.seen.lock().unwrap()[0].clone();
    assert_eq!(
        (check.1.as_str(), check.2.as_str()),
        ("/healthz", "localhost")
    );
    wait_up(&s.proxy, &unix(&good), 1.0).await;
    // Requests go to the server that is up only.
    for _ in 0..3 {
        let r = plain_request(s.proxy.http, get("u.test", "/app/"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(backend.app().len(), 3);

    // The socket appears: the checks bring it up.
    let late = UnixBackend::start(&missing, "late");
    wait_up(&s.proxy, &unix(&missing), 1.0).await;
    drop(late);
}

#[test]
fn bad_unix_servers_are_configuration_errors() {
    let site = "hosts = [\"u.test\"]\n[pools.app]\nservers = [\"unix:\", \"unix:/run/\"]\n[[routes]]\npath = \"/\"\npool = \"app\"\n";
    let cfg = ConfigDir::new(&main_toml(""), &[("u", site.to_owned())]);
    let Err(e) = switchyard::config::load(cfg.path()) else {
        panic!("a bad unix: server loaded");
    };
    let text = e.to_string();
    let file = cfg.path().join("sites").join("u.toml");
    let first = format!(
        "{}:3:12: pools.app.servers[0]: unix: needs a socket path",
        file.display()
    );
    let second = format!(
        "{}:3:21: pools.app.servers[1]: \"/run/\" names a directory",
        file.display()
    );
    assert!(text.contains(&first), "{text}");
    assert!(text.contains(&second), "{text}");
}

#[tokio::test]
async fn a_reload_moves_a_pool_to_another_socket() {
    let dir = socket_dir();
    let old = sock(dir.path(), "old.sock");
    let new = sock(dir.path(), "new.sock");
    let old_backend = UnixBackend::start(&old, "old");
    let new_backend = UnixBackend::start(&new, "new");
    let site = |p: &Path| {
        format!(
            "hosts = [\"u.test\"]\n[pools.app]\nservers = [{:?}]\n[[routes]]\npath = \"/\"\npool = \"app\"\n",
            unix(p)
        )
    };
    let cfg = ConfigDir::new(&main_toml(""), &[("u", site(&old))]);
    let proxy = Proxy::start(cfg.load()).await;
    let r = plain_request(proxy.http, get("u.test", "/x"))
        .await
        .unwrap();
    assert_eq!(r.body(), "old");

    cfg.write_site("u", &site(&new));
    proxy.server.reload(cfg.load()).await.expect("reload");
    // The old socket is gone: a request that still went there would fail.
    drop(old_backend);
    std::fs::remove_file(&old).unwrap();
    for _ in 0..3 {
        let r = plain_request(proxy.http, get("u.test", "/y"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), "new");
    }
    assert_eq!(new_backend.app().len(), 3);
    let label = format!("server=\"{}\"", unix(&new));
    let up = proxy.metric(&["switchyard_upstream_up", &label]).await;
    assert_eq!(up, 1.0);
}
