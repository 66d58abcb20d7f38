//! TLS session resumption across instances (`[tls] ticket_keys`) and the
//! TLS metrics: two proxies in one process share key files, a rustls client
//! (and `openssl s_client`, when installed) resumes on one a session the
//! other issued, in TLS 1.2 and 1.3; rotating a key out falls back to a full
//! handshake; a bad key file keeps the old keys.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use rustls::pki_types::ServerName;
use rustls::{HandshakeKind, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const HOST: &str = "shop.test";

/// A config dir for `shop.test`, its pool a closed port (requests get 502),
/// with `[tls] ticket_keys` listing `keys`.
fn config_dir(pki: &Pki, keys: &[&str]) -> ConfigDir {
    let (crt, key) = pki.leaf("shop", &[HOST]);
    let site = format!(
        "hosts = [{HOST:?}]\n{}\n[pools.web]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
        tls_toml(&crt, &key)
    );
    let dir = ConfigDir::new(&main_toml(&ticket_keys(keys)), &[("shop", site)]);
    for name in ["k1.key", "k2.key", "k3.key"] {
        std::fs::write(dir.path().join(name), random_key()).unwrap();
    }
    dir
}

fn ticket_keys(keys: &[&str]) -> String {
    let list: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    format!("[tls]\nticket_keys = [{}]\n", list.join(", "))
}

fn random_key() -> [u8; 80] {
    let mut key = [0u8; 80];
    for chunk in key.chunks_mut(16) {
        chunk.copy_from_slice(&rand_u128().to_le_bytes()[..chunk.len()]);
    }
    key
}

/// Random enough for distinct test keys, without a dependency.
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    let a = h.finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(1);
    (u128::from(a) << 64) | u128::from(h.finish())
}

/// Rewrites switchyard.toml with these keys and reloads every proxy.
async fn rekey(dir: &ConfigDir, keys: &[&str], proxies: &[&Proxy]) {
    std::fs::write(
        dir.path().join("switchyard.toml"),
        main_toml(&ticket_keys(keys)),
    )
    .unwrap();
    for p in proxies {
        p.server.reload(dir.load()).await.unwrap();
    }
}

/// A client that keeps its sessions (rustls' in-memory store, per config),
/// speaking only `version`.
fn client(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    pki.client_config_for(&[version], &[])
}

/// One request over a new connection; returns how the handshake went and
/// the negotiated version. Reading the whole response also takes in the
/// TLS 1.3 tickets sent after the handshake.
async fn visit(
    config: &Arc<rustls::ClientConfig>,
    proxy: &Proxy,
) -> (HandshakeKind, ProtocolVersion) {
    let tcp = TcpStream::connect(proxy.https).await.unwrap();
    let name = ServerName::try_from(HOST).unwrap();
    let mut tls = tokio::time::timeout(WAIT, TlsConnector::from(config.clone()).connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    let (kind, version) = {
        let conn = tls.get_ref().1;
        (
            conn.handshake_kind().unwrap(),
            conn.protocol_version().unwrap(),
        )
    };
    let req = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 502"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    (kind, version)
}

async fn handshakes(proxy: &Proxy, version: &str, resumed: bool) -> f64 {
    proxy
        .metric(&[
            "switchyard_tls_handshakes_total",
            &format!("version=\"{version}\""),
            &format!("resumed=\"{resumed}\""),
        ])
        .await
}

#[tokio::test]
async fn instances_sharing_keys_resume_each_others_sessions() {
    let pki = Pki::new();
    let dir = config_dir(&pki, &["k1.key"]);
    let a = Proxy::start(dir.load()).await;
    let b = Proxy::start(dir.load()).await;
    for (version, label) in [
        (&rustls::version::TLS13, "TLSv1.3"),
        (&rustls::version::TLS12, "TLSv1.2"),
    ] {
        let c = client(&pki, version);
        let (kind, v) = visit(&c, &a).await;
        assert_eq!(kind, HandshakeKind::Full, "{label}");
        assert_eq!(v, version.version, "{label}");
        assert_eq!(
            visit(&c, &b).await.0,
            HandshakeKind::Resumed,
            "{label} on B"
        );
        assert_eq!(
            visit(&c, &a).await.0,
            HandshakeKind::Resumed,
            "{label} back on A"
        );
        assert_eq!(handshakes(&a, label, false).await, 1.0, "{label}");
        assert_eq!(handshakes(&a, label, true).await, 1.0, "{label}");
        assert_eq!(handshakes(&b, label, true).await, 1.0, "{label}");
        assert_eq!(handshakes(&b, label, false).await, 0.0, "{label}");
    }
    // Without shared keys, each instance keeps its own: no resumption across.
    let alone = config_dir(&pki, &[]);
    std::fs::write(alone.path().join("switchyard.toml"), main_toml("")).unwrap();
    let (c, d) = (
        Proxy::start(alone.load()).await,
        Proxy::start(alone.load()).await,
    );
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = client(&pki, version);
        assert_eq!(visit(&client, &c).await.0, HandshakeKind::Full);
        assert_eq!(
            visit(&client, &c).await.0,
            HandshakeKind::Resumed,
            "same instance"
        );
        assert_eq!(
            visit(&client, &d).await.0,
            HandshakeKind::Full,
            "other instance"
        );
    }
}

