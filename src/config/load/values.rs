//! Typed reads of TOML values: the [`Table`] wrapper that reports unknown
//! keys as it opens a table, and getters for strings, booleans, arrays,
//! bounded integers, durations, sizes, socket addresses and CIDR ranges.
//! Each getter reports a wrong type or a bad value at the value's own
//! position and returns `None`, so callers keep their defaults and go on
//! checking the rest of the file.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

use super::super::units::{parse_duration, parse_size};
use super::diagnostics::{Cx, type_error, unknown_field};
use super::hash::Fnv;

/// A TOML value and its byte span in the file.
pub(super) type Val<'i> = Spanned<DeValue<'i>>;

/// A TOML table being read: its known fields (unknown ones are reported when
/// it is opened) and its path for messages.
pub(super) struct Table<'t, 'i> {
    pub(super) path: String,
    pub(super) span: Range<usize>,
    fields: Vec<(&'t str, &'t Val<'i>)>,
}

impl<'t, 'i> Table<'t, 'i> {
    /// Opens `table`, reporting every key not in `allowed`.
    pub(super) fn open(
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
    pub(super) fn open_value(
        cx: &mut Cx<'_>,
        v: &'t Val<'i>,
        path: String,
        allowed: &[&str],
    ) -> Option<Self> {
        match v.get_ref() {
            DeValue::Table(t) => Some(Table::open(cx, t, v.span(), path, allowed)),
            _ => {
                type_error(cx, v, "a table", &path);
                None
            }
        }
    }

    /// The value of the known field `name`, if present.
    pub(super) fn get(&self, name: &str) -> Option<&'t Val<'i>> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// The path of one of this table's fields.
    pub(super) fn child(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Opens the sub-table `name`, if present.
    pub(super) fn section(
        &self,
        cx: &mut Cx<'_>,
        name: &str,
        allowed: &[&str],
    ) -> Option<Table<'t, 'i>> {
        let v = self.get(name)?;
        Table::open_value(cx, v, self.child(name), allowed)
    }

    /// Reports that the required field `name` is missing.
    pub(super) fn missing(&self, cx: &mut Cx<'_>, name: &str, example: &str) {
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
pub(super) fn join(parent: &str, key: &str) -> String {
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

/// A string.
pub(super) fn get_str<'v>(cx: &mut Cx<'_>, v: &'v Val<'_>, path: &str) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => {
            type_error(cx, v, "a string", path);
            None
        }
    }
}

/// `true` or `false`.
pub(super) fn get_bool(cx: &mut Cx<'_>, v: &Val<'_>, path: &str) -> Option<bool> {
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
pub(super) fn get_uint(
    cx: &mut Cx<'_>,
    v: &Val<'_>,
    path: &str,
    min: u64,
    max: u64,
) -> Option<u64> {
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

/// A non-negative integer of at least `min` that fits a `usize`.
pub(super) fn get_usize(cx: &mut Cx<'_>, v: &Val<'_>, path: &str, min: u64) -> Option<usize> {
    let max = u64::try_from(usize::MAX).unwrap_or(u64::MAX);
    get_uint(cx, v, path, min, max).and_then(|n| usize::try_from(n).ok())
}

/// A duration string such as `"10s"`; zero only if `allow_zero`.
pub(super) fn get_duration(
    cx: &mut Cx<'_>,
    v: &Val<'_>,
    path: &str,
    allow_zero: bool,
) -> Option<Duration> {
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
pub(super) fn get_size(cx: &mut Cx<'_>, v: &Val<'_>, path: &str, min: u64) -> Option<u64> {
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
pub(super) fn get_strings<'v>(
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

/// The file a string field names, relative to `base`, read whole: its
/// resolved path and content. The name as written and the content feed
/// `hash`; an empty name or an unreadable file is reported at the value.
pub(super) fn read_file(
    cx: &mut Cx<'_>,
    v: &Val<'_>,
    path: &str,
    base: &Path,
    hash: &mut Fnv,
) -> Option<(PathBuf, Vec<u8>)> {
    let s = get_str(cx, v, path)?;
    let (resolved, bytes) = read_named(cx, v.span(), s, path, base)?;
    hash.file(s, &bytes);
    Some((resolved, bytes))
}

/// The file `name` (relative to `base`), read whole: its resolved path and
/// content. An empty name or an unreadable file is reported at `span` as
/// the field `path`; the caller decides what of it feeds the hash.
pub(super) fn read_named(
    cx: &mut Cx<'_>,
    span: Range<usize>,
    name: &str,
    path: &str,
    base: &Path,
) -> Option<(PathBuf, Vec<u8>)> {
    if name.is_empty() {
        cx.error(span, format!("{path}: must not be empty"));
        return None;
    }
    let resolved = base.join(name);
    match fs::read(&resolved) {
        Ok(bytes) => Some((resolved, bytes)),
        Err(e) => {
            cx.error(
                span,
                format!("{path}: cannot read {}: {e}", resolved.display()),
            );
            None
        }
    }
}

/// One `trusted_proxies` entry: a CIDR range, or a single address (as
/// nginx's `set_real_ip_from` takes either).
pub(super) fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
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

/// An IP address and port; a bad one is reported with a hint at what is wrong.
pub(super) fn socket_addr(
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

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
}
