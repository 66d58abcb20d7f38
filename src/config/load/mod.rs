//! Reading and checking a configuration directory.
//!
//! The TOML is parsed into a spanned tree ([`toml::de::DeTable`]) and walked
//! by hand, so that every problem in every file is collected, each with its
//! `FILE:LINE:COL`, instead of stopping at the first one.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

use super::units::{parse_duration, parse_size};
use super::{
    Config, ConfigError, ConfigErrors, Health, Limits, Listen, Log, LogFormat, Pool,
    RemovedSessions, Route, Runtime, Site, SiteTls, Timeouts, TrustedProxies,
};

/// The process-wide settings file inside the config directory.
const MAIN_FILE: &str = "switchyard.toml";
/// The directory of site files inside the config directory.
const SITES_DIR: &str = "sites";

const MAIN_FIELDS: &[&str] = &["listen", "timeouts", "limits", "runtime", "log"];
const LISTEN_FIELDS: &[&str] = &[
    "https",
    "http",
    "admin",
    "proxy_protocol",
    "trusted_proxies",
];
const TIMEOUT_FIELDS: &[&str] = &[
    "header",
    "idle",
    "upstream_connect",
    "upstream_response",
    "drain",
];
const LIMIT_FIELDS: &[&str] = &["max_connections", "max_header_bytes"];
const RUNTIME_FIELDS: &[&str] = &["worker_threads"];
const LOG_FIELDS: &[&str] = &["format", "level"];
const SITE_FIELDS: &[&str] = &[
    "hosts",
    "tls",
    "redirect_https",
    "removed_sessions",
    "close_window",
    "pools",
    "routes",
];
const TLS_FIELDS: &[&str] = &["cert", "key"];
const POOL_FIELDS: &[&str] = &[
    "servers",
    "max_in_flight",
    "queue_timeout",
    "max_queue",
    "max_body",
    "buffering",
    "health",
];
const HEALTH_FIELDS: &[&str] = &["path", "interval", "timeout", "rise", "fall"];
const ROUTE_FIELDS: &[&str] = &[
    "name",
    "path",
    "pool",
    "websocket",
    "idle_timeout",
    "ping_interval",
    "max_message_bytes",
];

/// Loads and checks the configuration directory `dir`: `dir/switchyard.toml`
/// (optional; every field has a default) and every `dir/sites/*.toml`
/// (at least one; the file stem is the site name; dot-files are ignored).
///
/// Returns every problem found, in file order, rather than the first one.
pub fn load(dir: &Path) -> Result<Config, ConfigErrors> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(single(
                dir,
                format!(
                    "{} is not a directory (expected a configuration directory holding {MAIN_FILE} and {SITES_DIR}/)",
                    dir.display()
                ),
            ));
        }
        Err(e) => {
            return Err(single(
                dir,
                format!("cannot read configuration directory {}: {e}", dir.display()),
            ));
        }
    }

    let mut errors = Vec::new();
    let main_path = dir.join(MAIN_FILE);
    let main = match fs::read_to_string(&main_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            errors.push(at_start(
                &main_path,
                format!("cannot read {}: {e}", main_path.display()),
            ));
            None
        }
    };

    let sites_dir = dir.join(SITES_DIR);
    let mut site_files = Vec::new();
    let mut seen = 0;
    match fs::read_dir(&sites_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(at_start(
            &sites_dir,
            format!("cannot read {}: {e}", sites_dir.display()),
        )),
        Ok(entries) => {
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        errors.push(at_start(
                            &sites_dir,
                            format!("cannot read {}: {e}", sites_dir.display()),
                        ));
                        continue;
                    }
                };
                let path = entry.path();
                let file_name = entry.file_name();
                let Some(file_name) = file_name.to_str() else {
                    if path.extension().is_some_and(|ext| ext == "toml") {
                        errors.push(at_start(
                            &path,
                            "site file names must be valid UTF-8 (the name is the site's metric label)",
                        ));
                    }
                    continue;
                };
                // Like the shell's `*.toml`: hidden files (editor backups,
                // Kubernetes ConfigMap internals) are not sites.
                if file_name.starts_with('.') {
                    continue;
                }
                let Some(stem) = file_name.strip_suffix(".toml") else {
                    continue;
                };
                // Follows symlinks, so ConfigMap-style links to files count.
                if !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                    continue;
                }
                seen += 1;
                match fs::read_to_string(&path) {
                    Ok(text) => site_files.push((stem.to_owned(), path, text)),
                    Err(e) => errors.push(at_start(
                        &path,
                        format!("cannot read {}: {e}", path.display()),
                    )),
                }
            }
        }
    }
    site_files.sort_by(|a, b| a.0.cmp(&b.0));

    build(dir, main.map(|t| (main_path, t)), site_files, seen, errors)
}

/// Like [`load`], but from text: `main` is the content of `switchyard.toml`
/// and `sites` pairs a site name with the content of `sites/NAME.toml`.
///
/// Errors name the files as `dir/switchyard.toml` and `dir/sites/NAME.toml`;
/// certificate paths resolve relative to `dir/sites/`, as they would for real
/// files.
pub fn load_str(dir: &Path, main: &str, sites: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let mut site_files: Vec<(String, PathBuf, String)> = sites
        .iter()
        .map(|(name, text)| {
            (
                (*name).to_owned(),
                dir.join(SITES_DIR).join(format!("{name}.toml")),
                (*text).to_owned(),
            )
        })
        .collect();
    site_files.sort_by(|a, b| a.0.cmp(&b.0));
    let seen = site_files.len();
    build(
        dir,
        Some((dir.join(MAIN_FILE), main.to_owned())),
        site_files,
        seen,
        Vec::new(),
    )
}

/// Parses and checks the files read by [`load`] or given to [`load_str`].
fn build(
    dir: &Path,
    main: Option<(PathBuf, String)>,
    sites: Vec<(String, PathBuf, String)>,
    site_files_seen: usize,
    mut errors: Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    let mut hash = Fnv::new();
    let sites_dir = dir.join(SITES_DIR);

    let mut process = Process::default();
    if let Some((path, text)) = &main {
        hash.file(MAIN_FILE, text.as_bytes());
        let mut cx = Cx::new(path, text, &mut errors);
        if let Some(root) = parse_toml(&mut cx) {
            process = parse_main(&mut cx, &root);
        }
    }

    let mut claimed: HashMap<String, (String, PathBuf)> = HashMap::new();
    let mut parsed_sites = Vec::with_capacity(sites.len());
    for (name, path, text) in &sites {
        hash.file(&format!("{SITES_DIR}/{name}.toml"), text.as_bytes());
        let base = path.parent().unwrap_or(&sites_dir).to_path_buf();
        let mut cx = Cx::new(path, text, &mut errors);
        if let Some(root) = parse_toml(&mut cx) {
            let site = parse_site(&mut cx, name, &base, &root, &mut claimed, &mut hash);
            parsed_sites.push(site);
        }
    }

    if site_files_seen == 0 {
        errors.push(at_start(
            &sites_dir,
            format!(
                "no sites configured: add at least one site file, such as {}",
                sites_dir.join("example.toml").display()
            ),
        ));
    }

    if !errors.is_empty() {
        // File order (switchyard.toml, then sites by name), then position.
        let mut order: Vec<&Path> = Vec::new();
        order.extend(main.as_ref().map(|(p, _)| p.as_path()));
        order.extend(sites.iter().map(|(_, p, _)| p.as_path()));
        let rank = |file: &Path| order.iter().position(|p| *p == file).unwrap_or(order.len());
        errors.sort_by_key(|e| (rank(&e.file), e.line, e.col));
        return Err(ConfigErrors(errors));
    }

    Ok(Config {
        dir: dir.to_path_buf(),
        listen: process.listen,
        timeouts: process.timeouts,
        limits: process.limits,
        runtime: process.runtime,
        log: process.log,
        sites: parsed_sites,
        hash: hash.finish(),
    })
}

/// A single error located at the start of `file`.
fn single(file: &Path, message: String) -> ConfigErrors {
    ConfigErrors(vec![at_start(file, message)])
}

fn at_start(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: 1,
        col: 1,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Locating errors.

/// One file being checked: where its errors go and how to locate them.
struct Cx<'a> {
    file: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
    errors: &'a mut Vec<ConfigError>,
}

