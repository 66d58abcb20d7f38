//! TLS: one rustls configuration per site, and the handshake that picks it
//! from the client's SNI through a resolver it is handed (it knows nothing
//! of sites or routing).
//!
//! The handshake (`handshake.rs`) reads the ClientHello first, so a name no
//! site claims is refused before any certificate is chosen, and each
//! failure is classified for `switchyard_tls_handshake_failures_total`. It
//! runs on rustls' unbuffered API and hands the finished connection to our
//! own record layer (`records.rs`): rustls keeps only what derives the next
//! keys. See `tls/LIFECYCLE.md`.
//! Session tickets are sealed by the ticketer each configuration is handed:
//! the shared keys of `[tls] ticket_keys` ([`SharedTicketer`]), else rustls'
//! own rotating one, kept for the life of the process.

mod handshake;
mod records;
mod tickets;

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::ProducesTickets;
use tokio::io::AsyncWriteExt;

use crate::prefixed::Prefixed;
use crate::socket::TcpSocket;

pub(crate) use handshake::Established;
pub(crate) use records::TlsRecords;
pub use tickets::{SharedTicketer, TicketKeyError};

/// ALPN protocols offered, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A rustls server configuration that presents this certificate, offering
/// TLS 1.2 and 1.3 and ALPN h2 and http/1.1, its session tickets sealed by
/// `ticketer`.
pub fn site_server_config(
    key: Arc<rustls::sign::CertifiedKey>,
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(key));
    server_config(resolver, ticketer, &ALPN)
}

/// Like [`site_server_config`], the certificate chosen per handshake by
/// `resolver` (an ACME site's, which answers challenges) and the ALPN
/// protocols given.
pub(crate) fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    ticketer: Arc<dyn ProducesTickets>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection's keys leave rustls once the handshake is done
    // (see `records.rs`).
    config.enable_secret_extraction = true;
    // Tickets for TLS 1.2 and 1.3; the session cache stays for TLS 1.2
    // clients that resume by session ID.
    config.ticketer = ticketer;
    // No 0-RTT: early data can be replayed, and tickets that every
    // instance accepts would make replays easy.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// Why a handshake failed; the index is its position in
/// [`crate::metrics::TLS_FAILURE_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The SNI names no site with a certificate (or there was no SNI and
    /// more than one site has one).
    #[error("no site has a certificate for the requested server name")]
    NoSniMatch,
    /// The client spoke something other than TLS.
    #[error("the client did not speak TLS")]
    NotTls,
    /// A TLS protocol error.
    #[error("TLS protocol error")]
    Protocol,
    /// The handshake took longer than the header timeout.
    #[error("the handshake timed out")]
    Timeout,
    /// The socket failed.
    #[error("I/O error during the handshake")]
    Io,
}

impl HandshakeError {
    /// Index into [`crate::metrics::TLS_FAILURE_REASONS`].
    pub fn reason_index(self) -> usize {
        match self {
            HandshakeError::NoSniMatch => 0,
            HandshakeError::NotTls => 1,
            HandshakeError::Protocol => 2,
            HandshakeError::Timeout => 3,
            HandshakeError::Io => 4,
        }
    }
}

/// The TLS record type byte that opens every handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 46\r\n\r\nThis port speaks HTTPS; use https:// for it.\r\n";

/// Runs the server side of a handshake. `resolve` maps the client's SNI
/// (none: a client connecting by address) to the configuration to present
/// and what it belongs to (a site), which is returned with the stream.
pub async fn accept<S>(
    mut tcp: Prefixed<TcpSocket>,
    resolve: impl Fn(Option<&str>) -> Option<(Arc<ServerConfig>, S)>,
    timeout: Duration,
) -> Result<(Established, S), HandshakeError> {
    let work = async {
        let mut first = [0u8; 1];
        // Bytes read past a PROXY header already show the first one.
        if let Some(&b) = tcp.pending().first() {
            first[0] = b;
        } else {
            let n = tcp
                .get_ref()
                .peek(&mut first)
                .await
                .map_err(|_| HandshakeError::Io)?;
            if n == 0 {
                return Err(HandshakeError::Io);
            }
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            if first[0].is_ascii_uppercase() {
                // Looks like plain HTTP: tell the client, as nginx does.
                let _ = tcp.write_all(PLAIN_HTTP_ON_TLS).await;
                let _ = tcp.shutdown().await;
            }
            return Err(HandshakeError::NotTls);
        }
        let (mut tcp, ahead) = tcp.into_parts();
        let mut input = handshake::Incoming::new(ahead);
        let (config, site) = handshake::client_hello(&mut tcp, &mut input, resolve).await?;
        let established = handshake::run(tcp, input, config).await?;
        Ok((established, site))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout),
    }
}
