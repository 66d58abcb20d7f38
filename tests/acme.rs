//! ACME end to end: certificates ordered from a real pebble (the Let's
//! Encrypt test CA, Debian package `pebble`), which really validates the
//! challenges on the proxy's own listeners (tls-alpn-01 on the https port,
//! http-01 on the plain one), its DNS pointed at 127.0.0.1 by
//! pebble-challtestsrv. Certificates are checked by a client that trusts
//! only pebble's root. Tests that need pebble say so and pass when it is
//! not installed (CI installs it); the failure path needs no CA at all.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::*;

/// Bound on waiting for a certificate (pebble issues in about a second).
const ISSUE_WAIT: Duration = Duration::from_secs(90);

/// A child process, killed and reaped on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free a moment ago (pebble must be told the proxy's
/// ports before the proxy binds them).
fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct free ports: each listener is held until all are picked, so
/// the kernel cannot hand the same port out twice.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Waits (bounded: 10 s) until something accepts connections on 127.0.0.1:`port`.
fn listening(port: u16) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..1000 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return;
        }
        // Refused at once: give the process a moment to bind.
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on {addr} after 10 s");
}

/// Starts `cmd` and waits (bounded) until it logs a line containing `ready`.
fn spawn_until(cmd: &mut Command, ready: &str) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if std::env::var_os("ACME_TEST_VERBOSE").is_some() {
                    eprintln!("{line}");
                }
                let _ = tx.send(line);
            }
        });
    }
    let child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(ready) => return child,
            Ok(_) => {}
            Err(e) => panic!("{cmd:?} never logged {ready:?}: {e}"),
        }
    }
}

/// A CA for pebble's own HTTPS (its directory), PEM.
struct DirectoryCa {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn directory_ca() -> DirectoryCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    DirectoryCa {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// pebble and its DNS, validating on the proxy's `http` and `https` ports.
struct Pebble {
    _dns: Child,
    _pebble: Child,
    dir: tempfile::TempDir,
    /// The directory URL.
    directory: String,
    /// What `[acme] ca_roots` names: the CA of pebble's own HTTPS.
    ca_roots: PathBuf,
    /// pebble's management port (its issuing root).
    management: u16,
    /// Where the ACME endpoint listens.
    port: u16,
}

impl Pebble {
    /// `None` (the test passes, saying why) when pebble is not installed.
    fn start(http: u16, https: u16, validity: Option<u64>) -> Option<Pebble> {
        let installed = |bin: &str| {
            Command::new(bin)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        if !installed("pebble") || !installed("pebble-challtestsrv") {
            eprintln!(
                "SKIPPED: pebble / pebble-challtestsrv not installed (apt-get install pebble); .ci/run installs them"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ca = directory_ca();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_roots = write("directory-ca.pem", &ca.ca_pem);
        let cert = write("cert.pem", &ca.cert_pem);
        let key = write("key.pem", &ca.key_pem);
        let [port, management, dns, dns_management] = free_ports();
        let validity = validity.map_or(String::new(), |v| {
            format!(", \"certificateValidityPeriod\": {v}")
        });
        let config = write(
            "pebble.json",
            &format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{port}", "managementListenAddress": "127.0.0.1:{management}",
                "certificate": {cert:?}, "privateKey": {key:?}, "httpPort": {http}, "tlsPort": {https},
                "ocspResponderURL": "", "externalAccountBindingRequired": false,
                "domainBlocklist": ["blocked.test"]{validity}}}}}"#
            ),
        );
        // Every A query answers 127.0.0.1, and no AAAA: the proxy listens
        // on IPv4 loopback only.
        let dns_child = spawn_until(
            Command::new("pebble-challtestsrv").args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-management",
                &format!("127.0.0.1:{dns_management}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ]),
            "Starting management server",
        );
        let pebble = spawn_until(
            Command::new("pebble")
                .args(["-config", &config.display().to_string()])
                .args(["-dnsserver", &format!("127.0.0.1:{dns}"), "-strict=false"])
                // Validate at once, reject no nonce, and validate every
                // order for real (no authorization reuse).
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
            "ACME directory available",
        );
        // pebble logs that line before it binds its listeners: wait until
        // they accept, or the proxy's first order may be refused.
        for p in [port, management] {
            listening(p);
        }
        Some(Pebble {
            _dns: dns_child,
            _pebble: pebble,
            dir,
            directory: format!("https://localhost:{port}/dir"),
            ca_roots,
            management,
            port,
        })
    }

