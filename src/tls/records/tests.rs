//! The record layer against a real rustls client over loopback TCP.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::*;
use crate::prefixed::Prefixed;
use crate::socket::TcpSocket;

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

type Client = tokio_rustls::client::TlsStream<TcpStream>;

/// A handshaken TLS pair over loopback TCP, the server side through
/// our handshake: (client, server), the client offering only `versions`.
async fn pair(versions: &[&'static rustls::SupportedProtocolVersion]) -> (Client, TlsRecords) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let der = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified =
        rustls::sign::CertifiedKey::from_der(vec![der.clone()], key, &provider).unwrap();
    let ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    let server = crate::tls::site_server_config(Arc::new(certified), ticketer).unwrap();
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
        let resolve = |_: Option<&str>| Some((server.clone(), ()));
        let (tls, ()) = crate::tls::accept(
            Prefixed::new(TcpSocket::from_tokio(tcp).unwrap()),
            resolve,
            WAIT,
        )
        .await
        .unwrap();
        tls.records
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

async fn tls13() -> (Client, TlsRecords) {
    pair(&[&rustls::version::TLS13]).await
}

/// `len` bytes of a pattern.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Sends `msg` from the client and reads it at the server.
async fn up(c: &mut Client, s: &mut TlsRecords, msg: &[u8]) {
    c.write_all(msg).await.unwrap();
    c.flush().await.unwrap();
    let mut got = vec![0; msg.len()];
    timeout(WAIT, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, msg);
}

/// Sends `msg` from the server and reads it at the client.
async fn down(c: &mut Client, s: &mut TlsRecords, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    s.flush().await.unwrap();
    let mut got = vec![0; msg.len()];
    timeout(WAIT, c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, msg);
}

#[tokio::test]
async fn data_crosses_both_ways_and_an_idle_connection_holds_no_buffer() {
    for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let (mut c, mut s) = pair(versions).await;
        assert_eq!(s.tls13, versions[0] == &rustls::version::TLS13);
        // Small, then several records' worth each way.
        for len in [5, 100_000] {
            up(&mut c, &mut s, &data(len)).await;
            down(&mut c, &mut s, &data(len)).await;
            assert_eq!(s.rbuf.capacity(), 0, "receive buffer kept while idle");
            assert_eq!(s.wbuf.capacity(), 0, "send buffer kept while idle");
        }
    }
}

#[tokio::test]
async fn a_record_split_across_reads_is_opened_whatever_the_first_reads_size() {
    let (mut c, mut s) = tls13().await;
    for (len, first) in [
        (100, 10),
        (100, 60),
        (1_000, 10),
        (1_000, 100),
        (5_000, 300),
    ] {
        let data = data(len);
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
        timeout(WAIT, s.tcp.peek(&mut [0; 1]))
            .await
            .unwrap()
            .unwrap();
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
    let (mut c, mut s) = tls13().await;
    c.shutdown().await.unwrap();
    let mut buf = [0; 16];
    assert_eq!(timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap(), 0);
    s.shutdown().await.unwrap();
    // The client sees our close_notify: a clean end, not an error.
    assert_eq!(timeout(WAIT, c.read(&mut buf)).await.unwrap().unwrap(), 0);
}

#[tokio::test]
async fn client_key_updates_are_honoured_and_answered_many_times_over() {
    let (mut c, mut s) = tls13().await;
    for round in 0..200usize {
        // rustls' refresh asks for an update in return: the client's
        // send keys move now, ours once we answer.
        c.get_mut().1.refresh_traffic_keys().unwrap();
        let msg = data(1 + round * 97 % 40_000);
        up(&mut c, &mut s, &msg).await;
        assert_eq!(s.rx.seq, msg.len().div_ceil(MAX_PLAINTEXT) as u64);
        // Our answer went first, then the data under the new keys.
        assert_eq!(s.tx.seq, 0, "send keys not updated in round {round}");
        down(&mut c, &mut s, &msg).await;
    }
    // Several in a row, with no data between them.
    for _ in 0..20 {
        c.get_mut().1.refresh_traffic_keys().unwrap();
        c.write_all(b"").await.unwrap();
        c.flush().await.unwrap();
    }
    up(&mut c, &mut s, b"after twenty updates").await;
    down(&mut c, &mut s, b"and back").await;
    assert_eq!(s.wbuf.capacity(), 0, "send buffer kept while idle");
}

#[tokio::test]
async fn a_client_key_update_not_asking_for_ours_moves_only_the_receive_keys() {
    let (c, mut s) = tls13().await;
    let (mut tcp, conn) = c.into_inner();
    let mut client = ClientKeys::new(conn);
    let mut wire = client.seal(ContentType::ApplicationData, b"old keys");
    wire.extend(client.seal(ContentType::Handshake, &KEY_UPDATE_NOT_REQUESTED));
    tcp.write_all(&wire).await.unwrap();
    let mut buf = [0; 16];
    let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"old keys");
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut rb = ReadBuf::new(&mut buf);
    assert!(Pin::new(&mut s).poll_read(&mut cx, &mut rb).is_pending());
    assert_eq!(s.rx.seq, 0, "receive keys did not move");
    assert!(
        s.wbuf.is_empty(),
        "answered a KeyUpdate that asked for none"
    );
    // A record under the old keys no longer opens.
    tcp.write_all(&client.seal(ContentType::ApplicationData, b"stale"))
        .await
        .unwrap();
    let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_key_update_that_does_not_end_its_record_is_refused() {
    let (c, mut s) = tls13().await;
    let (mut tcp, conn) = c.into_inner();
    let mut client = ClientKeys::new(conn);
    let mut msg = KEY_UPDATE_NOT_REQUESTED.to_vec();
    msg.extend(KEY_UPDATE_NOT_REQUESTED);
    tcp.write_all(&client.seal(ContentType::Handshake, &msg))
        .await
        .unwrap();
    let mut buf = [0; 16];
    let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("KeyUpdate"), "{err}");
}

#[tokio::test]
async fn our_send_keys_move_on_before_the_confidentiality_limit() {
    let (mut c, mut s) = tls13().await;
    s.tx.limit = 10;
    for round in 0..100 {
        down(&mut c, &mut s, format!("message {round}").as_bytes()).await;
        assert!(s.tx.seq < 10);
    }
    // The client followed every update: both ways still work.
    up(&mut c, &mut s, b"still here").await;
}

#[tokio::test]
async fn a_client_past_the_receive_limit_is_refused_and_sent_close_notify() {
    let (mut c, mut s) = tls13().await;
    s.rx.limit = 5;
    for i in 0..5u8 {
        up(&mut c, &mut s, &[i]).await;
    }
    c.write_all(b"one too many").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = [0; 16];
    let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("confidentiality limit"), "{err}");
    s.shutdown().await.unwrap();
    assert_eq!(timeout(WAIT, c.read(&mut buf)).await.unwrap().unwrap(), 0);
}

