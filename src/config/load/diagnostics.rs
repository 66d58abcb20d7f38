//! Where a problem is and how it is worded: the per-file context [`Cx`] that
//! turns byte offsets into `FILE:LINE:COL` and collects the errors (TOML
//! syntax errors included), and the helpers every checker shares for the
//! common messages (unknown fields with a "did you mean" hint, wrong types,
//! what was found). Kept apart so that every message about a field is
//! phrased and located the same way, whichever file checks it.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::super::{ConfigError, ConfigErrors};
use super::values::Val;

/// A single error located at the start of `file`.
pub(super) fn single(file: &Path, message: String) -> ConfigErrors {
    ConfigErrors(vec![at_start(file, message)])
}

/// An error at the start of `file`, for a problem with the whole file.
pub(super) fn at_start(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: 1,
        col: 1,
        message: message.into(),
    }
}

/// One file being checked: where its errors go and how to locate them.
pub(super) struct Cx<'a> {
    pub(super) file: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
    errors: &'a mut Vec<ConfigError>,
}

impl<'a> Cx<'a> {
    /// Starts checking `text`, the content of `file`; errors go to `errors`.
    pub(super) fn new(file: &'a Path, text: &'a str, errors: &'a mut Vec<ConfigError>) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Cx {
            file,
            text,
            line_starts,
            errors,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line.max(1), col + 1)
    }

    /// Reports `message` at the start of `span`.
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }
}

/// Parses the file's TOML, reporting a syntax error at its location.
///
/// Only the first syntax error is reported: what follows it cannot be read
/// reliably, and the file's fields are not checked until it parses.
pub(super) fn parse_toml<'i>(cx: &mut Cx<'i>) -> Option<Spanned<DeTable<'i>>> {
    match DeTable::parse(cx.text) {
        Ok(root) => Some(root),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.error(span, format!("invalid TOML: {}", e.message()));
            None
        }
    }
}

/// How a table is named in messages: `[pools.web]`, `routes[1]`, or the top level.
fn describe_table(path: &str) -> String {
    if path.is_empty() {
        "the top level".to_owned()
    } else if path.ends_with(']') {
        path.to_owned()
    } else {
        format!("[{path}]")
    }
}

/// The message for a key not in `allowed`, with a hint if one is close.
pub(super) fn unknown_field(name: &str, path: &str, allowed: &[&str]) -> String {
    let mut message = format!(
        "unknown field {name:?} in {} (expected one of: {})",
        describe_table(path),
        allowed.join(", ")
    );
    if let Some(best) = allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2 && *d < a.len())
        .min_by_key(|(d, _)| *d)
    {
        message.push_str(&format!("; did you mean {:?}?", best.1));
    }
    message
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// What a value is, for "found ..." in messages.
pub(super) fn found(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => {
            let s: &str = s.as_ref();
            if s.chars().count() > 40 {
                let short: String = s.chars().take(40).collect();
                format!("string {short:?}...")
            } else {
                format!("string {s:?}")
            }
        }
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        other => other.type_str().to_owned(),
    }
}

