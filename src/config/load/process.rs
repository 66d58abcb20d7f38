//! `switchyard.toml`: the process-wide settings (`[listen]`, `[timeouts]`,
//! `[limits]`, `[runtime]`, `[log]`, `[tls]`, `[acme]`), each with its default. The file is
//! optional, so [`Process::default`] alone must be a working setup; the
//! listeners are checked against each other here because a clash would only
//! show at bind time otherwise.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::super::{Acme, Limits, Listen, Log, LogFormat, Runtime, Timeouts, Tls, TrustedProxies};
use super::acme::{ACME_FIELDS, parse_acme};
use super::diagnostics::{Cx, found};
use super::hash::Fnv;
use super::ticket_keys::{TLS_FIELDS, parse_ticket_keys};
use super::values::{
    Table, Val, get_bool, get_duration, get_size, get_str, get_strings, get_usize, parse_cidr,
    socket_addr,
};

const MAIN_FIELDS: &[&str] = &[
    "listen", "timeouts", "limits", "runtime", "log", "tls", "acme",
];
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

/// Everything `switchyard.toml` sets.
pub(super) struct Process {
    pub(super) listen: Listen,
    pub(super) timeouts: Timeouts,
    pub(super) limits: Limits,
    pub(super) runtime: Runtime,
    pub(super) log: Log,
    pub(super) tls: Tls,
    pub(super) acme: Option<Acme>,
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
            tls: Tls::default(),
            acme: None,
        }
    }
}

/// Reads `switchyard.toml`, starting from the defaults; files it names are
/// relative to `dir` and feed `hash`.
pub(super) fn parse_main(
    cx: &mut Cx<'_>,
    root: &Spanned<DeTable<'_>>,
    dir: &Path,
    hash: &mut Fnv,
) -> Process {
    let mut p = Process::default();
    let top = Table::open(cx, root.get_ref(), root.span(), String::new(), MAIN_FIELDS);

    if let Some(listen) = top.section(cx, "listen", LISTEN_FIELDS) {
        parse_listen(cx, &listen, &mut p.listen);
    }

    if let Some(t) = top.section(cx, "timeouts", TIMEOUT_FIELDS) {
        parse_timeouts(cx, &t, &mut p.timeouts);
    }

    if let Some(t) = top.section(cx, "limits", LIMIT_FIELDS) {
        parse_limits(cx, &t, &mut p.limits);
    }

    if let Some(t) = top.section(cx, "runtime", RUNTIME_FIELDS)
        && let Some(v) = t.get("worker_threads")
        && let Some(n) = get_usize(cx, v, &t.child("worker_threads"), 0)
    {
        p.runtime.worker_threads = n;
    }

    if let Some(t) = top.section(cx, "log", LOG_FIELDS) {
        parse_log(cx, &t, &mut p.log);
    }

    if let Some(t) = top.section(cx, "tls", TLS_FIELDS)
        && let Some(v) = t.get("ticket_keys")
    {
        p.tls.ticket_keys = parse_ticket_keys(cx, v, &t.child("ticket_keys"), dir, hash);
    }

    if let Some(t) = top.section(cx, "acme", ACME_FIELDS) {
        p.acme = Some(parse_acme(cx, &t, dir, hash));
    }
    p
}

fn parse_timeouts(cx: &mut Cx<'_>, t: &Table<'_, '_>, timeouts: &mut Timeouts) {
    let slots: [(&str, &mut Duration, bool); 5] = [
        ("header", &mut timeouts.header, false),
        ("idle", &mut timeouts.idle, false),
        ("upstream_connect", &mut timeouts.upstream_connect, false),
        ("upstream_response", &mut timeouts.upstream_response, false),
        ("drain", &mut timeouts.drain, true),
    ];
    for (name, slot, allow_zero) in slots {
        if let Some(v) = t.get(name)
            && let Some(d) = get_duration(cx, v, &t.child(name), allow_zero)
        {
            *slot = d;
        }
    }
}

fn parse_limits(cx: &mut Cx<'_>, t: &Table<'_, '_>, limits: &mut Limits) {
    if let Some(v) = t.get("max_connections")
        && let Some(n) = get_usize(cx, v, &t.child("max_connections"), 1)
    {
        limits.max_connections = n;
    }
    if let Some(v) = t.get("max_header_bytes") {
        let path = t.child("max_header_bytes");
        if let Some(n) = get_size(cx, v, &path, 1) {
            match usize::try_from(n) {
                Ok(n) => limits.max_header_bytes = n,
                Err(_) => cx.error(v.span(), format!("{path}: {n} is too large")),
            }
        }
    }
}

fn parse_log(cx: &mut Cx<'_>, t: &Table<'_, '_>, log: &mut Log) {
    if let Some(v) = t.get("format")
        && let Some(s) = get_str(cx, v, &t.child("format"))
    {
        match s {
            "text" => log.format = LogFormat::Text,
            "json" => log.format = LogFormat::Json,
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
            log.level = s.to_owned();
        }
    }
}

/// An address a listener will bind, for conflict checks: the address, its
/// path for messages, and its span if it was written (`None`: a default).
type InUse = (SocketAddr, String, Option<Range<usize>>);

fn parse_listen(cx: &mut Cx<'_>, t: &Table<'_, '_>, listen: &mut Listen) {
    let mut used: Vec<InUse> = Vec::new();
    parse_listeners(cx, t, listen, &mut used);
    parse_admin(cx, t, &mut listen.admin, &mut used);

    if let Some(v) = t.get("proxy_protocol")
        && let Some(b) = get_bool(cx, v, &t.child("proxy_protocol"))
    {
        listen.proxy_protocol = b;
    }
    if let Some(v) = t.get("trusted_proxies") {
        listen.trusted_proxies = parse_trusted_proxies(cx, v, &t.child("trusted_proxies"));
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

    check_conflicts(cx, &used);
}

/// `https` and `http`: lists of addresses, each replacing its default.
fn parse_listeners(cx: &mut Cx<'_>, t: &Table<'_, '_>, listen: &mut Listen, used: &mut Vec<InUse>) {
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
}

/// `admin`: one address, or `false` or `""` to switch it off.
fn parse_admin(
    cx: &mut Cx<'_>,
    t: &Table<'_, '_>,
    admin: &mut Option<SocketAddr>,
    used: &mut Vec<InUse>,
) {
    let admin_path = t.child("admin");
    match t.get("admin") {
        None => {
            if let Some(addr) = *admin {
                used.push((addr, admin_path, None));
            }
        }
        Some(v) => match v.get_ref() {
            DeValue::Boolean(false) => *admin = None,
            DeValue::String(s) if s.is_empty() => *admin = None,
            DeValue::String(s) => {
                *admin = None;
                if let Some(addr) = socket_addr(cx, s, &admin_path, v.span(), "127.0.0.1:9901") {
                    *admin = Some(addr);
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
}

/// `trusted_proxies`: the ranges that parse; the others are reported.
fn parse_trusted_proxies(cx: &mut Cx<'_>, v: &Val<'_>, path: &str) -> TrustedProxies {
    let mut ranges = Vec::new();
    for (s, item_path, span) in get_strings(cx, v, path).unwrap_or_default() {
        match parse_cidr(s) {
            Ok(net) => ranges.push(net),
            Err(why) => cx.error(span, format!("{item_path}: {why}")),
        }
    }
    TrustedProxies::new(ranges)
}

/// Reports each address that clashes with one listed before it, once.
fn check_conflicts(cx: &mut Cx<'_>, used: &[InUse]) {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
}
