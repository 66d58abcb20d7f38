//! The frame-aware WebSocket relay.
//!
//! One task moves both directions of a session. Each direction reads into its
//! own buffer, walks the frames in place with a [`FrameWalker`] and writes the
//! very bytes it read on to the other side: no per-frame copy or lock, and
//! nothing waits for a whole message. The buffer exists only while bytes are
//! in flight (2 KiB for a small burst, 16 KiB for bulk): it is allocated once
//! per burst and released when the direction goes quiet, so an idle session
//! holds none. Both directions are polled from one `poll_fn`, the
//! way `tokio::io::copy_bidirectional` does it, so a direction blocked on a
//! slow reader never holds up the other one.
//!
//! Because the relay knows every frame boundary it can
//! - stop a direction exactly at a frame that breaks the protocol (or makes a
//!   message too big) and close both sides with 1002 (1009);
//! - inject its own close and ping frames where the stream it goes into is
//!   between frames (a partial header is never passed on, so a stream is
//!   only ever "mid-frame" inside a payload);
//! - consume the client's pongs to its own pings;
//! - follow the close handshake and end the session cleanly.
//!
//! Frames and bytes are counted per direction in plain fields and published
//! to the route's metric handles once per read.

use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use super::frame::{
    CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_NO_STATUS, CLOSE_TOO_BIG, ControlFrame,
    Direction, FrameError, FrameWalker, OP_CLOSE, OP_PONG, Step, opcode_class, random_mask,
};
use crate::metrics::{RouteMetrics, WsDirectionMetrics};

/// Per-direction read buffer once a burst outgrows the probe.
const BUF_SIZE: usize = 16 * 1024;
/// Per-direction read buffer while a burst keeps filling `BUF_SIZE`.
const BULK_SIZE: usize = 64 * 1024;
/// Stack buffer for a quiet direction's first read, before its buffer
/// exists; a burst that fills it gets `BUF_SIZE` at once.
const PROBE_SIZE: usize = 2 * 1024;
/// How long to wait for the other side's close frame once one side closed,
/// or for close replies after the proxy closed both sides.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long to flush what is queued and shut both sockets down.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How long to read and discard what peers still send after shutdown, so
/// that closing a socket with unread input does not reset the connection
/// (and destroy the close frame just sent).
const LINGER: Duration = Duration::from_secs(2);
/// Payload prefix of the proxy's own pings.
const PING_PREFIX: &[u8] = b"switchyard";
/// Payload length of the proxy's pings: the prefix and 8 hex digits.
const PING_LEN: usize = PING_PREFIX.len() + 8;
/// Index of the pong class in the per-opcode counters.
const PONG_CLASS: usize = match opcode_class(OP_PONG) {
    Some(c) => c,
    None => 5,
};

/// How a session is relayed (from the route's configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelaySettings {
    /// No frame in either direction for this long: close both sides (1001).
    pub idle_timeout: Option<Duration>,
    /// Ping the client this often; a missing pong ends the session.
    pub ping_interval: Option<Duration>,
    /// Largest message (sum of its frames' payloads) either way; larger: 1009.
    pub max_message_bytes: Option<u64>,
    /// An extension was negotiated, so RSV bits are allowed.
    pub extensions: bool,
}

/// What happened in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Frames relayed, by direction (see [`crate::metrics::DIRECTIONS`]) and
    /// opcode class (see [`crate::metrics::OPCODES`]). Frames the proxy made
    /// up (its pings and closes) and pongs it consumed are not counted.
    pub frames: [[u64; 6]; 2],
    /// Bytes relayed, by direction, counted like `frames`.
    pub bytes: [u64; 2],
    /// Code of the client's close frame, if it sent one (1005: no code).
    pub client_close: Option<u16>,
    /// Code of the backend's close frame, if it sent one (1005: no code).
    pub upstream_close: Option<u16>,
    /// Why the session ended.
    pub end: RelayEnd,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// A close frame went one way and (usually) its reply the other.
    CloseHandshake,
    /// The client disconnected (or failed) without a close frame.
    ClientGone,
    /// The backend disconnected (or failed) without a close frame.
    UpstreamGone,
    /// A side broke the protocol; both were closed with this code.
    ProtocolError(u16),
    /// A message exceeded `max_message_bytes`; both sides got 1009.
    MessageTooBig,
    /// Nothing was relayed for `idle_timeout`; both sides got 1001.
    Idle,
    /// The client did not answer the proxy's ping in time.
    PingTimeout,
    /// The proxy is shutting down; both sides got 1001.
    Shutdown,
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
pub fn relay<'a, C, U>(
    mut client: C,
    mut upstream: U,
    settings: &'a RelaySettings,
    metrics: &'a RouteMetrics,
    shutdown: CancellationToken,
) -> impl Future<Output = RelayOutcome> + use<'a, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // Not an `async fn`: that would copy its arguments into the future's
    // state a second time, and this state sits in every open session.
    async move {
        let mut s = Session::new(settings);
        let plan = s
            .run(&mut client, &mut upstream, settings, metrics, &shutdown)
            .await;
        s.terminate(&plan, &mut client, &mut upstream, metrics)
            .await;
        for (half, m) in s.halves.iter_mut().zip(&metrics.ws) {
            half.publish(m);
        }
        let outcome = RelayOutcome {
            frames: [s.halves[0].frames, s.halves[1].frames],
            bytes: [s.halves[0].bytes, s.halves[1].bytes],
            client_close: s.halves[0].close_seen,
            upstream_close: s.halves[1].close_seen,
            end: plan.end,
        };
        tracing::debug!(?outcome, "WebSocket relay ended");
        outcome
    }
}

/// Something one direction needs the session to decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HalfEvent {
    /// A close frame from the source was walked (and queued, if forwarding).
    Close,
    /// The source broke the protocol.
    Violation(FrameError),
    /// The source reached end of stream.
    Eof,
    /// Reading the source failed.
    ReadError,
    /// Writing the destination failed.
    WriteError,
}

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

/// What a direction does with its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Read, walk and pass bytes on.
    Forward,
    /// Read and walk without passing anything on, until a close frame.
    Discard,
    /// Leave the source alone.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InjectKind {
    /// The proxy's ping to the client.
    Ping,
    /// A client pong held back in case it answered the proxy's ping, and
    /// passed on after all.
    Pong,
    /// The proxy's close frame.
    Close,
}

/// A frame the proxy writes into a stream between relayed frames.
struct Injection {
    frame: ControlFrame,
    written: usize,
    kind: InjectKind,
}

impl Injection {
    fn boxed(frame: ControlFrame, kind: InjectKind) -> Box<Self> {
        Box::new(Self::new(frame, kind))
    }

