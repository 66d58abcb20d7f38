//! Pool: the upstream servers of one `[pools.NAME]`, how many requests each
//! may carry at once, and the FIFO queue where the rest wait.
//!
//! A request asks `Pool::acquire` for a [`Lease`] on one server. If a
//! server has room, the least-loaded one is leased at once (ties broken
//! round-robin). If every server is at `max_in_flight`, the request waits in
//! the pool's queue; a lease that is dropped hands its slot straight to the
//! first waiter, so no one polls. Dropping a waiting request takes it out of
//! the queue.
//!
//! This is admission only. The servers themselves (address, health, idle
//! connections, the client that talks to them) are `crate::upstream`'s,
//! which this module builds on and which knows nothing of pools.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::config;
use crate::metrics::{Metrics, PoolMetrics};
use crate::upstream::{Failure, Fault, Server};

/// Why a pool could not lease a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Waited `queue_timeout` without a free slot.
    #[error("waited in the queue longer than queue_timeout")]
    QueueTimeout,
    /// The queue already holds `max_queue` requests.
    #[error("the queue is full (max_queue)")]
    QueueFull,
    /// Every server is down.
    #[error("no healthy server in the pool")]
    NoHealthyServer,
}

impl Failure for PoolError {
    /// The pool's servers: too few, too busy or down.
    fn fault(&self) -> Fault {
        Fault::Upstream
    }

    /// Never: the pool has weighed every server already.
    fn retry_safe(&self) -> bool {
        false
    }
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Lease>,
}

#[derive(Default)]
struct Queue {
    waiters: VecDeque<Waiter>,
    next_id: u64,
}

/// What a pool is configured with; swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Members {
    /// Settings as configured.
    pub(crate) settings: config::Pool,
    /// The servers, shared with earlier generations where they survived.
    pub(crate) servers: Vec<Arc<Server>>,
}

/// One `[pools.NAME]` of a site, with its queue.
///
/// The same `Pool` lives on across reloads that keep its name, so requests
/// queued before a reload are served by slots freed after it.
pub struct Pool {
    /// The site's name.
    pub(crate) site: Arc<str>,
    /// The pool's name.
    pub(crate) name: Arc<str>,
    members: ArcSwap<Members>,
    queue: Mutex<Queue>,
    /// The queue's length, as of the last change under its lock: lets a
    /// pool without `max_in_flight` (which never queues) skip the lock,
    /// which workers on every core would otherwise take per request.
    queued: AtomicUsize,
    rr: AtomicUsize,
    metrics: PoolMetrics,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("site", &self.site)
            .field("name", &self.name)
            .field("members", &self.members.load())
            .finish()
    }
}

impl Pool {
    /// A pool over these servers (which may be shared with an earlier generation).
    pub(crate) fn new(
        site: &str,
        settings: config::Pool,
        servers: Vec<Arc<Server>>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        Arc::new(Pool {
            site: site.into(),
            name: settings.name.as_str().into(),
            metrics: PoolMetrics::new(metrics, site, &settings.name),
            members: ArcSwap::from_pointee(Members { settings, servers }),
            queue: Mutex::new(Queue::default()),
            queued: AtomicUsize::new(0),
            rr: AtomicUsize::new(0),
        })
    }

    /// Replaces settings and servers (on reload), then lets waiters take
    /// any room the change made.
    pub(crate) fn update(self: &Arc<Self>, settings: config::Pool, servers: Vec<Arc<Server>>) {
        self.members.store(Arc::new(Members { settings, servers }));
        self.dispatch();
    }

    /// The current settings and servers.
    pub(crate) fn members(&self) -> arc_swap::Guard<Arc<Members>> {
        self.members.load()
    }

