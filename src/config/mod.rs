//! Configuration: the typed values the proxy runs on, parsed once from
//! `switchyard.toml` and `sites/*.toml`.
//!
//! Everything here is plain data. [`load`] reads a config directory, checks
//! every field and cross-reference, loads certificates, and either returns a
//! [`Config`] or every error it found as `FILE:LINE:COL: message`.

mod load;
mod units;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use load::{load, load_str};
pub use units::{parse_duration, parse_size};

/// A whole, validated configuration: process settings plus every site.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// Listener addresses.
    pub listen: Listen,
    /// Process-wide timeouts.
    pub timeouts: Timeouts,
    /// Process-wide limits.
    pub limits: Limits,
    /// Tokio runtime settings.
    pub runtime: Runtime,
    /// Logging settings.
    pub log: Log,
    /// Process-wide TLS settings.
    pub tls: Tls,
    /// `[acme]`: automatic certificates; `None` without the table.
    pub acme: Option<Acme>,
    /// Sites, sorted by name.
    pub sites: Vec<Site>,
    /// A hash of every file's contents, exported so operators can see what is live.
    pub hash: u64,
}

/// `[listen]`: where the proxy accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// TLS listeners (ALPN h2 and http/1.1). Default `0.0.0.0:8443`.
    pub https: Vec<SocketAddr>,
    /// Plain HTTP/1.1 listeners. Default `0.0.0.0:8080`.
    pub http: Vec<SocketAddr>,
    /// Admin listener for /metrics, /healthz, /readyz. Default `127.0.0.1:9901`.
    pub admin: Option<SocketAddr>,
    /// Every https and http connection starts with a PROXY protocol header
    /// (v1 or v2) naming the client. Default false.
    pub proxy_protocol: bool,
    /// Peers whose forwarded headers (and PROXY headers) are believed.
    /// Default empty: nobody's.
    pub trusted_proxies: TrustedProxies,
}

/// A list of CIDR ranges (`[listen] trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// A list of these ranges.
    pub fn new(ranges: Vec<ipnet::IpNet>) -> Self {
        TrustedProxies(ranges)
    }

    /// Whether no range is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `addr` lies in one of the ranges. An IPv4-mapped IPv6
    /// address (a dual-stack socket's view of an IPv4 peer) is taken as the
    /// IPv4 address it maps.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request head must arrive within this. Default 10s.
    pub header: Duration,
    /// Keep-alive idle timeout. Default 60s.
    pub idle: Duration,
    /// TCP connect to an upstream server. Default 3s.
    pub upstream_connect: Duration,
    /// From request sent to response head received. Default 60s.
    pub upstream_response: Duration,
    /// Grace period on shutdown. Default 30s.
    pub drain: Duration,
}

/// `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open downstream connections at most. Default 50000.
    pub max_connections: usize,
    /// Request head size at most. Default 65536.
    pub max_header_bytes: usize,
}

/// `[runtime]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// Tokio worker threads; 0 means one per CPU core.
    pub worker_threads: usize,
}

/// `[log]` (an extension to the contract): access-log format and level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `switchyard=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[tls]` in `switchyard.toml`.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// Session-ticket keys shared with other instances, the first issuing;
    /// empty: each process keeps its own rotating keys.
    pub ticket_keys: Vec<TicketKey>,
}

/// `[acme]` in `switchyard.toml`: where and how certificates are ordered
/// for the sites that say `tls = { acme = true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// Contact address given to the CA; `None`: the account has none.
    pub email: Option<String>,
    /// The directory URL, always `https://`. Default Let's Encrypt's.
    pub directory: String,
    /// How the CA checks that we control a name.
    pub challenge: AcmeChallenge,
    /// Account key and certificates, resolved against the config directory.
    pub storage: PathBuf,
    /// Roots trusted for the directory's HTTPS instead of the system's
    /// (a private or test CA), with the file they came from.
    pub ca_roots: Option<(PathBuf, Vec<rustls::pki_types::CertificateDer<'static>>)>,
}

/// `[acme] challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737: a special certificate on the https listeners (ALPN `acme-tls/1`).
    TlsAlpn01,
    /// RFC 8555 §8.3: a token under `/.well-known/acme-challenge/` on the plain listeners.
    Http01,
}

/// One `[tls] ticket_keys` file: 80 random bytes.
#[derive(Clone)]
pub struct TicketKey {
    /// The file, resolved against the config directory.
    pub path: PathBuf,
    material: Box<[u8; TicketKey::LEN]>,
}

impl TicketKey {
    /// The size of a key file, as nginx and HAProxy use it.
    pub const LEN: usize = 80;

    /// A key read from `path`.
    pub fn new(path: PathBuf, material: [u8; TicketKey::LEN]) -> Self {
        TicketKey {
            path,
            material: Box::new(material),
        }
    }

    /// The key's bytes.
    pub fn material(&self) -> &[u8; TicketKey::LEN] {
        &self.material
    }
}

