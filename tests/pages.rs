//! Error pages and per-route response timeouts over real sockets: the
//! site's page for a 502 or 503 the proxy answers itself (headers kept), a
//! backend's own 502 untouched, pages re-read on reload, and a route's
//! `upstream_response` overriding the global one.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

const PAGE_502: &str = "<h1>We will be right back</h1>\n";
const PAGE_503: &str = "<h1>Too busy, try again</h1>\n";
const HTML: &str = "text/html; charset=utf-8";

/// `Held` (common): a backend that answers `late` only once released.
impl Held {
    /// A proxy whose site has the error pages and a pool `held` of this
    /// backend (with `pool_extra`), and these routes.
    async fn proxy(&self, pool_extra: &str, routes: &str) -> (ConfigDir, Proxy) {
        let cfg = config_with_pages(&format!(
            "[pools.held]\nservers = [\"{}\"]\n{pool_extra}\n{routes}",
            self.backend.addr
        ));
        let proxy = Proxy::start(cfg.load()).await;
        (cfg, proxy)
    }

    /// Sends `GET path` to the proxy at `addr`; returns once the backend
    /// holds it, with the task that awaits its response.
    async fn hold(
        &mut self,
        addr: std::net::SocketAddr,
        path: &'static str,
    ) -> tokio::task::JoinHandle<Got> {
        let task =
            tokio::spawn(async move { plain_request(addr, get("p.test", path)).await.unwrap() });
        let seen = tokio::time::timeout(WAIT, self.seen.recv()).await.unwrap();
        assert_eq!(seen.as_deref(), Some(path));
        task
    }
}

/// A port with nothing listening on it.
async fn closed_port() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A config directory whose site `p` (host `p.test`) has `error_pages` for
/// 502 and 503 in `sites/errors/`, and these pools and routes.
fn config_with_pages(pools_and_routes: &str) -> ConfigDir {
    let site = format!(
        "hosts = [\"p.test\"]\nerror_pages = {{ 502 = \"errors/502.html\", 503 = \"errors/503.html\" }}\n{pools_and_routes}"
    );
    let cfg = ConfigDir::new(&main_toml(""), &[]);
    let errors = cfg.path().join("sites/errors");
    std::fs::create_dir_all(&errors).unwrap();
    std::fs::write(errors.join("502.html"), PAGE_502).unwrap();
    std::fs::write(errors.join("503.html"), PAGE_503).unwrap();
    cfg.write_site("p", &site);
    cfg
}

fn content_type(r: &Got) -> &str {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_502_the_proxy_answers_gets_the_page_and_a_backends_own_502_passes() {
    let dead = closed_port().await;
    let own = Backend::with(|_| async {
        let mut r = Response::new(Full::new(Bytes::from("backend says no")));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        r
    })
    .await;
    let cfg = config_with_pages(&format!(
        "[pools.dead]\nservers = [\"{dead}\"]\n[pools.own]\nservers = [\"{}\"]\n[[routes]]\npath = \"/dead/\"\npool = \"dead\"\n[[routes]]\npath = \"/own/\"\npool = \"own\"\n",
        own.addr
    ));
    let proxy = Proxy::start(cfg.load()).await;

    let r = plain_request(proxy.http, get("p.test", "/dead/x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(content_type(&r), HTML);
    assert_eq!(r.body().as_ref(), PAGE_502.as_bytes());

    let r = plain_request(proxy.http, get("p.test", "/own/x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(content_type(&r), "text/plain");
    assert_eq!(r.body().as_ref(), b"backend says no");

    // A status without a page keeps the proxy's own text.
    let r = plain_request(proxy.http, get("p.test", "/nowhere"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(content_type(&r), "text/plain; charset=utf-8");
}

#[tokio::test]
async fn a_503_from_the_queue_gets_the_page_and_keeps_retry_after() {
    let mut held = Held::new().await;
    let routes = "[[routes]]\npath = \"/\"\npool = \"held\"\n";
    let (_cfg, proxy) = held
        .proxy("max_in_flight = 1\nqueue_timeout = \"100ms\"", routes)
        .await;

    // The first request holds the only slot until released.
    let first = held.hold(proxy.http, "/first").await;

    let r = plain_request(proxy.http, get("p.test", "/second"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(content_type(&r), HTML);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    assert_eq!(r.body().as_ref(), PAGE_503.as_bytes());

    held.release.cancel();
    let r = first.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        held.backend.count(),
        1,
        "the queued request never reached the backend"
    );
}

#[tokio::test]
async fn reload_reads_a_changed_page() {
    let dead = closed_port().await;
    let cfg = config_with_pages(&format!(
        "[pools.dead]\nservers = [\"{dead}\"]\n[[routes]]\npath = \"/\"\npool = \"dead\"\n"
    ));
    let proxy = Proxy::start(cfg.load()).await;
    let hash = proxy.metric(&["switchyard_config_hash"]).await;

    let changed = "<h1>Maintenance until noon</h1>\n";
    std::fs::write(cfg.path().join("sites/errors/502.html"), changed).unwrap();
    // Pages are read at load, not per request.
    let r = plain_request(proxy.http, get("p.test", "/")).await.unwrap();
    assert_eq!(r.body().as_ref(), PAGE_502.as_bytes());

    proxy.server.reload(cfg.load()).await.unwrap();
    let r = plain_request(proxy.http, get("p.test", "/")).await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(content_type(&r), HTML);
    assert_eq!(r.body().as_ref(), changed.as_bytes());
    assert_ne!(
        proxy.metric(&["switchyard_config_hash"]).await,
        hash,
        "a changed page changes the configuration hash"
    );
}

#[tokio::test]
async fn a_route_upstream_response_overrides_the_global_timeout() {
    let mut held = Held::new().await;
    let routes = "[[routes]]\npath = \"/\"\npool = \"held\"\n[[routes]]\npath = \"/short/\"\npool = \"held\"\nwebsocket = \"held\"\nupstream_response = \"200ms\"\n";
    let (_cfg, proxy) = held.proxy("", routes).await;

    // On the default route (60s) a request waits for the backend.
    let patient = held.hold(proxy.http, "/slow").await;

    // On the short route, the same backend is too slow: 504.
    let r = plain_request(proxy.http, get("p.test", "/short/x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    // So is a WebSocket handshake on it.
    let upgrade = Request::get("/short/ws")
        .header("host", "p.test")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = plain_request(proxy.http, upgrade).await.unwrap();
    assert_eq!(r.status(), 504);

    // The first request outlived both timeouts and is answered.
    held.release.cancel();
    let r = patient.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().as_ref(), b"late");
}
