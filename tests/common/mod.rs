//! Shared test harness: a test CA and site certificates, config directories
//! on disk, recording hyper backends, and TLS clients that trust the test CA.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Bound on every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A certificate authority and the leaf certificates it signed.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_der = cert.der().clone();
        let ca = rcgen::Issuer::new(params, key);
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_der,
        }
    }

    /// Writes `NAME.crt` and `NAME.key` for these host names; returns their paths.
    pub fn leaf(&self, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let crt = self.dir.path().join(format!("{name}.crt"));
        let keyp = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&keyp, key.serialize_pem()).unwrap();
        (crt, keyp)
    }

    /// A rustls client config trusting this CA, offering these ALPN protocols.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        self.client_config_for(rustls::DEFAULT_VERSIONS, alpn)
    }

    /// A rustls client config trusting this CA, speaking only these TLS
    /// versions and offering these ALPN protocols.
    pub fn client_config_for(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// A config directory on disk.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    /// `main` is switchyard.toml; `sites` are (name, text).
    pub fn new(main: &str, sites: &[(&str, String)]) -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("switchyard.toml"), main).unwrap();
        std::fs::create_dir(dir.path().join("sites")).unwrap();
        for (name, text) in sites {
            std::fs::write(dir.path().join("sites").join(format!("{name}.toml")), text).unwrap();
        }
        ConfigDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write_site(&self, name: &str, text: &str) {
        std::fs::write(
            self.dir.path().join("sites").join(format!("{name}.toml")),
            text,
        )
        .unwrap();
    }

    pub fn load(&self) -> switchyard::Config {
        match switchyard::config::load(self.path()) {
            Ok(c) => c,
            Err(e) => panic!("config failed to load:\n{e}"),
        }
    }
}

/// switchyard.toml listening on ephemeral loopback ports.
pub fn main_toml(extra: &str) -> String {
    format!(
        "[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n{extra}\n"
    )
}

/// A TOML inline table naming a cert and key by absolute path.
pub fn tls_toml(crt: &Path, key: &Path) -> String {
    format!(
        "tls = {{ cert = {:?}, key = {:?} }}",
        crt.display().to_string(),
        key.display().to_string()
    )
}

/// A running proxy and its addresses.
pub struct Proxy {
    pub server: Arc<switchyard::Server>,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    pub async fn start(config: switchyard::Config) -> Proxy {
        Self::start_on(config, None).await
    }

    /// As `start`, with connections spread over `workers`.
    pub async fn start_on(
        config: switchyard::Config,
        workers: Option<Arc<switchyard::workers::Workers>>,
    ) -> Proxy {
        let server = switchyard::Server::start_on(config, workers).await.unwrap();
        let https = server.https_addrs().await[0];
        let http = server.http_addrs().await[0];
        let admin = server.admin_addr().unwrap();
        Proxy {
            server,
            https,
            http,
            admin,
        }
    }

    /// The /metrics text.
    pub async fn metrics(&self) -> String {
        let resp = plain_request(
            self.admin,
            Request::get("/metrics")
                .header("host", "admin")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
        String::from_utf8(resp.body().to_vec()).unwrap()
    }

    /// The value of one metric sample, by its exact name-and-labels prefix
    /// (e.g. `switchyard_requests_total{site="a"`), summed over matches.
    pub async fn metric(&self, name_and_labels: &[&str]) -> f64 {
        metric_value(&self.metrics().await, name_and_labels)
    }

    /// Scrapes until the metric satisfies `pred` or `limit` has passed;
    /// returns its last value (a metric changes with no event to wait on).
    pub async fn metric_until(
        &self,
        parts: &[&str],
        limit: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.metric(parts).await;
            if pred(v) || tokio::time::Instant::now() > deadline {
                return v;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Sums the samples whose line starts with the metric name and contains every label.
pub fn metric_value(text: &str, parts: &[&str]) -> f64 {
    let (name, labels) = parts.split_first().unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(*name) && labels.iter().all(|lab| l.contains(lab))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body_len: usize,
    pub body: Bytes,
}

type Handler = Arc<
    dyn Fn(
            Seen,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// A hyper HTTP/1.1 backend that records every request.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    /// Cancelled on drop: every open connection closes, like a killed process.
    killed: tokio_util::sync::CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
        self.killed.cancel();
    }
}

impl Backend {
    /// A backend answering `200 NAME` to everything.
    pub async fn named(name: &'static str) -> Backend {
        Backend::with(move |_| async move { Response::new(Full::new(Bytes::from(name))) }).await
    }

    /// A backend with a custom handler (bodies are read whole first).
    pub async fn with<F, Fut>(f: F) -> Backend
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::on(listener, f)
    }

    pub fn on<F, Fut>(listener: TcpListener, f: F) -> Backend
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(move |s| Box::pin(f(s)));
        let seen2 = seen.clone();
        let killed = tokio_util::sync::CancellationToken::new();
        let killed2 = killed.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted2 = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                accepted2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let handler = handler.clone();
                let seen = seen2.clone();
                let killed = killed2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body_len: body.len(),
                                body,
                            };
                            seen.lock().unwrap().push(s.clone());
                            Ok::<_, std::convert::Infallible>(handler(s).await)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        () = killed.cancelled() => {}
                    }
                });
            }
        });
        Backend {
            addr,
            seen,
            accepted,
            task,
            killed,
        }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Requests other than health checks.
    pub fn app_count(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri.path() != "/healthz")
            .count()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