    /// `[acme]` for this pebble.
    fn acme_toml(&self, challenge: &str) -> String {
        format!(
            "[acme]\nemail = \"ops@example.com\"\ndirectory = {:?}\nchallenge = {challenge:?}\nstorage = \"acme\"\nca_roots = {:?}\n",
            self.directory,
            self.ca_roots.display().to_string()
        )
    }

    /// The directory's name under storage (see `acme/storage.rs`).
    fn ca_dir(&self) -> String {
        format!("localhost_{}_dir", self.port)
    }

    /// The root pebble issues under (made fresh by each pebble run).
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let ca = std::fs::read(&self.ca_roots).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let body = get_over_tls(
            roots,
            ([127, 0, 0, 1], self.management).into(),
            "localhost",
            "/roots/0",
        )
        .await
        .unwrap()
        .1;
        rustls_pemfile::certs(&mut body.as_ref())
            .next()
            .unwrap()
            .unwrap()
    }
}

/// GET `path` over a new TLS connection trusting only `roots`, with this
/// SNI (and Host); the server's leaf certificate and the body.
async fn get_over_tls(
    roots: rustls::RootCertStore,
    addr: std::net::SocketAddr,
    sni: &str,
    path: &str,
) -> Result<(CertificateDer<'static>, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio::time::timeout(
        WAIT,
        TlsConnector::from(Arc::new(config)).connect(ServerName::try_from(sni.to_owned())?, tcp),
    )
    .await??;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no certificate")?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", sni)
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(WAIT, send.send_request(req)).await??;
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await??
        .to_bytes();
    Ok((leaf, body))
}

fn only(root: &CertificateDer<'static>) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    roots
}

/// Waits (bounded) until the metric reaches `at_least`.
async fn wait_metric(proxy: &Proxy, parts: &[&str], at_least: f64, limit: Duration) {
    let v = proxy.metric_until(parts, limit, |v| v >= at_least).await;
    assert!(
        v >= at_least,
        "{parts:?} stayed at {v} (wanted {at_least}); metrics:\n{}",
        proxy.metrics().await
    );
}

const ISSUED: [&str; 3] = [
    "switchyard_acme_orders_total",
    "site=\"shop\"",
    "result=\"issued\"",
];
const FAILED: [&str; 3] = [
    "switchyard_acme_orders_total",
    "site=\"shop\"",
    "result=\"failed\"",
];

/// The proxy's configuration: listeners on these ports, `[acme]` at
/// `pebble` with `challenge`, and one site, `shop`.
fn acme_config(
    pebble: &Pebble,
    (http, https): (u16, u16),
    challenge: &str,
    site: String,
) -> ConfigDir {
    ConfigDir::new(
        &format!(
            "{}{}",
            listen_toml(http, https),
            pebble.acme_toml(challenge)
        ),
        &[("shop", site)],
    )
}

fn listen_toml(http: u16, https: u16) -> String {
    format!(
        "[listen]\nhttps = [\"127.0.0.1:{https}\"]\nhttp = [\"127.0.0.1:{http}\"]\nadmin = \"127.0.0.1:0\"\n[timeouts]\ndrain = \"1s\"\n"
    )
}

/// A WebSocket backend echoing every text message.
async fn ws_echo() -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `text` and waits (bounded) for its echo.
async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .unwrap()
        .unwrap();
    let got = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text(text));
}

fn shop_site(backend: &Backend, extra: &str) -> String {
    format!(
        "hosts = [\"shop.test\", \"www.shop.test\"]\ntls = {{ acme = true }}\n{extra}\n[pools.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\npool = \"app\"\n",
        backend.addr
    )
}

/// The stored certificate file of site `shop`.
fn stored_pem(cfg: &Path, pebble: &Pebble) -> PathBuf {
    cfg.join("acme")
        .join(pebble.ca_dir())
        .join("sites/shop.pem")
}

