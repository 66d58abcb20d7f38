//! X-Accel-Redirect over real sockets (issue 16): a pool response carrying
//! `X-Accel-Redirect: /path` is replaced by the file at that path, served
//! from the site's files routes with the upstream's Content-Type,
//! Content-Disposition, Cache-Control, Set-Cookie and Expires; the client's
//! Range and conditional headers apply; the header never reaches the
//! client; a missing target is 404 and an unrouted one 502; and the pool's
//! slot is free as soon as the upstream head arrives, while the file is
//! still streaming.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const HOST: &str = "a.test";
const UPSTREAM_BODY: &str = "SHOULD NOT BE SEEN";
const PDF: &str = "application/pdf";
const DISPOSITION: &str = "attachment; filename=\"report.pdf\"";
const COOKIE: &str = "download=1; Path=/; HttpOnly";
const COOKIE2: &str = "seen=yes; Path=/";
/// Beside the files routes' directories: never served.
const OUTSIDE: &str = "OUTSIDE-THE-ROOT-93e1";
const CACHE: &str = "private, max-age=5";
const EXPIRES: &str = "Thu, 01 Jan 2037 00:00:00 GMT";
const SMALL: &[u8] = b"a public file\n";
const DOC: &[u8] = b"plain document, identity\n";
const DOC_GZ: &[u8] = b"DOC-GZIP-SIBLING";
const HUGE_LEN: usize = 16 << 20;

/// The X-Accel-Redirect the app sends for a path, if any.
fn redirect_for(path: &str) -> Option<&'static str> {
    Some(match path {
        "/view" => "/protected/big.bin",
        "/view-query" => "/protected/big.bin?token=abc",
        "/view-huge" => "/protected/huge.bin",
        "/view-missing" => "/protected/missing.bin",
        "/view-nowhere" => "/nowhere/file.bin",
        "/view-public" => "/pub/small.txt",
        "/view-doc" => "/protected/doc.txt",
        "/view-dotdot" => "/protected/../outside.txt",
        "/view-encoded" => "/protected/%2e%2e/outside.txt",
        "/view-dotfile" => "/protected/.hidden",
        _ => return None,
    })
}

type AppBody = BoxBody<Bytes, Infallible>;

/// The application behind the pool: `/view*` answer with an
/// X-Accel-Redirect (see `redirect_for`) and a body that must be dropped;
/// `/view-huge` keeps that body open until the test ends. Anything else
/// is answered `APP <path>`.
struct App {
    addr: SocketAddr,
    /// The path of each request received, in order.
    seen: mpsc::UnboundedReceiver<String>,
    /// Ends held bodies and the accept loop.
    stop: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => return },
                    () = stop2.cancelled() => return,
                };
                let (tx, stop) = (tx.clone(), stop2.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (tx, stop) = (tx.clone(), stop.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let _ = req.into_body().collect().await;
                        let _ = tx.send(path.clone());
                        Ok::<_, Infallible>(answer(&path, stop))
                    }
                });
                let stop = stop2.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        App { addr, seen, stop }
    }

    /// The next path the app receives, within `WAIT`.
    async fn next(&mut self) -> String {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the app received nothing")
            .unwrap()
    }

    /// Every path received so far.
    fn drain(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(p) = self.seen.try_recv() {
            v.push(p);
        }
        v
    }
}

fn answer(path: &str, stop: CancellationToken) -> Response<AppBody> {
    let Some(to) = redirect_for(path) else {
        return Response::new(Full::new(Bytes::from(format!("APP {path}"))).boxed());
    };
    let body: AppBody = if path == "/view-huge" {
        // The first bytes now, the end never (until the test is over).
        let first = futures_util::stream::once(async {
            Ok::<_, Infallible>(Frame::data(Bytes::from(UPSTREAM_BODY)))
        });
        let rest = futures_util::stream::once(async move {
            stop.cancelled().await;
            Ok::<_, Infallible>(Frame::data(Bytes::new()))
        });
        BodyExt::boxed(StreamBody::new(futures_util::StreamExt::chain(first, rest)))
    } else {
        Full::new(Bytes::from(UPSTREAM_BODY)).boxed()
    };
    Response::builder()
        .header("x-accel-redirect", to)
        .header("content-type", PDF)
        .header("content-disposition", DISPOSITION)
        .header("set-cookie", COOKIE)
        .header("set-cookie", COOKIE2)
        // The file's own validators and length replace the upstream's.
        .header("etag", "\"upstream-etag\"")
        .header("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")
        .header("cache-control", CACHE)
        .header("expires", EXPIRES)
        .header("x-other", "dropped-or-not")
        .body(body)
        .unwrap()
}

