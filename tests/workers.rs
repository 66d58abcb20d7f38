//! Workers (issue 20): connections spread over two single-threaded
//! runtimes, with what must stay global still global: one
//! `max_in_flight = 1` server never sees two requests at once and its queue
//! stays FIFO when the clients sit on different workers; a reload and a
//! drain reach connections on every worker; the gauges come back exact.
//! Every wait is bounded by `common::WAIT`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use switchyard::workers::Workers;
use tokio::sync::Semaphore;

const HOST: &str = "w.test";

fn site_toml(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "hosts = [\"{HOST}\"]\n[pools.web]\nservers = [\"{backend}\"]\nmax_in_flight = 1\n\
         queue_timeout = \"10s\"\n{extra}\n[[routes]]\npath = \"/\"\npool = \"web\"\n"
    )
}

/// A kept-alive HTTP/1.1 connection to the proxy's plain listener, and
/// its task (which ends when the proxy closes it).
async fn connect_with_task(
    proxy: &Proxy,
) -> (SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

async fn connect(proxy: &Proxy) -> SendRequest<Full<Bytes>> {
    connect_with_task(proxy).await.0
}

async fn get_on(send: &mut SendRequest<Full<Bytes>>, path: &str) -> (u16, Bytes) {
    let req = http::Request::get(path)
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let one = async {
        send.ready().await.unwrap();
        let r = send.send_request(req).await.unwrap();
        let status = r.status().as_u16();
        (status, r.into_body().collect().await.unwrap().to_bytes())
    };
    tokio::time::timeout(WAIT, one)
        .await
        .expect("an answer within WAIT")
}

#[tokio::test]
async fn one_slot_is_shared_fifo_by_clients_on_both_workers() {
    const N: usize = 12;
    // The backend answers only when the test lets it, and records what it
    // saw in order and how many it ever held at once.
    let gate = Arc::new(Semaphore::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let backend = {
        let (gate, order, now, most) = (gate.clone(), order.clone(), now.clone(), most.clone());
        Backend::with(move |seen| {
            let (gate, order, now, most) = (gate.clone(), order.clone(), now.clone(), most.clone());
            async move {
                let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(held, Ordering::SeqCst);
                order.lock().unwrap().push(seen.uri.path().to_owned());
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                now.fetch_sub(1, Ordering::SeqCst);
                Response::new(Full::new(Bytes::from("ok")))
            }
        })
        .await
    };
    let cfg = ConfigDir::new(&main_toml(""), &[("w", site_toml(backend.addr, ""))]);
    let workers = Workers::start(2).unwrap();
    let proxy = Proxy::start_on(cfg.load(), Some(workers.clone())).await;
    // One connection per client, each held open: they alternate workers.
    let mut conns = Vec::new();
    for _ in 0..N {
        conns.push(connect(&proxy).await);
    }
    let open = proxy
        .metric_until(&["switchyard_connections_active", "http://"], WAIT, |v| {
            v == N as f64
        })
        .await;
    assert_eq!(open, N as f64);
    assert_eq!(workers.open_connections(), vec![N / 2, N / 2], "spread");
    // Request i is sent once request i-1 is in the backend or queued, so
    // the order they reach the queue is known; it must be the served order.
    let mut tasks = Vec::new();
    for (i, mut send) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            get_on(&mut send, &format!("/{i}")).await
        }));
        let want = i as f64;
        let depth = proxy
            .metric_until(
                &["switchyard_pool_queue_depth", "pool=\"web\""],
                WAIT,
                |v| v == want,
            )
            .await;
        assert_eq!(depth, want, "request {i} queued behind the others");
    }
    gate.add_permits(N);
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!((status, body.as_ref()), (200, &b"ok"[..]));
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "two requests at once");
    let want: Vec<String> = (0..N).map(|i| format!("/{i}")).collect();
    assert_eq!(*order.lock().unwrap(), want, "served out of arrival order");
    let m = proxy.metrics().await;
    for gauge in [
        &["switchyard_pool_queue_depth", "pool=\"web\""][..],
        &["switchyard_upstream_in_flight", "pool=\"web\""],
    ] {
        assert_eq!(metric_value(&m, gauge), 0.0, "{gauge:?}");
    }
    // Counted on both workers, folded into one exact series per label set.
    let served = proxy
        .metric_until(
            &["switchyard_requests_total", "status=\"200\""],
            WAIT,
            |v| v == N as f64,
        )
        .await;
    assert_eq!(served, N as f64);
    let timed = proxy
        .metric(&["switchyard_request_duration_seconds_count", "site=\"w\""])
        .await;
    assert_eq!(timed, N as f64);
    // The clients are gone (dropped with their tasks): the gauge is back to 0.
    let open = proxy
        .metric_until(&["switchyard_connections_active", "http://"], WAIT, |v| {
            v == 0.0
        })
        .await;
    assert_eq!(open, 0.0);
}

#[tokio::test]
async fn reload_and_drain_reach_connections_on_every_worker() {
    let backend = Backend::named("OLD").await;
    let cfg = ConfigDir::new(&main_toml(""), &[("w", site_toml(backend.addr, ""))]);
    let workers = Workers::start(2).unwrap();
    let proxy = Proxy::start_on(cfg.load(), Some(workers.clone())).await;
    let (a, a_task) = connect_with_task(&proxy).await;
    let (b, b_task) = connect_with_task(&proxy).await;
    let mut conns = vec![a, b];
    for c in &mut conns {
        let (status, body) = get_on(c, "/").await;
        assert_eq!((status, body.as_ref()), (200, &b"OLD"[..]));
    }
    assert_eq!(workers.open_connections(), vec![1, 1]);
    let before = backend.count();
    // A reload that points the pool elsewhere: both kept-alive connections
    // see the new configuration on their next request.
    let other = Backend::named("NEW").await;
    cfg.write_site("w", &site_toml(other.addr, ""));
    proxy.server.reload(cfg.load()).await.expect("reload");
    for c in &mut conns {
        let (status, body) = get_on(c, "/").await;
        assert_eq!((status, body.as_ref()), (200, &b"NEW"[..]));
    }
    assert_eq!(
        backend.count(),
        before,
        "the old pool got nothing after the reload"
    );
    // A drain closes the idle kept-alive connections on both workers.
    tokio::time::timeout(WAIT, proxy.server.shutdown())
        .await
        .expect("the drain ends within WAIT");
    for task in [a_task, b_task] {
        let closed = tokio::time::timeout(WAIT, task).await;
        assert!(
            closed.is_ok(),
            "a connection on a worker outlived the drain"
        );
    }
    // Each worker counts its connection closed (bounded: the tasks end
    // as their sockets close).
    for _ in 0..10_000 {
        if workers.open_connections() == [0, 0] {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(workers.open_connections(), vec![0, 0]);
}