impl<'a> Cx<'a> {
    fn new(file: &'a Path, text: &'a str, errors: &'a mut Vec<ConfigError>) -> Self {
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
    fn position(&self, offset: usize) -> (usize, usize) {
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

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
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
fn parse_toml<'i>(cx: &mut Cx<'i>) -> Option<Spanned<DeTable<'i>>> {
    match DeTable::parse(cx.text) {
        Ok(root) => Some(root),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.error(span, format!("invalid TOML: {}", e.message()));
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Walking the tree.

type Val<'i> = Spanned<DeValue<'i>>;

/// A TOML table being read: its known fields (unknown ones are reported when
/// it is opened) and its path for messages.
struct Table<'t, 'i> {
    path: String,
    span: Range<usize>,
    fields: Vec<(&'t str, &'t Val<'i>)>,
}

impl<'t, 'i> Table<'t, 'i> {
    /// Opens `table`, reporting every key not in `allowed`.
    fn open(
        cx: &mut Cx<'_>,
        table: &'t DeTable<'i>,
        span: Range<usize>,
        path: String,
        allowed: &[&str],
    ) -> Self {
        let mut entries: Vec<(&'t Spanned<DeString<'i>>, &'t Val<'i>)> = table.iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        let mut fields = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let name: &'t str = key.get_ref().as_ref();
            if allowed.contains(&name) {
                fields.push((name, value));
            } else {
                cx.error(key.span(), unknown_field(name, &path, allowed));
            }
        }
        Table { path, span, fields }
    }

    /// Opens the value `v` at `path` as a table.
    fn open_value(cx: &mut Cx<'_>, v: &'t Val<'i>, path: String, allowed: &[&str]) -> Option<Self> {
        match v.get_ref() {
            DeValue::Table(t) => Some(Table::open(cx, t, v.span(), path, allowed)),
            _ => {
                type_error(cx, v, "a table", &path);
                None
            }
        }
    }

    fn get(&self, name: &str) -> Option<&'t Val<'i>> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// The path of one of this table's fields.
    fn child(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Opens the sub-table `name`, if present.
    fn section(&self, cx: &mut Cx<'_>, name: &str, allowed: &[&str]) -> Option<Table<'t, 'i>> {
        let v = self.get(name)?;
        Table::open_value(cx, v, self.child(name), allowed)
    }

    /// Reports that the required field `name` is missing.
    fn missing(&self, cx: &mut Cx<'_>, name: &str, example: &str) {
        let prefix = if self.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.path)
        };
        cx.error(
            self.span.clone(),
            format!("{prefix}missing field \"{name}\", as in {example}"),
        );
    }
}

/// `parent.key`, quoting the key if it is not a bare TOML key.
fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
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

fn unknown_field(name: &str, path: &str, allowed: &[&str]) -> String {
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
fn found(v: &DeValue<'_>) -> String {
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

fn type_error(cx: &mut Cx<'_>, v: &Val<'_>, expected: &str, path: &str) {
    cx.error(
        v.span(),
        format!(
            "expected {expected} for {path}, found {}",
            found(v.get_ref())
        ),
    );
}

fn get_str<'v>(cx: &mut Cx<'_>, v: &'v Val<'_>, path: &str) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => {
            type_error(cx, v, "a string", path);
            None
        }
    }
}

fn get_bool(cx: &mut Cx<'_>, v: &Val<'_>, path: &str) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            type_error(cx, v, "true or false", path);
            None
        }
    }
}

fn get_array<'v, 'i>(cx: &mut Cx<'_>, v: &'v Val<'i>, path: &str) -> Option<&'v DeArray<'i>> {
    match v.get_ref() {
        DeValue::Array(a) => Some(a),
        _ => {
            type_error(cx, v, "an array", path);
            None
        }
    }
}

/// A non-negative integer in `min..=max`.
fn get_uint(cx: &mut Cx<'_>, v: &Val<'_>, path: &str, min: u64, max: u64) -> Option<u64> {
    let DeValue::Integer(i) = v.get_ref() else {
        type_error(cx, v, "an integer", path);
        return None;
    };
    let Ok(n) = i128::from_str_radix(i.as_str(), i.radix()) else {
        cx.error(v.span(), format!("{path}: {i} is too large"));
        return None;
    };
    if n < i128::from(min) {
        cx.error(
            v.span(),
            format!("{path}: must be at least {min}, found {n}"),
        );
        return None;
    }
    if n > i128::from(max) {
        cx.error(
            v.span(),
            format!("{path}: must be at most {max}, found {n}"),
        );
        return None;
    }
    u64::try_from(n).ok()
}

fn get_usize(cx: &mut Cx<'_>, v: &Val<'_>, path: &str, min: u64) -> Option<usize> {
    let max = u64::try_from(usize::MAX).unwrap_or(u64::MAX);
    get_uint(cx, v, path, min, max).and_then(|n| usize::try_from(n).ok())
}

/// A duration string such as `"10s"`; zero only if `allow_zero`.
fn get_duration(cx: &mut Cx<'_>, v: &Val<'_>, path: &str, allow_zero: bool) -> Option<Duration> {
    match v.get_ref() {
        DeValue::String(s) => match parse_duration(s) {
            Ok(d) if d.is_zero() && !allow_zero => {
                cx.error(v.span(), format!("{path}: must be greater than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                cx.error(v.span(), format!("{path}: {e}"));
                None
            }
        },
        DeValue::Integer(i) => {
            cx.error(
                v.span(),
                format!(
                    "expected a duration string like \"10s\" for {path}, found integer {i} (give a unit, as in \"{i}s\")"
                ),
            );
            None
        }
        _ => {
            type_error(cx, v, "a duration string like \"10s\"", path);
            None
        }
    }
}

/// A size: a string such as `"64KiB"` or an integer number of bytes, at least `min`.
fn get_size(cx: &mut Cx<'_>, v: &Val<'_>, path: &str, min: u64) -> Option<u64> {
    let n = match v.get_ref() {
        DeValue::String(s) => match parse_size(s) {
            Ok(n) => n,
            Err(e) => {
                cx.error(v.span(), format!("{path}: {e}"));
                return None;
            }
        },
        DeValue::Integer(_) => return get_uint(cx, v, path, min, u64::MAX),
        _ => {
            type_error(cx, v, "a size like \"64KiB\" or a number of bytes", path);
            return None;
        }
    };
    if n < min {
        cx.error(v.span(), format!("{path}: must be at least {min} bytes"));
        return None;
    }
    Some(n)
}

/// The string elements of an array, with their paths and spans; non-strings
/// are reported.
fn get_strings<'v>(
    cx: &mut Cx<'_>,
    v: &'v Val<'_>,
    path: &str,
) -> Option<Vec<(&'v str, String, Range<usize>)>> {
    let array = get_array(cx, v, path)?;
    let mut out = Vec::with_capacity(array.len());
    for (i, item) in array.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        if let Some(s) = get_str(cx, item, &item_path) {
            out.push((s, item_path, item.span()));
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// switchyard.toml

/// Everything `switchyard.toml` sets.
struct Process {
    listen: Listen,
    timeouts: Timeouts,
    limits: Limits,
    runtime: Runtime,
    log: Log,
}

impl Default for Process {
    fn default() -> Self {
        Process {
            listen: Listen {
                https: vec![SocketAddr::from(([0, 0, 0, 0], 8443))],
                http: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
                admin: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
                proxy_protocol: false,
                trusted_proxies: TrustedProxies::default(),
            },
            timeouts: Timeouts {
                header: Duration::from_secs(10),
                idle: Duration::from_secs(60),
                upstream_connect: Duration::from_secs(3),
                upstream_response: Duration::from_secs(60),
                drain: Duration::from_secs(30),
            },
            limits: Limits {
                max_connections: 50_000,
                max_header_bytes: 65_536,
            },
            runtime: Runtime { worker_threads: 0 },
            log: Log {
                format: LogFormat::Text,
                level: "info".to_owned(),
            },
        }
    }
}

fn parse_main(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>) -> Process {
    let mut p = Process::default();
    let top = Table::open(cx, root.get_ref(), root.span(), String::new(), MAIN_FIELDS);

    if let Some(listen) = top.section(cx, "listen", LISTEN_FIELDS) {
        parse_listen(cx, &listen, &mut p.listen);
    }

    if let Some(t) = top.section(cx, "timeouts", TIMEOUT_FIELDS) {
        let slots: [(&str, &mut Duration, bool); 5] = [
            ("header", &mut p.timeouts.header, false),
            ("idle", &mut p.timeouts.idle, false),
            ("upstream_connect", &mut p.timeouts.upstream_connect, false),
            (
                "upstream_response",
                &mut p.timeouts.upstream_response,
                false,
            ),
            ("drain", &mut p.timeouts.drain, true),
        ];
        for (name, slot, allow_zero) in slots {
            if let Some(v) = t.get(name)
                && let Some(d) = get_duration(cx, v, &t.child(name), allow_zero)
            {
                *slot = d;
            }
        }
    }

    if let Some(t) = top.section(cx, "limits", LIMIT_FIELDS) {
        if let Some(v) = t.get("max_connections")
            && let Some(n) = get_usize(cx, v, &t.child("max_connections"), 1)
        {
            p.limits.max_connections = n;
        }
        if let Some(v) = t.get("max_header_bytes") {
            let path = t.child("max_header_bytes");
            if let Some(n) = get_size(cx, v, &path, 1) {
                match usize::try_from(n) {
                    Ok(n) => p.limits.max_header_bytes = n,
                    Err(_) => cx.error(v.span(), format!("{path}: {n} is too large")),
                }
            }
        }
    }

    if let Some(t) = top.section(cx, "runtime", RUNTIME_FIELDS)
        && let Some(v) = t.get("worker_threads")
        && let Some(n) = get_usize(cx, v, &t.child("worker_threads"), 0)
    {
        p.runtime.worker_threads = n;
    }

    if let Some(t) = top.section(cx, "log", LOG_FIELDS) {
        if let Some(v) = t.get("format")
            && let Some(s) = get_str(cx, v, &t.child("format"))
        {
            match s {
                "text" => p.log.format = LogFormat::Text,
                "json" => p.log.format = LogFormat::Json,
                other => cx.error(
                    v.span(),
                    format!(
                        "{}: expected \"text\" or \"json\", found {other:?}",
                        t.child("format")
                    ),
                ),
            }
        }
        if let Some(v) = t.get("level")
            && let Some(s) = get_str(cx, v, &t.child("level"))
        {
            if s.trim().is_empty() {
                cx.error(
                    v.span(),
                    format!(
                        "{}: must not be empty (use a level such as \"info\")",
                        t.child("level")
                    ),
                );
            } else if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(s) {
                cx.error(
                    v.span(),
                    format!(
                        "{}: {s:?} is not a valid log filter ({e}); use a level such as \"info\" or directives such as \"info,switchyard=debug\"",
                        t.child("level")
                    ),
                );
            } else {
                p.log.level = s.to_owned();
            }
        }
    }
    p
}

fn parse_listen(cx: &mut Cx<'_>, t: &Table<'_, '_>, listen: &mut Listen) {
    // Every address in use, for conflict checks: (addr, path, span if written).
    let mut used: Vec<(SocketAddr, String, Option<Range<usize>>)> = Vec::new();

    for (name, slot, example) in [
        ("https", &mut listen.https, "0.0.0.0:8443"),
        ("http", &mut listen.http, "0.0.0.0:8080"),
    ] {
        let path = t.child(name);
        match t.get(name) {
            None => {
                for addr in slot.iter() {
                    used.push((*addr, path.clone(), None));
                }
            }
            Some(v) => {
                let mut addrs = Vec::new();
                for (s, item_path, span) in get_strings(cx, v, &path).unwrap_or_default() {
                    if let Some(addr) = socket_addr(cx, s, &item_path, span.clone(), example) {
                        addrs.push(addr);
                        used.push((addr, item_path, Some(span)));
                    }
                }
                *slot = addrs;
            }
        }
    }

    let admin_path = t.child("admin");
    match t.get("admin") {
        None => {
            if let Some(addr) = listen.admin {
                used.push((addr, admin_path, None));
            }
        }
        Some(v) => match v.get_ref() {
            DeValue::Boolean(false) => listen.admin = None,
            DeValue::String(s) if s.is_empty() => listen.admin = None,
            DeValue::String(s) => {
                listen.admin = None;
                if let Some(addr) = socket_addr(cx, s, &admin_path, v.span(), "127.0.0.1:9901") {
                    listen.admin = Some(addr);
                    used.push((addr, admin_path, Some(v.span())));
                }
            }
            other => cx.error(
                v.span(),
                format!(
                    "expected a socket address like \"127.0.0.1:9901\" for {admin_path} (or false to disable it), found {}",
                    found(other)
                ),
            ),
        },
    }

    if let Some(v) = t.get("proxy_protocol")
        && let Some(b) = get_bool(cx, v, &t.child("proxy_protocol"))
    {
        listen.proxy_protocol = b;
    }
    if let Some(v) = t.get("trusted_proxies") {
        let path = t.child("trusted_proxies");
        let mut ranges = Vec::new();
        for (s, item_path, span) in get_strings(cx, v, &path).unwrap_or_default() {
            match parse_cidr(s) {
                Ok(net) => ranges.push(net),
                Err(why) => cx.error(span, format!("{item_path}: {why}")),
            }
        }
        listen.trusted_proxies = TrustedProxies::new(ranges);
    }

    if listen.https.is_empty()
        && listen.http.is_empty()
        && t.get("https")
            .is_some_and(|v| matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()))
        && t.get("http")
            .is_some_and(|v| matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()))
    {
        cx.error(
            t.span.clone(),
            "listen: https and http are both empty, so no site could be reached",
        );
    }

    for (j, (b, b_path, b_span)) in used.iter().enumerate() {
        for (a, a_path, a_span) in &used[..j] {
            // Port 0 asks the OS for a fresh port each time: never a clash.
            if a.port() == 0 || b.port() == 0 {
                continue;
            }
            let same_port_wildcard = a.port() == b.port()
                && a.is_ipv4() == b.is_ipv4()
                && (a.ip().is_unspecified() || b.ip().is_unspecified());
            if a != b && !same_port_wildcard {
                continue;
            }
            let default_note = if a_span.is_none() {
                " (the default)"
            } else {
                ""
            };
            let (span, message) = match (b_span, a_span) {
                (Some(span), _) => (
                    span.clone(),
                    format!("{b_path}: {b} conflicts with {a_path} = \"{a}\"{default_note}"),
                ),
                (None, Some(span)) => (
                    span.clone(),
                    format!("{a_path}: {a} conflicts with {b_path} = \"{b}\" (the default)"),
                ),
                (None, None) => continue,
            };
            cx.error(span, message);
            break;
        }
    }
}

/// One `trusted_proxies` entry: a CIDR range, or a single address (as
/// nginx's `set_real_ip_from` takes either).
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(addr));
    }
    let Some((addr, prefix)) = s.split_once('/') else {
        return Err(format!(
            "expected a CIDR range like \"10.0.0.0/8\" or \"::1/128\", or an IP address, found {s:?}"
        ));
    };
    let addr: IpAddr = addr.parse().map_err(|_| {
        format!("{addr:?} is not an IP address (expected a CIDR range like \"10.0.0.0/8\")")
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("{prefix:?} is not a prefix length from 0 to {max} in {s:?}"))?;
    let net = ipnet::IpNet::new(addr, prefix).map_err(|e| format!("{s:?}: {e}"))?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set past the /{prefix} prefix (did you mean \"{}\"?)",
            net.trunc()
        ));
    }
    Ok(net)
}

