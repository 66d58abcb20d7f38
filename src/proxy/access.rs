//! Access log: one line per request and one per WebSocket session, in the
//! `switchyard::access` tracing target (text or JSON, see `[log]`).
//!
//! Requests and sessions share one record, so both name the real client
//! (see [`crate::forwarded::real_client`]), the TCP peer when it differs,
//! and what the request asked for.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Uri};

/// What a request said about itself, taken when it arrived.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// The real client.
    pub client: IpAddr,
    /// The TCP peer (logged when it is not the client).
    pub peer: SocketAddr,
    /// The request target.
    pub uri: Uri,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
    /// `Referer`.
    pub referer: Option<HeaderValue>,
}

impl AccessRecord {
    /// The record of a request from `client` over a connection from `peer`.
    pub fn new(client: IpAddr, peer: SocketAddr, uri: &Uri, headers: &HeaderMap) -> Self {
        AccessRecord {
            client,
            peer,
            uri: uri.clone(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            referer: headers.get(header::REFERER).cloned(),
        }
    }
}

/// How a request or session ended.
#[derive(Debug)]
pub struct Outcome<'a> {
    /// The site's name.
    pub site: &'a str,
    /// The route's name.
    pub route: &'a str,
    /// The method the client sent.
    pub method: &'a Method,
    /// The status sent to the client.
    pub status: u16,
    /// Body bytes sent to the client (a session: bytes relayed to it).
    pub bytes_sent: u64,
    /// Body bytes received from the client (a session: bytes relayed from it).
    pub bytes_received: u64,
    /// From the request's arrival to the end of its response (or session).
    pub duration: Duration,
    /// The upstream server, as configured.
    pub upstream: Option<&'a str>,
    /// Time spent in the pool's queue (plain requests).
    pub queue_wait: Option<Duration>,
    /// Whether the whole response was sent (plain requests).
    pub complete: Option<bool>,
    /// Who caused the error the proxy answered (client, upstream, proxy).
    pub fault: Option<crate::upstream::Fault>,
    /// What a WebSocket session relayed.
    pub session: Option<&'a SessionOutcome>,
}

/// The WebSocket-only part of a session's line.
#[derive(Debug)]
pub struct SessionOutcome {
    /// Frames from the client.
    pub frames_in: u64,
    /// Frames to the client.
    pub frames_out: u64,
    /// The close code the client sent (none: -1).
    pub client_close: i32,
    /// The close code the backend sent (none: -1).
    pub upstream_close: i32,
    /// Why the session ended.
    pub end: String,
}

fn text(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("-")
}

fn ms(d: Duration) -> f64 {
    // Three decimals are plenty in a log line.
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Whether access lines are written at all (the log filter is fixed at
/// start-up), so a request need not keep its record for a line never written.
pub fn enabled() -> bool {
    tracing::enabled!(target: "switchyard::access", tracing::Level::INFO)
}

/// Writes one access line. `record` is `None` for a request refused before
/// its head could be read as one (its fields then show as `-`).
pub fn log(record: Option<&AccessRecord>, o: &Outcome<'_>) {
    let client = record.map(|r| r.client);
    // The TCP peer only when it says something the client address does not.
    let peer = record
        .filter(|r| r.peer.ip().to_canonical() != r.client)
        .map(|r| r.peer);
    let s = o.session;
    tracing::info!(
        target: "switchyard::access",
        client = %OptDisplay(client),
        peer = peer.map(tracing::field::display),
        site = o.site,
        route = o.route,
        method = %o.method,
        path = record.map_or("-", |r| r.uri.path()),
        status = o.status,
        bytes_sent = o.bytes_sent,
        bytes_received = o.bytes_received,
        duration_ms = ms(o.duration),
        upstream = o.upstream.unwrap_or("-"),
        // Quoted: these are the client's words, spaces and all.
        user_agent = ?record.map_or("-", |r| text(r.user_agent.as_ref())),
        referer = ?record.map_or("-", |r| text(r.referer.as_ref())),
        queue_ms = o.queue_wait.map(ms),
        complete = o.complete,
        fault = o.fault.map(tracing::field::display),
        websocket = s.map(|_| true),
        frames_in = s.map(|s| s.frames_in),
        frames_out = s.map(|s| s.frames_out),
        client_close = s.map(|s| s.client_close),
        upstream_close = s.map(|s| s.upstream_close),
        end = s.map(|s| s.end.as_str()),
    );
}

/// `-` for an unknown value.
struct OptDisplay<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OptDisplay<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}
