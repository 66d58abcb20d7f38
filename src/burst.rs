//! Receive buffers sized to a burst: small for a small message, bulk-sized
//! once reads fill up, none at all while a connection is idle.

/// The smallest buffer a burst gets, and the room it has past what its
/// first read brought.
const BURST_MIN: usize = 256;
const BURST_MARGIN: usize = 64;

/// The buffer for a burst whose first read, into a `probe`-byte stack
/// buffer, brought `got`: `got` at its front, sized just past it (a cheap
/// allocation with little to zero), or `bulk` bytes when the probe filled.
pub(crate) fn buffer(got: &[u8], probe: usize, bulk: usize) -> Vec<u8> {
    let size = if got.len() >= probe {
        bulk
    } else {
        (got.len() + BURST_MARGIN)
            .next_power_of_two()
            .clamp(BURST_MIN, probe)
    };
    let mut buf = Vec::with_capacity(size);
    buf.extend_from_slice(got);
    buf.resize(size, 0);
    buf
}
