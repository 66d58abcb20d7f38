//! The demo: switchyard on the example configuration, with the backends it
//! names running in the same process.
//!
//! ```text
//! cargo run --release --example demo [-- -c config]
//! ```
//!
//! - Every pool that routes use for plain requests (`pool = ...`) gets a
//!   synchronous "worker" per server address, like gunicorn sync workers:
//!   each serves one request at a time. In the example configuration that is
//!   `web` on 127.0.0.1:8001 and :8002. They serve `/` (an HTML page naming
//!   the worker, showing the headers it received, with a small chat UI),
//!   `/slow` (one second of work) and `/healthz`.
//! - Every pool that routes use for WebSockets (`websocket = ...`) gets an
//!   async chat server: `live` on 127.0.0.1:9000. It accepts an upgrade on
//!   any path under `/ws/` and broadcasts every text message to every
//!   connected client, the sender included.
//!
//! Only loopback addresses get a demo backend. Ctrl-C (or SIGTERM) drains
//! the proxy and exits; a second one exits at once.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::error::Error;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, broadcast};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: demo [-c, --config DIR]   (default: config)";

/// Request bodies the demo workers accept at most.
const MAX_BODY: usize = 1024 * 1024;

fn parse_args() -> Result<PathBuf, String> {
    let mut dir = PathBuf::from("config");
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-c" | "--config" => dir = it.next().ok_or("-c needs a directory")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(dir)
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn Error>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let dir = match parse_args() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: {e}");
            return Ok(ExitCode::from(2));
        }
    };

    // Load the configuration first: a bad one starts nothing.
    let config = match switchyard::config::load(&dir) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("demo: the configuration in {} is not valid", dir.display());
            return Ok(ExitCode::FAILURE);
        }
    };

    // The backends the configuration names.
    let (workers, sockets) = backend_addrs(&config);
    for (n, addr) in workers.iter().enumerate() {
        let listener = bind(*addr, "sync worker").await?;
        let name = format!("worker {} ({addr})", n + 1);
        tracing::info!(%addr, "demo sync worker {} listening", n + 1);
        tokio::spawn(run_worker(listener, Arc::new(Worker::new(name))));
    }
    for addr in &sockets {
        let listener = bind(*addr, "WebSocket chat server").await?;
        tracing::info!(%addr, "demo WebSocket chat server listening");
        tokio::spawn(run_chat(listener));
    }

    let server = switchyard::Server::start(config)
        .await
        .map_err(|e| format!("cannot start switchyard: {e}"))?;

    let https = server.https_addrs().await;
    let http = server.http_addrs().await;
    let admin = server.admin_addr();
    let cacert = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(
            || PathBuf::from("certs/dev-ca.crt"),
            |p| p.join("certs/dev-ca.crt"),
        );
    println!();
    println!(
        "switchyard demo is running (configuration {})",
        dir.display()
    );
    if let Some(a) = https.first() {
        let url = format!("https://{}:{}/", browser_host(a.ip()), a.port());
        println!("  open       {url}");
        println!(
            "             (trust {} in the browser, or accept the warning)",
            cacert.display()
        );
        println!("  curl       curl --cacert {} {url}", cacert.display());
        println!(
            "  queueing   for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}}\\n' --cacert {} {url}slow & done; wait",
            cacert.display()
        );
    }
    if let Some(a) = http.first() {
        println!("  plain      http://{}:{}/", url_host(a.ip()), a.port());
    }
    if let Some(a) = admin {
        println!(
            "  metrics    http://{}:{}/metrics",
            url_host(a.ip()),
            a.port()
        );
    }
    println!("  stop       Ctrl-C (drains; a second Ctrl-C exits at once)");
    println!();

    shutdown_signal().await;
    tracing::info!("draining: in-flight requests finish, then WebSockets close with 1001");
    tokio::select! {
        () = server.shutdown() => tracing::info!("drained; bye"),
        () = shutdown_signal() => tracing::info!("second signal; exiting now"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Loopback addresses of plain-HTTP pools and of WebSocket pools, each once.
fn backend_addrs(config: &switchyard::Config) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let mut workers = Vec::new();
    let mut sockets = Vec::new();
    for site in &config.sites {
        for route in &site.routes {
            for (index, out) in [(route.pool, &mut workers), (route.websocket, &mut sockets)] {
                let Some(pool) = index.and_then(|i| site.pools.get(i)) else {
                    continue;
                };
                for server in &pool.servers {
                    match server.parse::<SocketAddr>() {
                        Ok(a) if a.ip().is_loopback() => {
                            if !out.contains(&a) {
                                out.push(a);
                            }
                        }
                        // A unix socket is the real backend's (config/sites/django.toml).
                        _ if server.starts_with("unix:") => tracing::info!(
                            site = %site.name,
                            pool = %pool.name,
                            %server,
                            "a unix socket: no demo backend started for it"
                        ),
                        _ => tracing::warn!(
                            site = %site.name,
                            pool = %pool.name,
                            %server,
                            "not a loopback address: no demo backend started for it"
                        ),
                    }
                }
            }
        }
    }
    // An address a WebSocket pool uses is served by the chat server.
    workers.retain(|a| !sockets.contains(a));
    (workers, sockets)
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, Box<dyn Error>> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot start the demo {what} on {addr}: {e} (is another demo still running?)")
            .into()
    })
}

