//! WebSocket: recognising upgrades (HTTP/1.1 `Upgrade` and HTTP/2 extended
//! CONNECT, RFC 8441), the handshake's keys, and the frame relay a session
//! runs once both sides have upgraded. The handshake itself is one of the
//! proxy's phases (`proxy::websocket`); this module is handed two byte
//! streams and what the relay needs, by value. See `LIFECYCLE.md`.
//!
//! A session is built to cost little while it is idle, since most are:
//! `io` unwraps hyper's upgraded connections to the streams underneath
//! (downstream TLS is our own record layer, `tls::TlsRecords`, with no
//! rustls buffers), and [`relay`] holds buffers only while bytes are in
//! flight. An idle TLS session holds its two sockets, its two AEAD keys,
//! rustls' kernel connection and about 1.3 KiB of relay and task state
//! (bench case e: under 5 KiB in all).

pub mod frame;
mod io;
pub(crate) mod relay;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Version};

pub use io::End;

/// Turns the client's side of hyper's upgrade into a session [`End`]; the
/// downstream connection knows its own stream types, so it provides this.
pub type EndFromUpgrade = fn(hyper::upgrade::Upgraded) -> std::io::Result<End>;

/// What kind of upgrade a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// A plain request.
    None,
    /// A well-formed WebSocket upgrade (HTTP/1.1 or HTTP/2 extended CONNECT).
    WebSocket,
    /// A WebSocket upgrade missing something it needs.
    Malformed(&'static str),
}

pub(crate) static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
pub(crate) static SEC_WEBSOCKET_ACCEPT: HeaderName =
    HeaderName::from_static("sec-websocket-accept");
pub(crate) static SEC_WEBSOCKET_EXTENSIONS: HeaderName =
    HeaderName::from_static("sec-websocket-extensions");

fn has_token<B>(req: &Request<B>, name: HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Classifies a request as plain, a WebSocket upgrade, or a broken one.
pub fn classify<B>(req: &Request<B>) -> Upgrade {
    if req.version() == Version::HTTP_2 {
        if req.method() != Method::CONNECT {
            return Upgrade::None;
        }
        return match req.extensions().get::<hyper::ext::Protocol>() {
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => {
                if version_ok(req) {
                    Upgrade::WebSocket
                } else {
                    Upgrade::Malformed("Sec-WebSocket-Version must be 13")
                }
            }
            _ => Upgrade::None,
        };
    }
    if !has_token(req, header::UPGRADE, "websocket") {
        return Upgrade::None;
    }
    if req.method() != Method::GET {
        return Upgrade::Malformed("a WebSocket upgrade must be a GET");
    }
    if req.version() != Version::HTTP_11 {
        return Upgrade::Malformed("a WebSocket upgrade needs HTTP/1.1");
    }
    if !has_token(req, header::CONNECTION, "upgrade") {
        return Upgrade::Malformed("Connection must include upgrade");
    }
    if !req
        .headers()
        .get(&SEC_WEBSOCKET_KEY)
        .is_some_and(|k| key_ok(k.as_bytes()))
    {
        return Upgrade::Malformed("Sec-WebSocket-Key must be 16 bytes in base64");
    }
    if !version_ok(req) {
        return Upgrade::Malformed("Sec-WebSocket-Version must be 13");
    }
    Upgrade::WebSocket
}

fn version_ok<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(&SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13")
}

/// A base64 encoding of 16 bytes: 22 characters and `==`.
fn key_ok(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A fresh random `Sec-WebSocket-Key` for a handshake the proxy originates
/// (HTTP/2 clients send none).
pub(crate) fn new_key() -> HeaderValue {
    // 16 random bytes (RFC 6455 §4.1), base64 in three-byte groups.
    let mut raw = [0u8; 18];
    crate::random::fill(&mut raw[..16]);
    let mut out = [b'='; 24];
    for (i, chunk) in raw.chunks(3).enumerate() {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for j in 0..4 {
            out[i * 4 + j] = B64[((n >> (18 - 6 * j)) & 63) as usize];
        }
    }
    out[22] = b'=';
    out[23] = b'=';
    HeaderValue::from_bytes(&out)
        .unwrap_or_else(|_| HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}
