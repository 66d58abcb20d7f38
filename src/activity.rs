//! Activity: what one downstream connection is doing, for its header and
//! idle timeouts, and the scan of each HTTP/1 request head for framing
//! that hyper accepts but a proxy must refuse.
//!
//! hyper's own header timer also runs while a keep-alive connection sits
//! idle, which would make `idle` no longer than `header`; so both timeouts
//! are kept here instead, updated by the connection's I/O wrapper and its
//! request service. A request (or a WebSocket session over HTTP/2) holds an
//! [`ActiveGuard`] while it runs.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// What a connection is doing, for its timeouts.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Requests whose response has not finished (and WebSocket sessions over HTTP/2).
    in_flight: AtomicUsize,
    /// Last byte read or written, ms since `epoch`.
    last_io_ms: AtomicU64,
    /// When the first byte of a new request head arrived, ms since `epoch`
    /// plus one (0: not reading a head).
    head_started_ms: AtomicU64,
    /// Whether the bytes being read are (probably) an HTTP/1 request head,
    /// checked for line endings hyper tolerates but we refuse.
    scanning: AtomicBool,
    /// Where the scan of the current head is.
    scan: Mutex<HeadScan>,
    /// A head was ambiguous (see [`Activity::scan_head`]); its request is
    /// answered 400.
    bad_head: AtomicBool,
    /// Polls of the connection's future so far: a corked stream's bytes
    /// are due once this moves on (see [`Cork`]).
    pub(crate) polls: AtomicU32,
}

/// What [`Activity::scan_head`] has seen of one request head.
#[derive(Debug, Default)]
struct HeadScan {
    /// The last four bytes.
    window: u32,
    /// The start of the current line, lower-cased (enough for a name).
    line: [u8; 24],
    line_len: usize,
    content_length: u32,
    transfer_encoding: u32,
}

/// The last four bytes seen once `bytes` follow a stream whose last four
/// were `window`, as a big-endian word.
fn last_four(window: u32, bytes: &[u8]) -> u32 {
    bytes[bytes.len().saturating_sub(4)..]
        .iter()
        .fold(window, |w, &b| (w << 8) | u32::from(b))
}

/// Whether `line` starts with `name` (lower-case), in any case.
fn starts_with_name(line: &[u8], name: &[u8]) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
}

impl HeadScan {
    /// More of a line that goes on in the next read: keeps its start.
    fn push_line(&mut self, part: &[u8]) {
        let n = part.len().min(self.line.len() - self.line_len);
        self.line[self.line_len..self.line_len + n].copy_from_slice(&part[..n]);
        self.line_len += n;
    }

    /// A line ended (`last`: its part in this read): count the framing headers.
    fn end_line(&mut self, last: &[u8]) {
        let line = if self.line_len == 0 {
            last
        } else {
            self.push_line(last);
            &self.line[..self.line_len]
        };
        // Most lines start with neither name: one byte tells.
        match line.first() {
            Some(b'c' | b'C') if starts_with_name(line, b"content-length:") => {
                self.content_length += 1;
            }
            Some(b't' | b'T') if starts_with_name(line, b"transfer-encoding:") => {
                self.transfer_encoding += 1;
            }
            _ => {}
        }
        self.line_len = 0;
    }

