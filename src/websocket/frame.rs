//! Incremental WebSocket frame walking (RFC 6455 §5).
//!
//! [`FrameWalker`] follows one direction of a WebSocket byte stream, fed in
//! chunks split at any point (including inside a 2–14-byte frame header). It
//! reports where every frame starts and ends and what its header says, and
//! validates the stream as it goes, without copying, unmasking or buffering
//! data payloads and without allocating. Only control-frame payloads (at most
//! 125 bytes) are captured, unmasked, into a fixed array so a close code or a
//! ping payload can be read.
//!
//! [`ControlFrame`] builds the few frames the proxy injects itself (close,
//! ping) in a small stack buffer.

use std::sync::atomic::{AtomicU64, Ordering};

/// Opcode of a continuation frame.
pub(crate) const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub(crate) const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub(crate) const OP_PONG: u8 = 0xA;

/// Longest possible frame header: 2 bytes, a 64-bit length and a mask key.
pub(crate) const MAX_HEADER_LEN: usize = 14;
/// Largest payload a control frame may carry.
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest control frame on the wire (2-byte header, mask key, payload).
pub(crate) const MAX_CONTROL_FRAME: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;

/// Close code 1001: going away (server shutdown, idle, client gone).
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code 1002: protocol error.
pub(crate) const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code 1005: a close frame without a status code (never sent on the
/// wire; reported when a peer's close frame has an empty payload).
pub(crate) const CLOSE_NO_STATUS: u16 = 1005;
/// Close code 1009: message too big.
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
/// Close code 1011: internal error (the backend went away).
pub(crate) const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// Which way a stream flows; indexes `metrics::DIRECTIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the downstream client to the backend: every frame is masked.
    ClientToUpstream = 0,
    /// From the backend to the client: no frame is masked.
    UpstreamToClient = 1,
}

impl Direction {
    /// Both directions, in index order.
    pub(crate) const ALL: [Direction; 2] =
        [Direction::ClientToUpstream, Direction::UpstreamToClient];

    /// Index into [`crate::metrics::DIRECTIONS`] and per-direction arrays.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Whether frames in this direction must be masked.
    pub(crate) const fn masked(self) -> bool {
        matches!(self, Direction::ClientToUpstream)
    }

    /// The other way.
    pub(crate) const fn reverse(self) -> Direction {
        match self {
            Direction::ClientToUpstream => Direction::UpstreamToClient,
            Direction::UpstreamToClient => Direction::ClientToUpstream,
        }
    }
}

/// A protocol violation found while walking a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Opcodes 0x3–0x7 and 0xB–0xF are reserved.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RSV1–3 set without a negotiated extension.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// A close, ping or pong frame with FIN clear.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    /// A close frame whose payload is one byte (a code needs two).
    #[error("close frame with a one-byte payload")]
    BadClosePayload,
    /// A continuation frame with no fragmented message open.
    #[error("continuation frame without a started message")]
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message is still open.
    #[error("new message started before the fragmented one finished")]
    UnfinishedMessage,
    /// A 64-bit payload length with its most significant bit set.
    #[error("64-bit payload length with the most significant bit set")]
    LengthOverflow,
    /// A frame from the client without a mask.
    #[error("unmasked frame from the client")]
    Unmasked,
    /// A frame from the backend with a mask.
    #[error("masked frame from the backend")]
    Masked,
    /// A message whose data payloads add up to more than the limit.
    #[error("message larger than {limit} bytes")]
    MessageTooBig {
        /// The configured `max_message_bytes`.
        limit: u64,
    },
}

