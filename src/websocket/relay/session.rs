//! One session: both directions driven from one task, the timers (idle
//! timeout, pings, the close wait, shutdown), and how the session ends
//! (closes, replies, shutdown, linger).

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until, timeout_at};

use super::half::{Half, Shared};
use super::plan::{HalfEvent, PingDue, Pings, Plan};
use super::{ByDirection, RelayEnd, RelayOutcome, RelaySettings, Shutdown};
use crate::metrics::RouteMetrics;
use crate::websocket::frame::Direction;

/// How long to wait for the other side's close frame once one side closed,
/// or for close replies after the proxy closed both sides.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long to flush what is queued and shut both sockets down.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How long to read and discard what peers still send after shutdown, so
/// that closing a socket with unread input does not reset the connection
/// (and destroy the close frame just sent).
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEvent {
    /// An event of one direction.
    Half(Direction, HalfEvent),
    /// The goal of an ending phase was reached.
    Settled,
}

/// What a pump waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// Relaying: only events.
    Run,
    /// Close frames written, replies received (or their sources ended).
    Replies,
    /// Both destinations shut down.
    Shutdown,
    /// The backend sent its close or ended, and the client got what it sent.
    UpstreamDone,
}

/// Reads and drops whatever `src` has; true once it has ended.
fn drain_input<S>(cx: &mut Context<'_>, src: &mut S) -> bool
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut scratch = [0u8; 1024];
    loop {
        let mut rb = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *src).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return true,
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return true,
            Poll::Pending => return false,
        }
    }
}

enum Tick {
    Pump(PumpEvent),
    Shutdown,
    CloseWait,
    Idle,
    Ping,
    /// The timer fired with nothing due (it is re-armed).
    Early,
}

/// The relay's deadlines, all served by one timer (a `Sleep` per deadline
/// would sit in every idle session's state), which exists only while one
/// of them is set.
struct Deadlines {
    /// The close handshake's end, once a close frame was seen.
    close: Option<Instant>,
    /// When to check for idleness next (`idle_timeout` on).
    idle: Option<Instant>,
    /// When to ping next (`ping_interval` on).
    ping: Option<Instant>,
}

impl Deadlines {
    fn new(settings: &RelaySettings) -> Self {
        let start = Instant::now();
        Deadlines {
            close: None,
            idle: settings.idle().map(|d| start + d),
            ping: settings.pings().map(|d| start + d),
        }
    }

    /// The earliest deadline that counts now (only the close wait counts
    /// while closing), if any.
    fn next(&self) -> Option<Instant> {
        match self.close {
            Some(close) => Some(close),
            None => [self.idle, self.ping].into_iter().flatten().min(),
        }
    }

    /// What is due at `now`.
    fn due(&self, now: Instant) -> Tick {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if self.close.is_some() {
            if due(self.close) {
                Tick::CloseWait
            } else {
                Tick::Early
            }
        } else if due(self.idle) {
            Tick::Idle
        } else if due(self.ping) {
            Tick::Ping
        } else {
            Tick::Early
        }
    }
}

/// The relay's one timer: boxed and made only once a deadline is set, so a
/// session without timeouts holds no timer at all.
type Timer = Option<Pin<Box<Sleep>>>;

/// Arms `timer` for `next`: made on first need, reset only when the
/// deadline moved (most wake-ups are relayed bytes, which leave the
/// deadlines alone), dropped when nothing is due.
fn arm(timer: &mut Timer, next: Option<Instant>) {
    match (timer.as_mut(), next) {
        (_, None) => *timer = None,
        (None, Some(at)) => *timer = Some(Box::pin(sleep_until(at))),
        (Some(sleep), Some(at)) => {
            if sleep.is_elapsed() || sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
        }
    }
}

/// Polls `timer`; pending forever when there is none.
fn poll_timer(timer: &mut Timer, cx: &mut Context<'_>) -> Poll<()> {
    match timer {
        Some(sleep) => sleep.as_mut().poll(cx),
        None => Poll::Pending,
    }
}

