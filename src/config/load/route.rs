//! A site's upstream pools (`[pools.NAME]`, with their servers and health
//! check) and its routes (`[[routes]]`), which point into those pools by
//! name. They share a file because a route is only checked against the pools
//! of its own site: unique paths and names, existing pools, and
//! WebSocket-only settings only where a route upgrades.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use super::super::{Health, Pool, Route};
use super::diagnostics::{Cx, found, type_error};
use super::values::{
    Table, Val, get_bool, get_duration, get_size, get_str, get_strings, get_uint, get_usize, join,
};

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
    "upstream_response",
    "files",
    "index",
    "cache_control",
    "internal",
    "compress",
];

/// `[pools.NAME]` tables, in file order: routes refer to a pool by its index.
/// `base` is the site file's directory, which `unix:` paths are relative to.
pub(super) fn parse_pools(cx: &mut Cx<'_>, v: &Val<'_>, base: &Path) -> Vec<Pool> {
    let mut pools = Vec::new();
    match v.get_ref() {
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
                        pools.push(parse_pool(cx, pool_name, &t, base));
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
        _ => type_error(cx, v, "a table of pools ([pools.NAME])", "pools"),
    }
    pools
}

fn parse_pool(cx: &mut Cx<'_>, name: &str, t: &Table<'_, '_>, base: &Path) -> Pool {
    let mut pool = Pool {
        name: name.to_owned(),
        servers: Vec::new(),
        sockets: BTreeMap::new(),
        max_in_flight: None,
        queue_timeout: Duration::from_secs(5),
        max_queue: None,
        max_body: 100 * 1024 * 1024,
        buffering: true,
        health: None,
    };

    match t.get("servers") {
        None => t.missing(cx, "servers", "servers = [\"127.0.0.1:8000\"]"),
        Some(v) => parse_servers(cx, v, &t.child("servers"), base, &mut pool),
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

/// `servers = [...]`: each checked, unique, and a `unix:` path resolved
/// against `base` (the site file's directory).
fn parse_servers(cx: &mut Cx<'_>, v: &Val<'_>, path: &str, base: &Path, pool: &mut Pool) {
    let Some(items) = get_strings(cx, v, path) else {
        return;
    };
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
        let checked = match s.strip_prefix(UNIX_PREFIX) {
            Some(socket) => check_socket(socket, base).map(Some),
            None => check_server(s).map(|()| None),
        };
        match checked {
            Err(problem) => cx.error(span, format!("{item_path}: {problem}")),
            Ok(_) if seen.contains_key(s) => {
                let first = &seen[s];
                cx.error(
                    span,
                    format!("{item_path}: duplicate server {s:?} (already listed as {first})"),
                );
            }
            Ok(socket) => {
                seen.insert(s, item_path);
                if let Some(socket) = socket {
                    pool.sockets.insert(s.to_owned(), socket);
                }
                pool.servers.push(s.to_owned());
            }
        }
    }
}

/// The prefix of a unix socket server.
const UNIX_PREFIX: &str = "unix:";
/// Longest socket path the kernel takes (`sun_path` holds 108 bytes, the
/// last a NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Checks the path of a `unix:PATH` server and resolves it against `base`;
/// `Err` says what is wrong with it.
fn check_socket(path: &str, base: &Path) -> Result<PathBuf, String> {
    let example = "as in \"unix:/run/gunicorn.sock\"";
    if path.is_empty() {
        return Err(format!("unix: needs a socket path, {example}"));
    }
    if path.contains('\0') {
        return Err(format!("{path:?} must not contain a NUL character"));
    }
    if path.trim() != path {
        return Err(format!("{path:?} must not start or end with whitespace"));
    }
    if path.ends_with('/')
        || path.ends_with("/.")
        || path.ends_with("/..")
        || path == "."
        || path == ".."
    {
        return Err(format!(
            "{path:?} names a directory; give the socket file's path, {example}"
        ));
    }
    let resolved = base.join(path);
    let len = resolved.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path {} is {len} bytes long; unix socket paths are at most {MAX_SOCKET_PATH}",
            resolved.display()
        ));
    }
    Ok(resolved)
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

/// First use of each route path, or name, in a site: the route's table path
/// and line, for "already used by" messages.
type FirstUse = HashMap<String, (String, usize)>;

