//! The record layer of every downstream TLS connection once its handshake
//! is done: records sealed and opened here with rustls' own AEADs, keys
//! updated through rustls' [`KernelConnection`].
//!
//! rustls' buffered connection keeps a receive buffer, its handshake
//! bookkeeping and its state machine for the connection's whole life;
//! across thousands of mostly idle connections (WebSocket sessions above
//! all) that is most of what one costs. The handshake runs on rustls'
//! unbuffered API (`handshake.rs`) and ends in a [`KernelConnection`]: what
//! rustls keeps to derive the next traffic secrets, nothing else. Buffers
//! exist only while a record is in flight: an idle connection holds its
//! socket, its two AEAD keys and the kernel connection.
//!
//! TLS 1.3 (RFC 8446 §4.6.3, §5.5): a client's `KeyUpdate` moves the
//! receive keys on, and one that asks for an update in return is answered
//! with ours before the next record we send. Our own send keys move on
//! before the suite's confidentiality limit; a client that goes past it
//! without updating is refused. TLS 1.2 has no key updates: at the limit
//! the connection ends, as rustls ends it; a renegotiation request is
//! declined with a `no_renegotiation` warning, as rustls declines it.
//! See `LIFECYCLE.md`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
    OutboundPlainMessage,
};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{
    ConnectionTrafficSecrets, ContentType, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::socket::TcpSocket;

/// Record header length.
const HEADER: usize = 5;
/// Largest plaintext in one record (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest TLS 1.3 ciphertext in one record (RFC 8446 §5.2).
const MAX_CIPHERTEXT_13: usize = MAX_PLAINTEXT + 256;
/// Largest TLS 1.2 ciphertext in one record (RFC 5246 §6.2.3).
const MAX_CIPHERTEXT_12: usize = MAX_PLAINTEXT + 2048;
/// A burst's first read (on the stack): its buffer is sized to what
/// arrived, and grows when a record header asks for more.
const FIRST_READ: usize = 2048;
/// Receive buffer while bulk data flows: four full records per read.
const BULK: usize = 4 * (HEADER + MAX_CIPHERTEXT_12);
/// Records without application data accepted in a row: empty ones, warning
/// alerts, key updates, renegotiation requests (rustls' limit for each,
/// BoringSSL's `kMaxKeyUpdates`).
const MAX_IDLE_RUN: u8 = 32;
/// Alert level "warning".
const WARNING: u8 = 1;
/// Alert descriptions.
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const USER_CANCELED: u8 = 90;
const NO_RENEGOTIATION: u8 = 100;
/// Handshake message type `key_update` (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;
/// A whole `KeyUpdate` message saying `update_not_requested`.
const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];

/// The keys of one direction and how far they may go.
struct Direction<T: ?Sized> {
    aead: Box<T>,
    seq: u64,
    /// Records that may be protected under one key: the suite's
    /// confidentiality limit (lowered in tests).
    limit: u64,
}

/// A downstream TLS connection after the handshake, its records sealed
/// and opened here.
pub(crate) struct TlsRecords {
    tcp: TcpSocket,
    rx: Direction<dyn MessageDecrypter>,
    tx: Direction<dyn MessageEncrypter>,
    /// rustls' side of the connection: derives the next traffic secrets.
    // Boxed: an idle connection's state stays small, and the kernel
    // connection is only touched on a key update.
    kernel: Box<KernelConnection<ServerConnectionData>>,
    tls13: bool,
    /// Received bytes; empty (unallocated) when nothing is in flight.
    rbuf: Vec<u8>,
    /// `rbuf[plain_at..plain_end]`: decrypted application data not yet read.
    plain_at: usize,
    plain_end: usize,
    /// `rbuf[rec_at..filled]`: received, not yet decrypted.
    rec_at: usize,
    filled: usize,
    /// Sealed records not yet written; empty (unallocated) when idle.
    wbuf: Vec<u8>,
    written: usize,
    /// Our `KeyUpdate` answering the client's request is in `wbuf`, not yet
    /// written (a second request then needs no second answer).
    answer_queued: bool,
    /// The client sent close_notify (or closed the connection).
    read_done: bool,
    /// Our closing alert is queued.
    close_sent: bool,
    /// The alert our shutdown sends: close_notify, unless the client broke
    /// the protocol.
    closing_alert: (u8, u8),
    /// Records without application data in a row (a client could otherwise
    /// keep the connection busy with nothing).
    idle_run: u8,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// What a session's keys could not be built from.
fn unsupported(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("the session's keys: {e}"))
}

