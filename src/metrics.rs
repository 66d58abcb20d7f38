//! Metrics: every metric name the proxy exports, and the handles the hot path
//! records into.
//!
//! Handles are resolved once per route, pool, server and listener when a
//! configuration is loaded, so recording a request costs an atomic add, not a
//! label lookup. The recorder is owned by the proxy instance (not installed
//! globally), so several proxies in one test process keep separate counts.

mod per_worker;

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Requests answered, by site, route, method and status.
pub const REQUESTS_TOTAL: &str = "switchyard_requests_total";
/// Time from request head to last response byte, by site and route.
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
/// Requests waiting in a pool's queue.
pub const POOL_QUEUE_DEPTH: &str = "switchyard_pool_queue_depth";
/// Time spent waiting in a pool's queue.
pub const POOL_QUEUE_WAIT: &str = "switchyard_pool_queue_wait_seconds";
/// Requests a pool turned away, by reason.
pub const POOL_REJECTED_TOTAL: &str = "switchyard_pool_rejected_total";
/// Requests in flight to one upstream server.
pub const UPSTREAM_IN_FLIGHT: &str = "switchyard_upstream_in_flight";
/// Whether an upstream server is considered up (1) or down (0).
pub const UPSTREAM_UP: &str = "switchyard_upstream_up";
/// Open WebSocket sessions.
pub const WS_SESSIONS_ACTIVE: &str = "switchyard_websocket_sessions_active";
/// WebSocket sessions opened.
pub const WS_SESSIONS_TOTAL: &str = "switchyard_websocket_sessions_total";
/// WebSocket frames relayed, by direction and opcode.
pub const WS_FRAMES_TOTAL: &str = "switchyard_websocket_frames_total";
/// WebSocket bytes relayed, by direction.
pub const WS_BYTES_TOTAL: &str = "switchyard_websocket_bytes_total";
/// WebSocket session lifetime.
pub const WS_SESSION_DURATION: &str = "switchyard_websocket_session_duration_seconds";
/// Open downstream connections, by listener.
pub const CONNECTIONS_ACTIVE: &str = "switchyard_connections_active";
/// TLS handshakes that failed, by listener and reason.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "switchyard_tls_handshake_failures_total";
/// Completed TLS handshakes, by listener, version and resumption.
pub const TLS_HANDSHAKES_TOTAL: &str = "switchyard_tls_handshakes_total";
/// A site's leaf certificate's notAfter, as Unix time.
pub const TLS_CERT_EXPIRY: &str = "switchyard_tls_certificate_expiry_timestamp_seconds";
/// ACME orders, first or renewal, by site and result (`issued`, `failed`).
pub const ACME_ORDERS_TOTAL: &str = "switchyard_acme_orders_total";
/// Connections closed before being served, by listener and reason.
pub const CONNECTIONS_REJECTED_TOTAL: &str = "switchyard_connections_rejected_total";
/// Responses compressed at the proxy, by site, route and encoding.
pub const COMPRESSED_RESPONSES_TOTAL: &str = "switchyard_compressed_responses_total";
/// Configuration reloads, by result.
pub const CONFIG_RELOADS_TOTAL: &str = "switchyard_config_reloads_total";
/// Unix time at which the live configuration was loaded.
pub const CONFIG_LOADED_TIMESTAMP: &str = "switchyard_config_loaded_timestamp_seconds";
/// Hash of the live configuration's files (low 52 bits, exact as a float).
pub const CONFIG_HASH: &str = "switchyard_config_hash";

/// The `encoding` label of `switchyard_compressed_responses_total`, in the
/// order of `RouteMetrics::compressed`.
pub const ENCODINGS: [&str; 3] = ["zstd", "br", "gzip"];

/// Latency buckets (seconds) shared by every duration histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Session-length buckets (seconds) for WebSocket sessions.
const SESSION_BUCKETS: &[f64] = &[
    0.1, 1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

/// HTTP methods that get their own label value; anything else is `other`,
/// so a client cannot blow up label cardinality with invented methods.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "other",
];

