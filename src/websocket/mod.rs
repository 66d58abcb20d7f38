//! WebSocket: recognising upgrades (HTTP/1.1 `Upgrade` and HTTP/2 extended
//! CONNECT, RFC 8441), relaying the handshake to the async backend, and
//! running each session's frame relay in its own task.
//!
//! A session is built to cost little while it is idle, since most are:
//! `io` unwraps hyper's upgraded connections to the streams underneath,
//! `tls_records` takes a TLS 1.3 client's record layer over from rustls,
//! and [`relay`] holds buffers only while bytes are in flight. An idle TLS
//! session holds its two sockets, its two AEAD keys and about 2 KiB of
//! relay and task state (bench case e: under 5 KiB in all).

pub mod frame;
mod io;
pub mod relay;
mod tls_records;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::access::{self, AccessRecord, SessionOutcome};
use crate::body::Body;
use crate::headers;
use crate::pool::{Lease, Pool};
use crate::proxy::{ConnInfo, Finish, ProxyError, ResponseBody, finish_plain, upstream_request};
use crate::routing::Route;
use crate::state::{Generation, Shared};
use crate::upstream::{UpstreamError, connect_tcp, error_chain};

/// The smallest buffer a burst gets, and the room it has past what its
/// first read brought.
const BURST_MIN: usize = 256;
const BURST_MARGIN: usize = 64;

/// The buffer for a burst whose first read, into a `probe`-byte stack
/// buffer, brought `got`: `got` at its front, sized just past it (a cheap
/// allocation with little to zero), or `bulk` bytes when the probe filled.
fn burst_buffer(got: &[u8], probe: usize, bulk: usize) -> Vec<u8> {
    let size = if got.len() >= probe {
        bulk
    } else {
        (got.len() + BURST_MARGIN)
            .next_power_of_two()
            .clamp(BURST_MIN, probe)
    };
    let mut buf = Vec::with_capacity(size);
    buf.extend_from_slice(got);
    buf.resize(size, 0);
    buf
}

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

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
static SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");

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
fn new_key() -> HeaderValue {
    let s = std::collections::hash_map::RandomState::new();
    let a = s.build_hasher().finish().to_le_bytes();
    let mut h = s.build_hasher();
    h.write_u8(1);
    let b = h.finish().to_le_bytes();
    let mut raw = [0u8; 18];
    raw[..8].copy_from_slice(&a);
    raw[8..16].copy_from_slice(&b);
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

/// Relays a WebSocket handshake to `pool` and, when the backend accepts,
/// starts the session's relay task.
#[allow(clippy::too_many_arguments)]
pub async fn proxy(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    conn: &ConnInfo,
    route: &Arc<Route>,
    pool: &Arc<Pool>,
    mut req: Request<Incoming>,
    host: &HeaderValue,
    started: Instant,
    record: &AccessRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    let h2 = req.version() == Version::HTTP_2;
    let on_client_upgrade = hyper::upgrade::on(&mut req);
    let timeouts = generation.config.timeouts;
    let (lease, server, tcp) = connect_backend(pool, timeouts.upstream_connect).await?;
    let (mut parts, _body) = req.into_parts();
    upstream_request(&mut parts, conn, host, record.client);
    // Metrics and logs show what the client sent (CONNECT for HTTP/2).
    let client_method = std::mem::replace(&mut parts.method, Method::GET);
    parts.extensions = http::Extensions::new();
    let h = &mut parts.headers;
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if h2 {
        h.insert(&SEC_WEBSOCKET_KEY, new_key());
    }
    // The handshake request has no body.
    h.remove(header::CONTENT_LENGTH);
    let upstream_req = Request::from_parts(parts, Body::empty());

    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tcp))
                .await
                .map_err(|e| UpstreamError::Response(error_chain(&e)))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        sender
            .send_request(upstream_req)
            .await
            .map_err(|e| UpstreamError::Response(error_chain(&e)))
    };
    let mut resp = match tokio::time::timeout(timeouts.upstream_response, exchange).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            server.report_failure();
            tracing::warn!(site = %pool.site, pool = %pool.name, server = %server.addr, error = %e, "WebSocket handshake failed");
            return Err(ProxyError::Upstream(e));
        }
        Err(_) => return Err(ProxyError::Upstream(UpstreamError::Timeout)),
    };
    server.report_success();

    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // An auth check said no, or similar: relay it as a normal response.
        let (mut rparts, rbody) = resp.into_parts();
        headers::remove_hop_by_hop(&mut rparts.headers);
        let status = rparts.status;
        let finish = Finish::new(
            route.clone(),
            started,
            client_method.clone(),
            status,
            Some(lease),
            None,
        );
        return Ok(finish_plain(
            Response::from_parts(rparts, Body::from(rbody)),
            finish,
        ));
    }

    let on_upstream_upgrade = hyper::upgrade::on(&mut resp);
    let extensions = resp.headers().contains_key(&SEC_WEBSOCKET_EXTENSIONS);
    let (mut rparts, _) = resp.into_parts();
    headers::remove_hop_by_hop(&mut rparts.headers);
    if h2 {
        rparts.status = StatusCode::OK;
        rparts.headers.remove(&SEC_WEBSOCKET_ACCEPT);
    } else {
        rparts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        rparts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let status = rparts.status;

    let session = Session {
        shared: shared.clone(),
        route: route.clone(),
        lease,
        settings: relay::RelaySettings {
            idle_timeout: route.idle_timeout,
            ping_interval: route.ping_interval,
            max_message_bytes: route.max_message_bytes,
            extensions,
        },
        record: record.clone(),
        method: client_method.clone(),
        status: status.as_u16(),
        _active: if h2 {
            conn.activity.as_ref().map(|a| a.begin())
        } else {
            None
        },
    };
    let task = session.run(
        on_client_upgrade,
        on_upstream_upgrade,
        timeouts.upstream_response,
    );
    shared.sessions.spawn(task);
    let finish = Finish::new(
        route.clone(),
        started,
        client_method.clone(),
        status,
        None,
        Some(server.addr.clone()),
    );
    Ok(finish_plain(
        Response::from_parts(rparts, Body::empty()),
        finish,
    ))
}

