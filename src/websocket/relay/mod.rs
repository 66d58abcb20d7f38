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

mod half;
mod plan;
mod session;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::metrics::RouteMetrics;
use session::Session;

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
