//! Routing: from a request's host and path to a site and route.
//!
//! A [`Router`] is built once per configuration generation. Host lookup is a
//! hash-map probe on the lower-cased host without port; the route is the
//! longest path prefix among the site's routes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::acme;
use crate::config::{Config, ErrorPages, Route as RouteConfig, Site as SiteConfig, Timeouts};
use crate::files::{Catalog, Files};
use crate::metrics::{Metrics, RouteMetrics};
use crate::pool::Pool;
use crate::tls;
use crate::upstream::Server;
use rustls::server::ProducesTickets;

/// A route, resolved: its pools and metric handles.
pub(crate) struct Route {
    /// The site's name.
    pub site: Arc<str>,
    /// Route name; the `route` metric label.
    pub name: Arc<str>,
    /// Path prefix.
    pub path: String,
    /// Pool for plain requests.
    pub pool: Option<Arc<Pool>>,
    /// Pool for WebSocket upgrades.
    pub websocket: Option<Arc<Pool>>,
    /// Close a silent WebSocket after this.
    pub idle_timeout: Option<Duration>,
    /// Ping the client this often.
    pub ping_interval: Option<Duration>,
    /// Largest WebSocket message allowed.
    pub max_message_bytes: Option<u64>,
    /// The route's `upstream_response`, else `timeouts.upstream_response`.
    pub upstream_response: Duration,
    /// The site's error pages, for the statuses the proxy answers itself.
    pub error_pages: Arc<ErrorPages>,
    /// The directory this route serves files from.
    pub files: Option<Arc<Files>>,
    /// The site's files routes, for `X-Accel-Redirect` from this route's pool.
    pub site_files: Arc<Catalog>,
    /// Compress textual responses.
    pub compress: bool,
    /// Pre-resolved metric handles.
    pub metrics: RouteMetrics,
}

/// A site, resolved.
pub(crate) struct Site {
    /// File stem; the `site` metric label.
    pub name: Arc<str>,
    /// 308 plain-HTTP requests to https.
    pub redirect_https: bool,
    /// rustls configuration presenting this site's certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// An ACME site still waiting for its first certificate: its
    /// handshakes fail and its plain-HTTP requests answer 503.
    pub acme_pending: bool,
    /// Routes, longest path first.
    routes: Vec<Arc<Route>>,
    /// Pools by name.
    pub pools: Vec<Arc<Pool>>,
    /// Metrics for requests that match no route.
    pub unrouted: Arc<Route>,
}

impl Site {
    /// The route with the longest prefix of `path`.
    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| path.starts_with(r.path.as_str()))
    }
}

/// Host → site, for one configuration generation.
pub(crate) struct Router {
    hosts: HashMap<String, usize, HostHash>,
    sites: Vec<Arc<Site>>,
    /// rustls' rotating ticketer, made once and handed from generation to
    /// generation, for when no `[tls] ticket_keys` are configured.
    rotating: Arc<dyn ProducesTickets>,
    /// The ACME challenges being answered, handed from generation to
    /// generation like `rotating`, since orders outlive reloads.
    pub challenges: Arc<acme::Challenges>,
    /// Metrics for requests whose host matches no site.
    pub unknown: Arc<Route>,
}

/// Label used for `site` and `route` when a request matched none.
pub(crate) const UNMATCHED: &str = "_unmatched";

/// The route that counts a site's (or no site's) requests that match no
/// route; its errors are answered with the site's `error_pages`.
fn unrouted(
    metrics: &Arc<Metrics>,
    site: &str,
    error_pages: Arc<ErrorPages>,
    upstream_response: Duration,
) -> Arc<Route> {
    Arc::new(Route {
        site: site.into(),
        name: UNMATCHED.into(),
        path: String::new(),
        pool: None,
        websocket: None,
        idle_timeout: None,
        ping_interval: None,
        max_message_bytes: None,
        upstream_response,
        error_pages,
        files: None,
        site_files: Arc::default(),
        compress: false,
        metrics: RouteMetrics::new(metrics, site, UNMATCHED),
    })
}

/// `host` without a trailing `:port` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    // A byte search: `rsplit_once` with a char pattern costs several times
    // more, on every request.
    match host.bytes().rposition(|b| b == b':') {
        Some(i) if host.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
}

/// The host map's hasher, FNV: a few instructions per byte where SipHash
/// costs a few hundred per lookup. Its keys come from the configuration
/// alone, so a client choosing hosts that collide slows only its own probe.
type HostHash = fnv::FnvBuildHasher;

/// Lower-cases `host` and strips a port and a trailing dot, borrowing when
/// nothing needs to change.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = strip_port(host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