impl TlsRecords {
    /// The record layer of a handshaken connection: `secrets` and `kernel`
    /// from rustls' `dangerous_into_kernel_connection`; `plain`: application
    /// data rustls opened during the handshake (read first); `ahead`: bytes
    /// read past the last record it opened.
    pub(crate) fn new(
        tcp: TcpSocket,
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
        plain: &[u8],
        ahead: &[u8],
    ) -> io::Result<Self> {
        let suite = kernel.negotiated_cipher_suite();
        let tls13 = kernel.protocol_version() == ProtocolVersion::TLSv1_3;
        let limit = match suite {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        let (rx_seq, rx) = secrets.rx;
        let (tx_seq, tx) = secrets.tx;
        let mut rbuf = Vec::new();
        if !plain.is_empty() || !ahead.is_empty() {
            rbuf.extend_from_slice(plain);
            rbuf.extend_from_slice(ahead);
        }
        Ok(TlsRecords {
            tcp,
            rx: Direction {
                aead: decrypter(suite, rx)?,
                seq: rx_seq,
                limit,
            },
            tx: Direction {
                aead: encrypter(suite, tx)?,
                seq: tx_seq,
                limit,
            },
            kernel: Box::new(kernel),
            tls13,
            plain_at: 0,
            plain_end: plain.len(),
            rec_at: plain.len(),
            filled: rbuf.len(),
            rbuf,
            wbuf: Vec::new(),
            written: 0,
            answer_queued: false,
            read_done: false,
            close_sent: false,
            closing_alert: (WARNING, CLOSE_NOTIFY),
            idle_run: 0,
        })
    }

    /// The largest ciphertext a record may carry.
    fn max_ciphertext(&self) -> usize {
        if self.tls13 {
            MAX_CIPHERTEXT_13
        } else {
            MAX_CIPHERTEXT_12
        }
    }

    /// A client record broke the protocol: the error to return, the fatal
    /// alert our shutdown sends in place of close_notify.
    fn fatal(&mut self, alert: u8, msg: &'static str) -> io::Error {
        self.closing_alert = (2, alert);
        invalid(msg)
    }

    /// Opens the record at `rbuf[rec_at..]` if it is complete: application
    /// data becomes `rbuf[plain_at..plain_end]`. `Ok(false)`: more bytes are
    /// needed.
    fn open_record(&mut self) -> io::Result<bool> {
        let have = &self.rbuf[self.rec_at..self.filled];
        if have.len() < HEADER {
            return Ok(false);
        }
        let typ = ContentType::from(have[0]);
        let version = ProtocolVersion::from(u16::from_be_bytes([have[1], have[2]]));
        let len = usize::from(u16::from_be_bytes([have[3], have[4]]));
        let typ_ok = match typ {
            // After the handshake every TLS 1.3 record is sealed as
            // application data.
            ContentType::ApplicationData => true,
            ContentType::Alert | ContentType::Handshake => !self.tls13,
            _ => false,
        };
        if !typ_ok {
            return Err(self.fatal(UNEXPECTED_MESSAGE, "unexpected TLS record type"));
        }
        if len > self.max_ciphertext() {
            return Err(self.fatal(22, "TLS record too large"));
        }
        if have.len() < HEADER + len {
            self.make_room(HEADER + len);
            return Ok(false);
        }
        if self.rx.seq >= self.rx.limit {
            // Nothing was forged: the session ends cleanly (close_notify).
            return Err(invalid(
                "the client sent more records than its cipher suite's confidentiality limit allows under one key",
            ));
        }
        let start = self.rec_at + HEADER;
        let end = start + len;
        self.rec_at = end;
        let base = self.rbuf.as_ptr() as usize;
        let msg = InboundOpaqueMessage::new(typ, version, &mut self.rbuf[start..end]);
        let plain = match self.rx.aead.decrypt(msg, self.rx.seq) {
            Ok(plain) => plain,
            Err(e) => {
                self.closing_alert = (2, BAD_RECORD_MAC);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        };
        self.rx.seq += 1;
        let typ = plain.typ;
        let range = plain_range(&plain, base);
        if typ == ContentType::ApplicationData && !range.is_empty() {
            self.idle_run = 0;
            // The plaintext is opened in place, inside this record.
            (self.plain_at, self.plain_end) = (range.start, range.end);
            return Ok(true);
        }
        // As rustls does: a few records without data are legal, a stream
        // of them is not.
        self.idle_run += 1;
        if self.idle_run > MAX_IDLE_RUN {
            return Err(self.fatal(
                UNEXPECTED_MESSAGE,
                "too many TLS records without application data in a row",
            ));
        }
        let payload = &self.rbuf[range];
        let whole: Option<[u8; 5]> = payload.try_into().ok();
        let alert: Option<[u8; 2]> = payload.try_into().ok();
        match typ {
            ContentType::ApplicationData => Ok(true),
            ContentType::Alert => self.on_alert(alert),
            ContentType::Handshake => self.on_handshake(whole),
            _ => Err(self.fatal(UNEXPECTED_MESSAGE, "unexpected TLS content type")),
        }
    }

    /// A bigger record than the buffer allows for: grow it (a bigger
    /// buffer makes room by moving the record forward).
    fn make_room(&mut self, record: usize) {
        let needed = self.rec_at + record;
        let full = HEADER + self.max_ciphertext();
        if self.rbuf.len() < full && needed > self.rbuf.len() {
            let size = if needed <= FIRST_READ {
                FIRST_READ
            } else {
                full
            };
            self.rbuf.resize(size, 0);
        }
    }

    /// An alert from the client.
    fn on_alert(&mut self, alert: Option<[u8; 2]>) -> io::Result<bool> {
        match alert {
            Some([_, CLOSE_NOTIFY]) => {
                self.read_done = true;
                Ok(true)
            }
            // Warnings are ignored (TLS 1.2), and user_canceled precedes a
            // close_notify; as rustls does.
            Some([WARNING, USER_CANCELED]) => Ok(true),
            Some([WARNING, _]) if !self.tls13 => Ok(true),
            _ => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client sent a fatal TLS alert",
            )),
        }
    }