fn socket_addr(
    cx: &mut Cx<'_>,
    s: &str,
    path: &str,
    span: Range<usize>,
    example: &str,
) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            let hint = match s.rsplit_once(':') {
                None => " (the port is required)".to_owned(),
                Some((_, port)) if port.parse::<u16>().is_err() => {
                    format!(" ({port:?} is not a valid port)")
                }
                Some((host, _)) if host.contains(':') && !host.starts_with('[') => {
                    " (write IPv6 addresses in brackets, as in \"[::]:8443\")".to_owned()
                }
                Some(_) => " (use an IP address, not a host name)".to_owned(),
            };
            cx.error(
                span,
                format!("{path}: expected a socket address like \"{example}\", found {s:?}{hint}"),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------
// sites/*.toml

fn parse_site(
    cx: &mut Cx<'_>,
    name: &str,
    base: &Path,
    root: &Spanned<DeTable<'_>>,
    claimed: &mut HashMap<String, (String, PathBuf)>,
    hash: &mut Fnv,
) -> Site {
    let top = Table::open(cx, root.get_ref(), root.span(), String::new(), SITE_FIELDS);
    let mut site = Site {
        name: name.to_owned(),
        file: cx.file.to_path_buf(),
        hosts: Vec::new(),
        tls: None,
        redirect_https: false,
        removed_sessions: RemovedSessions::Keep,
        close_window: Duration::from_secs(30),
        pools: Vec::new(),
        routes: Vec::new(),
    };

    // hosts
    match top.get("hosts") {
        None => top.missing(cx, "hosts", "hosts = [\"example.com\"]"),
        Some(v) => {
            if let Some(items) = get_strings(cx, v, "hosts") {
                if v.get_ref().as_array().is_some_and(|a| a.is_empty()) {
                    cx.error(
                        v.span(),
                        "hosts: must not be empty (list the host names this site answers, as in hosts = [\"example.com\"])",
                    );
                }
                let mut local: HashMap<String, String> = HashMap::new();
                for (raw, path, span) in items {
                    let host = match check_host(raw) {
                        Ok(host) => host,
                        Err(problem) => {
                            cx.error(span, format!("{path}: {raw:?} {problem}"));
                            continue;
                        }
                    };
                    if let Some(first) = local.get(&host) {
                        cx.error(
                            span,
                            format!("{path}: duplicate host {host:?} (already listed as {first})"),
                        );
                        continue;
                    }
                    local.insert(host.clone(), path.clone());
                    if let Some((other, other_file)) = claimed.get(&host) {
                        cx.error(
                            span,
                            format!(
                                "{path}: host {host:?} is already claimed by site {other:?} ({})",
                                other_file.display()
                            ),
                        );
                        continue;
                    }
                    claimed.insert(host.clone(), (name.to_owned(), cx.file.to_path_buf()));
                    site.hosts.push(host);
                }
            }
        }
    }

    // tls
    let tls_given = top.get("tls").is_some();
    if let Some(t) = top.section(cx, "tls", TLS_FIELDS) {
        site.tls = parse_tls(cx, &t, base, hash);
    }

    // redirect_https
    if let Some(v) = top.get("redirect_https")
        && let Some(b) = get_bool(cx, v, "redirect_https")
    {
        site.redirect_https = b;
        if b && !tls_given {
            cx.error(
                v.span(),
                "redirect_https: needs tls = { cert = \"...\", key = \"...\" } in this site, or HTTPS requests could not be served",
            );
        }
    }

    // removed_sessions, close_window
    let mut keeping = true; // false also when removed_sessions is invalid
    if let Some(v) = top.get("removed_sessions") {
        keeping = false;
        match get_str(cx, v, "removed_sessions") {
            Some("keep") => {
                site.removed_sessions = RemovedSessions::Keep;
                keeping = true;
            }
            Some("close") => site.removed_sessions = RemovedSessions::Close,
            Some(other) => cx.error(
                v.span(),
                format!("removed_sessions: expected \"keep\" or \"close\", found {other:?}"),
            ),
            None => {}
        }
    }
    if let Some(v) = top.get("close_window")
        && let Some(d) = get_duration(cx, v, "close_window", true)
    {
        site.close_window = d;
        if keeping {
            cx.error(
                v.span(),
                "close_window: only applies with removed_sessions = \"close\"",
            );
        }
    }

    // pools
    if let Some(pools) = top.get("pools") {
        match pools.get_ref() {
            DeValue::Table(table) => {
                let mut entries: Vec<_> = table.iter().collect();
                entries.sort_by_key(|(key, _)| key.span().start);
                for (key, value) in entries {
                    let pool_name: &str = key.get_ref().as_ref();
                    let path = join("pools", pool_name);
                    if pool_name.is_empty() {
                        cx.error(key.span(), "pools: a pool name must not be empty");
                        continue;
                    }
                    match value.get_ref() {
                        DeValue::Table(t) => {
                            let t = Table::open(cx, t, value.span(), path, POOL_FIELDS);
                            site.pools.push(parse_pool(cx, pool_name, &t));
                        }
                        other => cx.error(
                            value.span(),
                            format!(
                                "expected a table for {path}, found {} (each pool is a table: [pools.NAME] with servers = [...])",
                                found(other)
                            ),
                        ),
                    }
                }
            }
            _ => type_error(cx, pools, "a table of pools ([pools.NAME])", "pools"),
        }
    }

    // routes
    if let Some(v) = top.get("routes") {
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut by_path: HashMap<String, (String, usize)> = HashMap::new();
                let mut by_name: HashMap<String, (String, usize)> = HashMap::new();
                for (i, item) in items.iter().enumerate() {
                    let path = format!("routes[{i}]");
                    if let Some(t) = Table::open_value(cx, item, path, ROUTE_FIELDS) {
                        let route = parse_route(cx, &t, &site.pools, &mut by_path, &mut by_name);
                        site.routes.push(route);
                    }
                }
            }
            other => cx.error(
                v.span(),
                format!(
                    "expected an array of tables ([[routes]]) for routes, found {}",
                    found(other)
                ),
            ),
        }
    }

    site
}

