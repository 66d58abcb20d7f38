//! When to order: a site with no certificate (or one that does not name
//! all of its hosts) at once; otherwise when a third of its lifetime is
//! left, or earlier at the moment the CA's renewal information (ARI,
//! RFC 9773) picks; after a failure, with growing delays up to an hour.

use std::time::Duration;

use instant_acme::{Account, CertificateIdentifier};

use super::storage::Stored;

/// The first retry after a failed order; it doubles each time.
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Retries never wait longer than this.
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// Unix time at which `cert` is due for renewal by the lifetime rule.
pub(super) fn third_left(cert: &Stored) -> i64 {
    let lifetime = (cert.not_after - cert.not_before).max(0);
    cert.not_after - lifetime / 3
}

/// Whether `cert` names exactly the site's `hosts` (a reload that changed
/// them needs a new certificate).
pub(super) fn covers(cert: &Stored, hosts: &[String]) -> bool {
    let mut wanted: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    wanted.sort();
    wanted.dedup();
    wanted == cert.names
}

/// The delay before retry number `failures` (1 for the first).
pub(super) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// A moment in the CA's suggested renewal window for `cert` (RFC 9773
/// §4.2: uniformly random within it), as Unix time; `None` if the CA
/// offers no renewal information or asking failed (the lifetime rule
/// then decides alone).
pub(super) async fn ari_moment(account: &Account, cert: &Stored) -> Option<i64> {
    let leaf = cert.tls.certified_key.cert.first()?;
    let id = CertificateIdentifier::try_from(leaf).ok()?;
    match account.renewal_info(&id).await {
        Ok((info, _)) => {
            let start = info.suggested_window.start.unix_timestamp();
            let end = info.suggested_window.end.unix_timestamp();
            Some(pick_in_window(start, end, crate::random::u64()))
        }
        Err(instant_acme::Error::Unsupported(_)) => None,
        Err(e) => {
            tracing::debug!(error = %e, "ACME renewal information unavailable; using the lifetime rule");
            None
        }
    }
}

/// A point in `[start, end]` chosen by `random`.
fn pick_in_window(start: i64, end: i64, random: u64) -> i64 {
    let span = u64::try_from(end.saturating_sub(start)).unwrap_or(0);
    if span == 0 {
        return start;
    }
    start.saturating_add(i64::try_from(random % span).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(9), Duration::from_secs(2560));
        assert_eq!(backoff(10), MAX_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn ari_moment_lies_in_the_window() {
        assert_eq!(pick_in_window(100, 100, 7), 100);
        assert_eq!(pick_in_window(100, 90, 7), 100);
        for r in [0, 1, 59, 60, u64::MAX] {
            let t = pick_in_window(100, 160, r);
            assert!((100..160).contains(&t), "{t}");
        }
    }
}
