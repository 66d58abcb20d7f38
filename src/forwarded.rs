//! Forwarded: who the client is, and the `X-Forwarded-*` / `X-Real-IP`
//! headers that tell the backend.
//!
//! Nothing a client says about itself is believed unless it is one of the
//! `[listen] trusted_proxies` (nginx's `set_real_ip_from`). From anyone
//! else the forwarded headers are replaced, not appended to: daphne,
//! uvicorn and Django middlewares take the left-most `X-Forwarded-For`
//! entry, so appending would let any client pick its own address. From a
//! trusted proxy its chain is kept and extended, and the client is the
//! right-most address in it that is not itself a trusted proxy (nginx's
//! `real_ip_recursive on`).

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::TrustedProxies;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Port`.
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Real-IP`.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `Forwarded` (RFC 7239): never set by the proxy, so an untrusted
/// client's is dropped rather than passed on for a backend to believe.
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The client of one downstream connection, as far as the proxy knows it.
#[derive(Debug)]
pub struct Client {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client: the PROXY header's source, else the TCP peer. An
    /// IPv4-mapped IPv6 address is given as the IPv4 address.
    pub addr: IpAddr,
    /// Whether `addr` is a trusted proxy, whose forwarded headers are kept.
    pub trusted: bool,
    /// Whether the connection is TLS.
    pub https: bool,
    /// The port the client connected to (the PROXY header's destination
    /// port, else the listener's), for `X-Forwarded-Port`.
    pub port: u16,
    /// `addr` as a header value, made for the first request that needs it.
    addr_value: OnceLock<HeaderValue>,
    /// `port` as a header value, likewise.
    port_value: OnceLock<HeaderValue>,
}

impl Client {
    /// A connection's client.
    pub fn new(peer: SocketAddr, addr: IpAddr, trusted: bool, https: bool, port: u16) -> Self {
        Client {
            peer,
            addr: addr.to_canonical(),
            trusted,
            https,
            port,
            addr_value: OnceLock::new(),
            port_value: OnceLock::new(),
        }
    }

    fn addr_value(&self) -> &HeaderValue {
        self.addr_value.get_or_init(|| ip_value(self.addr))
    }

    fn port_value(&self) -> &HeaderValue {
        self.port_value.get_or_init(|| HeaderValue::from(self.port))
    }
}

/// An address as a header value.
fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// One `X-Forwarded-For` entry as an address: `192.0.2.1`, `2001:db8::1`,
/// and the forms with a port some proxies write (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn entry_addr(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = e.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    e.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
}

/// The real client of a request on `client`'s connection.
///
/// From an untrusted client: its own address. From a trusted proxy: the
/// right-most `X-Forwarded-For` address that is not a trusted proxy; if
/// every one is, the left-most. An entry that is not an address stops the
/// walk at the trusted hop to its right, which is then the answer: a
/// trusted proxy's garbage is not a client address.
pub fn real_client(headers: &HeaderMap, client: &Client, trusted: &TrustedProxies) -> IpAddr {
    if !client.trusted {
        return client.addr;
    }
    let mut real = client.addr;
    let values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        if entry.trim().is_empty() {
            continue;
        }
        let Some(ip) = entry_addr(entry) else {
            return real;
        };
        real = ip;
        if !trusted.contains(ip) {
            return ip;
        }
    }
    real
}

