//! A route's files settings: `files` (a directory, relative to the site
//! file, that must exist), `index`, `cache_control` and `internal`.

use std::path::Path;

use super::super::Files;
use super::diagnostics::Cx;
use super::values::{Table, get_bool, get_str};

/// The route's `files` settings, or None when it serves no files (or they
/// are invalid; every problem is reported).
pub(super) fn parse_files(cx: &mut Cx<'_>, t: &Table<'_, '_>, base: &Path) -> Option<Files> {
    let Some(v) = t.get("files") else {
        for name in ["index", "cache_control", "internal"] {
            if let Some(v) = t.get(name) {
                cx.error(
                    v.span(),
                    format!(
                        "{}: only applies to a route that serves files, but this route has no files = \"DIR\"",
                        t.child(name)
                    ),
                );
            }
        }
        return None;
    };
    let field = t.child("files");
    let mut ok = true;
    let dir = get_str(cx, v, &field).and_then(|s| {
        let problem = if s.is_empty() {
            Some("must not be empty; give the directory, as in files = \"../static\"".to_owned())
        } else if s.contains('\0') {
            Some(format!("{s:?} must not contain a NUL character"))
        } else {
            None
        };
        if let Some(p) = problem {
            cx.error(v.span(), format!("{field}: {p}"));
            return None;
        }
        let dir = base.join(s);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Some(dir),
            Ok(_) => {
                cx.error(
                    v.span(),
                    format!("{field}: {} is not a directory", dir.display()),
                );
                None
            }
            Err(e) => {
                cx.error(
                    v.span(),
                    format!(
                        "{field}: cannot open directory {}: {e} (paths are relative to the site file)",
                        dir.display()
                    ),
                );
                None
            }
        }
    });
    let mut files = Files {
        dir: dir.unwrap_or_default(),
        index: None,
        cache_control: None,
        internal: false,
    };
    if let Some(v) = t.get("index") {
        let field = t.child("index");
        match get_str(cx, v, &field) {
            Some(name) if valid_index(name) => files.index = Some(name.to_owned()),
            Some(name) => {
                cx.error(
                    v.span(),
                    format!(
                        "{field}: {name:?} must be a plain file name in the directory, as in index = \"index.html\" (no \"/\", not starting with \".\")"
                    ),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(v) = t.get("cache_control") {
        let field = t.child("cache_control");
        match get_str(cx, v, &field) {
            Some(cc) if !cc.is_empty() && http::HeaderValue::from_str(cc).is_ok() => {
                files.cache_control = Some(cc.to_owned());
            }
            Some(cc) => {
                cx.error(
                    v.span(),
                    format!(
                        "{field}: {cc:?} is not a valid header value, as in cache_control = \"public, max-age=3600\""
                    ),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(v) = t.get("internal") {
        match get_bool(cx, v, &t.child("internal")) {
            Some(b) => files.internal = b,
            None => ok = false,
        }
        if files.internal {
            for name in ["pool", "websocket"] {
                if let Some(p) = t.get(name) {
                    cx.error(
                        p.span(),
                        format!(
                            "{}: an internal route answers clients 404 and is reached only through X-Accel-Redirect, so it never uses a pool; remove {name} or internal",
                            t.child(name)
                        ),
                    );
                }
            }
        }
    }
    (ok && !files.dir.as_os_str().is_empty()).then_some(files)
}

/// An index file name: one plain path segment.
fn valid_index(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::super::load_str;
    use super::super::test_support::*;

    fn site(dir: &str, extra: &str) -> String {
        format!(
            "hosts = [\"a.example\"]\n[pools.web]\nservers = [\"127.0.0.1:8000\"]\n[[routes]]\npath = \"/static/\"\nfiles = {dir:?}\n{extra}"
        )
    }

    #[test]
    fn files_routes_load() {
        let tmp = tempfile::tempdir().unwrap();
        let sites = tmp.path().join("sites");
        std::fs::create_dir_all(tmp.path().join("static")).unwrap();
        std::fs::create_dir_all(&sites).unwrap();
        let text = site(
            "../static",
            "index = \"index.html\"\ncache_control = \"public, max-age=60\"\npool = \"web\"\n",
        );
        let config = load_str(tmp.path(), "", &[("shop", &text)]).unwrap();
        let f = config.sites[0].routes[0].files.as_ref().unwrap();
        assert_eq!(f.dir, sites.join("../static"));
        assert_eq!(f.index.as_deref(), Some("index.html"));
        assert_eq!(f.cache_control.as_deref(), Some("public, max-age=60"));
        assert!(!f.internal);
    }

    #[test]
    fn bad_files_settings_are_reported() {
        let e = errors(
            "",
            &[(
                "shop",
                &site(
                    "../no-such-dir",
                    "index = \"../x\"\ncache_control = \"a\\nb\"\ninternal = true\npool = \"web\"\n",
                ),
            )],
        );
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:6:9: routes[0].files: cannot open directory cfg/sites/../no-such-dir",
                "cfg/sites/shop.toml:7:9: routes[0].index: \"../x\" must be a plain file name",
                "cfg/sites/shop.toml:8:17: routes[0].cache_control: \"a\\nb\" is not a valid header value",
                "cfg/sites/shop.toml:10:8: routes[0].pool: an internal route answers clients 404",
            ],
        );
        let e = errors(
            "",
            &[(
                "shop",
                &format!("{SITE}index = \"i.html\"\ninternal = false\n"),
            )],
        );
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:7:9: routes[0].index: only applies to a route that serves files",
                "cfg/sites/shop.toml:8:12: routes[0].internal: only applies to a route that serves files",
            ],
        );
    }
}
