//! `[acme]` in `switchyard.toml` and `tls = { acme = true }` in site files:
//! checked offline (no request reaches the CA), so `switchyard check`
//! catches a typo before a CA's rate limit does.

use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::super::{Acme, AcmeChallenge, Site};
use super::diagnostics::Cx;
use super::hash::Fnv;
use super::values::{Table, Val, get_bool, get_str, read_file};

/// The fields of `[acme]`.
pub(super) const ACME_FIELDS: &[&str] = &["email", "directory", "challenge", "storage", "ca_roots"];

/// Let's Encrypt's production directory, the default.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Reads `[acme]`; files it names are relative to `dir` and feed `hash`.
/// A wrong field is reported and left at its default, so that the sites
/// still see the table (the configuration fails to load either way).
pub(super) fn parse_acme(cx: &mut Cx<'_>, t: &Table<'_, '_>, dir: &Path, hash: &mut Fnv) -> Acme {
    let mut acme = Acme {
        email: None,
        directory: LETS_ENCRYPT.to_owned(),
        challenge: AcmeChallenge::TlsAlpn01,
        storage: dir.join("acme"),
        ca_roots: None,
    };
    if let Some(v) = t.get("email") {
        match get_str(cx, v, "acme.email") {
            Some(s) if is_email(s) => acme.email = Some(s.to_owned()),
            Some(s) => {
                cx.error(
                    v.span(),
                    format!(
                        "acme.email: {s:?} is not an email address (expected name@domain, as in \"ops@example.com\")"
                    ),
                );
            }
            None => {}
        }
    }
    if let Some(v) = t.get("directory") {
        match get_str(cx, v, "acme.directory") {
            Some(s) if is_https_url(s) => acme.directory = s.to_owned(),
            Some(s) => {
                cx.error(
                    v.span(),
                    format!(
                        "acme.directory: {s:?} is not an https:// URL (the CA's directory, as in \"{LETS_ENCRYPT}\")"
                    ),
                );
            }
            None => {}
        }
    }
    if let Some(v) = t.get("challenge") {
        match get_str(cx, v, "acme.challenge") {
            Some("tls-alpn-01") => acme.challenge = AcmeChallenge::TlsAlpn01,
            Some("http-01") => acme.challenge = AcmeChallenge::Http01,
            Some(s) => {
                cx.error(
                    v.span(),
                    format!(
                        "acme.challenge: unknown challenge {s:?} (expected \"tls-alpn-01\" or \"http-01\")"
                    ),
                );
            }
            None => {}
        }
    }
    if let Some(v) = t.get("storage") {
        match get_str(cx, v, "acme.storage") {
            Some("") => {
                cx.error(v.span(), "acme.storage: must not be empty");
            }
            Some(s) => acme.storage = dir.join(s),
            None => {}
        }
    }
    if let Some(v) = t.get("ca_roots") {
        acme.ca_roots = parse_roots(cx, v, dir, hash);
    }
    acme
}

/// `ca_roots`: a PEM file with at least one certificate.
fn parse_roots(
    cx: &mut Cx<'_>,
    v: &Val<'_>,
    dir: &Path,
    hash: &mut Fnv,
) -> Option<(
    std::path::PathBuf,
    Vec<rustls::pki_types::CertificateDer<'static>>,
)> {
    let (path, bytes) = read_file(cx, v, "acme.ca_roots", dir, hash)?;
    match rustls_pemfile::certs(&mut bytes.as_slice()).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => Some((path, certs)),
        Ok(_) => {
            cx.error(
                v.span(),
                format!(
                    "acme.ca_roots: no certificate found in {} (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)",
                    path.display()
                ),
            );
            None
        }
        Err(e) => {
            cx.error(
                v.span(),
                format!("acme.ca_roots: cannot parse PEM in {}: {e}", path.display()),
            );
            None
        }
    }
}

/// An address a CA takes as a contact: one `@` between a non-empty local
/// part and a domain of at least two labels, no spaces, no `mailto:`.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let labels_ok = domain.split('.').count() >= 2
        && domain.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    !local.is_empty()
        && !local.starts_with("mailto:")
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@')
        && labels_ok
}

/// An `https://` URL with a host.
fn is_https_url(s: &str) -> bool {
    let Ok(uri) = s.parse::<http::Uri>() else {
        return false;
    };
    uri.scheme_str() == Some("https") && uri.host().is_some_and(|h| !h.is_empty())
}