    /// A handshake message after the handshake: a TLS 1.3 `KeyUpdate`, or
    /// a TLS 1.2 renegotiation request. `msg`: the record's payload, if it
    /// is 5 bytes long.
    fn on_handshake(&mut self, msg: Option<[u8; 5]>) -> io::Result<bool> {
        if !self.tls13 {
            // Renegotiation is declined, as rustls declines it.
            self.seal_raw(ContentType::Alert, &[WARNING, NO_RENEGOTIATION])?;
            return Ok(true);
        }
        // A KeyUpdate is alone at the end of its record (a key change never
        // splits a record, RFC 8446 §5.1); nothing else may follow the
        // handshake.
        let requested = match msg {
            Some([KEY_UPDATE, 0, 0, 1, 0]) => false,
            Some([KEY_UPDATE, 0, 0, 1, 1]) => true,
            _ => {
                return Err(self.fatal(
                    UNEXPECTED_MESSAGE,
                    "the client sent a handshake message other than KeyUpdate after the handshake",
                ));
            }
        };
        let (seq, secrets) = self.kernel.update_rx_secret().map_err(io::Error::other)?;
        self.rx.aead = decrypter(self.kernel.negotiated_cipher_suite(), secrets)?;
        self.rx.seq = seq;
        if requested && !self.answer_queued {
            self.update_tx_keys()?;
            self.answer_queued = true;
        }
        Ok(true)
    }

