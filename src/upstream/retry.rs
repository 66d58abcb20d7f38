//! Retry: when a failed exchange is tried once more, on another server.
//!
//! One policy for plain requests (`proxy::forward`) and WebSocket
//! handshakes (`proxy::websocket`), so the two cannot drift apart.

use super::error::Failure;

/// Retries after a first failure: one.
const MAX_RETRIES: u32 = 1;

/// Whether a request that failed with `err` is sent again, to another server.
///
/// `attempt` counts the retries made already. Only an idempotent request
/// whose body can be sent again (no body, today) is ever retried, and only
/// when `err` says it is safe; a POST is never sent twice, even when its
/// connect was refused. Whether another server is there to try is the
/// caller's to know: this module knows servers, not pools.
pub(crate) fn should_retry(
    err: &impl Failure,
    attempt: u32,
    idempotent: bool,
    body_replayable: bool,
) -> bool {
    attempt < MAX_RETRIES && idempotent && body_replayable && err.retry_safe()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::upstream::UpstreamError;

    #[test]
    fn once_only_idempotent_only_replayable_only_when_safe() {
        let refused = UpstreamError::Connect(std::io::ErrorKind::ConnectionRefused.into());
        let timed_out = UpstreamError::ConnectTimeout(Duration::from_secs(1));
        assert!(should_retry(&refused, 0, true, true));
        assert!(should_retry(&timed_out, 0, true, true));
        assert!(!should_retry(&refused, 1, true, true), "once only");
        assert!(!should_retry(&refused, 0, false, true), "not a POST");
        assert!(!should_retry(&refused, 0, true, false), "not a spent body");
        assert!(
            !should_retry(&UpstreamError::Timeout, 0, true, true),
            "not after upstream_response"
        );
    }
}
