//! One direction of a session: reading its source, walking the frames,
//! writing them (and the proxy's own frames) to its destination, counting.
//! What to do with each frame is asked of `plan`.

use std::io;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::plan::{self, AtEnd, AtHeader, HalfEvent, Pings};
use super::{Counts, RelaySettings};
use crate::metrics::WsDirectionMetrics;
use crate::websocket::frame::{
    CLOSE_NO_STATUS, ControlFrame, Direction, FrameError, FrameHeader, FrameWalker, OP_CLOSE,
    OP_PONG, Step, opcode_class, random_mask,
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
        Box::new(Injection {
            frame,
            written: 0,
            kind,
        })
    }
}

/// State both directions touch.
pub(super) struct Shared {
    /// The proxy's pings (written client-bound, answered client→upstream).
    pub(super) pings: Pings,
    /// When bytes were last relayed either way.
    pub(super) last_activity: Instant,
}

/// One direction's counts: in all, and not yet given to the metrics.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) total: Counts,
    /// In 32 bits: they are published before every read, so they never
    /// hold more than one buffer's worth (64 KiB) of bytes or frames; the
    /// totals cannot be, and stay 64-bit.
    unpublished_frames: [u32; 6],
    unpublished_bytes: u32,
}

impl Tally {
    fn frame(&mut self, class: usize) {
        self.total.frames[class] += 1;
        self.unpublished_frames[class] = self.unpublished_frames[class].saturating_add(1);
    }

    fn bytes(&mut self, n: u64) {
        self.total.bytes += n;
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.unpublished_bytes = self.unpublished_bytes.saturating_add(n);
    }

    /// Adds what was counted since the last call to the metrics.
    pub(super) fn publish(&mut self, m: &WsDirectionMetrics) {
        // In place: most calls find one class counted (or none).
        for (counter, n) in m.frames.iter().zip(self.unpublished_frames.iter_mut()) {
            if *n > 0 {
                counter.increment(u64::from(*n));
                *n = 0;
            }
        }
        if self.unpublished_bytes > 0 {
            m.bytes.increment(u64::from(self.unpublished_bytes));
            self.unpublished_bytes = 0;
        }
    }
}