struct Fx {
    dir: tempfile::TempDir,
    app: App,
    site: TlsSite,
    big: Vec<u8>,
    huge: Vec<u8>,
}

/// Site `a.test`: pool `app` (one slot) at `/`, internal files at
/// `/protected/`, public files at `/pub/`.
async fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let big = noise(300_000, 7);
    let huge = noise(HUGE_LEN, 11);
    let d = dir.path();
    write_file(d, "protected/big.bin", &big);
    write_file(d, "protected/huge.bin", &huge);
    write_file(d, "protected/doc.txt", DOC);
    write_file(d, "protected/doc.txt.gz", DOC_GZ);
    write_file(d, "pub/small.txt", SMALL);
    write_file(d, "outside.txt", OUTSIDE.as_bytes());
    write_file(d, "protected/.hidden", OUTSIDE.as_bytes());
    let app = App::start().await;
    let protected = d.join("protected");
    let public = d.join("pub");
    let rest = format!(
        "[pools.app]\nservers = [\"{}\"]\nmax_in_flight = 1\nqueue_timeout = \"60s\"\n\
         [[routes]]\nname = \"protected\"\npath = \"/protected/\"\nfiles = {:?}\ninternal = true\n\
         [[routes]]\nname = \"pub\"\npath = \"/pub/\"\nfiles = {:?}\n\
         [[routes]]\nname = \"app\"\npath = \"/\"\npool = \"app\"\n",
        app.addr,
        path_str(&protected),
        path_str(&public),
    );
    let site = TlsSite::start(HOST, &rest).await;
    Fx {
        dir,
        app,
        site,
        big,
        huge,
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn h<'a>(r: &'a Got, name: &str) -> &'a str {
    header_str(r.headers(), name)
}

impl Fx {
    async fn get(&self, via: Via, path: &str, headers: &[(&str, &str)]) -> Got {
        self.site
            .send(via, "GET", path, headers, Bytes::new())
            .await
    }
}

/// The upstream's kept headers are there, its body and the redirect header are not.
#[track_caller]
fn assert_kept_headers(r: &Got, what: &str) {
    assert_eq!(h(r, "content-type"), PDF, "{what}");
    assert_eq!(h(r, "content-disposition"), DISPOSITION, "{what}");
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, [COOKIE, COOKIE2], "{what}: every Set-Cookie");
    assert_ne!(h(r, "etag"), "\"upstream-etag\"", "{what}: the file's ETag");
    assert!(
        !h(r, "last-modified").contains("2001"),
        "{what}: the file's Last-Modified"
    );
    assert_eq!(h(r, "cache-control"), CACHE, "{what}");
    assert_eq!(h(r, "expires"), EXPIRES, "{what}");
    assert!(
        r.headers().get("x-accel-redirect").is_none(),
        "{what}: X-Accel-Redirect reached the client"
    );
    assert!(
        !r.body()
            .windows(UPSTREAM_BODY.len())
            .any(|w| w == UPSTREAM_BODY.as_bytes()),
        "{what}: the upstream body reached the client"
    );
}

