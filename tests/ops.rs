//! Operations: reload (in-process and SIGHUP), drain (SIGTERM/SIGINT on the
//! real binary), access logs, and the completeness of /metrics.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

// ---------------------------------------------------------------------------
// WebSocket helpers

/// A WebSocket backend that echoes text and binary messages and reports the
/// close code of every session that ends (`None`: ended without a close frame).
struct EchoBackend {
    addr: std::net::SocketAddr,
    closes: mpsc::UnboundedReceiver<Option<u16>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoBackend {
    async fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, closes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let mut code = None;
                    while let Some(msg) = ws.next().await {
                        match msg {
                            Ok(Message::Close(f)) => {
                                // Keep polling: tungstenite answers the close.
                                code = Some(f.map_or(1005, |f| u16::from(f.code)));
                            }
                            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                                if ws.send(m).await.is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    let _ = tx.send(code);
                });
            }
        });
        EchoBackend { addr, closes, task }
    }

    /// The close code of the next session to end.
    async fn next_close(&mut self) -> Option<u16> {
        tokio::time::timeout(WAIT, self.closes.recv())
            .await
            .expect("a backend session should end")
            .expect("backend running")
    }
}

async fn ws_connect(pki: &Pki, addr: std::net::SocketAddr, host: &str, path: &str) -> Ws {
    let tls = tls_connect(pki, addr, host, &[b"http/1.1"])
        .await
        .expect("TLS connect");
    let (ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("wss://{host}{path}"), tls),
    )
    .await
    .expect("WebSocket handshake in time")
    .expect("WebSocket handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends `text` and waits for its echo.
async fn echo(ws: &mut Ws, text: &str) -> Result<(), String> {
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .map_err(|_| "send timed out".to_string())?
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => return Err(format!("no echo of {text:?} in time")),
            Ok(None) => return Err("session ended".into()),
            Ok(Some(Err(e))) => return Err(format!("receive: {e}")),
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => return Ok(()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Close(f)))) => return Err(format!("closed: {f:?}")),
            Ok(Some(Ok(other))) => return Err(format!("unexpected {other:?}")),
        }
    }
}

