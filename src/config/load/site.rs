//! One `sites/NAME.toml`: its host names (normalized, and claimed by one
//! site only), its TLS and redirect settings, what a reload does to open
//! WebSocket sessions, its error pages, and the pools and routes it
//! declares. The checks that tie one field to another (a redirect needs
//! TLS, a close window needs `removed_sessions = "close"`) live here because
//! only the site sees both.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::DeTable;

use super::super::{ErrorPages, RemovedSessions, Site};
use super::diagnostics::Cx;
use super::hash::Fnv;
use super::pages::parse_error_pages;
use super::route::{parse_pools, parse_routes};
use super::tls::{TLS_FIELDS, parse_tls};
use super::values::{Table, Val, get_bool, get_duration, get_str, get_strings};

const SITE_FIELDS: &[&str] = &[
    "hosts",
    "tls",
    "redirect_https",
    "removed_sessions",
    "close_window",
    "error_pages",
    "pools",
    "routes",
];

/// Host names claimed so far, across sites: the host, and the name and file
/// of the site that claimed it.
pub(super) type Claimed = HashMap<String, (String, PathBuf)>;

/// Reads one site file; `claimed` holds the hosts of the sites before it.
pub(super) fn parse_site(
    cx: &mut Cx<'_>,
    name: &str,
    base: &Path,
    root: &Spanned<DeTable<'_>>,
    claimed: &mut Claimed,
    hash: &mut Fnv,
) -> Site {
    let top = Table::open(cx, root.get_ref(), root.span(), String::new(), SITE_FIELDS);
    let mut site = Site {
        name: name.to_owned(),
        file: cx.file.to_path_buf(),
        hosts: Vec::new(),
        tls: None,
        acme: false,
        redirect_https: false,
        removed_sessions: RemovedSessions::Keep,
        close_window: Duration::from_secs(30),
        error_pages: ErrorPages::default(),
        pools: Vec::new(),
        routes: Vec::new(),
    };

    match top.get("hosts") {
        None => top.missing(cx, "hosts", "hosts = [\"example.com\"]"),
        Some(v) => site.hosts = parse_hosts(cx, v, name, claimed),
    }

    let tls_given = top.get("tls").is_some();
    if let Some(t) = top.section(cx, "tls", TLS_FIELDS) {
        site.tls = parse_tls(cx, &t, base, hash);
    }
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

    parse_removed_sessions(cx, &top, &mut site);
    if let Some(v) = top.get("error_pages") {
        site.error_pages = parse_error_pages(cx, v, base, hash);
    }

    if let Some(v) = top.get("pools") {
        site.pools = parse_pools(cx, v, base);
    }
    if let Some(v) = top.get("routes") {
        site.routes = parse_routes(cx, v, &site.pools, base);
    }
    site
}

/// `hosts`: each one checked, normalized, and claimed for this site unless
/// it is listed twice or another site claimed it first.
fn parse_hosts(cx: &mut Cx<'_>, v: &Val<'_>, name: &str, claimed: &mut Claimed) -> Vec<String> {
    let mut hosts = Vec::new();
    let Some(items) = get_strings(cx, v, "hosts") else {
        return hosts;
    };
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
        hosts.push(host);
    }
    hosts
}

/// `removed_sessions` and `close_window`, which only means something with
/// `removed_sessions = "close"`.
fn parse_removed_sessions(cx: &mut Cx<'_>, top: &Table<'_, '_>, site: &mut Site) {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
}
