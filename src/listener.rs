//! Listener: accept loops for the https and http listeners, the
//! `max_connections` bound, and the TLS handshake before a connection is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection;
use crate::forwarded;
use crate::metrics::ListenerMetrics;
use crate::prefixed::Prefixed;
use crate::proxy::ConnInfo;
use crate::proxy_protocol;
use crate::state::Shared;
use crate::tls;

/// Whether a listener terminates TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// TLS, ALPN h2 and http/1.1.
    Https,
    /// Plain HTTP/1.1.
    Http,
}

impl Kind {
    /// The scheme, as used in the `listener` metric label.
    pub fn scheme(self) -> &'static str {
        match self {
            Kind::Https => "https",
            Kind::Http => "http",
        }
    }
}

/// Everything an accept loop needs.
pub struct Listener {
    /// The bound socket.
    pub socket: TcpListener,
    /// https or http.
    pub kind: Kind,
    /// Its address, as bound.
    pub addr: SocketAddr,
}

/// Binds a listener.
pub async fn bind(addr: SocketAddr, kind: Kind) -> std::io::Result<Listener> {
    let socket = TcpListener::bind(addr).await?;
    let addr = socket.local_addr()?;
    Ok(Listener { socket, kind, addr })
}

/// Shared across every accept loop of a process.
#[derive(Clone)]
pub struct Accepting {
    /// Proxy state.
    pub shared: Arc<Shared>,
    /// One permit per allowed open connection.
    pub limit: Arc<Semaphore>,
    /// Cancelled to stop accepting and drain connections.
    pub stop: CancellationToken,
    /// Every connection task.
    pub connections: TaskTracker,
    /// The https port used in redirects.
    pub https_port: u16,
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24) / ENFILE (23): out of file descriptors.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Connections open in this process, over every listener.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// The most connections open since memory was last given back.
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// A burst at least this large, once it has halved, has its freed memory
/// given back to the system.
const TRIM_AFTER_BURST: usize = 1024;

/// Gives memory freed by a burst of connections back to the system, until
/// `stop` is cancelled. One runs per server.
///
/// glibc's allocator keeps freed memory in its heaps unless it lies at the
/// top, so after thousands of connections (each task a few KiB) come and go
/// the process would stay at its peak size. `malloc_trim` returns the free
/// pages; it walks the heap, so it runs off the async workers and only
/// after a large burst has receded.
pub async fn trim_after_bursts(stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmer = Trimmer::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let open = OPEN.load(Ordering::Relaxed);
        if trimmer.due(PEAK.load(Ordering::Relaxed), open) {
            PEAK.store(open, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    }
}

/// When to trim, apart from the clock so it can be tested.
#[derive(Debug, Default)]
struct Trimmer {
    /// Connections open at the last trim, while a burst is still receding.
    receding_from: Option<usize>,
}

impl Trimmer {
    /// Whether to trim now, given the most connections open since the last
    /// trim and the number open now.
    ///
    /// A burst that has halved is trimmed. A tick can land in the middle of
    /// the drain, and the last few hundred connections, spread over the
    /// heap, would then pin it near its peak: so every later tick trims
    /// too, until one finds no fewer connections open than the last, which
    /// trims once more (for memory freed just after that trim) and ends it.
    fn due(&mut self, peak: usize, open: usize) -> bool {
        let burst = peak >= TRIM_AFTER_BURST && open <= peak / 2;
        let last = self.receding_from;
        self.receding_from = (burst || last.is_some_and(|l| open < l)).then_some(open);
        burst || last.is_some()
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and works under glibc's own
    // arena locks; it is safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Accepts connections until `accepting.stop` or `stop_this` is cancelled.
pub async fn run(listener: Listener, accepting: Accepting, stop_this: CancellationToken) {
    let label = format!("{}://{}", listener.kind.scheme(), listener.addr);
    let metrics = ListenerMetrics::new(&accepting.shared.metrics, &label);
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.socket.accept() => r,
            () = accepting.stop.cancelled() => return,
            () = stop_this.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or a transient error: back off rather
                // than spin, and keep the listener.
                let pause = if is_fd_exhaustion(&e) { 100 } else { 10 };
                // Warn once a second at most: this can repeat ten times a
                // second for as long as descriptors run short.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(listener = %label, error = %e, "accept failed; retrying");
                    last_warning = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        };
        // At max_connections, the connection just accepted waits for a
        // permit and this listener accepts no more: later clients wait in
        // the kernel's backlog instead of being served badly. The permit is
        // taken after accepting, not before, so a listener with no clients
        // never holds one that another listener's client is waiting for.
        let permit = match accepting.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                p = accepting.limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = accepting.stop.cancelled() => return,
                () = stop_this.cancelled() => return,
            },
        };
        let _ = tcp.set_nodelay(true);
        let accepting2 = accepting.clone();
        let metrics = metrics.clone();
        let kind = listener.kind;
        let port = listener.addr.port();
        accepting.connections.spawn(async move {
            metrics.connections.increment(1.0);
            let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
            PEAK.fetch_max(open, Ordering::Relaxed);
            handle(tcp, peer, port, kind, &accepting2, &metrics).await;
            OPEN.fetch_sub(1, Ordering::Relaxed);
            metrics.connections.decrement(1.0);
            drop(permit);
        });
    }
}

