//! Health: active checks of pool servers (`health = { path, interval, ... }`).
//!
//! One task per checked server sends `GET path` every `interval` over a
//! fresh connection; `fall` consecutive failures take the server out of
//! rotation and `rise` consecutive successes bring it back. The task holds
//! only a weak reference, so it ends when a reload drops the server.
//!
//! The checker is switched on and off from here ([`Server::set_health`]),
//! so a server's own code knows nothing of checks beyond its `up` flag.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, header};

use super::body::Body;
use super::client::handshake;
use super::connect::connect;
use super::error::UpstreamError;
use super::server::Server;
use crate::config::Health;

impl Server {
    /// Sets (or clears) active health checking, starting the checker if needed.
    /// Checks connect within `connect_timeout`, as every upstream
    /// connection does.
    pub(crate) fn set_health(self: &Arc<Self>, health: Option<Health>, connect_timeout: Duration) {
        let enabled = health.is_some();
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) =
            health.map(|h| (h, connect_timeout));
        if enabled && !self.checker_running.swap(true, Ordering::AcqRel) {
            spawn(self);
        }
        if !enabled {
            // Without active checks, only passive backoff decides.
            self.set_up(true);
        }
    }

    /// The current active health settings and connect timeout.
    fn health_settings(&self) -> Option<(Health, Duration)> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stop_checker(&self) {
        self.checker_running.store(false, Ordering::Release);
    }
}

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    /// The server could not be reached, or broke the exchange off.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The check's request could not be built from its settings.
    #[error("the health check request is invalid (check health.path): {0}")]
    Request(#[source] http::Error),
    /// The server answered, but not with a 2xx or 3xx.
    #[error("status {0}")]
    Status(http::StatusCode),
    /// No answer within `health.timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One check: connect, `GET path`, and expect a 2xx or 3xx within `timeout`.
async fn check_once(
    server: &Server,
    health: &Health,
    connect_timeout: Duration,
) -> Result<(), CheckError> {
    let work = async {
        let stream = connect(&server.address, connect_timeout).await?;
        let (mut send, conn) = handshake(stream).await?;
        tokio::spawn(conn);
        let req = Request::get(health.path.as_str())
            .header(header::HOST, server.address.host(&server.addr))
            .header(header::USER_AGENT, "switchyard-health")
            .header(header::CONNECTION, "close")
            .body(Body::empty())
            .map_err(CheckError::Request)?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Response(e.into()))?;
        let s = resp.status();
        if s.is_success() || s.is_redirection() {
            Ok(())
        } else {
            Err(CheckError::Status(s))
        }
    };
    match tokio::time::timeout(health.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Timeout(health.timeout)),
    }
}

/// Starts the checker task for `server`, which runs until the server is dropped
/// or its health settings are removed.
fn spawn(server: &Arc<Server>) {
    let weak: Weak<Server> = Arc::downgrade(server);
    tokio::spawn(async move {
        let mut ok_streak = 0u32;
        let mut fail_streak = 0u32;
        loop {
            let Some(server) = weak.upgrade() else { return };
            let Some((health, connect_timeout)) = server.health_settings() else {
                server.stop_checker();
                return;
            };
            let result = check_once(&server, &health, connect_timeout).await;
            match result {
                Ok(()) => {
                    fail_streak = 0;
                    // A passing check also ends any passive backoff.
                    server.report_success();
                    ok_streak = ok_streak.saturating_add(1);
                    if !server.is_up() && ok_streak >= health.rise {
                        tracing::info!(server = %server.addr, "health check passing: server is up");
                        server.set_up(true);
                    }
                }
                Err(e) => {
                    ok_streak = 0;
                    fail_streak = fail_streak.saturating_add(1);
                    if server.is_up() && fail_streak >= health.fall {
                        tracing::warn!(server = %server.addr, error = %e, "health check failing: server is down");
                        server.set_up(false);
                    } else {
                        tracing::debug!(server = %server.addr, error = %e, "health check failed");
                    }
                }
            }
            let interval = health.interval.max(Duration::from_millis(10));
            drop(server);
            tokio::time::sleep(interval).await;
        }
    });
}
