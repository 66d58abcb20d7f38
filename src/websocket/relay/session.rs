//! One session: both directions driven from one task, its timers, and
//! how it ends.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use super::half::{Half, InjectKind, Injection, Mode, Shared};
use super::plan::{HalfEvent, Plan, ping_payload};
use super::{RelayEnd, RelaySettings};
use crate::metrics::RouteMetrics;
use crate::websocket::frame::{CLOSE_GOING_AWAY, ControlFrame, Direction};

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
    /// Direction (0: client→upstream, 1: upstream→client) and event.
    Half(usize, HalfEvent),
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
/// would sit in every idle session's state).
struct Deadlines {
    /// The close handshake's end, once a close frame was seen.
    close: Option<Instant>,
    /// When to check for idleness next.
    idle: Option<Instant>,
    /// When to ping next.
    ping: Option<Instant>,
}

impl Deadlines {
    /// The earliest deadline that counts now (only the close wait counts
    /// while closing), or a far one.
    fn next(&self, far: Instant) -> Instant {
        match self.close {
            Some(close) => close,
            None => [self.idle, self.ping]
                .into_iter()
                .flatten()
                .fold(far, Instant::min),
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

pub(super) struct Session {
    /// Client→upstream, upstream→client.
    pub(super) halves: [Half; 2],
    pub(super) shared: Shared,
    /// Which direction the pump polls first (alternates, for fairness).
    pub(super) turn: usize,
}

impl Session {
    pub(super) fn new(settings: &RelaySettings) -> Self {
        Session {
            halves: [
                Half::new(Direction::ClientToUpstream, settings),
                Half::new(Direction::UpstreamToClient, settings),
            ],
            shared: Shared {
                consume_pongs: settings.ping_interval.is_some_and(|d| !d.is_zero()),
                ping_seq: 0,
                ping_outstanding: None,
                ping_written: false,
                last_activity: Instant::now(),
            },
            turn: 0,
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
        self.turn ^= 1;
        let [c2u, u2c] = &mut self.halves;
        for i in 0..2 {
            let h = (self.turn + i) & 1;
            let polled = if h == 0 {
                c2u.poll(cx, client, upstream, &mut self.shared, &metrics.ws[0])
            } else {
                u2c.poll(cx, upstream, client, &mut self.shared, &metrics.ws[1])
            };
            if let Poll::Ready(event) = polled {
                return Poll::Ready(PumpEvent::Half(h, event));
            }
        }
        let settled = match goal {
            Goal::Run => false,
            Goal::Replies => self
                .halves
                .iter()
                .all(|h| h.mode != Mode::Discard && h.flushed()),
            Goal::Shutdown => self.halves.iter().all(|h| h.dst_broken || h.shut_done),
            Goal::UpstreamDone => {
                let u2c = &self.halves[1];
                (u2c.close_seen.is_some() || u2c.src_done || u2c.walker.error().is_some())
                    && u2c.flushed()
                    && self.halves[0].flushed()
            }
        };
        if settled {
            Poll::Ready(PumpEvent::Settled)
        } else {
            Poll::Pending
        }
    }

    /// Relays until something ends the session; returns how to end it.
    pub(super) async fn run<C, U>(
        &mut self,
        client: &mut C,
        upstream: &mut U,
        settings: &RelaySettings,
        metrics: &RouteMetrics,
        shutdown: &CancellationToken,
    ) -> Plan
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let idle = settings.idle_timeout.filter(|d| !d.is_zero());
        let ping_every = settings.ping_interval.filter(|d| !d.is_zero());
        let start = Instant::now();
        let far = start + Duration::from_secs(365 * 24 * 3600);
        let mut cancelled = pin!(shutdown.cancelled());
        let mut at = Deadlines {
            close: None,
            idle: idle.map(|d| start + d),
            ping: ping_every.map(|d| start + d),
        };
        let mut timer = pin!(sleep_until(at.next(far)));
        loop {
            let tick = tokio::select! {
                biased;
                () = &mut cancelled => Tick::Shutdown,
                event = poll_fn(|cx| self.pump(cx, client, upstream, metrics, Goal::Run)) => Tick::Pump(event),
                () = &mut timer => at.due(Instant::now()),
            };
            let closing = at.close.is_some();
            match tick {
                Tick::Pump(PumpEvent::Half(h, event)) => match event {
                    HalfEvent::Close => {
                        if self.halves.iter().all(|x| x.close_seen.is_some()) {
                            return Plan::graceful();
                        }
                        if !closing {
                            at.close = Some(Instant::now() + CLOSE_WAIT);
                        }
                    }
                    HalfEvent::Violation(error) => {
                        tracing::debug!(direction = ?self.halves[h].dir, %error, "WebSocket protocol violation");
                        return Plan::violation(error, h == 0);
                    }
                    HalfEvent::Eof | HalfEvent::ReadError | HalfEvent::WriteError => {
                        // Which side is gone: the source on a read, the
                        // destination on a write.
                        let client_gone = (h == 0) == (event != HalfEvent::WriteError);
                        return match (client_gone, closing) {
                            (true, false) => Plan::client_gone(RelayEnd::ClientGone),
                            (true, true) => Plan::client_gone(RelayEnd::CloseHandshake),
                            (false, false) => {
                                Plan::upstream_gone(RelayEnd::UpstreamGone, shutdown.is_cancelled())
                            }
                            (false, true) => Plan::upstream_gone_closing(RelayEnd::CloseHandshake),
                        };
                    }
                },
                Tick::Pump(PumpEvent::Settled) | Tick::Early => {}
                Tick::Shutdown => return Plan::going_away(RelayEnd::Shutdown),
                Tick::CloseWait => return Plan::graceful(),
                Tick::Idle => {
                    if let Some(idle) = idle {
                        let due = self.shared.last_activity + idle;
                        if Instant::now() >= due {
                            return Plan::going_away(RelayEnd::Idle);
                        }
                        at.idle = Some(due);
                    }
                }
                Tick::Ping => {
                    if let Some(every) = ping_every {
                        let sh = &mut self.shared;
                        if sh.ping_outstanding.is_some() {
                            if sh.ping_written {
                                return Plan {
                                    to_client: None,
                                    to_upstream: Some(CLOSE_GOING_AWAY),
                                    await_replies: false,
                                    upstream_first: false,
                                    end: RelayEnd::PingTimeout,
                                };
                            }
                        } else {
                            let u2c = &mut self.halves[1];
                            if u2c.mode == Mode::Forward
                                && u2c.inject.is_none()
                                && !u2c.dst_closed
                                && !u2c.dst_broken
                            {
                                sh.ping_seq = sh.ping_seq.wrapping_add(1);
                                sh.ping_outstanding = Some(sh.ping_seq);
                                sh.ping_written = false;
                                let ping = ControlFrame::ping(&ping_payload(sh.ping_seq), None);
                                u2c.inject = Some(Injection::boxed(ping, InjectKind::Ping));
                            }
                        }
                        at.ping = Some(Instant::now() + every);
                    }
                }
            }
            // Re-arm only when needed: most wake-ups are relayed bytes,
            // which leave the deadlines alone.
            let next = at.next(far);
            if timer.is_elapsed() || timer.deadline() != next {
                timer.as_mut().reset(next);
            }
        }
    }

    /// Ends the session as `plan` says: close frames where they can go,
    /// replies awaited if asked, both sockets shut down, peers given a
    /// moment to close their side.
    pub(super) async fn terminate<C, U>(
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
        for (h, code) in [(0, plan.to_upstream), (1, plan.to_client)] {
            let half = &mut self.halves[h];
            if half
                .inject
                .as_ref()
                .is_some_and(|i| i.kind == InjectKind::Ping && i.written == 0)
            {
                half.inject = None;
            }
            if let Some(code) = code {
                half.queue_close(code);
            }
        }
        for h in 0..2 {
            let src_was_closed = self.halves[1 - h].dst_closed;
            let half = &mut self.halves[h];
            half.skipping = false;
            let wait = plan.await_replies
                && src_was_closed
                && half.close_seen.is_none()
                && !half.src_done
                && half.walker.error().is_none();
            if wait {
                half.fwd = half.parsed;
                half.mode = Mode::Discard;
            } else {
                half.mode = Mode::Off;
            }
        }
        if plan.await_replies {
            self.run_phase(
                Goal::Replies,
                Instant::now() + CLOSE_WAIT,
                client,
                upstream,
                metrics,
            )
            .await;
        }
        for half in &mut self.halves {
            half.mode = Mode::Off;
            half.want_shutdown = true;
        }
        self.run_phase(
            Goal::Shutdown,
            Instant::now() + FLUSH_WAIT,
            client,
            upstream,
            metrics,
        )
        .await;
        self.linger(client, upstream).await;
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
        let c2u = &mut self.halves[0];
        c2u.mode = Mode::Off;
        let Some(code) = plan.to_upstream.take() else {
            return;
        };
        if !c2u.queue_close(code) {
            return;
        }
        let u2c = &mut self.halves[1];
        if u2c.mode != Mode::Forward || u2c.dst_closed || u2c.dst_broken {
            return;
        }
        // The client must see the protocol error's code, not the backend's
        // reply to it.
        u2c.swallow_close = true;
        self.run_phase(
            Goal::UpstreamDone,
            Instant::now() + CLOSE_WAIT,
            client,
            upstream,
            metrics,
        )
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
        let quiet = |h: &Half| h.src_done || h.close_seen.is_some();
        let mut done = [quiet(&self.halves[0]), quiet(&self.halves[1])];
        let drained = poll_fn(|cx| {
            if !done[0] {
                done[0] = drain_input(cx, client);
            }
            if !done[1] {
                done[1] = drain_input(cx, upstream);
            }
            if done[0] && done[1] {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = timeout_at(Instant::now() + LINGER, drained).await;
    }
}
