//! PROXY protocol (v1 text and v2 binary, HAProxy's specification): the
//! header an L4 load balancer puts before a connection's first byte to say
//! who the client is.
//!
//! With `[listen] proxy_protocol = true` every https and http connection
//! must start with one; it is read before TLS and before HTTP. The header
//! is parsed by the `proxy-header` crate; this module adds the bounds a
//! listener needs (a size limit, the header timeout, the trusted-peer
//! check) and hands the bytes that followed the header on, unread, in a
//! [`Prefixed`] stream.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use proxy_header::{ParseConfig, Protocol, ProxyHeader};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::prefixed::Prefixed;

/// The v2 signature (12 bytes) that opens a binary header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// What opens a v1 text header.
const V1_START: &[u8] = b"PROXY ";
/// The largest header accepted, TLVs included. v1 is at most 107 bytes;
/// load balancers' v2 TLVs (AWS, GCP, HAProxy's SSL block) are a few
/// hundred.
pub const MAX_HEADER: usize = 4096;
/// The longest v1 line the specification allows, CRLF included.
const V1_MAX: usize = 107;
/// The first read's buffer: the whole header and, usually, the start of
/// what follows it.
const FIRST_READ: usize = 1024;

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection: the client's address, and the address
    /// the client connected to.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to (the load balancer's).
        destination: SocketAddr,
    },
    /// No client address: v2 `LOCAL` (the load balancer's own health
    /// check), v1 `UNKNOWN`, or an address family other than IPv4/IPv6.
    /// The TCP peer is the client.
    Local,
}

/// Why a connection's PROXY header was refused. Every case is the peer's
/// doing (a load balancer without PROXY protocol enabled, a client
/// connecting past it, or a broken sender); none is retried.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    /// The first bytes are not a PROXY header.
    #[error(
        "the connection did not start with a PROXY protocol header (is the load balancer sending one?)"
    )]
    Missing,
    /// The header is malformed.
    #[error("malformed PROXY protocol header")]
    Malformed,
    /// A v2 header for a datagram (UDP) connection.
    #[error("PROXY protocol header for a UDP connection on a TCP listener")]
    NotStream,
    /// The header is longer than [`MAX_HEADER`].
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLarge,
    /// The connection closed before the header was complete.
    #[error("the connection closed inside its PROXY protocol header")]
    Truncated,
    /// The header did not arrive within `timeouts.header`.
    #[error("no complete PROXY protocol header within the header timeout")]
    Timeout,
    /// Reading the socket failed.
    #[error("reading the PROXY protocol header")]
    Io(#[source] io::Error),
}

/// Parses a PROXY header at the start of `buf`: the header and its length,
/// or `None` while `buf` is a valid beginning that needs more bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyProtocolError> {
    // Refuse at the first byte that cannot start a header, so a client
    // that skipped the load balancer is turned away at once, not after
    // the header timeout.
    let opening = if buf.first() == Some(&b'P') {
        V1_START
    } else {
        V2_SIGNATURE
    };
    let n = buf.len().min(opening.len());
    if buf[..n] != opening[..n] {
        return Err(ProxyProtocolError::Missing);
    }
    if opening == V1_START
        && let Some(lf) = memchr::memchr(b'\n', buf)
        && (lf == 0 || buf[lf - 1] != b'\r')
    {
        // A v1 line must end in CRLF; the parser would wait for the CR.
        return Err(ProxyProtocolError::Malformed);
    }
    if opening == V2_SIGNATURE && buf.len() >= 16 {
        let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > MAX_HEADER {
            return Err(ProxyProtocolError::TooLarge);
        }
    }
    let config = ParseConfig {
        include_tlvs: false,
        allow_v1: true,
        allow_v2: true,
    };
    match ProxyHeader::parse(buf, config) {
        // The parser checks the v1 limit only while the line is incomplete.
        Ok((_, used)) if opening == V1_START && used > V1_MAX => Err(ProxyProtocolError::Malformed),
        Ok((header, used)) => {
            let header = match header.proxied_address() {
                None => Header::Local,
                Some(a) if a.protocol != Protocol::Stream => {
                    return Err(ProxyProtocolError::NotStream);
                }
                Some(a) => Header::Proxied {
                    source: a.source,
                    destination: a.destination,
                },
            };
            Ok(Some((header, used)))
        }
        Err(proxy_header::Error::BufferTooShort) if buf.len() >= MAX_HEADER => {
            Err(ProxyProtocolError::TooLarge)
        }
        Err(proxy_header::Error::BufferTooShort) => Ok(None),
        Err(_) => Err(ProxyProtocolError::Malformed),
    }
}