/// Every metric's unit and help text, for the `# HELP` lines.
const DESCRIPTIONS: &[(&str, Option<Unit>, &str)] = &[
    (
        COMPRESSED_RESPONSES_TOTAL,
        None,
        "Responses compressed at the proxy (routes with compress = true), by site, route and encoding (zstd, br, gzip).",
    ),
    (
        CONNECTIONS_REJECTED_TOTAL,
        None,
        "Connections closed before being served, by listener and reason (proxy_protocol: missing, malformed, slow or oversized PROXY header; untrusted_proxy: a PROXY connection from outside trusted_proxies).",
    ),
    (
        REQUESTS_TOTAL,
        None,
        "Requests answered, by site, route, method and status.",
    ),
    (
        REQUEST_DURATION,
        Some(Unit::Seconds),
        "Time from request head to last response byte.",
    ),
    (
        POOL_QUEUE_DEPTH,
        None,
        "Requests waiting in a pool's queue.",
    ),
    (
        POOL_QUEUE_WAIT,
        Some(Unit::Seconds),
        "Time requests spent waiting in a pool's queue.",
    ),
    (
        POOL_REJECTED_TOTAL,
        None,
        "Requests a pool turned away, by reason.",
    ),
    (
        UPSTREAM_IN_FLIGHT,
        None,
        "Requests in flight to an upstream server.",
    ),
    (
        UPSTREAM_UP,
        None,
        "Whether an upstream server is up (1) or down (0).",
    ),
    (WS_SESSIONS_ACTIVE, None, "Open WebSocket sessions."),
    (WS_SESSIONS_TOTAL, None, "WebSocket sessions opened."),
    (
        WS_FRAMES_TOTAL,
        None,
        "WebSocket frames relayed, by direction and opcode.",
    ),
    (
        WS_BYTES_TOTAL,
        None,
        "WebSocket bytes relayed, by direction.",
    ),
    (
        WS_SESSION_DURATION,
        Some(Unit::Seconds),
        "WebSocket session lifetime.",
    ),
    (
        CONNECTIONS_ACTIVE,
        None,
        "Open downstream connections, by listener.",
    ),
    (
        TLS_HANDSHAKE_FAILURES_TOTAL,
        None,
        "TLS handshakes that failed, by listener and reason.",
    ),
    (
        TLS_HANDSHAKES_TOTAL,
        None,
        "TLS handshakes completed, by listener, version (TLSv1.2, TLSv1.3) and whether the session was resumed.",
    ),
    (
        TLS_CERT_EXPIRY,
        Some(Unit::Seconds),
        "Unix time at which a site's leaf certificate expires (its notAfter).",
    ),
    (
        ACME_ORDERS_TOTAL,
        None,
        "ACME certificate orders, first or renewal, by site and result (issued, failed).",
    ),
    (
        CONFIG_RELOADS_TOTAL,
        None,
        "Configuration reloads, by result.",
    ),
    (
        CONFIG_LOADED_TIMESTAMP,
        Some(Unit::Seconds),
        "Unix time the live configuration was loaded.",
    ),
    (CONFIG_HASH, None, "Hash of the live configuration's files."),
];

