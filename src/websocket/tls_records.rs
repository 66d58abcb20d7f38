//! The TLS 1.3 record layer of a downstream WebSocket session, taken over
//! from rustls once the handshake and the upgrade are done.
//!
//! rustls' buffered connection keeps a 4 KiB receive buffer, its handshake
//! bookkeeping and its state machine allocated for the connection's whole
//! life; across thousands of mostly idle sessions that is most of what a
//! session costs. After the upgrade nothing but application data (and a
//! closing alert) is expected, so the session's traffic keys are taken out
//! of rustls (`dangerous_extract_secrets`, as for kernel TLS) and records are
//! sealed and opened here with rustls' own AEAD implementations. Buffers
//! exist only while a record is in flight: an idle session holds its socket
//! and its two keys, nothing else.
//!
//! Limits: TLS 1.3 only (a TLS 1.2 session keeps rustls), and a client
//! `KeyUpdate` ends the session, since the next keys can only be derived from
//! the traffic secret rustls keeps. Clients update keys after about 2^24
//! records at the earliest, and a browser reconnects. Complete records rustls
//! has already read are opened before the take-over; a record it had read
//! only in part (possible only if the client sent frames before it had the
//! 101, which RFC 6455 §4.1 forbids) cannot be recovered, and the session
//! then ends with an error on its next read rather than relaying garbage.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::prefixed::Prefixed;

/// Record header length.
const HEADER: usize = 5;
/// Largest plaintext in one record (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest ciphertext in one record (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// A burst's first read (on the stack): its buffer is sized to what
/// arrived, and grows when a record header asks for more.
const FIRST_READ: usize = 2048;
/// Receive buffer while bulk data flows: four full records per read.
const BULK: usize = 4 * (HEADER + MAX_CIPHERTEXT);
/// Empty application-data records accepted in a row (rustls' limit too).
const MAX_EMPTY_RUN: u8 = 32;
/// Alert level "warning" and description "close_notify".
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// A downstream TLS 1.3 connection after the handshake, its records sealed
/// and opened here.
pub(crate) struct TlsRecords {
    tcp: TcpStream,
    rx: Box<dyn MessageDecrypter>,
    tx: Box<dyn MessageEncrypter>,
    rx_seq: u64,
    tx_seq: u64,
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
    /// The client sent close_notify (or closed the connection).
    read_done: bool,
    /// Our close_notify is queued.
    close_sent: bool,
    /// Empty application-data records in a row (a client could otherwise
    /// keep the relay busy with nothing).
    empty_run: u8,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl TlsRecords {
    /// Whether `tls` can be taken over: TLS 1.3, handshake done, nothing
    /// left for rustls to send.
    pub(crate) fn applicable<IO>(tls: &TlsStream<IO>) -> bool {
        let (_, conn) = tls.get_ref();
        conn.protocol_version() == Some(ProtocolVersion::TLSv1_3)
            && !conn.is_handshaking()
            && !conn.wants_write()
            && matches!(
                conn.negotiated_cipher_suite(),
                Some(SupportedCipherSuite::Tls13(_))
            )
    }

    /// Takes the connection's keys out of rustls. Returns the stream and any
    /// application data rustls had already decrypted (to be read first).
    /// Call only when [`TlsRecords::applicable`] holds.
    pub(crate) fn take_over(
        mut tls: TlsStream<Prefixed<TcpStream>>,
    ) -> io::Result<(Self, Vec<u8>)> {
        let (_, conn) = tls.get_mut();
        // Complete records rustls has read are opened now, so nothing it
        // holds is lost with it.
        let state = conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut early = vec![0; state.plaintext_bytes_to_read()];
        io::Read::read_exact(&mut conn.reader(), &mut early)?;
        let suite = match conn.negotiated_cipher_suite() {
            Some(SupportedCipherSuite::Tls13(suite)) => suite,
            _ => return Err(invalid("not a TLS 1.3 connection")),
        };
        let (stream, conn) = tls.into_inner();
        let (tcp, ahead) = stream.into_parts();
        if !ahead.is_empty() {
            // rustls read them with the ClientHello; never left over.
            return Err(invalid("bytes read past the PROXY header were never read"));
        }
        let secrets = conn
            .dangerous_extract_secrets()
            .map_err(|e| io::Error::other(format!("extracting the session keys: {e}")))?;
        let aead = suite.aead_alg;
        let (rx_seq, rx) = secrets.rx;
        let (tx_seq, tx) = secrets.tx;
        let (rx_key, rx_iv) = split(rx)?;
        let (tx_key, tx_iv) = split(tx)?;
        if rx_key.as_ref().len() != aead.key_len() || tx_key.as_ref().len() != aead.key_len() {
            return Err(invalid("session key of an unexpected length"));
        }
        Ok((
            TlsRecords {
                tcp,
                rx: aead.decrypter(rx_key, rx_iv),
                tx: aead.encrypter(tx_key, tx_iv),
                rx_seq,
                tx_seq,
                rbuf: Vec::new(),
                plain_at: 0,
                plain_end: 0,
                rec_at: 0,
                filled: 0,
                wbuf: Vec::new(),
                written: 0,
                read_done: false,
                close_sent: false,
                empty_run: 0,
            },
            early,
        ))
    }

    /// Opens the record at `rbuf[rec_at..]` if it is complete: its
    /// plaintext becomes `rbuf[plain_at..plain_end]`. `Ok(false)`: more
    /// bytes are needed.
    fn open_record(&mut self) -> io::Result<bool> {
        let have = &self.rbuf[self.rec_at..self.filled];
        if have.len() < HEADER {
            return Ok(false);
        }
        let len = usize::from(u16::from_be_bytes([have[3], have[4]]));
        if have[0] != u8::from(ContentType::ApplicationData) {
            // After the handshake every TLS 1.3 record is sealed as
            // application data.
            return Err(invalid("unexpected TLS record type after the handshake"));
        }
        if len > MAX_CIPHERTEXT {
            return Err(invalid("TLS record too large"));
        }
        if have.len() < HEADER + len {
            let needed = self.rec_at + HEADER + len;
            if self.rbuf.len() < HEADER + MAX_CIPHERTEXT && needed > self.rbuf.len() {
                // A bigger record than the first read allowed for. (A
                // bigger buffer makes room by moving the record forward.)
                let size = if needed <= FIRST_READ {
                    FIRST_READ
                } else {
                    HEADER + MAX_CIPHERTEXT
                };
                self.rbuf.resize(size, 0);
            }
            return Ok(false);
        }
        let start = self.rec_at + HEADER;
        let end = start + len;
        self.rec_at = end;
        let base = self.rbuf.as_ptr() as usize;
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut self.rbuf[start..end],
        );
        let plain = self
            .rx
            .decrypt(msg, self.rx_seq)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.rx_seq += 1;
        match plain.typ {
            ContentType::ApplicationData => {
                if plain.payload.is_empty() {
                    // As rustls does: a few are legal, a stream of them is not.
                    self.empty_run += 1;
                    if self.empty_run > MAX_EMPTY_RUN {
                        return Err(invalid("too many empty TLS records in a row"));
                    }
                } else {
                    self.empty_run = 0;
                }
                // The plaintext is opened in place, inside this record.
                let at = plain.payload.as_ptr() as usize - base;
                self.plain_at = at;
                self.plain_end = at + plain.payload.len();
            }
            ContentType::Alert => {
                if plain.payload == CLOSE_NOTIFY {
                    self.read_done = true;
                } else {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client sent a TLS alert",
                    ));
                }
            }
            ContentType::Handshake => {
                return Err(invalid(
                    "the client sent a post-handshake TLS message (KeyUpdate), not supported on a relayed session",
                ));
            }
            _ => return Err(invalid("unexpected TLS content type")),
        }
        Ok(true)
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
        }
        Poll::Ready(Ok(()))
    }

    /// Seals `payload` as one record of type `typ`, queued for writing
    /// after what is queued already.
    fn seal(&mut self, typ: ContentType, payload: &[u8]) -> io::Result<()> {
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        };
        let sealed = self
            .tx
            .encrypt(msg, self.tx_seq)
            .map_err(io::Error::other)?;
        self.tx_seq += 1;
        if self.wbuf.is_empty() {
            self.wbuf = sealed.encode();
            self.written = 0;
        } else {
            self.wbuf.extend_from_slice(&sealed.encode());
        }
        Ok(())
    }
}