/// One direction: a source it reads and walks, a destination it writes.
///
/// Buffer layout: `buf[..filled]` holds what was read; the walker has seen
/// `buf[..parsed]`; `buf[out_start..out_end]` is being written; `buf[fwd..]`
/// has not been queued for writing yet. Between `fwd` and `parsed` there is at
/// most an incomplete frame header, held back so the destination is never
/// left inside a header. The positions are 32-bit (the buffer is at most
/// `BULK_SIZE`): 20 bytes less in each direction of every session.
pub(super) struct Half {
    dir: Direction,
    walker: FrameWalker,
    buf: Vec<u8>,
    filled: u32,
    parsed: u32,
    fwd: u32,
    out_start: u32,
    out_end: u32,
    /// Once `buf[out_start..out_end]` is written the destination stream is
    /// between frames.
    out_boundary: bool,
    /// Holding the current frame back, dropping its bytes (a pong that may
    /// be ours, or a close to swallow).
    skipping: bool,
    /// Hold back a close frame from the source instead of passing it on.
    pub(super) swallow_close: bool,
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
    pub(super) dst_closed: bool,
    /// The source's close frame: its code (1005 without one).
    pub(super) close_seen: Option<u16>,
    pub(super) tally: Tally,
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
            tally: Tally::default(),
        }
    }

    /// Nothing left to write (injections that wait for a boundary that will
    /// never come count as done).
    fn output_idle(&self) -> bool {
        self.out_start == self.out_end
            && (!self.out_boundary || (self.inject.is_none() && self.close.is_none()))
    }

    /// Everything written is flushed (or the destination is gone).
    pub(super) fn flushed(&self) -> bool {
        self.dst_broken || (self.output_idle() && !self.need_flush)
    }

    /// Still passing frames on to a destination that is open.
    pub(super) fn relaying(&self) -> bool {
        self.mode == Mode::Forward && !self.dst_closed && !self.dst_broken
    }

    /// The source will send nothing more: it closed, ended or broke the
    /// protocol.
    pub(super) fn source_finished(&self) -> bool {
        self.close_seen.is_some() || self.src_done || self.walker.error().is_some()
    }

    /// The source ended or sent its close frame, so it has nothing more to
    /// send (used when lingering).
    pub(super) fn source_quiet(&self) -> bool {
        self.src_done || self.close_seen.is_some()
    }

    /// Not waiting for a close reply any more, and all written is flushed.
    pub(super) fn replied(&self) -> bool {
        self.mode != Mode::Discard && self.flushed()
    }

    /// The destination is shut down (or gone).
    pub(super) fn shut(&self) -> bool {
        self.dst_broken || self.shut_done
    }

    /// The stream to the destination can take one of the proxy's pings.
    pub(super) fn can_take_ping(&self) -> bool {
        self.relaying() && self.inject.is_none()
    }

    /// Queues the proxy's ping for the next boundary.
    pub(super) fn inject_ping(&mut self, ping: ControlFrame) {
        self.inject = Some(Injection::boxed(ping, InjectKind::Ping));
    }

    /// Drops the proxy's ping if none of it was written (the session ends).
    pub(super) fn drop_unsent_ping(&mut self) {
        if self
            .inject
            .as_ref()
            .is_some_and(|i| i.kind == InjectKind::Ping && i.written == 0)
        {
            self.inject = None;
        }
    }

    /// Leaves the source alone from now on.
    pub(super) fn stop(&mut self) {
        self.mode = Mode::Off;
    }

    /// The session ends: with `await_reply`, read on (passing nothing on)
    /// for the close the source owes, unless it can no longer come;
    /// otherwise stop reading.
    pub(super) fn stop_reading(&mut self, await_reply: bool) {
        self.skipping = false;
        if await_reply && !self.source_finished() {
            self.fwd = self.parsed;
            self.mode = Mode::Discard;
        } else {
            self.mode = Mode::Off;
        }
    }

    /// Stops reading and shuts the destination down once all is written.
    pub(super) fn begin_shutdown(&mut self) {
        self.stop();
        self.want_shutdown = true;
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

    /// The source ended with `event` (EOF or a read error).
    fn source_ended(&mut self, event: HalfEvent) -> HalfEvent {
        self.src_done = true;
        self.mode = Mode::Off;
        event
    }

    /// Queues `buf[from..to]` for writing.
    fn queue(&mut self, from: usize, to: usize, sh: &mut Shared) {
        if to > from {
            self.out_start = pos32(from);
            self.out_end = pos32(to);
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
                match self.poll_output(cx, dst, sh) {
                    Poll::Ready(Ok(true)) => continue,
                    Poll::Ready(Ok(false)) => {}
                    Poll::Ready(Err(())) => return Poll::Ready(self.broken()),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.mode == Mode::Off {
                return self.poll_flush(cx, dst);
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
            self.tally.publish(m);
            self.compact();
            match self.poll_read(cx, src) {
                Poll::Ready(Ok(0)) => return Poll::Ready(self.source_ended(HalfEvent::Eof)),
                Poll::Ready(Ok(n)) => self.filled += pos32(n),
                Poll::Ready(Err(e)) => {
                    tracing::debug!(direction = ?self.dir, error = %e, "WebSocket read failed");
                    let event = if e.kind() == io::ErrorKind::InvalidData {
                        HalfEvent::Refused
                    } else {
                        HalfEvent::ReadError
                    };
                    return Poll::Ready(self.source_ended(event));
                }
                Poll::Pending => {
                    if self.filled == 0 && !self.buf.is_empty() {
                        // Everything read was passed on and nothing is
                        // held back: a quiet direction keeps no buffer.
                        self.buf = Vec::new();
                    }
                    return self.poll_flush(cx, dst);
                }
            }
        }
    }

    /// Writes what is queued for the destination, in order: relayed bytes,
    /// then the proxy's own frames (only between frames), then the shutdown
    /// once everything is out. `Ok(true)`: something was written, call
    /// again; `Err`: the destination failed.
    fn poll_output<D>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut D,
        sh: &mut Shared,
    ) -> Poll<Result<bool, ()>>
    where
        D: AsyncWrite + Unpin + ?Sized,
    {
        if self.out_start < self.out_end {
            let bytes = &self.buf[self.out_start as usize..self.out_end as usize];
            return match ready!(Pin::new(&mut *dst).poll_write(cx, bytes)) {
                Ok(n) if n > 0 => {
                    self.out_start += pos32(n);
                    self.tally.bytes(n as u64);
                    self.need_flush = true;
                    Poll::Ready(Ok(true))
                }
                _ => Poll::Ready(Err(())),
            };
        }
        if self.out_boundary {
            // A ping or passed-on pong goes before a close.
            let slot = if self.inject.is_some() {
                &mut self.inject
            } else {
                &mut self.close
            };
            if let Some(inj) = slot {
                let done = ready!(poll_injection(cx, dst, inj)).map_err(|_| ())?;
                self.need_flush = true;
                if done {
                    match inj.kind {
                        InjectKind::Ping => sh.pings.sent(),
                        InjectKind::Pong => self.tally.bytes(inj.frame.len() as u64),
                        InjectKind::Close => {}
                    }
                    *slot = None;
                }
                return Poll::Ready(Ok(true));
            }
        }
        if self.want_shutdown && !self.shut_done && self.output_idle() {
            // Shut down either way: a failure leaves nothing more to do.
            let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
            self.shut_done = true;
            self.need_flush = false;
        }
        Poll::Ready(Ok(false))
    }

    /// Flushes what was written while the direction waits; pending unless
    /// the flush fails.
    #[inline]
    fn poll_flush<D>(&mut self, cx: &mut Context<'_>, dst: &mut D) -> Poll<HalfEvent>
    where
        D: AsyncWrite + Unpin + ?Sized,
    {
        if self.need_flush && !self.dst_broken {
            match Pin::new(dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(_)) => return Poll::Ready(self.broken()),
                Poll::Pending => {}
            }
        }
        Poll::Pending
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
    fn compact(&mut self) {
        if self.fwd > 0 {
            self.buf
                .copy_within(self.fwd as usize..self.filled as usize, 0);
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
                self.buf = crate::burst::buffer(got, PROBE_SIZE, BUF_SIZE);
            }
            return Poll::Ready(Ok(got.len()));
        }
        let filled = self.filled as usize;
        if filled >= self.buf.len() {
            // Cannot happen: at most a 13-byte header is ever held back.
            return Poll::Ready(Err(io::Error::other("relay buffer full")));
        }
        let mut rb = ReadBuf::new(&mut self.buf[filled..]);
        ready!(Pin::new(src).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if filled + n == self.buf.len() && self.buf.len() < BULK_SIZE {
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

    /// Walks what was read, queueing the bytes to pass on. Stops early where
    /// something must be written or decided first.
    fn walk_forward(&mut self, sh: &mut Shared) -> Option<HalfEvent> {
        let mut pos = self.parsed as usize;
        while let Some(step) = self
            .walker
            .next(&self.buf[..self.filled as usize], &mut pos)
        {
            let flow = match step {
                Step::Header {
                    header,
                    start,
                    carried,
                } => self.on_header(&header, start.saturating_sub(carried), pos, sh),
                Step::End { header } => self.on_end(header.opcode, pos, sh),
                Step::Invalid {
                    error,
                    start,
                    carried,
                } => self.on_invalid(error, start.saturating_sub(carried), pos, sh),
            };
            if let ControlFlow::Break(event) = flow {
                return event;
            }
        }
        self.parsed = self.filled;
        if self.skipping {
            self.fwd = self.filled;
        } else {
            // Pass on all but a partial header at the end.
            let fwd = self.fwd as usize;
            let end = (self.filled as usize)
                .saturating_sub(self.walker.pending_header_len())
                .max(fwd);
            self.queue(fwd, end, sh);
            self.fwd = pos32(end);
            self.out_boundary = !self.walker.in_payload();
        }
        None
    }

    /// Stops the walk at `pos`, a frame boundary, after the bytes before it
    /// that are passed on.
    fn stop_at(&mut self, pos: usize) {
        self.fwd = pos32(pos);
        self.parsed = pos32(pos);
        self.out_boundary = true;
    }

    /// A header was walked; its frame starts at `start` and its payload at
    /// `pos`.
    fn on_header(
        &mut self,
        header: &FrameHeader,
        start: usize,
        pos: usize,
        sh: &mut Shared,
    ) -> ControlFlow<Option<HalfEvent>> {
        match plan::at_header(self.dir, header, &sh.pings, self.swallow_close) {
            AtHeader::Relay => {
                self.tally.frame(header.opcode_class());
                ControlFlow::Continue(())
            }
            AtHeader::HoldBack => {
                // Pass on what precedes it; hold the pong (or a close the
                // proxy replaces with its own) back.
                let fwd = self.fwd as usize;
                self.queue(fwd, start.max(fwd), sh);
                self.stop_at(pos);
                self.skipping = true;
                ControlFlow::Break(None)
            }
        }
    }

    /// A frame ended at `pos`.
    fn on_end(
        &mut self,
        opcode: u8,
        pos: usize,
        sh: &mut Shared,
    ) -> ControlFlow<Option<HalfEvent>> {
        let waiting = self.inject.is_some() || self.close.is_some();
        let payload = self.walker.control_payload();
        match plan::at_end(opcode, self.skipping, payload, &mut sh.pings, waiting) {
            AtEnd::Walk => ControlFlow::Continue(()),
            AtEnd::PongConsumed => {
                self.skipping = false;
                self.fwd = pos32(pos);
                ControlFlow::Continue(())
            }
            AtEnd::PongPassed => {
                self.skipping = false;
                self.fwd = pos32(pos);
                let Some(frame) = self.walker.reencode_control() else {
                    return ControlFlow::Continue(());
                };
                // Not ours after all: pass it on unchanged.
                self.tally.frame(PONG_CLASS);
                self.inject = Some(Injection::boxed(frame, InjectKind::Pong));
                self.parsed = pos32(pos);
                ControlFlow::Break(None)
            }
            AtEnd::CloseSwallowed => {
                // The proxy sends its own close instead.
                self.skipping = false;
                ControlFlow::Break(Some(self.closed(pos)))
            }
            AtEnd::Closed => {
                self.queue(self.fwd as usize, pos, sh);
                self.dst_closed = true;
                ControlFlow::Break(Some(self.closed(pos)))
            }
            AtEnd::Boundary => {
                // Let the injection in here.
                self.queue(self.fwd as usize, pos, sh);
                self.stop_at(pos);
                ControlFlow::Break(None)
            }
        }
    }

    /// The source's close frame ended at `pos`: nothing may follow it.
    fn closed(&mut self, pos: usize) -> HalfEvent {
        self.close_seen = Some(self.walker.close_code().unwrap_or(CLOSE_NO_STATUS));
        self.stop_at(pos);
        self.mode = Mode::Off;
        HalfEvent::Close
    }

    /// The frame starting at `start` breaks the protocol: pass on what
    /// precedes it and stop.
    fn on_invalid(
        &mut self,
        error: FrameError,
        start: usize,
        pos: usize,
        sh: &mut Shared,
    ) -> ControlFlow<Option<HalfEvent>> {
        let fwd = self.fwd as usize;
        let frame_start = start.max(fwd);
        self.queue(fwd, frame_start, sh);
        self.fwd = pos32(frame_start);
        self.parsed = pos32(pos);
        self.out_boundary = true;
        self.mode = Mode::Off;
        ControlFlow::Break(Some(HalfEvent::Violation(error)))
    }

    /// Walks what was read without passing it on, looking for a close frame.
    fn walk_discard(&mut self) -> Option<HalfEvent> {
        let mut pos = self.parsed as usize;
        while let Some(step) = self
            .walker
            .next(&self.buf[..self.filled as usize], &mut pos)
        {
            let event = match step {
                Step::End { header } if header.opcode == OP_CLOSE => {
                    self.close_seen = Some(self.walker.close_code().unwrap_or(CLOSE_NO_STATUS));
                    HalfEvent::Close
                }
                Step::Invalid { error, .. } => HalfEvent::Violation(error),
                _ => continue,
            };
            self.mode = Mode::Off;
            self.parsed = pos32(pos);
            self.fwd = pos32(pos);
            return Some(event);
        }
        self.parsed = self.filled;
        self.fwd = self.filled;
        None
    }
}

/// A position in a direction's buffer (at most `BULK_SIZE`), as stored.
fn pos32(pos: usize) -> u32 {
    // Cannot saturate: no buffer reaches 4 GiB.
    u32::try_from(pos).unwrap_or(u32::MAX)
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