/// A site's `tls.acme`: sets [`Site::acme`], and reports `acme = true`
/// without an `[acme]` table or beside `cert` / `key`.
pub(super) fn check_site(
    cx: &mut Cx<'_>,
    root: &Spanned<DeTable<'_>>,
    site: &mut Site,
    acme_configured: bool,
) {
    let Some(tls) = root.get_ref().get("tls") else {
        return;
    };
    let DeValue::Table(table) = tls.get_ref() else {
        return;
    };
    let Some(v) = table.get("acme") else {
        return;
    };
    let Some(on) = get_bool(cx, v, "tls.acme") else {
        return;
    };
    if !on {
        return;
    }
    for field in ["cert", "key"] {
        if let Some(f) = table.get(field) {
            cx.error(
                f.span(),
                format!(
                    "tls.{field}: not used with tls.acme = true (the certificate is ordered from [acme]); remove one or the other"
                ),
            );
        }
    }
    if !acme_configured {
        cx.error(
            v.span(),
            "tls.acme: needs an [acme] table in switchyard.toml (email = \"ops@example.com\", and optionally directory, challenge, storage, ca_roots)",
        );
        return;
    }
    site.acme = true;
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    fn acme_site() -> String {
        format!("tls = {{ acme = true }}\nredirect_https = true\n{SITE}")
    }

    #[test]
    fn defaults_and_fields() {
        let config = ok(
            "[acme]\nemail = \"ops@example.com\"\n",
            &[("shop", &acme_site())],
        );
        let acme = config.acme.as_ref().unwrap();
        assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
        assert_eq!(acme.directory, LETS_ENCRYPT);
        assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(acme.storage, cfg().join("acme"));
        assert!(acme.ca_roots.is_none());
        assert!(config.sites[0].acme);
        assert!(config.sites[0].tls.is_none());
        assert!(config.sites[0].redirect_https);

        let main = "[acme]\ndirectory = \"https://localhost:14000/dir\"\nchallenge = \"http-01\"\nstorage = \"state/acme\"\n";
        let config = ok(main, &[("shop", &acme_site())]);
        let acme = config.acme.as_ref().unwrap();
        assert_eq!(acme.email, None);
        assert_eq!(acme.directory, "https://localhost:14000/dir");
        assert_eq!(acme.challenge, AcmeChallenge::Http01);
        assert_eq!(acme.storage, cfg().join("state/acme"));

        // No ACME site: the table alone is fine, and acme = false is a
        // site with files.
        let config = ok("[acme]\n", &[("shop", SITE)]);
        assert!(!config.sites[0].acme);
    }

    #[test]
    fn ca_roots_are_read() {
        let pem = generate();
        let dir = cert_dir(&[("ca.pem", &pem.cert), ("empty.pem", "")]);
        let main = "[acme]\nca_roots = \"certs/ca.pem\"\n";
        let config = super::super::load_str(dir.path(), main, &[("shop", &acme_site())]).unwrap();
        let (path, roots) = config.acme.unwrap().ca_roots.unwrap();
        assert_eq!(path, dir.path().join("certs/ca.pem"));
        assert_eq!(roots.len(), 1);

        let main = "[acme]\nca_roots = \"certs/empty.pem\"\n";
        let e = match super::super::load_str(dir.path(), main, &[("shop", &acme_site())]) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        let file = dir.path().join("switchyard.toml");
        assert_errors(
            &e,
            &[&format!(
                "{}:2:12: acme.ca_roots: no certificate found in ",
                file.display()
            )],
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let main = "[acme]\nemail = \"ops at example.com\"\ndirectory = \"http://ca.example/dir\"\nchallenge = \"dns-01\"\nstorage = \"\"\nretry = 3\n";
        let e = errors(main, &[("shop", &acme_site())]);
        assert_errors(
            &e,
            &[
                "cfg/switchyard.toml:2:9: acme.email: \"ops at example.com\" is not an email address",
                "cfg/switchyard.toml:3:13: acme.directory: \"http://ca.example/dir\" is not an https:// URL",
                "cfg/switchyard.toml:4:13: acme.challenge: unknown challenge \"dns-01\" (expected \"tls-alpn-01\" or \"http-01\")",
                "cfg/switchyard.toml:5:11: acme.storage: must not be empty",
                "cfg/switchyard.toml:6:1: unknown field \"retry\" in [acme]",
            ],
        );
    }

    #[test]
    fn acme_site_needs_the_table_and_no_files() {
        let e = errors("", &[("shop", &acme_site())]);
        assert_errors(
            &e,
            &["cfg/sites/shop.toml:1:16: tls.acme: needs an [acme] table in switchyard.toml"],
        );
        let site = format!("tls = {{ acme = true, cert = \"a.crt\" }}\n{SITE}");
        let e = errors("[acme]\n", &[("shop", &site)]);
        assert_errors(
            &e,
            &["cfg/sites/shop.toml:1:29: tls.cert: not used with tls.acme = true"],
        );
        let site = format!("tls = {{ acme = \"yes\" }}\n{SITE}");
        let e = errors("[acme]\n", &[("shop", &site)]);
        assert_errors(
            &e,
            &["cfg/sites/shop.toml:1:16: expected true or false for tls.acme, found string"],
        );
    }

    #[test]
    fn email_shapes() {
        for good in ["ops@example.com", "a.b+c@mail.example.org"] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "ops",
            "@example.com",
            "ops@",
            "ops@localhost",
            "ops@@example.com",
            "mailto:ops@example.com",
            "o ps@example.com",
            "ops@exa_mple.com",
            "ops@example..com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }
}