    fn new(frame: ControlFrame, kind: InjectKind) -> Self {
        Injection {
            frame,
            written: 0,
            kind,
        }
    }
}

/// State both directions touch.
struct Shared {
    /// Pings are on: client pongs that may answer one are held back.
    consume_pongs: bool,
    ping_seq: u32,
    /// The ping awaiting its pong.
    ping_outstanding: Option<u32>,
    /// That ping has been written.
    ping_written: bool,
    /// When bytes were last relayed either way.
    last_activity: Instant,
}

impl Shared {
    /// Whether `payload` is a pong to one of our pings (then it is not
    /// passed on); clears the outstanding ping if it answers that one.
    fn take_pong(&mut self, payload: &[u8]) -> bool {
        if payload.len() != PING_LEN || !payload.starts_with(PING_PREFIX) {
            return false;
        }
        if let Some(seq) = self.ping_outstanding
            && payload == ping_payload(seq)
        {
            self.ping_outstanding = None;
            self.ping_written = false;
        }
        true
    }
}

fn ping_payload(seq: u32) -> [u8; PING_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut p = [0; PING_LEN];
    p[..PING_PREFIX.len()].copy_from_slice(PING_PREFIX);
    for (i, b) in p[PING_PREFIX.len()..].iter_mut().enumerate() {
        *b = HEX[((seq >> (28 - 4 * i)) & 0xF) as usize];
    }
    p
}

/// One direction: a source it reads and walks, a destination it writes.
///
/// Buffer layout: `buf[..filled]` holds what was read; the walker has seen
/// `buf[..parsed]`; `buf[out_start..out_end]` is being written; `buf[fwd..]`
/// has not been queued for writing yet. Between `fwd` and `parsed` there is at
/// most an incomplete frame header, held back so the destination is never
/// left inside a header.
struct Half {
    dir: Direction,
    walker: FrameWalker,
    buf: Vec<u8>,
    filled: usize,
    parsed: usize,
    fwd: usize,
    out_start: usize,
    out_end: usize,
    /// Once `buf[out_start..out_end]` is written the destination stream is
    /// between frames.
    out_boundary: bool,
    /// Dropping the current frame's bytes (a pong that may be ours).
    skipping: bool,
    /// Hold back a close frame from the source instead of passing it on.
    swallow_close: bool,
    /// A ping or a passed-on pong to write at the next boundary.
    // Boxed: rare (pings, closes), and inline they would sit in every idle
    // session's state.
    inject: Option<Box<Injection>>,
    /// The proxy's close frame to write at the next boundary.
    close: Option<Box<Injection>>,
    mode: Mode,
    need_flush: bool,
    want_shutdown: bool,
    shut_done: bool,
    dst_broken: bool,
    /// The source ended (EOF or error).
    src_done: bool,
    /// A close frame was relayed or queued to the destination.
    dst_closed: bool,
    /// The source's close frame: its code (1005 without one).
    close_seen: Option<u16>,
    frames: [u64; 6],
    bytes: u64,
    unpublished_frames: [u64; 6],
    unpublished_bytes: u64,
}

impl Half {
    fn new(dir: Direction, settings: &RelaySettings) -> Self {
        Half {
            dir,
            walker: FrameWalker::new(dir, settings.extensions, settings.max_message_bytes),
            buf: Vec::new(),
            filled: 0,
            parsed: 0,
            fwd: 0,
            out_start: 0,
            out_end: 0,
            out_boundary: true,
            skipping: false,
            swallow_close: false,
            inject: None,
            close: None,
            mode: Mode::Forward,
            need_flush: false,
            want_shutdown: false,
            shut_done: false,
            dst_broken: false,
            src_done: false,
            dst_closed: false,
            close_seen: None,
            frames: [0; 6],
            bytes: 0,
            unpublished_frames: [0; 6],
            unpublished_bytes: 0,
        }
    }

    /// Nothing left to write (injections that wait for a boundary that will
    /// never come count as done).
    fn output_idle(&self) -> bool {
        self.out_start == self.out_end
            && (!self.out_boundary || (self.inject.is_none() && self.close.is_none()))
    }

    fn flushed(&self) -> bool {
        self.dst_broken || (self.output_idle() && !self.need_flush)
    }

    /// The destination failed: drop everything queued for it.
    fn broken(&mut self) -> HalfEvent {
        self.dst_broken = true;
        self.out_start = self.out_end;
        self.inject = None;
        self.close = None;
        self.need_flush = false;
        if self.mode == Mode::Forward {
            self.mode = Mode::Off;
        }
        HalfEvent::WriteError
    }

    fn count(&mut self, class: usize) {
        self.frames[class] += 1;
        self.unpublished_frames[class] += 1;
    }

    fn publish(&mut self, m: &WsDirectionMetrics) {
        for (counter, n) in m.frames.iter().zip(self.unpublished_frames.iter_mut()) {
            if *n > 0 {
                counter.increment(*n);
                *n = 0;
            }
        }
        if self.unpublished_bytes > 0 {
            m.bytes.increment(self.unpublished_bytes);
            self.unpublished_bytes = 0;
        }
    }

    /// Queues `buf[from..to]` for writing.
    fn queue(&mut self, from: usize, to: usize, sh: &mut Shared) {
        if to > from {
            self.out_start = from;
            self.out_end = to;
            sh.last_activity = Instant::now();
        }
    }

