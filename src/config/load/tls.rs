//! A site's `tls = { cert, key }`: reading the PEM files (relative to the
//! site file), parsing the chain and the private key, and checking that the
//! key belongs to the certificate, so that a bad pair fails at load time
//! rather than at the first handshake. Every file read feeds the
//! configuration hash, so a renewed certificate counts as a change.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::sign::SigningKey;
use toml::de::DeValue;

use super::super::SiteTls;
use super::diagnostics::Cx;
use super::hash::Fnv;
use super::values::{Table, read_file};

/// The fields of `tls = { ... }`.
pub(super) const TLS_FIELDS: &[&str] = &["cert", "key", "acme"];

/// Reads and checks `tls = { cert, key }`; every file read feeds `hash`.
pub(super) fn parse_tls(
    cx: &mut Cx<'_>,
    t: &Table<'_, '_>,
    base: &Path,
    hash: &mut Fnv,
) -> Option<SiteTls> {
    if t.get("acme")
        .is_some_and(|v| !matches!(v.get_ref(), DeValue::Boolean(false)))
    {
        // An ACME site has no files to read; `acme.rs` checks the rest
        // once `[acme]` is known.
        return None;
    }
    let cert = read_pem(cx, t, "cert", base, hash);
    let key = read_pem(cx, t, "key", base, hash);
    let certs = cert.as_ref().and_then(|cert| parse_certs(cx, cert));
    let signing_key = key.as_ref().and_then(|key| parse_key(cx, key));

    let (Some(certs), Some(signing_key), Some(cert), Some(key)) = (certs, signing_key, cert, key)
    else {
        return None;
    };
    let not_after = certs.first().and_then(|leaf| not_after(leaf));
    let certified_key = rustls::sign::CertifiedKey::new(certs, signing_key);
    match certified_key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            cx.error(
                key.span,
                format!(
                    "tls.key does not match tls.cert ({} is not the key of the certificate in {})",
                    key.path.display(),
                    cert.path.display()
                ),
            );
            return None;
        }
        Err(e) => {
            cx.error(
                cert.span,
                format!(
                    "tls.cert: the first certificate in {} is not a valid X.509 certificate: {e}",
                    cert.path.display()
                ),
            );
            return None;
        }
    }
    Some(SiteTls {
        cert_path: cert.path,
        key_path: key.path,
        certified_key: Arc::new(certified_key),
        not_after,
    })
}

