//! The synchronous pool over real sockets: per-server admission, the FIFO
//! queue, queue timeouts, cancellation, health, retries, and buffering that
//! keeps slow clients off the workers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend like a gunicorn sync worker: one request at a time. Records
/// the highest concurrency it ever saw.
struct SyncWorker {
    backend: Backend,
    max_seen: Arc<AtomicUsize>,
}

async fn sync_worker_on(listener: TcpListener, delay: Duration, body_len: usize) -> SyncWorker {
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    let now = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let (n2, m2) = (now.clone(), max_seen.clone());
    let backend = Backend::on(listener, move |_| {
        let (lock, now, max_seen) = (lock.clone(), n2.clone(), m2.clone());
        async move {
            let c = now.fetch_add(1, Ordering::SeqCst) + 1;
            max_seen.fetch_max(c, Ordering::SeqCst);
            let _g = lock.lock().await;
            tokio::time::sleep(delay).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Response::new(Full::new(Bytes::from(vec![b'w'; body_len])))
        }
    });
    SyncWorker { backend, max_seen }
}

async fn sync_worker(delay: Duration) -> SyncWorker {
    sync_worker_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), delay, 2).await
}

struct Site {
    _cfg: ConfigDir,
    proxy: Proxy,
}

async fn site(servers: &[std::net::SocketAddr], pool_extra: &str, main_extra: &str) -> Site {
    let list = servers
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "hosts = [\"p.test\"]\n[pools.web]\nservers = [{list}]\n{pool_extra}\n[[routes]]\npath = \"/\"\npool = \"web\"\n"
    );
    let cfg = ConfigDir::new(&main_toml(main_extra), &[("p", text)]);
    let proxy = Proxy::start(cfg.load()).await;
    Site { _cfg: cfg, proxy }
}

#[tokio::test]
async fn twenty_requests_to_one_slot_all_succeed_one_at_a_time() {
    let w = sync_worker(Duration::from_millis(100)).await;
    let s = site(
        &[w.backend.addr],
        "max_in_flight = 1\nqueue_timeout = \"10s\"",
        "",
    )
    .await;
    let addr = s.proxy.http;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move { plain_request(addr, get("p.test", &format!("/{i}"))).await })
        })
        .collect();
    let depth = s
        .proxy
        .metric_until(
            &["switchyard_pool_queue_depth", "pool=\"web\""],
            WAIT,
            |v| v >= 5.0,
        )
        .await;
    assert!(depth >= 5.0, "queue depth rose to {depth}");
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(
        w.max_seen.load(Ordering::SeqCst),
        1,
        "the backend saw two at once"
    );
    assert_eq!(w.backend.count(), 20);
    let m = s.proxy.metrics().await;
    assert_eq!(
        metric_value(&m, &["switchyard_pool_queue_depth", "pool=\"web\""]),
        0.0
    );
    assert_eq!(
        metric_value(&m, &["switchyard_upstream_in_flight", "pool=\"web\""]),
        0.0
    );
    assert!(
        metric_value(
            &m,
            &["switchyard_pool_queue_wait_seconds_count", "pool=\"web\""]
        ) >= 1.0
    );
}

