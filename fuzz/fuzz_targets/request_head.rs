//! Request-head handling: a request head parsed as hyper would (httparse),
//! then what switchyard does with it — WebSocket classification, host
//! normalisation, hop-by-hop removal, the real client and the forwarded
//! headers.
//!
//! Input: byte 0 is flags, the rest the request head.
//!   1  present the head as HTTP/2
//!   2  the client is IPv6 (else IPv4)
//!   4  the connection is TLS
//!   8  the client is one of `trusted_proxies` (its forwarded headers are kept)
//!   16 `trusted_proxies` also lists private and documentation ranges, so
//!      X-Forwarded-For entries can be trusted hops too
//!   32 the client address is IPv4-mapped IPv6 (as a dual-stack socket sees it)
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Version};
use libfuzzer_sys::fuzz_target;
use switchyard::config::TrustedProxies;
use switchyard::forwarded::{
    Client, FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PROTO,
    X_REAL_IP, real_client, set_forwarded,
};
use switchyard::headers::remove_hop_by_hop;
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
    // Who the client is, as the listener decides it: trusted exactly when
    // the (canonical) address is in the list.
    let v6 = flags & 2 != 0;
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))
    } else if flags & 32 != 0 {
        IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped())
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
    };
    let mut ranges: Vec<ipnet::IpNet> = Vec::new();
    if flags & 8 != 0 {
        let own = if v6 {
            "2001:db8::7/128"
        } else {
            "192.0.2.7/32"
        };
        ranges.push(own.parse().unwrap());
    }
    if flags & 16 != 0 {
        for r in [
            "10.0.0.0/8",
            "192.168.0.0/16",
            "198.51.100.0/24",
            "::1/128",
            "fc00::/7",
        ] {
            ranges.push(r.parse().unwrap());
        }
    }
    let trusted = TrustedProxies::new(ranges);
    let https = flags & 4 != 0;
    let client = Client::new(
        SocketAddr::new(ip, 40000),
        ip,
        trusted.contains(ip),
        https,
        8443,
    );
    assert_eq!(client.addr, ip.to_canonical());
    assert_eq!(client.trusted, flags & 8 != 0);
    let addr = client.addr.to_string();

    // As the proxy does: the real client from the request as received, then
    // hop-by-hop removal (above), then the forwarded headers.
    let real = real_client(req.headers(), &client, &trusted);
    if !client.trusted {
        assert_eq!(real, client.addr);
    }
    // As the proxy does: the Host header's value, shared.
    let host_value = req
        .headers()
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("localhost"));
    let sent_host = h.get(&X_FORWARDED_HOST).cloned();
    set_forwarded(&mut h, &client, real, &host_value);

    let proto = if https { "https" } else { "http" };
    let xff: Vec<&HeaderValue> = h.get_all(&X_FORWARDED_FOR).iter().collect();
    if client.trusted {
        // The chain is kept and extended: one line, ending with the client.
        assert_eq!(xff.len(), 1, "{xff:?}");
        let v = xff[0].to_str().expect("X-Forwarded-For is visible ASCII");
        assert!(
            v == addr || v.ends_with(&format!(", {addr}")),
            "X-Forwarded-For {v:?} does not end with {addr}"
        );
        assert_eq!(
            h.get(&X_FORWARDED_HOST),
            Some(sent_host.as_ref().unwrap_or(&host_value))
        );
    } else {
        // Nothing the client said is kept.
        assert_eq!(xff.len(), 1, "{xff:?}");
        assert_eq!(xff[0], addr.as_str());
        assert_eq!(h.get_all(&X_REAL_IP).iter().count(), 1);
        assert_eq!(h[&X_REAL_IP], addr.as_str());
        assert_eq!(h.get_all(&X_FORWARDED_HOST).iter().count(), 1);
        assert_eq!(h.get(&X_FORWARDED_HOST), Some(&host_value));
        assert_eq!(h.get_all(&X_FORWARDED_PROTO).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_PROTO], proto);
        assert_eq!(h.get_all(&X_FORWARDED_PORT).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_PORT], "8443");
        assert!(
            !h.contains_key(&FORWARDED),
            "an untrusted client's Forwarded survived"
        );
    }
    assert!(h.contains_key(&X_FORWARDED_PROTO));
    assert!(h.contains_key(&X_FORWARDED_PORT));
    // X-Real-IP: always one, an address, the real client.
    assert_eq!(h.get_all(&X_REAL_IP).iter().count(), 1);
    let real_ip: IpAddr = h[&X_REAL_IP]
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("X-Real-IP is an IP address");
    assert_eq!(real_ip, real);
});
