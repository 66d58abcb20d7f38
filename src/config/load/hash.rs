//! The configuration hash (`Config::hash`): a fingerprint of every file
//! read, names and contents, certificates included, so operators can tell
//! which configuration is live. FNV-1a is written out here because it must
//! not change between Rust versions or runs.

/// 64-bit FNV-1a: stable across Rust versions and runs, unlike `DefaultHasher`.
pub(super) struct Fnv(u64);

impl Fnv {
    /// The hash of nothing (the FNV-1a offset basis).
    pub(super) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Adds one file: its name and content, each length-prefixed.
    pub(super) fn file(&mut self, name: &str, content: &[u8]) {
        self.write(&(name.len() as u64).to_le_bytes());
        self.write(name.as_bytes());
        self.write(&(content.len() as u64).to_le_bytes());
        self.write(content);
    }

    /// The hash of everything added so far.
    pub(super) fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::load_str;
    use super::super::test_support::*;

    #[test]
    fn hash_covers_every_file() {
        let (one, two) = (generate(), generate());
        let dir = cert_dir(&[("a.crt", &one.cert), ("a.key", &one.key)]);
        let site = tls_site("a.crt", "a.key");
        let hash =
            |main: &str, site: &str| load_str(dir.path(), main, &[("shop", site)]).unwrap().hash;

        let base = hash("", &site);
        assert_eq!(base, hash("", &site), "the hash is deterministic");
        assert_ne!(base, hash("# comment\n", &site), "switchyard.toml counts");
        assert_ne!(
            base,
            hash("", &format!("{site}# comment\n")),
            "site files count"
        );

        // Same content, different site name.
        let renamed = load_str(dir.path(), "", &[("shop2", &site)]).unwrap().hash;
        assert_ne!(base, renamed, "file names count");

        // Same files, new certificate and key.
        fs::write(dir.path().join("certs/a.crt"), &two.cert).unwrap();
        fs::write(dir.path().join("certs/a.key"), &two.key).unwrap();
        assert_ne!(base, hash("", &site), "certificate and key files count");
    }

    #[test]
    fn hash_covers_error_pages() {
        let dir = cert_dir(&[("502.html", "<p>down</p>")]);
        let site = format!("error_pages = {{ 502 = \"../certs/502.html\" }}\n{SITE}");
        let hash = || load_str(dir.path(), "", &[("shop", &site)]).unwrap().hash;
        let base = hash();
        assert_eq!(base, hash(), "the hash is deterministic");
        fs::write(dir.path().join("certs/502.html"), "<p>gone</p>").unwrap();
        assert_ne!(base, hash(), "a changed page counts");
    }
}