/// Reads until the peer's close frame, answers it; returns its code.
async fn expect_close(ws: &mut Ws, within: Duration) -> u16 {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => panic!("no close frame within {within:?}"),
            Ok(Some(Ok(Message::Close(f)))) => {
                // Keep polling so tungstenite sends the reply, as a real
                // client does, until the proxy ends the connection.
                let _ = tokio::time::timeout(WAIT, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return f.map_or(1005, |f| u16::from(f.code));
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("session ended without a close frame: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Site helpers

fn ws_site(host: &str, tls: &str, web: &[&Backend], live: &EchoBackend, extra: &str) -> String {
    let servers: Vec<String> = web.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        r#"hosts = ["{host}"]
{tls}
{extra}
[pools.web]
servers = [{}]
max_in_flight = 4
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
        servers.join(", "),
        live.addr
    )
}

fn pem_cert(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut &pem[..])
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .to_vec()
}

/// The certificate the proxy presents for this SNI.
async fn presented_cert(pki: &Pki, addr: std::net::SocketAddr, sni: &str) -> Vec<u8> {
    let tls = tls_connect(pki, addr, sni, &[b"http/1.1"]).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

// ---------------------------------------------------------------------------
// Reload under load

/// What the load generator saw.
#[derive(Default)]
struct LoadReport {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// `per_conn` GETs from one client, paced by `every`, over HTTP/1.1
/// keep-alive connections that are replaced every `reconnect` requests (so
/// both old connections and new ones cross the reload).
async fn client_load(
    pki: Arc<Pki>,
    addr: std::net::SocketAddr,
    per_conn: usize,
    every: Duration,
    reconnect: usize,
    report: Arc<LoadReport>,
    done: watch::Sender<usize>,
) {
    let mut tick = tokio::time::interval(every);
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    for i in 0..per_conn {
        tick.tick().await;
        let result: Result<(), String> = async {
            if sender.is_none() || i % reconnect == 0 {
                let tls = tls_connect(&pki, addr, "a.test", &[b"http/1.1"])
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                sender = Some(s);
            }
            let s = sender.as_mut().ok_or("no connection")?;
            let fut = async {
                s.ready().await?;
                let resp = s.send_request(get("a.test", &format!("/load/{i}"))).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            };
            let (status, body) = tokio::time::timeout(WAIT, fut)
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| format!("request: {e}"))?;
            if status != StatusCode::OK {
                return Err(format!("status {status}: {body:?}"));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                report.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                sender = None;
                report.failures.lock().unwrap().push(e);
            }
        }
        done.send_modify(|n| *n += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing() {
    const CONNS: usize = 16;
    const PER_CONN: usize = 125; // 2,000 requests
    const EVERY: Duration = Duration::from_millis(32); // ~4 s

    let pki = Arc::new(Pki::new());
    let (a_crt, a_key) = pki.leaf("a", &["a.test"]);
    let slow = |name: &'static str| {
        Backend::with(move |_| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Response::new(Full::new(Bytes::from(name)))
        })
    };
    let one = slow("one").await;
    let two = slow("two").await;
    let bee = Backend::named("bee").await;
    let live = EchoBackend::start().await;
    let cfg = ConfigDir::new(
        &main_toml(""),
        &[(
            "a",
            ws_site("a.test", &tls_toml(&a_crt, &a_key), &[&one], &live, ""),
        )],
    );
    let proxy = Proxy::start(cfg.load()).await;
    let metrics_before = proxy.metrics().await;
    let hash_before = metric_value(&metrics_before, &["switchyard_config_hash"]);
    let cert_before = presented_cert(&pki, proxy.https, "a.test").await;
    assert_eq!(cert_before, pem_cert(&a_crt));

    // A WebSocket session echoing all the way through.
    let mut ws = ws_connect(&pki, proxy.https, "a.test", "/ws/").await;
    echo(&mut ws, "before").await.unwrap();
    let ws_stop = tokio_util::sync::CancellationToken::new();
    let ws_task = {
        let stop = ws_stop.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.is_cancelled() {
                tick.tick().await;
                echo(&mut ws, &format!("msg {n}")).await?;
                n += 1;
            }
            Ok::<_, String>((ws, n))
        })
    };

    let report = Arc::new(LoadReport::default());
    let (done_tx, mut done_rx) = watch::channel(0usize);
    let started = Instant::now();
    let clients: Vec<_> = (0..CONNS)
        .map(|_| {
            tokio::spawn(client_load(
                pki.clone(),
                proxy.https,
                PER_CONN,
                EVERY,
                25,
                report.clone(),
                done_tx.clone(),
            ))
        })
        .collect();
    drop(done_tx);

    // A third of the way in: add a site, change the pool, renew the certificate.
    tokio::time::timeout(Duration::from_secs(60), done_rx.wait_for(|n| *n >= 700))
        .await
        .expect("load under way")
        .unwrap();
    let (b_crt, b_key) = pki.leaf("b", &["b.test"]);
    let (a_crt2, _) = pki.leaf("a", &["a.test"]); // same files, new certificate
    assert_eq!(a_crt2, a_crt);
    cfg.write_site(
        "a",
        &ws_site(
            "a.test",
            &tls_toml(&a_crt, &a_key),
            &[&one, &two],
            &live,
            "",
        ),
    );
    cfg.write_site(
        "b",
        &format!(
            "hosts = [\"b.test\"]\n{}\n[pools.web]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
            tls_toml(&b_crt, &b_key),
            bee.addr
        ),
    );
    let reloaded_at = started.elapsed();
    proxy.server.reload(cfg.load()).await.expect("reload");

    // New connections see the new configuration at once.
    assert_eq!(
        presented_cert(&pki, proxy.https, "a.test").await,
        pem_cert(&a_crt),
        "the renewed certificate is served"
    );
    assert_ne!(pem_cert(&a_crt), cert_before);
    let r = https_request(&pki, proxy.https, "b.test", false, get("b.test", "/"))
        .await
        .unwrap();
    assert_eq!(r.body().as_ref(), b"bee", "the added site answers");
    // A session opened after the reload works too.
    let mut ws2 = ws_connect(&pki, proxy.https, "a.test", "/ws/").await;
    echo(&mut ws2, "new session").await.unwrap();

    for c in clients {
        tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .expect("load finishes")
            .unwrap();
    }
    let took = started.elapsed();
    ws_stop.cancel();
    let (mut ws, echoed) = tokio::time::timeout(WAIT, ws_task)
        .await
        .expect("echo task ends")
        .unwrap()
        .expect("the WebSocket kept echoing across the reload");
    echo(&mut ws, "after").await.unwrap();

    let failures = report.failures.lock().unwrap().clone();
    let ok = report.ok.load(Ordering::Relaxed);
    eprintln!(
        "reload under load: {ok} ok, {} failed, in {took:?} (reload at {reloaded_at:?}); \
         WebSocket echoed {echoed} messages; backends: one {} two {}",
        failures.len(),
        one.app_count(),
        two.app_count()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(ok, CONNS * PER_CONN);
    assert!(two.app_count() > 0, "the changed pool's new server is used");
    assert!(echoed > 20, "the session echoed throughout ({echoed})");

    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            &["switchyard_config_reloads_total", "result=\"success\""]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            &["switchyard_config_reloads_total", "result=\"failure\""]
        ),
        0.0
    );
    assert_ne!(metric_value(&m, &["switchyard_config_hash"]), hash_before);
    assert!(
        metric_value(&m, &["switchyard_config_loaded_timestamp_seconds"])
            >= metric_value(
                &metrics_before,
                &["switchyard_config_loaded_timestamp_seconds"]
            )
    );
    assert_eq!(
        metric_value(
            &m,
            &[
                "switchyard_websocket_sessions_active",
                "site=\"a\"",
                "route=\"ws\""
            ]
        ),
        2.0
    );
}

// ---------------------------------------------------------------------------
// Reloads that fail, and listener changes

#[tokio::test]
async fn failed_reload_changes_nothing() {
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let one = Backend::named("one").await;
    let two = Backend::named("two").await;
    let live = EchoBackend::start().await;
    let site = |b: &Backend| ws_site("a.test", &tls_toml(&crt, &key), &[b], &live, "");
    let cfg = ConfigDir::new(&main_toml(""), &[("a", site(&one))]);
    let proxy = Proxy::start(cfg.load()).await;
    let mut ws = ws_connect(&pki, proxy.https, "a.test", "/ws/").await;
    let hash = proxy.metric(&["switchyard_config_hash"]).await;

    // 1. A broken file: load reports FILE:LINE:COL and nothing is reloaded.
    cfg.write_site("a", "hosts = [\"a.test\"]\nredirect_https = \"yes\"\n");
    let errors = switchyard::config::load(cfg.path()).expect_err("broken config");
    let text = errors.to_string();
    assert!(
        text.contains("sites/a.toml:2:18: expected true or false for redirect_https"),
        "{text}"
    );

    // 2. A valid file the server cannot put into service (a listener address
    // in use), which also changes the pool and adds a site: nothing of it
    // may take effect.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    std::fs::write(
        cfg.path().join("switchyard.toml"),
        format!(
            "[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:0\", \"{taken_addr}\"]\nadmin = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    cfg.write_site("a", &site(&two));
    cfg.write_site(
        "b",
        &format!(
            "hosts = [\"b.test\"]\n[pools.web]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
            two.addr
        ),
    );
    let err = proxy
        .server
        .reload(cfg.load())
        .await
        .expect_err("the address is taken");
    assert!(err.to_string().contains(&taken_addr.to_string()), "{err}");

    for _ in 0..4 {
        let r = https_request(&pki, proxy.https, "a.test", false, get("a.test", "/"))
            .await
            .unwrap();
        assert_eq!(r.body().as_ref(), b"one", "the old pool keeps serving");
    }
    assert_eq!(two.app_count(), 0);
    let r = plain_request(proxy.http, get("b.test", "/")).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the new site is not live"
    );
    assert_eq!(proxy.server.http_addrs().await, vec![proxy.http]);
    echo(&mut ws, "still here").await.unwrap();
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            &["switchyard_config_reloads_total", "result=\"failure\""]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            &["switchyard_config_reloads_total", "result=\"success\""]
        ),
        0.0
    );
    assert_eq!(metric_value(&m, &["switchyard_config_hash"]), hash);
}