/// The forwarded header fields a request going upstream gets, at most five.
#[derive(Debug)]
pub struct Fields {
    fields: [(&'static HeaderName, HeaderValue); 5],
    len: usize,
}

impl Default for Fields {
    fn default() -> Self {
        const UNSET: (&HeaderName, HeaderValue) = (&X_REAL_IP, HeaderValue::from_static(""));
        Fields {
            fields: [UNSET; 5],
            len: 0,
        }
    }
}

impl Fields {
    fn push(&mut self, name: &'static HeaderName, value: HeaderValue) {
        if let Some(slot) = self.fields.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// The fields, in the order they are written.
    pub fn as_slice(&self) -> &[(&'static HeaderName, HeaderValue)] {
        self.fields.get(..self.len).unwrap_or_default()
    }

    /// Appends the fields to a header map (for a request written from its
    /// map, as hyper's client writes one).
    pub fn append_to(&self, headers: &mut HeaderMap) {
        for (name, value) in self.as_slice() {
            headers.append(*name, value.clone());
        }
    }
}

/// The headers an untrusted client's request loses: those the proxy sets,
/// and `Forwarded`.
static REPLACED: [&HeaderName; 6] = [
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_FORWARDED_PORT,
    &X_REAL_IP,
    &FORWARDED,
];

/// Whether `name` is one of the headers [`forwarded_fields`] sets or drops.
fn is_forwarded_name(name: &HeaderName) -> bool {
    // By length first: most names a request carries are none of these.
    matches!(name.as_str().len(), 9 | 15..=17) && REPLACED.contains(&name)
}

/// The forwarded headers of a request going upstream, as fields to write
/// after the request's own: `client` is the connection's client, `real`
/// the request's (see [`real_client`]), `host` the host as the client sent
/// it. `headers` loses the fields these replace.
///
/// Returned rather than inserted: a request from an untrusted client
/// (nearly every one) then needs no hashing of these five names and no
/// growth of its header map, which cost 7 % of a pool request's
/// instructions (bench/README.md, issue 20).
pub fn forwarded_fields(
    headers: &mut HeaderMap,
    client: &Client,
    real: IpAddr,
    host: &HeaderValue,
) -> Fields {
    let proto = HeaderValue::from_static(if client.https { "https" } else { "http" });
    let mut fields = Fields::default();
    if !client.trusted {
        // One pass over the names; hashing each of six is for the rare
        // request that carries any.
        if headers.keys().any(is_forwarded_name) {
            for name in REPLACED {
                headers.remove(name);
            }
        }
        fields.push(&X_FORWARDED_FOR, client.addr_value().clone());
        fields.push(&X_FORWARDED_PROTO, proto);
        fields.push(&X_FORWARDED_HOST, host.clone());
        fields.push(&X_FORWARDED_PORT, client.port_value().clone());
        fields.push(&X_REAL_IP, client.addr_value().clone());
        return fields;
    }
    if let Some(xff) = forwarded_for(headers, client.addr_value()) {
        headers.remove(&X_FORWARDED_FOR);
        fields.push(&X_FORWARDED_FOR, xff);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        fields.push(&X_FORWARDED_PROTO, proto);
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        fields.push(&X_FORWARDED_HOST, host.clone());
    }
    if !headers.contains_key(&X_FORWARDED_PORT) {
        fields.push(&X_FORWARDED_PORT, client.port_value().clone());
    }
    let real_value = if real == client.addr {
        client.addr_value().clone()
    } else {
        ip_value(real)
    };
    headers.remove(&X_REAL_IP);
    fields.push(&X_REAL_IP, real_value);
    fields
}

/// Sets the forwarded headers of a request going upstream in its header
/// map (for a request hyper's client sends): [`forwarded_fields`], inserted.
pub fn set_forwarded(headers: &mut HeaderMap, client: &Client, real: IpAddr, host: &HeaderValue) {
    forwarded_fields(headers, client, real, host).append_to(headers);
}

/// A trusted proxy's `X-Forwarded-For` with `client` appended, earlier
/// lines folded into one. A value that is not visible ASCII (which no
/// proxy writes) is left out; `None` if the result is not a valid value
/// (the chain is then passed on as it came).
fn forwarded_for(headers: &HeaderMap, client: &HeaderValue) -> Option<HeaderValue> {
    let mut xff = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                xff.extend_from_slice(s.as_bytes());
                xff.extend_from_slice(b", ");
            }
        }
    }
    if xff.is_empty() {
        return Some(client.clone());
    }
    xff.extend_from_slice(client.as_bytes());
    HeaderValue::from_bytes(&xff).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn client(addr: &str, t: &TrustedProxies) -> Client {
        let ip: IpAddr = addr.parse().unwrap();
        Client::new(SocketAddr::new(ip, 40000), ip, t.contains(ip), true, 8443)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn forward(h: &mut HeaderMap, c: &Client, t: &TrustedProxies) {
        let real = real_client(h, c, t);
        set_forwarded(h, c, real, &HeaderValue::from_static("shop.example"));
    }

    /// The fields come back in a fixed order, and the map keeps only what
    /// they do not replace.
    #[test]
    fn fields_replace_an_untrusted_clients_and_leave_the_rest() {
        let t = trusted(&[]);
        let c = client("192.0.2.7", &t);
        let host = HeaderValue::from_static("shop.example");
        let mut h = headers(&[("accept", "*/*"), ("x-custom", "1")]);
        let fields = forwarded_fields(&mut h, &c, c.addr, &host);
        assert_eq!(h.len(), 2, "nothing to replace: the map is as it came");
        let got: Vec<(&str, &str)> = fields
            .as_slice()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-forwarded-for", "192.0.2.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "shop.example"),
                ("x-forwarded-port", "8443"),
                ("x-real-ip", "192.0.2.7"),
            ]
        );
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            ("x-custom", "1"),
        ]);
        let fields = forwarded_fields(&mut h, &c, c.addr, &host);
        assert_eq!(h.len(), 1, "the client's own are gone: {h:?}");
        assert!(h.contains_key("x-custom"));
        assert_eq!(fields.as_slice().len(), 5);
    }

    #[test]
    fn an_untrusted_client_is_believed_in_nothing() {
        let t = trusted(&[]);
        let c = client("192.0.2.7", &t);
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "1"),
            ("x-real-ip", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        forward(&mut h, &c, &t);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.example");
        assert_eq!(h[&X_FORWARDED_PORT], "8443");
        assert_eq!(h[&X_REAL_IP], "192.0.2.7");
        assert!(!h.contains_key(&FORWARDED));
    }

    #[test]
    fn a_trusted_proxy_is_appended_to_and_the_real_ip_is_the_rightmost_untrusted() {
        let t = trusted(&["10.0.0.0/8", "::1/128"]);
        let c = client("10.0.0.2", &t);
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9, 198.51.100.4"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example.com"),
        ]);
        forward(&mut h, &c, &t);
        assert_eq!(
            h[&X_FORWARDED_FOR],
            "203.0.113.9, 198.51.100.4, 10.1.1.1, 10.0.0.2"
        );
        assert_eq!(h[&X_REAL_IP], "198.51.100.4");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.example.com");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        // Not sent by the trusted hop: set from the connection.
        assert_eq!(h[&X_FORWARDED_PORT], "8443");
    }

    #[test]
    fn real_client_edge_cases() {
        let t = trusted(&["10.0.0.0/8"]);
        let c = client("10.0.0.2", &t);
        let real = |xff: &[&str]| {
            let pairs: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
            real_client(&headers(&pairs), &c, &t).to_string()
        };
        // No header: the trusted peer itself.
        assert_eq!(real(&[]), "10.0.0.2");
        // All trusted: the left-most.
        assert_eq!(real(&["10.9.9.9, 10.1.1.1"]), "10.9.9.9");
        // Ports and brackets, as some proxies write them.
        assert_eq!(real(&["198.51.100.4:4711"]), "198.51.100.4");
        assert_eq!(real(&["[2001:db8::1]:4711"]), "2001:db8::1");
        assert_eq!(real(&["2001:db8::1"]), "2001:db8::1");
        // Garbage stops the walk at the trusted hop to its right.
        assert_eq!(real(&["198.51.100.4, unknown, 10.1.1.1"]), "10.1.1.1");
        assert_eq!(real(&["198.51.100.4, unknown"]), "10.0.0.2");
        // Empty entries are skipped.
        assert_eq!(real(&["198.51.100.4,, "]), "198.51.100.4");
        // IPv4-mapped addresses count as IPv4 (for trust too).
        assert_eq!(real(&["::ffff:10.1.1.1, 10.2.2.2"]), "10.1.1.1");
        assert_eq!(real(&["192.0.2.1, ::ffff:10.1.1.1"]), "192.0.2.1");
    }

    #[test]
    fn an_untrusted_client_behind_nothing_gets_a_fresh_chain() {
        let t = trusted(&["10.0.0.0/8"]);
        let c = client("192.0.2.7", &t);
        let mut h = headers(&[("x-forwarded-for", "10.0.0.1")]);
        forward(&mut h, &c, &t);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&X_REAL_IP], "192.0.2.7");
    }

    #[test]
    fn mapped_peers_are_canonical() {
        let t = trusted(&["127.0.0.1/32"]);
        let ip: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(t.contains(ip));
        let c = Client::new(SocketAddr::new(ip, 1), ip, true, false, 80);
        assert_eq!(c.addr.to_string(), "127.0.0.1");
    }
}