/// A backend that answers `late` to each request only once `release` is
/// cancelled; `seen` has the path of each request it has received.
pub struct Held {
    pub backend: Backend,
    pub seen: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub release: tokio_util::sync::CancellationToken,
}

impl Held {
    pub async fn new() -> Held {
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let release = tokio_util::sync::CancellationToken::new();
        let token = release.clone();
        let backend = Backend::with(move |s| {
            let (tx, token) = (tx.clone(), token.clone());
            async move {
                let _ = tx.send(s.uri.path().to_owned());
                token.cancelled().await;
                Response::new(Full::new(Bytes::from("late")))
            }
        })
        .await;
        Held {
            backend,
            seen,
            release,
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64 from `seed`).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A response with its body read whole.
pub type Got = Response<Bytes>;

async fn collect(resp: Response<Incoming>) -> Result<Got, hyper::Error> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// Connects over TLS with this SNI and ALPN.
pub async fn tls_connect(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(pki.client_config(alpn));
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    connector.connect(name, tcp).await
}

/// An HTTP/2 client connection over TLS (ALPN h2) with this SNI, its
/// connection task spawned.
pub async fn h2_connect<B>(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tls_connect(pki, addr, sni, &[b"h2"]).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// Sends one request over a new HTTPS connection (HTTP/1.1 or HTTP/2).
pub async fn https_request<B>(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
    h2: bool,
    req: Request<B>,
) -> Result<Got, Box<dyn std::error::Error + Send + Sync>>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = tls_connect(pki, addr, sni, alpn).await?;
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    Ok(tokio::time::timeout(WAIT, collect(resp)).await??)
}

/// Sends one request over a new plain HTTP/1.1 connection.
pub async fn plain_request<B>(
    addr: SocketAddr,
    req: Request<B>,
) -> Result<Got, Box<dyn std::error::Error + Send + Sync>>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await?;
    Ok(tokio::time::timeout(WAIT, collect(resp)).await??)
}

/// A GET with this Host.
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Headers as a simple map of lower-case name → joined values, for asserts.
pub fn header_map(h: &http::HeaderMap) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = HashMap::new();
    for (k, v) in h {
        let e = m.entry(k.as_str().to_string()).or_default();
        if !e.is_empty() {
            e.push_str(", ");
        }
        e.push_str(v.to_str().unwrap_or("?"));
    }
    m
}

// --- log capture -------------------------------------------------------------

static LOG: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per test binary) a subscriber that keeps every log line
/// in memory, for tests that check what the proxy logged.
pub fn capture_logs() {
    let buf = LOG.get_or_init(|| Arc::new(Mutex::new(Vec::new()))).clone();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || LogWriter(buf.clone()))
        .try_init();
}

/// Every log line captured so far (see [`capture_logs`]).
pub fn log_lines() -> Vec<String> {
    let Some(buf) = LOG.get() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines().map(str::to_owned).collect()
}

// --- files on disk, one TLS site, raw HTTP/1 -----------------------------------

