//! A site's `error_pages = { 502 = "errors/502.html" }`: each key a status
//! code from 400 to 599, each value a file relative to the site file, read
//! whole at load (and so on every reload), so that answering with a page
//! reads no file. Every page read feeds the configuration hash.

use std::path::Path;

use toml::de::DeValue;

use super::super::ErrorPages;
use super::diagnostics::{Cx, type_error};
use super::hash::Fnv;
use super::values::{Val, join, read_file};

/// Reads `error_pages`; a bad key or an unreadable file is reported.
pub(super) fn parse_error_pages(
    cx: &mut Cx<'_>,
    v: &Val<'_>,
    base: &Path,
    hash: &mut Fnv,
) -> ErrorPages {
    let DeValue::Table(table) = v.get_ref() else {
        type_error(cx, v, "a table of status codes to files", "error_pages");
        return ErrorPages::default();
    };
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let mut pages = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let name: &str = key.get_ref().as_ref();
        let path = join("error_pages", name);
        let Some(status) = status_code(name) else {
            cx.error(
                key.span(),
                format!(
                    "{path}: {name:?} is not a status code from 400 to 599 (as in 502 = \"errors/502.html\")"
                ),
            );
            continue;
        };
        if let Some((_, page)) = read_file(cx, value, &path, base, hash) {
            pages.push((status, page.into()));
        }
    }
    ErrorPages::new(pages)
}

/// The status code a key names: three digits, 400 to 599.
fn status_code(key: &str) -> Option<u16> {
    if key.len() != 3 || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse().ok().filter(|s| (400..=599).contains(s))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::load_str;
    use super::super::test_support::*;

    /// [`SITE`] with these `error_pages`.
    fn pages_site(pages: &str) -> String {
        format!("error_pages = {pages}\n{SITE}")
    }

    #[test]
    fn pages_load_relative_to_the_site_file() {
        let dir = cert_dir(&[]);
        fs::create_dir_all(dir.path().join("sites/errors")).unwrap();
        fs::write(dir.path().join("sites/errors/502.html"), "<p>down</p>").unwrap();
        fs::write(dir.path().join("certs/503.html"), "<p>busy</p>").unwrap();
        let site = pages_site(r#"{ 502 = "errors/502.html", 503 = "../certs/503.html" }"#);
        let config = load_str(dir.path(), "", &[("shop", &site)]).unwrap();
        let pages = &config.sites[0].error_pages;
        assert_eq!(pages.get(502).map(|b| &b[..]), Some(&b"<p>down</p>"[..]));
        assert_eq!(pages.get(503).map(|b| &b[..]), Some(&b"<p>busy</p>"[..]));
        assert_eq!(pages.get(504), None);
        assert!(
            ok("", &[("shop", SITE)]).sites[0]
                .error_pages
                .get(502)
                .is_none()
        );
    }

    #[test]
    fn missing_page_file() {
        let dir = cert_dir(&[]);
        let site = pages_site(r#"{ 502 = "errors/502.html" }"#);
        let e = match load_str(dir.path(), "", &[("shop", &site)]) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        let file = dir.path().join("sites/shop.toml");
        let page = dir.path().join("sites/errors/502.html");
        assert_errors(
            &e,
            &[&format!(
                "{}:1:23: error_pages.502: cannot read {}: No such file or directory",
                file.display(),
                page.display()
            )],
        );
    }

    #[test]
    fn bad_status_keys_and_values() {
        let site =
            pages_site(r#"{ 200 = "a.html", 5xx = "b.html", 0502 = "c.html", 503 = 1, 504 = "" }"#);
        let e = errors("", &[("shop", &site)]);
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:1:17: error_pages.200: \"200\" is not a status code from 400 to 599 (as in 502 = \"errors/502.html\")",
                "cfg/sites/shop.toml:1:33: error_pages.5xx: \"5xx\" is not a status code from 400 to 599",
                "cfg/sites/shop.toml:1:49: error_pages.0502: \"0502\" is not a status code from 400 to 599",
                "cfg/sites/shop.toml:1:72: expected a string for error_pages.503, found integer 1",
                "cfg/sites/shop.toml:1:81: error_pages.504: must not be empty",
            ],
        );
        let e = errors("", &[("shop", &pages_site("\"errors/502.html\""))]);
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:1:15: expected a table of status codes to files for error_pages, found string",
            ],
        );
    }
}