/// Reports that the value at `path` is not `expected`.
pub(super) fn type_error(cx: &mut Cx<'_>, v: &Val<'_>, expected: &str, path: &str) {
    cx.error(
        v.span(),
        format!(
            "expected {expected} for {path}, found {}",
            found(v.get_ref())
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn syntax_errors_are_located() {
        let e = errors(
            "[listen]\nhttps = [\"0.0.0.0:1\"\nhttp = []\n",
            &[("shop", SITE)],
        );
        // Reported where the parser noticed: the line after the unclosed array.
        assert_errors(
            &e,
            &["cfg/switchyard.toml:3:1: invalid TOML: missing comma between array elements"],
        );

        // A syntax error in one file does not hide errors in others.
        let e = errors(
            "[timeouts]\nheader = \"1x\"\n",
            &[("a", "hosts = [\"a.example\"\n"), ("b", "hosts = \"b\"\n")],
        );
        assert_errors(
            &e,
            &[
                "cfg/switchyard.toml:2:10: timeouts.header: expected a duration like \"10s\" or \"500ms\", found \"1x\"",
                "cfg/sites/a.toml:1:",
                "cfg/sites/b.toml:1:9: expected an array for hosts, found string \"b\"",
            ],
        );
        assert!(e[1].contains("invalid TOML"), "{}", e[1]);

        let e = errors("", &[("a", &format!("hosts = [\"x\"]\n{SITE}"))]);
        assert_errors(&e, &["cfg/sites/a.toml:2:1: invalid TOML: duplicate key"]);
    }

    #[test]
    fn unknown_fields_everywhere() {
        let main = r#"[listen]
htps = ["0.0.0.0:1"]
[timeouts]
headr = "1s"
[limits]
max_conections = 5
[runtime]
threads = 2
[log]
colour = true
[extra]
"#;
        let site = r#"hosts = ["a.example"]
tsl = 1
[pools.web]
servers = ["127.0.0.1:8000"]
max_inflight = 4
health = { path = "/h", intervall = "1s" }
[[routes]]
path = "/"
pool = "web"
websockets = "web"
"#;
        let e = errors(main, &[("shop", site)]);
        assert_errors(
            &e,
            &[
                "cfg/switchyard.toml:2:1: unknown field \"htps\" in [listen] (expected one of: https, http, admin, proxy_protocol, trusted_proxies); did you mean \"https\"?",
                "cfg/switchyard.toml:4:1: unknown field \"headr\" in [timeouts] (expected one of: header, idle, upstream_connect, upstream_response, drain); did you mean \"header\"?",
                "cfg/switchyard.toml:6:1: unknown field \"max_conections\" in [limits]",
                "cfg/switchyard.toml:8:1: unknown field \"threads\" in [runtime] (expected one of: worker_threads)",
                "cfg/switchyard.toml:10:1: unknown field \"colour\" in [log] (expected one of: format, level)",
                "cfg/switchyard.toml:11:2: unknown field \"extra\" in the top level (expected one of: listen, timeouts, limits, runtime, log, tls, acme)",
                "cfg/sites/shop.toml:2:1: unknown field \"tsl\" in the top level (expected one of: hosts, tls, redirect_https, removed_sessions, close_window, error_pages, pools, routes); did you mean \"tls\"?",
                "cfg/sites/shop.toml:5:1: unknown field \"max_inflight\" in [pools.web] (expected one of: servers, max_in_flight, queue_timeout, max_queue, max_body, buffering, health); did you mean \"max_in_flight\"?",
                "cfg/sites/shop.toml:6:25: unknown field \"intervall\" in [pools.web.health] (expected one of: path, interval, timeout, rise, fall); did you mean \"interval\"?",
                "cfg/sites/shop.toml:10:1: unknown field \"websockets\" in routes[0] (expected one of: name, path, pool, websocket, idle_timeout, ping_interval, max_message_bytes, upstream_response, files, index, cache_control, internal, compress); did you mean \"websocket\"?",
            ],
        );
        // No far-fetched suggestions.
        assert!(!e[5].contains("did you mean"), "{}", e[5]);
    }

    #[test]
    fn positions_count_characters() {
        let mut errors = Vec::new();
        let text = "a = 1\nbé = \"x\"\n";
        let cx = Cx::new(Path::new("f"), text, &mut errors);
        assert_eq!(cx.position(0), (1, 1));
        assert_eq!(cx.position(4), (1, 5));
        assert_eq!(cx.position(6), (2, 1));
        // The "=" after "bé " (4 bytes, 3 characters).
        assert_eq!(cx.position(10), (2, 4));
        assert_eq!(cx.position(text.len()), (3, 1));
        assert_eq!(cx.position(usize::MAX), (3, 1));
    }
}