    /// Sends our `KeyUpdate` (sealed under the current keys) and moves the
    /// send keys on.
    fn update_tx_keys(&mut self) -> io::Result<()> {
        self.seal_raw(ContentType::Handshake, &KEY_UPDATE_NOT_REQUESTED)?;
        let (seq, secrets) = self.kernel.update_tx_secret().map_err(io::Error::other)?;
        self.tx.aead = encrypter(self.kernel.negotiated_cipher_suite(), secrets)?;
        self.tx.seq = seq;
        Ok(())
    }

    /// Writes out sealed records.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.wbuf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if !self.wbuf.is_empty() {
            self.wbuf = Vec::new();
            self.written = 0;
            self.answer_queued = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Seals `payload` as one record of type `typ`, queued for writing
    /// after what is queued already; the send keys move on first if this
    /// record would reach their limit.
    fn seal(&mut self, typ: ContentType, payload: &[u8]) -> io::Result<()> {
        // The KeyUpdate itself is the last record under the old keys.
        if self.tx.seq.saturating_add(1) >= self.tx.limit {
            if !self.tls13 {
                return Err(io::Error::other(
                    "the TLS 1.2 connection reached its cipher suite's confidentiality limit",
                ));
            }
            self.update_tx_keys()?;
        }
        self.seal_raw(typ, payload)
    }

    /// Seals one record under the current send keys.
    fn seal_raw(&mut self, typ: ContentType, payload: &[u8]) -> io::Result<()> {
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        };
        let sealed = self
            .tx
            .aead
            .encrypt(msg, self.tx.seq)
            .map_err(io::Error::other)?;
        self.tx.seq += 1;
        if self.wbuf.is_empty() {
            self.wbuf = sealed.encode();
            self.written = 0;
        } else {
            self.wbuf.extend_from_slice(&sealed.encode());
        }
        Ok(())
    }
}

/// Where an opened record's payload lies in the receive buffer.
fn plain_range(
    plain: &rustls::crypto::cipher::InboundPlainMessage<'_>,
    base: usize,
) -> std::ops::Range<usize> {
    let at = plain.payload.as_ptr() as usize - base;
    at..at + plain.payload.len()
}

/// A traffic secret's key and IV.
fn split(s: ConnectionTrafficSecrets) -> io::Result<(AeadKey, Iv)> {
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(unsupported("a cipher this record layer does not seal")),
    }
}