/// The proxy's metric registry and exporter.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Workers recording into the hot path's handles; above one, those
    /// handles accumulate per worker (see `per_worker`).
    workers: usize,
    folds: per_worker::Folds,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    /// A fresh registry with the contract's metrics described and bucketed.
    pub fn new() -> Arc<Self> {
        Self::for_workers(1)
    }

    /// As [`Self::new`], for a proxy whose connections run on `workers`
    /// workers: the hot path's handles then accumulate per worker.
    pub fn for_workers(workers: usize) -> Arc<Self> {
        let mut builder = PrometheusBuilder::new();
        for name in [REQUEST_DURATION, POOL_QUEUE_WAIT] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
        }
        builder = builder
            .set_buckets_for_metric(
                Matcher::Full(WS_SESSION_DURATION.to_string()),
                SESSION_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let m = Metrics {
            recorder,
            handle,
            workers: workers.max(1),
            folds: per_worker::Folds::default(),
        };
        m.describe();
        Arc::new(m)
    }

    fn describe(&self) {
        for &(name, unit, help) in DESCRIPTIONS {
            // Counters, gauges and histograms share one description table.
            self.recorder
                .describe_counter(name.into(), unit, SharedString::const_str(help));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.folds.fold_all();
        self.handle.render()
    }

    /// Folds per-worker handles and drains histogram samples into their
    /// buckets; call periodically.
    pub fn upkeep(&self) {
        self.folds.fold_all();
        self.handle.run_upkeep();
    }

    /// A counter handle with the given labels.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    /// A gauge handle with the given labels.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// A histogram handle with the given labels.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// A counter handle for the hot path: per worker when there are several.
    fn worker_counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        let c = self.counter(name, labels);
        match self.workers {
            1 => c,
            n => per_worker::counter(&self.folds, n, c),
        }
    }

    /// A gauge handle for the hot path, moved only by increment and
    /// decrement: per worker when there are several.
    fn worker_gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        let g = self.gauge(name, labels);
        match self.workers {
            1 => g,
            n => per_worker::gauge(&self.folds, n, g),
        }
    }

    /// A histogram handle for the hot path: per worker when there are several.
    fn worker_histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        let h = self.histogram(name, labels);
        match self.workers {
            1 => h,
            n => per_worker::histogram(&self.folds, n, h),
        }
    }
}

/// Index of a method in [`METHODS`].
fn method_index(method: &http::Method) -> usize {
    use http::Method as M;
    match *method {
        M::GET => 0,
        M::HEAD => 1,
        M::POST => 2,
        M::PUT => 3,
        M::DELETE => 4,
        M::OPTIONS => 5,
        M::PATCH => 6,
        M::CONNECT => 7,
        M::TRACE => 8,
        _ => 9,
    }
}

/// Number of status codes with a slot (100..=599).
const STATUS_SLOTS: usize = 500;

/// `switchyard_requests_total` for one site and route: a counter per
/// (method, status), registered the first time that pair is seen and then
/// reused without a lookup.
pub struct RequestCounters {
    metrics: Arc<Metrics>,
    site: Arc<str>,
    route: Arc<str>,
    by_method: [OnceLock<Box<[OnceLock<Counter>]>>; METHODS.len()],
}

impl RequestCounters {
    fn new(metrics: Arc<Metrics>, site: Arc<str>, route: Arc<str>) -> Self {
        RequestCounters {
            metrics,
            site,
            route,
            by_method: Default::default(),
        }
    }