/// Reads the PROXY header that must open `tcp`, within `timeout`. Returns
/// it and the stream, with whatever arrived after the header still to be
/// read. One `read` when the header arrives in one segment, as it does
/// from every load balancer; a header split across segments is read on.
pub async fn read_header<IO: AsyncRead + Unpin>(
    mut tcp: IO,
    timeout: Duration,
) -> Result<(Header, Prefixed<IO>), ProxyProtocolError> {
    let work = async {
        let mut buf = Vec::with_capacity(FIRST_READ);
        loop {
            if buf.len() == buf.capacity() {
                // Only a v2 header with large TLVs gets here; `parse` has
                // already refused one over the limit.
                buf.reserve(MAX_HEADER.saturating_sub(buf.len()).max(1));
            }
            let n = tcp
                .read_buf(&mut buf)
                .await
                .map_err(ProxyProtocolError::Io)?;
            if n == 0 {
                return Err(if buf.is_empty() {
                    ProxyProtocolError::Missing
                } else {
                    ProxyProtocolError::Truncated
                });
            }
            if let Some((header, used)) = parse(&buf)? {
                return Ok((header, used, buf));
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok((header, used, buf))) => Ok((header, Prefixed::with_prefix(tcp, &buf[used..]))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProxyProtocolError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v1_tcp4_and_tcp6_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\nGET";
        let (header, used) = parse(h).unwrap().unwrap();
        assert_eq!(used, h.len() - 3);
        assert_eq!(
            header,
            Header::Proxied {
                source: "192.0.2.7:51234".parse().unwrap(),
                destination: "198.51.100.1:443".parse().unwrap(),
            }
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 8443\r\n";
        let (header, _) = parse(h).unwrap().unwrap();
        assert!(
            matches!(header, Header::Proxied { source, .. } if source.to_string() == "[2001:db8::7]:4000")
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Some((Header::Local, 15))
        );
    }

    #[test]
    fn v2_proxy_local_and_tlvs_skipped() {
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x01, 0xbb];
        // An AWS-style TLV (type 0xEA) and a NOOP, both skipped.
        body.extend_from_slice(&[0xea, 0, 3, 1, 2, 3, 0x04, 0, 2, 0, 0]);
        let mut h = v2(0x21, 0x11, &body);
        h.extend_from_slice(b"\x16\x03\x01");
        let (header, used) = parse(&h).unwrap().unwrap();
        assert_eq!(used, h.len() - 3);
        assert_eq!(
            header,
            Header::Proxied {
                source: "192.0.2.7:51234".parse().unwrap(),
                destination: "10.0.0.1:443".parse().unwrap(),
            }
        );
        let local = v2(0x20, 0x00, &[]);
        assert_eq!(parse(&local).unwrap(), Some((Header::Local, 16)));
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n".to_vec();
        let v2 = v2(
            0x21,
            0x11,
            &[192, 0, 2, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x01, 0xbb],
        );
        for h in [v1, v2] {
            for i in 0..h.len() {
                assert!(parse(&h[..i]).unwrap().is_none(), "{i} bytes of {h:?}");
            }
            assert!(parse(&h).unwrap().is_some());
        }
    }

    #[test]
    fn refusals() {
        // Not a header at all: a TLS ClientHello, a request, a near miss.
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00"),
            Err(ProxyProtocolError::Missing)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ProxyProtocolError::Missing)
        ));
        assert!(matches!(parse(b"PROXY-"), Err(ProxyProtocolError::Missing)));
        assert!(matches!(
            parse(b"\r\n\r\n\0\r\nQUIx"),
            Err(ProxyProtocolError::Missing)
        ));
        // Malformed.
        assert!(matches!(
            parse(b"PROXY TCP4 300.0.2.7 198.51.100.1 51234 443\r\n"),
            Err(ProxyProtocolError::Malformed)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\n"),
            Err(ProxyProtocolError::Malformed)
        ));
        assert!(matches!(
            parse(&v2(0x22, 0x11, &[0; 12])),
            Err(ProxyProtocolError::Malformed)
        ));
        // A v1 line that never ends, or ends past the 107-byte limit.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&long), Err(ProxyProtocolError::Malformed)));
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200], b"\r\n"].concat();
        assert!(matches!(parse(&long), Err(ProxyProtocolError::Malformed)));
        // Oversized v2, refused from its length field alone.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&big), Err(ProxyProtocolError::TooLarge)));
        // UDP.
        let udp = v2(0x21, 0x12, &[192, 0, 2, 7, 10, 0, 0, 1, 0, 1, 0, 2]);
        assert!(matches!(parse(&udp), Err(ProxyProtocolError::NotStream)));
    }
}