/// A TLS 1.3 traffic key and IV.
fn split(
    s: ConnectionTrafficSecrets,
) -> io::Result<(rustls::crypto::cipher::AeadKey, rustls::crypto::cipher::Iv)> {
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(invalid("unsupported cipher")),
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
            self.rbuf = super::burst_buffer(got, FIRST_READ, BULK);
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
            this.seal(ContentType::Alert, &CLOSE_NOTIFY)?;
            this.close_sent = true;
            ready!(this.poll_write_out(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;

    use super::*;

    /// Bound on every wait in these tests.
    const WAIT: Duration = Duration::from_secs(10);

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    /// A handshaken TLS pair over loopback TCP: (client, server), the client
    /// offering only `versions`.
    async fn pair(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Client, TlsStream<Prefixed<TcpStream>>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = cert.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        server.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Lets a test seal records as the client would.
        client.enable_secret_extraction = true;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(Prefixed::new(tcp))
                .await
                .unwrap()
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap()
        };
        let (mut c, s) = timeout(WAIT, async { tokio::join!(connect, accept) })
            .await
            .unwrap();
        // The server's session tickets go out with the handshake's last
        // flight; the client reads them with its first read.
        c.flush().await.unwrap();
        (c, s)
    }

    async fn taken_over() -> (Client, TlsRecords) {
        let (c, s) = pair(&[&rustls::version::TLS13]).await;
        assert!(TlsRecords::applicable(&s));
        let (records, early) = TlsRecords::take_over(s).unwrap();
        assert!(early.is_empty());
        (c, records)
    }

    #[tokio::test]
    async fn data_crosses_both_ways_and_an_idle_connection_holds_no_buffer() {
        let (mut c, mut s) = taken_over().await;
        // Small, then several records' worth each way.
        for len in [5, 100_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            c.write_all(&data).await.unwrap();
            c.flush().await.unwrap();
            let mut got = vec![0; len];
            timeout(WAIT, s.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, data);
            s.write_all(&data).await.unwrap();
            s.flush().await.unwrap();
            let mut back = vec![0; len];
            timeout(WAIT, c.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(back, data);
            assert_eq!(s.rbuf.capacity(), 0, "receive buffer kept while idle");
            assert_eq!(s.wbuf.capacity(), 0, "send buffer kept while idle");
        }
    }

    #[tokio::test]
    async fn a_record_split_across_reads_is_opened_whatever_the_first_reads_size() {
        use std::io::Write as _;
        let (mut c, mut s) = taken_over().await;
        for (len, first) in [
            (100, 10),
            (100, 60),
            (1_000, 10),
            (1_000, 100),
            (5_000, 300),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            // The client's record, sealed but not sent.
            let conn = &mut c.get_mut().1;
            conn.writer().write_all(&data).unwrap();
            let mut wire = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut wire).unwrap();
            }
            assert!(wire.len() > first);
            // The first piece arrives alone: one read takes it (and sizes
            // the buffer to it); the record is not complete yet.
            c.get_mut().0.write_all(&wire[..first]).await.unwrap();
            timeout(WAIT, s.tcp.readable()).await.unwrap().unwrap();
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut one = [0u8; 1];
            let mut rb = ReadBuf::new(&mut one);
            assert!(Pin::new(&mut s).poll_read(&mut cx, &mut rb).is_pending());
            assert!(s.filled > 0 && s.filled <= first);
            // Then the rest.
            c.get_mut().0.write_all(&wire[first..]).await.unwrap();
            let mut got = vec![0; len];
            timeout(WAIT, s.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, data, "record of {len} bytes, first read {first}");
            assert_eq!(s.rbuf.capacity(), 0, "receive buffer kept while idle");
        }
    }

    #[tokio::test]
    async fn close_notify_ends_both_ways_cleanly() {
        let (mut c, mut s) = taken_over().await;
        c.shutdown().await.unwrap();
        let mut buf = [0; 16];
        assert_eq!(timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap(), 0);
        s.shutdown().await.unwrap();
        // The client sees our close_notify: a clean end, not an error.
        assert_eq!(timeout(WAIT, c.read(&mut buf)).await.unwrap().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_client_key_update_ends_the_session_with_a_clear_error() {
        let (mut c, mut s) = taken_over().await;
        c.get_mut().1.refresh_traffic_keys().unwrap();
        c.write_all(b"after the update").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0; 64];
        let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
        assert!(err.to_string().contains("KeyUpdate"), "{err}");
    }

    #[tokio::test]
    async fn tampered_records_are_refused() {
        let (mut c, mut s) = taken_over().await;
        // A record header with a type that is not application data.
        c.get_mut().0.write_all(&[22, 3, 3, 0, 1, 0]).await.unwrap();
        let mut buf = [0; 16];
        let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_record_that_does_not_open_is_refused() {
        let (mut c, mut s) = taken_over().await;
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend([0x5a; 40]);
        c.get_mut().0.write_all(&forged).await.unwrap();
        let mut buf = [0; 16];
        let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_stream_of_empty_records_is_refused() {
        let (c, mut s) = taken_over().await;
        // rustls' writer skips empty writes, so the client's records are
        // sealed here with its own keys.
        let (mut tcp, conn) = c.into_inner();
        let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else {
            panic!("not TLS 1.3");
        };
        let (mut seq, secrets) = conn.dangerous_extract_secrets().unwrap().tx;
        let (key, iv) = split(secrets).unwrap();
        let mut tx = suite.aead_alg.encrypter(key, iv);
        let mut seal = |payload: &[u8]| {
            let msg = OutboundPlainMessage {
                typ: ContentType::ApplicationData,
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::Single(payload),
            };
            let sealed = tx.encrypt(msg, seq).unwrap().encode();
            seq += 1;
            sealed
        };
        // A few empty records are fine.
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend(seal(b""));
        }
        wire.extend(seal(b"data"));
        tcp.write_all(&wire).await.unwrap();
        let mut buf = [0; 16];
        let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"data");
        // A stream of them is not.
        let mut wire = Vec::new();
        for _ in 0..=MAX_EMPTY_RUN {
            wire.extend(seal(b""));
        }
        tcp.write_all(&wire).await.unwrap();
        let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
        assert!(err.to_string().contains("empty TLS records"), "{err}");
    }

    #[tokio::test]
    async fn tls12_connections_stay_with_rustls() {
        let (_c, s) = pair(&[&rustls::version::TLS12]).await;
        assert!(!TlsRecords::applicable(&s));
    }
}
