//! Answering challenges: the http-01 tokens the plain listeners serve and
//! the tls-alpn-01 certificates (RFC 8737) the https listeners present to a
//! ClientHello that offers only ALPN `acme-tls/1`. Both live in one
//! [`Challenges`] store, shared by every configuration generation, and are
//! published for the length of one order by a [`Published`] guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::AcmeError;

/// The ALPN protocol of tls-alpn-01 (RFC 8737 §6.2).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// ALPN protocols an ACME site offers: the usual ones first, so that no
/// client asking for h2 or http/1.1 ever lands on `acme-tls/1`.
pub(crate) const ALPN: [&[u8]; 3] = [b"h2", b"http/1.1", ACME_TLS_ALPN];

/// The path prefix of http-01 (RFC 8555 §8.3).
pub(crate) const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Challenges being answered, by http-01 token and by tls-alpn-01 name.
#[derive(Default)]
pub(crate) struct Challenges {
    /// Token → key authorization.
    http: Mutex<HashMap<String, String>>,
    /// DNS name (lower case) → the challenge certificate for it.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

impl Challenges {
    /// The key authorization to answer for an http-01 `token`, if an order
    /// is waiting on it.
    pub(crate) fn http01(&self, token: &str) -> Option<String> {
        self.http
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    /// The tls-alpn-01 certificate for `name`, if an order is waiting on it.
    fn alpn_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name.to_ascii_lowercase())
            .cloned()
    }
}

/// What one order has published; withdrawn when dropped, so a failed or
/// cancelled order leaves nothing behind.
pub(super) struct Published {
    store: Arc<Challenges>,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Published {
    /// Nothing published yet, in `store`.
    pub(super) fn new(store: Arc<Challenges>) -> Self {
        Published {
            store,
            tokens: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Answers the http-01 `token` with `key_authorization`.
    pub(super) fn http01(&mut self, token: &str, key_authorization: &str) {
        self.store
            .http
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), key_authorization.to_owned());
        self.tokens.push(token.to_owned());
    }

    /// Presents a tls-alpn-01 certificate for `name`, made from the
    /// SHA-256 digest of the key authorization.
    pub(super) fn tls_alpn01(&mut self, name: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let key = challenge_certificate(name, digest)?;
        let name = name.to_ascii_lowercase();
        self.store
            .alpn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone(), Arc::new(key));
        self.names.push(name);
        Ok(())
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        let mut http = self
            .store
            .http
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for t in &self.tokens {
            http.remove(t);
        }
        drop(http);
        let mut alpn = self
            .store
            .alpn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for n in &self.names {
            alpn.remove(n);
        }
    }
}

/// RFC 8737 §3: a self-signed certificate naming only `name`, with the
/// critical acmeIdentifier extension holding the key authorization's digest.
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(AcmeError::Key)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key_pair = rcgen::KeyPair::generate().map_err(AcmeError::Key)?;
    let cert = params.self_signed(&key_pair).map_err(AcmeError::Key)?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(AcmeError::Certificate)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// Whether a ClientHello is a tls-alpn-01 validation: it offers ALPN
/// `acme-tls/1` and nothing else (RFC 8737 §3).
fn is_validation(hello: &ClientHello<'_>) -> bool {
    let Some(mut protocols) = hello.alpn() else {
        return false;
    };
    let mut any = false;
    let only_acme = protocols.all(|p| {
        any = true;
        p == ACME_TLS_ALPN
    });
    any && only_acme
}

/// An ACME site's certificate choice: the challenge certificate for a
/// validation, never the site's; otherwise the site's certificate, and
/// none (the handshake fails) until its first one arrives.
#[derive(Debug)]
pub(crate) struct Resolver {
    site: Option<Arc<CertifiedKey>>,
    challenges: Arc<Challenges>,
}

impl Resolver {
    /// Presents `site` (if any), answering validations from `challenges`.
    pub(crate) fn new(site: Option<Arc<CertifiedKey>>, challenges: Arc<Challenges>) -> Self {
        Resolver { site, challenges }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_validation(&hello) {
            return hello
                .server_name()
                .and_then(|name| self.challenges.alpn_certificate(name));
        }
        self.site.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_challenges_are_withdrawn_on_drop() {
        let store = Arc::new(Challenges::default());
        let mut published = Published::new(store.clone());
        published.http01("tok", "tok.thumb");
        published.tls_alpn01("Shop.Example", &[7u8; 32]).unwrap();
        assert_eq!(store.http01("tok").as_deref(), Some("tok.thumb"));
        assert!(store.http01("other").is_none());
        let cert = store.alpn_certificate("shop.example").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).unwrap();
        // id-pe-acmeIdentifier, critical, holding OCTET STRING(digest).
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
        drop(published);
        assert!(store.http01("tok").is_none());
        assert!(store.alpn_certificate("shop.example").is_none());
    }
}