// By hand, so that printing a configuration never prints key material.
impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One site: a `sites/NAME.toml` file.
#[derive(Debug, Clone)]
pub struct Site {
    /// The file stem; the `site` metric label.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Host names, lower-cased, without port.
    pub hosts: Vec<String>,
    /// The site's certificate and key, loaded and checked to match; for an
    /// ACME site, the certificate obtained so far, if any.
    pub tls: Option<SiteTls>,
    /// `tls = { acme = true }`: the certificate is ordered from `[acme]`.
    pub acme: bool,
    /// Plain-HTTP requests get 308 to https.
    pub redirect_https: bool,
    /// What a reload does to open WebSocket sessions of a route or pool it
    /// removes. Default [`RemovedSessions::Keep`].
    pub removed_sessions: RemovedSessions,
    /// With [`RemovedSessions::Close`]: each session is closed at a random
    /// moment within this window after the reload. Default 30s.
    pub close_window: Duration,
    /// The bodies of statuses the proxy answers itself (`error_pages`).
    pub error_pages: ErrorPages,
    /// Upstream pools by name, in file order.
    pub pools: Vec<Pool>,
    /// Routes, in file order.
    pub routes: Vec<Route>,
}

/// `error_pages`: status code to page, each file read whole at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorPages(Vec<(u16, bytes::Bytes)>);

impl ErrorPages {
    /// These pages, each a status code (400 to 599) and its body.
    pub fn new(pages: Vec<(u16, bytes::Bytes)>) -> Self {
        ErrorPages(pages)
    }

    /// The page for `status`, if the site has one.
    pub fn get(&self, status: u16) -> Option<&bytes::Bytes> {
        self.0
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, page)| page)
    }
}

/// `removed_sessions`: the fate of open WebSocket sessions whose route or
/// pool a reload removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovedSessions {
    /// They stay open on their old route and backend (the default).
    Keep,
    /// They are closed with 1001, spread over `close_window`.
    Close,
}

/// A site's certificate chain and private key.
#[derive(Debug, Clone)]
pub struct SiteTls {
    /// Path of the PEM certificate chain.
    pub cert_path: PathBuf,
    /// Path of the PEM private key.
    pub key_path: PathBuf,
    /// The loaded chain and signing key, ready for rustls.
    pub certified_key: Arc<rustls::sign::CertifiedKey>,
    /// The leaf certificate's notAfter, as Unix time.
    pub not_after: Option<i64>,
}

/// `[pools.NAME]`: a set of upstream servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The pool name; the `pool` metric label.
    pub name: String,
    /// Server addresses as written, `host:port` or `unix:PATH`; the
    /// `server` metric label.
    pub servers: Vec<String>,
    /// The socket path of each `unix:` server, by its written address,
    /// resolved against the site file's directory.
    pub sockets: BTreeMap<String, PathBuf>,
    /// Requests at once per server; `None` is unlimited.
    pub max_in_flight: Option<usize>,
    /// Longest wait in the proxy's queue before 503. Default 5s.
    pub queue_timeout: Duration,
    /// Queue length at most; `None` is unbounded.
    pub max_queue: Option<usize>,
    /// Request body size at most (413 beyond). Default 100 MiB.
    pub max_body: u64,
    /// Read request and response bodies whole at the proxy (to memory, then
    /// a temporary file) so slow clients never hold a server's slot. Default true.
    pub buffering: bool,
    /// Active health checking.
    pub health: Option<Health>,
}

/// `health = { path, interval, timeout, rise, fall }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Path requested with GET; any 2xx/3xx is healthy.
    pub path: String,
    /// Time between checks. Default 5s.
    pub interval: Duration,
    /// Time a check may take. Default 2s.
    pub timeout: Duration,
    /// Consecutive successes to mark a server up. Default 2.
    pub rise: u32,
    /// Consecutive failures to mark a server down. Default 3.
    pub fall: u32,
}

/// `[[routes]]`: a path prefix and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The `route` metric label; defaults to the path.
    pub name: String,
    /// Path prefix; the longest match wins.
    pub path: String,
    /// Index into [`Site::pools`] for plain requests.
    pub pool: Option<usize>,
    /// Index into [`Site::pools`] for WebSocket upgrades.
    pub websocket: Option<usize>,
    /// Close a silent WebSocket with 1001 after this.
    pub idle_timeout: Option<Duration>,
    /// The proxy pings the client this often.
    pub ping_interval: Option<Duration>,
    /// A larger WebSocket message closes with 1009.
    pub max_message_bytes: Option<u64>,
    /// Overrides `timeouts.upstream_response` for this route's requests
    /// and WebSocket handshakes.
    pub upstream_response: Option<Duration>,
    /// Files served from a directory (`files`, `index`, `cache_control`,
    /// `internal`).
    pub files: Option<Files>,
    /// Compress textual responses (`compress`).
    pub compress: bool,
}

/// A route's `files`: a directory served at the route's path prefix
/// (nginx `alias`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The directory, resolved against the site file's directory.
    pub dir: PathBuf,
    /// File served for a path ending in `/`.
    pub index: Option<String>,
    /// `Cache-Control` sent with every file.
    pub cache_control: Option<String>,
    /// Clients get 404; only `X-Accel-Redirect` from a pool reaches it.
    pub internal: bool,
}

/// One configuration problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", file.display())]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong, naming the field.
    pub message: String,
}

/// Every problem found in a configuration directory.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);