#[tokio::test]
async fn queue_timeout_answers_503_with_retry_after_and_max_queue_bounds_it() {
    let w = sync_worker(Duration::from_millis(300)).await;
    let s = site(
        &[w.backend.addr],
        "max_in_flight = 1\nqueue_timeout = \"100ms\"\nmax_queue = 2",
        "",
    )
    .await;
    let addr = s.proxy.http;
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(async move {
                plain_request(addr, get("p.test", &format!("/{i}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status() == 503 {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        5,
        "{statuses:?}"
    );
    let m = s.proxy.metrics().await;
    let timeouts = metric_value(
        &m,
        &["switchyard_pool_rejected_total", "reason=\"queue_timeout\""],
    );
    let full = metric_value(
        &m,
        &["switchyard_pool_rejected_total", "reason=\"queue_full\""],
    );
    assert_eq!(timeouts + full, 5.0);
    assert!(full >= 1.0, "max_queue = 2 must turn some away at once");
}

#[tokio::test]
async fn a_client_that_hangs_up_while_queued_never_reaches_the_backend() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let backend = Backend::with(move |_| {
        let mut rx = release_rx.clone();
        async move {
            let _ = tokio::time::timeout(WAIT, rx.wait_for(|v| *v)).await;
            Response::new(Full::new(Bytes::from("done")))
        }
    })
    .await;
    let s = site(
        &[backend.addr],
        "max_in_flight = 1\nqueue_timeout = \"10s\"",
        "",
    )
    .await;
    let addr = s.proxy.http;
    let first = tokio::spawn(async move { plain_request(addr, get("p.test", "/first")).await });
    s.proxy
        .metric_until(
            &["switchyard_upstream_in_flight", "pool=\"web\""],
            WAIT,
            |v| v == 1.0,
        )
        .await;
    // Second client queues, then hangs up.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /second HTTP/1.1\r\nHost: p.test\r\n\r\n")
        .await
        .unwrap();
    let d = s
        .proxy
        .metric_until(
            &["switchyard_pool_queue_depth", "pool=\"web\""],
            WAIT,
            |v| v == 1.0,
        )
        .await;
    assert_eq!(d, 1.0);
    drop(tcp);
    let d = s
        .proxy
        .metric_until(
            &["switchyard_pool_queue_depth", "pool=\"web\""],
            WAIT,
            |v| v == 0.0,
        )
        .await;
    assert_eq!(d, 0.0, "the hung-up request left the queue");
    release_tx.send(true).unwrap();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    // One more request proves the slot is free and was not taken by the ghost.
    assert_eq!(
        plain_request(addr, get("p.test", "/third"))
            .await
            .unwrap()
            .status(),
        200
    );
    let paths: Vec<String> = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect();
    assert_eq!(paths, ["/first", "/third"]);
}

#[tokio::test]
async fn a_killed_server_is_skipped_marked_down_and_back_up_when_it_returns() {
    let a = sync_worker(Duration::from_millis(1)).await;
    let b_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = b_listener.local_addr().unwrap();
    let b = sync_worker_on(b_listener, Duration::from_millis(1), 2).await;
    let s = site(
        &[a.backend.addr, b_addr],
        "max_in_flight = 4\nhealth = { path = \"/healthz\", interval = \"50ms\", timeout = \"200ms\", rise = 1, fall = 1 }",
        "",
    )
    .await;
    let addr = s.proxy.http;
    for i in 0..10 {
        assert_eq!(
            plain_request(addr, get("p.test", &format!("/{i}")))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    drop(b);
    // GETs keep succeeding: a refused connect is retried on the other server.
    for i in 0..20 {
        assert_eq!(
            plain_request(addr, get("p.test", &format!("/k{i}")))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let up = format!("server=\"{b_addr}\"");
    let v = s
        .proxy
        .metric_until(&["switchyard_upstream_up", &up], WAIT, |v| v == 0.0)
        .await;
    assert_eq!(v, 0.0);
    // POSTs are never retried: with the dead server still listed but down,
    // they all go to the live one; none is sent twice.
    let before = a.backend.app_count();
    for i in 0..5 {
        let req = http::Request::post(format!("/post{i}"))
            .header("host", "p.test")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        assert_eq!(plain_request(addr, req).await.unwrap().status(), 200);
    }
    assert_eq!(a.backend.app_count(), before + 5);
    // Back on the same port: the health check brings it back.
    let b_again = sync_worker_on(
        TcpListener::bind(b_addr).await.unwrap(),
        Duration::from_millis(1),
        2,
    )
    .await;
    let v = s
        .proxy
        .metric_until(&["switchyard_upstream_up", &up], WAIT, |v| v == 1.0)
        .await;
    assert_eq!(v, 1.0);
    for i in 0..10 {
        assert_eq!(
            plain_request(addr, get("p.test", &format!("/r{i}")))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert!(
        b_again.backend.app_count() > 0,
        "the recovered server gets traffic"
    );
}

#[tokio::test]
async fn post_is_not_retried_on_a_refused_connect() {
    let a = sync_worker(Duration::from_millis(1)).await;
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let s = site(&[dead, a.backend.addr], "max_in_flight = 4", "").await;
    let mut got = Vec::new();
    for i in 0..4 {
        let req = http::Request::post(format!("/p{i}"))
            .header("host", "p.test")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        got.push(
            plain_request(s.proxy.http, req)
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    // The first POST lands on the dead server (round-robin start) and gets
    // 502; after that the server is in passive backoff and skipped.
    assert!(got.contains(&502), "{got:?}");
    assert_eq!(a.backend.count(), got.iter().filter(|s| **s == 200).count());
}

#[tokio::test]
async fn every_server_down_answers_502_at_once() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let s = site(&[dead], "max_in_flight = 1\nqueue_timeout = \"30s\"", "").await;
    assert_eq!(
        plain_request(s.proxy.http, get("p.test", "/"))
            .await
            .unwrap()
            .status(),
        502
    );
    // Now in backoff: refused by the pool without waiting for the queue timeout.
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(WAIT, plain_request(s.proxy.http, get("p.test", "/"))).await;
    assert_eq!(r.unwrap().unwrap().status(), 502);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        s.proxy
            .metric(&[
                "switchyard_pool_rejected_total",
                "reason=\"no_healthy_server\""
            ])
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_slow_reader_does_not_hold_the_only_slot() {
    // One slot; responses of 2 MiB (beyond the in-memory limit, so the
    // proxy spills to disk).
    let w = sync_worker_on(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Duration::from_millis(1),
        2 << 20,
    )
    .await;
    let s = site(
        &[w.backend.addr],
        "max_in_flight = 1\nqueue_timeout = \"2s\"",
        "",
    )
    .await;
    // A client reading at about 10 KiB/s.
    let mut slow = tokio::net::TcpStream::connect(s.proxy.http).await.unwrap();
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: p.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, slow.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // While it dawdles, another client is served by the same single slot.
    let fast = tokio::spawn({
        let addr = s.proxy.http;
        async move { plain_request(addr, get("p.test", "/fast")).await }
    });
    let mut slow_read = n;
    let paced = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => slow_read += n,
            }
        }
    };
    tokio::select! {
        r = fast => assert_eq!(r.unwrap().unwrap().status(), 200),
        () = paced => panic!("slow reader finished first"),
        () = tokio::time::sleep(WAIT) => panic!("the fast request waited behind the slow reader"),
    }
    assert!(
        slow_read < (1 << 20),
        "the slow reader was still reading ({slow_read} bytes)"
    );
}

#[tokio::test]
async fn request_bodies_over_max_body_get_413_and_never_reach_the_pool() {
    let w = sync_worker(Duration::from_millis(1)).await;
    let s = site(&[w.backend.addr], "max_body = \"1KiB\"", "").await;
    let req = http::Request::post("/up")
        .header("host", "p.test")
        .body(Full::new(Bytes::from(vec![0u8; 2048])))
        .unwrap();
    assert_eq!(
        plain_request(s.proxy.http, req).await.unwrap().status(),
        413
    );
    // Chunked (no length up front): refused once it passes the limit.
    let mut tcp = tokio::net::TcpStream::connect(s.proxy.http).await.unwrap();
    let mut raw =
        b"POST /up HTTP/1.1\r\nHost: p.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'a'; 512]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    tcp.write_all(&raw).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(w.backend.count(), 0);
}

/// A server that reads a request head and hangs up without answering, like
/// a worker killed mid-request.
async fn dies_mid_request() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                // Dropping the socket closes it before any status line.
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_get_cut_off_before_the_status_line_is_retried_once_but_a_post_is_not() {
    let (dying, dying_seen) = dies_mid_request().await;
    let good = sync_worker(Duration::from_millis(1)).await;
    // The dying server is listed first, so round-robin tries it first.
    let s = site(&[dying, good.backend.addr], "max_in_flight = 4", "").await;
    let r = plain_request(s.proxy.http, get("p.test", "/get"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the GET was retried on the other server");
    assert_eq!(dying_seen.load(Ordering::SeqCst), 1);
    assert_eq!(good.backend.app_count(), 1);

    // A fresh proxy so round-robin starts on the dying server again.
    let s = site(&[dying, good.backend.addr], "max_in_flight = 4", "").await;
    let req = http::Request::post("/post")
        .header("host", "p.test")
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let r = plain_request(s.proxy.http, req).await.unwrap();
    assert_eq!(r.status(), 502, "a POST is never retried");
    assert_eq!(dying_seen.load(Ordering::SeqCst), 2);
    assert_eq!(good.backend.app_count(), 1);
}

/// A server that sends a status line and part of a fixed-length body, then
/// hangs up, like a worker killed while writing its response.
async fn dies_mid_body() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_buffered_response_cut_mid_body_is_never_shown_as_complete() {
    let dying = dies_mid_body().await;
    let good = sync_worker(Duration::from_millis(1)).await;
    // Nothing reached the client yet, so an idempotent GET is retried.
    let s = site(&[dying, good.backend.addr], "max_in_flight = 4", "").await;
    let r = plain_request(s.proxy.http, get("p.test", "/get"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "ww");
    // With nowhere to retry, the client gets a clean 502, not a short 200.
    let s = site(&[dying], "", "").await;
    let r = plain_request(s.proxy.http, get("p.test", "/get"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
}