/// `[[routes]]`, in file order, each checked against `pools` and the routes
/// before it.
pub(super) fn parse_routes(
    cx: &mut Cx<'_>,
    v: &Val<'_>,
    pools: &[Pool],
    base: &Path,
) -> Vec<Route> {
    let mut routes = Vec::new();
    match v.get_ref() {
        DeValue::Array(items) => {
            let mut by_path = FirstUse::new();
            let mut by_name = FirstUse::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("routes[{i}]");
                if let Some(t) = Table::open_value(cx, item, path, ROUTE_FIELDS) {
                    let mut route = parse_route(cx, &t, pools, &mut by_path, &mut by_name);
                    route.files = super::files::parse_files(cx, &t, base);
                    routes.push(route);
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
    routes
}

fn parse_route(
    cx: &mut Cx<'_>,
    t: &Table<'_, '_>,
    pools: &[Pool],
    by_path: &mut FirstUse,
    by_name: &mut FirstUse,
) -> Route {
    let mut route = Route {
        name: String::new(),
        path: String::new(),
        pool: None,
        websocket: None,
        idle_timeout: None,
        ping_interval: None,
        max_message_bytes: None,
        upstream_response: None,
        files: None,
        compress: false,
    };
    let (path, path_span) = route_path(cx, t, by_path);
    route.path = path;
    if let Some(name) = route_name(cx, t, &route.path, path_span, by_name) {
        route.name = name;
    }
    route_pools(cx, t, pools, &mut route);
    websocket_settings(cx, t, &mut route);
    if let Some(v) = t.get("upstream_response") {
        route.upstream_response = get_duration(cx, v, &t.child("upstream_response"), false);
    }
    if let Some(v) = t.get("compress") {
        route.compress = get_bool(cx, v, &t.child("compress")).unwrap_or(false);
    }
    route
}

/// `path`, empty if missing or invalid, and where a defaulted name is
/// reported: at the path, or at the route if it has none.
fn route_path(
    cx: &mut Cx<'_>,
    t: &Table<'_, '_>,
    by_path: &mut FirstUse,
) -> (String, Range<usize>) {
    let mut path_span = t.span.clone();
    let mut path = String::new();
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
                    path = p.to_owned();
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
    (path, path_span)
}

/// `name`, which defaults to the path; `None` if neither is usable.
fn route_name(
    cx: &mut Cx<'_>,
    t: &Table<'_, '_>,
    path: &str,
    path_span: Range<usize>,
    by_name: &mut FirstUse,
) -> Option<String> {
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
            let name = (!path.is_empty()).then(|| path.to_owned());
            (name, path_span, true)
        }
    };
    let name = name?;
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
    Some(name)
}

/// `pool` and `websocket`: at least one, each naming a pool of this site.
fn route_pools(cx: &mut Cx<'_>, t: &Table<'_, '_>, pools: &[Pool], route: &mut Route) {
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
    if t.get("pool").is_none() && t.get("websocket").is_none() && t.get("files").is_none() {
        cx.error(
            t.span.clone(),
            format!(
                "{}: needs pool = \"NAME\" for plain requests, websocket = \"NAME\" for WebSocket upgrades, files = \"DIR\" for files, or a combination",
                t.path
            ),
        );
    }
}

/// Settings that only apply to a route with `websocket`.
fn websocket_settings(cx: &mut Cx<'_>, t: &Table<'_, '_>, route: &mut Route) {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::*;

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
                "cfg/sites/shop.toml:13:1: routes[2]: needs pool = \"NAME\" for plain requests, websocket = \"NAME\" for WebSocket upgrades, files = \"DIR\" for files, or a combination",
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
    fn upstream_response_per_route() {
        let site = format!("{SITE}upstream_response = \"10m\"\n");
        let config = ok("", &[("shop", &site)]);
        let route = &config.sites[0].routes[0];
        assert_eq!(route.upstream_response, Some(Duration::from_secs(600)));
        assert_eq!(
            ok("", &[("shop", SITE)]).sites[0].routes[0].upstream_response,
            None
        );

        let site = format!(
            "{SITE}upstream_response = \"0s\"\n[[routes]]\npath = \"/api/\"\npool = \"web\"\nupstream_response = 10\n"
        );
        assert_errors(
            &errors("", &[("shop", &site)]),
            &[
                "cfg/sites/shop.toml:7:21: routes[0].upstream_response: must be greater than zero",
                "cfg/sites/shop.toml:11:21: expected a duration string like \"10s\" for routes[1].upstream_response, found integer 10",
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
    fn unix_servers_resolve_against_the_site_directory() {
        let site = r#"hosts = ["a.example"]
[pools.web]
servers = ["unix:/run/app.sock", "unix:app.sock", "unix:../run/b.sock", "127.0.0.1:8000"]
[[routes]]
path = "/"
pool = "web"
"#;
        let config = ok("", &[("shop", site)]);
        let pool = &config.sites[0].pools[0];
        assert_eq!(
            pool.servers,
            [
                "unix:/run/app.sock",
                "unix:app.sock",
                "unix:../run/b.sock",
                "127.0.0.1:8000"
            ]
        );
        let socket = |s: &str| pool.sockets[s].to_str().unwrap().to_owned();
        assert_eq!(socket("unix:/run/app.sock"), "/run/app.sock");
        assert_eq!(socket("unix:app.sock"), "cfg/sites/app.sock");
        assert_eq!(socket("unix:../run/b.sock"), "cfg/sites/../run/b.sock");
        assert_eq!(pool.sockets.len(), 3);
    }

    #[test]
    fn bad_unix_servers() {
        let long = "x".repeat(120);
        let site = format!(
            r#"hosts = ["a.example"]
[pools.web]
servers = ["unix:", "unix:/run/", "unix: a.sock", "unix:a\u0000b", "unix:/{long}", "unix:/a", "unix:/a"]
[[routes]]
path = "/"
pool = "web"
"#
        );
        let e = errors("", &[("shop", &site)]);
        assert_errors(
            &e,
            &[
                "cfg/sites/shop.toml:3:12: pools.web.servers[0]: unix: needs a socket path, as in \"unix:/run/gunicorn.sock\"",
                "cfg/sites/shop.toml:3:21: pools.web.servers[1]: \"/run/\" names a directory",
                "cfg/sites/shop.toml:3:35: pools.web.servers[2]: \" a.sock\" must not start or end with whitespace",
                "cfg/sites/shop.toml:3:51: pools.web.servers[3]: \"a\\0b\" must not contain a NUL character",
                "cfg/sites/shop.toml:3:68: pools.web.servers[4]: socket path /xxx",
                "cfg/sites/shop.toml:3:209: pools.web.servers[6]: duplicate server \"unix:/a\" (already listed as pools.web.servers[5])",
            ],
        );
    }
}