#[tokio::test]
async fn tls_alpn_01_issues_then_a_restart_reuses_the_stored_certificate() {
    capture_logs();
    let [http, https] = free_ports();
    let Some(pebble) = Pebble::start(http, https, None) else {
        return;
    };
    let backend = Backend::named("app").await;
    let cfg = acme_config(
        &pebble,
        (http, https),
        "tls-alpn-01",
        shop_site(&backend, ""),
    );
    let started = Instant::now();
    let proxy = Proxy::start(cfg.load()).await;
    wait_metric(&proxy, &ISSUED, 1.0, ISSUE_WAIT).await;
    eprintln!(
        "tls-alpn-01: first certificate after {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.metric(&FAILED).await, 0.0);

    // Both names are served, with a chain to pebble's root alone.
    let root = pebble.issuing_root().await;
    let mut leaves = Vec::new();
    for name in ["shop.test", "www.shop.test"] {
        let (leaf, body) = get_over_tls(only(&root), proxy.https, name, "/")
            .await
            .unwrap();
        assert_eq!(body, "app");
        leaves.push(leaf);
    }
    assert_eq!(leaves[0], leaves[1]);
    let (_, parsed) = x509_parser::parse_x509_certificate(leaves[0].as_ref()).unwrap();
    let not_after = parsed.validity().not_after.timestamp();
    let expiry = [
        "switchyard_tls_certificate_expiry_timestamp_seconds",
        "site=\"shop\"",
    ];
    assert_eq!(proxy.metric(&expiry).await, not_after as f64);

    // Owner-only storage.
    use std::os::unix::fs::PermissionsExt;
    let pem = stored_pem(cfg.path(), &pebble);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pem), 0o600);
    assert_eq!(mode(pem.parent().unwrap()), 0o700);
    assert_eq!(mode(&cfg.path().join("acme")), 0o700);
    assert_eq!(
        mode(
            &cfg.path()
                .join("acme")
                .join(pebble.ca_dir())
                .join("account.json")
        ),
        0o600
    );
    proxy.server.shutdown().await;

    // A restart serves the stored certificate from its first handshake
    // and orders nothing.
    let main = format!("{}{}", main_toml(""), pebble.acme_toml("tls-alpn-01"));
    std::fs::write(cfg.path().join("switchyard.toml"), main).unwrap();
    let again = Proxy::start(cfg.load()).await;
    let (leaf, body) = get_over_tls(only(&root), again.https, "shop.test", "/")
        .await
        .unwrap();
    assert_eq!(body, "app");
    assert_eq!(leaf, leaves[0]);
    assert_eq!(again.metric(&ISSUED).await, 0.0);
    assert_eq!(again.metric(&expiry).await, not_after as f64);
    again.server.shutdown().await;

    // A process sharing storage with one that holds the site's lock
    // orders nothing, and serves what the holder stores.
    let other = ConfigDir::new(
        &format!("{}{}", main_toml(""), pebble.acme_toml("tls-alpn-01")),
        &[("shop", shop_site(&backend, ""))],
    );
    let sites = other
        .path()
        .join("acme")
        .join(pebble.ca_dir())
        .join("sites");
    std::fs::create_dir_all(&sites).unwrap();
    let lock = std::fs::File::create(sites.join("shop.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let waiting = Proxy::start(other.load()).await;
    assert!(
        get_over_tls(only(&root), waiting.https, "shop.test", "/")
            .await
            .is_err(),
        "no certificate yet: the handshake fails"
    );
    std::fs::copy(&pem, sites.join("shop.pem")).unwrap();
    wait_metric(&waiting, &expiry, not_after as f64, WAIT).await;
    let (leaf, _) = get_over_tls(only(&root), waiting.https, "shop.test", "/")
        .await
        .unwrap();
    assert_eq!(leaf, leaves[0]);
    assert_eq!(waiting.metric(&ISSUED).await, 0.0);
    assert_eq!(waiting.metric(&FAILED).await, 0.0);
    drop(lock);
    waiting.server.shutdown().await;
    drop(pebble.dir);
}

#[tokio::test]
async fn http_01_is_answered_before_redirects_and_unknown_tokens_are_404() {
    let [http, https] = free_ports();
    let Some(pebble) = Pebble::start(http, https, None) else {
        return;
    };
    let backend = Backend::named("app").await;
    let cfg = acme_config(
        &pebble,
        (http, https),
        "http-01",
        shop_site(&backend, "redirect_https = true"),
    );
    let started = Instant::now();
    let proxy = Proxy::start(cfg.load()).await;
    wait_metric(&proxy, &ISSUED, 1.0, ISSUE_WAIT).await;
    eprintln!("http-01: first certificate after {:?}", started.elapsed());

    let root = pebble.issuing_root().await;
    let (_, body) = get_over_tls(only(&root), proxy.https, "www.shop.test", "/")
        .await
        .unwrap();
    assert_eq!(body, "app");
    // Plain HTTP redirects, but the challenge path is the proxy's.
    let resp = plain_request(proxy.http, get("shop.test", "/x"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    let resp = plain_request(
        proxy.http,
        get("shop.test", "/.well-known/acme-challenge/not-a-token"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        backend.count(),
        1,
        "only the https request reached the pool"
    );

    // A reload that moves [acme] storage (as a switch from a staging
    // directory to production would) orders anew; the old certificate
    // serves until then.
    let main = format!(
        "{}{}",
        listen_toml(http, https),
        pebble.acme_toml("http-01")
    )
    .replace("storage = \"acme\"", "storage = \"acme2\"");
    std::fs::write(cfg.path().join("switchyard.toml"), main).unwrap();
    proxy.server.reload(cfg.load()).await.unwrap();
    wait_metric(&proxy, &ISSUED, 2.0, ISSUE_WAIT).await;
    let moved = cfg
        .path()
        .join("acme2")
        .join(pebble.ca_dir())
        .join("sites/shop.pem");
    assert!(moved.exists());
    let (_, body) = get_over_tls(only(&root), proxy.https, "shop.test", "/")
        .await
        .unwrap();
    assert_eq!(body, "app");
    proxy.server.shutdown().await;
}

#[tokio::test]
async fn short_lived_certificates_renew_while_websockets_and_h2_stay_open() {
    let [http, https] = free_ports();
    // 15 s certificates: renewed when 5 s are left.
    let Some(pebble) = Pebble::start(http, https, Some(15)) else {
        return;
    };
    let backend = Backend::named("app").await;
    let live = ws_echo().await;
    let site = format!(
        "{}[pools.live]\nservers = [\"{live}\"]\n[[routes]]\npath = \"/ws/\"\nwebsocket = \"live\"\n",
        shop_site(&backend, "")
    );
    let cfg = acme_config(&pebble, (http, https), "tls-alpn-01", site);
    let proxy = Proxy::start(cfg.load()).await;
    wait_metric(&proxy, &ISSUED, 1.0, ISSUE_WAIT).await;
    let root = pebble.issuing_root().await;

    // A WebSocket session opened on the first certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(only(&root))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(proxy.https).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("shop.test").unwrap(), tcp)
        .await
        .unwrap();
    let ws_first = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async("wss://shop.test/ws/", tls),
    )
    .await
    .unwrap()
    .unwrap();
    echo(&mut ws, "before").await;

    // An HTTP/2 connection opened on the first certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(only(&root))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(proxy.https).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("shop.test").unwrap(), tcp)
        .await
        .unwrap();
    let first = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let h2_get = || {
        Request::get("https://shop.test/")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send.send_request(h2_get()).await.unwrap().status(), 200);

    let renewing = Instant::now();
    wait_metric(&proxy, &ISSUED, 2.0, ISSUE_WAIT).await;
    eprintln!(
        "renewal: second certificate {:?} after the first",
        renewing.elapsed()
    );
    // New handshakes get the new certificate; the open connection goes on.
    let (second, body) = get_over_tls(only(&root), proxy.https, "shop.test", "/")
        .await
        .unwrap();
    assert_eq!(body, "app");
    assert_ne!(second, first);
    let resp = send.send_request(h2_get()).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The WebSocket session opened before the renewal keeps echoing.
    assert_eq!(ws_first, first);
    echo(&mut ws, "after").await;
    assert_eq!(proxy.metric(&FAILED).await, 0.0);
    proxy.server.shutdown().await;
}

#[tokio::test]
async fn a_rejected_order_is_counted_and_the_site_stays_unserved() {
    capture_logs();
    let [http, https] = free_ports();
    let Some(pebble) = Pebble::start(http, https, None) else {
        return;
    };
    let backend = Backend::named("app").await;
    let site =
        shop_site(&backend, "").replace("[\"shop.test\", \"www.shop.test\"]", "[\"blocked.test\"]");
    let cfg = acme_config(&pebble, (http, https), "tls-alpn-01", site);
    let proxy = Proxy::start(cfg.load()).await;
    wait_metric(&proxy, &FAILED, 1.0, ISSUE_WAIT).await;
    assert_eq!(proxy.metric(&ISSUED).await, 0.0);
    // The CA's problem document is in the log.
    let logged = log_lines()
        .into_iter()
        .any(|l| l.contains("ACME: order failed") && l.contains("rejectedIdentifier"));
    assert!(logged, "{:#?}", log_lines());
    // Until a certificate arrives: 503 on plain HTTP, failed handshakes.
    let resp = plain_request(proxy.http, get("blocked.test", "/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let root = pebble.issuing_root().await;
    assert!(
        get_over_tls(only(&root), proxy.https, "blocked.test", "/")
            .await
            .is_err()
    );
    assert_eq!(backend.count(), 0);
    proxy.server.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_ca_is_retried_and_the_site_answers_503_meanwhile() {
    capture_logs();
    let backend = Backend::named("app").await;
    let closed = free_port();
    let ca = directory_ca();
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("ca.pem");
    std::fs::write(&roots, ca.ca_pem).unwrap();
    let main = format!(
        "{}[acme]\nemail = \"ops@example.com\"\ndirectory = \"https://localhost:{closed}/dir\"\nchallenge = \"http-01\"\nca_roots = {:?}\n",
        main_toml(""),
        roots.display().to_string()
    );
    let cfg = ConfigDir::new(&main, &[("shop", shop_site(&backend, ""))]);
    let proxy = Proxy::start(cfg.load()).await;
    wait_metric(&proxy, &FAILED, 1.0, WAIT).await;
    assert_eq!(proxy.metric(&ISSUED).await, 0.0);
    let resp = plain_request(proxy.http, get("shop.test", "/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(header_str(resp.headers(), "retry-after"), "1");
    // The challenge path is the proxy's, and never reaches the pool.
    let resp = plain_request(
        proxy.http,
        get("shop.test", "/.well-known/acme-challenge/abc"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(backend.count(), 0);
    // No certificate: the handshake fails.
    let pki = Pki::new();
    assert!(
        tls_connect(&pki, proxy.https, "shop.test", &[b"http/1.1"])
            .await
            .is_err()
    );
    let logged = log_lines()
        .into_iter()
        .any(|l| l.contains("ACME: order failed") && l.contains("retry_in_seconds=10"));
    assert!(logged, "{:#?}", log_lines());
    proxy.server.shutdown().await;
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_current_certificate_serving() {
    let [http, https] = free_ports();
    // 15 s certificates: renewal is due 10 s after issue.
    let Some(pebble) = Pebble::start(http, https, Some(15)) else {
        return;
    };
    let backend = Backend::named("app").await;
    let cfg = acme_config(
        &pebble,
        (http, https),
        "tls-alpn-01",
        shop_site(&backend, ""),
    );
    let proxy = Proxy::start(cfg.load()).await;
    wait_metric(&proxy, &ISSUED, 1.0, ISSUE_WAIT).await;
    let root = pebble.issuing_root().await;
    let (first, body) = get_over_tls(only(&root), proxy.https, "shop.test", "/")
        .await
        .unwrap();
    assert_eq!(body, "app");
    // The CA goes away before the renewal is due: the renewal fails...
    drop(pebble);
    wait_metric(&proxy, &FAILED, 1.0, ISSUE_WAIT).await;
    // ...and the certificate it was to replace (valid a few seconds more)
    // goes on serving.
    let (now, body) = get_over_tls(only(&root), proxy.https, "shop.test", "/")
        .await
        .unwrap();
    assert_eq!(body, "app");
    assert_eq!(
        now, first,
        "the current certificate was replaced or dropped"
    );
    assert_eq!(proxy.metric(&ISSUED).await, 1.0);
    proxy.server.shutdown().await;
}
