//! Path mapping: from a request path under a route's prefix to a relative
//! path beneath the route's directory, refusing anything that could name a
//! file outside it or one that should not be served.
//!
//! The mapping is lexical and strict; [`super::open`] adds the kernel's
//! guarantee (`openat2` with `RESOLVE_BENEATH`) for symlinks.

use std::path::PathBuf;

/// A request path mapped beneath a files route's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// Relative path: only plain names, none starting with `.`; empty for
    /// the directory itself.
    pub path: PathBuf,
    /// The request path ended in `/`: it names a directory (its index).
    pub directory: bool,
}

/// Maps `path` (as the request carries it: percent-encoded, without query)
/// under the route prefix `prefix` to a path beneath the route's directory;
/// `None` when it must not be served from disk.
///
/// Refused: a path not under `prefix`, a segment starting with `.` (which
/// covers `.`, `..`, `.git`, `.env`), percent-encoding that is malformed or
/// decodes to `/`, `\`, NUL or another control character, and anything that
/// does not decode to UTF-8 (which covers overlong encodings such as
/// `%c0%ae`). Empty segments (`//`) are skipped, as nginx merges slashes.
pub fn map_path(prefix: &str, path: &str) -> Option<Mapped> {
    let rest = path.strip_prefix(prefix)?;
    // A prefix without a trailing slash matches only whole segments:
    // `/static` must not make `/static../secret` into `<dir>/../secret`.
    if !prefix.ends_with('/') && !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    let mut out = PathBuf::new();
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        let name = decode_segment(segment)?;
        if name.starts_with('.') {
            return None;
        }
        out.push(name);
    }
    Some(Mapped {
        path: out,
        directory: path.ends_with('/'),
    })
}

/// Percent-decodes one path segment; `None` if the encoding is malformed or
/// the result is not a plain, printable UTF-8 file name.
fn decode_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    if out
        .iter()
        .any(|&b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        return None;
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(path: &str) -> Option<String> {
        map_path("/static/", path).map(|m| m.path.to_string_lossy().into_owned())
    }

    #[test]
    fn plain_paths_map_beneath_the_directory() {
        assert_eq!(mapped("/static/css/a.css").as_deref(), Some("css/a.css"));
        assert_eq!(mapped("/static/a%20b.txt").as_deref(), Some("a b.txt"));
        assert_eq!(mapped("/static//css//a.css").as_deref(), Some("css/a.css"));
        assert_eq!(mapped("/static/caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(mapped("/static/").as_deref(), Some(""));
        assert!(map_path("/static/", "/static/docs/").unwrap().directory);
        assert!(!map_path("/static/", "/static/docs").unwrap().directory);
    }

    #[test]
    fn escapes_and_hidden_files_are_refused() {
        for p in [
            "/static/../secret",
            "/static/%2e%2e/secret",
            "/static/%2E%2E%2Fsecret",
            "/static/..%2fsecret",
            "/static/..%5csecret",
            "/static/..\\secret",
            "/static/a\\b",
            "/static/%c0%ae%c0%ae/secret",
            "/static/%zz",
            "/static/%",
            "/static/%2",
            "/static/a%00.txt",
            "/static/.env",
            "/static/.git/config",
            "/static/%2eenv",
            "/static/./a",
            "/static/a/..",
            "/static/a%0a",
            "/static/%ff",
            "/other/a",
        ] {
            assert_eq!(mapped(p), None, "{p}");
        }
    }

    #[test]
    fn a_prefix_without_slash_matches_whole_segments() {
        assert_eq!(map_path("/static", "/static../secret"), None);
        assert_eq!(map_path("/static", "/staticfoo"), None);
        let m = map_path("/static", "/static/a.css").unwrap();
        assert_eq!(m.path, PathBuf::from("a.css"));
        assert_eq!(map_path("/static", "/static").unwrap().path, PathBuf::new());
    }
}