    /// Counts one request.
    pub fn inc(&self, method: &http::Method, status: http::StatusCode) {
        let m = method_index(method);
        let code = status.as_u16() as usize;
        let Some(slot) = code.checked_sub(100).filter(|s| *s < STATUS_SLOTS) else {
            return;
        };
        let statuses =
            self.by_method[m].get_or_init(|| (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect());
        statuses[slot]
            .get_or_init(|| {
                self.metrics.worker_counter(
                    REQUESTS_TOTAL,
                    &[
                        ("site", &self.site),
                        ("route", &self.route),
                        ("method", METHODS[m]),
                        ("status", status.as_str()),
                    ],
                )
            })
            .increment(1);
    }
}

/// WebSocket frame opcodes as metric label values, indexed by opcode class.
pub const OPCODES: [&str; 6] = ["continuation", "text", "binary", "close", "ping", "pong"];
/// Relay directions as metric label values.
pub const DIRECTIONS: [&str; 2] = ["client_to_upstream", "upstream_to_client"];

/// Per-direction WebSocket handles.
pub struct WsDirectionMetrics {
    /// Frames by opcode class (see [`OPCODES`]).
    pub frames: [Counter; 6],
    /// Bytes on the wire.
    pub bytes: Counter,
}

/// Every handle one route records into.
pub struct RouteMetrics {
    /// `switchyard_requests_total`.
    pub requests: RequestCounters,
    /// `switchyard_request_duration_seconds`.
    pub duration: Histogram,
    /// `switchyard_websocket_sessions_active`.
    pub ws_active: Gauge,
    /// `switchyard_websocket_sessions_total`.
    pub ws_total: Counter,
    /// `switchyard_websocket_session_duration_seconds`.
    pub ws_duration: Histogram,
    /// Frames and bytes, indexed like [`DIRECTIONS`].
    pub ws: [WsDirectionMetrics; 2],
    /// `switchyard_compressed_responses_total`, by encoding: zstd, br, gzip.
    pub compressed: [Counter; 3],
}

impl RouteMetrics {
    /// Resolves every handle for one route.
    pub fn new(metrics: &Arc<Metrics>, site: &str, route: &str) -> Self {
        let l = [("site", site), ("route", route)];
        let dir = |d: &'static str| WsDirectionMetrics {
            frames: OPCODES.map(|op| {
                metrics.worker_counter(
                    WS_FRAMES_TOTAL,
                    &[
                        ("site", site),
                        ("route", route),
                        ("direction", d),
                        ("opcode", op),
                    ],
                )
            }),
            bytes: metrics.worker_counter(
                WS_BYTES_TOTAL,
                &[("site", site), ("route", route), ("direction", d)],
            ),
        };
        RouteMetrics {
            requests: RequestCounters::new(metrics.clone(), site.into(), route.into()),
            duration: metrics.worker_histogram(REQUEST_DURATION, &l),
            ws_active: metrics.worker_gauge(WS_SESSIONS_ACTIVE, &l),
            ws_total: metrics.worker_counter(WS_SESSIONS_TOTAL, &l),
            ws_duration: metrics.worker_histogram(WS_SESSION_DURATION, &l),
            ws: [dir(DIRECTIONS[0]), dir(DIRECTIONS[1])],
            compressed: ENCODINGS.map(|e| {
                metrics.worker_counter(
                    COMPRESSED_RESPONSES_TOTAL,
                    &[("site", site), ("route", route), ("encoding", e)],
                )
            }),
        }
    }
}

/// Handles for one pool.
pub struct PoolMetrics {
    /// `switchyard_pool_queue_depth`.
    pub queue_depth: Gauge,
    /// `switchyard_pool_queue_wait_seconds`.
    pub queue_wait: Histogram,
    /// `switchyard_pool_rejected_total{reason="queue_timeout"}`.
    pub rejected_queue_timeout: Counter,
    /// `switchyard_pool_rejected_total{reason="queue_full"}`.
    pub rejected_queue_full: Counter,
    /// `switchyard_pool_rejected_total{reason="no_healthy_server"}`.
    pub rejected_no_healthy: Counter,
}

impl PoolMetrics {
    /// Resolves every handle for one pool.
    pub fn new(metrics: &Metrics, site: &str, pool: &str) -> Self {
        let l = [("site", site), ("pool", pool)];
        let rejected = |reason: &str| {
            metrics.counter(
                POOL_REJECTED_TOTAL,
                &[("site", site), ("pool", pool), ("reason", reason)],
            )
        };
        PoolMetrics {
            queue_depth: metrics.gauge(POOL_QUEUE_DEPTH, &l),
            queue_wait: metrics.histogram(POOL_QUEUE_WAIT, &l),
            rejected_queue_timeout: rejected("queue_timeout"),
            rejected_queue_full: rejected("queue_full"),
            rejected_no_healthy: rejected("no_healthy_server"),
        }
    }
}