/// Leases a server and connects to it; a refused or timed-out connect is
/// retried once on another server of the pool (a handshake is an idempotent
/// GET that has not reached any application yet).
async fn connect_backend(
    pool: &Arc<Pool>,
    connect_timeout: std::time::Duration,
) -> Result<(Lease, Arc<crate::pool::Server>, TcpStream), ProxyError> {
    let mut failed_on: Option<Arc<crate::pool::Server>> = None;
    loop {
        let lease = pool
            .acquire(failed_on.as_ref())
            .await
            .map_err(ProxyError::Pool)?;
        let Some(server) = lease.server().cloned() else {
            return Err(ProxyError::Pool(crate::pool::PoolError::NoHealthyServer));
        };
        let error = match connect_tcp(&server.addr, connect_timeout).await {
            Ok(tcp) => return Ok((lease, server, tcp)),
            Err(e) => e,
        };
        server.report_failure();
        tracing::warn!(
            site = %pool.site, pool = %pool.name, server = %server.addr, %error,
            "WebSocket backend connect failed"
        );
        drop(lease);
        if failed_on.is_none() && pool.members().servers.len() > 1 {
            failed_on = Some(server);
            continue;
        }
        return Err(ProxyError::Upstream(error));
    }
}

/// One open WebSocket session.
struct Session {
    shared: Arc<Shared>,
    route: Arc<Route>,
    lease: Lease,
    settings: relay::RelaySettings,
    /// The upgrade request, for the access log.
    record: AccessRecord,
    /// The method the client sent (GET, or CONNECT over HTTP/2).
    method: Method,
    /// The status the handshake was answered with.
    status: u16,
    /// Keeps an HTTP/2 connection carrying this session out of its idle timeout.
    _active: Option<crate::connection::ActiveGuard>,
}

/// Waits for both upgrades to complete (bounded by `timeout`).
async fn upgrades(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    timeout: std::time::Duration,
) -> Option<(io::End, io::End)> {
    let both = async { tokio::try_join!(client, upstream) };
    match tokio::time::timeout(timeout, both).await {
        Ok(Ok((client, upstream))) => match io::End::client(client) {
            Ok(client) => Some((client, io::End::upstream(upstream))),
            Err(e) => {
                tracing::warn!(error = %e, "WebSocket session could not take over the client's TLS connection");
                None
            }
        },
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket upgrade did not complete");
            None
        }
        Err(_) => {
            tracing::debug!("WebSocket upgrade did not complete in time");
            None
        }
    }
}

impl Session {
    /// The session's task: waits for both upgrades, then relays.
    ///
    /// Not an `async fn`, which would keep a second copy of `self` in the
    /// task for as long as the session lasts.
    #[allow(clippy::manual_async_fn)] // see above
    fn run(
        self,
        on_client: hyper::upgrade::OnUpgrade,
        on_upstream: hyper::upgrade::OnUpgrade,
        upgrade_timeout: std::time::Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let Some((client, upstream)) = upgrades(on_client, on_upstream, upgrade_timeout).await
            else {
                return;
            };
            let m = &self.route.metrics;
            m.ws_total.increment(1);
            m.ws_active.increment(1.0);
            let started = Instant::now();
            // Closed by the drain deadline, or by a reload that removes this
            // route or pool (when its site asks for that).
            let ticket = self.shared.session_ticket(&self.route);
            // Boxed: passed by value through `watch` and this task, the
            // relay's state would be laid out several times over in every
            // idle session's task (measured with massif).
            let relay = Box::pin(relay::relay(
                client,
                upstream,
                &self.settings,
                m,
                ticket.shutdown(),
            ));
            let outcome = ticket.watch(relay).await;
            drop(ticket);
            self.ended(&outcome, started.elapsed());
        }
    }

    /// Counts and logs a session that ended.
    fn ended(&self, outcome: &relay::RelayOutcome, elapsed: std::time::Duration) {
        let m = &self.route.metrics;
        m.ws_active.decrement(1.0);
        m.ws_duration.record(elapsed.as_secs_f64());
        let session = SessionOutcome {
            frames_in: outcome.frames[0].iter().sum(),
            frames_out: outcome.frames[1].iter().sum(),
            client_close: outcome.client_close.map_or(-1, i32::from),
            upstream_close: outcome.upstream_close.map_or(-1, i32::from),
            end: format!("{:?}", outcome.end),
        };
        access::log(
            Some(&self.record),
            &access::Outcome {
                site: &self.route.site,
                route: &self.route.name,
                method: &self.method,
                status: self.status,
                bytes_sent: outcome.bytes[1],
                bytes_received: outcome.bytes[0],
                duration: elapsed,
                upstream: self.lease.server().map(|s| &*s.addr),
                queue_wait: None,
                complete: None,
                session: Some(&session),
            },
        );
    }
}