impl FrameError {
    /// The close code this violation calls for: 1009 for an oversized
    /// message, 1002 for everything else.
    pub(crate) const fn close_code(self) -> u16 {
        match self {
            FrameError::MessageTooBig { .. } => CLOSE_TOO_BIG,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// What one frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameHeader {
    /// FIN: the last frame of its message.
    pub(crate) fin: bool,
    /// RSV1–RSV3 as the low three bits (RSV1 = `0b100`).
    pub(crate) rsv: u8,
    /// The opcode (low four bits of the first byte).
    pub(crate) opcode: u8,
    /// Whether the payload is masked.
    pub(crate) masked: bool,
    /// The masking key (zero when unmasked).
    pub(crate) mask: [u8; 4],
    /// Payload length in bytes.
    pub(crate) payload_len: u64,
    /// Header length in bytes (2..=14).
    pub(crate) header_len: u8,
}

impl FrameHeader {
    /// Close, ping or pong.
    pub(crate) const fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Index of this frame's opcode in [`crate::metrics::OPCODES`].
    pub(crate) const fn opcode_class(&self) -> usize {
        match opcode_class(self.opcode) {
            Some(c) => c,
            None => 0,
        }
    }
}

/// Index of an opcode in [`crate::metrics::OPCODES`] (`None` if reserved).
pub(crate) const fn opcode_class(opcode: u8) -> Option<usize> {
    match opcode {
        OP_CONTINUATION => Some(0),
        OP_TEXT => Some(1),
        OP_BINARY => Some(2),
        OP_CLOSE => Some(3),
        OP_PING => Some(4),
        OP_PONG => Some(5),
        _ => None,
    }
}

/// One thing [`FrameWalker::next`] found.
///
/// Offsets are into the chunk passed to that call. A frame whose header began
/// in an earlier chunk has `carried > 0` header bytes before `start` (and
/// `start` is then where this call began reading).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A complete, valid header; the position now points at the payload.
    Header {
        /// The header.
        header: FrameHeader,
        /// Where this frame's bytes in this chunk begin.
        start: usize,
        /// Header bytes of this frame that came in earlier chunks.
        carried: usize,
    },
    /// The frame's last byte has been consumed; the position is the offset
    /// just past it, a frame boundary.
    End {
        /// The header of the frame that ended.
        header: FrameHeader,
    },
    /// The frame beginning at `start - carried` breaks the protocol. The
    /// walker is poisoned: every later call returns `None`.
    Invalid {
        /// What is wrong.
        error: FrameError,
        /// Where this frame's bytes in this chunk begin.
        start: usize,
        /// Header bytes of this frame that came in earlier chunks.
        carried: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a header; `have` bytes so far.
    Header,
    /// Inside a payload with this many bytes left.
    Payload(u64),
    /// A violation was found.
    Failed(FrameError),
}

/// Follows one direction of a WebSocket stream frame by frame.
///
/// Feed it every byte of the stream exactly once, in order, by calling
/// [`next`](Self::next) with a chunk and a position until it returns `None`
/// (the chunk is used up, or the walker has failed):
///
/// ```
/// use switchyard::websocket::frame::{Direction, FrameWalker, Step};
/// let mut walker = FrameWalker::new(Direction::UpstreamToClient, false, None);
/// let chunk = [0x81, 0x02, b'h', b'i', 0x89, 0x00];
/// let mut pos = 0;
/// let mut ends = Vec::new();
/// while let Some(step) = walker.next(&chunk, &mut pos) {
///     if let Step::End { .. } = step {
///         ends.push(pos);
///     }
/// }
/// assert_eq!(ends, [4, 6]);
/// ```
#[derive(Debug, Clone)]
pub struct FrameWalker {
    direction: Direction,
    extensions: bool,
    /// The largest message accepted; `u64::MAX` when there is no limit (no
    /// message can exceed it, and an `Option` would take 8 bytes more in
    /// every session's state).
    max_message: u64,
    state: State,
    /// The header being collected, or the last complete one.
    hdr: [u8; MAX_HEADER_LEN],
    /// Header bytes collected so far.
    have: u8,
    /// The header's full length, 0 until its first two bytes are in.
    need: u8,
    /// The last complete header.
    header: FrameHeader,
    /// A fragmented message is open.
    in_message: bool,
    /// Data payload bytes of the open message so far.
    message_bytes: u64,
    /// The last control frame's payload, unmasked. Boxed on the first
    /// control frame: most directions of most sessions never see one, and
    /// inline it would sit in every idle session's state.
    ctrl: Option<Box<[u8; MAX_CONTROL_PAYLOAD]>>,
    ctrl_len: u8,
}

impl FrameWalker {
    /// A walker for one direction. `extensions`: an extension was negotiated,
    /// so RSV bits are allowed. `max_message_bytes`: the largest message
    /// (sum of its data frames' payloads) accepted.
    pub fn new(direction: Direction, extensions: bool, max_message_bytes: Option<u64>) -> Self {
        FrameWalker {
            direction,
            extensions,
            max_message: max_message_bytes.unwrap_or(u64::MAX),
            state: State::Header,
            hdr: [0; MAX_HEADER_LEN],
            have: 0,
            need: 0,
            header: FrameHeader::default(),
            in_message: false,
            message_bytes: 0,
            ctrl: None,
            ctrl_len: 0,
        }
    }

    /// Walks `chunk` from `*pos`, advancing `*pos` past what it consumed, and
    /// returns the next thing found, or `None` once the chunk is used up (or
    /// the walker has failed). A frame with an empty payload yields `End`
    /// right after its `Header`, even at the very end of a chunk.
    pub fn next(&mut self, chunk: &[u8], pos: &mut usize) -> Option<Step> {
        match self.state {
            State::Failed(_) => None,
            State::Payload(remaining) => self.walk_payload(chunk, pos, remaining),
            State::Header => self.walk_header(chunk, pos),
        }
    }

    fn walk_payload(&mut self, chunk: &[u8], pos: &mut usize, remaining: u64) -> Option<Step> {
        let mut remaining = remaining;
        if remaining > 0 {
            let avail = chunk.len().saturating_sub(*pos);
            let take = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
            if take == 0 {
                return None;
            }
            if self.header.is_control() {
                self.capture(&chunk[*pos..*pos + take]);
            }
            *pos += take;
            remaining -= take as u64;
            self.state = State::Payload(remaining);
            if remaining > 0 {
                return None;
            }
        }
        self.state = State::Header;
        self.have = 0;
        self.need = 0;
        Some(Step::End {
            header: self.header,
        })
    }

    /// Appends (unmasked) control payload bytes; control payloads are at most
    /// 125 bytes, which validation guarantees before any are seen.
    fn capture(&mut self, bytes: &[u8]) {
        let at = usize::from(self.ctrl_len);
        let end = (at + bytes.len()).min(MAX_CONTROL_PAYLOAD);
        let ctrl = self
            .ctrl
            .get_or_insert_with(|| Box::new([0; MAX_CONTROL_PAYLOAD]));
        let dst = &mut ctrl[at..end];
        dst.copy_from_slice(&bytes[..end - at]);
        if self.header.masked {
            apply_mask(dst, self.header.mask, at);
        }
        self.ctrl_len = end as u8;
    }

    fn walk_header(&mut self, chunk: &[u8], pos: &mut usize) -> Option<Step> {
        let start = *pos;
        loop {
            let need = if self.need == 0 { 2 } else { self.need };
            if self.have == need {
                if self.need == 0 {
                    match self.size_header() {
                        Ok(n) => self.need = n,
                        Err(e) => return Some(self.fail(e, start, *pos)),
                    }
                    continue;
                }
                break;
            }
            let avail = chunk.len().saturating_sub(*pos);
            if avail == 0 {
                return None;
            }
            let n = usize::from(need - self.have).min(avail);
            let at = usize::from(self.have);
            self.hdr[at..at + n].copy_from_slice(&chunk[*pos..*pos + n]);
            *pos += n;
            self.have += n as u8;
        }
        match self.finish_header() {
            Ok(header) => {
                let in_chunk = *pos - start;
                Some(Step::Header {
                    header,
                    start,
                    carried: usize::from(self.have) - in_chunk,
                })
            }
            Err(e) => Some(self.fail(e, start, *pos)),
        }
    }

    fn fail(&mut self, error: FrameError, start: usize, pos: usize) -> Step {
        self.state = State::Failed(error);
        let in_chunk = pos - start;
        Step::Invalid {
            error,
            start,
            carried: usize::from(self.have).saturating_sub(in_chunk),
        }
    }

    /// Checks the first two header bytes; returns the full header length.
    fn size_header(&self) -> Result<u8, FrameError> {
        let (b0, b1) = (self.hdr[0], self.hdr[1]);
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let Some(_) = opcode_class(opcode) else {
            return Err(FrameError::ReservedOpcode(opcode));
        };
        if rsv != 0 && !self.extensions {
            return Err(FrameError::ReservedBits);
        }
        if masked != self.direction.masked() {
            return Err(if masked {
                FrameError::Masked
            } else {
                FrameError::Unmasked
            });
        }
        if opcode & 0x8 != 0 {
            if !fin {
                return Err(FrameError::FragmentedControl);
            }
            if usize::from(len7) > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::ControlTooLong);
            }
            if opcode == OP_CLOSE && len7 == 1 {
                return Err(FrameError::BadClosePayload);
            }
        } else if opcode == OP_CONTINUATION {
            if !self.in_message {
                return Err(FrameError::UnexpectedContinuation);
            }
        } else if self.in_message {
            return Err(FrameError::UnfinishedMessage);
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Ok(2 + ext + if masked { 4 } else { 0 })
    }

    /// Decodes a complete, already sized header and applies the
    /// message-level checks.
    fn finish_header(&mut self) -> Result<FrameHeader, FrameError> {
        let h = &self.hdr;
        let (b0, b1) = (h[0], h[1]);
        let masked = b1 & 0x80 != 0;
        let (payload_len, ext) = match b1 & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 2),
            127 => {
                let len = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if len >> 63 != 0 {
                    return Err(FrameError::LengthOverflow);
                }
                (len, 8)
            }
            n => (u64::from(n), 0),
        };
        let mut mask = [0; 4];
        if masked {
            mask.copy_from_slice(&h[2 + ext..6 + ext]);
        }
        let header = FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0F,
            masked,
            mask,
            payload_len,
            header_len: self.need,
        };
        if header.is_control() {
            self.ctrl_len = 0;
        } else {
            let total = if header.opcode == OP_CONTINUATION {
                self.message_bytes.saturating_add(payload_len)
            } else {
                payload_len
            };
            if total > self.max_message {
                return Err(FrameError::MessageTooBig {
                    limit: self.max_message,
                });
            }
            self.in_message = !header.fin;
            self.message_bytes = if header.fin { 0 } else { total };
        }
        self.header = header;
        self.state = State::Payload(payload_len);
        Ok(header)
    }

    /// No frame is in progress: the next byte starts a new frame.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.have == 0
    }

    /// A header is complete and its payload is not yet all consumed.
    pub(crate) fn in_payload(&self) -> bool {
        matches!(self.state, State::Payload(_))
    }

    /// Bytes of an incomplete header collected so far (0 outside a header).
    /// They are the last bytes fed, so a caller that wants to hold back a
    /// partial header knows how many to keep.
    pub fn pending_header_len(&self) -> usize {
        match self.state {
            State::Header => usize::from(self.have),
            _ => 0,
        }
    }

    /// Payload bytes of the current frame still to come.
    pub fn remaining(&self) -> u64 {
        match self.state {
            State::Payload(r) => r,
            _ => 0,
        }
    }

    /// A fragmented message is open (its final frame has not arrived).
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    /// The violation that poisoned the walker, if any.
    pub fn error(&self) -> Option<FrameError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The most recent control frame's payload, unmasked, as far as it has
    /// arrived (complete once its [`Step::End`] was returned).
    pub(crate) fn control_payload(&self) -> &[u8] {
        match &self.ctrl {
            Some(ctrl) => &ctrl[..usize::from(self.ctrl_len)],
            None => &[],
        }
    }

    /// The close code of the close frame that just ended: `None` if its
    /// payload is empty (or the last frame was not a close).
    pub(crate) fn close_code(&self) -> Option<u16> {
        if self.header.opcode != OP_CLOSE {
            return None;
        }
        close_code(self.control_payload())
    }

    /// The exact wire bytes of the control frame that just ended (its header
    /// and its payload masked again with its own key), so a caller that held
    /// a control frame back can still pass it on unchanged. Valid right after
    /// its [`Step::End`], before the next header begins.
    pub fn reencode_control(&self) -> Option<ControlFrame> {
        let h = &self.header;
        if !h.is_control() || !self.at_boundary() {
            return None;
        }
        let payload = self.control_payload();
        if payload.len() as u64 != h.payload_len {
            return None;
        }
        let hl = usize::from(h.header_len);
        let mut frame = ControlFrame {
            bytes: [0; MAX_CONTROL_FRAME],
            len: (hl + payload.len()) as u8,
        };
        frame.bytes[..hl].copy_from_slice(&self.hdr[..hl]);
        let body = &mut frame.bytes[hl..hl + payload.len()];
        body.copy_from_slice(payload);
        if h.masked {
            apply_mask(body, h.mask, 0);
        }
        Some(frame)
    }
}

