//! `[tls] ticket_keys` in `switchyard.toml`: the session-ticket key files
//! (relative to the config directory), each exactly 80 bytes. Errors name
//! the field and the file, never the bytes; the hash is fed a digest of
//! each key rather than the key, since the hash is exported as a metric.

use std::path::Path;

use super::super::TicketKey;
use super::diagnostics::Cx;
use super::hash::Fnv;
use super::values::{Val, get_strings, read_named};

/// The fields of `[tls]`.
pub(super) const TLS_FIELDS: &[&str] = &["ticket_keys"];

/// Reads every key file `ticket_keys` lists; each problem is reported at
/// the entry naming the file.
pub(super) fn parse_ticket_keys(
    cx: &mut Cx<'_>,
    v: &Val<'_>,
    path: &str,
    dir: &Path,
    hash: &mut Fnv,
) -> Vec<TicketKey> {
    let Some(entries) = get_strings(cx, v, path) else {
        return Vec::new();
    };
    if entries.is_empty() {
        cx.error(
            v.span(),
            format!(
                "{path}: must list at least one key file (or leave ticket_keys out for per-process keys)"
            ),
        );
        return Vec::new();
    }
    let mut keys = Vec::with_capacity(entries.len());
    for (name, item_path, span) in entries {
        let Some((resolved, bytes)) = read_named(cx, span.clone(), name, &item_path, dir) else {
            continue;
        };
        let Ok(material) = <[u8; TicketKey::LEN]>::try_from(bytes.as_slice()) else {
            cx.error(
                span,
                format!(
                    "{item_path}: {} is {} bytes; a ticket key file must be exactly {} random bytes (openssl rand {} > {name})",
                    resolved.display(),
                    bytes.len(),
                    TicketKey::LEN,
                    TicketKey::LEN,
                ),
            );
            continue;
        };
        // A rotated key must change the hash, but the hash is public.
        let digest = ring::digest::digest(&ring::digest::SHA256, &material);
        hash.file(name, digest.as_ref());
        keys.push(TicketKey::new(resolved, material));
    }
    keys
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::load_str;
    use super::super::test_support::*;

    #[test]
    fn ticket_keys_load_in_order() {
        let dir = cert_dir(&[]);
        fs::write(dir.path().join("new.key"), [1u8; 80]).unwrap();
        fs::write(dir.path().join("certs/old.key"), [2u8; 80]).unwrap();
        let main = "[tls]\nticket_keys = [\"new.key\", \"certs/old.key\"]\n";
        let config = load_str(dir.path(), main, &[("shop", SITE)]).unwrap();
        let keys = &config.tls.ticket_keys;
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].path, dir.path().join("new.key"));
        assert_eq!(keys[0].material(), &[1u8; 80]);
        assert_eq!(keys[1].material(), &[2u8; 80]);
        // Debug output names the file, not the bytes.
        let debug = format!("{config:?}");
        assert!(debug.contains("new.key"), "{debug}");
        assert!(!debug.contains("[1, 1"), "{debug}");

        let before = config.hash;
        fs::write(dir.path().join("new.key"), [3u8; 80]).unwrap();
        let after = load_str(dir.path(), main, &[("shop", SITE)]).unwrap().hash;
        assert_ne!(before, after, "a rotated key changes the hash");

        let config = load_str(dir.path(), "", &[("shop", SITE)]).unwrap();
        assert!(config.tls.ticket_keys.is_empty());
    }

    #[test]
    fn bad_ticket_keys() {
        let dir = cert_dir(&[]);
        fs::write(dir.path().join("short.key"), [0x41u8; 48]).unwrap();
        fs::write(dir.path().join("long.key"), [0x41u8; 81]).unwrap();
        let main = "[tls]\nticket_keys = [\"short.key\", \"missing.key\", \"long.key\", \"\", 7]\n";
        let e = match load_str(dir.path(), main, &[("shop", SITE)]) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        let file = dir.path().join("switchyard.toml");
        let f = file.display();
        let d = dir.path().display();
        assert_errors(
            &e,
            &[
                &format!(
                    "{f}:2:16: tls.ticket_keys[0]: {d}/short.key is 48 bytes; a ticket key file must be exactly 80 random bytes"
                ),
                &format!("{f}:2:29: tls.ticket_keys[1]: cannot read {d}/missing.key: "),
                &format!("{f}:2:44: tls.ticket_keys[2]: {d}/long.key is 81 bytes"),
                &format!("{f}:2:56: tls.ticket_keys[3]: must not be empty"),
                &format!("{f}:2:60: expected a string for tls.ticket_keys[4], found integer 7"),
            ],
        );
        // The bytes never show in a message.
        assert!(e.iter().all(|m| !m.contains("AAAA")), "{e:?}");

        let e = errors("[tls]\nticket_keys = []\n", &[("shop", SITE)]);
        assert_errors(
            &e,
            &["cfg/switchyard.toml:2:15: tls.ticket_keys: must list at least one key file"],
        );
        let e = errors("[tls]\nticket_key = [\"a\"]\n", &[("shop", SITE)]);
        assert_errors(
            &e,
            &["cfg/switchyard.toml:2:1: unknown field \"ticket_key\" in [tls]"],
        );
    }
}
