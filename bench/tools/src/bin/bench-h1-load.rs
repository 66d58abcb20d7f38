//! HTTPS keep-alive GET load generator (HTTP/1.1 over rustls, ring), the
//! shape of `h2load --h1 -c64 -n N` and of wrk's case a, that can open every
//! connection with a PROXY protocol header (v1 text or v2 binary), as an L4
//! load balancer does. wrk and h2load cannot send one.
//!
//! CONNECTIONS connections, each opened (PROXY header, TLS handshake) before
//! any request, then one request in flight per connection until REQUESTS
//! requests were started in total or DURATION seconds passed. Only
//! 127.0.0.1 is accepted as a target. Prints one line of `key=value`:
//!   mode=h1 proxy_header=v1 connections=64 secs=2.01 requests=5000
//!   succeeded=5000 failed=0 errors=0 req_per_s=... p50_us=... p99_us=...
//! (`failed`: responses other than 200; `errors`: connections that failed.)
//!
//!   bench-h1-load --addr 127.0.0.1:28443 --ca certs/dev-ca.crt --sni localhost \
//!       --connections 64 --requests 5000 --duration 60 --proxy-header v1
//!
//! The header says the client is `--proxy-source` (default 192.0.2.7, a
//! documentation address; port 20000 + the connection's number) and the
//! destination is the target. No packet goes to that address: it is only
//! text (v1) or bytes (v2) inside the connection to 127.0.0.1.

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProxyHeader {
    None,
    V1,
    V2,
}

struct Target {
    addr: SocketAddr,
    sni: ServerName<'static>,
    tls: TlsConnector,
    request: Vec<u8>,
    proxy_header: ProxyHeader,
    source: Ipv4Addr,
}