fn browser_host(ip: IpAddr) -> String {
    if ip.is_loopback() || ip.is_unspecified() {
        "localhost".to_owned()
    } else {
        url_host(ip)
    }
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
        IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_owned(),
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

// ---------------------------------------------------------------------------
// The synchronous pool: one request at a time per worker.

struct Worker {
    name: String,
    /// Held for the whole of each request, like a sync worker's single thread.
    busy: Mutex<()>,
}

impl Worker {
    fn new(name: String) -> Self {
        Worker {
            name,
            busy: Mutex::new(()),
        }
    }
}

async fn run_worker(listener: TcpListener, worker: Arc<Worker>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("{}: accept: {e}", worker.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let worker = worker.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let worker = worker.clone();
                async move { Ok::<_, Infallible>(handle(&worker, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("demo worker connection: {e}");
            }
        });
    }
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(worker: &Worker, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let _busy = worker.busy.lock().await;
    let (parts, body) = req.into_parts();
    let body_len = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => {
            return response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain; charset=utf-8",
                format!("{}: request bodies up to {MAX_BODY} bytes\n", worker.name),
            );
        }
    };
    match parts.uri.path() {
        "/healthz" => response(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                format!("{}: that took one second\n", worker.name),
            )
        }
        "/" => response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page(worker, &parts, body_len),
        ),
        path if path.starts_with("/ws/") => response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            format!(
                "{}: a plain request for {path}; WebSocket upgrades here go to the async backend\n",
                worker.name
            ),
        ),
        path => response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("{}: no page at {path}\n", worker.name),
        ),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(worker: &Worker, parts: &hyper::http::request::Parts, body_len: usize) -> String {
    let mut rows = String::new();
    let forwarded: BTreeMap<&str, &str> =
        ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
            .into_iter()
            .map(|h| {
                let v = parts.headers.get(h).and_then(|v| v.to_str().ok());
                (h, v.unwrap_or("(not sent)"))
            })
            .collect();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        let class = if name.as_str().starts_with("x-forwarded-") {
            " class=\"fwd\""
        } else {
            ""
        };
        let _ = writeln!(
            rows,
            "<tr{class}><th>{}</th><td>{}</td></tr>",
            escape(name.as_str()),
            escape(&value)
        );
    }
    let mut summary = String::new();
    for (name, value) in &forwarded {
        let _ = writeln!(
            summary,
            "<li><code>{}</code>: <b>{}</b></li>",
            escape(name),
            escape(value)
        );
    }
    PAGE.replace("{{worker}}", &escape(&worker.name))
        .replace(
            "{{request}}",
            &escape(&format!(
                "{} {} {:?}",
                parts.method, parts.uri, parts.version
            )),
        )
        .replace("{{body_len}}", &body_len.to_string())
        .replace("{{forwarded}}", &summary)
        .replace("{{headers}}", &rows)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>switchyard demo</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.8rem; }
  .worker { background: #eef6ee; border: 1px solid #9c9; padding: .6rem .9rem; border-radius: 6px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  th, td { text-align: left; padding: .2rem .5rem; border-bottom: 1px solid #eee; vertical-align: top; word-break: break-all; }
  th { width: 14rem; font-weight: 600; }
  tr.fwd { background: #fff6dd; }
  #log { height: 14rem; overflow-y: auto; border: 1px solid #ccc; border-radius: 6px; padding: .4rem .6rem; background: #fafafa; font-family: ui-monospace, monospace; font-size: 13px; }
  #log .sys { color: #888; }
  form { display: flex; gap: .5rem; margin-top: .5rem; }
  input { flex: 1; padding: .35rem .5rem; }
</style>
</head>
<body>
<h1>switchyard demo</h1>
<p class="worker">Answered by <b>{{worker}}</b>, a synchronous worker that serves one request at a time.
Requests go to a free worker (the first one when both are idle); <a href="/slow">/slow</a> holds a worker for a second,
so concurrent clients see both workers, then the proxy's queue.</p>

<h2>Forwarded by the proxy</h2>
<ul>
{{forwarded}}</ul>

<h2>Chat over a WebSocket</h2>
<p>The upgrade to <code>/ws/chat</code> goes to the async backend, not to the workers.
Open this page in two tabs and talk to yourself. <span id="state" class="sys">connecting…</span></p>
<div id="log"></div>
<form id="form"><input id="msg" autocomplete="off" placeholder="say something" maxlength="2000"><button>Send</button></form>

<h2>The request as the worker received it</h2>
<p><code>{{request}}</code>, body {{body_len}} bytes</p>
<table>
{{headers}}</table>

<script>
(function () {
  var log = document.getElementById("log");
  var state = document.getElementById("state");
  var form = document.getElementById("form");
  var msg = document.getElementById("msg");
  var ws;
  function line(text, cls) {
    var div = document.createElement("div");
    if (cls) div.className = cls;
    div.textContent = text;
    log.appendChild(div);
    log.scrollTop = log.scrollHeight;
  }
  function connect() {
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/chat";
    ws = new WebSocket(url);
    ws.onopen = function () { state.textContent = "connected to " + url; line("connected", "sys"); };
    ws.onmessage = function (e) { line(e.data); };
    ws.onclose = function (e) {
      state.textContent = "closed (" + e.code + (e.reason ? " " + e.reason : "") + "); reconnecting in 3s";
      line("closed with code " + e.code, "sys");
      setTimeout(connect, 3000);
    };
  }
  form.onsubmit = function (e) {
    e.preventDefault();
    if (ws && ws.readyState === WebSocket.OPEN && msg.value) { ws.send(msg.value); msg.value = ""; }
  };
  connect();
})();
</script>
</body>
</html>
"#;

// ---------------------------------------------------------------------------
// The async backend: a WebSocket chat room.

async fn run_chat(listener: TcpListener) {
    let (room, _) = broadcast::channel::<Message>(256);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("chat server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(chat_client(stream, peer, room.clone()));
    }
}

/// Accepts upgrades under `/ws/` only.
#[allow(clippy::result_large_err)] // the signature tungstenite's handshake callback requires
fn check_path(req: &WsRequest, resp: WsResponse) -> Result<WsResponse, ErrorResponse> {
    if req.uri().path().starts_with("/ws/") {
        return Ok(resp);
    }
    let mut err = ErrorResponse::new(Some(format!(
        "the chat server only accepts WebSockets under /ws/, not {}\n",
        req.uri().path()
    )));
    *err.status_mut() = StatusCode::NOT_FOUND;
    Err(err)
}

async fn chat_client(stream: TcpStream, peer: SocketAddr, room: broadcast::Sender<Message>) {
    let ws = match tokio_tungstenite::accept_hdr_async(stream, check_path).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%peer, "chat handshake failed: {e}");
            return;
        }
    };
    tracing::info!(%peer, "chat: client joined");
    let (mut sink, mut stream) = ws.split();
    let mut inbox = room.subscribe();
    loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(msg @ Message::Text(_))) => {
                    // Every client, the sender included, gets every message.
                    let _ = room.send(msg);
                }
                Some(Ok(Message::Close(frame))) => {
                    tracing::info!(%peer, ?frame, "chat: client left");
                    // tungstenite answers the close handshake itself.
                    let _ = sink.flush().await;
                    return;
                }
                // Pings are answered by tungstenite; binary is ignored.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::info!(%peer, "chat: connection error: {e}");
                    return;
                }
                None => return,
            },
            outgoing = inbox.recv() => match outgoing {
                Ok(msg) => {
                    if sink.send(msg).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = Message::text(format!("(you missed {n} messages)"));
                    if sink.send(note).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