    /// Drives this direction as far as it goes without blocking.
    fn poll<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        sh: &mut Shared,
        m: &WsDirectionMetrics,
    ) -> Poll<HalfEvent>
    where
        S: AsyncRead + Unpin + ?Sized,
        D: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if !self.dst_broken {
                // 1. Relayed bytes.
                if self.out_start < self.out_end {
                    let bytes = &self.buf[self.out_start..self.out_end];
                    match Pin::new(&mut *dst).poll_write(cx, bytes) {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            self.out_start += n;
                            self.bytes += n as u64;
                            self.unpublished_bytes += n as u64;
                            self.need_flush = true;
                            continue;
                        }
                        Poll::Ready(_) => return Poll::Ready(self.broken()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                // 2. The proxy's own frames, only between frames.
                if self.out_boundary {
                    let slot = if self.inject.is_some() {
                        &mut self.inject
                    } else {
                        &mut self.close
                    };
                    if let Some(inj) = slot {
                        match poll_injection(cx, dst, inj) {
                            Poll::Ready(Ok(done)) => {
                                self.need_flush = true;
                                if done {
                                    let len = inj.frame.len() as u64;
                                    match inj.kind {
                                        InjectKind::Ping => sh.ping_written = true,
                                        InjectKind::Pong => {
                                            self.bytes += len;
                                            self.unpublished_bytes += len;
                                        }
                                        InjectKind::Close => {}
                                    }
                                    *slot = None;
                                }
                                continue;
                            }
                            Poll::Ready(Err(_)) => return Poll::Ready(self.broken()),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                }
                // 3. Shutdown, once everything is out.
                if self.want_shutdown && !self.shut_done && self.output_idle() {
                    match Pin::new(&mut *dst).poll_shutdown(cx) {
                        Poll::Ready(_) => {
                            self.shut_done = true;
                            self.need_flush = false;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            // 4. The source.
            if self.mode == Mode::Off {
                return match self.poll_flush(cx, dst) {
                    Poll::Ready(Err(())) => Poll::Ready(self.broken()),
                    _ => Poll::Pending,
                };
            }
            if self.parsed < self.filled {
                let event = match self.mode {
                    Mode::Forward => self.walk_forward(sh),
                    _ => self.walk_discard(),
                };
                if let Some(event) = event {
                    return Poll::Ready(event);
                }
                continue;
            }
            self.publish(m);
            self.compact();
            match self.poll_read(cx, src) {
                Poll::Ready(Ok(0)) => {
                    self.src_done = true;
                    self.mode = Mode::Off;
                    return Poll::Ready(HalfEvent::Eof);
                }
                Poll::Ready(Ok(n)) => self.filled += n,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(direction = ?self.dir, error = %e, "WebSocket read failed");
                    self.src_done = true;
                    self.mode = Mode::Off;
                    return Poll::Ready(HalfEvent::ReadError);
                }
                Poll::Pending => {
                    if self.filled == 0 && !self.buf.is_empty() {
                        // Everything read was passed on and nothing is
                        // held back: a quiet direction keeps no buffer.
                        self.buf = Vec::new();
                    }
                    return match self.poll_flush(cx, dst) {
                        Poll::Ready(Err(())) => Poll::Ready(self.broken()),
                        _ => Poll::Pending,
                    };
                }
            }
        }
    }

    fn poll_flush<D>(&mut self, cx: &mut Context<'_>, dst: &mut D) -> Poll<Result<(), ()>>
    where
        D: AsyncWrite + Unpin + ?Sized,
    {
        if !self.need_flush || self.dst_broken {
            return Poll::Ready(Ok(()));
        }
        match ready!(Pin::new(dst).poll_flush(cx)) {
            Ok(()) => {
                self.need_flush = false;
                Poll::Ready(Ok(()))
            }
            Err(_) => Poll::Ready(Err(())),
        }
    }

    /// Queues a close frame for the destination, masked if it goes to the
    /// backend. A close can go only where the stream is between frames;
    /// otherwise (or when the destination is gone) the socket is just shut
    /// down later. Returns whether it was queued.
    fn queue_close(&mut self, code: u16) -> bool {
        if !self.out_boundary || self.dst_broken || self.dst_closed {
            return false;
        }
        let mask = self.dir.masked().then(random_mask);
        self.close = Some(Injection::boxed(
            ControlFrame::close(code, "", mask),
            InjectKind::Close,
        ));
        self.dst_closed = true;
        true
    }

    /// Moves a held-back partial header to the front of the buffer.
    fn compact(&mut self) {
        if self.fwd > 0 {
            self.buf.copy_within(self.fwd..self.filled, 0);
            self.filled -= self.fwd;
            self.parsed -= self.fwd;
            self.fwd = 0;
        }
        self.out_start = 0;
        self.out_end = 0;
    }

    fn poll_read<S>(&mut self, cx: &mut Context<'_>, src: &mut S) -> Poll<io::Result<usize>>
    where
        S: AsyncRead + Unpin + ?Sized,
    {
        if self.buf.is_empty() {
            // No buffer (the direction is quiet): read into the stack and
            // allocate only if something arrived. A small message gets a
            // small buffer; a full probe means more is coming.
            // Uninitialised: zeroing 2 KiB per burst shows in profiles.
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); PROBE_SIZE];
            let mut rb = ReadBuf::uninit(&mut probe);
            ready!(Pin::new(src).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if !got.is_empty() {
                // A small message gets a buffer just past its size; one
                // that fills the probe is bulk data (and the buffer grows
                // further below while bursts keep filling it).
                self.buf = super::burst_buffer(got, PROBE_SIZE, BUF_SIZE);
            }
            return Poll::Ready(Ok(got.len()));
        }
        if self.filled >= self.buf.len() {
            // Cannot happen: at most a 13-byte header is ever held back.
            return Poll::Ready(Err(io::Error::other("relay buffer full")));
        }
        let mut rb = ReadBuf::new(&mut self.buf[self.filled..]);
        ready!(Pin::new(src).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if self.filled + n == self.buf.len() && self.buf.len() < BULK_SIZE {
            // The buffer filled up: bulk data, take a bigger one (it goes
            // when the direction is quiet again).
            let size = if self.buf.len() < BUF_SIZE {
                BUF_SIZE
            } else {
                BULK_SIZE
            };
            self.buf.resize(size, 0);
        }
        Poll::Ready(Ok(n))
    }

    /// A pong from the client that may answer the proxy's ping.
    fn maybe_our_pong(&self, header: &super::frame::FrameHeader, sh: &Shared) -> bool {
        self.dir == Direction::ClientToUpstream
            && sh.consume_pongs
            && header.opcode == OP_PONG
            && header.payload_len == PING_LEN as u64
    }

    /// Walks what was read, queueing the bytes to pass on. Stops early where
    /// something must be written or decided first.
    fn walk_forward(&mut self, sh: &mut Shared) -> Option<HalfEvent> {
        let mut pos = self.parsed;
        while let Some(step) = self.walker.next(&self.buf[..self.filled], &mut pos) {
            match step {
                Step::Header {
                    header,
                    start,
                    carried,
                } => {
                    if self.maybe_our_pong(&header, sh)
                        || (self.swallow_close && header.opcode == OP_CLOSE)
                    {
                        // Pass on what precedes it; hold the pong (or a
                        // close the proxy replaces with its own) back.
                        let frame_start = start.saturating_sub(carried).max(self.fwd);
                        self.queue(self.fwd, frame_start, sh);
                        self.fwd = pos;
                        self.parsed = pos;
                        self.skipping = true;
                        self.out_boundary = true;
                        return None;
                    }
                    self.count(header.opcode_class());
                }
                Step::End { header } => {
                    if self.skipping && header.opcode == OP_CLOSE {
                        // Swallowed: the proxy sends its own close instead.
                        self.skipping = false;
                        self.close_seen = Some(self.walker.close_code().unwrap_or(CLOSE_NO_STATUS));
                        self.fwd = pos;
                        self.parsed = pos;
                        self.out_boundary = true;
                        self.mode = Mode::Off;
                        return Some(HalfEvent::Close);
                    }
                    if self.skipping {
                        self.skipping = false;
                        self.fwd = pos;
                        if !sh.take_pong(self.walker.control_payload())
                            && let Some(frame) = self.walker.reencode_control()
                        {
                            // Not ours after all: pass it on unchanged.
                            self.count(PONG_CLASS);
                            self.inject = Some(Injection::boxed(frame, InjectKind::Pong));
                            self.parsed = pos;
                            return None;
                        }
                        continue;
                    }
                    if header.opcode == OP_CLOSE {
                        self.close_seen = Some(self.walker.close_code().unwrap_or(CLOSE_NO_STATUS));
                        self.queue(self.fwd, pos, sh);
                        self.fwd = pos;
                        self.parsed = pos;
                        self.out_boundary = true;
                        self.dst_closed = true;
                        // Nothing may follow a close frame.
                        self.mode = Mode::Off;
                        return Some(HalfEvent::Close);
                    }
                    if self.inject.is_some() || self.close.is_some() {
                        // A boundary: let the injection in here.
                        self.queue(self.fwd, pos, sh);
                        self.fwd = pos;
                        self.parsed = pos;
                        self.out_boundary = true;
                        return None;
                    }
                }
                Step::Invalid {
                    error,
                    start,
                    carried,
                } => {
                    let frame_start = start.saturating_sub(carried).max(self.fwd);
                    self.queue(self.fwd, frame_start, sh);
                    self.fwd = frame_start;
                    self.parsed = pos;
                    self.out_boundary = true;
                    self.mode = Mode::Off;
                    return Some(HalfEvent::Violation(error));
                }
            }
        }
        self.parsed = self.filled;
        if self.skipping {
            self.fwd = self.filled;
        } else {
            let end = self
                .filled
                .saturating_sub(self.walker.pending_header_len())
                .max(self.fwd);
            self.queue(self.fwd, end, sh);
            self.fwd = end;
            self.out_boundary = !self.walker.in_payload();
        }
        None
    }

    /// Walks what was read without passing it on, looking for a close frame.
    fn walk_discard(&mut self) -> Option<HalfEvent> {
        let mut pos = self.parsed;
        while let Some(step) = self.walker.next(&self.buf[..self.filled], &mut pos) {
            match step {
                Step::End { header } if header.opcode == OP_CLOSE => {
                    self.close_seen = Some(self.walker.close_code().unwrap_or(CLOSE_NO_STATUS));
                    self.mode = Mode::Off;
                    self.parsed = pos;
                    self.fwd = pos;
                    return Some(HalfEvent::Close);
                }
                Step::Invalid { error, .. } => {
                    self.mode = Mode::Off;
                    self.parsed = pos;
                    self.fwd = pos;
                    return Some(HalfEvent::Violation(error));
                }
                _ => {}
            }
        }
        self.parsed = self.filled;
        self.fwd = self.filled;
        None
    }
}

/// Writes more of an injected frame; `Ok(true)` once all of it is out.
fn poll_injection<D>(
    cx: &mut Context<'_>,
    dst: &mut D,
    inj: &mut Injection,
) -> Poll<io::Result<bool>>
where
    D: AsyncWrite + Unpin + ?Sized,
{
    let bytes = &inj.frame.as_bytes()[inj.written..];
    let n = ready!(Pin::new(dst).poll_write(cx, bytes))?;
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    inj.written += n;
    Poll::Ready(Ok(inj.written >= inj.frame.len()))
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

/// How to end a session.
#[derive(Debug, Clone, Copy)]
struct Plan {
    to_client: Option<u16>,
    to_upstream: Option<u16>,
    await_replies: bool,
    /// The client broke the protocol: close the backend first and pass on
    /// what it still sends (echoes of earlier messages, its close reply)
    /// before the client gets its close.
    upstream_first: bool,
    end: RelayEnd,
}

impl Plan {
    fn graceful() -> Self {
        Plan {
            to_client: None,
            to_upstream: None,
            await_replies: false,
            upstream_first: false,
            end: RelayEnd::CloseHandshake,
        }
    }

    fn violation(error: FrameError, from_client: bool) -> Self {
        let code = error.close_code();
        Plan {
            to_client: Some(code),
            to_upstream: Some(code),
            await_replies: false,
            upstream_first: from_client,
            end: if code == CLOSE_TOO_BIG {
                RelayEnd::MessageTooBig
            } else {
                RelayEnd::ProtocolError(code)
            },
        }
    }

    fn client_gone(end: RelayEnd) -> Self {
        Plan {
            to_client: None,
            to_upstream: Some(CLOSE_GOING_AWAY),
            await_replies: false,
            upstream_first: false,
            end,
        }
    }

    fn upstream_gone(end: RelayEnd, draining: bool) -> Self {
        Plan {
            to_client: Some(if draining {
                CLOSE_GOING_AWAY
            } else {
                CLOSE_INTERNAL_ERROR
            }),
            to_upstream: None,
            await_replies: false,
            upstream_first: false,
            end,
        }
    }

    /// The backend went away during a close handshake: the client has sent
    /// or been sent a close already, so its socket is just shut down.
    fn upstream_gone_closing(end: RelayEnd) -> Self {
        Plan {
            to_client: None,
            to_upstream: None,
            await_replies: false,
            upstream_first: false,
            end,
        }
    }

    fn going_away(end: RelayEnd) -> Self {
        Plan {
            to_client: Some(CLOSE_GOING_AWAY),
            to_upstream: Some(CLOSE_GOING_AWAY),
            await_replies: true,
            upstream_first: false,
            end,
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

struct Session {
    /// Client→upstream, upstream→client.
    halves: [Half; 2],
    shared: Shared,
    /// Which direction the pump polls first (alternates, for fairness).
    turn: usize,
}

impl Session {
    fn new(settings: &RelaySettings) -> Self {
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
    async fn run<C, U>(
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio::time::timeout;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

    use super::*;
    use crate::metrics::Metrics;
    use crate::websocket::frame::{OP_BINARY, OP_CONTINUATION, OP_PING, OP_TEXT, apply_mask};

    /// Bound on every wait in these tests.
    const WAIT: Duration = Duration::from_secs(10);
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    type Ws = WebSocketStream<TcpStream>;

    /// Reads an HTTP head byte by byte, so nothing after it is consumed.
    async fn read_head(s: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert!(head.len() < 8192, "head too long");
            let n = s.read(&mut b).await.expect("read head");
            assert_eq!(n, 1, "EOF in head");
            head.push(b[0]);
        }
        String::from_utf8(head).expect("utf-8 head")
    }

    fn request() -> String {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    }

    /// The proxy's side of a client handshake: reads the request, answers 101.
    async fn answer_upgrade(s: &mut TcpStream) {
        let head = read_head(s).await;
        let key = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .expect("Sec-WebSocket-Key");
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        s.write_all(resp.as_bytes()).await.expect("write 101");
    }

    /// A connected pair of sockets: (connecting side, accepted side).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    /// A tungstenite client, and the proxy's end of its connection.
    async fn ws_client() -> (Ws, TcpStream) {
        let (tcp, mut proxy_side) = tcp_pair().await;
        let connect = tokio_tungstenite::client_async("ws://x/", tcp);
        let (ws, ()) = timeout(WAIT, async {
            tokio::join!(connect, answer_upgrade(&mut proxy_side))
        })
        .await
        .expect("handshake in time");
        (ws.expect("client handshake").0, proxy_side)
    }

    /// A raw client that did its handshake by hand, and the proxy's end.
    async fn raw_client() -> (TcpStream, TcpStream) {
        let (mut raw, mut proxy_side) = tcp_pair().await;
        let client = async {
            raw.write_all(request().as_bytes()).await.expect("request");
            read_head(&mut raw).await
        };
        let (head, ()) = timeout(WAIT, async {
            tokio::join!(client, answer_upgrade(&mut proxy_side))
        })
        .await
        .expect("handshake in time");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        (raw, proxy_side)
    }

    /// A tungstenite server running `behaviour` (which returns what it
    /// received), and the proxy's upgraded connection to it.
    async fn backend<F, Fut>(behaviour: F) -> (TcpStream, JoinHandle<Vec<Message>>)
    where
        F: FnOnce(Ws) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Message>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let ws = tokio_tungstenite::accept_async(s)
                .await
                .expect("server handshake");
            behaviour(ws).await
        });
        let mut up = TcpStream::connect(addr).await.expect("connect");
        up.write_all(request().as_bytes()).await.expect("request");
        let head = timeout(WAIT, read_head(&mut up))
            .await
            .expect("101 in time");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        (up, task)
    }

    fn fragment(op: Data, fin: bool, text: &'static str) -> Message {
        Message::Frame(Frame::message(text, OpCode::Data(op), fin))
    }

    /// Echoes data messages and records everything received. On
    /// "fragments please" it sends a fragmented message with a ping inside.
    async fn echo(mut ws: Ws) -> Vec<Message> {
        let mut seen = Vec::new();
        while let Ok(Some(Ok(msg))) = timeout(WAIT, ws.next()).await {
            seen.push(msg.clone());
            let replies = match msg {
                Message::Text(t) if t.as_str() == "fragments please" => vec![
                    fragment(Data::Text, false, "one "),
                    Message::Ping("bp".into()),
                    fragment(Data::Continue, false, "two "),
                    fragment(Data::Continue, true, "three"),
                ],
                Message::Text(_) | Message::Binary(_) => vec![msg],
                _ => Vec::new(),
            };
            for reply in replies {
                if ws.send(reply).await.is_err() {
                    return seen;
                }
            }
        }
        seen
    }

    /// Records everything received, sends nothing of its own.
    async fn record(mut ws: Ws) -> Vec<Message> {
        let mut seen = Vec::new();
        while let Ok(Some(Ok(msg))) = timeout(WAIT, ws.next()).await {
            seen.push(msg);
        }
        seen
    }

    struct Running {
        task: JoinHandle<RelayOutcome>,
        metrics: Arc<Metrics>,
        token: CancellationToken,
    }

    fn start<C, U>(client: C, upstream: U, settings: RelaySettings) -> Running
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = Metrics::new();
        let route = RouteMetrics::new(&metrics, "s", "r");
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move { relay(client, upstream, &settings, &route, t).await });
        Running {
            task,
            metrics,
            token,
        }
    }

    async fn outcome(task: JoinHandle<RelayOutcome>) -> RelayOutcome {
        timeout(WAIT, task)
            .await
            .expect("relay ends in time")
            .expect("relay task")
    }

    async fn received(task: JoinHandle<Vec<Message>>) -> Vec<Message> {
        timeout(WAIT, task)
            .await
            .expect("backend ends in time")
            .expect("backend task")
    }

    /// The next data or close message, and the pings and pongs before it.
    async fn next_data(ws: &mut Ws) -> (Vec<Message>, Message) {
        let mut control = Vec::new();
        loop {
            let msg = timeout(WAIT, ws.next())
                .await
                .expect("message in time")
                .expect("stream open")
                .expect("message");
            match msg {
                Message::Ping(_) | Message::Pong(_) => control.push(msg),
                other => return (control, other),
            }
        }
    }

    /// Everything received until the stream ends; then the client closes
    /// its socket, as real clients do.
    async fn drain(mut ws: Ws) -> Vec<Message> {
        let mut seen = Vec::new();
        while let Some(Ok(msg)) = timeout(WAIT, ws.next()).await.expect("stream ends in time") {
            seen.push(msg);
        }
        seen
    }

    fn close_code(msg: &Message) -> Option<u16> {
        match msg {
            Message::Close(Some(f)) => Some(u16::from(f.code)),
            _ => None,
        }
    }

    /// Length on the wire of a frame with `payload` bytes.
    fn wire(payload: usize, masked: bool) -> u64 {
        let header = match payload {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        };
        (payload + header + if masked { 4 } else { 0 }) as u64
    }

    /// A masked frame as a client sends it.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&MASK);
        let at = f.len();
        f.extend_from_slice(payload);
        apply_mask(&mut f[at..], MASK, 0);
        f
    }

    /// Splits a stream into (opcode, unmasked payload) frames.
    fn parse(bytes: &[u8], dir: Direction) -> Vec<(u8, Vec<u8>)> {
        let mut walker = FrameWalker::new(dir, true, None);
        let mut pos = 0;
        let mut body = 0;
        let mut frames = Vec::new();
        while let Some(step) = walker.next(bytes, &mut pos) {
            match step {
                Step::Header { .. } => body = pos,
                Step::End { header } => {
                    let mut p = bytes[body..pos].to_vec();
                    if header.masked {
                        apply_mask(&mut p, header.mask, 0);
                    }
                    frames.push((header.opcode, p));
                }
                Step::Invalid { error, .. } => panic!("bad frame: {error}"),
            }
        }
        assert!(walker.at_boundary(), "stream ends between frames");
        frames
    }

    /// Reads a raw socket to its end and splits it into frames.
    async fn read_frames(raw: &mut TcpStream, dir: Direction) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        // A reset ends the stream too; what arrived before it is kept.
        let _ = timeout(WAIT, raw.read_to_end(&mut all))
            .await
            .expect("EOF in time");
        parse(&all, dir)
    }

    fn metric(text: &str, needles: &[&str]) -> Option<u64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| needles.iter().all(|n| l.contains(n)))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }

    #[tokio::test]
    async fn echoes_every_length_class_and_counts_it() {
        let (mut ws, proxy_side) = ws_client().await;
        let (upstream, backend) = backend(echo).await;
        let run = start(proxy_side, upstream, RelaySettings::default());
        let sizes = [0usize, 125, 126, 65535, 65536, 1 << 20];
        for &n in &sizes {
            let text = "t".repeat(n);
            ws.send(Message::text(text.clone()))
                .await
                .expect("send text");
            assert_eq!(next_data(&mut ws).await, (vec![], Message::text(text)));
            let bin = vec![(n % 251) as u8; n];
            ws.send(Message::binary(bin.clone()))
                .await
                .expect("send binary");
            assert_eq!(next_data(&mut ws).await, (vec![], Message::binary(bin)));
        }
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        };
        ws.close(Some(bye)).await.expect("close");
        let rest = drain(ws).await;
        assert_eq!(
            rest.iter().map(close_code).collect::<Vec<_>>(),
            [Some(1000)]
        );

        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::CloseHandshake);
        assert_eq!(
            (out.client_close, out.upstream_close),
            (Some(1000), Some(1000))
        );
        // continuation, text, binary, close, ping, pong
        assert_eq!(out.frames, [[0, 6, 6, 1, 0, 0], [0, 6, 6, 1, 0, 0]]);
        let data = |masked| sizes.iter().map(|&n| 2 * wire(n, masked)).sum::<u64>();
        let close = 2 + "done".len();
        assert_eq!(
            out.bytes,
            [
                data(true) + wire(close, true),
                data(false) + wire(close, false)
            ]
        );

        let text = run.metrics.render();
        for (d, dir) in crate::metrics::DIRECTIONS.iter().enumerate() {
            let dir = format!("direction=\"{dir}\"");
            for (c, op) in crate::metrics::OPCODES.iter().enumerate() {
                let op = format!("opcode=\"{op}\"");
                let got = metric(&text, &["switchyard_websocket_frames_total{", &dir, &op]);
                assert_eq!(got.unwrap_or(0), out.frames[d][c], "{dir} {op}");
            }
            let got = metric(&text, &["switchyard_websocket_bytes_total{", &dir]);
            assert_eq!(got, Some(out.bytes[d]), "{dir} bytes");
        }

        let seen = received(backend).await;
        assert_eq!(seen.len(), 13);
        assert_eq!(close_code(&seen[12]), Some(1000));
    }

    #[tokio::test]
    async fn relays_fragmented_messages_with_pings_in_between() {
        let (mut ws, proxy_side) = ws_client().await;
        let (upstream, backend) = backend(echo).await;
        let run = start(proxy_side, upstream, RelaySettings::default());

        for m in [
            fragment(Data::Text, false, "frag-1 "),
            Message::Ping("p1".into()),
            fragment(Data::Continue, false, "frag-2 "),
            Message::Ping("p2".into()),
            fragment(Data::Continue, true, "end"),
        ] {
            ws.send(m).await.expect("send");
        }
        let (control, data) = next_data(&mut ws).await;
        assert_eq!(
            control,
            [Message::Pong("p1".into()), Message::Pong("p2".into())]
        );
        assert_eq!(data, Message::text("frag-1 frag-2 end"));

        ws.send(Message::text("fragments please"))
            .await
            .expect("send");
        let (control, data) = next_data(&mut ws).await;
        assert_eq!(control, [Message::Ping("bp".into())]);
        assert_eq!(data, Message::text("one two three"));

        ws.close(None).await.expect("close");
        let rest = drain(ws).await;
        assert!(matches!(rest.as_slice(), [Message::Close(_)]), "{rest:?}");

        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::CloseHandshake);
        assert_eq!(
            (out.client_close, out.upstream_close),
            (Some(1005), Some(1005))
        );
        // continuation, text, binary, close, ping, pong
        assert_eq!(out.frames[0], [2, 2, 0, 1, 2, 1]);
        assert_eq!(out.frames[1], [2, 2, 0, 1, 1, 2]);

        let seen = received(backend).await;
        assert_eq!(
            seen,
            [
                Message::Ping("p1".into()),
                Message::Ping("p2".into()),
                Message::text("frag-1 frag-2 end"),
                Message::text("fragments please"),
                Message::Pong("bp".into()),
                Message::Close(None),
            ]
        );
    }

    #[tokio::test]
    async fn backend_close_code_reaches_the_client() {
        let (ws, proxy_side) = ws_client().await;
        let (upstream, backend) = backend(|mut ws: Ws| async move {
            let bye = CloseFrame {
                code: CloseCode::from(4001),
                reason: "bye".into(),
            };
            ws.close(Some(bye)).await.expect("backend close");
            record(ws).await
        })
        .await;
        let run = start(proxy_side, upstream, RelaySettings::default());

        let seen = drain(ws).await;
        assert_eq!(seen.len(), 1);
        match &seen[0] {
            Message::Close(Some(f)) => {
                assert_eq!((u16::from(f.code), f.reason.as_str()), (4001, "bye"))
            }
            other => panic!("expected a close, got {other:?}"),
        }
        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::CloseHandshake);
        assert_eq!(
            (out.upstream_close, out.client_close),
            (Some(4001), Some(4001))
        );
        assert_eq!(out.frames, [[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0]]);
        let seen = received(backend).await;
        assert_eq!(
            seen.iter().map(close_code).collect::<Vec<_>>(),
            [Some(4001)]
        );
    }

    #[tokio::test]
    async fn unmasked_client_frame_closes_both_sides_with_1002() {
        let (mut raw, proxy_side) = raw_client().await;
        let (upstream, backend) = backend(record).await;
        let run = start(proxy_side, upstream, RelaySettings::default());

        let mut bytes = masked(0x80 | OP_TEXT, b"ok");
        bytes.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        raw.write_all(&bytes).await.expect("write");
        let frames = read_frames(&mut raw, Direction::UpstreamToClient).await;
        assert_eq!(frames, [(OP_CLOSE, 1002u16.to_be_bytes().to_vec())]);
        drop(raw);

        let seen = received(backend).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], Message::text("ok"));
        assert_eq!(close_code(&seen[1]), Some(1002));
        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::ProtocolError(1002));
        assert_eq!(out.frames[0], [0, 1, 0, 0, 0, 0]);
        // The backend's close reply is held back: the client gets the
        // proxy's 1002.
        assert_eq!(out.bytes, [wire(2, true), 0]);
        assert_eq!(out.upstream_close, Some(1002));
        assert_eq!(out.client_close, None);
    }

    #[tokio::test]
    async fn oversized_message_closes_both_sides_with_1009() {
        let (mut ws, proxy_side) = ws_client().await;
        let (upstream, backend) = backend(echo).await;
        let settings = RelaySettings {
            max_message_bytes: Some(1000),
            ..RelaySettings::default()
        };
        let run = start(proxy_side, upstream, settings);

        ws.send(Message::binary(vec![1; 1000])).await.expect("send");
        assert_eq!(next_data(&mut ws).await.1, Message::binary(vec![1; 1000]));
        ws.send(Message::binary(vec![2; 1001])).await.expect("send");
        let (_, close) = next_data(&mut ws).await;
        assert_eq!(close_code(&close), Some(1009));
        drain(ws).await;

        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::MessageTooBig);
        assert_eq!(out.frames[0], [0, 0, 1, 0, 0, 0]);
        let seen = received(backend).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(close_code(&seen[1]), Some(1009));
    }

    #[tokio::test]
    async fn idle_session_is_closed_with_1001() {
        let (mut ws, proxy_side) = ws_client().await;
        let (upstream, backend) = backend(echo).await;
        let settings = RelaySettings {
            idle_timeout: Some(Duration::from_millis(300)),
            ..RelaySettings::default()
        };
        let run = start(proxy_side, upstream, settings);

        ws.send(Message::text("hi")).await.expect("send");
        assert_eq!(next_data(&mut ws).await.1, Message::text("hi"));
        let rest = drain(ws).await;
        assert_eq!(
            rest.iter().map(close_code).collect::<Vec<_>>(),
            [Some(1001)]
        );

        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::Idle);
        // Both sides answered the proxy's close.
        assert_eq!(
            (out.client_close, out.upstream_close),
            (Some(1001), Some(1001))
        );
        assert_eq!(out.frames, [[0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]);
        let seen = received(backend).await;
        assert_eq!(
            seen.iter().map(close_code).collect::<Vec<_>>(),
            [None, Some(1001)]
        );
    }

    #[tokio::test]
    async fn silent_client_times_out_on_ping() {
        let (mut raw, proxy_side) = raw_client().await;
        let (upstream, backend) = backend(record).await;
        let settings = RelaySettings {
            ping_interval: Some(Duration::from_millis(100)),
            ..RelaySettings::default()
        };
        let run = start(proxy_side, upstream, settings);

        // The backend is told the client went away, and its connection ends.
        let seen = received(backend).await;
        assert_eq!(
            seen.iter().map(close_code).collect::<Vec<_>>(),
            [Some(1001)]
        );
        // The client got the proxy's ping (unanswered), then the socket closed.
        let frames = read_frames(&mut raw, Direction::UpstreamToClient).await;
        assert!(!frames.is_empty());
        for (op, payload) in &frames {
            assert_eq!(*op, OP_PING);
            assert!(
                payload.starts_with(b"switchyard") && payload.len() == 18,
                "{payload:?}"
            );
        }
        drop(raw);
        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::PingTimeout);
        assert_eq!(out.frames, [[0; 6]; 2]);
        assert_eq!(out.bytes, [0, 0]);
    }

    #[tokio::test]
    async fn answered_pings_keep_the_session_and_pongs_stay_at_the_proxy() {
        let (mut ws, proxy_side) = ws_client().await;
        let (upstream, backend) = backend(echo).await;
        let settings = RelaySettings {
            ping_interval: Some(Duration::from_millis(150)),
            ..RelaySettings::default()
        };
        let run = start(proxy_side, upstream, settings);

        let mut pings = 0;
        while pings < 3 {
            let msg = timeout(WAIT, ws.next()).await.expect("ping in time");
            match msg {
                Some(Ok(Message::Ping(p))) => {
                    assert!(p.starts_with(b"switchyard"), "{p:?}");
                    pings += 1;
                }
                other => panic!("expected a ping, got {other:?}"),
            }
        }
        ws.send(Message::text("still here")).await.expect("send");
        assert_eq!(next_data(&mut ws).await.1, Message::text("still here"));
        ws.close(None).await.expect("close");
        drain(ws).await;

        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::CloseHandshake);
        assert_eq!(out.frames[0], [0, 1, 0, 1, 0, 0]);
        assert_eq!(out.frames[1], [0, 1, 0, 1, 0, 0]);
        let seen = received(backend).await;
        assert_eq!(seen, [Message::text("still here"), Message::Close(None)]);
    }

    #[tokio::test]
    async fn drain_closes_both_sides_with_1001() {
        let (mut ws, proxy_side) = ws_client().await;
        let (upstream, backend) = backend(echo).await;
        let run = start(proxy_side, upstream, RelaySettings::default());

        ws.send(Message::text("x")).await.expect("send");
        assert_eq!(next_data(&mut ws).await.1, Message::text("x"));
        run.token.cancel();
        let rest = drain(ws).await;
        assert_eq!(
            rest.iter().map(close_code).collect::<Vec<_>>(),
            [Some(1001)]
        );

        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::Shutdown);
        assert_eq!(
            (out.client_close, out.upstream_close),
            (Some(1001), Some(1001))
        );
        let seen = received(backend).await;
        assert_eq!(
            seen.iter().map(close_code).collect::<Vec<_>>(),
            [None, Some(1001)]
        );
    }

    #[tokio::test]
    async fn backend_gone_sends_the_client_1011() {
        let (mut ws, proxy_side) = ws_client().await;
        let (upstream, backend) = backend(|mut ws: Ws| async move {
            // Read one message, then drop the connection without a close.
            let first = timeout(WAIT, ws.next()).await.ok().flatten();
            first.into_iter().filter_map(Result::ok).collect()
        })
        .await;
        let run = start(proxy_side, upstream, RelaySettings::default());

        ws.send(Message::text("x")).await.expect("send");
        let rest = drain(ws).await;
        assert_eq!(
            rest.iter().map(close_code).collect::<Vec<_>>(),
            [Some(1011)]
        );
        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::UpstreamGone);
        assert_eq!(out.upstream_close, None);
        assert_eq!(received(backend).await, [Message::text("x")]);
    }

    #[tokio::test]
    async fn client_gone_sends_the_backend_1001() {
        let (mut raw, proxy_side) = raw_client().await;
        let (upstream, backend) = backend(record).await;
        let run = start(proxy_side, upstream, RelaySettings::default());

        raw.write_all(&masked(0x80 | OP_TEXT, b"bye"))
            .await
            .expect("write");
        drop(raw);
        let seen = received(backend).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], Message::text("bye"));
        assert_eq!(close_code(&seen[1]), Some(1001));
        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::ClientGone);
        assert_eq!(out.client_close, None);
    }

    #[tokio::test]
    async fn pongs_split_across_reads_and_rsv_bits_with_extensions() {
        let (mut raw, proxy_side) = raw_client().await;
        let (mut backend, upstream) = tcp_pair().await;
        let settings = RelaySettings {
            ping_interval: Some(Duration::from_millis(300)),
            extensions: true,
            ..RelaySettings::default()
        };
        let run = start(proxy_side, upstream, settings);

        // The proxy's ping: 2-byte header and an 18-byte payload.
        let mut ping = [0u8; 20];
        timeout(WAIT, raw.read_exact(&mut ping))
            .await
            .expect("ping in time")
            .expect("read ping");
        assert_eq!(ping[..2], [0x80 | OP_PING, 18]);
        let pong = masked(0x80 | OP_PONG, &ping[2..]);
        // RSV1 passes when an extension was negotiated.
        let first = masked(0x80 | 0x40 | OP_TEXT, b"first");
        // Someone else's pong of the same length passes unchanged.
        let foreign = masked(0x80 | OP_PONG, &[b'x'; 18]);
        let second = masked(0x80 | OP_BINARY, b"second");

        // The pong's header is cut after 3 bytes.
        raw.write_all(&[&first[..], &pong[..3]].concat())
            .await
            .expect("write");
        let mut got = vec![0u8; first.len()];
        timeout(WAIT, backend.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, first);
        raw.write_all(&[&pong[3..], &foreign[..10]].concat())
            .await
            .expect("write");
        raw.write_all(&[&foreign[10..], &second[..]].concat())
            .await
            .expect("write");
        let mut got = vec![0u8; foreign.len() + second.len()];
        timeout(WAIT, backend.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, [&foreign[..], &second[..]].concat());

        // Close handshake, client first.
        let close = masked(0x80 | OP_CLOSE, &1000u16.to_be_bytes());
        raw.write_all(&close).await.expect("write close");
        let mut got = vec![0u8; close.len()];
        timeout(WAIT, backend.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, close);
        backend
            .write_all(&[0x88, 0x02, 0x03, 0xE8])
            .await
            .expect("reply");
        let frames = read_frames(&mut raw, Direction::UpstreamToClient).await;
        assert_eq!(frames.last(), Some(&(OP_CLOSE, vec![0x03, 0xE8])));
        let mut rest = Vec::new();
        let _ = timeout(WAIT, backend.read_to_end(&mut rest))
            .await
            .expect("EOF in time");
        assert!(rest.is_empty(), "nothing after the close: {rest:?}");
        drop((raw, backend));

        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::CloseHandshake);
        assert_eq!(out.frames[0], [0, 1, 1, 1, 0, 1]);
        assert_eq!(out.frames[1], [0, 0, 0, 1, 0, 0]);
        let sent = first.len() + foreign.len() + second.len() + close.len();
        assert_eq!(out.bytes, [sent as u64, 4]);
    }

    /// Reads from `io` until it ends.
    async fn read_all<R: AsyncRead + Unpin>(io: &mut R) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = timeout(WAIT, io.read_to_end(&mut all))
            .await
            .expect("EOF in time");
        all
    }

    #[tokio::test]
    async fn tiny_reads_forward_byte_exact_up_to_the_violation() {
        // Every read the relay makes from the client returns 1..=5 bytes,
        // so headers are split everywhere.
        let (mut client, proxy_side) = tokio::io::duplex(5);
        let (mut backend, upstream) = tokio::io::duplex(1 << 20);
        let run = start(proxy_side, upstream, RelaySettings::default());

        let frames = [
            masked(OP_TEXT, b"frag"),
            masked(0x80 | OP_PING, b"ping"),
            masked(0x80 | OP_CONTINUATION, b"ment"),
            masked(0x80 | OP_BINARY, &[7; 300]),
            masked(0x80 | OP_PONG, b""),
            masked(0x80 | OP_BINARY, &[9; 70_000]),
            masked(0x80 | OP_TEXT, b""),
        ];
        let valid = frames.concat();
        // A reserved opcode, then more bytes that must not be passed on.
        let mut all = valid.clone();
        all.extend(masked(0x80 | 0x3, b"bad"));
        all.extend(masked(0x80 | OP_TEXT, b"after"));
        let writer = async {
            // The relay stops reading at the violation; what it never reads
            // is simply left behind.
            let _ = client.write_all(&all).await;
            read_all(&mut client).await
        };
        let (to_client, to_backend) = tokio::join!(writer, read_all(&mut backend));
        assert_eq!(
            parse(&to_client, Direction::UpstreamToClient),
            [(OP_CLOSE, vec![0x03, 0xEA])]
        );
        assert!(
            to_backend.starts_with(&valid),
            "the valid prefix is relayed unchanged"
        );
        let tail = parse(&to_backend[valid.len()..], Direction::ClientToUpstream);
        assert_eq!(tail, [(OP_CLOSE, vec![0x03, 0xEA])]);
        drop((client, backend));

        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::ProtocolError(1002));
        assert_eq!(out.frames[0], [1, 2, 2, 0, 1, 1]);
        assert_eq!(out.bytes[0], valid.len() as u64);
    }

    #[tokio::test]
    async fn tiny_reads_consume_our_pong_and_pass_others() {
        let (mut client, proxy_side) = tokio::io::duplex(3);
        let (mut backend, upstream) = tokio::io::duplex(1 << 16);
        let settings = RelaySettings {
            ping_interval: Some(Duration::from_millis(300)),
            ..RelaySettings::default()
        };
        let run = start(proxy_side, upstream, settings);

        let mut ping = [0u8; 20];
        timeout(WAIT, client.read_exact(&mut ping))
            .await
            .expect("ping in time")
            .expect("read ping");
        assert_eq!(ping[..2], [0x80 | OP_PING, 18]);
        let before = masked(0x80 | OP_TEXT, b"before");
        let foreign = masked(0x80 | OP_PONG, &[b'y'; 18]);
        let after = masked(0x80 | OP_BINARY, &[1; 200]);
        let close = masked(0x80 | OP_CLOSE, &1000u16.to_be_bytes());
        let stream = [
            &before[..],
            &masked(0x80 | OP_PONG, &ping[2..]),
            &foreign,
            &after,
            &close,
        ]
        .concat();
        timeout(WAIT, client.write_all(&stream))
            .await
            .expect("in time")
            .expect("write");
        let expected = [&before[..], &foreign, &after, &close].concat();
        let mut got = vec![0u8; expected.len()];
        timeout(WAIT, backend.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, expected);
        backend
            .write_all(&[0x88, 0x02, 0x03, 0xE8])
            .await
            .expect("reply");
        let frames = parse(&read_all(&mut client).await, Direction::UpstreamToClient);
        assert_eq!(frames.last(), Some(&(OP_CLOSE, vec![0x03, 0xE8])));
        assert!(read_all(&mut backend).await.is_empty());
        drop((client, backend));

        let out = outcome(run.task).await;
        assert_eq!(out.end, RelayEnd::CloseHandshake);
        assert_eq!(out.frames[0], [0, 1, 1, 1, 0, 1]);
        assert_eq!(out.bytes[0], expected.len() as u64);
    }
}
