//! Server: one member of a pool — its address, whether it may take
//! requests (passive backoff after failures, active health checks), how many
//! it carries now, and its idle keep-alive connections.
//!
//! A `Server` is shared across configuration generations, so its in-flight
//! count, health and connections survive a reload that keeps it. Which
//! server a request gets, and when, is admission, the pool's business: this
//! is only what the pool chooses among.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::connect::Address;
use super::keepalive::Connections;
use crate::config;
use crate::metrics::{Metrics, ServerMetrics};

/// One upstream server and its live accounting.
pub struct Server {
    /// The address as configured; the `server` metric and log label.
    pub(crate) addr: Arc<str>,
    /// The address, parsed: what [`super::connect`] connects to.
    pub(crate) address: Address,
    in_flight: AtomicUsize,
    up: AtomicBool,
    /// Passive health: consecutive connect failures.
    failures: AtomicUsize,
    /// Passive health: not before this (ms since `epoch`) after failures.
    down_until_ms: AtomicU64,
    epoch: Instant,
    metrics: ServerMetrics,
    /// Active health settings, replaced on reload (see `health.rs`).
    /// Active health checks: the pool's settings, and the connect timeout
    /// (`timeouts.upstream_connect`) every upstream connection uses.
    pub(super) health: Mutex<Option<(config::Health, Duration)>>,
    /// Whether the active checker task runs.
    pub(super) checker_running: AtomicBool,
    /// Keep-alive connections to this server. Shared with its sweeper task
    /// and with response bodies that will give a connection back.
    pub(super) connections: Arc<Connections>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// A server with no requests in flight, considered up. `socket` is a
    /// `unix:` server's path as resolved at load.
    pub(crate) fn new(
        addr: &str,
        socket: Option<&Path>,
        metrics: &Metrics,
        site: &str,
        pool: &str,
    ) -> Result<Arc<Self>, http::uri::InvalidUri> {
        let address = Address::parse(addr, socket)?;
        let m = ServerMetrics::new(metrics, site, pool, addr);
        m.up.set(1.0);
        Ok(Arc::new(Server {
            addr: addr.into(),
            address,
            in_flight: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            failures: AtomicUsize::new(0),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics: m,
            health: Mutex::new(None),
            checker_running: AtomicBool::new(false),
            connections: Default::default(),
        }))
    }

    /// Whether this server is the one configured as `addr` (resolved to
    /// `socket`), so a reload may keep it.
    pub(crate) fn is(&self, addr: &str, socket: Option<&Path>) -> bool {
        *self.addr == *addr
            && match &self.address {
                Address::Unix(path) => socket.is_none_or(|s| s == path),
                Address::Tcp(_) => true,
            }
    }

    /// Whether active checks consider the server up.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Sets the active health state.
    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.refresh_up_gauge();
    }

    /// Requests in flight right now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the server may receive new requests.
    pub(crate) fn is_available(&self) -> bool {
        if !self.up.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records a connect failure or reset: the server is skipped for a
    /// backoff that doubles with each consecutive failure (1s up to 30s).
    pub(crate) fn report_failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(5);
        let backoff = 1000u64 << n;
        self.down_until_ms
            .store(self.now_ms() + backoff.min(30_000), Ordering::Relaxed);
        self.metrics.up.set(0.0);
    }

    /// Records a good exchange: clears any passive backoff.
    pub(crate) fn report_success(&self) {
        // Read first: a write per request would move this cache line
        // between the cores of every worker using the server.
        if self.failures.load(Ordering::Relaxed) != 0
            && self.failures.swap(0, Ordering::Relaxed) != 0
        {
            self.down_until_ms.store(0, Ordering::Relaxed);
            self.refresh_up_gauge();
        }
    }

    fn refresh_up_gauge(&self) {
        let up = self.up.load(Ordering::Relaxed) && self.failures.load(Ordering::Relaxed) == 0;
        self.metrics.up.set(if up { 1.0 } else { 0.0 });
    }

    /// Counts a request leased to this server (the pool's lease).
    pub(crate) fn add_in_flight(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.increment(1.0);
    }

    /// Counts a lease on this server given back.
    pub(crate) fn sub_in_flight(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.decrement(1.0);
    }
}
