//! The relay's decisions, apart from the I/O that carries them out: what a
//! direction does with each frame (pass it on, hold it back, consume it),
//! the proxy's own pings and the pongs that answer them, and how a session
//! ends (which close code goes to which side).

use super::RelayEnd;
use crate::websocket::frame::{
    CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_TOO_BIG, ControlFrame, Direction, FrameError,
    FrameHeader, OP_CLOSE, OP_PONG,
};

/// Payload prefix of the proxy's own pings.
const PING_PREFIX: &[u8] = b"switchyard";
/// Payload length of the proxy's pings: the prefix and 8 hex digits.
const PING_LEN: usize = PING_PREFIX.len() + 8;

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
    /// The source's stream refused what it read: a TLS record that does
    /// not open, or a client past its keys' confidentiality limit.
    Refused,
    /// Writing the destination failed.
    WriteError,
}

/// What a direction does with a frame whose header it has just walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AtHeader {
    /// Pass it on.
    Relay,
    /// Drop its bytes until its end, where [`at_end`] decides on it: a
    /// client pong that may answer the proxy's ping, or a close frame the
    /// proxy replaces with its own.
    HoldBack,
}

/// What a direction does where a frame ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AtEnd {
    /// Nothing: walk on.
    Walk,
    /// Stop at this boundary, so a frame of the proxy's can go in.
    Boundary,
    /// A relayed close frame: nothing may follow it.
    Closed,
    /// A held-back close frame: dropped, the proxy sends its own.
    CloseSwallowed,
    /// A held-back pong to one of the proxy's pings: consumed.
    PongConsumed,
    /// A held-back pong that was not the proxy's: passed on after all.
    PongPassed,
}

/// Decides on a frame from `dir`'s source whose header was just walked;
/// `swallow_close`: the proxy replaces that source's close with its own.
pub(super) fn at_header(
    dir: Direction,
    header: &FrameHeader,
    pings: &Pings,
    swallow_close: bool,
) -> AtHeader {
    if pings.may_answer(dir, header) || (swallow_close && header.opcode == OP_CLOSE) {
        AtHeader::HoldBack
    } else {
        AtHeader::Relay
    }
}

/// Decides at the end of a frame with `opcode`: `held` if [`at_header`]
/// held it back, `payload` its control payload, `waiting` if a frame of the
/// proxy's waits for a boundary in this direction.
pub(super) fn at_end(
    opcode: u8,
    held: bool,
    payload: &[u8],
    pings: &mut Pings,
    waiting: bool,
) -> AtEnd {
    match (held, opcode == OP_CLOSE) {
        (true, true) => AtEnd::CloseSwallowed,
        (true, false) if pings.take_pong(payload) => AtEnd::PongConsumed,
        (true, false) => AtEnd::PongPassed,
        (false, true) => AtEnd::Closed,
        (false, false) if waiting => AtEnd::Boundary,
        (false, false) => AtEnd::Walk,
    }
}

/// The proxy's pings to the client, and the pongs that answer them.
pub(super) struct Pings {
    /// Pings are on: client pongs that may answer one are held back.
    on: bool,
    seq: u32,
    /// The ping awaiting its pong.
    outstanding: Option<u32>,
    /// That ping has been written.
    written: bool,
}

/// What to do when the ping interval comes round.
pub(super) enum PingDue {
    /// The last ping went out and no pong came back: the client is gone.
    Unanswered,
    /// Write this ping to the client.
    Send(ControlFrame),
    /// Nothing this time.
    Wait,
}

impl Pings {
    /// `on`: the route pings its clients.
    pub(super) fn new(on: bool) -> Self {
        Pings {
            on,
            seq: 0,
            outstanding: None,
            written: false,
        }
    }

    /// A client pong that may answer one of the proxy's pings (its payload
    /// tells, once it has arrived).
    fn may_answer(&self, dir: Direction, header: &FrameHeader) -> bool {
        dir == Direction::ClientToUpstream
            && self.on
            && header.opcode == OP_PONG
            && header.payload_len == PING_LEN as u64
    }

    /// Whether `payload` is a pong to one of our pings (then it is not
    /// passed on); clears the outstanding ping if it answers that one.
    fn take_pong(&mut self, payload: &[u8]) -> bool {
        if payload.len() != PING_LEN || !payload.starts_with(PING_PREFIX) {
            return false;
        }
        if let Some(seq) = self.outstanding
            && payload == ping_payload(seq)
        {
            self.outstanding = None;
            self.written = false;
        }
        true
    }

