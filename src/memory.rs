//! Memory: gives memory freed by a burst of connections back to the
//! system.
//!
//! The binary allocates with jemalloc (`main.rs`); C code and an embedding
//! program may use glibc's malloc. Both keep freed memory for reuse (jemalloc
//! for its decay time, glibc unless it lies at the top of a heap), so after
//! thousands of connections (each task a few KiB) come and go the process
//! would stay near its peak size for a while. jemalloc's `arena.<all>.purge`
//! and glibc's `malloc_trim` return the free pages. They are the crate's
//! calls into C, so `unsafe` is allowed here (and in `socket.rs`, for
//! tokio's descriptor registration and read buffers; nowhere else).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Counts a connection opened (on any listener).
pub(crate) fn connection_opened() {
    let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
    PEAK.fetch_max(open, Ordering::Relaxed);
}

/// Counts a connection closed.
pub(crate) fn connection_closed() {
    OPEN.fetch_sub(1, Ordering::Relaxed);
}

/// Connections open in this process, over every listener.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// The most connections open since memory was last given back.
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// A burst at least this large, once it has halved, has its freed memory
/// given back to the system.
const TRIM_AFTER_BURST: usize = 1024;

/// Gives memory freed by a burst of connections back to the system, until
/// `stop` is cancelled. One runs per server.
///
/// The allocators keep freed memory for reuse, so after thousands of
/// connections (each task a few KiB) come and go the process would stay
/// near its peak size. Purging returns the free pages; it walks the heaps,
/// so it runs off the async workers and only after a large burst has
/// receded.
pub(crate) async fn trim_after_bursts(stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmer = Trimmer::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let open = OPEN.load(Ordering::Relaxed);
        if trimmer.due(PEAK.load(Ordering::Relaxed), open) {
            PEAK.store(open, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    }
}

/// When to trim, apart from the clock so it can be tested.
#[derive(Debug, Default)]
struct Trimmer {
    /// Connections open at the last trim, while a burst is still receding.
    receding_from: Option<usize>,
}

impl Trimmer {
    /// Whether to trim now, given the most connections open since the last
    /// trim and the number open now.
    ///
    /// A burst that has halved is trimmed. A tick can land in the middle of
    /// the drain, and the last few hundred connections, spread over the
    /// heap, would then pin it near its peak: so every later tick trims
    /// too, until one finds no fewer connections open than the last, which
    /// trims once more (for memory freed just after that trim) and ends it.
    fn due(&mut self, peak: usize, open: usize) -> bool {
        let burst = peak >= TRIM_AFTER_BURST && open <= peak / 2;
        let last = self.receding_from;
        self.receding_from = (burst || last.is_some_and(|l| open < l)).then_some(open);
        burst || last.is_some()
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // MALLCTL_ARENAS_ALL (4096) names every arena.
    const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: `arena.<i>.purge` reads and writes nothing (null old and new
    // values, length 0) and takes jemalloc's own locks; the name is a
    // NUL-terminated constant. Safe from any thread at any time.
    let purged = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if purged != 0 {
        tracing::debug!(error = purged, "jemalloc did not purge its arenas");
    }
    // SAFETY: malloc_trim takes no pointers and works under glibc's own
    // arena locks; it is safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::Trimmer;

    #[test]
    fn a_burst_is_trimmed_once_halved_and_again_until_it_has_drained() {
        let mut t = Trimmer::default();
        // Small numbers never trim.
        assert!(!t.due(500, 0));
        // A burst of 6,000: not while it stands, once it has halved.
        assert!(!t.due(6000, 5000));
        assert!(t.due(6000, 600));
        // The tick landed mid-drain: the rest of it is trimmed too, even
        // though 600 is under the burst size, then once more when it is over.
        assert!(t.due(600, 0));
        assert!(t.due(0, 0));
        // Drained: no more trims until the next burst.
        assert!(!t.due(0, 0));
        assert!(!t.due(40, 20));
        assert!(t.due(2000, 100));
        // Connections arriving again end the chain after one more trim.
        assert!(t.due(150, 150));
        assert!(!t.due(150, 100));
    }
}
