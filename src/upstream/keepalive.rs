//! Keep-alive: one server's idle HTTP/1.1 connections, kept for reuse.
//!
//! A connection has no task of its own: whichever request is using it
//! reads and writes it (see `client`), so a response reaches the client
//! without a hop between tasks. Once a response has ended its connection
//! goes back on its server's stack ([`Connections`]); the most recently
//! used one is taken first (its socket is warm and the others can age
//! out). While connections sit idle a sweeper task per server looks at
//! them every few seconds, so one the server closed is let go without
//! waiting for the next request.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::connect::Stream;
use crate::workers;

/// How long an idle connection is kept for reuse.
const IDLE_KEEP: Duration = Duration::from_secs(60);
/// Most idle connections kept per server; past it a connection is closed
/// once its response is done instead of going back on the stack.
const MAX_KEPT: usize = 512;
/// How often a server's idle connections are looked at for ones the server
/// closed or that sat idle past `IDLE_KEEP`.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// The first read's size on a connection; reads that fill it double it.
const FIRST_READ: usize = 8 * 1024;
/// The largest read: a large body streams in reads of this size.
const MAX_READ: usize = 128 * 1024;

/// One HTTP/1.1 connection to a server and the bytes read from it that
/// have not been taken yet. Boxed: responses move it several times.
pub(super) struct Conn(Box<ConnInner>);

struct ConnInner {
    io: Stream,
    buf: BytesMut,
    /// How much the next read asks for.
    next_read: usize,
}

impl Conn {
    pub(super) fn new(io: Stream) -> Self {
        Conn(Box::new(ConnInner {
            io,
            buf: BytesMut::new(),
            next_read: FIRST_READ,
        }))
    }

    /// The socket, to write to.
    pub(super) fn io(&mut self) -> &mut Stream {
        &mut self.0.io
    }

    /// The bytes read and not taken yet.
    pub(super) fn buf(&mut self) -> &mut BytesMut {
        &mut self.0.buf
    }

    /// Reads more into the buffer: the number of bytes read, 0 at the end.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let inner = &mut *self.0;
        if inner.buf.capacity() - inner.buf.len() < inner.next_read / 2 {
            inner.buf.reserve(inner.next_read);
        }
        let spare = inner.buf.capacity() - inner.buf.len();
        let r = tokio_util::io::poll_read_buf(Pin::new(&mut inner.io), cx, &mut inner.buf);
        if let Poll::Ready(Ok(n)) = r
            && n == spare
            && inner.next_read < MAX_READ
        {
            inner.next_read *= 2;
        }
        r
    }

    /// Whether an idle connection is still open: nothing has arrived on it,
    /// neither its end nor bytes nobody asked for (a server's parting 408).
    pub(super) fn alive(&mut self, cx: &mut Context<'_>) -> bool {
        self.0.buf.is_empty() && self.poll_fill(cx).is_pending()
    }

    /// Readies a connection to wait idle: a buffer grown by a large body is
    /// let go rather than held.
    fn settle(&mut self) {
        if self.0.buf.capacity() > 2 * FIRST_READ {
            self.0.buf = BytesMut::new();
            self.0.next_read = FIRST_READ;
        }
    }
}

/// Idle keep-alive connections to one server, most recently used on top:
/// one stack per worker (see `crate::workers`), so a connection is only
/// ever used by the worker whose runtime it is registered with.
pub(super) struct Connections {
    stacks: Box<[Padded]>,
}

/// One worker's stack, alone on its cache lines: workers that take and
/// put connections at once must not contend for a line they share.
#[derive(Default)]
#[repr(align(128))]
struct Padded(Mutex<Stack>);

impl std::ops::Deref for Padded {
    type Target = Mutex<Stack>;

    fn deref(&self) -> &Mutex<Stack> {
        &self.0
    }
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            stacks: (0..workers::slots()).map(|_| Padded::default()).collect(),
        }
    }
}

#[derive(Default)]
struct Stack {
    conns: Vec<Pooled>,
    /// Whether a sweeper task is looking after this stack.
    sweeping: bool,
}

struct Pooled {
    conn: Conn,
    since: Instant,
}

impl Stack {
    /// Drops connections that ended while idle or sat idle too long.
    fn sweep(&mut self, now: Instant) {
        let mut cx = Context::from_waker(Waker::noop());
        self.conns
            .retain_mut(|c| now.duration_since(c.since) < IDLE_KEEP && c.conn.alive(&mut cx));
    }
}

impl Connections {
    /// Takes the most recently used idle connection, dropping those that sat
    /// idle too long. Whether the server closed it is found by polling it.
    pub(super) fn take(&self, now: Instant) -> Option<Conn> {
        let mut stack = self.mine().1.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(c) = stack.conns.pop() {
            if now.duration_since(c.since) < IDLE_KEEP {
                return Some(c.conn);
            }
        }
        None
    }

