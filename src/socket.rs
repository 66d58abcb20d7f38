//! Socket: a TCP or unix stream read and written by direct system calls.
//!
//! tokio's streams read and write through libc (`recv`, `send`, `writev`).
//! Once a process has a second thread, glibc wraps each of those calls in
//! its thread-cancellation bookkeeping, about 90 instructions a call that a
//! single-threaded process skips. A relayed WebSocket message costs a read
//! and a write, so with two workers that was 5 % of its instructions.
//! rustix makes the same system calls directly, and tokio's `AsyncFd`
//! registers the socket and says when it is ready: the rest of tokio's
//! stream (its reactor, wake-ups, edge-triggered readiness) is unchanged.
//! Connections are accepted, connected and registered here once, so no
//! socket is registered twice.
//!
//! Two things here need `unsafe`: registering a descriptor with tokio
//! (`AsyncFd::register`: the descriptor must stay open and the same while
//! registered, which holds for the std types that own it, [`Owned`]), and
//! reading into tokio's `ReadBuf` without zeroing it first.
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A std socket type that owns its descriptor from creation to drop and
/// never changes it: what tokio's `AsyncFd::register` requires.
pub(crate) trait Owned: AsRawFd + AsFd {}
impl Owned for std::net::TcpStream {}
impl Owned for std::os::unix::net::UnixStream {}
impl Owned for std::net::TcpListener {}

/// Registers `io` with this thread's runtime for `interest`.
fn register<T: Owned>(io: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: an `Owned` type keeps its one descriptor open until it is
    // dropped, and the `AsyncFd` owns it (no `get_mut` is used here).
    Ok(unsafe { AsyncFd::register_with_interest(io, interest) }?)
}

/// A stream socket `S`, registered with tokio and read and written with
/// direct system calls.
#[derive(Debug)]
pub(crate) struct Socket<S: Owned>(AsyncFd<S>);

/// A TCP connection.
pub(crate) type TcpSocket = Socket<std::net::TcpStream>;
/// A unix stream socket connection.
pub(crate) type UnixSocket = Socket<std::os::unix::net::UnixStream>;

/// Flags of every socket made here: non-blocking, closed on exec.
const FLAGS: SocketFlags = SocketFlags::NONBLOCK.union(SocketFlags::CLOEXEC);

impl<S: Owned> Socket<S> {
    /// Registers `stream` (non-blocking already) with this thread's runtime.
    pub(crate) fn new(stream: S) -> io::Result<Self> {
        register(stream, Interest::READABLE | Interest::WRITABLE).map(Socket)
    }

    /// The stream underneath.
    pub(crate) fn get_ref(&self) -> &S {
        self.0.get_ref()
    }