struct Shared {
    /// Requests started (tickets taken), successful and not.
    started: AtomicU64,
    max: u64,
    deadline: Instant,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

/// The PROXY header for a connection from `src` to `dst`.
fn proxy_header(kind: ProxyHeader, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    match kind {
        ProxyHeader::None => Vec::new(),
        ProxyHeader::V1 => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
        .into_bytes(),
        ProxyHeader::V2 => {
            let mut h = V2_SIGNATURE.to_vec();
            // Version 2, PROXY; TCP over IPv4; 12 bytes of addresses.
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&src.ip().octets());
            h.extend_from_slice(&dst.ip().octets());
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more of the stream into `buf`; an error at the end of the stream.
async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.reserve(16 * 1024);
    match s.read_buf(buf).await {
        Ok(0) => Err("connection closed".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Reads one response (head and a Content-Length body) from `s`, `buf`
/// holding what was read ahead. Returns its status and whether the server
/// closes the connection after it.
async fn response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(u16, bool), String> {
    let head_len = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        fill(s, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| "response head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported".into());
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let total = head_len + length.ok_or("response without Content-Length")?;
    while buf.len() < total {
        fill(s, buf).await?;
    }
    buf.drain(..total);
    Ok((status, close))
}

/// One connection: open it, then requests until the tickets or the time run out.
async fn connection(t: &Target, sh: &Shared, n: usize, rtts: &mut Vec<u32>) -> Result<(), String> {
    let mut tcp = TcpStream::connect(t.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if t.proxy_header != ProxyHeader::None {
        let SocketAddr::V4(dst) = t.addr else {
            unreachable!("the target is 127.0.0.1")
        };
        let src = SocketAddrV4::new(t.source, 20000u16.wrapping_add(n as u16));
        tcp.write_all(&proxy_header(t.proxy_header, src, dst))
            .await
            .map_err(|e| format!("PROXY header: {e}"))?;
    }
    let mut tls = t
        .tls
        .connect(t.sni.clone(), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        if Instant::now() >= sh.deadline || sh.started.fetch_add(1, Ordering::Relaxed) >= sh.max {
            break;
        }
        let t0 = Instant::now();
        tls.write_all(&t.request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.flush().await.map_err(|e| format!("flush: {e}"))?;
        let (status, close) = response(&mut tls, &mut buf).await?;
        rtts.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if status == 200 {
            sh.succeeded.fetch_add(1, Ordering::Relaxed);
        } else {
            sh.failed.fetch_add(1, Ordering::Relaxed);
        }
        if close {
            return Err("the server closed the connection".into());
        }
    }
    let _ = tls.shutdown().await;
    Ok(())
}

fn main() {
    let args = switchyard_bench_tools::Args::parse();
    let addr: SocketAddr = args
        .str("addr", "127.0.0.1:28443")
        .parse()
        .unwrap_or_else(|_| {
            eprintln!("--addr: expected 127.0.0.1:PORT");
            std::process::exit(2);
        });
    if addr.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) {
        eprintln!("--addr: only 127.0.0.1 is allowed as a target");
        std::process::exit(2);
    }
    let sni = args.str("sni", "localhost");
    let ca = args.str("ca", "certs/dev-ca.crt");
    let path = args.str("path", "/");
    let connections: usize = args.num("connections", 64);
    let max: u64 = args.num("requests", 10_000);
    let duration: f64 = args.num("duration", 10.0);
    let source: Ipv4Addr = args.num("proxy-source", Ipv4Addr::new(192, 0, 2, 7));
    let kind = match args.str("proxy-header", "none").as_str() {
        "none" => ProxyHeader::None,
        "v1" => ProxyHeader::V1,
        "v2" => ProxyHeader::V2,
        other => {
            eprintln!("--proxy-header: expected v1, v2 or none, found {other:?}");
            std::process::exit(2);
        }
    };
    if !(0.0..=3600.0).contains(&duration) || connections == 0 || connections > 10_000 {
        eprintln!("--duration must be 0-3600 s and --connections 1-10000");
        std::process::exit(2);
    }

    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).expect("read --ca") {
        roots.add(c.expect("parse --ca")).expect("add CA");
    }
    let mut cc = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let host = match addr.port() {
        443 => sni.clone(),
        p => format!("{sni}:{p}"),
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-h1-load\r\n\r\n");
    let t = Arc::new(Target {
        addr,
        sni: ServerName::try_from(sni).expect("--sni"),
        tls: TlsConnector::from(Arc::new(cc)),
        request: request.into_bytes(),
        proxy_header: kind,
        source,
    });
    let start = Instant::now();
    let sh = Arc::new(Shared {
        started: AtomicU64::new(0),
        max,
        deadline: start + Duration::from_secs_f64(duration),
        succeeded: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    // Past this, a connection still waiting (on a handshake or a response)
    // is given up.
    let hard = tokio::time::Instant::from_std(sh.deadline + Duration::from_secs(10));

    let shared = sh.clone();
    let (rtts, errors) = switchyard_bench_tools::runtime().block_on(async move {
        let sh = shared;
        let mut tasks = Vec::new();
        for n in 0..connections {
            let (t, sh) = (t.clone(), sh.clone());
            tasks.push(tokio::spawn(async move {
                let mut rtts = Vec::with_capacity(1024);
                let r = match tokio::time::timeout_at(hard, connection(&t, &sh, n, &mut rtts)).await
                {
                    Ok(r) => r,
                    Err(_) => Err("timed out".to_string()),
                };
                if let Err(e) = &r {
                    eprintln!("connection {n}: {e}");
                }
                (rtts, r.is_err())
            }));
        }
        let mut all: Vec<u32> = Vec::new();
        let mut errors = 0u64;
        for h in tasks {
            match h.await {
                Ok((v, err)) => {
                    all.extend(v);
                    errors += u64::from(err);
                }
                Err(_) => errors += 1,
            }
        }
        (all, errors)
    });
    let secs = start.elapsed().as_secs_f64();
    let mut rtts = rtts;
    rtts.sort_unstable();
    let pct = |p: f64| -> u32 {
        if rtts.is_empty() {
            0
        } else {
            rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)]
        }
    };
    let succeeded = sh.succeeded.load(Ordering::Relaxed);
    let failed = sh.failed.load(Ordering::Relaxed);
    println!(
        "mode=h1 proxy_header={} connections={connections} secs={secs:.2} requests={} succeeded={succeeded} failed={failed} errors={errors} req_per_s={:.0} p50_us={} p99_us={}",
        match kind {
            ProxyHeader::None => "none",
            ProxyHeader::V1 => "v1",
            ProxyHeader::V2 => "v2",
        },
        succeeded + failed,
        (succeeded + failed) as f64 / secs,
        pct(0.50),
        pct(0.99),
    );
}
