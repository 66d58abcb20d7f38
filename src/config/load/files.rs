//! A route's files settings: `files` (a directory, relative to the site
//! file, that must exist), `index`, `cache_control` and `internal`.

use std::path::{Path, PathBuf};

use super::super::Files;
use super::diagnostics::Cx;
use super::values::{Table, Val, get_bool, get_str};

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
    let dir = files_dir(cx, v, &t.child("files"), base);
    let mut ok = true;
    let mut files = Files {
        dir: dir.unwrap_or_default(),
        index: None,
        cache_control: None,
        internal: false,
    };
    if let Some(v) = t.get("index") {
        files.index = parse_index(cx, v, &t.child("index"));
        ok &= files.index.is_some();
    }
    if let Some(v) = t.get("cache_control") {
        files.cache_control = parse_cache_control(cx, v, &t.child("cache_control"));
        ok &= files.cache_control.is_some();
    }
    if let Some(v) = t.get("internal") {
        match get_bool(cx, v, &t.child("internal")) {
            Some(b) => files.internal = b,
            None => ok = false,
        }
        if files.internal {
            internal_without_pools(cx, t);
        }
    }
    (ok && !files.dir.as_os_str().is_empty()).then_some(files)
}

/// `files`: a directory that exists, relative to the site file.
fn files_dir(cx: &mut Cx<'_>, v: &Val<'_>, field: &str, base: &Path) -> Option<PathBuf> {
    let s = get_str(cx, v, field)?;
    if s.is_empty() || s.contains('\0') {
        cx.error(
            v.span(),
            format!(
                "{field}: {s:?} is not a directory path; give one, as in files = \"../static\""
            ),
        );
        return None;
    }
    let dir = base.join(s);
    let problem = match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => return Some(dir),
        Ok(_) => format!("{} is not a directory", dir.display()),
        Err(e) => format!(
            "cannot open directory {}: {e} (paths are relative to the site file)",
            dir.display()
        ),
    };
    cx.error(v.span(), format!("{field}: {problem}"));
    None
}

/// `index`: a plain file name.
fn parse_index(cx: &mut Cx<'_>, v: &Val<'_>, field: &str) -> Option<String> {
    let name = get_str(cx, v, field)?;
    if valid_index(name) {
        return Some(name.to_owned());
    }
    cx.error(
        v.span(),
        format!(
            "{field}: {name:?} must be a plain file name in the directory, as in index = \"index.html\" (no \"/\", not starting with \".\")"
        ),
    );
    None
}

/// `cache_control`: a valid header value.
fn parse_cache_control(cx: &mut Cx<'_>, v: &Val<'_>, field: &str) -> Option<String> {
    let cc = get_str(cx, v, field)?;
    if !cc.is_empty() && http::HeaderValue::from_str(cc).is_ok() {
        return Some(cc.to_owned());
    }
    cx.error(
        v.span(),
        format!(
            "{field}: {cc:?} is not a valid header value, as in cache_control = \"public, max-age=3600\""
        ),
    );
    None
}

/// An internal route is never a client's, so a pool on it would be dead.
fn internal_without_pools(cx: &mut Cx<'_>, t: &Table<'_, '_>) {
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