    /// What a request's hand-over needs to know now: whether bodies are
    /// buffered, the largest request body, and whether a retry has
    /// another server to go to.
    pub(crate) fn hand_over_settings(&self) -> (bool, u64, bool) {
        let m = self.members.load();
        (
            m.settings.buffering,
            m.settings.max_body,
            m.servers.len() > 1,
        )
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a push or pop), so poisoning is ignored.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Least in-flight among available servers with room, ties round-robin.
    /// `exclude` skips one server (the one a retry just failed on).
    fn pick(&self, members: &Members, exclude: Option<&Arc<Server>>) -> Pick {
        let servers = &members.servers;
        let n = servers.len();
        // One server needs no rotation (and no shared write per request).
        let start = if n > 1 {
            self.rr.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let limit = members.settings.max_in_flight.unwrap_or(usize::MAX);
        let mut best: Option<&Arc<Server>> = None;
        let mut any_available = false;
        for i in 0..n {
            let s = &servers[(start + i) % n];
            if exclude.is_some_and(|e| Arc::ptr_eq(e, s)) || !s.is_available() {
                continue;
            }
            any_available = true;
            let load = s.in_flight();
            if load < limit && best.is_none_or(|b| load < b.in_flight()) {
                best = Some(s);
            }
        }
        match best {
            Some(s) => Pick::Server(s.clone()),
            None if any_available => Pick::Full,
            None => Pick::NoneAvailable,
        }
    }

    /// Leases a server, waiting in the queue up to `queue_timeout` when all are full.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        exclude: Option<&Arc<Server>>,
    ) -> Result<Lease, PoolError> {
        {
            // No limit and nobody waiting: nothing to be fair to, no lock.
            // (A reload that set a limit meanwhile makes it Full: queue below.)
            let members = self.members.load();
            if self.unqueued(&members)
                && let Some(now) = self.lease_now(&members, exclude)
            {
                return now;
            }
        }
        let (id, rx, queue_timeout) = {
            let mut q = self.lock();
            // Read under the lock, so a reload's dispatch cannot slip between.
            let members = self.members.load();
            // Someone already waiting goes first: no overtaking the queue.
            if q.waiters.is_empty()
                && let Some(now) = self.lease_now(&members, exclude)
            {
                return now;
            }
            if members
                .settings
                .max_queue
                .is_some_and(|max| q.waiters.len() >= max)
            {
                self.metrics.rejected_queue_full.increment(1);
                return Err(PoolError::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = q.next_id;
            q.next_id += 1;
            q.waiters.push_back(Waiter { id, tx });
            self.queue_changed(&q);
            (id, rx, members.settings.queue_timeout)
        };
        let started = Instant::now();
        let mut guard = QueuedGuard {
            pool: self,
            id,
            active: true,
        };
        let result = tokio::time::timeout(queue_timeout, rx).await;
        guard.active = false;
        drop(guard);
        let now = Instant::now();
        self.metrics
            .queue_wait
            .record(now.saturating_duration_since(started).as_secs_f64());
        match result {
            Ok(Ok(mut lease)) => {
                lease.granted = Some(now);
                Ok(lease)
            }
            // The sender was dropped without a lease: only when the pool is
            // torn down; treat as no server.
            Ok(Err(_)) => Err(PoolError::NoHealthyServer),
            Err(_) => {
                self.remove_waiter(id);
                self.metrics.rejected_queue_timeout.increment(1);
                Err(PoolError::QueueTimeout)
            }
        }
    }

    fn remove_waiter(&self, id: u64) {
        let mut q = self.lock();
        if let Some(pos) = q.waiters.iter().position(|w| w.id == id) {
            q.waiters.remove(pos);
        }
        self.queue_changed(&q);
    }

    fn lease(self: &Arc<Self>, server: Arc<Server>) -> Lease {
        server.add_in_flight();
        Lease {
            pool: self.clone(),
            server: Some(server),
            granted: None,
        }
    }

    /// A slot on `server` was freed: hand it to the first live waiter.
    fn release(self: &Arc<Self>, server: Arc<Server>) {
        server.sub_in_flight();
        self.dispatch();
    }

    /// A lease or a refusal now, or `None` when every server is full.
    fn lease_now(
        self: &Arc<Self>,
        members: &Members,
        exclude: Option<&Arc<Server>>,
    ) -> Option<Result<Lease, PoolError>> {
        match self.pick(members, exclude) {
            Pick::Server(server) => Some(Ok(self.lease(server))),
            Pick::NoneAvailable => {
                self.metrics.rejected_no_healthy.increment(1);
                Some(Err(PoolError::NoHealthyServer))
            }
            Pick::Full => None,
        }
    }

    /// Whether the pool has no `max_in_flight` and no one waiting, so a
    /// lease needs no lock: such a pool never makes anyone wait.
    fn unqueued(&self, members: &Members) -> bool {
        members.settings.max_in_flight.is_none() && self.queued.load(Ordering::Acquire) == 0
    }

    /// Publishes the queue's new length (the lock is held).
    fn queue_changed(&self, q: &Queue) {
        self.queued.store(q.waiters.len(), Ordering::Release);
        self.metrics.queue_depth.set(q.waiters.len() as f64);
    }

    /// Hands free slots to waiters, first come first served.
    fn dispatch(self: &Arc<Self>) {
        let members = self.members.load();
        if self.unqueued(&members) {
            return;
        }
        let mut q = self.lock();
        while !q.waiters.is_empty() {
            let server = match self.pick(&members, None) {
                Pick::Server(s) => s,
                _ => break,
            };
            let Some(w) = q.waiters.pop_front() else {
                break;
            };
            self.queue_changed(&q);
            let lease = self.lease(server);
            match w.tx.send(lease) {
                Ok(()) => {}
                Err(mut lease) => {
                    // The waiter gave up between timing out and removing
                    // itself; undo without recursing into release.
                    if let Some(s) = lease.server.take() {
                        s.sub_in_flight();
                    }
                }
            }
        }
    }
}

enum Pick {
    Server(Arc<Server>),
    Full,
    NoneAvailable,
}

/// Removes a cancelled waiter from the queue when its request is dropped.
struct QueuedGuard<'a> {
    pool: &'a Arc<Pool>,
    id: u64,
    active: bool,
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if self.active {
            self.pool.remove_waiter(self.id);
        }
    }
}