/// Handles for one upstream server.
pub struct ServerMetrics {
    /// `switchyard_upstream_in_flight`.
    pub in_flight: Gauge,
    /// `switchyard_upstream_up`.
    pub up: Gauge,
}

impl ServerMetrics {
    /// Resolves every handle for one server.
    pub fn new(metrics: &Metrics, site: &str, pool: &str, server: &str) -> Self {
        let l = [("site", site), ("pool", pool), ("server", server)];
        ServerMetrics {
            in_flight: metrics.worker_gauge(UPSTREAM_IN_FLIGHT, &l),
            up: metrics.gauge(UPSTREAM_UP, &l),
        }
    }
}

/// Handles for one listener.
#[derive(Clone)]
pub struct ListenerMetrics {
    /// `switchyard_connections_active`.
    pub connections: Gauge,
    metrics: Arc<Metrics>,
    listener: Arc<str>,
    failures: Arc<[OnceLock<Counter>; TLS_FAILURE_REASONS.len()]>,
    /// By version (1.2, 1.3) then resumed (false, true).
    handshakes: Arc<[[OnceLock<Counter>; 2]; 2]>,
    rejected: Arc<[OnceLock<Counter>; REJECT_REASONS.len()]>,
}

/// Why a connection was closed before being served, as metric label
/// values (`max_connections`: it waited for a slot longer than
/// `timeouts.header`).
pub const REJECT_REASONS: [&str; 3] = ["proxy_protocol", "untrusted_proxy", "max_connections"];

/// Reasons a TLS handshake fails, as metric label values.
pub const TLS_FAILURE_REASONS: [&str; 5] = [
    "no_sni_match",
    "not_tls",
    "protocol_error",
    "timeout",
    "io_error",
];

impl ListenerMetrics {
    /// Resolves the handles for the listener with this label.
    pub fn new(metrics: &Arc<Metrics>, listener: &str) -> Self {
        ListenerMetrics {
            connections: metrics.worker_gauge(CONNECTIONS_ACTIVE, &[("listener", listener)]),
            metrics: metrics.clone(),
            listener: listener.into(),
            failures: Arc::new(Default::default()),
            handshakes: Arc::new(Default::default()),
            rejected: Arc::new(Default::default()),
        }
    }

    /// Counts a connection closed before being served; `reason` indexes
    /// [`REJECT_REASONS`].
    pub fn rejected(&self, reason: usize) {
        let Some(slot) = self.rejected.get(reason) else {
            return;
        };
        slot.get_or_init(|| {
            self.metrics.counter(
                CONNECTIONS_REJECTED_TOTAL,
                &[
                    ("listener", &self.listener),
                    ("reason", REJECT_REASONS[reason]),
                ],
            )
        })
        .increment(1);
    }

    /// Counts a completed handshake: TLS 1.3 or 1.2, resumed or full.
    pub fn tls_handshake(&self, tls13: bool, resumed: bool) {
        let version = usize::from(tls13);
        self.handshakes[version][usize::from(resumed)]
            .get_or_init(|| {
                self.metrics.counter(
                    TLS_HANDSHAKES_TOTAL,
                    &[
                        ("listener", &self.listener),
                        ("version", ["TLSv1.2", "TLSv1.3"][version]),
                        ("resumed", if resumed { "true" } else { "false" }),
                    ],
                )
            })
            .increment(1);
    }

    /// Counts a failed handshake; `reason` indexes [`TLS_FAILURE_REASONS`].
    pub fn tls_failure(&self, reason: usize) {
        let Some(slot) = self.failures.get(reason) else {
            return;
        };
        slot.get_or_init(|| {
            self.metrics.counter(
                TLS_HANDSHAKE_FAILURES_TOTAL,
                &[
                    ("listener", &self.listener),
                    ("reason", TLS_FAILURE_REASONS[reason]),
                ],
            )
        })
        .increment(1);
    }
}
