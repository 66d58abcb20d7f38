//! State: what every connection and request reads — the live configuration
//! generation (swapped atomically on reload), metrics, and the drain flag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, RemovedSessions};
use crate::metrics::Metrics;
use crate::routing::{BuildError, Route, Router};
use crate::upstream::Upstream;

/// One configuration, resolved: routing table, pools and upstream client.
/// Requests hold an `Arc` to the generation they started on.
pub(crate) struct Generation {
    /// The validated configuration.
    pub(crate) config: Arc<Config>,
    /// Host and path routing.
    pub(crate) router: Router,
    /// The upstream HTTP client.
    pub(crate) upstream: Upstream,
}

impl Generation {
    /// Resolves a configuration, carrying server state and the upstream
    /// client's pooled connections over from `previous`.
    pub(crate) fn build(
        config: Arc<Config>,
        previous: Option<&Generation>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        let router = Router::build(&config, previous.map(|p| &p.router), metrics)?;
        let t = config.timeouts;
        let upstream = match previous {
            Some(p) if p.upstream.has_connect_timeout(t.upstream_connect) => p.upstream.clone(),
            _ => Upstream::new(t.upstream_connect),
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
    /// The live generation: private, so every replacement goes through
    /// [`Shared::replace_generation`] and bumps `epoch`.
    generation: ArcSwap<Generation>,
    /// Bumped after each replacement of `generation`, for [`Shared::pin`].
    epoch: AtomicU64,
    /// The metric registry.
    pub(crate) metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Cancelled when the drain deadline passes: open WebSockets close with 1001.
    pub close_websockets: CancellationToken,
    /// Every WebSocket session task, so shutdown can wait for them.
    pub(crate) sessions: TaskTracker,
    /// Open WebSocket sessions by (site, route, pool), so a reload that
    /// removes a route or pool can close them.
    groups: Mutex<HashMap<GroupKey, (Arc<Group>, usize)>>,
}

/// What a request reads through: the process state and the generation
/// it started on (see [`Shared::pin`]).
pub struct Pinned {
    /// The process state.
    pub(crate) shared: Arc<Shared>,
    /// The generation live when this was made.
    pub(crate) generation: Arc<Generation>,
    /// `Shared::epoch` when this was made.
    epoch: u64,
}

thread_local! {
    /// The `Pinned` this thread's running requests share, if any.
    static PINNED: std::cell::RefCell<std::sync::Weak<Pinned>> =
        const { std::cell::RefCell::new(std::sync::Weak::new()) };
}

/// The sessions of one route relaying to one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    site: Arc<str>,
    route: Arc<str>,
    pool: Arc<str>,
}

#[derive(Debug)]
struct Group {
    /// Which route and pool these sessions relay between.
    key: GroupKey,
    /// Cancelled when a reload removed this route or pool and its site says
    /// `removed_sessions = "close"`; a child of `Shared::close_websockets`,
    /// so also cancelled when the drain deadline passes. One per group, not
    /// one per session: a token per session was a heap node (and an entry
    /// in the parent's list of children) in every idle session.
    retire: CancellationToken,
    /// The site's `close_window`, in ms, set before `retire` is cancelled.
    window_ms: AtomicU64,
}

/// One open WebSocket session's registration: its relay is told to close
/// when the proxy drains past its deadline, or a random moment within
/// `close_window` after a reload retired its route or pool.
pub(crate) struct SessionTicket {
    shared: Arc<Shared>,
    group: Arc<Group>,
}

impl crate::websocket::relay::Shutdown for SessionTicket {
    // Not an `async fn`, which would hold `self` twice in every session.
    #[allow(clippy::manual_async_fn)]
    fn requested(&self) -> impl Future<Output = ()> + Send {
        async move {
            // An idle session waits here, on its group's signal alone; the
            // staggered delay's timer is made (boxed) once a reload retires
            // the route, so it is not laid out in every session's task.
            self.group.retire.cancelled().await;
            let drain = &self.shared.close_websockets;
            if drain.is_cancelled() {
                return;
            }
            let window = self.group.window_ms.load(Ordering::Relaxed);
            let delay = if window == 0 {
                0
            } else {
                crate::random::u64() % window
            };
            let stagger = Box::pin(tokio::time::sleep(Duration::from_millis(delay)));
            // The drain deadline may pass during the stagger: close at once.
            let drained = Box::pin(drain.cancelled());
            tokio::select! {
                () = stagger => {}
                () = drained => return,
            }
            let key = &self.group.key;
            tracing::info!(
                site = %key.site,
                route = %key.route,
                pool = %key.pool,
                "closing a WebSocket session whose route or pool a reload removed"
            );
        }
    }

    fn draining(&self) -> bool {
        self.shared.close_websockets.is_cancelled()
    }
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        let mut groups = self
            .shared
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((group, open)) = groups.get_mut(&self.group.key)
            && Arc::ptr_eq(group, &self.group)
        {
            *open -= 1;
            if *open == 0 {
                groups.remove(&self.group.key);
            }
        }
    }
}

/// Whether `config` still has `key`'s route, relaying WebSockets to the same pool.
fn still_configured(config: &Config, key: &GroupKey) -> bool {
    let Some(site) = config.sites.iter().find(|s| *s.name == *key.site) else {
        return false;
    };
    site.routes.iter().any(|r| {
        *r.name == *key.route
            && r.websocket
                .and_then(|i| site.pools.get(i))
                .is_some_and(|p| *p.name == *key.pool)
    })
}