/// The right to send one request to one server; the slot is freed on drop.
pub struct Lease {
    pool: Arc<Pool>,
    server: Option<Arc<Server>>,
    /// When a lease that waited in the queue was taken (`None`: it did not
    /// wait, so the caller's own clock reading stands for it).
    granted: Option<Instant>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("server", &self.server)
            .finish()
    }
}

impl Lease {
    /// The leased server.
    pub(crate) fn server(&self) -> Option<&Arc<Server>> {
        self.server.as_ref()
    }

    /// When the lease was taken, `asked` being when it was asked for: a
    /// lease that did not queue was taken then (no clock read).
    pub(crate) fn granted(&self, asked: Instant) -> Instant {
        self.granted.unwrap_or(asked)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.pool.release(server);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_errors_are_the_pools_servers_and_never_retried_elsewhere() {
        for e in [
            PoolError::QueueTimeout,
            PoolError::QueueFull,
            PoolError::NoHealthyServer,
        ] {
            assert_eq!(e.fault(), Fault::Upstream, "{e}");
            assert!(!e.retry_safe(), "{e}");
        }
    }

    fn settings(max_in_flight: Option<usize>) -> config::Pool {
        config::Pool {
            name: "web".into(),
            servers: vec!["127.0.0.1:9".into()],
            sockets: Default::default(),
            max_in_flight,
            queue_timeout: std::time::Duration::from_secs(5),
            max_queue: None,
            max_body: 1 << 20,
            buffering: false,
            health: None,
        }
    }

    #[tokio::test]
    async fn an_unlimited_pool_leases_without_queueing_and_a_reload_to_a_limit_queues_fifo() {
        let metrics = Metrics::new();
        let server = Server::new("127.0.0.1:9", None, &metrics, "s", "web").unwrap();
        let pool = Pool::new("s", settings(None), vec![server.clone()], &metrics);
        let mut leases = Vec::new();
        for _ in 0..3 {
            leases.push(pool.acquire(None).await.unwrap());
        }
        assert_eq!(server.in_flight(), 3);
        assert!(pool.unqueued(&pool.members()));

        // A limit below what is in flight: newcomers wait, in order.
        pool.update(settings(Some(2)), vec![server.clone()]);
        assert!(!pool.unqueued(&pool.members()));
        let (p1, p2) = (pool.clone(), pool.clone());
        let first = tokio::spawn(async move { p1.acquire(None).await.map(|_| 1) });
        // Waits (bounded) until `n` are in the queue.
        let queued = async |n: usize| {
            for _ in 0..1000 {
                if pool.queued.load(Ordering::Acquire) >= n {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(pool.queued.load(Ordering::Acquire), n);
        };
        let order = {
            // The first in the queue, then a second behind it.
            queued(1).await;
            let second = tokio::spawn(async move { p2.acquire(None).await.map(|_| 2) });
            queued(2).await;
            // Leases back: the waiters are served in the order they came.
            drop(leases.pop());
            drop(leases.pop());
            let a = first.await.unwrap().unwrap();
            drop(leases.pop());
            let b = second.await.unwrap().unwrap();
            vec![a, b]
        };
        assert_eq!(order, vec![1, 2]);
        assert_eq!(pool.queued.load(Ordering::Acquire), 0);
    }
}