    /// Whether the head's framing is ambiguous in a way hyper would
    /// quietly resolve (it drops Content-Length next to
    /// Transfer-Encoding and merges equal repeated ones).
    fn ambiguous(&self) -> bool {
        self.content_length > 1 || (self.content_length > 0 && self.transfer_encoding > 0)
    }
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_io_ms: AtomicU64::new(0),
            // The first request head is due `header` after the connection
            // starts, as with nginx's client_header_timeout.
            head_started_ms: AtomicU64::new(1),
            scanning: AtomicBool::new(true),
            scan: Mutex::new(HeadScan::default()),
            bad_head: AtomicBool::new(false),
            polls: AtomicU32::new(0),
        })
    }

    /// Looks at the raw bytes of an HTTP/1 request head for what hyper
    /// accepts but a proxy must refuse, since the server behind it may frame
    /// the request differently (RFC 9112 §6.3, §11.2): a bare LF line ending
    /// (hyper takes it as CRLF), Content-Length repeated (hyper merges equal
    /// values) or next to Transfer-Encoding (hyper drops it). Only the bytes
    /// from the start of a head, read while the connection was idle, to its
    /// blank line are looked at; a head pipelined behind an earlier request
    /// is not, and keeps hyper's own checks only.
    pub(crate) fn scan_head(&self, bytes: &[u8]) {
        if !self.scanning.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut scan) = self.scan.lock() else {
            return;
        };
        // Line end to line end: only a line's first bytes (for its name)
        // and the bytes around each LF are looked at.
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[start..nl];
            start = nl + 1;
            let window = last_four(scan.window, &bytes[..=nl]);
            if (window >> 8) & 0xff != u32::from(b'\r') {
                self.bad_head.store(true, Ordering::Relaxed);
                self.scanning.store(false, Ordering::Relaxed);
                return;
            }
            scan.end_line(line);
            if window == 0x0d0a_0d0a {
                if scan.ambiguous() {
                    self.bad_head.store(true, Ordering::Relaxed);
                }
                self.scanning.store(false, Ordering::Relaxed);
                return;
            }
        }
        scan.push_line(&bytes[start..]);
        scan.window = last_four(scan.window, bytes);
    }

    /// Whether the head just read used a bare LF (and clears the mark).
    pub(crate) fn take_bad_head(&self) -> bool {
        self.bad_head.swap(false, Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Bytes moved: the connection is not idle.
    ///
    /// While a request is in flight the idle clock does not run (see
    /// [`Activity::expired`]) and the request's end stamps the time, so
    /// bytes moved meanwhile read no clock (tens of ns a read in a VM).
    pub(crate) fn touch(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            self.stamp();
        }
    }

    /// Records that bytes moved now.
    fn stamp(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes were read: activity, and perhaps the start of a request head.
    pub(crate) fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) != 0 {
            return;
        }
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if self.head_started_ms.load(Ordering::Relaxed) == 0 {
            self.head_started_ms.store(now + 1, Ordering::Relaxed);
        }
    }

    /// Marks a request (or session) as active until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Resolves when the connection has been idle longer than `idle`, or a
    /// request head has taken longer than `header`.
    pub(crate) async fn expired(&self, header: Duration, idle: Duration) {
        loop {
            let now = self.now_ms();
            let head = self.head_started_ms.load(Ordering::Relaxed);
            let deadline = if self.in_flight.load(Ordering::Relaxed) > 0 {
                now + idle.as_millis() as u64
            } else if head != 0 {
                head - 1 + header.as_millis() as u64
            } else {
                self.last_io_ms.load(Ordering::Relaxed) + idle.as_millis() as u64
            };
            if deadline <= now && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            // The state may change while this sleeps (a head starts, a
            // request ends), so never sleep past the shorter timeout: each
            // limit is then enforced within twice its length at worst.
            let wait = Duration::from_millis(deadline.saturating_sub(now).max(1))
                .min(header.min(idle).max(Duration::from_millis(1)));
            tokio::time::sleep(wait).await;
        }
    }
}

/// Keeps a connection out of its idle timeout while alive.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let a = &self.0;
        // Stamped before the count drops, so the timer never sees no
        // request in flight and an old stamp.
        a.stamp();
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Idle again: the next bytes start a new request head.
            if let Ok(mut scan) = a.scan.lock() {
                *scan = HeadScan::default();
            }
            a.scanning.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time scan `scan_head` must agree with: whether the
    /// head was refused, and whether scanning stopped (at the blank line).
    fn reference(input: &[u8]) -> (bool, bool) {
        let (mut window, mut line) = (0u32, Vec::new());
        let (mut lengths, mut encodings) = (0, 0);
        for &b in input {
            if b == b'\n' {
                if window & 0xff != u32::from(b'\r') {
                    return (true, true);
                }
                lengths += usize::from(line.starts_with(b"content-length:"));
                encodings += usize::from(line.starts_with(b"transfer-encoding:"));
                line.clear();
            } else if b != b'\r' {
                line.push(b.to_ascii_lowercase());
            }
            window = (window << 8) | u32::from(b);
            if window == 0x0d0a_0d0a {
                return (lengths > 1 || (lengths > 0 && encodings > 0), true);
            }
        }
        (false, false)
    }

    #[test]
    fn head_scan_agrees_with_a_byte_at_a_time_scan_however_the_head_is_split() {
        let heads: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\nX: 1\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"GET / HTTP/1.1\r\nA-very-long-header-name-that-goes-on: v\r\ncontent-length:0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Type: x\r\nTE: trailers\r\ncontent-length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"\n",
            b"\r\n\r\n",
            b"",
        ];
        for head in heads {
            let want = reference(head);
            // Every split into two reads, and one read per byte.
            let mut splits: Vec<Vec<&[u8]>> = (0..=head.len())
                .map(|i| vec![&head[..i], &head[i..]])
                .collect();
            splits.push(head.chunks(1).collect());
            for parts in splits {
                let a = Activity::new();
                for part in parts {
                    a.scan_head(part);
                }
                let got = (
                    a.bad_head.load(Ordering::Relaxed),
                    !a.scanning.load(Ordering::Relaxed),
                );
                assert_eq!(got, want, "{:?}", String::from_utf8_lossy(head));
            }
        }
    }

    /// Bytes moved while a request is in flight read no clock, so the idle
    /// time must still run from the request's end, not from its last read.
    /// On tokio's paused clock, which the activity's clock follows.
    #[tokio::test(start_paused = true)]
    async fn idle_time_runs_from_the_end_of_the_last_request() {
        let (header, idle) = (Duration::from_secs(5), Duration::from_secs(10));
        let a = Activity::new();
        a.on_read();
        let guard = a.begin();
        // A long request: bytes move at its start only.
        a.on_read();
        a.touch();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(guard);
        let ended = Instant::now();
        a.expired(header, idle).await;
        let waited = ended.elapsed();
        assert!(
            waited >= idle && waited < idle * 2,
            "closed {waited:?} after the request ended (idle {idle:?})"
        );
        // Reads during the request did not start a head, and the timer
        // was not the header one.
        assert_eq!(a.head_started_ms.load(Ordering::Relaxed), 0);
    }
}