    /// The outstanding ping has been written: its pong is due by the next
    /// interval.
    pub(super) fn sent(&mut self) {
        self.written = true;
    }

    /// The ping interval came round; `can_send`: the stream to the client
    /// can take a ping.
    pub(super) fn due(&mut self, can_send: bool) -> PingDue {
        if self.outstanding.is_some() {
            // Not yet written (the client's stream was inside a frame):
            // give it another interval.
            return if self.written {
                PingDue::Unanswered
            } else {
                PingDue::Wait
            };
        }
        if !can_send {
            return PingDue::Wait;
        }
        self.seq = self.seq.wrapping_add(1);
        self.outstanding = Some(self.seq);
        self.written = false;
        PingDue::Send(ControlFrame::ping(&ping_payload(self.seq), None))
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

/// How to end a session.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// The close frame's code for the client, if it gets one.
    pub(super) to_client: Option<u16>,
    /// The close frame's code for the backend, if it gets one.
    pub(super) to_upstream: Option<u16>,
    /// Wait (bounded) for each side to answer the close it was sent.
    pub(super) await_replies: bool,
    /// The client broke the protocol: close the backend first and pass on
    /// what it still sends (echoes of earlier messages, its close reply)
    /// before the client gets its close.
    pub(super) upstream_first: bool,
    pub(super) end: RelayEnd,
}

impl Plan {
    /// The code of the close frame that goes where `dir` writes, if any.
    pub(super) fn close_into(&self, dir: Direction) -> Option<u16> {
        match dir {
            Direction::ClientToUpstream => self.to_upstream,
            Direction::UpstreamToClient => self.to_client,
        }
    }

    /// Both close frames crossed (or the wait for the second ran out).
    pub(super) fn graceful() -> Self {
        Plan {
            to_client: None,
            to_upstream: None,
            await_replies: false,
            upstream_first: false,
            end: RelayEnd::CloseHandshake,
        }
    }

    /// `from`'s source broke the protocol: 1009 for a message too big,
    /// 1002 otherwise, to both sides.
    pub(super) fn violation(error: FrameError, from: Direction) -> Self {
        let code = error.close_code();
        Plan {
            to_client: Some(code),
            to_upstream: Some(code),
            await_replies: false,
            upstream_first: from == Direction::ClientToUpstream,
            end: if code == CLOSE_TOO_BIG {
                RelayEnd::MessageTooBig
            } else {
                RelayEnd::ProtocolError(code)
            },
        }
    }

    /// `dir` reported `event` (an end of stream, a failed read or write):
    /// one side is gone. `closing`: a close frame was seen already;
    /// `draining`: the proxy is shutting down.
    pub(super) fn side_gone(
        dir: Direction,
        event: HalfEvent,
        closing: bool,
        draining: bool,
    ) -> Self {
        // Which side is gone: the source on a read, the destination on a
        // write.
        let client_gone = (dir == Direction::ClientToUpstream) == (event != HalfEvent::WriteError);
        match (client_gone, closing) {
            (true, false) => Plan::client_gone(RelayEnd::ClientGone),
            (true, true) => Plan::client_gone(RelayEnd::CloseHandshake),
            (false, false) => Plan::upstream_gone(RelayEnd::UpstreamGone, draining),
            (false, true) => Plan::upstream_gone_closing(RelayEnd::CloseHandshake),
        }
    }

    /// The client's TLS records were refused: the backend gets 1011 (the
    /// session failed, the client did not leave), the client's socket is
    /// shut down (its record layer sends the closing alert).
    pub(super) fn client_refused() -> Self {
        Plan {
            to_client: None,
            to_upstream: Some(CLOSE_INTERNAL_ERROR),
            await_replies: false,
            upstream_first: false,
            end: RelayEnd::ClientGone,
        }
    }

    /// The client is gone (or stopped answering pings): the backend gets 1001.
    pub(super) fn client_gone(end: RelayEnd) -> Self {
        Plan {
            to_client: None,
            to_upstream: Some(CLOSE_GOING_AWAY),
            await_replies: false,
            upstream_first: false,
            end,
        }
    }

    /// The backend is gone: the client gets 1011, or 1001 while the proxy
    /// shuts down.
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

    /// Idle or shutting down: 1001 to both sides, whose replies are awaited.
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
