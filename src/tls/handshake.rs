//! The server side of a handshake on rustls' unbuffered API: the
//! ClientHello picks the site's configuration, rustls runs the handshake
//! over buffers held here, and the finished connection becomes a
//! [`KernelConnection`] under our own record layer ([`TlsRecords`]).
//!
//! Buffers live only for the handshake: the bytes read so far (the
//! ClientHello is read once, first by rustls' [`Acceptor`] to learn the
//! SNI, then again by the connection the chosen configuration makes) and
//! the flight being written.

use std::sync::Arc;

use rustls::server::{Acceptor, ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{HandshakeKind, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::HandshakeError;
use super::records::TlsRecords;
use crate::socket::TcpSocket;

/// Most bytes a client may send before its handshake is done: a
/// ClientHello with every extension fits many times over.
const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;
/// What one read during the handshake asks for.
const READ_CHUNK: usize = 4096;

/// A finished handshake: the connection's record layer and what was
/// negotiated.
pub(crate) struct Established {
    /// The connection, its records sealed and opened by us.
    pub(crate) records: TlsRecords,
    /// ALPN chose HTTP/2.
    pub(crate) h2: bool,
    /// TLS 1.3 (else 1.2).
    pub(crate) tls13: bool,
    /// The client resumed a session.
    pub(crate) resumed: bool,
}

/// Bytes read from the client and not yet consumed by rustls.
pub(super) struct Incoming {
    buf: Vec<u8>,
    filled: usize,
}

impl Incoming {
    /// What has been read so far.
    pub(super) fn new(buf: Vec<u8>) -> Self {
        Incoming {
            filled: buf.len(),
            buf,
        }
    }

    /// Reads more from the client (end of stream is an error: the
    /// handshake is not done).
    async fn read_more(&mut self, tcp: &mut TcpSocket) -> Result<(), HandshakeError> {
        if self.filled >= MAX_HANDSHAKE_BYTES {
            return Err(HandshakeError::Protocol);
        }
        if self.buf.len() < self.filled + READ_CHUNK {
            self.buf.resize(self.filled + READ_CHUNK, 0);
        }
        let n = tcp
            .read(&mut self.buf[self.filled..])
            .await
            .map_err(|_| HandshakeError::Io)?;
        if n == 0 {
            return Err(HandshakeError::Io);
        }
        self.filled += n;
        Ok(())
    }

    /// Drops the first `n` bytes (rustls is done with them).
    fn discard(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }
}

/// Reads the ClientHello and asks `resolve` for the configuration its SNI
/// names. The bytes read stay in `input`, for the connection to read
/// again.
pub(super) async fn client_hello<S>(
    tcp: &mut TcpSocket,
    input: &mut Incoming,
    resolve: impl Fn(Option<&str>) -> Option<(Arc<ServerConfig>, S)>,
) -> Result<(Arc<ServerConfig>, S), HandshakeError> {
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    let accepted = loop {
        while fed < input.filled {
            match acceptor.read_tls(&mut &input.buf[fed..input.filled]) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(_) => return Err(HandshakeError::Protocol),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => input.read_more(tcp).await?,
            Err((_, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = tcp.write_all(&out).await;
                return Err(HandshakeError::Protocol);
            }
        }
    };
    resolve(accepted.client_hello().server_name()).ok_or(HandshakeError::NoSniMatch)
}

/// Runs the handshake under `config`, `input` holding what the client has
/// sent so far.
pub(super) async fn run(
    mut tcp: TcpSocket,
    mut input: Incoming,
    config: Arc<ServerConfig>,
) -> Result<Established, HandshakeError> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(|_| HandshakeError::Protocol)?;
    let mut out = Vec::new();
    // Application data the client sent with its last flight.
    let mut plain = Vec::new();
    loop {
        let UnbufferedStatus { discard, state } =
            conn.process_tls_records(&mut input.buf[..input.filled]);
        let step = match state {
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                encode(&mut out, |buf| data.encode(buf))?;
                Step::Again
            }
            Ok(ConnectionState::TransmitTlsData(data)) => {
                data.done();
                Step::Transmit
            }
            Ok(ConnectionState::BlockedHandshake) => Step::Read,
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(|_| HandshakeError::Protocol)?;
                    plain.extend_from_slice(record.payload);
                }
                Step::Again
            }
            Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
            // Early data is off (`max_early_data_size` 0); the rest is a
            // client that closed mid-handshake.
            Ok(_) => Step::Fail(HandshakeError::Io),
            Err(_) => Step::Fail(HandshakeError::Protocol),
        };
        input.discard(discard);
        match step {
            Step::Again => {}
            Step::Transmit => {
                tcp.write_all(&out).await.map_err(|_| HandshakeError::Io)?;
                out.clear();
            }
            Step::Read => input.read_more(&mut tcp).await?,
            Step::Done => break,
            Step::Fail(e) => {
                send_alert(&mut conn, &mut tcp, &mut input).await;
                return Err(e);
            }
        }
    }
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
    let (secrets, kernel) = conn
        .dangerous_into_kernel_connection()
        .map_err(|_| HandshakeError::Protocol)?;
    let records = TlsRecords::new(tcp, secrets, kernel, &plain, &input.buf[..input.filled])
        .map_err(|_| HandshakeError::Protocol)?;
    Ok(Established {
        records,
        h2,
        tls13,
        resumed,
    })
}

/// What the handshake loop does next.
enum Step {
    Again,
    Transmit,
    Read,
    Done,
    Fail(HandshakeError),
}

/// Appends one encoded handshake record to `out`, growing it as rustls
/// asks.
fn encode(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), HandshakeError> {
    let at = out.len();
    let mut room = 1024;
    loop {
        out.resize(at + room, 0);
        match encode(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) if e.required_size > room => {
                room = e.required_size;
            }
            Err(_) => {
                out.truncate(at);
                return Err(HandshakeError::Protocol);
            }
        }
    }
}

/// Sends the alert rustls queued when the handshake failed, if it did.
async fn send_alert(
    conn: &mut UnbufferedServerConnection,
    tcp: &mut TcpSocket,
    input: &mut Incoming,
) {
    let mut out = Vec::new();
    let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut input.buf[..0]);
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = state
        && encode(&mut out, |buf| data.encode(buf)).is_ok()
    {
        let _ = tcp.write_all(&out).await;
    }
}
