//! Fold: the wake-ups a request's task gives itself while it drives its
//! upstream connection, folded into the poll it is already in.
//!
//! The request's task polls hyper's client connection (the driver) and the
//! response (head, then body) itself. Handing the request to the driver,
//! the response head back, or asking for more body each wakes the other
//! side, which is this same task, so tokio polls the whole connection task
//! once more for nothing. Under heavy load those extra polls mostly
//! coincide with a real wake-up; with less load per worker they do not
//! (callgrind, two workers: 3.8 polls of the connection task per request
//! against 2.0 with one).
//!
//! So the connection is polled under a waker of its own ([`Folded::poll`]).
//! A wake that comes from inside that poll, on its thread, only marks it to
//! go round once more before it returns; any other (the socket's readiness,
//! from the reactor between polls) goes to the task.
//!
//! A wake folded into a poll that returns `Ready` is dropped: it came from
//! the driver or the response, and whatever it asked for is looked at the
//! next time the response's body is polled, which always drives the
//! connection (see `client::Pulled`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Most rounds of one poll; past it the task is woken to come back.
const ROUNDS: usize = 4;

thread_local! {
    /// The address of the relay being polled on this thread (0: none).
    static POLLING: Cell<usize> = const { Cell::new(0) };
}

/// Where a connection's wakes go: the task using it, or the poll in
/// progress.
struct Relay {
    /// The waker of the task that polled the connection last.
    task: Mutex<Option<Waker>>,
    /// A wake came from inside the poll in progress.
    again: AtomicBool,
}

impl Relay {
    fn address(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if POLLING.with(Cell::get) == self.address() {
            self.again.store(true, Ordering::Relaxed);
            return;
        }
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

/// A connection's waker (see the module).
pub(super) struct Folded {
    relay: Arc<Relay>,
    waker: Waker,
}

impl Folded {
    /// A waker for one connection.
    pub(super) fn new() -> Self {
        let relay = Arc::new(Relay {
            task: Mutex::new(None),
            again: AtomicBool::new(false),
        });
        Folded {
            waker: Waker::from(relay.clone()),
            relay,
        }
    }

    /// Runs `f` (which hands the connection a request) with any wake it
    /// gives the connection dropped: the caller drives the connection next.
    pub(super) fn quietly<R>(&self, f: impl FnOnce() -> R) -> R {
        let outer = POLLING.with(|p| p.replace(self.relay.address()));
        let r = f();
        POLLING.with(|p| p.set(outer));
        self.relay.again.store(false, Ordering::Relaxed);
        r
    }

    /// Lets go of the task: the connection is idle (back on its server's
    /// stack), and a wake now (its last response's body being dropped, the
    /// server closing it) concerns no task.
    pub(super) fn forget_task(&self) {
        *self
            .relay
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Runs `f` (which polls the connection and what it carries) under the
    /// connection's waker, again while it is pending and woke itself.
    pub(super) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        {
            let mut task = self
                .relay
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner = Context::from_waker(&self.waker);
        let outer = POLLING.with(|p| p.replace(self.relay.address()));
        for round in 1..=ROUNDS {
            self.relay.again.store(false, Ordering::Relaxed);
            // Returned where it is made: a result held in a variable across
            // rounds (a response head, some 300 bytes) was copied twice.
            let r = f(&mut inner);
            if r.is_ready() {
                POLLING.with(|p| p.set(outer));
                return r;
            }
            if !self.relay.again.load(Ordering::Relaxed) {
                break;
            }
            if round == ROUNDS {
                // Still waking itself after ROUNDS: let other tasks run first.
                self.relay.again.store(false, Ordering::Relaxed);
                cx.waker().wake_by_ref();
            }
        }
        POLLING.with(|p| p.set(outer));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn self_wakes_go_round_again_and_outside_wakes_reach_the_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let folded = Folded::new();
        let mut stored: Option<Waker> = None;
        let mut rounds = 0;
        // Pending twice, waking itself each time, then ready.
        let r = folded.poll(&mut cx, |cx| {
            rounds += 1;
            stored = Some(cx.waker().clone());
            if rounds < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(rounds)
            }
        });
        assert_eq!(r, Poll::Ready(3));
        assert_eq!(count.0.load(Ordering::Relaxed), 0, "no wake for the task");
        // A wake after the poll (as from the reactor) reaches the task.
        stored.take().unwrap().wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // One that keeps waking itself is let go after ROUNDS, task woken.
        let mut n = 0;
        let r: Poll<()> = folded.poll(&mut cx, |cx| {
            n += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(r.is_pending());
        assert_eq!(n, ROUNDS);
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
    }
}