#[tokio::test]
async fn the_file_replaces_the_upstream_body_and_keeps_its_headers() {
    let mut fx = fixture().await;
    for via in Via::ALL {
        for path in ["/view", "/view-query"] {
            let what = format!("{via:?} GET {path}");
            let r = fx.get(via, path, &[]).await;
            assert_eq!(r.status(), StatusCode::OK, "{what}");
            assert_kept_headers(&r, &what);
            assert_eq!(h(&r, "content-length"), fx.big.len().to_string(), "{what}");
            assert_eq!(r.body().len(), fx.big.len(), "{what}");
            assert!(
                r.body().as_ref() == fx.big.as_slice(),
                "{what}: bytes differ"
            );
            assert_eq!(fx.app.next().await, path, "{what}: the app was asked");
        }
        // A target on a files route that is not internal works the same.
        let r = fx.get(via, "/view-public", &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?} /view-public");
        assert_eq!(r.body().as_ref(), SMALL, "{via:?}");
        assert_kept_headers(&r, &format!("{via:?} /view-public"));
        assert_eq!(fx.app.next().await, "/view-public");

        // HEAD: the file's head, no body.
        let r = fx.site.send(via, "HEAD", "/view", &[], Bytes::new()).await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?} HEAD");
        assert!(r.body().is_empty(), "{via:?} HEAD has no body");
        assert_eq!(h(&r, "content-length"), fx.big.len().to_string());
        assert!(r.headers().get("x-accel-redirect").is_none());
        assert_eq!(fx.app.next().await, "/view");
    }
}

