//! Server: starting a proxy from a configuration, reloading it, and draining
//! it — the lifecycle the binary and the tests drive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme;
use crate::admin;
use crate::config::Config;
use crate::listener::{self, Accepting, Kind};
use crate::metrics::{self, Metrics};
use crate::routing::BuildError;
use crate::state::{Generation, Shared};
use crate::workers::Workers;

/// Why the proxy could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr} ({kind}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        kind: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration could not be put into service.
    #[error(transparent)]
    Build(#[from] BuildError),
}

struct ListenerSlot {
    addr: SocketAddr,
    stop: CancellationToken,
}

/// A running proxy.
pub struct Server {
    shared: Arc<Shared>,
    accepting: Accepting,
    /// Listeners by (kind, configured address).
    listeners: Mutex<HashMap<(Kind, SocketAddr), ListenerSlot>>,
    admin_addr: Option<SocketAddr>,
    admin_stop: CancellationToken,
    /// Certificates of `tls = { acme = true }` sites.
    acme: acme::Manager,
}

/// Binds every https and http listener, by configured address.
async fn bind_all(config: &Config) -> Result<Vec<(SocketAddr, listener::Listener)>, ServerError> {
    let mut bound = Vec::new();
    for (kind, addrs) in [
        (Kind::Https, &config.listen.https),
        (Kind::Http, &config.listen.http),
    ] {
        for &addr in addrs.iter() {
            let l = listener::bind(addr, kind)
                .await
                .map_err(|source| ServerError::Bind {
                    addr,
                    kind: kind.scheme(),
                    source,
                })?;
            bound.push((addr, l));
        }
    }
    Ok(bound)
}

async fn bind_admin(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr,
            kind: "admin",
            source,
        })
}

/// Starts one listener's accept loop; returns its key and slot.
fn spawn_listener(
    configured: SocketAddr,
    l: listener::Listener,
    accepting: &Accepting,
) -> ((Kind, SocketAddr), ListenerSlot) {
    let stop = CancellationToken::new();
    let key = (l.kind, configured);
    let addr = l.addr;
    tracing::info!(listener = %format!("{}://{}", l.kind.scheme(), addr), "listening");
    tokio::spawn(listener::run(l, accepting.clone(), stop.clone()));
    (key, ListenerSlot { addr, stop })
}