/// Lower-cases and checks a host name; `Err` says what is wrong with it.
fn check_host(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if raw.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace".to_owned());
    }
    if raw.contains("://") {
        return Err(
            "must be a bare host name without a scheme, as in \"shop.example.com\"".to_owned(),
        );
    }
    let host = raw.to_ascii_lowercase();
    if let Some(inner) = host.strip_prefix('[') {
        if inner.contains("]:") {
            return Err("must not include a port (the listener decides the port)".to_owned());
        }
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => Ok(host),
            _ => Err("is not a valid bracketed IPv6 address".to_owned()),
        };
    }
    if host.contains('/') {
        return Err("must be a bare host name without a path".to_owned());
    }
    if host.contains(':') {
        if host.parse::<Ipv6Addr>().is_ok() {
            return Err("is an IPv6 address: write it in brackets, as in \"[::1]\"".to_owned());
        }
        return Err("must not include a port (the listener decides the port)".to_owned());
    }
    if host.contains('*') {
        return Err("is a wildcard, which is not supported; list each host name".to_owned());
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        let hint = if c.is_ascii() {
            ""
        } else {
            " (write internationalized names in their xn-- form)"
        };
        return Err(format!("contains the invalid character {c:?}{hint}"));
    }
    if host.split('.').any(str::is_empty) {
        return Err(
            "is not a valid host name (it has an empty label, or a leading or trailing dot)"
                .to_owned(),
        );
    }
    Ok(host)
}

/// Reads and checks `tls = { cert, key }`; every file read feeds `hash`.
fn parse_tls(cx: &mut Cx<'_>, t: &Table<'_, '_>, base: &Path, hash: &mut Fnv) -> Option<SiteTls> {
    let mut field =
        |cx: &mut Cx<'_>, name: &str| -> Option<(String, PathBuf, Range<usize>, Vec<u8>)> {
            let Some(v) = t.get(name) else {
                t.missing(
                    cx,
                    name,
                    "tls = { cert = \"certs/site.crt\", key = \"certs/site.key\" }",
                );
                return None;
            };
            let path_name = t.child(name);
            let s = get_str(cx, v, &path_name)?;
            if s.is_empty() {
                cx.error(v.span(), format!("{path_name}: must not be empty"));
                return None;
            }
            let resolved = base.join(s);
            match fs::read(&resolved) {
                Ok(bytes) => {
                    hash.file(s, &bytes);
                    Some((s.to_owned(), resolved, v.span(), bytes))
                }
                Err(e) => {
                    cx.error(
                        v.span(),
                        format!("{path_name}: cannot read {}: {e}", resolved.display()),
                    );
                    None
                }
            }
        };
    let cert = field(cx, "cert");
    let key = field(cx, "key");

    let certs = cert.as_ref().and_then(|(_, path, span, bytes)| {
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
    });

    let signing_key = key.as_ref().and_then(|(_, path, span, bytes)| {
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
                    format!("tls.key: unsupported private key in {}: {e}", path.display()),
                );
                None
            }
        }
    });

    let (Some(certs), Some(signing_key), Some(cert), Some(key)) = (certs, signing_key, cert, key)
    else {
        return None;
    };
    let certified_key = rustls::sign::CertifiedKey::new(certs, signing_key);
    match certified_key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            cx.error(
                key.2,
                format!(
                    "tls.key does not match tls.cert ({} is not the key of the certificate in {})",
                    key.1.display(),
                    cert.1.display()
                ),
            );
            return None;
        }
        Err(e) => {
            cx.error(
                cert.2,
                format!(
                    "tls.cert: the first certificate in {} is not a valid X.509 certificate: {e}",
                    cert.1.display()
                ),
            );
            return None;
        }
    }
    Some(SiteTls {
        cert_path: cert.1,
        key_path: key.1,
        certified_key: Arc::new(certified_key),
    })
}

fn parse_pool(cx: &mut Cx<'_>, name: &str, t: &Table<'_, '_>) -> Pool {
    let mut pool = Pool {
        name: name.to_owned(),
        servers: Vec::new(),
        max_in_flight: None,
        queue_timeout: Duration::from_secs(5),
        max_queue: None,
        max_body: 100 * 1024 * 1024,
        buffering: true,
        health: None,
    };

    match t.get("servers") {
        None => t.missing(cx, "servers", "servers = [\"127.0.0.1:8000\"]"),
        Some(v) => {
            let path = t.child("servers");
            if let Some(items) = get_strings(cx, v, &path) {
                if v.get_ref().as_array().is_some_and(|a| a.is_empty()) {
                    cx.error(
                        v.span(),
                        format!(
                            "{path}: must not be empty (list the upstream servers, as in servers = [\"127.0.0.1:8000\"])"
                        ),
                    );
                }
                let mut seen: HashMap<&str, String> = HashMap::new();
                for (s, item_path, span) in items {
                    if let Err(problem) = check_server(s) {
                        cx.error(span, format!("{item_path}: {problem}"));
                    } else if let Some(first) = seen.get(s) {
                        cx.error(
                            span,
                            format!(
                                "{item_path}: duplicate server {s:?} (already listed as {first})"
                            ),
                        );
                    } else {
                        seen.insert(s, item_path);
                        pool.servers.push(s.to_owned());
                    }
                }
            }
        }
    }

    if let Some(v) = t.get("max_in_flight") {
        pool.max_in_flight = get_usize(cx, v, &t.child("max_in_flight"), 1);
    }
    if let Some(v) = t.get("queue_timeout")
        && let Some(d) = get_duration(cx, v, &t.child("queue_timeout"), true)
    {
        pool.queue_timeout = d;
    }
    if let Some(v) = t.get("max_queue") {
        pool.max_queue = get_usize(cx, v, &t.child("max_queue"), 1);
    }
    if let Some(v) = t.get("max_body")
        && let Some(n) = get_size(cx, v, &t.child("max_body"), 0)
    {
        pool.max_body = n;
    }
    if let Some(v) = t.get("buffering")
        && let Some(b) = get_bool(cx, v, &t.child("buffering"))
    {
        pool.buffering = b;
    }
    if let Some(h) = t.section(cx, "health", HEALTH_FIELDS) {
        pool.health = parse_health(cx, &h);
    }
    pool
}

/// Checks a `host:port` upstream address; `Err` says what is wrong with it.
fn check_server(s: &str) -> Result<(), String> {
    let example = "as in \"127.0.0.1:8000\"";
    if s.is_empty() {
        return Err(format!("must not be empty; give host:port, {example}"));
    }
    if s.contains("://") {
        return Err(format!(
            "expected host:port without a scheme, {example}, found {s:?}"
        ));
    }
    if s.chars().any(char::is_whitespace) {
        return Err(format!("{s:?} must not contain whitespace"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((ip, port)) = rest.split_once("]:") else {
            return Err(format!(
                "expected [IPv6]:port, as in \"[::1]:8000\", found {s:?} (the port is required)"
            ));
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{ip:?} in {s:?} is not a valid IPv6 address"));
        }
        (None, port)
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "expected host:port, {example}, found {s:?} (the port is required)"
            ));
        };
        if host.contains(':') {
            return Err(format!(
                "write IPv6 addresses in brackets, as in \"[::1]:8000\", found {s:?}"
            ));
        }
        (Some(host), port)
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err(format!(
                "expected host:port, {example}, found {s:?} (the host is missing)"
            ));
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(format!("{s:?} contains the invalid character {c:?}"));
        }
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!(
            "{port:?} in {s:?} is not a valid port (1 to 65535)"
        )),
    }
}

fn parse_health(cx: &mut Cx<'_>, t: &Table<'_, '_>) -> Option<Health> {
    let mut health = Health {
        path: String::new(),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        rise: 2,
        fall: 3,
    };
    let mut ok = true;
    match t.get("path") {
        None => {
            t.missing(cx, "path", "health = { path = \"/healthz\" }");
            ok = false;
        }
        Some(v) => match get_str(cx, v, &t.child("path")) {
            Some(p) if p.starts_with('/') => health.path = p.to_owned(),
            Some(p) => {
                cx.error(
                    v.span(),
                    format!("{}: must start with \"/\", found {p:?}", t.child("path")),
                );
                ok = false;
            }
            None => ok = false,
        },
    }
    for (name, slot) in [
        ("interval", &mut health.interval),
        ("timeout", &mut health.timeout),
    ] {
        if let Some(v) = t.get(name) {
            match get_duration(cx, v, &t.child(name), false) {
                Some(d) => *slot = d,
                None => ok = false,
            }
        }
    }
    for (name, slot) in [("rise", &mut health.rise), ("fall", &mut health.fall)] {
        if let Some(v) = t.get(name) {
            match get_uint(cx, v, &t.child(name), 1, u64::from(u32::MAX))
                .and_then(|n| u32::try_from(n).ok())
            {
                Some(n) => *slot = n,
                None => ok = false,
            }
        }
    }
    ok.then_some(health)
}