/// A free loopback port (bound, then released).
/// One TLS site `a.test`: `/ws/` to an echo backend, the rest to `one`.
struct OneSite {
    pki: Pki,
    cfg: ConfigDir,
    _one: Backend,
    live: EchoBackend,
    proxy: Proxy,
}

/// Starts [`OneSite`] in-process with this switchyard.toml extra text.
async fn one_site(main_extra: &str) -> OneSite {
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let one = Backend::named("one").await;
    let live = EchoBackend::start().await;
    let cfg = ConfigDir::new(
        &main_toml(main_extra),
        &[(
            "a",
            ws_site("a.test", &tls_toml(&crt, &key), &[&one], &live, ""),
        )],
    );
    let proxy = Proxy::start(cfg.load()).await;
    OneSite {
        pki,
        cfg,
        _one: one,
        live,
        proxy,
    }
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn listener_changes_leave_the_others_alone() {
    // Every field is bound: a field left to `..` would be dropped here.
    let OneSite {
        pki,
        cfg,
        _one,
        live: _live,
        proxy,
    } = one_site("").await;
    let mut ws = ws_connect(&pki, proxy.https, "a.test", "/ws/").await;

    // A keep-alive connection on the http listener that will be released.
    let tcp = TcpStream::connect(proxy.http).await.unwrap();
    let (mut old_conn, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = old_conn.send_request(get("a.test", "/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Add a second http listener.
    let added = free_port();
    let main = |http: &str| {
        format!("[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [{http}]\nadmin = \"127.0.0.1:0\"\n")
    };
    std::fs::write(
        cfg.path().join("switchyard.toml"),
        main(&format!("\"127.0.0.1:0\", \"{added}\"")),
    )
    .unwrap();
    proxy.server.reload(cfg.load()).await.unwrap();
    let mut http = proxy.server.http_addrs().await;
    http.sort();
    assert!(
        http.contains(&proxy.http) && http.contains(&added),
        "{http:?}"
    );
    for addr in [proxy.http, added] {
        let r = plain_request(addr, get("a.test", "/")).await.unwrap();
        assert_eq!(r.body().as_ref(), b"one");
    }
    assert_eq!(proxy.server.https_addrs().await, vec![proxy.https]);

    // Release the first one: new connections are refused there, the
    // connection it accepted earlier, the other listeners and the WebSocket
    // carry on.
    std::fs::write(
        cfg.path().join("switchyard.toml"),
        main(&format!("\"{added}\"")),
    )
    .unwrap();
    proxy.server.reload(cfg.load()).await.unwrap();
    assert_eq!(proxy.server.http_addrs().await, vec![added]);
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            if TcpStream::connect(proxy.http).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the released listener closes");
    old_conn.ready().await.unwrap();
    let r = old_conn.send_request(get("a.test", "/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "accepted connections live on");
    let r = plain_request(added, get("a.test", "/")).await.unwrap();
    assert_eq!(r.body().as_ref(), b"one");
    let r = https_request(&pki, proxy.https, "a.test", true, get("a.test", "/"))
        .await
        .unwrap();
    assert_eq!(r.body().as_ref(), b"one");
    echo(&mut ws, "across listener changes").await.unwrap();
    assert_eq!(
        proxy
            .metric(&["switchyard_config_reloads_total", "result=\"success\""])
            .await,
        2.0
    );
}

// ---------------------------------------------------------------------------
// Sessions of removed routes

#[tokio::test]
async fn removed_routes_keep_or_close_their_sessions() {
    let pki = Pki::new();
    let (a_crt, a_key) = pki.leaf("a", &["a.test"]);
    let (k_crt, k_key) = pki.leaf("k", &["k.test"]);
    let web = Backend::named("web").await;
    let mut live = EchoBackend::start().await;
    let mut kept_live = EchoBackend::start().await;
    // Site a closes sessions of removed routes over 2 s; site k keeps them.
    let site = |host: &str, tls: &str, extra: &str, with_ws: bool, live: &EchoBackend| {
        let ws = if with_ws {
            "[[routes]]\nname = \"ws\"\npath = \"/ws/\"\nwebsocket = \"live\"\n"
        } else {
            ""
        };
        format!(
            "hosts = [\"{host}\"]\n{tls}\n{extra}\n[pools.web]\nservers = [\"{}\"]\n[pools.live]\nservers = [\"{}\"]\n\
             [[routes]]\nname = \"stay\"\npath = \"/stay/\"\nwebsocket = \"live\"\n{ws}\
             [[routes]]\nname = \"app\"\npath = \"/\"\npool = \"web\"\n",
            web.addr, live.addr
        )
    };
    let close = "removed_sessions = \"close\"\nclose_window = \"2s\"";
    let a_tls = tls_toml(&a_crt, &a_key);
    let k_tls = tls_toml(&k_crt, &k_key);
    let cfg = ConfigDir::new(
        &main_toml(""),
        &[
            ("a", site("a.test", &a_tls, close, true, &live)),
            ("k", site("k.test", &k_tls, "", true, &kept_live)),
        ],
    );
    let proxy = Proxy::start(cfg.load()).await;
    let mut doomed = Vec::new();
    for _ in 0..5 {
        let mut ws = ws_connect(&pki, proxy.https, "a.test", "/ws/").await;
        echo(&mut ws, "hi").await.unwrap();
        doomed.push(ws);
    }
    let mut stay = ws_connect(&pki, proxy.https, "a.test", "/stay/").await;
    let mut kept = ws_connect(&pki, proxy.https, "k.test", "/ws/").await;
    echo(&mut stay, "hi").await.unwrap();
    echo(&mut kept, "hi").await.unwrap();
    assert_eq!(proxy.server.shared().open_sessions(), 7);

    // Remove the /ws/ route of both sites.
    cfg.write_site("a", &site("a.test", &a_tls, close, false, &live));
    cfg.write_site("k", &site("k.test", &k_tls, "", false, &kept_live));
    let reloaded = Instant::now();
    proxy.server.reload(cfg.load()).await.unwrap();

    // Site a's five sessions close with 1001, at different moments within the window.
    let closes = futures_util::future::join_all(doomed.iter_mut().map(|ws| async {
        let code = expect_close(ws, Duration::from_secs(10)).await;
        (code, reloaded.elapsed())
    }))
    .await;
    let times: Vec<Duration> = closes.iter().map(|(_, t)| *t).collect();
    eprintln!("closed after {times:?}");
    for (code, _) in &closes {
        assert_eq!(*code, 1001);
    }
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(
        *last < Duration::from_secs(2) + WAIT / 2,
        "within the window"
    );
    assert!(
        *last - *first > Duration::from_millis(100),
        "closes are spread over the window: {times:?}"
    );
    for _ in 0..5 {
        assert_eq!(live.next_close().await, Some(1001), "the backend got 1001");
    }

    // The route that stayed, and the other site's removed route, keep relaying.
    echo(&mut stay, "still").await.unwrap();
    echo(&mut kept, "kept").await.unwrap();
    assert!(kept_live.closes.try_recv().is_err());
    assert_eq!(proxy.server.shared().open_sessions(), 2);
    // New upgrades on the removed route are refused (they fall to "/", which has no websocket).
    let tls = tls_connect(&pki, proxy.https, "a.test", &[b"http/1.1"])
        .await
        .unwrap();
    let r = tokio_tungstenite::client_async("wss://a.test/ws/", tls).await;
    assert!(r.is_err(), "no WebSocket on the removed route");
}

// ---------------------------------------------------------------------------
// Drain (in-process): idle connections do not hold it

#[tokio::test]
async fn idle_connections_do_not_hold_the_drain() {
    // Every field is bound: a field left to `..` would be dropped here.
    let OneSite {
        pki,
        cfg: _cfg,
        _one,
        live: _live,
        proxy,
    } = one_site("[timeouts]\ndrain = \"30s\"\nheader = \"30s\"\nidle = \"60s\"").await;

    // An idle HTTP/1.1 keep-alive connection, an idle HTTP/2 connection, and
    // a plain connection that has sent nothing yet.
    let tcp = TcpStream::connect(proxy.http).await.unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let h1_conn = tokio::spawn(conn);
    assert_eq!(
        h1.send_request(get("a.test", "/")).await.unwrap().status(),
        StatusCode::OK
    );
    let tls = tls_connect(&pki, proxy.https, "a.test", &[b"h2"])
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    let h2_conn = tokio::spawn(conn);
    assert_eq!(
        h2.send_request(get("a.test", "/")).await.unwrap().status(),
        StatusCode::OK
    );
    let silent = TcpStream::connect(proxy.http).await.unwrap();
    let silent_tls = TcpStream::connect(proxy.https).await.unwrap();

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), proxy.server.shutdown())
        .await
        .expect("idle connections must not hold the drain");
    eprintln!("drained in {:?}", started.elapsed());
    // Both clients saw their connections end.
    tokio::time::timeout(WAIT, h1_conn)
        .await
        .unwrap()
        .unwrap()
        .ok();
    tokio::time::timeout(WAIT, h2_conn)
        .await
        .unwrap()
        .unwrap()
        .ok();
    drop((silent, silent_tls));
}

// ---------------------------------------------------------------------------
// Metrics

#[tokio::test]
async fn metrics_are_complete_and_pass_promtool() {
    // Every field is bound: a field left to `..` would be dropped here.
    let OneSite {
        pki,
        cfg,
        _one,
        live: _live,
        proxy,
    } = one_site("").await;

    // Some traffic: requests, a WebSocket session, a TLS failure, a reload.
    for _ in 0..3 {
        let r = https_request(&pki, proxy.https, "a.test", false, get("a.test", "/x"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = plain_request(proxy.http, get("nowhere.test", "/"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let mut ws = ws_connect(&pki, proxy.https, "a.test", "/ws/").await;
    echo(&mut ws, "hello").await.unwrap();
    ws.close(None).await.unwrap();
    while tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .is_some()
    {}
    let mut garbage = TcpStream::connect(proxy.https).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read(&mut garbage, &mut [0; 64]),
    )
    .await;
    proxy.server.reload(cfg.load()).await.unwrap();
    // Fold histogram samples into buckets, as the periodic upkeep does.
    proxy.server.metrics().upkeep();
    // The session's end is recorded after its close handshake: wait for it.
    let text = tokio::time::timeout(WAIT, async {
        loop {
            let text = proxy.metrics().await;
            if metric_value(&text, &["switchyard_websocket_sessions_total"]) >= 1.0
                && metric_value(&text, &["switchyard_websocket_sessions_active"]) == 0.0
                && metric_value(&text, &["switchyard_tls_handshake_failures_total"]) >= 1.0
            {
                proxy.server.metrics().upkeep();
                return proxy.metrics().await;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("session and TLS failure recorded");

    let contract: &[(&str, &str, &[&str])] = &[
        (
            "switchyard_requests_total",
            "counter",
            &["site", "route", "method", "status"],
        ),
        (
            "switchyard_request_duration_seconds",
            "histogram",
            &["site", "route"],
        ),
        ("switchyard_pool_queue_depth", "gauge", &["site", "pool"]),
        (
            "switchyard_pool_queue_wait_seconds",
            "histogram",
            &["site", "pool"],
        ),
        (
            "switchyard_pool_rejected_total",
            "counter",
            &["site", "pool", "reason"],
        ),
        (
            "switchyard_upstream_in_flight",
            "gauge",
            &["site", "pool", "server"],
        ),
        (
            "switchyard_upstream_up",
            "gauge",
            &["site", "pool", "server"],
        ),
        (
            "switchyard_websocket_sessions_active",
            "gauge",
            &["site", "route"],
        ),
        (
            "switchyard_websocket_sessions_total",
            "counter",
            &["site", "route"],
        ),
        (
            "switchyard_websocket_frames_total",
            "counter",
            &["site", "route", "direction", "opcode"],
        ),
        (
            "switchyard_websocket_bytes_total",
            "counter",
            &["site", "route", "direction"],
        ),
        (
            "switchyard_websocket_session_duration_seconds",
            "histogram",
            &["site", "route"],
        ),
        ("switchyard_connections_active", "gauge", &["listener"]),
        (
            "switchyard_tls_handshake_failures_total",
            "counter",
            &["listener", "reason"],
        ),
        (
            "switchyard_tls_handshakes_total",
            "counter",
            &["listener", "version", "resumed"],
        ),
        (
            "switchyard_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            &["site"],
        ),
        ("switchyard_config_reloads_total", "counter", &["result"]),
        ("switchyard_config_hash", "gauge", &[]),
        ("switchyard_config_loaded_timestamp_seconds", "gauge", &[]),
    ];
    let mut missing = Vec::new();
    for (name, kind, labels) in contract {
        if !text.contains(&format!("# TYPE {name} {kind}\n")) {
            missing.push(format!("# TYPE {name} {kind}"));
        }
        let sample = if *kind == "histogram" {
            format!("{name}_bucket")
        } else {
            name.to_string()
        };
        let found = text.lines().filter(|l| !l.starts_with('#')).any(|l| {
            let series = l.rsplit_once(' ').map_or(l, |(s, _)| s);
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let keys: Vec<&str> = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                .filter(|k| *k != "le")
                .collect();
            n == sample && keys.len() == labels.len() && labels.iter().all(|k| keys.contains(k))
        });
        if !found {
            missing.push(format!("{sample}{{{}}}", labels.join(",")));
        }
    }
    assert!(
        missing.is_empty(),
        "missing from /metrics: {missing:?}\n{text}"
    );
    for needle in [
        "direction=\"client_to_upstream\"",
        "direction=\"upstream_to_client\"",
        "opcode=\"text\"",
        "opcode=\"close\"",
        "method=\"GET\",status=\"200\"",
        "status=\"404\"",
        "result=\"success\"",
        "result=\"failure\"",
        "version=\"TLSv1.3\",resumed=\"false\"",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }

    promtool_check(&text);
}

fn promtool_check(text: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is required to check /metrics but could not be run ({e}); \
             install the Debian package `prometheus` (apt-get install prometheus)"
        ),
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics failed ({}):\n{report}\n--- metrics ---\n{text}",
        out.status
    );
}

// ---------------------------------------------------------------------------
// The real binary: SIGTERM, SIGINT, SIGHUP and the access log

/// The binary, running, with its output collected line by line.
struct Bin {
    pid: u32,
    exit: Option<tokio::sync::oneshot::Receiver<std::process::ExitStatus>>,
    exited: Arc<std::sync::atomic::AtomicBool>,
    lines: Arc<Mutex<Vec<String>>>,
    seen: watch::Receiver<usize>,
    https: std::net::SocketAddr,
    http: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Drop for Bin {
    fn drop(&mut self) {
        if !self.exited.load(Ordering::SeqCst) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// The address following `prefix` in a log line.
fn addr_after(line: &str, prefix: &str) -> Option<std::net::SocketAddr> {
    let i = line.find(prefix)? + prefix.len();
    let rest: String = line[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    rest.parse().ok()
}

impl Bin {
    async fn start(dir: &Path) -> Bin {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "-c"])
            .arg(dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the binary");
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = watch::channel(0usize);
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, name) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, "out"),
            (Box::new(stderr), "err"),
        ] {
            let lines = lines.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[switchyard {name}] {line}");
                    lines.lock().unwrap().push(line);
                    tx.send_modify(|n| *n += 1);
                }
            });
        }
        let (exit_tx, exit) = tokio::sync::oneshot::channel();
        let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let exited = exited.clone();
            std::thread::spawn(move || {
                if let Ok(status) = child.wait() {
                    exited.store(true, Ordering::SeqCst);
                    let _ = exit_tx.send(status);
                }
            });
        }
        let mut bin = Bin {
            pid,
            exit: Some(exit),
            exited,
            lines,
            seen,
            https: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        // Bound addresses, from the startup log.
        let https = bin.wait_line(|l| l.contains("https://")).await;
        bin.https = addr_after(&https, "https://").unwrap();
        let http = bin.wait_line(|l| l.contains("http://")).await;
        bin.http = addr_after(&http, "http://").unwrap();
        let admin = bin.wait_line(|l| l.contains("admin listening")).await;
        bin.admin = addr_after(&admin, "admin=")
            .or_else(|| addr_after(&admin, "\"admin\":\""))
            .unwrap();
        bin
    }

    /// The first line (seen so far or still to come) matching `pred`.
    async fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                    return l.clone();
                }
                if self.seen.changed().await.is_err() {
                    // Output closed: one last look.
                    return self
                        .lines
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|l| pred(l))
                        .cloned()
                        .unwrap_or_default();
                }
            }
        })
        .await;
        match found {
            Ok(l) if !l.is_empty() => l,
            _ => panic!(
                "expected log line not seen; output:\n{}",
                self.lines.lock().unwrap().join("\n")
            ),
        }
    }

    fn all_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} {}", self.pid);
    }

    /// Waits for the binary to exit and for its output to be read to the
    /// end, so that `all_lines` then holds every line it wrote (the reader
    /// threads can be behind the exit: a CI run once missed the last line).
    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let exit = self.exit.take().expect("wait_exit once");
        let status = tokio::time::timeout(within, exit)
            .await
            .expect("the binary exits in time")
            .expect("exit status");
        // Bounded: each pass sees another line, until both readers end
        // (their senders dropped) at the streams' end.
        let ended =
            tokio::time::timeout(within, async { while self.seen.changed().await.is_ok() {} })
                .await;
        assert!(ended.is_ok(), "the binary's output ends once it has exited");
        status
    }

    async fn admin_get(&self, path: &str) -> Got {
        plain_request(self.admin, get("admin", path)).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_and_closes_websockets() {
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let arrived_tx = Arc::new(Mutex::new(arrived_tx));
    let web = Backend::with(move |seen| {
        let tx = arrived_tx.clone();
        async move {
            if seen.uri.path() == "/slow" {
                let _ = tx.lock().unwrap().send(());
                tokio::time::sleep(Duration::from_millis(1500)).await;
                return Response::new(Full::new(Bytes::from("slow done")));
            }
            Response::new(Full::new(Bytes::from("fast")))
        }
    })
    .await;
    let mut live = EchoBackend::start().await;
    let cfg = ConfigDir::new(
        &main_toml("[timeouts]\ndrain = \"4s\""),
        &[(
            "a",
            ws_site("a.test", &tls_toml(&crt, &key), &[&web], &live, ""),
        )],
    );
    let mut bin = Bin::start(cfg.path()).await;
    assert_eq!(bin.admin_get("/readyz").await.status(), StatusCode::OK);

    let mut ws = ws_connect(&pki, bin.https, "a.test", "/ws/").await;
    echo(&mut ws, "ping me").await.unwrap();
    let r = https_request(&pki, bin.https, "a.test", false, get("a.test", "/fast?q=1"))
        .await
        .unwrap();
    assert_eq!(r.body().as_ref(), b"fast");

    let pki = Arc::new(pki);
    let slow = {
        let pki = pki.clone();
        let addr = bin.https;
        tokio::spawn(async move {
            https_request(&pki, addr, "a.test", true, get("a.test", "/slow")).await
        })
    };
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .expect("the slow request reaches the backend");

    bin.signal("TERM");
    let signalled = Instant::now();
    // /readyz turns 503 at once, while the slow request is still running.
    tokio::time::timeout(WAIT, async {
        while bin.admin_get("/readyz").await.status() != StatusCode::SERVICE_UNAVAILABLE {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("/readyz turns 503");
    assert!(
        !slow.is_finished(),
        "readyz went 503 before in-flight work ended"
    );
    // The listeners stop accepting.
    tokio::time::timeout(WAIT, async {
        while TcpStream::connect(bin.https).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the https listener closes");
    assert!(TcpStream::connect(bin.http).await.is_err());

    // The in-flight request completes.
    let r = tokio::time::timeout(WAIT, slow)
        .await
        .expect("slow request finishes")
        .unwrap()
        .expect("slow request succeeds");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.body().as_ref(), b"slow done");

    // The WebSocket keeps relaying until the drain runs out, then gets 1001.
    echo(&mut ws, "during drain").await.unwrap();
    let code = expect_close(&mut ws, WAIT).await;
    let closed_after = signalled.elapsed();
    assert_eq!(code, 1001);
    assert!(
        closed_after >= Duration::from_secs(3),
        "closed at the drain deadline, not before ({closed_after:?})"
    );
    assert_eq!(
        live.next_close().await,
        Some(1001),
        "the backend got 1001 too"
    );
    let status = bin.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "exit 0 after the drain");
    eprintln!(
        "SIGTERM: WebSocket closed after {closed_after:?}; exited after {:?}",
        signalled.elapsed()
    );

    // Access log: one line per request, one per session.
    let lines = bin.all_lines();
    // Text format quotes string values; compare without the quotes.
    let access: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("switchyard::access"))
        .map(|l| l.replace('"', ""))
        .collect();
    let fast = access
        .iter()
        .find(|l| l.contains("path=/fast"))
        .unwrap_or_else(|| panic!("no access line for /fast:\n{}", lines.join("\n")));
    for field in [
        "site=a",
        "route=app",
        "method=GET",
        "status=200",
        "bytes_sent=4",
        "bytes_received=0",
        "client=127.0.0.1",
        "user_agent=",
        "referer=-",
        "duration_ms=",
        &format!("upstream={}", web.addr),
        "queue_ms=",
    ] {
        assert!(fast.contains(field), "{field} missing in {fast}");
    }
    assert!(
        !fast.contains("q=1"),
        "the query string stays out of the log: {fast}"
    );
    let slow_line = access.iter().find(|l| l.contains("path=/slow")).unwrap();
    assert!(slow_line.contains("status=200"), "{slow_line}");
    let session = access
        .iter()
        .find(|l| l.contains("websocket=true"))
        .unwrap_or_else(|| panic!("no session line:\n{}", lines.join("\n")));
    for field in [
        "site=a",
        "route=ws",
        &format!("upstream={}", live.addr),
        "client=127.0.0.1",
        "path=/ws/",
        "status=101",
        "frames_in=",
        "bytes_received=",
        "frames_out=",
        "bytes_sent=",
        "client_close=1001",
        "upstream_close=1001",
        "end=Shutdown",
    ] {
        assert!(session.contains(field), "{field} missing in {session}");
    }
    assert_eq!(
        access.len(),
        4,
        "one line per request (fast, slow, the upgrade) and per session:\n{}",
        access.join("\n")
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let web = Backend::named("web").await;
    let live = EchoBackend::start().await;
    let cfg = ConfigDir::new(
        &main_toml("[timeouts]\ndrain = \"60s\""),
        &[(
            "a",
            ws_site("a.test", &tls_toml(&crt, &key), &[&web], &live, ""),
        )],
    );
    let mut bin = Bin::start(cfg.path()).await;
    // An open session would hold the drain for 60 s.
    let mut ws = ws_connect(&pki, bin.https, "a.test", "/ws/").await;
    echo(&mut ws, "hi").await.unwrap();
    bin.signal("TERM");
    bin.wait_line(|l| l.contains("draining")).await;
    let second = Instant::now();
    bin.signal("INT");
    let status = bin.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    eprintln!("second signal: exited after {:?}", second.elapsed());
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_config_keeps_serving() {
    let pki = Pki::new();
    let (crt, key) = pki.leaf("a", &["a.test"]);
    let one = Backend::named("one").await;
    let two = Backend::named("two").await;
    let live = EchoBackend::start().await;
    let site = |b: &Backend| ws_site("a.test", &tls_toml(&crt, &key), &[b], &live, "");
    // JSON logs, and a level from the config.
    let cfg = ConfigDir::new(
        &main_toml("[log]\nformat = \"json\"\nlevel = \"info\""),
        &[("a", site(&one))],
    );
    let mut bin = Bin::start(cfg.path()).await;
    let fetch = |addr| {
        let pki = &pki;
        async move {
            let r = https_request(pki, addr, "a.test", false, get("a.test", "/hello"))
                .await
                .unwrap();
            String::from_utf8(r.body().to_vec()).unwrap()
        }
    };
    assert_eq!(fetch(bin.https).await, "one");
    let mut ws = ws_connect(&pki, bin.https, "a.test", "/ws/").await;
    echo(&mut ws, "before").await.unwrap();
    let hash = metric_value(
        std::str::from_utf8(bin.admin_get("/metrics").await.body()).unwrap(),
        &["switchyard_config_hash"],
    );

    // A good change, then SIGHUP.
    cfg.write_site("a", &site(&two));
    bin.signal("HUP");
    bin.wait_line(|l| l.contains("configuration reloaded"))
        .await;
    assert_eq!(fetch(bin.https).await, "two");
    echo(&mut ws, "after reload").await.unwrap();

    // A broken change: reported as FILE:LINE:COL, the old config keeps serving.
    cfg.write_site("a", "hosts = [\"a.test\"]\nredirect_https = \"yes\"\n");
    bin.signal("HUP");
    let error = bin
        .wait_line(|l| l.contains("sites/a.toml:2:18: expected true or false for redirect_https"))
        .await;
    bin.wait_line(|l| l.contains("old configuration keeps serving"))
        .await;
    assert!(error.contains("\"level\":\"ERROR\""), "{error}");
    assert_eq!(fetch(bin.https).await, "two");
    echo(&mut ws, "after failed reload").await.unwrap();

    let m = String::from_utf8(bin.admin_get("/metrics").await.body().to_vec()).unwrap();
    assert_eq!(
        metric_value(
            &m,
            &["switchyard_config_reloads_total", "result=\"success\""]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            &["switchyard_config_reloads_total", "result=\"failure\""]
        ),
        1.0
    );
    assert_ne!(metric_value(&m, &["switchyard_config_hash"]), hash);

    // JSON access lines: one object per line, flat fields.
    let line = bin
        .wait_line(|l| {
            l.contains("\"target\":\"switchyard::access\"") && l.contains("\"path\":\"/hello\"")
        })
        .await;
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    for field in [
        "\"status\":200",
        "\"site\":\"a\"",
        "\"route\":\"app\"",
        "\"method\":\"GET\"",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }

    bin.signal("TERM");
    drop(ws);
    assert_eq!(bin.wait_exit(WAIT).await.code(), Some(0));
}

/// One request over a new TLS 1.3 connection keeping its sessions in
/// `client`; whether the handshake resumed one.
async fn resumed_visit(client: &Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> bool {
    use tokio::io::AsyncReadExt;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("t.test").unwrap();
    let connect = tokio_rustls::TlsConnector::from(client.clone()).connect(name, tcp);
    let mut tls = tokio::time::timeout(WAIT, connect).await.unwrap().unwrap();
    let kind = tls.get_ref().1.handshake_kind();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: t.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // The whole response, and with it the session tickets.
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with(b"HTTP/1.1 502"), "{response:?}");
    kind == Some(rustls::HandshakeKind::Resumed)
}

#[tokio::test]
async fn sighup_rereads_ticket_keys_and_a_bad_key_file_keeps_the_old_ones() {
    let pki = Pki::new();
    let (crt, key) = pki.leaf("t", &["t.test"]);
    let site = format!(
        "hosts = [\"t.test\"]\n{}\n[pools.web]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
        tls_toml(&crt, &key)
    );
    let keys = |list: &str| main_toml(&format!("[tls]\nticket_keys = [{list}]\n"));
    let cfg = ConfigDir::new(&keys("\"k1.key\""), &[("t", site)]);
    std::fs::write(cfg.path().join("k1.key"), [0x11; 80]).unwrap();
    std::fs::write(cfg.path().join("k2.key"), [b'|'; 80]).unwrap();
    let mut bin = Bin::start(cfg.path()).await;
    let client = pki.client_config(&[]);
    assert!(!resumed_visit(&client, bin.https).await);
    assert!(resumed_visit(&client, bin.https).await);

    // k1 rotated out by SIGHUP: its session takes a full handshake.
    std::fs::write(cfg.path().join("switchyard.toml"), keys("\"k2.key\"")).unwrap();
    bin.signal("HUP");
    bin.wait_line(|l| l.contains("configuration reloaded"))
        .await;
    assert!(!resumed_visit(&client, bin.https).await);
    assert!(resumed_visit(&client, bin.https).await, "a k2 session");

    // A key file of the wrong size: reported, and k2 keeps working.
    std::fs::write(cfg.path().join("k3.key"), [b'~'; 79]).unwrap();
    std::fs::write(
        cfg.path().join("switchyard.toml"),
        keys("\"k3.key\", \"k2.key\""),
    )
    .unwrap();
    bin.signal("HUP");
    let error = bin
        .wait_line(|l| l.contains("tls.ticket_keys[0]: ") && l.contains("k3.key is 79 bytes"))
        .await;
    assert!(error.contains("switchyard.toml:"), "{error}");
    bin.wait_line(|l| l.contains("old configuration keeps serving"))
        .await;
    assert!(resumed_visit(&client, bin.https).await, "k2 still accepted");
    let m = String::from_utf8(bin.admin_get("/metrics").await.body().to_vec()).unwrap();
    assert_eq!(
        metric_value(
            &m,
            &["switchyard_config_reloads_total", "result=\"failure\""]
        ),
        1.0
    );
    // Key bytes never reach the output or the metrics (0x33 is '3', 0x22 '"').
    for text in bin.all_lines().iter().chain([&m]) {
        assert!(
            !text.contains("3333") && !text.contains("[34, 34"),
            "{text}"
        );
    }
}
