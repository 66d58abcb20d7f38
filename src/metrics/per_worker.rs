//! Per-worker accumulation: with several workers, the hot path's counters,
//! gauges and histograms add into a slot of their own worker (alone on its
//! cache line), and a scrape folds the slots into the exporter's handles.
//!
//! The exporter's handles are shared atomics (a histogram sample is a
//! contended push onto one lock-free list): every worker recording a
//! request into the same route's handles would bounce their cache lines
//! between cores. Folding keeps them exact: a counter's or gauge's slots
//! sum to every change made through its handle, and a fold adds only what
//! changed since the last one, so a handle replaced on reload (same labels,
//! fresh slots) adds to the series instead of resetting it. A handle that
//! is dropped folds what it still holds.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn};

use crate::workers;

/// Samples a worker keeps before it folds them itself, so a proxy nobody
/// scrapes holds at most this many per handle and worker.
const HISTOGRAM_BATCH: usize = 1024;

/// One worker's slot, alone on its cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Slot<T>(T);

/// Something that folds its slots into the exporter's handle.
pub(super) trait Fold: Send + Sync {
    /// Adds what changed since the last fold.
    fn fold(&self);
}

/// Every per-worker handle alive, folded before each scrape and on upkeep.
#[derive(Default)]
pub(super) struct Folds {
    handles: Mutex<Vec<Weak<dyn Fold>>>,
}

impl Folds {
    /// Keeps `handle` to be folded until it is dropped.
    fn register(&self, handle: Weak<dyn Fold>) {
        if let Ok(mut h) = self.handles.lock() {
            h.push(handle);
        }
    }

    /// Folds every live handle and forgets the dropped ones.
    pub(super) fn fold_all(&self) {
        let live: Vec<Arc<dyn Fold>> = match self.handles.lock() {
            Ok(mut h) => {
                h.retain(|w| w.strong_count() > 0);
                h.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return,
        };
        // Folded outside the registry's lock: a fold takes slot locks that
        // workers take on the hot path.
        for f in live {
            f.fold();
        }
    }
}

/// The calling worker's slot among `n`.
fn slot_index(n: usize) -> usize {
    workers::current().min(n.saturating_sub(1))
}

fn slots<T: Default>(n: usize) -> Box<[Slot<T>]> {
    (0..n.max(1)).map(|_| Slot::default()).collect()
}

/// One running sum per worker, and what of it was folded already.
struct Sums {
    slots: Box<[Slot<AtomicI64>]>,
    folded: Mutex<i64>,
}

impl Sums {
    fn new(n: usize) -> Self {
        Sums {
            slots: slots(n),
            folded: Mutex::new(0),
        }
    }

