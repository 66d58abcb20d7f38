//! WebSocket load generator over TLS (rustls, ring).
//!
//! Echo mode: N sessions, each sends a binary message of SIZE bytes, waits for
//! the echo, and repeats, until DURATION seconds pass or MAX messages were
//! echoed in total. Prints one line of `key=value`:
//!   mode=echo sessions=64 size=128 secs=6.00 messages=... msgs_per_s=...
//!   p50_us=... p99_us=... errors=...
//! (`messages` counts round trips; each is two relayed messages at the proxy.)
//!
//!   bench-ws-load --url wss://127.0.0.1:8443/ws/echo --ca certs/dev-ca.crt \
//!       --sni localhost --sessions 64 --size 128 --duration 6 --max 5000000
//!
//! Hold mode: opens N idle sessions (CONCURRENCY handshakes at a time), prints
//! `ready opened=N failed=M`, then holds them until standard input closes,
//! SIGTERM/SIGINT arrives, or MAX_HOLD seconds pass; then exits.
//!
//!   bench-ws-load --mode hold --sessions 9000 --concurrency 64 --max-hold 120 ...
//!
//! With `--warm BYTES`, each held session first sends one binary message of
//! that size and waits for its echo, so it is held idle after being active.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

struct Target {
    addr: String,
    url: String,
    sni: ServerName<'static>,
    tls: TlsConnector,
    cfg: WebSocketConfig,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn open(t: &Target) -> Result<Ws, String> {
    let tcp = TcpStream::connect(&t.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = t
        .tls
        .connect(t.sni.clone(), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let req = t
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tls, Some(t.cfg))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    Ok(ws)
}

fn main() {
    let args = switchyard_bench_tools::Args::parse();
    let url = args.str("url", "wss://127.0.0.1:8443/ws/echo");
    let rest = url
        .strip_prefix("wss://")
        .expect("--url must start with wss://");
    let (hostport, _path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = hostport.to_string();
    let sni = args.str("sni", "localhost");
    let ca = args.str("ca", "certs/dev-ca.crt");
    let mode = args.str("mode", "echo");
    let sessions: usize = args.num("sessions", 64);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).expect("read --ca") {
        roots.add(c.expect("parse --ca")).expect("add CA");
    }
    let mut cc = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    // tungstenite zero-fills its whole read chunk before every read, so a
    // chunk much larger than a message costs more than the message (a 128
    // KiB chunk was a sixth of this tool's CPU at 128 B). One TLS record
    // (16 KiB) at most; small in hold mode so that 9,000 sessions stay cheap.
    let size: usize = args.num("size", 128);
    let rbuf = if mode == "hold" {
        4096
    } else {
        (size + 64).clamp(4096, 16 * 1024)
    };
    let cfg = WebSocketConfig::default()
        .read_buffer_size(rbuf)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20));
    let t = Arc::new(Target {
        addr,
        url: url.replacen("wss://", "ws://", 1),
        sni: ServerName::try_from(sni).expect("--sni"),
        tls: TlsConnector::from(Arc::new(cc)),
        cfg,
    });

    switchyard_bench_tools::runtime().block_on(async move {
        match mode.as_str() {
            "echo" => echo(&args, t, sessions).await,
            "hold" => hold(&args, t, sessions).await,
            m => {
                eprintln!("unknown --mode {m}");
                std::process::exit(2);
            }
        }
    });
}

async fn echo(args: &switchyard_bench_tools::Args, t: Arc<Target>, sessions: usize) {
    let size: usize = args.num("size", 128);
    let duration: f64 = args.num("duration", 6.0);
    let max: u64 = args.num("max", 10_000_000);
    let payload = Bytes::from(vec![0x5au8; size]);
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(duration);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (t, payload, count, stop, errors) = (
            t.clone(),
            payload.clone(),
            count.clone(),
            stop.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rtts: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut ws = match open(&t).await {
                Ok(ws) => ws,
                Err(e) => {
                    eprintln!("{e}");
                    errors.fetch_add(1, Ordering::Relaxed);
                    return rtts;
                }
            };
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t0 = Instant::now();
                if ws.send(Message::Binary(payload.clone())).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                let ok = loop {
                    match ws.next().await {
                        Some(Ok(Message::Binary(b))) => break b.len() == payload.len(),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => break false,
                    }
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                rtts.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if count.fetch_add(1, Ordering::Relaxed) + 1 >= max {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            let _ = ws.close(None).await;
            rtts
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    for h in tasks {
        if let Ok(v) = h.await {
            all.extend(v);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            0
        } else {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
        }
    };
    println!(
        "mode=echo sessions={sessions} size={size} secs={secs:.2} messages={} msgs_per_s={:.0} p50_us={} p99_us={} errors={}",
        all.len(),
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        errors.load(Ordering::Relaxed)
    );
}

async fn hold(args: &switchyard_bench_tools::Args, t: Arc<Target>, sessions: usize) {
    let concurrency: usize = args.num("concurrency", 64);
    let max_hold: u64 = args.num("max-hold", 120);
    let warm: usize = args.num("warm", 0);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (t, sem) = (t.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            let mut last = String::new();
            for _ in 0..3 {
                match open(&t).await {
                    Ok(mut ws) if warm > 0 => {
                        let echoed = async {
                            ws.send(Message::binary(vec![0x42; warm])).await.ok()?;
                            loop {
                                match ws.next().await? {
                                    Ok(Message::Binary(b)) => return Some(b.len()),
                                    Ok(_) => continue,
                                    Err(_) => return None,
                                }
                            }
                        };
                        match tokio::time::timeout(Duration::from_secs(10), echoed).await {
                            Ok(Some(n)) if n == warm => return Ok(ws),
                            _ => return Err("warm-up message was not echoed".to_string()),
                        }
                    }
                    Ok(ws) => return Ok(ws),
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(last)
        }));
    }
    let mut held = Vec::with_capacity(sessions);
    let mut failed = 0;
    let mut first_err = None;
    for h in tasks {
        match h.await {
            Ok(Ok(ws)) => held.push(ws),
            Ok(Err(e)) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
            Err(_) => failed += 1,
        }
    }
    if let Some(e) = first_err {
        eprintln!("first failure: {e}");
    }
    println!("ready opened={} failed={failed}", held.len());
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = async { while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(Duration::from_secs(max_hold)) => {}
    }
    drop(held);
}
