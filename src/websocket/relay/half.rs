//! One direction of a session: reading its source, walking the frames,
//! writing its destination.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::RelaySettings;
use super::plan::{HalfEvent, PING_LEN, PING_PREFIX, ping_payload};
use crate::metrics::WsDirectionMetrics;
use crate::websocket::frame::{
    CLOSE_NO_STATUS, ControlFrame, Direction, FrameWalker, OP_CLOSE, OP_PONG, Step, opcode_class,
    random_mask,
};

/// Per-direction read buffer once a burst outgrows the probe.
const BUF_SIZE: usize = 16 * 1024;
/// Per-direction read buffer while a burst keeps filling `BUF_SIZE`.
const BULK_SIZE: usize = 64 * 1024;
/// Stack buffer for a quiet direction's first read, before its buffer
/// exists; a burst that fills it gets `BUF_SIZE` at once.
const PROBE_SIZE: usize = 2 * 1024;
/// Index of the pong class in the per-opcode counters.
const PONG_CLASS: usize = match opcode_class(OP_PONG) {
    Some(c) => c,
    None => 5,
};

/// What a direction does with its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Read, walk and pass bytes on.
    Forward,
    /// Read and walk without passing anything on, until a close frame.
    Discard,
    /// Leave the source alone.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InjectKind {
    /// The proxy's ping to the client.
    Ping,
    /// A client pong held back in case it answered the proxy's ping, and
    /// passed on after all.
    Pong,
    /// The proxy's close frame.
    Close,
}

/// A frame the proxy writes into a stream between relayed frames.
pub(super) struct Injection {
    pub(super) frame: ControlFrame,
    pub(super) written: usize,
    pub(super) kind: InjectKind,
}

impl Injection {
    pub(super) fn boxed(frame: ControlFrame, kind: InjectKind) -> Box<Self> {
        Box::new(Self::new(frame, kind))
    }

    pub(super) fn new(frame: ControlFrame, kind: InjectKind) -> Self {
        Injection {
            frame,
            written: 0,
            kind,
        }
    }
}

/// State both directions touch.
pub(super) struct Shared {
    /// Pings are on: client pongs that may answer one are held back.
    pub(super) consume_pongs: bool,
    pub(super) ping_seq: u32,
    /// The ping awaiting its pong.
    pub(super) ping_outstanding: Option<u32>,
    /// That ping has been written.
    pub(super) ping_written: bool,
    /// When bytes were last relayed either way.
    pub(super) last_activity: Instant,
}

impl Shared {
    /// Whether `payload` is a pong to one of our pings (then it is not
    /// passed on); clears the outstanding ping if it answers that one.
    pub(super) fn take_pong(&mut self, payload: &[u8]) -> bool {
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

/// One direction: a source it reads and walks, a destination it writes.
///
/// Buffer layout: `buf[..filled]` holds what was read; the walker has seen
/// `buf[..parsed]`; `buf[out_start..out_end]` is being written; `buf[fwd..]`
/// has not been queued for writing yet. Between `fwd` and `parsed` there is at
/// most an incomplete frame header, held back so the destination is never
/// left inside a header.
pub(super) struct Half {
    pub(super) dir: Direction,
    pub(super) walker: FrameWalker,
    pub(super) buf: Vec<u8>,
    pub(super) filled: usize,
    pub(super) parsed: usize,
    pub(super) fwd: usize,
    pub(super) out_start: usize,
    pub(super) out_end: usize,
    /// Once `buf[out_start..out_end]` is written the destination stream is
    /// between frames.
    pub(super) out_boundary: bool,
    /// Dropping the current frame's bytes (a pong that may be ours).
    pub(super) skipping: bool,
    /// Hold back a close frame from the source instead of passing it on.
    pub(super) swallow_close: bool,
    /// A ping or a passed-on pong to write at the next boundary.
    // Boxed: rare (pings, closes), and inline they would sit in every idle
    // session's state.
    pub(super) inject: Option<Box<Injection>>,
    /// The proxy's close frame to write at the next boundary.
    pub(super) close: Option<Box<Injection>>,
    pub(super) mode: Mode,
    pub(super) need_flush: bool,
    pub(super) want_shutdown: bool,
    pub(super) shut_done: bool,
    pub(super) dst_broken: bool,
    /// The source ended (EOF or error).
    pub(super) src_done: bool,
    /// A close frame was relayed or queued to the destination.
    pub(super) dst_closed: bool,
    /// The source's close frame: its code (1005 without one).
    pub(super) close_seen: Option<u16>,
    pub(super) frames: [u64; 6],
    pub(super) bytes: u64,
    pub(super) unpublished_frames: [u64; 6],
    pub(super) unpublished_bytes: u64,
}

impl Half {
    pub(super) fn new(dir: Direction, settings: &RelaySettings) -> Self {
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
    pub(super) fn output_idle(&self) -> bool {
        self.out_start == self.out_end
            && (!self.out_boundary || (self.inject.is_none() && self.close.is_none()))
    }

    pub(super) fn flushed(&self) -> bool {
        self.dst_broken || (self.output_idle() && !self.need_flush)
    }

    /// The destination failed: drop everything queued for it.
    pub(super) fn broken(&mut self) -> HalfEvent {
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

    pub(super) fn count(&mut self, class: usize) {
        self.frames[class] += 1;
        self.unpublished_frames[class] += 1;
    }

    pub(super) fn publish(&mut self, m: &WsDirectionMetrics) {
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
    pub(super) fn queue(&mut self, from: usize, to: usize, sh: &mut Shared) {
        if to > from {
            self.out_start = from;
            self.out_end = to;
            sh.last_activity = Instant::now();
        }
    }

    /// Drives this direction as far as it goes without blocking.
    pub(super) fn poll<S, D>(
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

    pub(super) fn poll_flush<D>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut D,
    ) -> Poll<Result<(), ()>>
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
    pub(super) fn queue_close(&mut self, code: u16) -> bool {
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
    pub(super) fn compact(&mut self) {
        if self.fwd > 0 {
            self.buf.copy_within(self.fwd..self.filled, 0);
            self.filled -= self.fwd;
            self.parsed -= self.fwd;
            self.fwd = 0;
        }
        self.out_start = 0;
        self.out_end = 0;
    }

    pub(super) fn poll_read<S>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
    ) -> Poll<io::Result<usize>>
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
                self.buf = crate::websocket::burst_buffer(got, PROBE_SIZE, BUF_SIZE);
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
    pub(super) fn maybe_our_pong(
        &self,
        header: &crate::websocket::frame::FrameHeader,
        sh: &Shared,
    ) -> bool {
        self.dir == Direction::ClientToUpstream
            && sh.consume_pongs
            && header.opcode == OP_PONG
            && header.payload_len == PING_LEN as u64
    }

    /// Walks what was read, queueing the bytes to pass on. Stops early where
    /// something must be written or decided first.
    pub(super) fn walk_forward(&mut self, sh: &mut Shared) -> Option<HalfEvent> {
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
    pub(super) fn walk_discard(&mut self) -> Option<HalfEvent> {
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
