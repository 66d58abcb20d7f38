//! Connect: the one way to open a connection to a pool server, whatever
//! kind of address it has, for pool requests, WebSocket handshakes and
//! health checks alike.
//!
//! [`Address`] is the single place that grows with a new kind of address
//! (a `unix:` socket path is next): parsing it in [`Address::parse`] and
//! connecting to it in [`connect`], under the configured connect timeout.

use std::time::Duration;

use tokio::net::TcpStream;

use super::error::UpstreamError;

/// Where a pool server listens, parsed from its configured string.
#[derive(Debug)]
pub(crate) enum Address {
    /// `host:port`, over TCP.
    Tcp(http::uri::Authority),
}

impl Address {
    /// Parses a server address as configured (today always `host:port`).
    pub(crate) fn parse(s: &str) -> Result<Self, http::uri::InvalidUri> {
        s.parse().map(Address::Tcp)
    }
}

/// Opens a connection to `addr` within `timeout`.
pub(crate) async fn connect(addr: &Address, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    match addr {
        Address::Tcp(authority) => {
            match tokio::time::timeout(timeout, TcpStream::connect(authority.as_str())).await {
                Ok(Ok(tcp)) => {
                    // Requests and responses are written whole: waiting to
                    // coalesce small writes (Nagle) would only add latency.
                    let _ = tcp.set_nodelay(true);
                    Ok(tcp)
                }
                Ok(Err(e)) => Err(UpstreamError::Connect(e)),
                Err(_) => Err(UpstreamError::ConnectTimeout(timeout)),
            }
        }
    }
}