/// The certificate's notAfter as Unix time; `None` if it does not parse
/// (rustls has accepted it, so the site serves; only the expiry metric is
/// missing).
fn not_after(leaf: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A PEM file named by `tls.cert` or `tls.key`, read.
struct PemFile {
    /// The path, resolved against the site file's directory.
    path: PathBuf,
    /// Where the path is written, for errors about the file's content.
    span: Range<usize>,
    bytes: Vec<u8>,
}

/// Reads the file that the field `name` names; its name and content feed
/// `hash`.
fn read_pem(
    cx: &mut Cx<'_>,
    t: &Table<'_, '_>,
    name: &str,
    base: &Path,
    hash: &mut Fnv,
) -> Option<PemFile> {
    let Some(v) = t.get(name) else {
        t.missing(
            cx,
            name,
            "tls = { cert = \"certs/site.crt\", key = \"certs/site.key\" }",
        );
        return None;
    };
    let (path, bytes) = read_file(cx, v, &t.child(name), base, hash)?;
    Some(PemFile {
        path,
        span: v.span(),
        bytes,
    })
}

/// The certificate chain in `tls.cert`: at least one certificate.
fn parse_certs(cx: &mut Cx<'_>, file: &PemFile) -> Option<Vec<CertificateDer<'static>>> {
    let PemFile { path, span, bytes } = file;
    match rustls_pemfile::certs(&mut bytes.as_slice()).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if certs.is_empty() => {
            cx.error(
                span.clone(),
                format!(
                    "tls.cert: no certificate found in {} (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)",
                    path.display()
                ),
            );
            None
        }
        Ok(certs) => Some(certs),
        Err(e) => {
            cx.error(
                span.clone(),
                format!("tls.cert: cannot parse PEM in {}: {e}", path.display()),
            );
            None
        }
    }
}

/// The private key in `tls.key`, of a type rustls can sign with.
fn parse_key(cx: &mut Cx<'_>, file: &PemFile) -> Option<Arc<dyn SigningKey>> {
    let PemFile { path, span, bytes } = file;
    let der = match rustls_pemfile::private_key(&mut bytes.as_slice()) {
        Ok(Some(der)) => der,
        Ok(None) => {
            cx.error(
                span.clone(),
                format!(
                    "tls.key: no private key found in {} (expected a PEM \"-----BEGIN PRIVATE KEY-----\" block)",
                    path.display()
                ),
            );
            return None;
        }
        Err(e) => {
            cx.error(
                span.clone(),
                format!("tls.key: cannot parse PEM in {}: {e}", path.display()),
            );
            return None;
        }
    };
    match rustls::crypto::ring::sign::any_supported_type(&der) {
        Ok(key) => Some(key),
        Err(e) => {
            cx.error(
                span.clone(),
                format!(
                    "tls.key: unsupported private key in {}: {e}",
                    path.display()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::load_str;
    use super::super::test_support::*;
    use super::*;

    fn dir_errors(dir: &Path, sites: &[(&str, &str)]) -> Vec<String> {
        match load_str(dir, "", sites) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn certificate_loads() {
        let pem = generate();
        let dir = cert_dir(&[("a.crt", &pem.cert), ("a.key", &pem.key)]);
        let site = format!("redirect_https = true\n{}", tls_site("a.crt", "a.key"));
        let config = load_str(dir.path(), "", &[("shop", &site)]).unwrap();
        let tls = config.sites[0].tls.as_ref().unwrap();
        assert_eq!(tls.cert_path, dir.path().join("sites/../certs/a.crt"));
        assert_eq!(tls.key_path, dir.path().join("sites/../certs/a.key"));
        assert_eq!(tls.certified_key.cert.len(), 1);
        // rcgen's default validity ends in 4096.
        assert_eq!(tls.not_after, Some(67_090_118_400));
        assert!(config.sites[0].redirect_https);
    }

    #[test]
    fn missing_certificate_files() {
        let dir = cert_dir(&[]);
        let e = dir_errors(dir.path(), &[("shop", &tls_site("a.crt", "a.key"))]);
        let file = dir.path().join("sites/shop.toml");
        let crt = dir.path().join("sites/../certs/a.crt");
        let key = dir.path().join("sites/../certs/a.key");
        assert_errors(
            &e,
            &[
                &format!(
                    "{}:1:16: tls.cert: cannot read {}: ",
                    file.display(),
                    crt.display()
                ),
                &format!(
                    "{}:1:40: tls.key: cannot read {}: ",
                    file.display(),
                    key.display()
                ),
            ],
        );
        assert!(e[0].contains("No such file or directory"), "{}", e[0]);
    }

    #[test]
    fn unparsable_certificate_files() {
        let pem = generate();
        let dir = cert_dir(&[("a.crt", "not a certificate\n"), ("a.key", &pem.cert)]);
        let e = dir_errors(dir.path(), &[("shop", &tls_site("a.crt", "a.key"))]);
        let file = dir.path().join("sites/shop.toml");
        assert_errors(
            &e,
            &[
                &format!(
                    "{}:1:16: tls.cert: no certificate found in ",
                    file.display()
                ),
                &format!("{}:1:40: tls.key: no private key found in ", file.display()),
            ],
        );

        let dir = cert_dir(&[
            (
                "a.crt",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            ("a.key", &pem.key),
        ]);
        let e = dir_errors(dir.path(), &[("shop", &tls_site("a.crt", "a.key"))]);
        let file = dir.path().join("sites/shop.toml");
        assert_errors(
            &e,
            &[&format!(
                "{}:1:16: tls.cert: the first certificate in ",
                file.display()
            )],
        );
    }

    #[test]
    fn key_not_matching_certificate() {
        let (one, two) = (generate(), generate());
        let dir = cert_dir(&[("a.crt", &one.cert), ("b.key", &two.key)]);
        let e = dir_errors(dir.path(), &[("shop", &tls_site("a.crt", "b.key"))]);
        let file = dir.path().join("sites/shop.toml");
        assert_errors(
            &e,
            &[&format!(
                "{}:1:40: tls.key does not match tls.cert",
                file.display()
            )],
        );
    }

    #[test]
    fn tls_fields() {
        let e = errors(
            "",
            &[
                ("a", &format!("redirect_https = true\n{SITE}")),
                (
                    "b",
                    &format!(
                        "tls = {{ cert = \"x.crt\", chain = \"y\" }}\n{}",
                        SITE.replace("a.example", "b.example")
                    ),
                ),
            ],
        );
        assert_errors(
            &e,
            &[
                "cfg/sites/a.toml:1:18: redirect_https: needs tls = { cert = \"...\", key = \"...\" } in this site",
                "cfg/sites/b.toml:1:7: tls: missing field \"key\"",
                "cfg/sites/b.toml:1:16: tls.cert: cannot read cfg/sites/x.crt: ",
                "cfg/sites/b.toml:1:25: unknown field \"chain\" in [tls] (expected one of: cert, key, acme)",
            ],
        );
    }
}