/// Histograms buffer samples until upkeep folds them into buckets.
fn spawn_upkeep(metrics: Arc<Metrics>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => metrics.upkeep(),
                () = stop.cancelled() => return,
            }
        }
    });
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Server {
    /// Binds every listener and starts serving `config`, every connection
    /// on the calling runtime.
    pub async fn start(config: Config) -> Result<Arc<Self>, ServerError> {
        Self::start_on(config, None).await
    }

    /// As [`Self::start`], with connections spread over `workers` (the
    /// calling runtime is their worker 0).
    pub async fn start_on(
        mut config: Config,
        workers: Option<Arc<Workers>>,
    ) -> Result<Arc<Self>, ServerError> {
        let metrics = Metrics::for_workers(workers.as_ref().map_or(1, |w| w.count()));
        // Stored ACME certificates serve from the first handshake.
        let (acme, acme_issued) = acme::Manager::new(metrics.clone());
        acme.preload(&config);
        acme.fill(&mut config);
        let config = Arc::new(config);
        let generation = Generation::build(config.clone(), None, &metrics)?;
        acme.attach(generation.router.challenges.clone());
        let shared = Shared::new(generation, metrics.clone());
        publish_config(&metrics, &config);
        for result in ["success", "failure"] {
            metrics
                .counter(metrics::CONFIG_RELOADS_TOTAL, &[("result", result)])
                .absolute(0);
        }
        // Bind everything before serving anything: a bad address fails the start.
        let bound = bind_all(&config).await?;
        let admin_socket = match config.listen.admin {
            Some(addr) => Some(bind_admin(addr).await?),
            None => None,
        };
        let https_port = bound
            .iter()
            .find(|(_, l)| l.kind == Kind::Https)
            .map_or(443, |(_, l)| l.addr.port());
        let accepting = Accepting {
            shared: shared.clone(),
            limit: Arc::new(Semaphore::new(config.limits.max_connections)),
            stop: CancellationToken::new(),
            connections: TaskTracker::new(),
            https_port,
            workers,
        };
        let mut listeners = HashMap::new();
        for (configured, l) in bound {
            let (key, slot) = spawn_listener(configured, l, &accepting);
            listeners.insert(key, slot);
        }
        let admin_stop = CancellationToken::new();
        let admin_addr = admin_socket.and_then(|s| {
            let addr = s.local_addr().ok();
            if let Some(a) = addr {
                tracing::info!(admin = %a, "admin listening");
            }
            tokio::spawn(admin::run(s, shared.clone(), admin_stop.clone()));
            addr
        });
        spawn_upkeep(metrics.clone(), admin_stop.clone());
        tokio::spawn(crate::memory::trim_after_bursts(admin_stop.clone()));
        let server = Arc::new(Server {
            shared,
            accepting,
            listeners: Mutex::new(listeners),
            admin_addr,
            admin_stop,
            acme,
        });
        spawn_acme_installer(&server, acme_issued);
        server.acme.sync(&config);
        Ok(server)
    }

    /// Bound addresses of the https listeners.
    pub async fn https_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(Kind::Https).await
    }

    /// Bound addresses of the http listeners.
    pub async fn http_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(Kind::Http).await
    }

    async fn addrs(&self, kind: Kind) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .listeners
            .lock()
            .await
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, s)| s.addr)
            .collect();
        v.sort();
        v
    }

    /// Bound address of the admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The shared state (for tests and the admin listener).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Swaps in a new configuration: new connections and requests use it;
    /// requests and sessions already running keep the one they started on.
    /// Listeners whose address changed are bound or released; the rest are
    /// untouched.
    pub async fn reload(&self, config: Config) -> Result<(), ServerError> {
        let result = self.try_reload(config).await;
        let label = if result.is_ok() { "success" } else { "failure" };
        self.shared
            .metrics
            .counter(metrics::CONFIG_RELOADS_TOTAL, &[("result", label)])
            .increment(1);
        result
    }

    async fn try_reload(&self, mut config: Config) -> Result<(), ServerError> {
        // One reload at a time; new addresses are bound before anything
        // else changes, so a bind failure leaves the old configuration whole.
        let mut listeners = self.listeners.lock().await;
        // Under the lock, so a certificate swapped in meanwhile is kept.
        self.acme.fill(&mut config);
        let config = Arc::new(config);
        let wanted: Vec<(Kind, SocketAddr)> = config
            .listen
            .https
            .iter()
            .map(|a| (Kind::Https, *a))
            .chain(config.listen.http.iter().map(|a| (Kind::Http, *a)))
            .collect();
        let mut new_listeners = Vec::new();
        for key in &wanted {
            if !listeners.contains_key(key) {
                let l = listener::bind(key.1, key.0)
                    .await
                    .map_err(|source| ServerError::Bind {
                        addr: key.1,
                        kind: key.0.scheme(),
                        source,
                    })?;
                new_listeners.push((*key, l));
            }
        }
        let previous = self.shared.generation();
        let generation = Generation::build(config.clone(), Some(&previous), &self.shared.metrics)?;
        self.shared.replace_generation(generation);
        publish_config(&self.shared.metrics, &config);
        self.shared.retire_sessions(&config, &previous.config);
        self.acme.sync(&config);
        listeners.retain(|key, slot| {
            let keep = wanted.contains(key);
            if !keep {
                tracing::info!(listener = %format!("{}://{}", key.0.scheme(), slot.addr), "listener released by reload");
                slot.stop.cancel();
            }
            keep
        });
        for ((_, configured), l) in new_listeners {
            let (key, slot) = spawn_listener(configured, l, &self.accepting);
            listeners.insert(key, slot);
        }
        Ok(())
    }

    /// Drains: `/readyz` turns 503, listeners stop accepting, in-flight
    /// requests finish, and WebSockets still open when `drain` runs out are
    /// closed with 1001. Returns when everything has ended.
    pub async fn shutdown(&self) {
        self.shared.set_draining();
        self.acme.stop();
        self.accepting.stop.cancel();
        let drain = self.shared.generation().config.timeouts.drain;
        self.accepting.connections.close();
        self.shared.sessions.close();
        let all_done = async {
            self.accepting.connections.wait().await;
            self.shared.sessions.wait().await;
        };
        if tokio::time::timeout(drain, all_done).await.is_err() {
            tracing::info!("drain timeout reached; closing WebSockets with 1001");
            self.shared.close_websockets.cancel();
            // Sessions close within their own bounded close handshake.
            let _ =
                tokio::time::timeout(Duration::from_secs(10), self.shared.sessions.wait()).await;
        }
        self.admin_stop.cancel();
    }
}

impl Server {
    /// Swaps in the configuration as it is with `site`'s new ACME
    /// certificate: a generation built as a reload builds it, so open
    /// connections and sessions keep theirs and new handshakes get the new
    /// certificate.
    async fn install_acme_certificate(&self, site: &str) {
        let _one_at_a_time = self.listeners.lock().await;
        let previous = self.shared.generation();
        let mut config = (*previous.config).clone();
        self.acme.fill(&mut config);
        match Generation::build(Arc::new(config), Some(&previous), &self.shared.metrics) {
            Ok(generation) => {
                self.shared.replace_generation(generation);
                tracing::info!(site, "ACME: new certificate in service");
            }
            Err(e) => {
                tracing::error!(site, error = %e, "ACME: cannot put the new certificate into service");
            }
        }
    }
}

/// Puts each certificate the ACME tasks announce into service, for as
/// long as the server lives.
fn spawn_acme_installer(
    server: &Arc<Server>,
    mut issued: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let server = Arc::downgrade(server);
    tokio::spawn(async move {
        while let Some(site) = issued.recv().await {
            let Some(server) = server.upgrade() else {
                return;
            };
            server.install_acme_certificate(&site).await;
        }
    });
}

fn publish_config(metrics: &Metrics, config: &Config) {
    metrics
        .gauge(metrics::CONFIG_LOADED_TIMESTAMP, &[])
        .set(unix_now());
    // 52 bits fit a float exactly.
    metrics
        .gauge(metrics::CONFIG_HASH, &[])
        .set((config.hash & ((1 << 52) - 1)) as f64);
    // A site a reload removes keeps its last value, like every per-site
    // series: the exporter has no way to drop one.
    for site in &config.sites {
        if let Some(not_after) = site.tls.as_ref().and_then(|t| t.not_after) {
            metrics
                .gauge(metrics::TLS_CERT_EXPIRY, &[("site", &site.name)])
                .set(not_after as f64);
        }
    }
}