    /// Puts an idle connection back (or lets it close when `MAX_KEPT` are
    /// kept already), starting the server's sweeper if it is not running.
    pub(super) fn put(self: &Arc<Self>, mut conn: Conn, now: Instant) {
        let (index, stack) = self.mine();
        let mut stack = stack.lock().unwrap_or_else(PoisonError::into_inner);
        if stack.conns.len() >= MAX_KEPT {
            return;
        }
        conn.settle();
        stack.conns.push(Pooled { conn, since: now });
        if !stack.sweeping
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            stack.sweeping = true;
            rt.spawn(sweeper(Arc::downgrade(self), index));
        }
    }

    /// The calling worker's stack, and its index.
    fn mine(&self) -> (usize, &Mutex<Stack>) {
        let index = workers::current() % self.stacks.len().max(1);
        (index, &self.stacks[index])
    }

    /// Idle connections kept.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.stacks
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).conns.len())
            .sum()
    }
}

/// Looks after one server's idle connections until there are none (or the
/// server is gone from the configuration, and its connections with it).
async fn sweeper(connections: Weak<Connections>, index: usize) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(connections) = connections.upgrade() else {
            return;
        };
        let Some(stack) = connections.stacks.get(index) else {
            return;
        };
        let mut stack = stack.lock().unwrap_or_else(PoisonError::into_inner);
        stack.sweep(Instant::now());
        if stack.conns.is_empty() {
            stack.sweeping = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::{Body, Server, Upstream};
    use http::Request;

    /// Bound on every wait in these tests.
    const WAIT: Duration = Duration::from_secs(10);

    /// A keep-alive backend answering "ok"; counts the connections it accepts
    /// and closes each after `per_conn` requests (0: never).
    async fn backend(per_conn: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let served = Arc::new(AtomicUsize::new(0));
                let svc = hyper::service::service_fn(move |_req| {
                    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                    async move {
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                        if n == per_conn {
                            resp.headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (addr, accepted)
    }

    async fn get(up: &Upstream, server: &Arc<Server>) {
        let req = Request::get("/").body(Body::empty()).unwrap();
        let resp = tokio::time::timeout(
            WAIT,
            up.send(server, Box::new(req), &[], Instant::now(), WAIT),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 200);
        // Read the body to its end, as the proxy does.
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_is_reused_dropped_when_stale_and_replaced_when_closed() {
        let metrics = Metrics::new();
        let up = Upstream::new(WAIT);

        let (addr, accepted) = backend(0).await;
        let server = Server::new(&addr, None, &metrics, "s", "p").unwrap();
        for _ in 0..5 {
            get(&up, &server).await;
            // Back on the stack as soon as the body has been read.
            assert_eq!(server.connections.kept(), 1);
        }
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "one connection, reused"
        );
        assert!(server.connections.mine().1.lock().unwrap().sweeping);

        // Idle past IDLE_KEEP: not handed out, dropped.
        let now = Instant::now();
        let conn = server.connections.take(now).unwrap();
        server
            .connections
            .put(conn, now - IDLE_KEEP - Duration::from_secs(1));
        assert!(server.connections.take(now).is_none());
        assert_eq!(server.connections.kept(), 0);
        get(&up, &server).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "a new connection");

        // A backend that closes after each response: every request gets a
        // fresh connection and nothing closed is kept.
        let (addr, accepted) = backend(1).await;
        let server = Server::new(&addr, None, &metrics, "s", "q").unwrap();
        for i in 1..=3 {
            get(&up, &server).await;
            assert_eq!(accepted.load(Ordering::Relaxed), i);
            assert_eq!(server.connections.kept(), 0);
        }
    }

    /// A raw keep-alive backend: answers each request on a connection with
    /// "ok", and closes its open connection when `close` is notified,
    /// reporting each close on the returned channel.
    async fn closing_backend() -> (
        String,
        Arc<AtomicUsize>,
        Arc<tokio::sync::Notify>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(tokio::sync::Notify::new());
        let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
        let (count, closer) = (accepted.clone(), close.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let (closer, closed_tx) = (closer.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        tokio::select! {
                            () = closer.notified() => {
                                drop(tcp);
                                let _ = closed_tx.send(());
                                return;
                            }
                            n = tcp.read(&mut buf) => match n {
                                Ok(n) if n > 0 => {
                                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                    if tcp.write_all(ok).await.is_err() {
                                        return;
                                    }
                                }
                                _ => return,
                            },
                        }
                    }
                });
            }
        });
        (addr, accepted, close, closed_rx)
    }

    /// Has the backend close its (one) open connection, and waits until it has.
    async fn shut(
        close: &tokio::sync::Notify,
        closed: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        // notify_one keeps the wake-up for a handler not waiting yet.
        close.notify_one();
        tokio::time::timeout(WAIT, closed.recv())
            .await
            .expect("the backend closed its connection");
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_not_used_and_is_swept() {
        let metrics = Metrics::new();
        let up = Upstream::new(WAIT);
        let (addr, accepted, close, mut closed) = closing_backend().await;
        let server = Server::new(&addr, None, &metrics, "s", "p").unwrap();
        get(&up, &server).await;
        assert_eq!(server.connections.kept(), 1);

        // The server closes its idle connection; the next request finds
        // out before sending on it, and opens another.
        shut(&close, &mut closed).await;
        get(&up, &server).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        assert_eq!(server.connections.kept(), 1);

        // The sweeper's pass drops one the server closed, with no request.
        shut(&close, &mut closed).await;
        for _ in 0..1000 {
            server
                .connections
                .mine()
                .1
                .lock()
                .unwrap()
                .sweep(Instant::now());
            if server.connections.kept() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(server.connections.kept(), 0, "closed connection swept");
    }
}