#[tokio::test]
async fn range_conditionals_and_encoding_of_the_original_request_apply() {
    let mut fx = fixture().await;
    let len = fx.big.len();
    for via in [Via::Plain, Via::H2] {
        let r = fx.get(via, "/view", &[("range", "bytes=0-9")]).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{via:?} range");
        assert_eq!(h(&r, "content-range"), format!("bytes 0-9/{len}"));
        assert_eq!(r.body().as_ref(), &fx.big[..10]);
        assert_kept_headers(&r, &format!("{via:?} range"));

        let r = fx.get(via, "/view", &[("range", "bytes=-100")]).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.body().as_ref(), &fx.big[len - 100..]);

        let r = fx.get(via, "/view", &[("range", "bytes=999999999-")]).await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{via:?} 416");
        assert_eq!(h(&r, "content-range"), format!("bytes */{len}"));

        // The file's validators, then a conditional request for it.
        let r = fx.get(via, "/view", &[]).await;
        let tag = h(&r, "etag").to_owned();
        let lm = h(&r, "last-modified").to_owned();
        assert!(!tag.is_empty() && !lm.is_empty(), "{via:?}: validators");
        let r = fx.get(via, "/view", &[("if-none-match", &tag)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{via:?} INM");
        assert!(r.body().is_empty());
        assert!(r.headers().get("x-accel-redirect").is_none());
        let r = fx.get(via, "/view", &[("if-modified-since", &lm)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{via:?} IMS");
        let r = fx.get(via, "/view", &[("if-match", "\"nope\"")]).await;
        assert_eq!(
            r.status(),
            StatusCode::PRECONDITION_FAILED,
            "{via:?} If-Match"
        );
        let r = fx
            .get(
                via,
                "/view",
                &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?} stale If-Range");
        assert!(r.body().as_ref() == fx.big.as_slice());

        // Accept-Encoding picks the precompressed sibling of the target.
        let r = fx
            .get(via, "/view-doc", &[("accept-encoding", "gzip")])
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?} gzip sibling");
        assert_eq!(r.body().as_ref(), DOC_GZ);
        assert_eq!(h(&r, "content-encoding"), "gzip");
        assert!(
            h(&r, "vary")
                .to_ascii_lowercase()
                .contains("accept-encoding")
        );
        assert_eq!(h(&r, "content-type"), PDF, "the upstream's Content-Type");
        let r = fx.get(via, "/view-doc", &[]).await;
        assert_eq!(r.body().as_ref(), DOC);
        assert_eq!(h(&r, "content-encoding"), "");
    }
    fx.app.drain();
}

#[tokio::test]
async fn internal_is_404_directly_a_missing_target_404_and_an_unrouted_one_502() {
    let mut fx = fixture().await;
    for via in Via::ALL {
        let r = fx.get(via, "/protected/big.bin", &[]).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{via:?} direct internal");
        assert!(r.body().len() < 1000, "{via:?}: file bytes on a 404");

        // The path rules hold for a target too: no way out, no dot files.
        for path in ["/view-dotdot", "/view-encoded", "/view-dotfile"] {
            let r = fx.get(via, path, &[]).await;
            assert!(
                !String::from_utf8_lossy(r.body()).contains(OUTSIDE),
                "{via:?} {path}: served a file it must not"
            );
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{via:?} {path}");
            assert_eq!(fx.app.next().await, path);
        }

        let r = fx.get(via, "/view-missing", &[]).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{via:?} missing target");
        assert!(r.headers().get("x-accel-redirect").is_none());
        assert!(!String::from_utf8_lossy(r.body()).contains(UPSTREAM_BODY));
        assert_eq!(fx.app.next().await, "/view-missing");

        let r = fx.get(via, "/view-nowhere", &[]).await;
        assert_eq!(
            r.status(),
            StatusCode::BAD_GATEWAY,
            "{via:?} unrouted target"
        );
        assert!(r.headers().get("x-accel-redirect").is_none());
        assert!(!String::from_utf8_lossy(r.body()).contains(UPSTREAM_BODY));
        assert_eq!(fx.app.next().await, "/view-nowhere");

        // The public route serves its file directly too.
        let r = fx.get(via, "/pub/small.txt", &[]).await;
        assert_eq!(r.body().as_ref(), SMALL);
    }
    assert!(fx.app.drain().is_empty(), "no request left unaccounted");
    drop(fx.dir);
}

/// Reads from `tcp` into `buf` until a response head is complete; returns
/// its length (through the blank line).
async fn read_head(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> usize {
    let read = async {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return end + 4;
            }
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the head");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("no response head")
}

#[tokio::test]
async fn the_slot_is_free_once_the_head_arrives_while_the_file_streams() {
    let mut fx = fixture().await;
    // Client A asks for the 16 MiB file through the one-slot pool, whose
    // app never finishes its own body, and reads only the head.
    // A small fixed receive buffer (no autotuning): what the kernels hold
    // for A is far less than the file.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut a = socket.connect(fx.site.proxy.http).await.unwrap();
    a.write_all(format!("GET /view-huge HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let head_len = read_head(&mut a, &mut got).await;
    let head = RawResponse::parse(&got[..head_len], true).unwrap();
    assert_eq!(head.status, 200, "{}", head.head);
    assert_eq!(
        head.header("content-length"),
        Some(HUGE_LEN.to_string().as_str())
    );
    assert_eq!(head.header("x-accel-redirect"), None);
    assert_eq!(fx.app.next().await, "/view-huge");

    // Client B, on the same pool while A's bytes are still pending: the
    // app answers it, so the only slot is free.
    for via in [Via::Plain, Via::H2] {
        let r = fx.get(via, "/b", &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?} B");
        assert_eq!(r.body().as_ref(), b"APP /b");
        assert_eq!(fx.app.next().await, "/b");
    }

    // A's file was still flowing: not all of it had been sent.
    let mut body = got[head_len..].to_vec();
    let mut chunk = vec![0u8; 256 * 1024];
    while let Ok(n) = a.try_read(&mut chunk) {
        assert!(n > 0, "A closed after {} bytes", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    assert!(
        body.len() < HUGE_LEN,
        "{} of A's {HUGE_LEN} bytes were already sent when B was answered",
        body.len()
    );

    // A's file then arrives whole.
    let rest = async {
        let mut chunk = vec![0u8; 256 * 1024];
        while body.len() < HUGE_LEN {
            let n = a.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {} bytes", body.len());
            body.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, rest)
        .await
        .expect("A's file did not finish");
    assert_eq!(body.len(), HUGE_LEN);
    let first_diff = body.iter().zip(&fx.huge).position(|(x, y)| x != y);
    assert!(first_diff.is_none(), "A's bytes differ at {first_diff:?}");
}