impl Shared {
    /// State serving `generation`.
    pub(crate) fn new(generation: Generation, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Shared {
            generation: ArcSwap::from_pointee(generation),
            epoch: AtomicU64::new(0),
            metrics,
            draining: AtomicBool::new(false),
            close_websockets: CancellationToken::new(),
            sessions: TaskTracker::new(),
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// The live generation.
    pub(crate) fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Puts `generation` into service: requests that start from now on see it.
    pub(crate) fn replace_generation(&self, generation: Generation) {
        self.generation.store(Arc::new(generation));
        // After the store: a request that sees the new epoch loads the new
        // generation.
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// The state and the live generation, for one request.
    ///
    /// Every request on a worker shares one [`Pinned`] while any of them
    /// runs, so a request writes the reference counts of that worker's
    /// `Pinned` only, not those of `Shared` and the generation, which both
    /// workers would otherwise write on every request (a cache line moved
    /// between the cores each time). The worker keeps only a weak
    /// reference: once its last request ends, the generation it pinned is
    /// released, as it was when each request held its own.
    pub fn pin(self: &Arc<Self>) -> Arc<Pinned> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let fresh = || {
            Arc::new(Pinned {
                shared: self.clone(),
                generation: self.generation(),
                epoch,
            })
        };
        // Neither a thread being torn down nor a re-entrant call can share
        // the cache; they get a pin of their own (never a panic).
        PINNED
            .try_with(|cell| {
                let Ok(mut cached) = cell.try_borrow_mut() else {
                    return fresh();
                };
                if let Some(p) = cached.upgrade()
                    && p.epoch == epoch
                    && Arc::ptr_eq(&p.shared, self)
                {
                    return p;
                }
                let p = fresh();
                *cached = Arc::downgrade(&p);
                p
            })
            .unwrap_or_else(|_| fresh())
    }

    /// Registers a WebSocket session opened on `route` (which must have a
    /// `websocket` pool; sessions without one are only closed by the drain).
    pub(crate) fn session_ticket(self: &Arc<Self>, route: &Route) -> SessionTicket {
        let key = GroupKey {
            site: route.site.clone(),
            route: route.name.clone(),
            pool: route
                .websocket
                .as_ref()
                .map_or_else(|| Arc::from(""), |p| p.name.clone()),
        };
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let (group, open) = groups.entry(key.clone()).or_insert_with(|| {
            let group = Group {
                key,
                retire: self.close_websockets.child_token(),
                window_ms: AtomicU64::new(0),
            };
            (Arc::new(group), 0)
        });
        *open += 1;
        let group = group.clone();
        drop(groups);
        SessionTicket {
            shared: self.clone(),
            group,
        }
    }

    /// After a reload from `previous` to `config`: the open sessions of
    /// every route or pool that `config` no longer has are closed, spread
    /// over `close_window`, if their site says `removed_sessions = "close"`
    /// (the new file's setting, or the old one's for a removed site).
    /// Returns how many sessions were scheduled to close.
    pub(crate) fn retire_sessions(&self, config: &Config, previous: &Config) -> usize {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let mut closing = 0;
        groups.retain(|key, (group, open)| {
            if still_configured(config, key) {
                return true;
            }
            let site = config
                .sites
                .iter()
                .chain(&previous.sites)
                .find(|s| *s.name == *key.site);
            let Some(site) = site.filter(|s| s.removed_sessions == RemovedSessions::Close) else {
                return true;
            };
            let window = u64::try_from(site.close_window.as_millis()).unwrap_or(u64::MAX);
            tracing::info!(
                site = %key.site,
                route = %key.route,
                pool = %key.pool,
                sessions = *open,
                window = ?site.close_window,
                "reload removed this route or pool; closing its WebSocket sessions with 1001"
            );
            group.window_ms.store(window, Ordering::Relaxed);
            group.retire.cancel();
            closing += *open;
            false
        });
        closing
    }

    /// Open WebSocket sessions the proxy knows of.
    pub fn open_sessions(&self) -> usize {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|(_, open)| open)
            .sum()
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks shutdown as begun (`/readyz` turns 503).
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "hosts = [\"w.test\"]\n[pools.web]\nservers = [\"127.0.0.1:9\"]\n\
                        [[routes]]\npath = \"/\"\npool = \"web\"\n";

    fn generation(metrics: &Arc<Metrics>) -> Generation {
        let dir = std::env::temp_dir();
        let config = crate::config::load_str(&dir, "", &[("w", SITE)]).unwrap();
        Generation::build(Arc::new(config), None, metrics).unwrap()
    }

    #[tokio::test]
    async fn requests_share_one_pin_until_a_reload_and_release_the_generation_after() {
        let metrics = Metrics::new();
        let shared = Shared::new(generation(&metrics), metrics.clone());
        let (a, b) = (shared.pin(), shared.pin());
        assert!(Arc::ptr_eq(&a, &b), "concurrent requests share one pin");
        let old = Arc::downgrade(&a.generation);
        shared.replace_generation(generation(&metrics));
        let c = shared.pin();
        assert!(
            !Arc::ptr_eq(&c.generation, &a.generation),
            "a request after a reload sees the new generation"
        );
        drop((a, b));
        assert!(
            old.upgrade().is_none(),
            "the old generation outlived its requests"
        );
        // Nothing pins the live generation once no request runs.
        let live = Arc::downgrade(&c.generation);
        drop(c);
        assert_eq!(live.strong_count(), 1, "only the live slot holds it");
        // Another proxy on the same thread gets its own.
        let other = Shared::new(generation(&metrics), metrics.clone());
        let (d, e) = (shared.pin(), other.pin());
        assert!(Arc::ptr_eq(&d.shared, &shared) && Arc::ptr_eq(&e.shared, &other));
    }
}