/// Writes `bytes` at `dir/rel`, creating the parent directories; returns the path.
pub fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Sets a file's modification time to `secs` seconds after the Unix epoch.
pub fn set_mtime(path: &Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// A response header's value as text ("" when absent).
pub fn header_str<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A running proxy with one TLS site: `hosts = [HOST]`, a certificate from
/// a fresh test CA, then `rest` (pools and routes).
pub struct TlsSite {
    pub host: String,
    pub pki: Pki,
    pub cfg: ConfigDir,
    pub proxy: Proxy,
}

/// How a test request reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Plain HTTP/1.1.
    Plain,
    /// HTTP/1.1 over TLS.
    H1,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

impl Via {
    pub const ALL: [Via; 3] = [Via::Plain, Via::H1, Via::H2];
}

impl TlsSite {
    pub async fn start(host: &str, rest: &str) -> TlsSite {
        let pki = Pki::new();
        let (crt, key) = pki.leaf("site", &[host]);
        let site = format!("hosts = [\"{host}\"]\n{}\n{rest}\n", tls_toml(&crt, &key));
        let cfg = ConfigDir::new(&main_toml(""), &[("site", site)]);
        let proxy = Proxy::start(cfg.load()).await;
        TlsSite {
            host: host.to_owned(),
            pki,
            cfg,
            proxy,
        }
    }

    /// `METHOD path` for this site: origin-form, absolute for HTTP/2.
    fn request(
        &self,
        via: Via,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let host = self.host.as_str();
        let uri = if via == Via::H2 {
            format!("https://{host}{path}")
        } else {
            path.to_owned()
        };
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(body)).unwrap()
    }

    /// Sends `METHOD path` (origin-form; absolute for HTTP/2) with these
    /// headers and body on a new connection; panics on no answer within
    /// `WAIT`, an error, or a response in another HTTP version.
    pub async fn send(
        &self,
        via: Via,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Got {
        let host = self.host.as_str();
        let req = self.request(via, method, path, headers, body);
        let p = &self.proxy;
        let fut = async {
            match via {
                Via::Plain => plain_request(p.http, req).await,
                Via::H1 => https_request(&self.pki, p.https, host, false, req).await,
                Via::H2 => https_request(&self.pki, p.https, host, true, req).await,
            }
        };
        let r = tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("{via:?} {method} {path}: no answer within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{via:?} {method} {path}: {e}"));
        let want = if via == Via::H2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(r.version(), want, "{via:?} {method} {path}");
        r
    }
}

/// An HTTP/1 response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The status line and header lines, as sent.
    pub head: String,
    /// The body, de-chunked if it was chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Parses one whole response (head and body) from `bytes`; None when
    /// the head or its body is incomplete. The body is framed by
    /// Content-Length, by chunks, or by the end of `bytes`.
    pub fn parse(bytes: &[u8], head_request: bool) -> Option<RawResponse> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let mut r = RawResponse {
            status,
            head,
            body: Vec::new(),
        };
        let rest = &bytes[end + 4..];
        if head_request || status == 304 || status == 204 {
            return Some(r);
        }
        if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().ok()?;
            r.body = rest.get(..len)?.to_vec();
        } else if r
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            let mut at = rest;
            loop {
                let line = at.windows(2).position(|w| w == b"\r\n")?;
                let size = std::str::from_utf8(&at[..line]).ok()?;
                let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
                at = &at[line + 2..];
                if size == 0 {
                    break;
                }
                r.body.extend_from_slice(at.get(..size)?);
                at = at.get(size + 2..)?;
            }
        } else {
            r.body = rest.to_vec();
        }
        Some(r)
    }
}

/// Sends `raw` (which should ask for `Connection: close`) on a new TCP
/// connection to `addr` and reads until the proxy closes it (bounded by
/// `WAIT`). None when the connection closed with no response at all.
pub async fn raw_http(addr: SocketAddr, raw: &[u8]) -> Option<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The proxy may answer and close before reading everything.
    let _ = tcp.write_all(raw).await;
    let mut got = Vec::new();
    let read = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the proxy neither answered and closed nor closed");
    let head_request = raw.starts_with(b"HEAD ");
    if got.is_empty() {
        return None;
    }
    Some(RawResponse::parse(&got, head_request).expect("a whole HTTP/1 response"))
}

// --- streamed responses ----------------------------------------------------------

impl TlsSite {
    /// Sends `METHOD path` with these headers (no body) on a new connection
    /// and returns as soon as the response head is in, its body still
    /// streaming; panics on no head within `WAIT` or an error.
    pub async fn open(
        &self,
        via: Via,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response<Incoming> {
        let host = self.host.as_str();
        let req = self.request(via, method, path, headers, Bytes::new());
        let fut = async {
            type E = Box<dyn std::error::Error + Send + Sync>;
            let resp = match via {
                Via::Plain => {
                    let tcp = TcpStream::connect(self.proxy.http).await?;
                    let (mut send, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                    tokio::spawn(conn);
                    send.send_request(req).await?
                }
                Via::H1 => {
                    let tls =
                        tls_connect(&self.pki, self.proxy.https, host, &[b"http/1.1"]).await?;
                    let (mut send, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                    tokio::spawn(conn);
                    send.send_request(req).await?
                }
                Via::H2 => {
                    let tls = tls_connect(&self.pki, self.proxy.https, host, &[b"h2"]).await?;
                    let (mut send, conn) = hyper::client::conn::http2::handshake(
                        TokioExecutor::new(),
                        TokioIo::new(tls),
                    )
                    .await?;
                    tokio::spawn(conn);
                    send.send_request(req).await?
                }
            };
            Ok::<_, E>(resp)
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("{via:?} {method} {path}: no head within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{via:?} {method} {path}: {e}"))
    }
}
