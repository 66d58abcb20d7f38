//! Workers: one single-threaded runtime per core, each serving its own
//! connections start to finish (shared-nothing, as nginx's worker
//! processes and HAProxy's threads).
//!
//! tokio's work-stealing runtime moves tasks between threads: a response
//! read by one thread wakes a task another thread runs, and every wake-up,
//! timer and socket registration crosses cores. Here a connection, its
//! requests, its WebSocket session, its timers and the upstream keep-alive
//! connections it uses all stay on the worker that took it, and the hot
//! path's metrics accumulate per worker, folded at scrape time. What must
//! be global stays global and shared by reference: a pool's admission and
//! FIFO queue, health, the configuration generation, drain.
//!
//! Worker 0 is the runtime that starts the proxy (it also runs the accept
//! loops, the admin listener and signal handling); [`Workers::start`] adds
//! the others, each on a thread of its own. Accepted connections go to the
//! worker with the fewest open ones ([`Workers::spawn`]).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker index (0 outside any added worker).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The most workers any [`Workers`] of this process has had: per-worker
/// state (upstream keep-alive stacks) is sized by it.
static MOST: AtomicUsize = AtomicUsize::new(1);

/// The index of the worker running the caller.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many per-worker slots per-worker state should have.
pub fn slots() -> usize {
    MOST.load(Ordering::Relaxed)
}

/// One added worker: its runtime's handle, and what ends its thread.
struct Worker {
    handle: Handle,
    /// Dropped (with [`Workers`]) to end the worker's thread.
    _stop: oneshot::Sender<()>,
}

/// The process's workers (see the module).
pub struct Workers {
    /// Workers 1.. (worker 0 is the starting runtime).
    added: Vec<Worker>,
    /// Open connections per worker, 0 first.
    open: Box<[Count]>,
}

/// A worker's count, alone on its cache lines (each worker updates its own).
#[derive(Default)]
#[repr(align(128))]
struct Count(AtomicUsize);

impl std::ops::Deref for Count {
    type Target = AtomicUsize;

    fn deref(&self) -> &AtomicUsize {
        &self.0
    }
}

impl Workers {
    /// `n` workers in all: the calling runtime and `n - 1` threads.
    pub fn start(n: usize) -> io::Result<Arc<Self>> {
        let n = n.max(1);
        let mut added = Vec::with_capacity(n - 1);
        for index in 1..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    // Runs the tasks spawned onto it until the workers are
                    // dropped; then its tasks are dropped with the runtime.
                    let _ = rt.block_on(stopped);
                })?;
            added.push(Worker {
                handle,
                _stop: stop,
            });
        }
        MOST.fetch_max(n, Ordering::Relaxed);
        Ok(Arc::new(Workers {
            added,
            open: (0..n).map(|_| Count::default()).collect(),
        }))
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.open.len()
    }

    /// Open connections per worker, 0 first.
    pub fn open_connections(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// The worker with the fewest open connections (the lowest index on a
    /// tie, so a lightly loaded proxy keeps to worker 0).
    pub fn pick(&self) -> usize {
        let mut best = 0;
        let mut fewest = usize::MAX;
        for (i, open) in self.open.iter().enumerate() {
            let n = open.load(Ordering::Relaxed);
            if n < fewest {
                best = i;
                fewest = n;
            }
        }
        best
    }

    /// Runs one connection's task on worker `index` (from [`Self::pick`]),
    /// counted as open there until it ends.
    pub fn spawn<F>(self: &Arc<Self>, index: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = index.min(self.count() - 1);
        self.open[index].fetch_add(1, Ordering::Relaxed);
        let counted = Counted {
            workers: self.clone(),
            index,
        };
        let task = async move {
            task.await;
            drop(counted);
        };
        match index.checked_sub(1).and_then(|i| self.added.get(i)) {
            Some(w) => drop(w.handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

/// Counts a connection as open on its worker until dropped (also when the
/// task is dropped unfinished, with its runtime).
struct Counted {
    workers: Arc<Workers>,
    index: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.workers.open[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_least_loaded_worker_and_know_which_it_is() {
        let w = Workers::start(3).unwrap();
        assert_eq!(w.count(), 3);
        assert!(slots() >= 3);
        let mut seen = Vec::new();
        let mut holds = Vec::new();
        for _ in 0..3 {
            let i = w.pick();
            let (tx, rx) = oneshot::channel();
            let (hold_tx, hold_rx) = oneshot::channel::<()>();
            holds.push(hold_tx);
            w.spawn(i, async move {
                let _ = tx.send(current());
                let _ = hold_rx.await;
            });
            seen.push((i, rx.await.unwrap()));
        }
        // Each held task keeps its worker busy: the next goes elsewhere.
        assert_eq!(seen, vec![(0, 0), (1, 1), (2, 2)]);
        drop(holds);
    }
}
