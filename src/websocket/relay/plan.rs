//! How a session ends: which close codes go where.

use super::RelayEnd;
use crate::websocket::frame::{CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_TOO_BIG, FrameError};

/// Payload prefix of the proxy's own pings.
pub(super) const PING_PREFIX: &[u8] = b"switchyard";
/// Payload length of the proxy's pings: the prefix and 8 hex digits.
pub(super) const PING_LEN: usize = PING_PREFIX.len() + 8;

/// Something one direction needs the session to decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HalfEvent {
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

pub(super) fn ping_payload(seq: u32) -> [u8; PING_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut p = [0; PING_LEN];
    p[..PING_PREFIX.len()].copy_from_slice(PING_PREFIX);
    for (i, b) in p[PING_PREFIX.len()..].iter_mut().enumerate() {
        *b = HEX[((seq >> (28 - 4 * i)) & 0xF) as usize];
    }
    p
}

/// How to end a session.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) to_client: Option<u16>,
    pub(super) to_upstream: Option<u16>,
    pub(super) await_replies: bool,
    /// The client broke the protocol: close the backend first and pass on
    /// what it still sends (echoes of earlier messages, its close reply)
    /// before the client gets its close.
    pub(super) upstream_first: bool,
    pub(super) end: RelayEnd,
}

impl Plan {
    pub(super) fn graceful() -> Self {
        Plan {
            to_client: None,
            to_upstream: None,
            await_replies: false,
            upstream_first: false,
            end: RelayEnd::CloseHandshake,
        }
    }

    pub(super) fn violation(error: FrameError, from_client: bool) -> Self {
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

    pub(super) fn client_gone(end: RelayEnd) -> Self {
        Plan {
            to_client: None,
            to_upstream: Some(CLOSE_GOING_AWAY),
            await_replies: false,
            upstream_first: false,
            end,
        }
    }

    pub(super) fn upstream_gone(end: RelayEnd, draining: bool) -> Self {
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
    pub(super) fn upstream_gone_closing(end: RelayEnd) -> Self {
        Plan {
            to_client: None,
            to_upstream: None,
            await_replies: false,
            upstream_first: false,
            end,
        }
    }

    pub(super) fn going_away(end: RelayEnd) -> Self {
        Plan {
            to_client: Some(CLOSE_GOING_AWAY),
            to_upstream: Some(CLOSE_GOING_AWAY),
            await_replies: true,
            upstream_first: false,
            end,
        }
    }
}