    /// Adds `delta` to the calling worker's slot.
    fn add(&self, delta: i64) {
        if let Some(s) = self.slots.get(slot_index(self.slots.len())) {
            s.0.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// What changed since the last call, if anything; summed under the
    /// lock, so concurrent folds take each change once.
    fn change(&self) -> Option<i64> {
        let mut folded = self.folded.lock().ok()?;
        let sum = self
            .slots
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum::<i64>();
        let change = sum - *folded;
        *folded = sum;
        (change != 0).then_some(change)
    }
}

/// A counter: one running total per worker.
struct PerWorkerCounter {
    sums: Sums,
    target: Counter,
}

impl CounterFn for PerWorkerCounter {
    fn increment(&self, value: u64) {
        self.sums.add(i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn absolute(&self, value: u64) {
        // Not used on the hot path: the total goes straight to the series.
        self.fold();
        self.target.absolute(value);
    }
}

impl Fold for PerWorkerCounter {
    fn fold(&self) {
        if let Some(n) = self.sums.change() {
            self.target.increment(n.unsigned_abs());
        }
    }
}

/// A gauge that only moves up and down: one net change per worker, in
/// millionths (the proxy's gauges move by whole units).
struct PerWorkerGauge {
    sums: Sums,
    target: Gauge,
}

/// Gauge changes are kept as integers (exact sums) in these units.
const GAUGE_SCALE: f64 = 1_000_000.0;

impl GaugeFn for PerWorkerGauge {
    fn increment(&self, value: f64) {
        self.sums.add((value * GAUGE_SCALE).round() as i64);
    }

    fn decrement(&self, value: f64) {
        self.sums.add((-value * GAUGE_SCALE).round() as i64);
    }

    fn set(&self, value: f64) {
        // Not used on the hot path: later changes move on from this value.
        self.fold();
        self.target.set(value);
    }
}

impl Fold for PerWorkerGauge {
    fn fold(&self) {
        if let Some(n) = self.sums.change() {
            self.target.increment(n as f64 / GAUGE_SCALE);
        }
    }
}

/// A handle dropped (a reload replaced its route) folds what it still holds.
macro_rules! fold_on_drop {
    ($($t:ty),*) => {$(
        impl Drop for $t {
            fn drop(&mut self) {
                Fold::fold(self);
            }
        }
    )*};
}
fold_on_drop!(PerWorkerCounter, PerWorkerGauge, PerWorkerHistogram);

/// A histogram: each worker buffers its samples.
struct PerWorkerHistogram {
    slots: Box<[Slot<Mutex<Vec<f64>>>]>,
    target: Histogram,
}

impl PerWorkerHistogram {
    fn drain(&self, slot: &Slot<Mutex<Vec<f64>>>) {
        let batch = match slot.0.lock() {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(_) => return,
        };
        for v in batch {
            self.target.record(v);
        }
    }
}

impl HistogramFn for PerWorkerHistogram {
    fn record(&self, value: f64) {
        let Some(slot) = self.slots.get(slot_index(self.slots.len())) else {
            return;
        };
        let full = match slot.0.lock() {
            Ok(mut b) => {
                b.push(value);
                b.len() >= HISTOGRAM_BATCH
            }
            Err(_) => false,
        };
        if full {
            self.drain(slot);
        }
    }
}

impl Fold for PerWorkerHistogram {
    fn fold(&self) {
        for s in self.slots.iter() {
            self.drain(s);
        }
    }
}

/// `handle`, kept in `folds` until it is dropped.
fn registered<T: Fold + 'static>(folds: &Folds, handle: T) -> Arc<T> {
    let handle = Arc::new(handle);
    let weak: Weak<dyn Fold> = Arc::downgrade(&handle) as Weak<T>;
    folds.register(weak);
    handle
}

/// Wraps `target` so each of `n` workers counts into its own slot.
pub(super) fn counter(folds: &Folds, n: usize, target: Counter) -> Counter {
    let sums = Sums::new(n);
    Counter::from_arc(registered(folds, PerWorkerCounter { sums, target }))
}

/// Wraps `target` (moved only by increment and decrement) per worker.
pub(super) fn gauge(folds: &Folds, n: usize, target: Gauge) -> Gauge {
    let sums = Sums::new(n);
    Gauge::from_arc(registered(folds, PerWorkerGauge { sums, target }))
}

/// Wraps `target` so each of `n` workers buffers its own samples.
pub(super) fn histogram(folds: &Folds, n: usize, target: Histogram) -> Histogram {
    let slots = slots(n);
    Histogram::from_arc(registered(folds, PerWorkerHistogram { slots, target }))
}

#[cfg(test)]
mod tests {
    use super::super::{Metrics, REQUEST_DURATION, WS_SESSIONS_ACTIVE, WS_SESSIONS_TOTAL};
    use crate::workers::Workers;

    /// The value of the sample line starting with `prefix`.
    fn sample(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    /// Asserts each (sample prefix, value) in one scrape.
    fn expect(m: &Metrics, want: &[(&str, f64)]) {
        let text = m.render();
        for (prefix, value) in want {
            assert_eq!(sample(&text, prefix), *value, "{prefix} in {text}");
        }
    }

    const TOTAL: &str = "switchyard_websocket_sessions_total{";
    const ACTIVE: &str = "switchyard_websocket_sessions_active{";

    /// Runs `f` on worker 1 and waits for it.
    async fn on_worker_1(w: &std::sync::Arc<Workers>, f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        w.spawn(1, async move {
            assert_eq!(crate::workers::current(), 1);
            f();
            let _ = tx.send(());
        });
        rx.await.unwrap();
    }

    #[tokio::test]
    async fn changes_on_two_workers_fold_exactly_and_survive_a_replaced_handle() {
        let w = Workers::start(2).unwrap();
        let m = Metrics::for_workers(2);
        let labels = [("site", "s"), ("route", "r")];
        let total = m.worker_counter(WS_SESSIONS_TOTAL, &labels);
        let active = m.worker_gauge(WS_SESSIONS_ACTIVE, &labels);
        let duration = m.worker_histogram(REQUEST_DURATION, &labels);
        total.increment(3);
        active.increment(2.0);
        for _ in 0..3000 {
            duration.record(0.002);
        }
        let (t, a, d) = (total.clone(), active.clone(), duration.clone());
        on_worker_1(&w, move || {
            t.increment(4);
            a.decrement(1.0);
            d.record(0.5);
        })
        .await;
        expect(
            &m,
            &[
                (TOTAL, 7.0),
                (ACTIVE, 1.0),
                ("switchyard_request_duration_seconds_count{", 3001.0),
            ],
        );
        // Folding again adds nothing.
        expect(&m, &[(TOTAL, 7.0)]);

        // A reload's fresh handles (same labels) add to the series; the old
        // ones fold what they still held when dropped.
        let total2 = m.worker_counter(WS_SESSIONS_TOTAL, &labels);
        let active2 = m.worker_gauge(WS_SESSIONS_ACTIVE, &labels);
        total.increment(1);
        active.decrement(1.0);
        drop((total, active, duration));
        let (t, a) = (total2.clone(), active2.clone());
        on_worker_1(&w, move || {
            t.increment(2);
            a.increment(1.0);
        })
        .await;
        expect(&m, &[(TOTAL, 10.0), (ACTIVE, 1.0)]);
    }

    #[tokio::test]
    async fn one_worker_gets_the_exporters_own_handles() {
        let m = Metrics::new();
        let c = m.worker_counter(WS_SESSIONS_TOTAL, &[("site", "s"), ("route", "r")]);
        c.increment(1);
        assert!(m.folds.handles.lock().unwrap().is_empty());
        expect(&m, &[(TOTAL, 1.0)]);
    }
}
