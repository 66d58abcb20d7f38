//! Headers: hop-by-hop removal (RFC 9110 §7.6.1) and the X-Forwarded-* set.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names. Returns whether the client asked for trailers (`TE: trailers`),
/// which a proxy that forwards trailers re-announces upstream.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // Most messages carry none of them: one pass over the names (cheap
    // comparisons) spares hashing each of the eight on every message.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return false;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    trailers
}

/// A client address as a header value.
pub fn client_value(client: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends the client's address (see [`client_value`]) to `X-Forwarded-For`
/// (folding earlier values into one line) and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    https: bool,
    host: &HeaderValue,
) {
    let mut xff = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            xff.extend_from_slice(s.as_bytes());
            xff.extend_from_slice(b", ");
        }
    }
    let value = if xff.is_empty() {
        Ok(client.clone())
    } else {
        xff.extend_from_slice(client.as_bytes());
        HeaderValue::from_bytes(&xff)
    };
    if let Ok(v) = value {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    headers.insert(&X_FORWARDED_HOST, host.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(remove_hop_by_hop(&mut h));
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        let client = client_value("127.0.0.1".parse().unwrap());
        set_forwarded(
            &mut h,
            &client,
            true,
            &HeaderValue::from_static("a.example"),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "a.example");
    }
}
