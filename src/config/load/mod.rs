//! Reading and checking a configuration directory: this file finds and reads
//! `switchyard.toml` and `sites/*.toml` and ties the parts together. The TOML
//! is parsed into a spanned tree ([`toml::de::DeTable`]) and walked by hand,
//! so that every problem in every file is collected, each with its
//! `FILE:LINE:COL`, instead of stopping at the first one: `diagnostics`
//! locates and words the problems, `values` reads typed fields, `process`
//! checks `switchyard.toml` (`ticket_keys` its `[tls]` key files, `acme`
//! its `[acme]` table and the sites' `tls.acme`), `site`,
//! `route`, `tls` and `pages` check the site files, and `hash` fingerprints
//! everything read.

mod acme;
mod diagnostics;
mod files;
mod hash;
mod pages;
mod process;
mod route;
mod site;
#[cfg(test)]
mod test_support;
mod ticket_keys;
mod tls;
mod values;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError, ConfigErrors};
use diagnostics::{Cx, at_start, parse_toml, single};
use hash::Fnv;
use process::{Process, parse_main};
use site::{Claimed, parse_site};

/// The process-wide settings file inside the config directory.
const MAIN_FILE: &str = "switchyard.toml";
/// The directory of site files inside the config directory.
const SITES_DIR: &str = "sites";

/// Loads and checks the configuration directory `dir`: `dir/switchyard.toml`
/// (optional; every field has a default) and every `dir/sites/*.toml`
/// (at least one; the file stem is the site name; dot-files are ignored).
///
/// Returns every problem found, in file order, rather than the first one.
pub fn load(dir: &Path) -> Result<Config, ConfigErrors> {
    check_dir(dir)?;
    let mut errors = Vec::new();
    let main_path = dir.join(MAIN_FILE);
    let main = read_main(&main_path, &mut errors);
    let (mut site_files, seen) = read_sites(&dir.join(SITES_DIR), &mut errors);
    site_files.sort_by(|a, b| a.0.cmp(&b.0));

    build(dir, main.map(|t| (main_path, t)), site_files, seen, errors)
}

/// A site file: the site's name (the file stem), its path and its text.
type SiteFile = (String, PathBuf, String);

/// Fails unless `dir` is a readable directory: nothing else can be reported
/// without one.
fn check_dir(dir: &Path) -> Result<(), ConfigErrors> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(single(
            dir,
            format!(
                "{} is not a directory (expected a configuration directory holding {MAIN_FILE} and {SITES_DIR}/)",
                dir.display()
            ),
        )),
        Err(e) => Err(single(
            dir,
            format!("cannot read configuration directory {}: {e}", dir.display()),
        )),
    }
}

/// The text of `switchyard.toml`, or `None` if there is none (every field
/// has a default) or it cannot be read (reported).
fn read_main(main_path: &Path, errors: &mut Vec<ConfigError>) -> Option<String> {
    match fs::read_to_string(main_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            errors.push(at_start(
                main_path,
                format!("cannot read {}: {e}", main_path.display()),
            ));
            None
        }
    }
}

/// Every site file in `sites_dir`, unsorted, and how many there are,
/// counting those that could not be read (reported).
fn read_sites(sites_dir: &Path, errors: &mut Vec<ConfigError>) -> (Vec<SiteFile>, usize) {
    let mut site_files = Vec::new();
    let mut seen = 0;
    let entries = match fs::read_dir(sites_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (site_files, seen),
        Err(e) => {
            errors.push(at_start(
                sites_dir,
                format!("cannot read {}: {e}", sites_dir.display()),
            ));
            return (site_files, seen);
        }
        Ok(entries) => entries,
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(at_start(
                    sites_dir,
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
    (site_files, seen)
}

/// Like [`load`], but from text: `main` is the content of `switchyard.toml`
/// and `sites` pairs a site name with the content of `sites/NAME.toml`.
///
/// Errors name the files as `dir/switchyard.toml` and `dir/sites/NAME.toml`;
/// certificate paths resolve relative to `dir/sites/`, as they would for real
/// files.
pub fn load_str(dir: &Path, main: &str, sites: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let mut site_files: Vec<SiteFile> = sites
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
    sites: Vec<SiteFile>,
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
            process = parse_main(&mut cx, &root, dir, &mut hash);
        }
    }

    let mut claimed = Claimed::new();
    let mut parsed_sites = Vec::with_capacity(sites.len());
    for (name, path, text) in &sites {
        hash.file(&format!("{SITES_DIR}/{name}.toml"), text.as_bytes());
        let base = path.parent().unwrap_or(&sites_dir).to_path_buf();
        let mut cx = Cx::new(path, text, &mut errors);
        if let Some(root) = parse_toml(&mut cx) {
            let acme = process.acme.is_some();
            let mut site = parse_site(&mut cx, name, &base, &root, &mut claimed, &mut hash);
            acme::check_site(&mut cx, &root, &mut site, acme);
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
        tls: process.tls,
        acme: process.acme,
        sites: parsed_sites,
        hash: hash.finish(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::super::{
        Health, Limits, Listen, Log, LogFormat, Pool, RemovedSessions, Route, Runtime, Timeouts,
    };
    use super::test_support::*;
    use super::*;

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
                sockets: Default::default(),
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
                upstream_response: None,
                files: None,
                compress: false,
            }]
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
        fs::write(config_dir.join(MAIN_FILE), CONTRACT_MAIN).unwrap();
        fs::write(config_dir.join("sites/shop.toml"), CONTRACT_SITE).unwrap();

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
        assert_eq!(site.pools, contract_pools());
        assert_eq!(site.routes, contract_routes());
    }

    /// The contract's `switchyard.toml`: every setting at its default.
    const CONTRACT_MAIN: &str = r#"[listen]
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
"#;

    /// The contract's `sites/shop.toml`, with certificates in `../../certs/`.
    const CONTRACT_SITE: &str = r#"hosts = ["shop.example.com", "www.shop.example.com"]
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
"#;

    /// The pools `CONTRACT_SITE` declares, as loaded.
    fn contract_pools() -> [Pool; 2] {
        [
            Pool {
                name: "web".into(),
                servers: vec!["127.0.0.1:8000".into(), "127.0.0.1:8001".into()],
                sockets: Default::default(),
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
                sockets: Default::default(),
                max_in_flight: None,
                queue_timeout: Duration::from_secs(5),
                max_queue: None,
                max_body: 100 * 1024 * 1024,
                buffering: true,
                health: None,
            },
        ]
    }

    /// The routes `CONTRACT_SITE` declares, as loaded.
    fn contract_routes() -> [Route; 2] {
        [
            Route {
                name: "sockets".into(),
                path: "/ws/".into(),
                pool: Some(0),
                websocket: Some(1),
                idle_timeout: Some(Duration::from_secs(300)),
                ping_interval: Some(Duration::from_secs(30)),
                max_message_bytes: Some(16 * 1024 * 1024),
                upstream_response: None,
                files: None,
                compress: false,
            },
            Route {
                name: "app".into(),
                path: "/".into(),
                pool: Some(0),
                websocket: None,
                idle_timeout: None,
                ping_interval: None,
                max_message_bytes: None,
                upstream_response: None,
                files: None,
                compress: false,
            },
        ]
    }
}