/// The stream a downstream connection is served over: the socket, with
/// whatever was read past a PROXY header still to be read.
pub type Downstream = Prefixed<TcpStream>;

/// Reads the PROXY header if the listeners expect one, and decides who the
/// client is. `None`: the connection was refused (and counted).
async fn identify(
    tcp: TcpStream,
    peer: SocketAddr,
    port: u16,
    kind: Kind,
    config: &Config,
    stop: &CancellationToken,
    metrics: &ListenerMetrics,
) -> Option<(Downstream, forwarded::Client)> {
    let listen = &config.listen;
    let https = kind == Kind::Https;
    if !listen.proxy_protocol {
        let ip = peer.ip();
        let trusted = listen.trusted_proxies.contains(ip);
        return Some((
            Prefixed::new(tcp),
            forwarded::Client::new(peer, ip, trusted, https, port),
        ));
    }
    // Only a listed load balancer may say who the client is.
    if !listen.trusted_proxies.is_empty() && !listen.trusted_proxies.contains(peer.ip()) {
        metrics.rejected(REJECT_UNTRUSTED_PROXY);
        tracing::debug!(%peer, "PROXY protocol connection from a peer outside trusted_proxies; closed");
        return None;
    }
    let read = tokio::select! {
        r = proxy_protocol::read_header(tcp, config.timeouts.header) => r,
        () = stop.cancelled() => return None,
    };
    let (client, port, stream) = match read {
        Ok((
            proxy_protocol::Header::Proxied {
                source,
                destination,
            },
            stream,
        )) => (source.ip(), destination.port(), stream),
        Ok((proxy_protocol::Header::Local, stream)) => (peer.ip(), port, stream),
        Err(e) => {
            metrics.rejected(REJECT_PROXY_PROTOCOL);
            tracing::debug!(%peer, error = %e, "PROXY protocol header refused; connection closed");
            return None;
        }
    };
    let trusted = listen.trusted_proxies.contains(client);
    Some((
        stream,
        forwarded::Client::new(peer, client, trusted, https, port),
    ))
}

/// Index of `proxy_protocol` in [`crate::metrics::REJECT_REASONS`].
const REJECT_PROXY_PROTOCOL: usize = 0;
/// Index of `untrusted_proxy` in [`crate::metrics::REJECT_REASONS`].
const REJECT_UNTRUSTED_PROXY: usize = 1;

async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    port: u16,
    kind: Kind,
    a: &Accepting,
    metrics: &ListenerMetrics,
) {
    let generation = a.shared.generation.load_full();
    let Some((stream, client)) =
        identify(tcp, peer, port, kind, &generation.config, &a.stop, metrics).await
    else {
        return;
    };
    let info = ConnInfo {
        client,
        tls_site: None,
        https_port: a.https_port,
        activity: None,
    };
    match kind {
        Kind::Http => {
            drop(generation);
            connection::serve(a.shared.clone(), stream, info, false, a.stop.clone()).await;
        }
        Kind::Https => {
            let timeout = generation.config.timeouts.header;
            // A drain does not wait for handshakes still in progress.
            let result = tokio::select! {
                r = tls::accept(stream, &generation.router, timeout) => r,
                () = a.stop.cancelled() => return,
            };
            drop(generation);
            match result {
                Ok((stream, site)) => {
                    let info = ConnInfo {
                        tls_site: Some(site),
                        ..info
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    connection::serve(a.shared.clone(), stream, info, h2, a.stop.clone()).await;
                }
                Err(e) => {
                    metrics.tls_failure(e.reason_index());
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Trimmer;

    #[test]
    fn a_burst_is_trimmed_once_halved_and_again_until_it_has_drained() {
        let mut t = Trimmer::default();
        // Small numbers never trim.
        assert!(!t.due(500, 0));
        // A burst of 6,000: not while it stands, once it has halved.
        assert!(!t.due(6000, 5000));
        assert!(t.due(6000, 600));
        // The tick landed mid-drain: the rest of it is trimmed too, even
        // though 600 is under the burst size, then once more when it is over.
        assert!(t.due(600, 0));
        assert!(t.due(0, 0));
        // Drained: no more trims until the next burst.
        assert!(!t.due(0, 0));
        assert!(!t.due(40, 20));
        assert!(t.due(2000, 100));
        // Connections arriving again end the chain after one more trim.
        assert!(t.due(150, 150));
        assert!(!t.due(150, 100));
    }
}