/// The status code at the start of a close frame's (unmasked) payload.
pub(crate) fn close_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// XORs `data` with `mask`, where `data` starts `offset` bytes into the
/// payload (masking and unmasking are the same operation).
pub(crate) fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// A masking key from a cheap non-cryptographic source (a counter mixed with
/// the clock through splitmix64). Masking exists to stop cache poisoning by
/// scripts in browsers; frames the proxy makes up need no more than this.
pub(crate) fn random_mask() -> [u8; 4] {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(nanos);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z as u32).to_be_bytes()
}

/// A complete control frame in a stack buffer, ready to write.
#[derive(Clone, Copy)]
pub struct ControlFrame {
    bytes: [u8; MAX_CONTROL_FRAME],
    len: u8,
}

impl std::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ControlFrame")
            .field(&self.as_bytes())
            .finish()
    }
}

impl ControlFrame {
    /// A control frame (FIN set) with `opcode` and up to 125 bytes of
    /// `payload` (longer payloads are cut), masked with `mask` if given.
    pub(crate) fn new(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Self {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let mut bytes = [0; MAX_CONTROL_FRAME];
        bytes[0] = 0x80 | (opcode & 0x0F);
        bytes[1] = payload.len() as u8;
        let mut at = 2;
        if let Some(key) = mask {
            bytes[1] |= 0x80;
            bytes[2..6].copy_from_slice(&key);
            at = 6;
        }
        let body = &mut bytes[at..at + payload.len()];
        body.copy_from_slice(payload);
        if let Some(key) = mask {
            apply_mask(body, key, 0);
        }
        ControlFrame {
            bytes,
            len: (at + payload.len()) as u8,
        }
    }

    /// A close frame with `code` and `reason` (cut at a character boundary
    /// to fit the 123 bytes left after the code).
    pub(crate) fn close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Self {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
        Self::new(OP_CLOSE, &payload[..2 + end], mask)
    }

    /// A ping frame.
    pub(crate) fn ping(payload: &[u8], mask: Option<[u8; 4]>) -> Self {
        Self::new(OP_PING, payload, mask)
    }

    /// The frame's wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Length on the wire.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }
}

impl AsRef<[u8]> for ControlFrame {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

#[cfg(test)]
mod tests;