fn parse_route(
    cx: &mut Cx<'_>,
    t: &Table<'_, '_>,
    pools: &[Pool],
    by_path: &mut HashMap<String, (String, usize)>,
    by_name: &mut HashMap<String, (String, usize)>,
) -> Route {
    let mut route = Route {
        name: String::new(),
        path: String::new(),
        pool: None,
        websocket: None,
        idle_timeout: None,
        ping_interval: None,
        max_message_bytes: None,
    };

    // path
    let mut path_span = t.span.clone();
    match t.get("path") {
        None => t.missing(cx, "path", "path = \"/\""),
        Some(v) => {
            path_span = v.span();
            let field = t.child("path");
            if let Some(p) = get_str(cx, v, &field) {
                if !p.starts_with('/') {
                    cx.error(
                        v.span(),
                        format!("{field}: must start with \"/\", found {p:?}"),
                    );
                } else if let Some(c) = p
                    .chars()
                    .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
                {
                    cx.error(
                        v.span(),
                        format!(
                            "{field}: {p:?} contains {c:?}; a route path is a plain path prefix, without query or fragment"
                        ),
                    );
                } else {
                    route.path = p.to_owned();
                    let line = cx.position(v.span().start).0;
                    if let Some((other, other_line)) = by_path.get(p) {
                        cx.error(
                            v.span(),
                            format!(
                                "{field}: duplicate path {p:?} (already used by {other} on line {other_line})"
                            ),
                        );
                    } else {
                        by_path.insert(p.to_owned(), (t.path.clone(), line));
                    }
                }
            }
        }
    }

    // name (defaults to the path)
    let (name, name_span, defaulted) = match t.get("name") {
        Some(v) => match get_str(cx, v, &t.child("name")) {
            Some("") => {
                cx.error(v.span(), format!("{}: must not be empty", t.child("name")));
                (None, v.span(), false)
            }
            Some(n) => (Some(n.to_owned()), v.span(), false),
            None => (None, v.span(), false),
        },
        None => {
            let name = (!route.path.is_empty()).then(|| route.path.clone());
            (name, path_span, true)
        }
    };
    if let Some(name) = name {
        let line = cx.position(name_span.start).0;
        if let Some((other, other_line)) = by_name.get(&name) {
            let field = if defaulted {
                format!(
                    "{}: the route name (which defaults to the path)",
                    t.child("path")
                )
            } else {
                t.child("name")
            };
            cx.error(
                name_span,
                format!(
                    "{field}: duplicate route name {name:?} (already used by {other} on line {other_line}); route names are metric labels and must be unique in a site"
                ),
            );
        } else {
            by_name.insert(name.clone(), (t.path.clone(), line));
        }
        route.name = name;
    }

    // pool / websocket
    let pool_names = || {
        if pools.is_empty() {
            "this site has no pools".to_owned()
        } else {
            let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            format!("pools: {}", names.join(", "))
        }
    };
    for (name, slot) in [
        ("pool", &mut route.pool),
        ("websocket", &mut route.websocket),
    ] {
        if let Some(v) = t.get(name) {
            let field = t.child(name);
            if let Some(wanted) = get_str(cx, v, &field) {
                match pools.iter().position(|p| p.name == wanted) {
                    Some(index) => *slot = Some(index),
                    None => cx.error(
                        v.span(),
                        format!(
                            "{field}: no pool named {wanted:?} in this site ({})",
                            pool_names()
                        ),
                    ),
                }
            }
        }
    }
    if t.get("pool").is_none() && t.get("websocket").is_none() {
        cx.error(
            t.span.clone(),
            format!(
                "{}: needs pool = \"NAME\" for plain requests, websocket = \"NAME\" for WebSocket upgrades, or both",
                t.path
            ),
        );
    }

    // WebSocket-only settings
    let ws = t.get("websocket").is_some();
    for name in ["idle_timeout", "ping_interval", "max_message_bytes"] {
        let Some(v) = t.get(name) else { continue };
        let field = t.child(name);
        if !ws {
            cx.error(
                v.span(),
                format!(
                    "{field}: only applies to WebSocket sessions, but this route has no websocket = \"POOL\""
                ),
            );
            continue;
        }
        match name {
            "idle_timeout" => route.idle_timeout = get_duration(cx, v, &field, false),
            "ping_interval" => route.ping_interval = get_duration(cx, v, &field, false),
            _ => route.max_message_bytes = get_size(cx, v, &field, 1),
        }
    }
    route
}

// ---------------------------------------------------------------------------
// The configuration hash.