#[tokio::test]
async fn rotated_out_keys_fall_back_to_a_full_handshake() {
    let pki = Pki::new();
    let dir = config_dir(&pki, &["k1.key"]);
    let a = Proxy::start(dir.load()).await;
    let b = Proxy::start(dir.load()).await;
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    // Two clients per version, each holding a session sealed with k1.
    let early: Vec<_> = versions.iter().map(|v| client(&pki, v)).collect();
    let late: Vec<_> = versions.iter().map(|v| client(&pki, v)).collect();
    for c in early.iter().chain(&late) {
        assert_eq!(visit(c, &a).await.0, HandshakeKind::Full);
    }

    // k2 issues now; k1 is still accepted.
    rekey(&dir, &["k2.key", "k1.key"], &[&a, &b]).await;
    for c in &early {
        assert_eq!(visit(c, &b).await.0, HandshakeKind::Resumed);
    }

    // k1 is gone: its sessions take a full handshake, and nothing fails.
    rekey(&dir, &["k2.key"], &[&a, &b]).await;
    for c in &late {
        assert_eq!(visit(c, &b).await.0, HandshakeKind::Full);
        assert_eq!(visit(c, &a).await.0, HandshakeKind::Resumed, "a k2 session");
    }
    for p in [&a, &b] {
        assert_eq!(
            p.metric(&["switchyard_tls_handshake_failures_total"]).await,
            0.0
        );
    }

    // A bad key file fails the load, naming the file and not the bytes;
    // the proxies keep k2.
    std::fs::write(dir.path().join("k3.key"), [0x5a; 79]).unwrap();
    std::fs::write(
        dir.path().join("switchyard.toml"),
        main_toml(&ticket_keys(&["k3.key", "k2.key"])),
    )
    .unwrap();
    let errors = switchyard::config::load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(errors.contains("tls.ticket_keys[0]: "), "{errors}");
    assert!(errors.contains("k3.key is 79 bytes"), "{errors}");
    assert!(!errors.contains("ZZZZ"), "{errors}");
    for c in &late {
        assert_eq!(
            visit(c, &b).await.0,
            HandshakeKind::Resumed,
            "k2 still accepted"
        );
    }
}

/// `openssl s_client` saves a session from A and resumes it on B, in TLS
/// 1.2 and 1.3; skipped when openssl is not installed.
#[tokio::test]
async fn openssl_resumes_across_instances() {
    let installed = |tool: &str, arg: &str| {
        std::process::Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !installed("openssl", "version") || !installed("timeout", "--version") {
        eprintln!("openssl or timeout not installed; skipping");
        return;
    }
    let pki = Pki::new();
    let dir = config_dir(&pki, &["k1.key", "k2.key"]);
    let a = Proxy::start(dir.load()).await;
    let b = Proxy::start(dir.load()).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem(&pki.ca_der)).unwrap();
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("sess{version}"));
        let out = s_client(&a, version, &ca, &["-sess_out", &path(&sess)]).await;
        assert!(out.contains("\nNew, "), "{version} first:\n{out}");
        let out = s_client(&b, version, &ca, &["-sess_in", &path(&sess)]).await;
        assert!(out.contains("\nReused, "), "{version} on B:\n{out}");
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn pem(der: &[u8]) -> String {
    use std::fmt::Write;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(line).unwrap());
    }
    out + "-----END CERTIFICATE-----\n"
}

/// Runs one `s_client` session, bounded by coreutils' `timeout`, that
/// sends a request and reads until the proxy closes (taking in the TLS 1.3
/// tickets); returns its output.
async fn s_client(proxy: &Proxy, version: &str, ca: &Path, extra: &[&str]) -> String {
    use std::io::Write;
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-connect"])
        .arg(proxy.https.to_string())
        .args(["-servername", HOST, version, "-CAfile", &path(ca)])
        .args(["-verify_return_error", "-ign_eof"])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let req = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n");
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(req.as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A self-signed certificate for `shop.test` valid until midnight UTC of
/// this day; written to `shop.crt` and `shop.key` in `dir`.
fn expiring_cert(
    dir: &Path,
    year: i32,
    month: u8,
    day: u8,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec![HOST.to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (crt, keyp) = (dir.join("shop.crt"), dir.join("shop.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&keyp, key.serialize_pem()).unwrap();
    (crt, keyp)
}

#[tokio::test]
async fn certificate_expiry_is_exported_and_follows_reloads() {
    let certs = tempfile::tempdir().unwrap();
    let (crt, key) = expiring_cert(certs.path(), 2031, 5, 17);
    let site = format!(
        "hosts = [{HOST:?}]\n{}\n[pools.web]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
        tls_toml(&crt, &key)
    );
    let plain = "hosts = [\"plain.test\"]\n[pools.web]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n";
    let dir = ConfigDir::new(&main_toml(""), &[("shop", site), ("plain", plain.into())]);
    let proxy = Proxy::start(dir.load()).await;
    let expiry = "switchyard_tls_certificate_expiry_timestamp_seconds";
    // 2031-05-17T00:00:00Z.
    assert_eq!(
        proxy.metric(&[expiry, "site=\"shop\""]).await,
        1_936_742_400.0
    );
    let text = proxy.metrics().await;
    assert!(
        !text.contains("site=\"plain\"} "),
        "a site without TLS has no expiry:\n{text}"
    );

    // A renewed certificate shows after the reload.
    expiring_cert(certs.path(), 2032, 1, 1);
    proxy.server.reload(dir.load()).await.unwrap();
    assert_eq!(
        proxy.metric(&[expiry, "site=\"shop\""]).await,
        1_956_528_000.0
    );
}
