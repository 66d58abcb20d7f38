//! Request-head handling: a request head parsed as hyper would (httparse),
//! then what switchyard does with it — WebSocket classification, host
//! normalisation, hop-by-hop removal and the X-Forwarded-* headers.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Version};
use libfuzzer_sys::fuzz_target;
use switchyard::headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, client_value, remove_hop_by_hop,
    set_forwarded,
};
use switchyard::routing::{normalize_host, strip_port};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

fn build(data: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = parsed.parse(data).ok()? else {
        return None;
    };
    let mut b = Request::builder()
        .method(parsed.method?)
        .uri(parsed.path?)
        .version(match parsed.version? {
            0 => Version::HTTP_10,
            _ => Version::HTTP_11,
        });
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        b = b.header(name, value);
    }
    b.body(()).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, head)) = data.split_first() else {
        return;
    };
    let Some(mut req) = build(head) else {
        return;
    };
    if flags & 1 != 0 {
        // The same head as HTTP/2 would present it.
        *req.version_mut() = Version::HTTP_2;
    }
    let _ = switchyard::websocket::classify(&req);

    // Host selection: Host header and absolute-form authority.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let n = normalize_host(&host);
    assert!(!n.bytes().any(|b| b.is_ascii_uppercase()));
    // Idempotent, except that an IPv6 literal loses its brackets (and
    // would then read as having a port), and only one trailing dot goes
    // (a host ending in two is invalid and matches no site either way).
    if !n.contains(':') && !n.ends_with('.') {
        assert_eq!(normalize_host(&n), n);
    }
    let _ = strip_port(&host);
    if let Some(a) = req.uri().authority() {
        let _ = normalize_host(a.as_str());
    }

    // Hop-by-hop removal, then the forwarded headers.
    let named: Vec<HeaderName> = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let mut h = req.headers().clone();
    remove_hop_by_hop(&mut h);
    for name in HOP_BY_HOP {
        assert!(!h.contains_key(name), "{name} survived");
    }
    for name in &named {
        assert!(!h.contains_key(name), "{name} named by Connection survived");
    }
    let client = if flags & 2 != 0 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
    };
    // As the proxy does: the Host header's value, shared.
    let host_value = req
        .headers()
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("localhost"));
    set_forwarded(&mut h, &client_value(client), flags & 4 != 0, &host_value);
    assert!(h.contains_key(&X_FORWARDED_PROTO));
    assert_eq!(h.get(&X_FORWARDED_HOST), Some(&host_value));
    if let Some(xff) = h.get(&X_FORWARDED_FOR) {
        assert!(xff.to_str().is_ok_and(|s| s.ends_with(&client.to_string())));
    }
});