/// 64-bit FNV-1a: stable across Rust versions and runs, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Adds one file: its name and content, each length-prefixed.
    fn file(&mut self, name: &str, content: &[u8]) {
        self.write(&(name.len() as u64).to_le_bytes());
        self.write(name.as_bytes());
        self.write(&(content.len() as u64).to_le_bytes());
        self.write(content);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small valid site; tests append to or vary it.
    const SITE: &str = r#"hosts = ["a.example"]
[pools.web]
servers = ["127.0.0.1:8000"]
[[routes]]
path = "/"
pool = "web"
"#;

    fn cfg() -> &'static Path {
        Path::new("cfg")
    }

    fn ok(main: &str, sites: &[(&str, &str)]) -> Config {
        match load_str(cfg(), main, sites) {
            Ok(config) => config,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    fn errors(main: &str, sites: &[(&str, &str)]) -> Vec<String> {
        match load_str(cfg(), main, sites) {
            Ok(_) => panic!("expected errors, got a valid config"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// Asserts there are exactly as many errors as `expected`, each starting
    /// with its expected prefix, in order.
    #[track_caller]
    fn assert_errors(actual: &[String], expected: &[&str]) {
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

    #[test]
    fn defaults() {
        let config = ok("", &[("shop", SITE)]);
        assert_eq!(config.dir, cfg());
        assert_eq!(
            config.listen,
            Listen {
                https: vec!["0.0.0.0:8443".parse().unwrap()],
                http: vec!["0.0.0.0:8080".parse().unwrap()],
                admin: Some("127.0.0.1:9901".parse().unwrap()),
                proxy_protocol: false,
                trusted_proxies: Default::default(),
            }
        );
        assert_eq!(
            config.timeouts,
            Timeouts {
                header: Duration::from_secs(10),
                idle: Duration::from_secs(60),
                upstream_connect: Duration::from_secs(3),
                upstream_response: Duration::from_secs(60),
                drain: Duration::from_secs(30),
            }
        );
        assert_eq!(
            config.limits,
            Limits {
                max_connections: 50_000,
                max_header_bytes: 65_536
            }
        );
        assert_eq!(config.runtime, Runtime { worker_threads: 0 });
        assert_eq!(
            config.log,
            Log {
                format: LogFormat::Text,
                level: "info".into()
            }
        );
        assert_eq!(config.sites.len(), 1);
        let site = &config.sites[0];
        assert_eq!(site.name, "shop");
        assert_eq!(site.file, Path::new("cfg/sites/shop.toml"));
        assert_eq!(site.hosts, ["a.example"]);
        assert!(site.tls.is_none());
        assert!(!site.redirect_https);
        assert_eq!(site.removed_sessions, RemovedSessions::Keep);
        assert_eq!(site.close_window, Duration::from_secs(30));
        assert_eq!(
            site.pools,
            [Pool {
                name: "web".into(),
                servers: vec!["127.0.0.1:8000".into()],
                max_in_flight: None,
                queue_timeout: Duration::from_secs(5),
                max_queue: None,
                max_body: 100 * 1024 * 1024,
                buffering: true,
                health: None,
            }]
        );
        assert_eq!(
            site.routes,
            [Route {
                name: "/".into(),
                path: "/".into(),
                pool: Some(0),
                websocket: None,
                idle_timeout: None,
                ping_interval: None,
                max_message_bytes: None,
            }]
        );
    }

    #[test]
    fn all_main_settings() {
        let main = r#"
[listen]
https = ["0.0.0.0:443", "[::]:443"]
http = []
admin = "127.0.0.1:9000"
[timeouts]
header = "5s"
idle = "1m30s"
upstream_connect = "500ms"
upstream_response = "2m"
drain = "0s"
[limits]
max_connections = 10
max_header_bytes = "32KiB"
[runtime]
worker_threads = 4
[log]
format = "json"
level = "info,switchyard=debug"
"#;
        let config = ok(main, &[("shop", SITE)]);
        assert_eq!(
            config.listen.https,
            [
                "0.0.0.0:443".parse::<SocketAddr>().unwrap(),
                "[::]:443".parse().unwrap()
            ]
        );
        assert!(config.listen.http.is_empty());
        assert_eq!(config.listen.admin, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(config.timeouts.header, Duration::from_secs(5));
        assert_eq!(config.timeouts.idle, Duration::from_secs(90));
        assert_eq!(config.timeouts.upstream_connect, Duration::from_millis(500));
        assert_eq!(config.timeouts.upstream_response, Duration::from_secs(120));
        assert_eq!(config.timeouts.drain, Duration::ZERO);
        assert_eq!(config.limits.max_connections, 10);
        assert_eq!(config.limits.max_header_bytes, 32 * 1024);
        assert_eq!(config.runtime.worker_threads, 4);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.log.level, "info,switchyard=debug");

        // An integer works for max_header_bytes; admin can be switched off.
        let config = ok(
            "[limits]\nmax_header_bytes = 8192\n[listen]\nadmin = false\n",
            &[("shop", SITE)],
        );
        assert_eq!(config.limits.max_header_bytes, 8192);
        assert_eq!(config.listen.admin, None);
        let config = ok("[listen]\nadmin = \"\"\n", &[("shop", SITE)]);
        assert_eq!(config.listen.admin, None);
    }

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
    fn trusted_proxies_and_proxy_protocol() {
        let config = ok(
            "[listen]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"::1/128\", \"2001:db8::/32\"]\n",
            &[("shop", SITE)],
        );
        assert!(config.listen.proxy_protocol);
        let t = &config.listen.trusted_proxies;
        for inside in [
            "10.1.2.3",
            "127.0.0.1",
            "::1",
            "2001:db8::5",
            "::ffff:10.0.0.1",
        ] {
            assert!(t.contains(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["11.0.0.1", "127.0.0.2", "::2", "2001:db9::1"] {
            assert!(!t.contains(outside.parse().unwrap()), "{outside}");
        }
        let main = r#"[listen]
proxy_protocol = "yes"
trusted_proxies = ["10.0.0.0/33", "10.0.0.1/8", "example.com/8", "10.0.0.0", "fe80::/129", "10.0.0.0/x", 7]
"#;
        let e = errors(main, &[("shop", SITE)]);
        assert_errors(
            &e,
            &[
                "cfg/switchyard.toml:2:18: expected true or false for listen.proxy_protocol, found string \"yes\"",
                "cfg/switchyard.toml:3:20: listen.trusted_proxies[0]: \"33\" is not a prefix length from 0 to 32 in \"10.0.0.0/33\"",
                "cfg/switchyard.toml:3:35: listen.trusted_proxies[1]: \"10.0.0.1/8\" has host bits set past the /8 prefix (did you mean \"10.0.0.0/8\"?)",
                "cfg/switchyard.toml:3:49: listen.trusted_proxies[2]: \"example.com\" is not an IP address",
                "cfg/switchyard.toml:3:78: listen.trusted_proxies[4]: \"129\" is not a prefix length from 0 to 128",
                "cfg/switchyard.toml:3:92: listen.trusted_proxies[5]: \"x\" is not a prefix length",
                "cfg/switchyard.toml:3:106: expected a string for listen.trusted_proxies[6], found integer 7",
            ],
        );
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
                "cfg/switchyard.toml:11:2: unknown field \"extra\" in the top level (expected one of: listen, timeouts, limits, runtime, log)",
                "cfg/sites/shop.toml:2:1: unknown field \"tsl\" in the top level (expected one of: hosts, tls, redirect_https, removed_sessions, close_window, pools, routes); did you mean \"tls\"?",
                "cfg/sites/shop.toml:5:1: unknown field \"max_inflight\" in [pools.web] (expected one of: servers, max_in_flight, queue_timeout, max_queue, max_body, buffering, health); did you mean \"max_in_flight\"?",
                "cfg/sites/shop.toml:6:25: unknown field \"intervall\" in [pools.web.health] (expected one of: path, interval, timeout, rise, fall); did you mean \"interval\"?",
                "cfg/sites/shop.toml:10:1: unknown field \"websockets\" in routes[0] (expected one of: name, path, pool, websocket, idle_timeout, ping_interval, max_message_bytes); did you mean \"websocket\"?",
            ],
        );
        // No far-fetched suggestions.
        assert!(!e[5].contains("did you mean"), "{}", e[5]);
    }

    #[test]
    fn wrong_types() {
        let main = r#"[listen]
https = "0.0.0.0:8443"
[timeouts]
idle = 60
[limits]
max_connections = 1.5
[log]
format = 1
"#;
        let site = r#"hosts = ["a.example", 5]
redirect_https = "yes"
[pools.web]
servers = "127.0.0.1:8000"
max_in_flight = "4"
health = "/healthz"
[[routes]]
path = 1
pool = "web"
"#;
        let e = errors(
            main,
            &[
                ("shop", site),
                (
                    "other",
                    "hosts = [\"b.example\"]\nroutes = { path = \"/\" }\npools = [1]\n",
                ),
            ],
        );
        assert_errors(
            &e,
            &[
                "cfg/switchyard.toml:2:9: expected an array for listen.https, found string \"0.0.0.0:8443\"",
                "cfg/switchyard.toml:4:8: expected a duration string like \"10s\" for timeouts.idle, found integer 60 (give a unit, as in \"60s\")",
                "cfg/switchyard.toml:6:19: expected an integer for limits.max_connections, found float 1.5",
                "cfg/switchyard.toml:8:10: expected a string for log.format, found integer 1",
                "cfg/sites/other.toml:2:10: expected an array of tables ([[routes]]) for routes, found table",
                "cfg/sites/other.toml:3:9: expected a table of pools ([pools.NAME]) for pools, found array",
                "cfg/sites/shop.toml:1:23: expected a string for hosts[1], found integer 5",
                "cfg/sites/shop.toml:2:18: expected true or false for redirect_https, found string \"yes\"",
                "cfg/sites/shop.toml:4:11: expected an array for pools.web.servers, found string \"127.0.0.1:8000\"",
                "cfg/sites/shop.toml:5:17: expected an integer for pools.web.max_in_flight, found string \"4\"",
                "cfg/sites/shop.toml:6:10: expected a table for pools.web.health, found string \"/healthz\"",
                "cfg/sites/shop.toml:8:8: expected a string for routes[0].path, found integer 1",
            ],
        );
    }

    #[test]
    fn bad_values() {
        let main = r#"[listen]
https = ["0.0.0.0"]
http = ["localhost:8080"]
admin = "127.0.0.1:99999"
[timeouts]
header = "10x"
idle = "0s"
[limits]
max_header_bytes = "64kb2"
max_connections = 0
[log]
format = "xml"
level = "info,=="
"#;
        let site = r#"hosts = ["a.example"]
[pools.web]
servers = ["127.0.0.1", "127.0.0.1:0", "http://x:1", "::1:80", "[::1]:80", "[::1]:80"]
max_body = "1.5MiB"
queue_timeout = "soon"
max_queue = 0
max_in_flight = -1
health = { path = "healthz", interval = "0s", rise = 0 }
[[routes]]
path = "ws"
pool = "web"
[[routes]]
path = "/ws/"
pool = "web"
ping_interval = "30s"
[[routes]]
path = "/live/"
websocket = "web"
max_message_bytes = "lots"
idle_timeout = "-5m"
"#;
        let e = errors(main, &[("shop", site)]);
        assert_errors(
            &e,
            &[
                "cfg/switchyard.toml:2:10: listen.https[0]: expected a socket address like \"0.0.0.0:8443\", found \"0.0.0.0\" (the port is required)",
                "cfg/switchyard.toml:3:9: listen.http[0]: expected a socket address like \"0.0.0.0:8080\", found \"localhost:8080\" (use an IP address, not a host name)",
                "cfg/switchyard.toml:4:9: listen.admin: expected a socket address like \"127.0.0.1:9901\", found \"127.0.0.1:99999\" (\"99999\" is not a valid port)",
                "cfg/switchyard.toml:6:10: timeouts.header: expected a duration like \"10s\" or \"500ms\", found \"10x\"",
                "cfg/switchyard.toml:7:8: timeouts.idle: must be greater than zero",
                "cfg/switchyard.toml:9:20: limits.max_header_bytes: expected a size like \"64KiB\" or \"100MiB\", found \"64kb2\"",
                "cfg/switchyard.toml:10:19: limits.max_connections: must be at least 1, found 0",
                "cfg/switchyard.toml:12:10: log.format: expected \"text\" or \"json\", found \"xml\"",
                "cfg/switchyard.toml:13:9: log.level: \"info,==\" is not a valid log filter",
                "cfg/sites/shop.toml:3:12: pools.web.servers[0]: expected host:port, as in \"127.0.0.1:8000\", found \"127.0.0.1\" (the port is required)",
                "cfg/sites/shop.toml:3:25: pools.web.servers[1]: \"0\" in \"127.0.0.1:0\" is not a valid port (1 to 65535)",
                "cfg/sites/shop.toml:3:40: pools.web.servers[2]: expected host:port without a scheme",
                "cfg/sites/shop.toml:3:54: pools.web.servers[3]: write IPv6 addresses in brackets",
                "cfg/sites/shop.toml:3:76: pools.web.servers[5]: duplicate server \"[::1]:80\" (already listed as pools.web.servers[4])",
                "cfg/sites/shop.toml:4:12: pools.web.max_body: expected a size like \"64KiB\" or \"100MiB\", found \"1.5MiB\" (fractions are not supported",
                "cfg/sites/shop.toml:5:17: pools.web.queue_timeout: expected a duration like \"10s\" or \"500ms\", found \"soon\"",
                "cfg/sites/shop.toml:6:13: pools.web.max_queue: must be at least 1, found 0",
                "cfg/sites/shop.toml:7:17: pools.web.max_in_flight: must be at least 1, found -1",
                "cfg/sites/shop.toml:8:19: pools.web.health.path: must start with \"/\", found \"healthz\"",
                "cfg/sites/shop.toml:8:41: pools.web.health.interval: must be greater than zero",
                "cfg/sites/shop.toml:8:54: pools.web.health.rise: must be at least 1, found 0",
                "cfg/sites/shop.toml:10:8: routes[0].path: must start with \"/\", found \"ws\"",
                "cfg/sites/shop.toml:15:17: routes[1].ping_interval: only applies to WebSocket sessions",
                "cfg/sites/shop.toml:19:21: routes[2].max_message_bytes: expected a size like \"64KiB\" or \"100MiB\", found \"lots\"",
                "cfg/sites/shop.toml:20:16: routes[2].idle_timeout: expected a duration like \"10s\" or \"500ms\", found \"-5m\"",
            ],
        );
    }

    #[test]
    fn removed_sessions_and_close_window() {
        let site = ok(
            "",
            &[(
                "shop",
                &format!("removed_sessions = \"close\"\nclose_window = \"2m\"\n{SITE}"),
            )],
        );
        assert_eq!(site.sites[0].removed_sessions, RemovedSessions::Close);
        assert_eq!(site.sites[0].close_window, Duration::from_secs(120));
        let site = ok(
            "",
            &[(
                "shop",
                &format!("removed_sessions = \"close\"\nclose_window = \"0s\"\n{SITE}"),
            )],
        );
        assert_eq!(
            site.sites[0].close_window,
            Duration::ZERO,
            "0s closes at once"
        );
        let site = ok(
            "",
            &[("shop", &format!("removed_sessions = \"keep\"\n{SITE}"))],
        );
        assert_eq!(site.sites[0].removed_sessions, RemovedSessions::Keep);

        let e = errors(
            "",
            &[
                (
                    "a",
                    &format!("removed_sessions = \"drop\"\nclose_window = \"1s\"\n{SITE}"),
                ),
                (
                    "b",
                    &format!(
                        "removed_sessions = true\nclose_window = 30\n{}",
                        SITE.replace("a.example", "b.example")
                    ),
                ),
                (
                    "c",
                    &format!(
                        "close_window = \"10s\"\n{}",
                        SITE.replace("a.example", "c.example")
                    ),
                ),
                (
                    "d",
                    &format!(
                        "removed_sessions = \"close\"\nclose_window = \"soon\"\n{}",
                        SITE.replace("a.example", "d.example")
                    ),
                ),
            ],
        );
        assert_errors(
            &e,
            &[
                "cfg/sites/a.toml:1:20: removed_sessions: expected \"keep\" or \"close\", found \"drop\"",
                "cfg/sites/b.toml:1:20: expected a string for removed_sessions, found boolean true",
                "cfg/sites/b.toml:2:16: expected a duration string like \"10s\" for close_window, found integer 30",
                "cfg/sites/c.toml:1:16: close_window: only applies with removed_sessions = \"close\"",
                "cfg/sites/d.toml:2:16: close_window: expected a duration like \"10s\" or \"500ms\", found \"soon\"",
            ],
        );
    }

    #[test]
    fn route_naming_a_missing_pool() {
        let site = r#"hosts = ["a.example"]
[pools.web]
servers = ["127.0.0.1:8000"]
[pools.live]
servers = ["127.0.0.1:9000"]
[[routes]]
path = "/"
pool = "web"
[[routes]]
path = "/ws/"
pool = "wbe"
websocket = "lve"
[[routes]]
path = "/x"
"#;
        let e = errors("", &[("shop", site)]);
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:11:8: routes[1].pool: no pool named \"wbe\" in this site (pools: web, live)",
                "cfg/sites/shop.toml:12:13: routes[1].websocket: no pool named \"lve\" in this site (pools: web, live)",
                "cfg/sites/shop.toml:13:1: routes[2]: needs pool = \"NAME\" for plain requests, websocket = \"NAME\" for WebSocket upgrades, or both",
            ],
        );

        let e = errors(
            "",
            &[(
                "shop",
                "hosts = [\"a.example\"]\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
            )],
        );
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:4:8: routes[0].pool: no pool named \"web\" in this site (this site has no pools)",
            ],
        );
    }

    #[test]
    fn pools_keep_file_order() {
        let site = r#"hosts = ["a.example"]
[pools.zeta]
servers = ["127.0.0.1:8000"]
[pools.alpha]
servers = ["127.0.0.1:9000"]
[[routes]]
path = "/"
pool = "alpha"
websocket = "zeta"
"#;
        let config = ok("", &[("shop", site)]);
        let pools: Vec<&str> = config.sites[0]
            .pools
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(pools, ["zeta", "alpha"]);
        assert_eq!(config.sites[0].routes[0].pool, Some(1));
        assert_eq!(config.sites[0].routes[0].websocket, Some(0));
    }

    #[test]
    fn host_claimed_by_two_sites() {
        // Given out of order: sites are checked by name, so "b" is the second.
        let e = errors(
            "",
            &[
                (
                    "b",
                    &SITE.replace("[\"a.example\"]", "[\"b.example\", \"A.Example\"]"),
                ),
                ("a", SITE),
            ],
        );
        assert_errors(
            &e,
            &[
                "cfg/sites/b.toml:1:23: hosts[1]: host \"a.example\" is already claimed by site \"a\" (cfg/sites/a.toml)",
            ],
        );
    }

    #[test]
    fn hosts_are_checked_and_normalized() {
        let config = ok(
            "",
            &[(
                "shop",
                &SITE.replace(
                    "[\"a.example\"]",
                    "[\"Shop.Example.COM\", \"[::1]\", \"10.0.0.1\"]",
                ),
            )],
        );
        assert_eq!(
            config.sites[0].hosts,
            ["shop.example.com", "[::1]", "10.0.0.1"]
        );

        let hosts = r#"["a.example:443", "", "https://a.example", "*.a.example", "a example", "a.example", "A.EXAMPLE", "a/b", "bücher.de", "a..b", "::1"]"#;
        let e = errors("", &[("shop", &SITE.replace("[\"a.example\"]", hosts))]);
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:1:10: hosts[0]: \"a.example:443\" must not include a port",
                "cfg/sites/shop.toml:1:27: hosts[1]: \"\" must not be empty",
                "cfg/sites/shop.toml:1:31: hosts[2]: \"https://a.example\" must be a bare host name without a scheme",
                "cfg/sites/shop.toml:1:52: hosts[3]: \"*.a.example\" is a wildcard",
                "cfg/sites/shop.toml:1:67: hosts[4]: \"a example\" must not contain whitespace",
                "cfg/sites/shop.toml:1:93: hosts[6]: duplicate host \"a.example\" (already listed as hosts[5])",
                "cfg/sites/shop.toml:1:106: hosts[7]: \"a/b\" must be a bare host name without a path",
                "cfg/sites/shop.toml:1:113: hosts[8]: \"bücher.de\" contains the invalid character 'ü' (write internationalized names in their xn-- form)",
                "cfg/sites/shop.toml:1:126: hosts[9]: \"a..b\" is not a valid host name",
                "cfg/sites/shop.toml:1:134: hosts[10]: \"::1\" is an IPv6 address: write it in brackets",
            ],
        );
    }

    #[test]
    fn empty_and_missing_lists() {
        let site = r#"hosts = []
[pools.web]
servers = []
[pools.other]
max_in_flight = 2
[[routes]]
pool = "web"
"#;
        let e = errors("", &[("shop", site)]);
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:1:9: hosts: must not be empty",
                "cfg/sites/shop.toml:3:11: pools.web.servers: must not be empty",
                "cfg/sites/shop.toml:4:1: pools.other: missing field \"servers\", as in servers = [\"127.0.0.1:8000\"]",
                "cfg/sites/shop.toml:6:1: routes[0]: missing field \"path\", as in path = \"/\"",
            ],
        );

        let e = errors("", &[("shop", "redirect_https = false\n")]);
        assert_errors(
            &e,
            &["cfg/sites/shop.toml:1:1: missing field \"hosts\", as in hosts = [\"example.com\"]"],
        );
    }

    #[test]
    fn duplicate_route_paths_and_names() {
        let site = r#"hosts = ["a.example"]
[pools.web]
servers = ["127.0.0.1:8000"]
[[routes]]
path = "/"
pool = "web"
[[routes]]
name = "/"
path = "/api"
pool = "web"
[[routes]]
path = "/"
name = "other"
pool = "web"
[[routes]]
name = "other"
path = "/other"
pool = "web"
[[routes]]
name = "/x"
path = "/y"
pool = "web"
[[routes]]
path = "/x"
pool = "web"
"#;
        let e = errors("", &[("shop", site)]);
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:8:8: routes[1].name: duplicate route name \"/\" (already used by routes[0] on line 5)",
                "cfg/sites/shop.toml:12:8: routes[2].path: duplicate path \"/\" (already used by routes[0] on line 5)",
                "cfg/sites/shop.toml:16:8: routes[3].name: duplicate route name \"other\" (already used by routes[2] on line 13)",
                "cfg/sites/shop.toml:24:8: routes[5].path: the route name (which defaults to the path): duplicate route name \"/x\" (already used by routes[4] on line 20)",
            ],
        );
    }

    #[test]
    fn listener_conflicts() {
        let e = errors(
            "[listen]\nhttps = [\"0.0.0.0:8443\", \"127.0.0.1:8443\"]\nadmin = \"0.0.0.0:8080\"\n",
            &[("shop", SITE)],
        );
        assert_errors(
            &e,
            &[
                "cfg/switchyard.toml:2:26: listen.https[1]: 127.0.0.1:8443 conflicts with listen.https[0] = \"0.0.0.0:8443\"",
                "cfg/switchyard.toml:3:9: listen.admin: 0.0.0.0:8080 conflicts with listen.http = \"0.0.0.0:8080\" (the default)",
            ],
        );
        let e = errors("[listen]\nhttps = []\nhttp = []\n", &[("shop", SITE)]);
        assert_errors(
            &e,
            &["cfg/switchyard.toml:1:1: listen: https and http are both empty"],
        );
    }

    #[test]
    fn no_sites() {
        let e = errors("", &[]);
        assert_errors(
            &e,
            &["cfg/sites:1:1: no sites configured: add at least one site file"],
        );
    }

    #[test]
    fn every_error_in_one_pass() {
        let e = errors(
            "[limits]\nmax_connections = \"many\"\n",
            &[
                ("b", &SITE.replace("pool = \"web\"", "pool = \"nope\"")),
                ("a", &SITE.replace("127.0.0.1:8000", "127.0.0.1")),
                (
                    "c",
                    &SITE
                        .replace("a.example", "c.example")
                        .replace("[[routes]]", "bogus = 1\n[[routes]]"),
                ),
            ],
        );
        assert_errors(
            &e,
            &[
                "cfg/switchyard.toml:2:19: expected an integer for limits.max_connections, found string \"many\"",
                "cfg/sites/a.toml:3:12: pools.web.servers[0]: expected host:port",
                "cfg/sites/b.toml:1:10: hosts[0]: host \"a.example\" is already claimed by site \"a\" (cfg/sites/a.toml)",
                "cfg/sites/b.toml:6:8: routes[0].pool: no pool named \"nope\" in this site (pools: web)",
                "cfg/sites/c.toml:4:1: unknown field \"bogus\" in [pools.web]",
            ],
        );
    }

    // --- certificates ------------------------------------------------------

    struct Pem {
        cert: String,
        key: String,
    }

    fn generate() -> Pem {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        Pem {
            cert: ck.cert.pem(),
            key: ck.signing_key.serialize_pem(),
        }
    }

    /// A temporary config directory with `certs/` beside `sites/`.
    fn cert_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::TempDir::new().unwrap();
        fs::create_dir_all(dir.path().join("sites")).unwrap();
        fs::create_dir_all(dir.path().join("certs")).unwrap();
        for (name, content) in files {
            fs::write(dir.path().join("certs").join(name), content).unwrap();
        }
        dir
    }

    fn tls_site(cert: &str, key: &str) -> String {
        format!("tls = {{ cert = \"../certs/{cert}\", key = \"../certs/{key}\" }}\n{SITE}")
    }

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
                "cfg/sites/b.toml:1:25: unknown field \"chain\" in [tls] (expected one of: cert, key)",
            ],
        );
    }

    // --- hash ----------------------------------------------------------------

    #[test]
    fn hash_covers_every_file() {
        let (one, two) = (generate(), generate());
        let dir = cert_dir(&[("a.crt", &one.cert), ("a.key", &one.key)]);
        let site = tls_site("a.crt", "a.key");
        let hash =
            |main: &str, site: &str| load_str(dir.path(), main, &[("shop", site)]).unwrap().hash;

        let base = hash("", &site);
        assert_eq!(base, hash("", &site), "the hash is deterministic");
        assert_ne!(base, hash("# comment\n", &site), "switchyard.toml counts");
        assert_ne!(
            base,
            hash("", &format!("{site}# comment\n")),
            "site files count"
        );

        // Same content, different site name.
        let renamed = load_str(dir.path(), "", &[("shop2", &site)]).unwrap().hash;
        assert_ne!(base, renamed, "file names count");

        // Same files, new certificate and key.
        fs::write(dir.path().join("certs/a.crt"), &two.cert).unwrap();
        fs::write(dir.path().join("certs/a.key"), &two.key).unwrap();
        assert_ne!(base, hash("", &site), "certificate and key files count");
    }

    // --- load() from a directory ---------------------------------------------

    #[test]
    fn load_reads_a_directory() {
        let dir = tempfile::TempDir::new().unwrap();
        let sites = dir.path().join("sites");
        fs::create_dir_all(&sites).unwrap();
        // No switchyard.toml: defaults.
        fs::write(
            sites.join("zz.toml"),
            SITE.replace("a.example", "z.example"),
        )
        .unwrap();
        fs::write(
            sites.join("a-b.toml"),
            SITE.replace("a.example", "ab.example"),
        )
        .unwrap();
        fs::write(sites.join("a.toml"), SITE).unwrap();
        // Not sites: hidden files, other extensions, directories.
        fs::write(sites.join(".hidden.toml"), "garbage").unwrap();
        fs::write(sites.join("a.toml.bak"), "garbage").unwrap();
        fs::write(sites.join("README"), "garbage").unwrap();
        fs::create_dir_all(sites.join("dir.toml")).unwrap();

        let config = load(dir.path()).unwrap();
        let names: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "a-b", "zz"]);
        assert_eq!(config.sites[0].file, sites.join("a.toml"));
        assert_eq!(
            config.listen.https,
            ["0.0.0.0:8443".parse::<SocketAddr>().unwrap()]
        );

        // Errors name the files as found in the directory.
        fs::write(
            dir.path().join(MAIN_FILE),
            "[limits]\nmax_connections = 0\n",
        )
        .unwrap();
        fs::write(sites.join("a.toml"), "hosts = [1]\n").unwrap();
        let e: Vec<String> = load(dir.path())
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_errors(
            &e,
            &[
                &format!(
                    "{}:2:19: limits.max_connections: must be at least 1",
                    dir.path().join(MAIN_FILE).display()
                ),
                &format!(
                    "{}:1:10: expected a string for hosts[0], found integer 1",
                    sites.join("a.toml").display()
                ),
            ],
        );
    }

    #[test]
    fn load_missing_directory_or_sites() {
        let dir = tempfile::TempDir::new().unwrap();
        let missing = dir.path().join("nope");
        let e = load(&missing).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(
            e.to_string().starts_with(&format!(
                "{}:1:1: cannot read configuration directory {}: ",
                missing.display(),
                missing.display()
            )),
            "{e}"
        );

        // A directory with no sites/ at all.
        let e = load(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:1:1: no sites configured: add at least one site file, such as {}",
                dir.path().join("sites").display(),
                dir.path().join("sites/example.toml").display()
            )
        );

        // An empty sites/.
        fs::create_dir_all(dir.path().join("sites")).unwrap();
        assert!(
            load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("no sites configured")
        );
    }

    #[test]
    fn contract_example() {
        let pem = generate();
        let root = tempfile::TempDir::new().unwrap();
        let certs = root.path().join("certs");
        let config_dir = root.path().join("config");
        fs::create_dir_all(&certs).unwrap();
        fs::create_dir_all(config_dir.join("sites")).unwrap();
        fs::write(certs.join("shop.crt"), &pem.cert).unwrap();
        fs::write(certs.join("shop.key"), &pem.key).unwrap();
        fs::write(
            config_dir.join(MAIN_FILE),
            r#"[listen]
https = ["0.0.0.0:8443"]     # TLS; ALPN h2 and http/1.1
http  = ["0.0.0.0:8080"]     # plain HTTP (sites may redirect it to https)
admin = "127.0.0.1:9901"     # GET /metrics, /healthz, /readyz — never on a public listener

[timeouts]
header = "10s"               # whole request head must arrive within this
idle = "60s"                 # keep-alive idle
upstream_connect = "3s"
upstream_response = "60s"
drain = "30s"

[limits]
max_connections = 50000
max_header_bytes = 65536

[runtime]
worker_threads = 0           # 0: one per CPU core
"#,
        )
        .unwrap();
        fs::write(
            config_dir.join("sites/shop.toml"),
            r#"hosts = ["shop.example.com", "www.shop.example.com"]
tls = { cert = "../../certs/shop.crt", key = "../../certs/shop.key" }   # relative to this file
redirect_https = true        # plain-HTTP requests get 308 to https

[pools.web]                  # the synchronous pool (gunicorn)
servers = ["127.0.0.1:8000", "127.0.0.1:8001"]
max_in_flight = 4            # per server: at most this many requests at once;
queue_timeout = "5s"         # the rest wait in a queue at the proxy, then 503
max_queue = 1000             # optional: a full queue answers 503 at once
max_body = "100MiB"          # request bodies are buffered before dispatch (413 beyond)
health = { path = "/healthz", interval = "5s" }

[pools.live]                 # the async backend (daphne / uvicorn)
servers = ["127.0.0.1:9000"]

[[routes]]
name = "sockets"             # metric label; defaults to the path
path = "/ws/"                # longest matching path prefix wins
websocket = "live"           # upgrade requests go here
pool = "web"                 # plain requests on this path (optional)
idle_timeout = "5m"          # optional: close a silent WebSocket with 1001
ping_interval = "30s"        # optional: the proxy pings the client, consumes the pong
max_message_bytes = "16MiB"  # optional: a larger message closes with 1009

[[routes]]
name = "app"
path = "/"
pool = "web"
"#,
        )
        .unwrap();

        let config = load(&config_dir).unwrap();
        let defaults = Process::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.timeouts, defaults.timeouts);
        assert_eq!(config.limits, defaults.limits);
        assert_eq!(config.runtime, defaults.runtime);
        assert_eq!(config.sites.len(), 1);
        let site = &config.sites[0];
        assert_eq!(site.name, "shop");
        assert_eq!(site.hosts, ["shop.example.com", "www.shop.example.com"]);
        assert!(site.redirect_https);
        let tls = site.tls.as_ref().unwrap();
        assert_eq!(tls.cert_path, config_dir.join("sites/../../certs/shop.crt"));
        assert_eq!(
            site.pools,
            [
                Pool {
                    name: "web".into(),
                    servers: vec!["127.0.0.1:8000".into(), "127.0.0.1:8001".into()],
                    max_in_flight: Some(4),
                    queue_timeout: Duration::from_secs(5),
                    max_queue: Some(1000),
                    max_body: 100 * 1024 * 1024,
                    buffering: true,
                    health: Some(Health {
                        path: "/healthz".into(),
                        interval: Duration::from_secs(5),
                        timeout: Duration::from_secs(2),
                        rise: 2,
                        fall: 3,
                    }),
                },
                Pool {
                    name: "live".into(),
                    servers: vec!["127.0.0.1:9000".into()],
                    max_in_flight: None,
                    queue_timeout: Duration::from_secs(5),
                    max_queue: None,
                    max_body: 100 * 1024 * 1024,
                    buffering: true,
                    health: None,
                },
            ]
        );
        assert_eq!(
            site.routes,
            [
                Route {
                    name: "sockets".into(),
                    path: "/ws/".into(),
                    pool: Some(0),
                    websocket: Some(1),
                    idle_timeout: Some(Duration::from_secs(300)),
                    ping_interval: Some(Duration::from_secs(30)),
                    max_message_bytes: Some(16 * 1024 * 1024),
                },
                Route {
                    name: "app".into(),
                    path: "/".into(),
                    pool: Some(0),
                    websocket: None,
                    idle_timeout: None,
                    ping_interval: None,
                    max_message_bytes: None,
                },
            ]
        );
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
