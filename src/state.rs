//! State: what every connection and request reads — the live configuration
//! generation (swapped atomically on reload), metrics, and the drain flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::{BuildError, Router};
use crate::upstream::Upstream;

/// One configuration, resolved: routing table, pools and upstream client.
/// Requests hold an `Arc` to the generation they started on.
pub struct Generation {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Host and path routing.
    pub router: Router,
    /// The upstream HTTP client.
    pub upstream: Upstream,
}

impl Generation {
    /// Resolves a configuration, carrying server state and the upstream
    /// client's pooled connections over from `previous`.
    pub fn build(
        config: Arc<Config>,
        previous: Option<&Generation>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        let router = Router::build(&config, previous.map(|p| &p.router), metrics)?;
        let t = config.timeouts;
        let upstream = match previous {
            Some(p)
                if p.upstream
                    .has_timeouts(t.upstream_connect, t.upstream_response) =>
            {
                p.upstream.clone()
            }
            _ => Upstream::new(t.upstream_connect, t.upstream_response),
        };
        Ok(Generation {
            config,
            router,
            upstream,
        })
    }
}

/// Process-wide shared state.
pub struct Shared {
    /// The live generation.
    pub generation: ArcSwap<Generation>,
    /// The metric registry.
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Cancelled when the drain deadline passes: open WebSockets close with 1001.
    pub close_websockets: CancellationToken,
    /// Every WebSocket session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

impl Shared {
    /// State serving `generation`.
    pub fn new(generation: Generation, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Shared {
            generation: ArcSwap::from_pointee(generation),
            metrics,
            draining: AtomicBool::new(false),
            close_websockets: CancellationToken::new(),
            sessions: TaskTracker::new(),
        })
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks shutdown as begun (`/readyz` turns 503).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
