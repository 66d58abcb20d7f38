//! WebSocket hand-over: the third phase for an upgrade request. The
//! handshake is relayed to the route's async backend (HTTP/2 extended
//! CONNECT becomes an HTTP/1.1 Upgrade there); when the backend accepts,
//! a session task waits for both sides to upgrade and runs the frame
//! relay ([`crate::websocket::relay`]) until the session ends.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::access::{self, AccessRecord, SessionOutcome};
use super::forward::upstream_request;
use super::response::finish_plain;
use super::{Ctx, Finish, ProxyError, ResponseBody};
use crate::activity::ActiveGuard;
use crate::headers;
use crate::pool::{Lease, Pool, PoolError};
use crate::routing::Route;
use crate::state::Shared;
use crate::upstream::{Body, Server, Stream, UpstreamError, connect, handshake, retry};
use crate::websocket::frame::Direction;
use crate::websocket::{
    End, EndFromUpgrade, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    new_key, relay,
};

/// Relays a WebSocket handshake to `pool` and, when the backend accepts,
/// starts the session's relay task.
pub(super) async fn hand_over(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    pool: &Arc<Pool>,
    mut req: Request<Incoming>,
    host: &HeaderValue,
) -> Result<Response<ResponseBody>, ProxyError> {
    let h2 = req.version() == Version::HTTP_2;
    let on_client_upgrade = hyper::upgrade::on(&mut req);
    let connect_timeout = cx.generation.config.timeouts.upstream_connect;
    let (lease, server, stream) = connect_backend(pool, connect_timeout).await?;
    let (mut parts, _body) = req.into_parts();
    // hyper's client writes the handshake from its header map.
    upstream_request(&mut parts, cx.conn.client(), host, cx.real()).append_to(&mut parts.headers);
    // Metrics and logs show what the client sent (CONNECT for HTTP/2).
    let client_method = std::mem::replace(&mut parts.method, Method::GET);
    let upstream_req = handshake_request(parts, h2);
    let exchange = send_handshake(stream, upstream_req);
    let resp = match tokio::time::timeout(route.upstream_response, exchange).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            server.report_failure();
            tracing::warn!(site = %pool.site, pool = %pool.name, server = %server.addr, error = %e, "WebSocket handshake failed");
            return Err(ProxyError::Upstream(e));
        }
        Err(_) => return Err(ProxyError::Upstream(UpstreamError::Timeout)),
    };
    server.report_success();
    let finish = |status, lease| {
        let upstream = Some(&server.addr);
        Finish::new(
            route.clone(),
            cx.started,
            client_method.clone(),
            status,
            lease,
            upstream,
        )
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // An auth check said no, or similar: relay it as a normal response.
        let (mut rparts, rbody) = resp.into_parts();
        headers::remove_hop_by_hop(&mut rparts.headers);
        let finish = finish(rparts.status, Some(lease));
        let resp = Response::from_parts(rparts, Body::from(rbody));
        return Ok(finish_plain(resp, finish));
    }
    let (rparts, session, on_upstream) =
        accepted(cx, route, lease, resp, h2, client_method.clone());
    let task = session.run(on_client_upgrade, on_upstream, route.upstream_response);
    cx.shared.sessions.spawn(task);
    let finish = finish(rparts.status, None);
    Ok(finish_plain(
        Response::from_parts(rparts, Body::empty()),
        finish,
    ))
}

/// The client's upgrade request as the backend gets it: an HTTP/1.1
/// Upgrade, whatever the client spoke.
fn handshake_request(mut parts: http::request::Parts, h2: bool) -> Request<Body> {
    parts.extensions = http::Extensions::new();
    let h = &mut parts.headers;
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if h2 {
        h.insert(&SEC_WEBSOCKET_KEY, new_key());
    }
    // The handshake request has no body.
    h.remove(header::CONTENT_LENGTH);
    Request::from_parts(parts, Body::empty())
}

/// Sends the handshake over a fresh connection to the backend.
async fn send_handshake(
    stream: Stream,
    req: Request<Body>,
) -> Result<Response<Incoming>, UpstreamError> {
    let (mut sender, connection) = handshake(stream).await?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| UpstreamError::Response(e.into()))
}