impl Router {
    /// Resolves a configuration. Upstream servers that `previous` already
    /// knows (same site, pool and address) are carried over with their
    /// accounting and health.
    pub fn build(
        config: &Config,
        previous: Option<&Router>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        let mut hosts = HashMap::with_hasher(HostHash::default());
        let mut sites = Vec::with_capacity(config.sites.len());
        let rotating = match previous {
            Some(p) => p.rotating.clone(),
            None => rustls::crypto::ring::Ticketer::new().map_err(BuildError::Ticketer)?,
        };
        let ticketer = ticketer(config, &rotating)?;
        let challenges = previous.map_or_else(Arc::default, |p| p.challenges.clone());
        for (i, site) in config.sites.iter().enumerate() {
            for h in &site.hosts {
                hosts.insert(h.clone(), i);
            }
            let prev = previous.and_then(|p| p.site_named(&site.name));
            let cx = SiteCx {
                metrics,
                timeouts: &config.timeouts,
                ticketer: &ticketer,
                challenges: &challenges,
            };
            sites.push(Arc::new(build_site(site, prev, &cx)?));
        }
        Ok(Router {
            hosts,
            sites,
            rotating,
            challenges,
            unknown: unrouted(
                metrics,
                UNMATCHED,
                Arc::default(),
                config.timeouts.upstream_response,
            ),
        })
    }

    /// The site serving `host` (any case, with or without port).
    pub fn site(&self, host: &str) -> Option<&Arc<Site>> {
        let host = normalize_host(host);
        self.hosts.get(host.as_ref()).map(|&i| &self.sites[i])
    }

    /// The site (and its TLS configuration) a handshake presents for this
    /// SNI. Without SNI (a client connecting by IP address), the only site
    /// with a certificate answers; with several, there is no right choice.
    pub fn tls_site(&self, sni: Option<&str>) -> Option<(Arc<rustls::ServerConfig>, Arc<Site>)> {
        let site = match sni {
            Some(name) => self.site(name).filter(|s| s.tls.is_some()),
            None => {
                let mut it = self
                    .sites
                    .iter()
                    .filter(|s| s.tls.is_some() && !s.acme_pending);
                let first = it.next();
                if it.next().is_some() { None } else { first }
            }
        }?;
        Some((site.tls.clone()?, site.clone()))
    }

    /// The site with this name.
    pub fn site_named(&self, name: &str) -> Option<&Arc<Site>> {
        self.sites.iter().find(|s| &*s.name == name)
    }
}

/// Why a validated configuration could still not be put into service.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A server address is not a valid URI authority.
    #[error("site {site}: pool {pool}: server {server:?} is not a valid host:port")]
    BadServer {
        /// Site name.
        site: String,
        /// Pool name.
        pool: String,
        /// The address.
        server: String,
    },
    /// rustls could not make its ticketer (no randomness).
    #[error("TLS: cannot create the session ticketer: {0}")]
    Ticketer(#[source] rustls::Error),
    /// A `[tls] ticket_keys` key could not be used.
    #[error("tls.ticket_keys: {0}")]
    TicketKeys(#[from] tls::TicketKeyError),
    /// rustls refused the certificate.
    #[error("site {site}: TLS: {source}")]
    Tls {
        /// Site name.
        site: String,
        /// The rustls error.
        source: rustls::Error,
    },
}

/// The ticketer every site of `config` seals its tickets with: the shared
/// keys if there are any, else the process's rotating one.
fn ticketer(
    config: &Config,
    rotating: &Arc<dyn ProducesTickets>,
) -> Result<Arc<dyn ProducesTickets>, BuildError> {
    let keys = &config.tls.ticket_keys;
    if keys.is_empty() {
        return Ok(rotating.clone());
    }
    Ok(Arc::new(tls::SharedTicketer::new(
        keys.iter().map(|k| k.material()),
    )?))
}

/// What every site of one configuration is built with.
struct SiteCx<'a> {
    metrics: &'a Arc<Metrics>,
    timeouts: &'a Timeouts,
    ticketer: &'a Arc<dyn ProducesTickets>,
    challenges: &'a Arc<acme::Challenges>,
}