/// Relays a WebSocket session between `client` (the downstream connection;
/// the proxy is its server) and `upstream` (the backend; the proxy is its
/// client) until it ends, and reports how.
///
/// Every wait is bounded: after a close frame the other side has 5 s to
/// answer; ending then takes at most a few more seconds to flush, shut both
/// sockets down (sending TLS `close_notify`) and let the peers close. Nothing
/// outlives the call.
#[allow(clippy::manual_async_fn)] // see the comment in the body
pub(crate) fn relay<'a, C, U, S>(
    mut client: C,
    mut upstream: U,
    settings: &'a RelaySettings,
    metrics: &'a RouteMetrics,
    shutdown: &'a S,
) -> impl Future<Output = RelayOutcome> + use<'a, C, U, S>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    S: Shutdown,
{
    // Not an `async fn`, and the relaying loop not a method's future of its
    // own: either would keep a second copy of the arguments (or references
    // to them) in the state every open session holds.
    async move {
        let mut s = Session::new(settings);
        // Relaying, until something ends the session: the shutdown
        // signal, both halves and the timer, polled in that order.
        let plan = {
            let mut at = Deadlines::new(settings);
            let mut requested = pin!(shutdown.requested());
            let mut timer: Timer = None;
            arm(&mut timer, at.next());
            loop {
                let tick = tokio::select! {
                    biased;
                    () = &mut requested => Tick::Shutdown,
                    event = poll_fn(|cx| s.pump(cx, &mut client, &mut upstream, metrics, Goal::Run)) => Tick::Pump(event),
                    () = poll_fn(|cx| poll_timer(&mut timer, cx)) => at.due(Instant::now()),
                };
                if let Some(plan) = s.on_tick(tick, &mut at, settings, shutdown) {
                    break plan;
                }
                arm(&mut timer, at.next());
            }
        };
        // Boxed: the ending's state (392 bytes, its own timers among them)
        // is larger than what relaying awaits, and inline it would set the
        // size of every open session's state.
        Box::pin(s.terminate(&plan, &mut client, &mut upstream, metrics)).await;
        let outcome = s.outcome(plan.end, metrics);
        tracing::debug!(?outcome, "WebSocket relay ended");
        outcome
    }
}

struct Session {
    halves: ByDirection<Half>,
    shared: Shared,
    /// The direction the pump polls first (alternates, for fairness).
    turn: Direction,
}

impl Session {
    fn new(settings: &RelaySettings) -> Self {
        Session {
            halves: ByDirection::new(|dir| Half::new(dir, settings)),
            shared: Shared {
                pings: Pings::new(settings.pings().is_some()),
                last_activity: Instant::now(),
            },
            turn: Direction::ClientToUpstream,
        }
    }

    /// Publishes what is still uncounted and reports how the session went.
    fn outcome(&mut self, end: RelayEnd, metrics: &RouteMetrics) -> RelayOutcome {
        for dir in Direction::ALL {
            self.halves[dir].tally.publish(&metrics.ws[dir.index()]);
        }
        RelayOutcome {
            relayed: ByDirection::new(|dir| self.halves[dir].tally.total),
            client_close: self.halves[Direction::ClientToUpstream].close_seen,
            upstream_close: self.halves[Direction::UpstreamToClient].close_seen,
            end,
        }
    }

