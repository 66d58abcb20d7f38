//! Helpers shared by the tests of every file in `load`: a small valid site,
//! shorthands for loading text and asserting on the errors, and throwaway
//! certificates in a temporary directory.

use std::fs;
use std::path::Path;

use super::super::Config;
use super::load_str;

/// A small valid site; tests append to or vary it.
pub(super) const SITE: &str = r#"hosts = ["a.example"]
[pools.web]
servers = ["127.0.0.1:8000"]
[[routes]]
path = "/"
pool = "web"
"#;

/// The directory the tests that load text pretend to load.
pub(super) fn cfg() -> &'static Path {
    Path::new("cfg")
}

/// Loads text that must be a valid configuration.
pub(super) fn ok(main: &str, sites: &[(&str, &str)]) -> Config {
    match load_str(cfg(), main, sites) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// Loads text that must be invalid; each error as `FILE:LINE:COL: message`.
pub(super) fn errors(main: &str, sites: &[(&str, &str)]) -> Vec<String> {
    match load_str(cfg(), main, sites) {
        Ok(_) => panic!("expected errors, got a valid config"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts there are exactly as many errors as `expected`, each starting
/// with its expected prefix, in order.
#[track_caller]
pub(super) fn assert_errors(actual: &[String], expected: &[&str]) {
    let listing = actual.join("\n");
    assert_eq!(
        actual.len(),
        expected.len(),
        "wrong number of errors:\n{listing}"
    );
    for (a, e) in actual.iter().zip(expected) {
        assert!(
            a.starts_with(e),
            "expected an error starting with\n  {e}\ngot\n  {a}\nall:\n{listing}"
        );
    }
}

/// A certificate and its private key, PEM-encoded.
pub(super) struct Pem {
    pub(super) cert: String,
    pub(super) key: String,
}

/// A fresh self-signed certificate for `localhost`.
pub(super) fn generate() -> Pem {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    Pem {
        cert: ck.cert.pem(),
        key: ck.signing_key.serialize_pem(),
    }
}

/// A temporary config directory with `certs/` beside `sites/`.
pub(super) fn cert_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::TempDir::new().unwrap();
    fs::create_dir_all(dir.path().join("sites")).unwrap();
    fs::create_dir_all(dir.path().join("certs")).unwrap();
    for (name, content) in files {
        fs::write(dir.path().join("certs").join(name), content).unwrap();
    }
    dir
}

/// [`SITE`] with a `tls` naming two files in the `certs/` of [`cert_dir`].
pub(super) fn tls_site(cert: &str, key: &str) -> String {
    format!("tls = {{ cert = \"../certs/{cert}\", key = \"../certs/{key}\" }}\n{SITE}")
}
