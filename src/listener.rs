//! Listener: accept loops for the https and http listeners, the
//! `max_connections` bound, and the TLS handshake before a connection is served.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection;
use crate::connection::ConnInfo;
use crate::forwarded;
use crate::memory;
use crate::metrics::ListenerMetrics;
use crate::prefixed::Prefixed;
use crate::proxy;
use crate::proxy_protocol;
use crate::sendfile::{Spans, Zerocopy};
use crate::socket::{Acceptor, TcpSocket};
use crate::state::Shared;
use crate::tls;
use crate::workers::Workers;

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
    pub socket: Acceptor,
    /// https or http.
    pub kind: Kind,
    /// Its address, as bound.
    pub addr: SocketAddr,
}

/// Binds a listener.
pub async fn bind(addr: SocketAddr, kind: Kind) -> std::io::Result<Listener> {
    let socket = Acceptor::new(TcpListener::bind(addr).await?)?;
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
    /// The workers connections are spread over; `None`: all on the
    /// runtime that accepts them.
    pub workers: Option<Arc<Workers>>,
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24) / ENFILE (23): out of file descriptors.
    matches!(e.raw_os_error(), Some(23 | 24))
}

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
        // the kernel's backlog instead of being served badly (as HAProxy's
        // maxconn). The wait is bounded by the header timeout, the time the
        // client would have had to send its request anyway; past it the
        // connection is closed and counted. The permit is taken after
        // accepting, not before, so a listener with no clients never holds
        // one that another listener's client is waiting for.
        let permit = match accepting.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let wait = accepting.shared.generation().config.timeouts.header;
                tokio::select! {
                    p = tokio::time::timeout(wait, accepting.limit.clone().acquire_owned()) => match p {
                        Ok(Ok(p)) => p,
                        Ok(Err(_)) => return,
                        Err(_) => {
                            metrics.rejected(REJECT_MAX_CONNECTIONS);
                            tracing::warn!(listener = %label, %peer, "limits.max_connections reached and no connection closed within timeouts.header; closed the waiting one");
                            continue;
                        }
                    },
                    () = accepting.stop.cancelled() => return,
                    () = stop_this.cancelled() => return,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = Accepted {
            peer,
            port: listener.addr.port(),
            kind: listener.kind,
            accepting: accepting.clone(),
            metrics: metrics.clone(),
            permit,
        };
        let Some(workers) = &accepting.workers else {
            accepting.connections.spawn(conn.serve(tcp));
            continue;
        };
        // The socket is registered on the worker that serves it, so its
        // wake-ups never cross cores.
        let index = workers.pick();
        workers.spawn(index, accepting.connections.track_future(conn.serve(tcp)));
    }
}

/// An accepted connection, before it is served (on whichever worker).
struct Accepted {
    peer: SocketAddr,
    port: u16,
    kind: Kind,
    accepting: Accepting,
    metrics: ListenerMetrics,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Accepted {
    /// Registers the connection with this worker and serves it to its end,
    /// counted while open.
    async fn serve(self, tcp: std::net::TcpStream) {
        let tcp = match TcpSocket::new(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "accepted socket could not be registered; closed");
                return;
            }
        };
        let Accepted {
            peer,
            port,
            kind,
            accepting,
            metrics,
            permit,
        } = self;
        metrics.connections.increment(1.0);
        memory::connection_opened();
        handle(tcp, peer, port, kind, &accepting, &metrics).await;
        memory::connection_closed();
        metrics.connections.decrement(1.0);
        drop(permit);
    }
}

/// The stream a downstream connection is served over: the socket, with
/// whatever was read past a PROXY header still to be read.
pub type Downstream = Prefixed<TcpSocket>;

/// Reads the PROXY header if the listeners expect one, and decides who the
/// client is. `None`: the connection was refused (and counted).
async fn identify(
    tcp: TcpSocket,
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
/// Index of `max_connections` in [`crate::metrics::REJECT_REASONS`].
const REJECT_MAX_CONNECTIONS: usize = 2;

async fn handle(
    tcp: TcpSocket,
    peer: SocketAddr,
    port: u16,
    kind: Kind,
    a: &Accepting,
    metrics: &ListenerMetrics,
) {
    let generation = a.shared.generation();
    let Some((stream, client)) =
        identify(tcp, peer, port, kind, &generation.config, &a.stop, metrics).await
    else {
        return;
    };
    let config = generation.config.clone();
    let shared = a.shared.clone();
    // The connection knows nothing of requests: each goes to the proxy.
    let handler = move |conn: Arc<ConnInfo>, req| proxy::handle(shared.pin(), conn, req);
    match kind {
        Kind::Http => {
            drop(generation);
            let spans = Spans::new();
            let info = ConnInfo::new(client, None, a.https_port).with_sendfile(spans.clone());
            let stream = Zerocopy::new(stream, spans);
            connection::serve(&config, stream, info, false, a.stop.child_token(), handler).await;
        }
        Kind::Https => {
            let timeout = generation.config.timeouts.header;
            let resolve = |sni: Option<&str>| generation.router.tls_site(sni);
            // A drain does not wait for handshakes still in progress.
            let result = tokio::select! {
                r = tls::accept(stream, resolve, timeout) => r,
                () = a.stop.cancelled() => return,
            };
            drop(generation);
            match result {
                Ok((tls, site)) => {
                    metrics.tls_handshake(tls.tls13, tls.resumed);
                    let info = ConnInfo::new(client, Some(site), a.https_port);
                    let stop = a.stop.child_token();
                    connection::serve(&config, tls.records, info, tls.h2, stop, handler).await;
                }
                Err(e) => {
                    metrics.tls_failure(e.reason_index());
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
            }
        }
    }
}
