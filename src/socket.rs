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
use tokio::io::unix::AsyncFd;
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

    /// Runs `op` once the socket is ready for `interest` (readable or
    /// writable), until it neither blocks nor is interrupted. A call that
    /// blocks clears the readiness, so this is `Pending` until the next
    /// event; so does a result `drained` says left the kernel's buffer
    /// empty (read) or full (written): a short transfer, as tokio's own
    /// streams judge it (the readiness keeps a peer's close, so that is
    /// never missed). For writes other than `send` (`sendfile`) nothing is
    /// judged drained.
    pub(crate) fn poll_io<R>(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
        mut op: impl FnMut(&S) -> Result<R, Errno>,
        drained: impl Fn(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        loop {
            let mut ready = if interest.is_readable() {
                ready!(self.0.poll_read_ready(cx))?
            } else {
                ready!(self.0.poll_write_ready(cx))?
            };
            match op(self.get_ref()) {
                Ok(r) => {
                    if drained(&r) {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(r));
                }
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(Errno::INTR) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// [`Self::poll_io`] for a read or write of `want` bytes.
    fn poll_transfer(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
        want: usize,
        op: impl FnMut(&S) -> Result<usize, Errno>,
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, interest, op, |&n| n > 0 && n < want)
    }
}

impl TcpSocket {
    /// Reads what has arrived into `buf` and leaves it to be read again;
    /// waits for at least one byte (0: the peer closed).
    pub(crate) async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut peek = |s: &std::net::TcpStream| {
            rustix::net::recv(s, &mut *buf, RecvFlags::PEEK).map(|(n, _)| n)
        };
        // The bytes stay, so the readiness does too.
        std::future::poll_fn(|cx| self.poll_io(cx, Interest::READABLE, &mut peek, |_| false)).await
    }
}

#[cfg(test)]
impl TcpSocket {
    /// A tokio stream, moved over (tests connect with tokio).
    pub(crate) fn from_tokio(tcp: tokio::net::TcpStream) -> io::Result<Self> {
        Socket::new(tcp.into_std()?)
    }
}

impl<S: Owned + Unpin> AsyncRead for Socket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: `recv` only writes into the slice, so nothing initialised
        // is de-initialised.
        let unfilled = unsafe { buf.unfilled_mut() };
        let want = unfilled.len();
        let n = ready!(self.poll_transfer(cx, Interest::READABLE, want, |s| {
            rustix::net::recv(s, &mut *unfilled, RecvFlags::empty())
                .map(|((read, _), _)| read.len())
        }))?;
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
        // NOSIGNAL: a closed peer is an error here, never a SIGPIPE.
        self.poll_transfer(cx, Interest::WRITABLE, buf.len(), |s| {
            rustix::net::send(s, buf, SendFlags::NOSIGNAL)
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let want = bufs.iter().map(|b| b.len()).sum();
        self.poll_transfer(cx, Interest::WRITABLE, want, |s| {
            rustix::io::writev(s, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = rustix::net::shutdown(self.get_ref(), rustix::net::Shutdown::Write);
        Poll::Ready(r.map_err(io::Error::from))
    }
}

/// A listening TCP socket, accepting with direct system calls.
#[derive(Debug)]
pub(crate) struct Acceptor(Socket<std::net::TcpListener>);

impl Acceptor {
    /// Takes over a listener tokio bound (with the options tokio sets).
    pub(crate) fn new(listener: tokio::net::TcpListener) -> io::Result<Self> {
        let socket = register(listener.into_std()?, Interest::READABLE)?;
        Ok(Acceptor(Socket(socket)))
    }

    /// The address it is bound to.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    /// The next connection and its peer, unregistered: it is registered by
    /// whichever worker serves it ([`Socket::new`]).
    pub(crate) async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        let accept = |l: &std::net::TcpListener| rustix::net::acceptfrom_with(l, FLAGS);
        let (fd, peer) =
            std::future::poll_fn(|cx| self.0.poll_io(cx, Interest::READABLE, accept, |_| false))
                .await?;
        let tcp = std::net::TcpStream::from(fd);
        let peer = match peer.and_then(|p| SocketAddr::try_from(p).ok()) {
            Some(peer) => peer,
            None => tcp.peer_addr()?,
        };
        Ok((tcp, peer))
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

    /// Bound on every wait in these tests.
    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    /// `f`'s output, failing the test if it takes longer than [`WAIT`].
    async fn bounded<T>(f: impl Future<Output = io::Result<T>>) -> T {
        tokio::time::timeout(WAIT, f).await.unwrap().unwrap()
    }

    /// Writes `bytes` on `from` and reads them whole on `to`.
    async fn sends(
        from: &mut (impl AsyncWrite + Unpin),
        to: &mut (impl AsyncRead + Unpin),
        bytes: &[u8],
    ) {
        bounded(from.write_all(bytes)).await;
        let mut got = vec![0; bytes.len()];
        bounded(to.read_exact(&mut got)).await;
        assert_eq!(got, bytes);
    }

    /// A connected pair: ours made here, the peer tokio's.
    async fn pair() -> (TcpSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let joined = async { Ok(tokio::join!(connect_tcp(&addr), listener.accept())) };
        let (ours, theirs) = bounded(joined).await;
        (ours.unwrap(), theirs.unwrap().0)
    }

    #[tokio::test]
    async fn reads_and_writes_both_ways() {
        let (mut ours, mut theirs) = pair().await;
        sends(&mut ours, &mut theirs, b"hello").await;

        bounded(theirs.write_all(b"world!")).await;
        // Into uninitialised spare capacity, as hyper and tokio-util read.
        let mut got = Vec::with_capacity(64);
        while got.len() < 6 {
            bounded(ours.read_buf(&mut got)).await;
        }
        assert_eq!(got, b"world!");
    }

    #[tokio::test]
    async fn vectored_writes_keep_order() {
        let (mut ours, mut theirs) = pair().await;
        let parts = [IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cde")];
        let wrote = bounded(ours.write_vectored(&parts)).await;
        assert_eq!(
            wrote, 5,
            "a 5-byte vectored write to an empty socket is whole"
        );
        let mut got = [0u8; 5];
        bounded(theirs.read_exact(&mut got)).await;
        assert_eq!(&got, b"abcde");
    }

    #[tokio::test]
    async fn end_of_stream_and_shutdown() {
        let (mut ours, mut theirs) = pair().await;
        bounded(ours.shutdown()).await;
        let mut rest = Vec::new();
        bounded(theirs.read_to_end(&mut rest)).await;
        assert!(rest.is_empty());

        drop(theirs);
        let mut got = [0u8; 8];
        assert_eq!(bounded(ours.read(&mut got)).await, 0);
    }

    #[tokio::test]
    async fn a_large_write_waits_for_the_reader() {
        // More than the socket buffers hold: writes must wait on readiness
        // and resume, not fail with WouldBlock.
        let (mut ours, mut theirs) = pair().await;
        let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| i as u8).collect();
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            bounded(ours.write_all(&data)).await;
            bounded(ours.shutdown()).await;
        });
        let mut got = Vec::with_capacity(expect.len());
        bounded(theirs.read_to_end(&mut got)).await;
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
        assert!(got == expect, "the bytes arrive whole and in order");
    }

    #[tokio::test]
    async fn a_short_read_still_wakes_for_what_comes_next() {
        // A short read clears the readiness without a second call; the
        // next bytes must still wake the reader.
        let (mut ours, mut theirs) = pair().await;
        let mut buf = [0u8; 64];
        bounded(theirs.write_all(b"first")).await;
        let n = bounded(ours.read(&mut buf)).await;
        assert_eq!(&buf[..n], b"first");
        bounded(theirs.write_all(b"second")).await;
        let n = bounded(ours.read(&mut buf)).await;
        assert_eq!(&buf[..n], b"second");
        // A close after a short read is seen too.
        bounded(theirs.write_all(b"last")).await;
        drop(theirs);
        let mut rest = Vec::new();
        bounded(ours.read_to_end(&mut rest)).await;
        assert_eq!(rest, b"last");
    }

    #[tokio::test]
    async fn peek_leaves_the_bytes_to_be_read() {
        let (mut ours, mut theirs) = pair().await;
        bounded(theirs.write_all(b"GET")).await;
        let mut first = [0u8; 1];
        let n = bounded(ours.peek(&mut first)).await;
        assert_eq!((n, first[0]), (1, b'G'));
        let mut got = [0u8; 3];
        bounded(ours.read_exact(&mut got)).await;
        assert_eq!(&got, b"GET");
    }

    #[tokio::test]
    async fn accepts_with_the_peer_address() {
        let acceptor = Acceptor::new(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let addr = acceptor.local_addr().unwrap();
        let joined = async { Ok(tokio::join!(TcpStream::connect(addr), acceptor.accept())) };
        let (client, accepted) = bounded(joined).await;
        let (tcp, peer) = accepted.unwrap();
        let mut client = client.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let mut ours = TcpSocket::new(tcp).unwrap();
        sends(&mut ours, &mut client, b"hi").await;
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = tokio::time::timeout(WAIT, connect_tcp(&addr))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn connects_to_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let joined = async { Ok(tokio::join!(connect_unix(&path), listener.accept())) };
        let (ours, theirs) = bounded(joined).await;
        let (mut ours, mut theirs) = (ours.unwrap(), theirs.unwrap().0);
        sends(&mut ours, &mut theirs, b"ping").await;
        // A path with nothing listening fails as tokio's connect does.
        let missing = dir.path().join("missing.sock");
        let e = tokio::time::timeout(WAIT, connect_unix(&missing))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
