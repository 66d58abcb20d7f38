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
//!
//! The parts: `session` drives both directions and the timers and ends the
//! session; `half` is one direction (read, walk, write, count); `plan` holds
//! the decisions (what each frame is, the proxy's pings, which close code
//! goes where). `LIFECYCLE.md` beside this module walks through a session.
//!
//! [`FrameWalker`]: super::frame::FrameWalker

mod half;
mod plan;
mod session;
#[cfg(test)]
mod tests;

use std::ops::{Index, IndexMut};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::frame::Direction;
pub(crate) use session::relay;

/// How a session is relayed (from the route's configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RelaySettings {
    /// No frame in either direction for this long: close both sides (1001).
    pub(crate) idle_timeout: Option<Duration>,
    /// Ping the client this often; a missing pong ends the session.
    pub(crate) ping_interval: Option<Duration>,
    /// Largest message (sum of its frames' payloads) either way; larger: 1009.
    pub(crate) max_message_bytes: Option<u64>,
    /// An extension was negotiated, so RSV bits are allowed.
    pub(crate) extensions: bool,
}

impl RelaySettings {
    /// The idle timeout, unless off (unset or zero).
    fn idle(&self) -> Option<Duration> {
        self.idle_timeout.filter(|d| !d.is_zero())
    }

    /// The ping interval, unless off (unset or zero).
    fn pings(&self) -> Option<Duration> {
        self.ping_interval.filter(|d| !d.is_zero())
    }
}

/// What tells a relay to close both sides with 1001 (going away): the
/// proxy's drain deadline, or a reload that retires the session's route.
pub(crate) trait Shutdown {
    /// Resolves once the session is to close.
    fn requested(&self) -> impl Future<Output = ()> + Send;

    /// Whether the proxy is shutting down (a backend that goes away then
    /// gets the client a 1001 rather than a 1011).
    fn draining(&self) -> bool;
}

impl Shutdown for CancellationToken {
    fn requested(&self) -> impl Future<Output = ()> + Send {
        self.cancelled()
    }

    fn draining(&self) -> bool {
        self.is_cancelled()
    }
}

/// One `T` for each direction, indexed by [`Direction`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ByDirection<T>([T; 2]);

impl<T> ByDirection<T> {
    /// Makes the `T` of each direction.
    fn new(make: impl FnMut(Direction) -> T) -> Self {
        ByDirection(Direction::ALL.map(make))
    }

    /// Both, client→upstream first.
    fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// Both, client→upstream first.
    fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.0.iter_mut()
    }
}

impl<T> Index<Direction> for ByDirection<T> {
    type Output = T;

    fn index(&self, dir: Direction) -> &T {
        &self.0[dir.index()]
    }
}

impl<T> IndexMut<Direction> for ByDirection<T> {
    fn index_mut(&mut self, dir: Direction) -> &mut T {
        &mut self.0[dir.index()]
    }
}

/// What one direction relayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    /// Frames by opcode class (see [`crate::metrics::OPCODES`]).
    frames: [u64; 6],
    /// Bytes on the wire.
    bytes: u64,
}

/// What happened in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayOutcome {
    /// Frames and bytes relayed, by direction. Frames the proxy made up (its
    /// pings and closes) and pongs it consumed are not counted.
    relayed: ByDirection<Counts>,
    /// Code of the client's close frame, if it sent one (1005: no code).
    pub(crate) client_close: Option<u16>,
    /// Code of the backend's close frame, if it sent one (1005: no code).
    pub(crate) upstream_close: Option<u16>,
    /// Why the session ended.
    pub(crate) end: RelayEnd,
}

impl RelayOutcome {
    /// Frames relayed `dir`, by opcode class (see [`crate::metrics::OPCODES`]).
    pub(crate) fn frames(&self, dir: Direction) -> [u64; 6] {
        self.relayed[dir].frames
    }

    /// Bytes relayed `dir`, as written to the other side.
    pub(crate) fn bytes(&self, dir: Direction) -> u64 {
        self.relayed[dir].bytes
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayEnd {
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