#[tokio::test]
async fn tls12_ends_at_the_limit_it_cannot_update() {
    let (mut c, mut s) = pair(&[&rustls::version::TLS12]).await;
    down(&mut c, &mut s, b"fine").await;
    s.tx.limit = s.tx.seq + 2;
    down(&mut c, &mut s, b"fine").await;
    let err = s.write_all(b"over").await.unwrap_err();
    assert!(err.to_string().contains("confidentiality limit"), "{err}");
}

#[tokio::test]
async fn tampered_records_are_refused() {
    let (mut c, mut s) = tls13().await;
    // A record header with a type that is not application data.
    c.get_mut().0.write_all(&[22, 3, 3, 0, 1, 0]).await.unwrap();
    let mut buf = [0; 16];
    let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_record_that_does_not_open_is_refused() {
    let (mut c, mut s) = tls13().await;
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend([0x5a; 40]);
    c.get_mut().0.write_all(&forged).await.unwrap();
    let mut buf = [0; 16];
    let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(s.closing_alert, (2, BAD_RECORD_MAC));
}

/// The client's send keys, to seal records rustls' writer would not.
struct ClientKeys {
    tx: Box<dyn MessageEncrypter>,
    seq: u64,
}

impl ClientKeys {
    fn new(conn: rustls::ClientConnection) -> Self {
        let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else {
            panic!("not TLS 1.3");
        };
        let (seq, secrets) = conn.dangerous_extract_secrets().unwrap().tx;
        let (key, iv) = split(secrets).unwrap();
        ClientKeys {
            tx: suite.aead_alg.encrypter(key, iv),
            seq,
        }
    }

    fn seal(&mut self, typ: ContentType, payload: &[u8]) -> Vec<u8> {
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        };
        let sealed = self.tx.encrypt(msg, self.seq).unwrap().encode();
        self.seq += 1;
        sealed
    }
}

#[tokio::test]
async fn a_stream_of_empty_records_is_refused() {
    let (c, mut s) = tls13().await;
    // rustls' writer skips empty writes, so the client's records are
    // sealed here with its own keys.
    let (mut tcp, conn) = c.into_inner();
    let mut client = ClientKeys::new(conn);
    // A few empty records are fine.
    let mut wire = Vec::new();
    for _ in 0..3 {
        wire.extend(client.seal(ContentType::ApplicationData, b""));
    }
    wire.extend(client.seal(ContentType::ApplicationData, b"data"));
    tcp.write_all(&wire).await.unwrap();
    let mut buf = [0; 16];
    let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"data");
    // A stream of them is not.
    let mut wire = Vec::new();
    for _ in 0..=MAX_IDLE_RUN {
        wire.extend(client.seal(ContentType::ApplicationData, b""));
    }
    tcp.write_all(&wire).await.unwrap();
    let err = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("without application data"),
        "{err}"
    );
}
