//! One order (RFC 8555 §7.4): new order for every host of the site, each
//! authorization answered with the configured challenge, then finalized
//! with a fresh key's CSR and the chain downloaded.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::AcmeError;
use super::challenge::{Challenges, Published};
use crate::config::AcmeChallenge;

/// How long the CA may take to validate, and then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// A certificate as the CA issued it.
pub(super) struct Issued {
    /// The chain, PEM.
    pub(super) chain_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub(super) key_pem: String,
}

/// Orders a certificate naming `hosts`, answering with `kind` through
/// `challenges`.
pub(super) async fn order(
    account: &Account,
    hosts: &[String],
    kind: AcmeChallenge,
    challenges: &Arc<Challenges>,
) -> Result<Issued, AcmeError> {
    let identifiers: Vec<Identifier> = hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(AcmeError::Order)?;
    // Withdrawn when this function returns, however it returns.
    let mut published = Published::new(challenges.clone());
    let wanted = match kind {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(AcmeError::Order)?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            // Validated recently (the CA reuses authorizations).
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::Rejected(format!(
                    "authorization is {status:?} before any challenge was answered"
                )));
            }
        }
        let mut challenge = authz
            .challenge(wanted.clone())
            .ok_or(AcmeError::NoChallenge(kind_name(kind)))?;
        let key_authorization = challenge.key_authorization();
        match kind {
            AcmeChallenge::Http01 => {
                published.http01(&challenge.token, key_authorization.as_str());
            }
            AcmeChallenge::TlsAlpn01 => {
                let name = challenge.identifier().to_string();
                published.tls_alpn01(&name, key_authorization.digest().as_ref())?;
            }
        }
        challenge.set_ready().await.map_err(AcmeError::Order)?;
    }
    let status = order.poll_ready(&POLL).await.map_err(AcmeError::Order)?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Rejected(why_invalid(&mut order, status).await));
    }
    let (csr, key_pem) = csr(hosts)?;
    order.finalize_csr(&csr).await.map_err(AcmeError::Order)?;
    let chain_pem = order
        .poll_certificate(&POLL)
        .await
        .map_err(AcmeError::Order)?;
    Ok(Issued { chain_pem, key_pem })
}

/// The CA's problem documents for an order that did not become ready.
async fn why_invalid(order: &mut instant_acme::Order, status: OrderStatus) -> String {
    let mut problems = Vec::new();
    if let Some(p) = &order.state().error {
        problems.push(p.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                problems.push(format!("{}: {p}", authz.identifier()));
            }
        }
    }
    if problems.is_empty() {
        format!("the order is {status:?}")
    } else {
        format!("the order is {status:?}: {}", problems.join("; "))
    }
}

/// A CSR naming `hosts` with a fresh ECDSA P-256 key, and the key (PEM).
fn csr(hosts: &[String]) -> Result<(Vec<u8>, String), AcmeError> {
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(AcmeError::Key)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate().map_err(AcmeError::Key)?;
    let csr = params.serialize_request(&key).map_err(AcmeError::Key)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// The configuration spelling of a challenge type.
pub(super) fn kind_name(kind: AcmeChallenge) -> &'static str {
    match kind {
        AcmeChallenge::Http01 => "http-01",
        AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
    }
}
