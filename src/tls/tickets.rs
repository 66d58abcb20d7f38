//! Session tickets sealed with keys that several instances share (`[tls]
//! ticket_keys`), so that a client resumes on whichever instance the load
//! balancer picks. The first key seals new tickets; every key opens them,
//! the key name at the start of a ticket saying which.
//!
//! A key file is 80 bytes in nginx's `ssl_session_ticket_key` layout:
//! bytes 0..16 are the key name, 16..48 the AES-256-GCM key, and 48..80
//! (nginx's HMAC key) are not used, since GCM authenticates by itself. A
//! ticket is the key name, a random 96-bit nonce, the sealed session state
//! and the 16-byte tag, with the key name as associated data: the layout of
//! rustls' own ticketer, on ring's AEAD.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// Bytes of a key file.
pub const KEY_FILE_LEN: usize = 80;
/// Bytes of the key name that starts both the file and every ticket.
const NAME_LEN: usize = 16;
/// Where the AEAD key lies in a key file.
const AEAD_KEY: std::ops::Range<usize> = NAME_LEN..NAME_LEN + 32;
/// The lifetime hint sent with each ticket: 12 hours, as rustls' own
/// ticketer gives. Keys live as long as the operator keeps them listed.
const LIFETIME_SECS: u32 = 12 * 60 * 60;
/// Longer tickets are refused unopened: rustls' tickets (no client
/// certificates here) are a few hundred bytes, and not trying long
/// forgeries leaves a partitioning oracle nothing to work with.
const MAX_TICKET_LEN: usize = 2048;

/// A ticket key that ring refused (it cannot, for a 32-byte AES-256 key).
#[derive(Debug, thiserror::Error)]
#[error("ticket key {index}: not usable as an AES-256-GCM key")]
pub struct TicketKeyError {
    /// Its position in `ticket_keys`.
    pub index: usize,
    /// ring's error, which says nothing of the key.
    #[source]
    pub source: ring::error::Unspecified,
}

struct NamedKey {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// Seals tickets with the first key and opens them with any of them.
pub struct SharedTicketer {
    keys: Vec<NamedKey>,
    rng: SystemRandom,
}

// By hand: neither the keys nor their names are printed.
impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl SharedTicketer {
    /// A ticketer over these key files' contents, the first issuing.
    pub fn new<'a>(
        files: impl IntoIterator<Item = &'a [u8; KEY_FILE_LEN]>,
    ) -> Result<Self, TicketKeyError> {
        let mut keys = Vec::new();
        for (index, file) in files.into_iter().enumerate() {
            let mut name = [0u8; NAME_LEN];
            name.copy_from_slice(&file[..NAME_LEN]);
            let key = UnboundKey::new(&AES_256_GCM, &file[AEAD_KEY])
                .map_err(|source| TicketKeyError { index, source })?;
            keys.push(NamedKey {
                name,
                key: LessSafeKey::new(key),
            });
        }
        Ok(SharedTicketer {
            keys,
            rng: SystemRandom::new(),
        })
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let issuing = self.keys.first()?;
        // Random nonces: a counter would have to be shared between
        // instances, and 2^32 tickets per key keep collisions negligible.
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let tag_len = AES_256_GCM.tag_len();
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + tag_len);
        ticket.extend_from_slice(&issuing.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = issuing
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(issuing.name),
                &mut ticket[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at_checked(NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        // Key names travel in the clear in every ticket: comparing them
        // needs no constant time.
        let key = self.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .key
            .open_in_place(nonce, Aad::from(key.name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(fill: u8) -> [u8; KEY_FILE_LEN] {
        let mut f = [fill; KEY_FILE_LEN];
        // Distinct names for distinct fills.
        f[0] = fill;
        f
    }

    #[test]
    fn first_key_seals_every_key_opens() {
        let (a, b) = (file(1), file(2));
        let old = SharedTicketer::new([&a]).unwrap();
        let rotated = SharedTicketer::new([&b, &a]).unwrap();
        let only_new = SharedTicketer::new([&b]).unwrap();
        assert!(old.enabled());

        let ticket = old.encrypt(b"session state").unwrap();
        assert_eq!(&ticket[..NAME_LEN], &a[..NAME_LEN]);
        assert_eq!(ticket.len(), NAME_LEN + NONCE_LEN + 13 + 16);
        assert_eq!(rotated.decrypt(&ticket).unwrap(), b"session state");
        assert_eq!(
            only_new.decrypt(&ticket),
            None,
            "a removed key opens nothing"
        );

        let fresh = rotated.encrypt(b"new").unwrap();
        assert_eq!(&fresh[..NAME_LEN], &b[..NAME_LEN], "the first key issues");
        assert_eq!(old.decrypt(&fresh), None);
        assert_eq!(only_new.decrypt(&fresh).unwrap(), b"new");
        // Random nonces: the same state never seals the same way twice.
        assert_ne!(rotated.encrypt(b"new").unwrap(), fresh);
    }

    #[test]
    fn forged_and_malformed_tickets_are_refused() {
        let a = file(7);
        let t = SharedTicketer::new([&a]).unwrap();
        let ticket = t.encrypt(b"state").unwrap();
        for i in [0, NAME_LEN, NAME_LEN + NONCE_LEN, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt(&bad), None, "byte {i} flipped");
        }
        for len in 0..NAME_LEN + NONCE_LEN + 16 {
            assert_eq!(t.decrypt(&ticket[..len.min(ticket.len())]), None);
        }
        assert_eq!(t.decrypt(&vec![7u8; MAX_TICKET_LEN + 1]), None);
        // Same AEAD key, different name: the name is authenticated.
        let mut renamed = a;
        renamed[1] ^= 1;
        let other = SharedTicketer::new([&renamed]).unwrap();
        let mut swapped = ticket.clone();
        swapped[..NAME_LEN].copy_from_slice(&renamed[..NAME_LEN]);
        assert_eq!(other.decrypt(&swapped), None);
        let printed = format!("{t:?}");
        assert_eq!(printed, "SharedTicketer { keys: 1, .. }");
    }
}