fn build_site(
    site: &SiteConfig,
    previous: Option<&Arc<Site>>,
    cx: &SiteCx<'_>,
) -> Result<Site, BuildError> {
    let SiteCx {
        metrics,
        timeouts,
        ticketer,
        challenges,
    } = *cx;
    let mut pools = Vec::with_capacity(site.pools.len());
    for p in &site.pools {
        let prev_pool = previous.and_then(|s| s.pools.iter().find(|q| *q.name == *p.name));
        pools.push(build_pool(site, p, prev_pool, metrics, timeouts)?);
    }
    let error_pages = Arc::new(site.error_pages.clone());
    let files: Vec<Option<Arc<Files>>> = site
        .routes
        .iter()
        .map(|r| r.files.as_ref().map(|f| Arc::new(Files::new(r, f))))
        .collect();
    let catalog = Arc::new(Catalog::new(files.iter().flatten().cloned().collect()));
    let shared = Shared {
        site,
        pools: &pools,
        metrics,
        error_pages: &error_pages,
        site_files: &catalog,
        timeouts,
    };
    let mut routes: Vec<Arc<Route>> = site
        .routes
        .iter()
        .zip(files)
        .map(|(r, files)| build_route(r, files, &shared))
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
    let tls_error = |source| BuildError::Tls {
        site: site.name.clone(),
        source,
    };
    let tls = match &site.tls {
        // An ACME site always has a configuration: it answers tls-alpn-01
        // challenges before its first certificate arrives.
        _ if site.acme => {
            let key = site.tls.as_ref().map(|t| t.certified_key.clone());
            let resolver = Arc::new(acme::Resolver::new(key, challenges.clone()));
            Some(tls::server_config(resolver, ticketer.clone(), &acme::ALPN).map_err(tls_error)?)
        }
        Some(t) => Some(
            tls::site_server_config(t.certified_key.clone(), ticketer.clone())
                .map_err(tls_error)?,
        ),
        None => None,
    };
    Ok(Site {
        name: site.name.as_str().into(),
        redirect_https: site.redirect_https,
        acme_pending: site.acme && site.tls.is_none(),
        tls,
        routes,
        pools,
        unrouted: unrouted(metrics, &site.name, error_pages, timeouts.upstream_response),
    })
}

/// One pool of `site`: servers that `previous` (the same pool before a
/// reload) already knows are carried over with their accounting and health,
/// and a pool that survives keeps its queue.
fn build_pool(
    site: &SiteConfig,
    p: &crate::config::Pool,
    previous: Option<&Arc<Pool>>,
    metrics: &Arc<Metrics>,
    timeouts: &Timeouts,
) -> Result<Arc<Pool>, BuildError> {
    let mut servers = Vec::with_capacity(p.servers.len());
    for addr in &p.servers {
        let socket = p.sockets.get(addr).map(PathBuf::as_path);
        let reused = previous.and_then(|q| {
            q.members()
                .servers
                .iter()
                .find(|s| s.is(addr, socket))
                .cloned()
        });
        let server = match reused {
            Some(s) => s,
            None => Server::new(addr, socket, metrics, &site.name, &p.name).map_err(|_| {
                BuildError::BadServer {
                    site: site.name.clone(),
                    pool: p.name.clone(),
                    server: addr.clone(),
                }
            })?,
        };
        server.set_health(p.health.clone(), timeouts.upstream_connect);
        servers.push(server);
    }
    // A pool that survives keeps its queue: requests waiting across the
    // reload are served by slots freed after it.
    Ok(match previous {
        Some(q) => {
            q.update(p.clone(), servers);
            q.clone()
        }
        None => Pool::new(&site.name, p.clone(), servers, metrics),
    })
}

/// What the routes of one site share.
struct Shared<'a> {
    site: &'a SiteConfig,
    pools: &'a [Arc<Pool>],
    metrics: &'a Arc<Metrics>,
    error_pages: &'a Arc<ErrorPages>,
    site_files: &'a Arc<Catalog>,
    timeouts: &'a Timeouts,
}

/// One route of a site, its pools resolved among the site's.
fn build_route(r: &RouteConfig, files: Option<Arc<Files>>, s: &Shared<'_>) -> Arc<Route> {
    let Shared {
        site,
        pools,
        metrics,
        error_pages,
        site_files,
        timeouts,
    } = *s;
    Arc::new(Route {
        site: site.name.as_str().into(),
        name: r.name.as_str().into(),
        path: r.path.clone(),
        pool: r.pool.and_then(|i| pools.get(i).cloned()),
        websocket: r.websocket.and_then(|i| pools.get(i).cloned()),
        idle_timeout: r.idle_timeout,
        ping_interval: r.ping_interval,
        max_message_bytes: r.max_message_bytes,
        upstream_response: r.upstream_response.unwrap_or(timeouts.upstream_response),
        error_pages: error_pages.clone(),
        files,
        site_files: site_files.clone(),
        compress: r.compress,
        metrics: RouteMetrics::new(metrics, &site.name, &r.name),
    })
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:8443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:443"), "::1");
        assert_eq!(normalize_host("localhost"), "localhost");
        // Only an all-digit (or empty) tail after the last colon is a port.
        assert_eq!(super::strip_port("example.com:80x"), "example.com:80x");
        assert_eq!(super::strip_port("example.com:"), "example.com");
        assert_eq!(super::strip_port("[::1]:443"), "[::1]");
        assert_eq!(super::strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn hosts_are_found_through_the_fnv_map() {
        use std::collections::HashMap;
        let mut m = HashMap::with_hasher(super::HostHash::default());
        for (i, h) in ["a.example", "b.example", "localhost", "127.0.0.1"]
            .iter()
            .enumerate()
        {
            m.insert(h.to_string(), i);
        }
        assert_eq!(m.get("localhost"), Some(&2));
        assert_eq!(m.get("127.0.0.1"), Some(&3));
        assert_eq!(m.get("c.example"), None);
    }
}
