//! `[acme] storage`: the account and each site's certificate, kept so a
//! restart reuses them. Everything is owner-only (0700 directories, 0600
//! files) since it holds private keys, and every file is written whole
//! (temporary file, fsync, rename, fsync of the directory): a crash leaves
//! the old file or the new one, never half of one. A site's certificate
//! and key share one PEM file so they cannot be caught out of step.
//!
//! Layout, one directory per CA so that staging certificates never serve
//! in production: `STORAGE/CA/account.json`, `STORAGE/CA/sites/SITE.pem`
//! (chain, then key), `STORAGE/CA/sites/SITE.lock` (held while the site's
//! order runs), `STORAGE/CA/account.lock` (held while the account is
//! restored or registered).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

use crate::config::{Acme, SiteTls};

/// Why storage could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StorageError {
    /// A file or directory could not be read or written.
    #[error("{what} {}: {source} (check the owner and permissions of [acme] storage)", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A stored certificate file is not a usable chain and key.
    #[error("{}: {why}; delete it to order a new certificate", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A site's certificate as stored.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// The chain and key, ready for rustls, with the file they came from.
    pub(crate) tls: SiteTls,
    /// The leaf's notBefore, Unix time.
    pub(crate) not_before: i64,
    /// The leaf's notAfter, Unix time.
    pub(crate) not_after: i64,
    /// The leaf's DNS names, lower case, sorted.
    pub(crate) names: Vec<String>,
}

/// One CA's directory under `[acme] storage`.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    dir: PathBuf,
}

impl Storage {
    /// The directory for `acme`'s CA (not created yet).
    pub(crate) fn new(acme: &Acme) -> Self {
        Storage {
            dir: acme.storage.join(ca_dir_name(&acme.directory)),
        }
    }

    /// Creates the directories, owner-only; tightens them if they exist.
    pub(crate) fn ensure(&self) -> Result<(), StorageError> {
        let sites = self.dir.join("sites");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&sites)
            .map_err(|source| io_error("cannot create", &sites, source))?;
        let parent = self.dir.parent().map(Path::to_path_buf);
        for d in [Some(self.dir.clone()), Some(sites), parent]
            .into_iter()
            .flatten()
        {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
                .map_err(|source| io_error("cannot restrict", &d, source))?;
        }
        Ok(())
    }

    /// Whether `path` lies in this CA's directory (a certificate from
    /// another CA, such as staging before a switch to production, is not
    /// this one's to renew).
    pub(crate) fn owns(&self, path: &Path) -> bool {
        path.starts_with(&self.dir)
    }

    /// The account credentials file.
    pub(crate) fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The site's certificate file.
    pub(crate) fn site_path(&self, site: &str) -> PathBuf {
        self.dir.join("sites").join(format!("{site}.pem"))
    }

    /// Reads a whole file; `None` if there is none.
    pub(crate) fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error("cannot read", path, source)),
        }
    }

    /// Writes `bytes` to `path` whole, owner-only (see the module docs).
    pub(crate) fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        let dir = path.parent().unwrap_or(&self.dir);
        // NamedTempFile is created 0600 in the same directory, so the
        // rename stays on one file system.
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(|source| io_error("cannot create a file in", dir, source))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|source| io_error("cannot write", tmp.path(), source))?;
        tmp.persist(path)
            .map_err(|e| io_error("cannot rename into", path, e.error))?;
        // The rename itself must reach the disk too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| io_error("cannot sync", dir, source))
    }

    /// The site's stored certificate, if there is one.
    pub(crate) fn load_site(&self, site: &str) -> Result<Option<Stored>, StorageError> {
        let path = self.site_path(site);
        let Some(bytes) = self.read(&path)? else {
            return Ok(None);
        };
        parse_stored(&path, &bytes).map(Some)
    }

    /// Stores the site's new chain and key (PEM).
    pub(crate) fn save_site(
        &self,
        site: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Stored, StorageError> {
        let path = self.site_path(site);
        let mut pem = chain_pem.trim_end().to_owned();
        pem.push('\n');
        pem.push_str(key_pem);
        let stored = parse_stored(&path, pem.as_bytes())?;
        self.write(&path, pem.as_bytes())?;
        Ok(stored)
    }

    /// Takes the site's lock without waiting; `None` if another process
    /// holds it.
    pub(crate) fn try_lock_site(&self, site: &str) -> Result<Option<Lock>, StorageError> {
        try_lock(&self.dir.join("sites").join(format!("{site}.lock")))
    }

    /// Takes the account's lock without waiting; `None` if another process
    /// holds it.
    pub(crate) fn try_lock_account(&self) -> Result<Option<Lock>, StorageError> {
        try_lock(&self.dir.join("account.lock"))
    }
}