    /// Runs `op` once the socket is writable, until it does not block; a
    /// call that blocks clears the readiness, so this ends in `Pending`
    /// until the next event. For writes other than `send` (`sendfile`).
    pub(crate) fn poll_write_with<R>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&S) -> Result<R, Errno>,
    ) -> Poll<io::Result<R>> {
        loop {
            let mut ready = ready!(self.0.poll_write_ready(cx))?;
            match op(self.0.get_ref()) {
                Ok(r) => return Poll::Ready(Ok(r)),
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(Errno::INTR) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

impl TcpSocket {
    /// Reads what has arrived into `buf` and leaves it to be read again;
    /// waits for at least one byte (0: the peer closed).
    pub(crate) async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            match rustix::net::recv(self.get_ref(), &mut *buf, RecvFlags::PEEK) {
                Ok((n, _)) => return Ok(n),
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
impl TcpSocket {
    /// A tokio stream, moved over (tests connect with tokio).
    pub(crate) fn from_tokio(tcp: tokio::net::TcpStream) -> io::Result<Self> {
        Socket::new(tcp.into_std()?)
    }
}

/// What one transfer did, for [`transferred`].
type Transfer = Result<usize, Errno>;

/// The outcome of a read or write of `want` bytes, and the readiness it
/// leaves: `None` to wait for the next event and try again.
///
/// A short transfer means the kernel's buffer was drained (or filled), so
/// the readiness is cleared at once and the next call waits for the next
/// event instead of making a system call that would block; tokio's own
/// streams do the same (the readiness keeps a peer's close, so that is
/// never missed).
fn transferred<S: Owned>(
    r: Transfer,
    want: usize,
    ready: &mut AsyncFdReadyGuard<'_, S>,
) -> Option<io::Result<usize>> {
    match r {
        Ok(n) => {
            if n > 0 && n < want {
                ready.clear_ready();
            }
            Some(Ok(n))
        }
        Err(Errno::AGAIN) => {
            ready.clear_ready();
            None
        }
        Err(Errno::INTR) => None,
        Err(e) => Some(Err(e.into())),
    }
}

impl<S: Owned + Unpin> AsyncRead for Socket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let fd = &self.get_mut().0;
        // SAFETY: `recv` only writes into the slice, so nothing initialised
        // is de-initialised.
        let unfilled = unsafe { buf.unfilled_mut() };
        let want = unfilled.len();
        let n = loop {
            let mut ready = ready!(fd.poll_read_ready(cx))?;
            let r = rustix::net::recv(fd.get_ref(), &mut *unfilled, RecvFlags::empty());
            if let Some(n) = transferred(r.map(|((read, _), _)| read.len()), want, &mut ready) {
                break n?;
            }
        };
        // SAFETY: the kernel wrote the first `n` bytes (rustix hands back
        // exactly the part it initialised).
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: Owned + Unpin> AsyncWrite for Socket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let fd = &self.get_mut().0;
        loop {
            let mut ready = ready!(fd.poll_write_ready(cx))?;
            // NOSIGNAL: a closed peer is an error here, never a SIGPIPE.
            let r = rustix::net::send(fd.get_ref(), buf, SendFlags::NOSIGNAL);
            if let Some(r) = transferred(r, buf.len(), &mut ready) {
                return Poll::Ready(r);
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let fd = &self.get_mut().0;
        let want = bufs.iter().map(|b| b.len()).sum();
        loop {
            let mut ready = ready!(fd.poll_write_ready(cx))?;
            let r = rustix::io::writev(fd.get_ref(), bufs);
            if let Some(r) = transferred(r, want, &mut ready) {
                return Poll::Ready(r);
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = rustix::net::shutdown(self.0.get_ref(), rustix::net::Shutdown::Write);
        Poll::Ready(r.map_err(io::Error::from))
    }
}

/// A listening TCP socket, accepting with direct system calls.
#[derive(Debug)]
pub(crate) struct Acceptor(AsyncFd<std::net::TcpListener>);

impl Acceptor {
    /// Takes over a listener tokio bound (with the options tokio sets).
    pub(crate) fn new(listener: tokio::net::TcpListener) -> io::Result<Self> {
        register(listener.into_std()?, Interest::READABLE).map(Acceptor)
    }

    /// The address it is bound to.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    /// The next connection and its peer, unregistered: it is registered by
    /// whichever worker serves it ([`Socket::new`]).
    pub(crate) async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            match rustix::net::acceptfrom_with(self.0.get_ref(), FLAGS) {
                Ok((fd, peer)) => {
                    let tcp = std::net::TcpStream::from(fd);
                    let peer = match peer.and_then(|p| SocketAddr::try_from(p).ok()) {
                        Some(peer) => peer,
                        None => tcp.peer_addr()?,
                    };
                    return Ok((tcp, peer));
                }
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Connects to `authority` (`host:port`), trying each address it resolves
/// to in turn, as tokio's `TcpStream::connect` does; `TCP_NODELAY` is set.
pub(crate) async fn connect_tcp(authority: &str) -> io::Result<TcpSocket> {
    let mut last = None;
    for addr in tokio::net::lookup_host(authority).await? {
        let family = if addr.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        match connect(family, &addr, true).await {
            Ok(socket) => return Ok(socket),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "resolved to no address")))
}

/// Connects to the unix socket at `path`.
pub(crate) async fn connect_unix(path: &Path) -> io::Result<UnixSocket> {
    let addr = rustix::net::SocketAddrUnix::new(path)?;
    connect(AddressFamily::UNIX, &addr, false).await
}

/// A new stream socket of `family`, connected to `addr`: a non-blocking
/// connect, then a wait until it is writable and a look at its error.
async fn connect<S: Owned + From<OwnedFd>>(
    family: AddressFamily,
    addr: &impl rustix::net::addr::SocketAddrArg,
    nodelay: bool,
) -> io::Result<Socket<S>> {
    let fd = rustix::net::socket_with(family, SocketType::STREAM, FLAGS, None)?;
    if nodelay {
        // Requests and responses are written whole: waiting to coalesce
        // small writes (Nagle) would only add latency.
        let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
    }
    let pending = match rustix::net::connect(&fd, addr) {
        Ok(()) => false,
        Err(Errno::INPROGRESS) => true,
        Err(e) => return Err(e.into()),
    };
    let socket = Socket::new(S::from(fd))?;
    if pending {
        drop(socket.0.writable().await?);
        rustix::net::sockopt::socket_error(socket.get_ref())??;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: ours made here, the peer tokio's.
    async fn pair() -> (TcpSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (ours, theirs) = tokio::join!(connect_tcp(&addr), listener.accept());
        (ours.unwrap(), theirs.unwrap().0)
    }

    #[tokio::test]
    async fn reads_and_writes_both_ways() {
        let (mut ours, mut theirs) = pair().await;
        ours.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        theirs.write_all(b"world!").await.unwrap();
        // Into uninitialised spare capacity, as hyper and tokio-util read.
        let mut got = Vec::with_capacity(64);
        while got.len() < 6 {
            ours.read_buf(&mut got).await.unwrap();
        }
        assert_eq!(got, b"world!");
    }

    #[tokio::test]
    async fn vectored_writes_keep_order() {
        let (mut ours, mut theirs) = pair().await;
        let parts = [IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cde")];
        let mut n = 0;
        while n < 5 {
            // Bounded: each write takes at least one byte or fails.
            let wrote = ours.write_vectored(&parts).await.unwrap();
            assert!(wrote > 0);
            n += wrote;
            assert_eq!(n, 5, "a 5-byte vectored write to an empty socket is whole");
        }
        let mut got = [0u8; 5];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcde");
    }

    #[tokio::test]
    async fn end_of_stream_and_shutdown() {
        let (mut ours, mut theirs) = pair().await;
        ours.shutdown().await.unwrap();
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        drop(theirs);
        let mut got = [0u8; 8];
        assert_eq!(ours.read(&mut got).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_large_write_waits_for_the_reader() {
        // More than the socket buffers hold: writes must wait on readiness
        // and resume, not fail with WouldBlock.
        let (mut ours, mut theirs) = pair().await;
        let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| i as u8).collect();
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            ours.write_all(&data).await.unwrap();
            ours.shutdown().await.unwrap();
        });
        let mut got = Vec::with_capacity(expect.len());
        theirs.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == expect, "the bytes arrive whole and in order");
    }

    /// Bound on every wait in these tests.
    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    #[tokio::test]
    async fn a_short_read_still_wakes_for_what_comes_next() {
        // A short read clears the readiness without a second call; the
        // next bytes must still wake the reader.
        let (mut ours, mut theirs) = pair().await;
        let mut buf = [0u8; 64];
        theirs.write_all(b"first").await.unwrap();
        let n = tokio::time::timeout(WAIT, ours.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"first");
        theirs.write_all(b"second").await.unwrap();
        let n = tokio::time::timeout(WAIT, ours.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"second");
        // A close after a short read is seen too.
        theirs.write_all(b"last").await.unwrap();
        drop(theirs);
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, ours.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"last");
    }

    #[tokio::test]
    async fn peek_leaves_the_bytes_to_be_read() {
        let (mut ours, mut theirs) = pair().await;
        theirs.write_all(b"GET").await.unwrap();
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(WAIT, ours.peek(&mut first))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, first[0]), (1, b'G'));
        let mut got = [0u8; 3];
        tokio::time::timeout(WAIT, ours.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"GET");
    }

    #[tokio::test]
    async fn accepts_with_the_peer_address() {
        let acceptor = Acceptor::new(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let addr = acceptor.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), acceptor.accept());
        let (tcp, peer) = accepted.unwrap();
        let mut client = client.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let mut ours = TcpSocket::new(tcp).unwrap();
        ours.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        tokio::time::timeout(WAIT, client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"hi");
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = connect_tcp(&addr).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn connects_to_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (ours, theirs) = tokio::join!(connect_unix(&path), listener.accept());
        let (mut ours, mut theirs) = (ours.unwrap(), theirs.unwrap().0);
        ours.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(WAIT, theirs.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"ping");
        // A path with nothing listening fails as tokio's connect does.
        let e = connect_unix(&dir.path().join("missing.sock"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