/// The backend accepted: the response head for the client (101, or 200 for
/// HTTP/2) and the session that will relay once both sides upgrade.
fn accepted(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    lease: Lease,
    mut resp: Response<Incoming>,
    h2: bool,
    method: Method,
) -> (http::response::Parts, Session, hyper::upgrade::OnUpgrade) {
    let on_upstream = hyper::upgrade::on(&mut resp);
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
    let session = Session {
        shared: cx.shared.clone(),
        route: route.clone(),
        lease,
        settings: relay::RelaySettings {
            idle_timeout: route.idle_timeout,
            ping_interval: route.ping_interval,
            max_message_bytes: route.max_message_bytes,
            extensions,
        },
        record: SessionRecord::new(cx.record),
        connect: method == Method::CONNECT,
        status: rparts.status.as_u16(),
        client_end: cx.conn.upgraded_end(),
        _active: if h2 { cx.conn.hold() } else { None },
    };
    (rparts, session, on_upstream)
}

/// Leases a server and connects to it; a refused or timed-out connect is
/// retried once on another server of the pool (a handshake is an idempotent
/// GET that has not reached any application yet).
async fn connect_backend(
    pool: &Arc<Pool>,
    connect_timeout: std::time::Duration,
) -> Result<(Lease, Arc<Server>, Stream), ProxyError> {
    let mut failed_on: Option<Arc<Server>> = None;
    loop {
        let lease = pool
            .acquire(failed_on.as_ref())
            .await
            .map_err(ProxyError::Pool)?;
        let Some(server) = lease.server().cloned() else {
            return Err(ProxyError::Pool(PoolError::NoHealthyServer));
        };
        let error = match connect(&server.address, connect_timeout).await {
            Ok(stream) => return Ok((lease, server, stream)),
            Err(e) => e,
        };
        server.report_failure();
        tracing::warn!(
            site = %pool.site, pool = %pool.name, server = %server.addr, %error,
            "WebSocket backend connect failed"
        );
        drop(lease);
        // A handshake is an idempotent GET without a body.
        let attempt = u32::from(failed_on.is_some());
        if pool.members().servers.len() > 1 && retry::should_retry(&error, attempt, true, true) {
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
    record: SessionRecord,
    /// The client sent CONNECT (HTTP/2), not GET: the method it sent, in a
    /// byte rather than a `Method` (the only two an upgrade comes with).
    connect: bool,
    /// The status the handshake was answered with.
    status: u16,
    /// Unwraps the client's upgraded connection.
    client_end: EndFromUpgrade,
    /// Keeps an HTTP/2 connection carrying this session out of its idle timeout.
    _active: Option<ActiveGuard>,
}

/// A session's upgrade request for its access line, kept compact because it
/// lives as long as the session: the request's URI and header values in one
/// allocation of its own. They are slices of hyper's read buffer (8 KiB or
/// more), and a record that held them would keep that buffer alive for the
/// session's life.
struct SessionRecord {
    client: IpAddr,
    peer: SocketAddr,
    /// The URI, then `User-Agent`, then `Referer`.
    text: Box<[u8]>,
    /// Where the URI ends and where `User-Agent` ends in `text`.
    cuts: [u32; 2],
    /// Whether `User-Agent` and `Referer` were sent.
    sent: [bool; 2],
}

impl SessionRecord {
    fn new(r: &AccessRecord) -> Self {
        let uri = r.uri.to_string();
        let ua = r.user_agent.as_ref().map_or(&[][..], HeaderValue::as_bytes);
        let referer = r.referer.as_ref().map_or(&[][..], HeaderValue::as_bytes);
        let text: Box<[u8]> = [uri.as_bytes(), ua, referer].concat().into();
        // Request heads are bounded by `max_header_bytes`, far below 4 GiB.
        let cut = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        SessionRecord {
            client: r.client,
            peer: r.peer,
            cuts: [cut(uri.len()), cut(uri.len() + ua.len())],
            text,
            sent: [r.user_agent.is_some(), r.referer.is_some()],
        }
    }

    /// The record as the access log takes it.
    fn to_record(&self) -> AccessRecord {
        let [a, b] = self.cuts.map(|c| (c as usize).min(self.text.len()));
        let value =
            |sent: bool, bytes: &[u8]| sent.then(|| HeaderValue::from_bytes(bytes).ok()).flatten();
        let uri = std::str::from_utf8(&self.text[..a])
            .ok()
            .and_then(|u| Uri::try_from(u).ok())
            .unwrap_or_else(|| Uri::from_static("/"));
        AccessRecord {
            client: self.client,
            peer: self.peer,
            uri,
            user_agent: value(self.sent[0], &self.text[a..b]),
            referer: value(self.sent[1], &self.text[b..]),
        }
    }
}

/// Waits for both upgrades to complete (bounded by `timeout`).
async fn upgrades(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    client_end: EndFromUpgrade,
    timeout: std::time::Duration,
) -> Option<(End, End)> {
    let both = async { tokio::try_join!(client, upstream) };
    match tokio::time::timeout(timeout, both).await {
        Ok(Ok((client, upstream))) => match client_end(client) {
            Ok(client) => Some((client, End::upstream(upstream))),
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
        // Boxed, and made before the task's state is: its timer, the
        // upgrades' outputs and its arguments would otherwise be laid out
        // in the task for the session's whole life.
        let upgraded = Box::pin(upgrades(
            on_client,
            on_upstream,
            self.client_end,
            upgrade_timeout,
        ));
        async move {
            let Some((client, upstream)) = upgraded.await else {
                return;
            };
            let m = &self.route.metrics;
            m.ws_total.increment(1);
            m.ws_active.increment(1.0);
            let started = Instant::now();
            // Closed by the drain deadline, or by a reload that removes this
            // route or pool (when its site asks for that).
            let ticket = self.shared.session_ticket(&self.route);
            // Boxed: inline, it would make the task 1,408 bytes (tokio
            // aligns a task to 128), against 384 and 904 for the two
            // allocations (release type sizes, -Zprint-type-sizes).
            let relay = Box::pin(relay::relay(client, upstream, &self.settings, m, &ticket));
            let outcome = relay.await;
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
            frames_in: outcome.frames(Direction::ClientToUpstream).iter().sum(),
            frames_out: outcome.frames(Direction::UpstreamToClient).iter().sum(),
            client_close: outcome.client_close.map_or(-1, i32::from),
            upstream_close: outcome.upstream_close.map_or(-1, i32::from),
            end: format!("{:?}", outcome.end),
        };
        let method = if self.connect {
            Method::CONNECT
        } else {
            Method::GET
        };
        access::log(
            Some(&self.record.to_record()),
            &access::Outcome {
                site: &self.route.site,
                route: &self.route.name,
                method: &method,
                status: self.status,
                bytes_sent: outcome.bytes(Direction::UpstreamToClient),
                bytes_received: outcome.bytes(Direction::ClientToUpstream),
                duration: elapsed,
                upstream: self.lease.server().map(|s| &*s.addr),
                queue_wait: None,
                complete: None,
                fault: None,
                session: Some(&session),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compact record gives the access log back what the upgrade
    /// request's own record held: URI, both header values (or their
    /// absence, and bytes that are not text), client and peer.
    #[test]
    fn a_session_record_gives_back_the_upgrade_requests_fields() {
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let uri: Uri = "/ws/chat?room=1".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static("probe/1.0 (x)"),
        );
        let back = SessionRecord::new(&AccessRecord::new(client, peer, &uri, &headers)).to_record();
        assert_eq!((back.client, back.peer), (client, peer));
        assert_eq!(back.uri, uri);
        assert_eq!(back.user_agent, headers.get(header::USER_AGENT).cloned());
        assert_eq!(back.referer, None);

        let mut headers = http::HeaderMap::new();
        let referer = HeaderValue::from_bytes(b"https://a.example/\xe9").unwrap();
        headers.insert(header::REFERER, referer.clone());
        headers.insert(header::USER_AGENT, HeaderValue::from_static(""));
        let uri: Uri = "https://a.example/ws/".parse().unwrap();
        let back = SessionRecord::new(&AccessRecord::new(client, peer, &uri, &headers)).to_record();
        assert_eq!(back.uri, uri);
        assert_eq!(back.user_agent, Some(HeaderValue::from_static("")));
        assert_eq!(back.referer, Some(referer));
    }
}