    fn pump<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        upstream: &mut U,
        metrics: &RouteMetrics,
        goal: Goal,
    ) -> Poll<PumpEvent>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        self.turn = self.turn.reverse();
        for dir in [self.turn, self.turn.reverse()] {
            let half = &mut self.halves[dir];
            let m = &metrics.ws[dir.index()];
            let polled = match dir {
                Direction::ClientToUpstream => half.poll(cx, client, upstream, &mut self.shared, m),
                Direction::UpstreamToClient => half.poll(cx, upstream, client, &mut self.shared, m),
            };
            if let Poll::Ready(event) = polled {
                return Poll::Ready(PumpEvent::Half(dir, event));
            }
        }
        if self.settled(goal) {
            Poll::Ready(PumpEvent::Settled)
        } else {
            Poll::Pending
        }
    }

    /// Whether `goal` has been reached.
    fn settled(&self, goal: Goal) -> bool {
        match goal {
            Goal::Run => false,
            Goal::Replies => self.halves.iter().all(Half::replied),
            Goal::Shutdown => self.halves.iter().all(Half::shut),
            Goal::UpstreamDone => {
                let u2c = &self.halves[Direction::UpstreamToClient];
                u2c.source_finished()
                    && u2c.flushed()
                    && self.halves[Direction::ClientToUpstream].flushed()
            }
        }
    }

    /// Handles what woke the relay; a plan if the session is to end.
    fn on_tick<S: Shutdown>(
        &mut self,
        tick: Tick,
        at: &mut Deadlines,
        settings: &RelaySettings,
        shutdown: &S,
    ) -> Option<Plan> {
        match tick {
            Tick::Pump(PumpEvent::Half(dir, event)) => {
                self.on_event(dir, event, at, shutdown.draining())
            }
            Tick::Pump(PumpEvent::Settled) | Tick::Early => None,
            Tick::Shutdown => Some(Plan::going_away(RelayEnd::Shutdown)),
            Tick::CloseWait => Some(Plan::graceful()),
            Tick::Idle => self.on_idle(at, settings),
            Tick::Ping => self.on_ping(at, settings),
        }
    }

    /// `dir` reported `event`; `draining`: the proxy is shutting down.
    fn on_event(
        &mut self,
        dir: Direction,
        event: HalfEvent,
        at: &mut Deadlines,
        draining: bool,
    ) -> Option<Plan> {
        match event {
            HalfEvent::Close => {
                if self.halves.iter().all(|h| h.close_seen.is_some()) {
                    return Some(Plan::graceful());
                }
                // The other side has CLOSE_WAIT to answer.
                at.close.get_or_insert_with(|| Instant::now() + CLOSE_WAIT);
                None
            }
            HalfEvent::Violation(error) => {
                tracing::debug!(direction = ?dir, %error, "WebSocket protocol violation");
                Some(Plan::violation(error, dir))
            }
            HalfEvent::Refused if dir == Direction::ClientToUpstream && at.close.is_none() => {
                Some(Plan::client_refused())
            }
            HalfEvent::Eof | HalfEvent::ReadError | HalfEvent::Refused | HalfEvent::WriteError => {
                Some(Plan::side_gone(dir, event, at.close.is_some(), draining))
            }
        }
    }

    /// The idle deadline passed: the session ends if nothing was relayed
    /// since; otherwise the deadline moves to `idle_timeout` after the last
    /// relayed bytes.
    fn on_idle(&self, at: &mut Deadlines, settings: &RelaySettings) -> Option<Plan> {
        let idle = settings.idle()?;
        let due = self.shared.last_activity + idle;
        if Instant::now() >= due {
            return Some(Plan::going_away(RelayEnd::Idle));
        }
        at.idle = Some(due);
        None
    }

    /// The ping interval came round: ping the client, or end the session if
    /// the last ping went unanswered.
    fn on_ping(&mut self, at: &mut Deadlines, settings: &RelaySettings) -> Option<Plan> {
        let every = settings.pings()?;
        let u2c = &mut self.halves[Direction::UpstreamToClient];
        match self.shared.pings.due(u2c.can_take_ping()) {
            PingDue::Unanswered => return Some(Plan::client_gone(RelayEnd::PingTimeout)),
            PingDue::Send(ping) => u2c.inject_ping(ping),
            PingDue::Wait => {}
        }
        at.ping = Some(Instant::now() + every);
        None
    }

    /// Ends the session as `plan` says: close frames where they can go,
    /// replies awaited if asked, both sockets shut down, peers given a
    /// moment to close their side.
    async fn terminate<C, U>(
        &mut self,
        plan: &Plan,
        client: &mut C,
        upstream: &mut U,
        metrics: &RouteMetrics,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let mut plan = *plan;
        if plan.upstream_first {
            self.close_upstream_first(&mut plan, client, upstream, metrics)
                .await;
        }
        self.queue_closes(&plan);
        if plan.await_replies {
            let deadline = Instant::now() + CLOSE_WAIT;
            self.run_phase(Goal::Replies, deadline, client, upstream, metrics)
                .await;
        }
        for half in self.halves.iter_mut() {
            half.begin_shutdown();
        }
        let deadline = Instant::now() + FLUSH_WAIT;
        self.run_phase(Goal::Shutdown, deadline, client, upstream, metrics)
            .await;
        self.linger(client, upstream).await;
    }

    /// Queues `plan`'s close frames (in place of a ping not yet written),
    /// then sets what each direction still reads: the close reply its
    /// source owes when replies are awaited, else nothing.
    fn queue_closes(&mut self, plan: &Plan) {
        for dir in Direction::ALL {
            let half = &mut self.halves[dir];
            half.drop_unsent_ping();
            if let Some(code) = plan.close_into(dir) {
                half.queue_close(code);
            }
        }
        for dir in Direction::ALL {
            // The source was sent a close by the other direction.
            let src_was_closed = self.halves[dir.reverse()].dst_closed;
            self.halves[dir].stop_reading(plan.await_replies && src_was_closed);
        }
    }

    /// After a client's protocol error: closes the backend, keeps passing on
    /// what the backend still sends until its close reply or end (bounded),
    /// and leaves only the client's close to the rest of `terminate`.
    async fn close_upstream_first<C, U>(
        &mut self,
        plan: &mut Plan,
        client: &mut C,
        upstream: &mut U,
        metrics: &RouteMetrics,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let c2u = &mut self.halves[Direction::ClientToUpstream];
        c2u.stop();
        let Some(code) = plan.to_upstream.take() else {
            return;
        };
        if !c2u.queue_close(code) {
            return;
        }
        let u2c = &mut self.halves[Direction::UpstreamToClient];
        if !u2c.relaying() {
            return;
        }
        // The client must see the protocol error's code, not the backend's
        // reply to it.
        u2c.swallow_close = true;
        let deadline = Instant::now() + CLOSE_WAIT;
        self.run_phase(Goal::UpstreamDone, deadline, client, upstream, metrics)
            .await;
    }

    /// Pumps until `goal` is reached or `deadline` passes.
    async fn run_phase<C, U>(
        &mut self,
        goal: Goal,
        deadline: Instant,
        client: &mut C,
        upstream: &mut U,
        metrics: &RouteMetrics,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        loop {
            let step = poll_fn(|cx| self.pump(cx, client, upstream, metrics, goal));
            match timeout_at(deadline, step).await {
                Err(_) | Ok(PumpEvent::Settled) => return,
                // Close replies, ends and failures are recorded by the
                // directions themselves.
                Ok(PumpEvent::Half(..)) => {}
            }
        }
    }

    /// Reads and drops what the peers still send until they close, briefly.
    /// A peer that sent its close frame has nothing more to send and is not
    /// waited for.
    async fn linger<C, U>(&self, client: &mut C, upstream: &mut U)
    where
        C: AsyncRead + Unpin + ?Sized,
        U: AsyncRead + Unpin + ?Sized,
    {
        // The client is the source of client→upstream, the backend of the
        // other direction.
        let mut client_done = self.halves[Direction::ClientToUpstream].source_quiet();
        let mut upstream_done = self.halves[Direction::UpstreamToClient].source_quiet();
        let drained = poll_fn(|cx| {
            client_done = client_done || drain_input(cx, client);
            upstream_done = upstream_done || drain_input(cx, upstream);
            if client_done && upstream_done {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = timeout_at(Instant::now() + LINGER, drained).await;
    }
}
