//! Automatic certificates (ACME, RFC 8555) for the sites that say
//! `tls = { acme = true }`, on the maintained `instant-acme` client.
//!
//! One task per ACME site ([`Manager::sync`] starts and stops them as
//! reloads add and remove sites): it serves the stored certificate if
//! there is one ([`storage`]), orders when none names the site's hosts or
//! renewal is due ([`renewal`]), under a lock file so that processes
//! sharing storage order once and pick up each other's result, answers the
//! challenges ([`challenge`]), and hands each new certificate to the
//! server, which swaps it in as a reload does ([`Manager::fill`]).
//! Failures are retried with growing delays while the current certificate
//! keeps serving. Every order counts once in
//! `switchyard_acme_orders_total{site,result}`.

mod account;
mod challenge;
mod order;
mod renewal;
mod storage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::Account;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Acme, Config};
use crate::metrics::{self, Metrics};
use storage::{Storage, StorageError, Stored};

pub(crate) use challenge::{ALPN, Challenges, HTTP01_PREFIX, Resolver};

/// How often a site whose certificate is not due looks again (another
/// process's renewal, a CA's changed renewal window).
const RECHECK: Duration = Duration::from_secs(600);
/// How often a site waits for another process that holds its lock.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// Why an order (or what it needs) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    /// Storage could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored account file does not parse.
    #[error("{}: not an ACME account file ({source}); move it away to register a new account", path.display())]
    AccountFile {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The account could not be registered or restored.
    #[error("ACME account: {0} (check [acme] directory, and ca_roots for a private CA)")]
    Account(#[source] instant_acme::Error),
    /// A request of the order failed; the CA's problem document, if it
    /// sent one, is in the message.
    #[error("ACME order: {0}")]
    Order(#[source] instant_acme::Error),
    /// The CA refused the order or a challenge failed.
    #[error("ACME order rejected: {0}")]
    Rejected(String),
    /// The CA offered no challenge of the configured type.
    #[error("the CA offered no {0} challenge (try the other [acme] challenge)")]
    NoChallenge(&'static str),
    /// A key, CSR or challenge certificate could not be made.
    #[error("cannot make a key or certificate request: {0}")]
    Key(#[source] rcgen::Error),
    /// rustls refused a certificate or root.
    #[error("certificate: {0}")]
    Certificate(#[source] rustls::Error),
    /// The system's root certificates could not be read.
    #[error("cannot load the system's root certificates: {0} (set [acme] ca_roots)")]
    Roots(#[source] std::io::Error),
}

/// One site's running ACME task, and what it was started for.
struct Task {
    acme: Acme,
    hosts: Vec<String>,
    stop: CancellationToken,
}

/// The ACME side of a running server.
pub(crate) struct Manager {
    /// The first generation's store, shared by all later ones.
    challenges: std::sync::OnceLock<Arc<Challenges>>,
    metrics: Arc<Metrics>,
    /// The newest certificate of each ACME site, by site name.
    certs: Arc<Mutex<HashMap<String, Stored>>>,
    tasks: Mutex<HashMap<String, Task>>,
    /// Told the name of each site whose certificate changed.
    issued: mpsc::UnboundedSender<String>,
}

impl Manager {
    /// A manager; the receiver hears the name of each site with a new
    /// certificate.
    pub(crate) fn new(metrics: Arc<Metrics>) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (issued, rx) = mpsc::unbounded_channel();
        let manager = Manager {
            challenges: std::sync::OnceLock::new(),
            metrics,
            certs: Arc::default(),
            tasks: Mutex::default(),
            issued,
        };
        (manager, rx)
    }

    /// Answers challenges through `challenges` (the store the routing
    /// table's ACME sites consult); set once, before [`Manager::sync`].
    pub(crate) fn attach(&self, challenges: Arc<Challenges>) {
        let _ = self.challenges.set(challenges);
    }

    /// Reads the stored certificates of `config`'s ACME sites, so that a
    /// restart serves them from its first handshake.
    pub(crate) fn preload(&self, config: &Config) {
        let Some(acme) = &config.acme else {
            return;
        };
        let storage = Storage::new(acme);
        for site in config.sites.iter().filter(|s| s.acme) {
            match storage.load_site(&site.name) {
                Ok(Some(stored)) => {
                    tracing::info!(site = %site.name, not_after = stored.not_after, file = %stored.tls.cert_path.display(), "ACME: serving the stored certificate");
                    set_expiry(&self.metrics, &site.name, &stored);
                    self.lock_certs().insert(site.name.clone(), stored);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(site = %site.name, error = %e, "ACME: stored certificate unusable")
                }
            }
        }
    }

    /// Gives each ACME site of `config` the newest certificate it has.
    pub(crate) fn fill(&self, config: &mut Config) {
        let certs = self.lock_certs();
        for site in config.sites.iter_mut().filter(|s| s.acme) {
            site.tls = certs.get(&site.name).map(|s| s.tls.clone());
        }
    }

    /// Starts a task for every ACME site of `config` that has none (or
    /// whose hosts or `[acme]` changed), and stops those of sites it no
    /// longer has.
    pub(crate) fn sync(&self, config: &Config) {
        let Some(challenges) = self.challenges.get() else {
            return;
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted: Vec<(&str, &Acme, &Vec<String>)> = match &config.acme {
            Some(acme) => config
                .sites
                .iter()
                .filter(|s| s.acme)
                .map(|s| (s.name.as_str(), acme, &s.hosts))
                .collect(),
            None => Vec::new(),
        };
        tasks.retain(|name, task| {
            let keep = wanted
                .iter()
                .any(|(n, a, h)| n == name && **a == task.acme && **h == task.hosts);
            if !keep {
                task.stop.cancel();
            }
            keep
        });
        for (name, acme, hosts) in wanted {
            if tasks.contains_key(name) {
                continue;
            }
            let stop = CancellationToken::new();
            let site = SiteTask {
                site: name.to_owned(),
                hosts: hosts.clone(),
                acme: acme.clone(),
                storage: Storage::new(acme),
                challenges: challenges.clone(),
                metrics: self.metrics.clone(),
                certs: self.certs.clone(),
                issued: self.issued.clone(),
                account: None,
            };
            tokio::spawn(site.run(stop.clone()));
            tasks.insert(
                name.to_owned(),
                Task {
                    acme: acme.clone(),
                    hosts: hosts.clone(),
                    stop,
                },
            );
        }
    }

    /// Stops every task (orders in flight are abandoned; their challenges
    /// withdrawn).
    pub(crate) fn stop(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, task) in tasks.drain() {
            task.stop.cancel();
        }
    }

    fn lock_certs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stored>> {
        self.certs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn set_expiry(metrics: &Metrics, site: &str, stored: &Stored) {
    metrics
        .gauge(metrics::TLS_CERT_EXPIRY, &[("site", site)])
        .set(stored.not_after as f64);
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One ACME site's task.
struct SiteTask {
    site: String,
    hosts: Vec<String>,
    acme: Acme,
    storage: Storage,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
    certs: Arc<Mutex<HashMap<String, Stored>>>,
    issued: mpsc::UnboundedSender<String>,
    /// Restored or registered on first need.
    account: Option<Account>,
}

impl SiteTask {
    async fn run(mut self, stop: CancellationToken) {
        for result in ["issued", "failed"] {
            self.metrics
                .counter(
                    metrics::ACME_ORDERS_TOTAL,
                    &[("site", &self.site), ("result", result)],
                )
                .absolute(0);
        }
        if let Err(e) = self.storage.ensure() {
            tracing::error!(site = %self.site, error = %e, "ACME: storage unusable; no certificate will be ordered until a reload");
            return;
        }
        let mut failures = 0u32;
        let mut retry_at = 0i64;
        loop {
            self.pick_up_stored();
            let due = self.due_at().await;
            let next = if failures > 0 { retry_at.max(due) } else { due };
            let now = unix_now();
            if now < next {
                let wait = Duration::from_secs(u64::try_from(next - now).unwrap_or(0)).min(RECHECK);
                if self.sleep(wait, &stop).await {
                    return;
                }
                continue;
            }
            let lock = match self.storage.try_lock_site(&self.site) {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    tracing::debug!(site = %self.site, "ACME: another process is ordering this certificate; waiting for it");
                    if self.sleep(LOCK_POLL, &stop).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    retry_at = unix_now() + backoff_secs(failures);
                    tracing::warn!(site = %self.site, error = %e, "ACME: cannot take the site's lock");
                    continue;
                }
            };
            // The lock's last holder may have just stored a fresh one.
            self.pick_up_stored();
            if unix_now() < self.due_at().await {
                drop(lock);
                failures = 0;
                continue;
            }
            let started = std::time::Instant::now();
            tracing::info!(site = %self.site, hosts = ?self.hosts, challenge = order::kind_name(self.acme.challenge), directory = %self.acme.directory, "ACME: ordering a certificate");
            let result = tokio::select! {
                r = self.order() => r,
                () = stop.cancelled() => return,
            };
            drop(lock);
            match result {
                Ok(stored) => {
                    failures = 0;
                    self.count("issued");
                    tracing::info!(site = %self.site, not_after = stored.not_after, seconds = started.elapsed().as_secs_f64(), "ACME: certificate issued");
                    self.install(stored);
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff_secs(failures);
                    retry_at = unix_now() + delay;
                    tracing::warn!(site = %self.site, error = %e, retry_in_seconds = delay, failures, "ACME: order failed; the current certificate (if any) keeps serving");
                    // Counted after the line is written: whoever sees the
                    // count (a test, an alert) finds the reason logged.
                    self.count("failed");
                }
            }
        }
    }

    /// Waits `wait` unless stopped first (returns true then).
    async fn sleep(&self, wait: Duration, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => false,
            () = stop.cancelled() => true,
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .counter(
                metrics::ACME_ORDERS_TOTAL,
                &[("site", &self.site), ("result", result)],
            )
            .increment(1);
    }

    /// The certificate served, if it came from this task's CA: after a
    /// reload that changed `[acme] directory` the old CA's keeps serving
    /// until the new CA's arrives, but is not taken for this CA's.
    fn current(&self) -> Option<Stored> {
        self.certs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&self.site)
            .filter(|c| self.storage.owns(&c.tls.cert_path))
            .cloned()
    }

    /// Serves the stored certificate if it is newer than the one served
    /// (another process renewed it, or this is the first look).
    fn pick_up_stored(&self) {
        match self.storage.load_site(&self.site) {
            Ok(Some(stored)) if renewal::covers(&stored, &self.hosts) => {
                let newer = self.current().is_none_or(|c| {
                    c.tls.certified_key.cert != stored.tls.certified_key.cert
                        && stored.not_after >= c.not_after
                });
                if newer {
                    tracing::info!(site = %self.site, not_after = stored.not_after, "ACME: serving the stored certificate");
                    self.install(stored);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(site = %self.site, error = %e, "ACME: stored certificate unusable; ordering a new one");
            }
        }
    }

    /// Unix time at which the served certificate is due for renewal; now
    /// if none is served or it does not name every host.
    async fn due_at(&mut self) -> i64 {
        let Some(cert) = self.current().filter(|c| renewal::covers(c, &self.hosts)) else {
            return 0;
        };
        let third = renewal::third_left(&cert);
        match &self.account {
            Some(account) => match renewal::ari_moment(account, &cert).await {
                Some(ari) => ari.min(third),
                None => third,
            },
            None => third,
        }
    }

    fn install(&self, stored: Stored) {
        set_expiry(&self.metrics, &self.site, &stored);
        self.certs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.site.clone(), stored);
        // The server is gone only when shutting down.
        let _ = self.issued.send(self.site.clone());
    }

    /// One order, stored.
    async fn order(&mut self) -> Result<Stored, AcmeError> {
        let account = match &self.account {
            Some(a) => a.clone(),
            None => {
                let account = self.account().await?;
                self.account = Some(account.clone());
                account
            }
        };
        let issued =
            order::order(&account, &self.hosts, self.acme.challenge, &self.challenges).await?;
        Ok(self
            .storage
            .save_site(&self.site, &issued.chain_pem, &issued.key_pem)?)
    }

    /// The account, under the storage's `account` lock so that processes
    /// sharing storage register one.
    async fn account(&self) -> Result<Account, AcmeError> {
        loop {
            if let Some(_lock) = self.storage.try_lock_account()? {
                return account::load_or_create(&self.acme, &self.storage).await;
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }
}

fn backoff_secs(failures: u32) -> i64 {
    i64::try_from(renewal::backoff(failures).as_secs()).unwrap_or(i64::MAX)
}
