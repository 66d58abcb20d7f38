//! The ACME account: created once per CA and kept in storage, so every
//! later order and restart signs with the same key. Requests to the CA go
//! through our rustls on ring, trusting `[acme] ca_roots` when given (a
//! private or test CA such as pebble's) and the system's roots otherwise.

use std::sync::Arc;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{Account, AccountCredentials, BodyWrapper, NewAccount};

use super::AcmeError;
use super::storage::Storage;
use crate::config::Acme;

/// The HTTP client the account talks to the CA with.
fn http_client(acme: &Acme) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match &acme.ca_roots {
        Some((_, roots)) => {
            let mut store = rustls::RootCertStore::empty();
            for root in roots {
                store.add(root.clone()).map_err(AcmeError::Certificate)?;
            }
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(AcmeError::Certificate)?
                .with_root_certificates(store)
                .with_no_client_auth();
            builder.with_tls_config(tls)
        }
        None => builder
            .with_provider_and_native_roots(provider)
            .map_err(AcmeError::Roots)?,
    };
    let connector = builder.https_only().enable_http1().enable_http2().build();
    let client: Client<_, BodyWrapper<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}

/// The stored account for `acme`'s CA, or a new one, registered and
/// stored. The caller holds the `account` lock, so two processes sharing
/// storage register one account.
pub(super) async fn load_or_create(acme: &Acme, storage: &Storage) -> Result<Account, AcmeError> {
    let http = http_client(acme)?;
    let path = storage.account_path();
    if let Some(bytes) = storage.read(&path)? {
        let credentials: AccountCredentials =
            serde_json::from_slice(&bytes).map_err(|source| AcmeError::AccountFile {
                path: path.clone(),
                source,
            })?;
        return Account::builder_with_http(http)
            .from_credentials(credentials)
            .await
            .map_err(AcmeError::Account);
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(http)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await
        .map_err(AcmeError::Account)?;
    let json =
        serde_json::to_vec_pretty(&credentials).map_err(|source| AcmeError::AccountFile {
            path: path.clone(),
            source,
        })?;
    storage.write(&path, &json)?;
    tracing::info!(directory = %acme.directory, account = %account.id(), "ACME account registered");
    Ok(account)
}
