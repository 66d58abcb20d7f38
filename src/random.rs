//! Random: the proxy's one source of random bytes (WebSocket keys for
//! HTTP/2 handshakes, spreading reload closes over a window).
//!
//! It is the TLS provider's CSPRNG (ring, through rustls), already linked
//! for the handshakes, so no second generator is added.

use std::hash::{BuildHasher, Hasher};

/// Fills `buf` with random bytes.
pub(crate) fn fill(buf: &mut [u8]) {
    let provider = rustls::crypto::ring::default_provider();
    if provider.secure_random.fill(buf).is_ok() {
        return;
    }
    // The OS generator failed (it does not on Linux once booted): fall back
    // to std's per-process random hash keys, which never fail.
    for chunk in buf.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(chunk.as_ptr() as usize);
        let bytes = h.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// A random `u64`.
pub(crate) fn u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_differ() {
        let a: Vec<u64> = (0..8).map(|_| super::u64()).collect();
        let mut b = a.clone();
        b.dedup();
        assert_eq!(a.len(), b.len());
        let mut buf = [0u8; 33];
        super::fill(&mut buf);
        assert!(buf.iter().any(|&x| x != 0));
    }
}