/// Takes the lock file `path` without waiting; `None` if another process
/// holds it. The lock is released when the returned file is dropped (or
/// the process dies: flock locks go with their descriptor).
fn try_lock(path: &Path) -> Result<Option<Lock>, StorageError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode_owner_only()
        .open(path)
        .map_err(|source| io_error("cannot open", path, source))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Lock { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(io_error("cannot lock", path, e.into())),
    }
}

/// An exclusive lock on one name in storage; released on drop.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

/// `OpenOptions` with mode 0600.
trait OwnerOnly {
    fn mode_owner_only(&mut self) -> &mut Self;
}

impl OwnerOnly for fs::OpenOptions {
    fn mode_owner_only(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The directory name for a CA: its directory URL's host, port and path,
/// with anything but `[A-Za-z0-9.-]` made `_`.
fn ca_dir_name(directory: &str) -> String {
    let rest = directory
        .strip_prefix("https://")
        .unwrap_or(directory)
        .trim_end_matches('/');
    rest.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A stored PEM file: the chain, then the key, checked to belong together.
fn parse_stored(path: &Path, pem: &[u8]) -> Result<Stored, StorageError> {
    let corrupt = |why: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| corrupt(format!("cannot parse the certificates: {e}")))?;
    let key = rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| corrupt(format!("cannot parse the key: {e}")))?
        .ok_or_else(|| corrupt("no private key".to_owned()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| corrupt("no certificate".to_owned()))?;
    let (not_before, not_after, names) = leaf_facts(leaf).map_err(corrupt)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| corrupt(format!("unusable key: {e}")))?;
    let certified = CertifiedKey::new(certs, signing);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(corrupt("the key does not match the certificate".to_owned()));
    }
    Ok(Stored {
        tls: SiteTls {
            cert_path: path.to_path_buf(),
            key_path: path.to_path_buf(),
            certified_key: Arc::new(certified),
            not_after: Some(not_after),
        },
        not_before,
        not_after,
        names,
    })
}

/// The leaf's validity and DNS names.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(i64, i64, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let validity = cert.validity();
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    names.sort();
    names.dedup();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        names,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dir: &Path) -> Storage {
        Storage::new(&Acme {
            email: None,
            directory: "https://ca.example:14000/dir".to_owned(),
            challenge: crate::config::AcmeChallenge::Http01,
            storage: dir.join("acme"),
            ca_roots: None,
        })
    }

    #[test]
    fn site_certificates_round_trip_owner_only() {
        let tmp = tempfile::TempDir::new().unwrap();
        let s = storage(tmp.path());
        s.ensure().unwrap();
        assert!(s.dir.ends_with("ca.example_14000_dir"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join("acme")), 0o700);
        assert_eq!(mode(&s.dir.join("sites")), 0o700);
        assert!(s.load_site("shop").unwrap().is_none());
        assert!(s.owns(&s.site_path("shop")));
        assert!(!s.owns(&tmp.path().join("acme/staging.example/sites/shop.pem")));

        let ck = rcgen::generate_simple_self_signed(vec!["B.example".into(), "a.example".into()])
            .unwrap();
        let stored = s
            .save_site("shop", &ck.cert.pem(), &ck.signing_key.serialize_pem())
            .unwrap();
        assert_eq!(stored.names, ["a.example", "b.example"]);
        let path = s.site_path("shop");
        assert_eq!(mode(&path), 0o600);
        let again = s.load_site("shop").unwrap().unwrap();
        assert_eq!(again.not_after, stored.not_after);
        assert_eq!(again.tls.certified_key.cert, stored.tls.certified_key.cert);
        // No temporary file is left beside it.
        let left: Vec<_> = fs::read_dir(s.dir.join("sites")).unwrap().collect();
        assert_eq!(left.len(), 1);

        // A key that is not the certificate's is refused, and the file
        // that was there stays.
        let other = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let e = s
            .save_site("shop", &ck.cert.pem(), &other.signing_key.serialize_pem())
            .unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        assert!(s.load_site("shop").unwrap().is_some());
        fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            s.load_site("shop"),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_lock_is_held_by_one_holder_at_a_time() {
        let tmp = tempfile::TempDir::new().unwrap();
        let s = storage(tmp.path());
        s.ensure().unwrap();
        let first = s.try_lock_site("shop").unwrap().unwrap();
        // flock locks belong to the open file description: a second open,
        // as another process would make, is refused.
        assert!(s.try_lock_site("shop").unwrap().is_none());
        assert!(s.try_lock_site("other").unwrap().is_some());
        assert!(s.try_lock_account().unwrap().is_some());
        drop(first);
        assert!(s.try_lock_site("shop").unwrap().is_some());
    }
}