/// rustls' decrypter for `suite` with these keys.
fn decrypter(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> io::Result<Box<dyn MessageDecrypter>> {
    let (key, iv) = split(secrets)?;
    match suite {
        SupportedCipherSuite::Tls13(s) => Ok(s.aead_alg.decrypter(key, iv)),
        SupportedCipherSuite::Tls12(s) => {
            // rustls reports a TLS 1.2 nonce whole: the fixed part first.
            let fixed = s.aead_alg.key_block_shape().fixed_iv_len;
            let iv = iv
                .as_ref()
                .get(..fixed)
                .ok_or_else(|| unsupported("short IV"))?;
            Ok(s.aead_alg.decrypter(key, iv))
        }
    }
}

/// rustls' encrypter for `suite` with these keys.
fn encrypter(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> io::Result<Box<dyn MessageEncrypter>> {
    let (key, iv) = split(secrets)?;
    match suite {
        SupportedCipherSuite::Tls13(s) => Ok(s.aead_alg.encrypter(key, iv)),
        SupportedCipherSuite::Tls12(s) => {
            let shape = s.aead_alg.key_block_shape();
            let iv = iv.as_ref();
            let end = shape.fixed_iv_len + shape.explicit_nonce_len;
            match (
                iv.get(..shape.fixed_iv_len),
                iv.get(shape.fixed_iv_len..end),
            ) {
                (Some(fixed), Some(explicit)) => Ok(s.aead_alg.encrypter(key, fixed, explicit)),
                _ => Err(unsupported("short IV")),
            }
        }
    }
}

impl AsyncRead for TlsRecords {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut delivered = false;
        loop {
            if this.plain_at < this.plain_end {
                delivered = true;
                if this.deliver(buf) {
                    return Poll::Ready(Ok(()));
                }
                // Room left: open the next record already read, if any.
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            if this.rec_at < this.filled && this.open_record()? {
                if !this.wbuf.is_empty() {
                    // An answer to a KeyUpdate, or a declined renegotiation:
                    // out now if the socket takes it, else with the next write.
                    if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                continue;
            }
            if delivered {
                return Poll::Ready(Ok(()));
            }
            if this.rbuf.is_empty() {
                ready!(this.poll_first_read(cx))?;
            } else {
                ready!(this.poll_read_more(cx))?;
            }
        }
    }
}

impl TlsRecords {
    /// Copies opened plaintext into `buf`; true when the read should return
    /// now (`buf` is full, or nothing is left in flight).
    fn deliver(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let n = (self.plain_end - self.plain_at).min(buf.remaining());
        buf.put_slice(&self.rbuf[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain_end && self.rec_at == self.filled {
            // Nothing in flight: an idle session holds no buffer.
            self.rbuf = Vec::new();
            (self.plain_at, self.plain_end, self.rec_at, self.filled) = (0, 0, 0, 0);
            return true;
        }
        buf.remaining() == 0
    }

    /// A burst's first read, while no receive buffer exists.
    fn poll_first_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Read into the stack first and allocate only once bytes are there,
        // sized to them: a small record gets a small buffer, cheap to
        // allocate and with little to zero.
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut rb = ReadBuf::uninit(&mut probe);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        if got.is_empty() {
            // End of stream at a record boundary.
            self.read_done = true;
        } else {
            // A probe that filled up means bulk data.
            self.rbuf = crate::burst::buffer(got, FIRST_READ, BULK);
            self.filled = got.len();
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more of a record into the receive buffer (its partial record
    /// moved to the front first).
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rec_at > 0 {
            self.rbuf.copy_within(self.rec_at..self.filled, 0);
            self.filled -= self.rec_at;
            self.rec_at = 0;
        }
        let mut rb = ReadBuf::new(&mut self.rbuf[self.filled..]);
        if Pin::new(&mut self.tcp).poll_read(cx, &mut rb)?.is_pending() {
            if self.filled == 0 {
                self.rbuf = Vec::new();
            }
            return Poll::Pending;
        }
        let n = rb.filled().len();
        if n == 0 {
            if self.rec_at < self.filled {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection inside a TLS record",
                )));
            }
            self.read_done = true;
        }
        self.filled += n;
        if self.filled == self.rbuf.len() && self.rbuf.len() < BULK {
            // The buffer filled up: bulk data, read several records at a time.
            self.rbuf.resize(BULK, 0);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsRecords {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Up to four records per write: one syscall for a 64 KiB message.
        let mut n = 0;
        while n < data.len() && n < 4 * MAX_PLAINTEXT {
            let end = data.len().min(n + MAX_PLAINTEXT);
            this.seal(ContentType::ApplicationData, &data[n..end])?;
            n = end;
        }
        // Start writing now; what does not go out is written by the next
        // write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        if !this.close_sent {
            let (level, desc) = this.closing_alert;
            this.seal_raw(ContentType::Alert, &[level, desc])?;
            this.close_sent = true;
            ready!(this.poll_write_out(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
