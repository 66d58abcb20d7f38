//! `files` routes over real sockets (issue 16): files served from disk with
//! their headers over HTTP/1.1 (plain and TLS) and HTTP/2, 405 for other
//! methods, conditional requests, ranges, precompressed siblings, index
//! files and directory redirects, files+pool routes (a missing file goes to
//! the pool; a file never takes a pool slot), internal routes, and a large
//! file streamed whole.
//!
//! The path-safety corpus is in `files_safety.rs`, X-Accel-Redirect in
//! `accel.rs`. Every wait is bounded by `common::WAIT`.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;

const HOST: &str = "f.test";
/// Every file's modification time (2023-11-14T22:13:20Z).
const MTIME: u64 = 1_700_000_000;
const CACHE: &str = "public, max-age=60";

const CSS: &[u8] = b"body { color: red }\n/* identity */\n";
const CSS_GZ: &[u8] = b"GZIP-SIBLING-MARKER";
const CSS_BR: &[u8] = b"BROTLI-SIBLING-MARKER-LONGER";
const CSS_ZST: &[u8] = b"ZSTD-MARKER";
const JS: &[u8] = b"console.log('switchyard');\n";
const JSON: &[u8] = b"{\"files\": true}\n";
const BLOB: &[u8] = b"\x00\x01\x02 opaque bytes \xff";
const EXISTS: &[u8] = b"I am on disk\n";
const INDEX: &[u8] = b"<h1>root index</h1>\n";
const DOCS_INDEX: &[u8] = b"<h1>docs index</h1>\n";
const POOL: &str = "POOL ANSWER";

/// 100 distinct-enough bytes for the range tests.
fn range_bytes() -> Vec<u8> {
    (0..100u8).map(|i| b' ' + (i % 90)).collect()
}

/// The strong ETag the spec gives a file of this length: `"<mtime hex>-<len hex>"`.
fn etag(len: usize) -> String {
    format!("\"{MTIME:x}-{len:x}\"")
}

fn last_modified() -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(MTIME))
}

fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// The static tree every fixture serves, every file dated `MTIME`.
fn write_tree(root: &Path) {
    let files: &[(&str, &[u8])] = &[
        ("a.css", CSS),
        ("a.css.gz", CSS_GZ),
        ("a.css.br", CSS_BR),
        ("a.css.zst", CSS_ZST),
        ("app.js", JS),
        ("data.json", JSON),
        ("blob.unknownext", BLOB),
        ("exists.txt", EXISTS),
        ("index.html", INDEX),
        ("docs/index.html", DOCS_INDEX),
        ("docs/page.html", b"<p>page</p>\n"),
        ("empty/other.txt", b"not an index\n"),
    ];
    for (rel, bytes) in files {
        let p = write_file(root, rel, bytes);
        set_mtime(&p, MTIME);
    }
    let p = write_file(root, "range.txt", &range_bytes());
    set_mtime(&p, MTIME);
}

/// A proxy for site `f.test` (TLS too) serving `write_tree` at:
/// - `/static/`: files only, `index`, `cache_control`;
/// - `/plain/`: files only, nothing else set;
/// - `/mixed/`: files + pool `web`;
/// - `/protected/`: internal;
/// - `/`: pool `web`.
struct Fx {
    root: tempfile::TempDir,
    site: TlsSite,
}

async fn fixture(backend: SocketAddr, pool_extra: &str) -> Fx {
    let root = tempfile::tempdir().unwrap();
    write_tree(root.path());
    let dir = root.path().display().to_string();
    let rest = format!(
        "[pools.web]\nservers = [\"{backend}\"]\n{pool_extra}\n\
         [[routes]]\nname = \"static\"\npath = \"/static/\"\nfiles = {dir:?}\nindex = \"index.html\"\ncache_control = \"{CACHE}\"\n\
         [[routes]]\nname = \"plain\"\npath = \"/plain/\"\nfiles = {dir:?}\n\
         [[routes]]\nname = \"mixed\"\npath = \"/mixed/\"\nfiles = {dir:?}\npool = \"web\"\n\
         [[routes]]\nname = \"protected\"\npath = \"/protected/\"\nfiles = {dir:?}\ninternal = true\n\
         [[routes]]\nname = \"app\"\npath = \"/\"\npool = \"web\"\n"
    );
    let site = TlsSite::start(HOST, &rest).await;
    Fx { root, site }
}

const ALL: [Via; 3] = Via::ALL;

impl Fx {
    /// Sends `METHOD path` with these headers, bounded by `WAIT`.
    async fn send(&self, via: Via, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        self.site
            .send(via, method, path, headers, Bytes::new())
            .await
    }

    async fn get(&self, via: Via, path: &str, headers: &[(&str, &str)]) -> Got {
        self.send(via, "GET", path, headers).await
    }
}

fn h<'a>(r: &'a Got, name: &str) -> &'a str {
    header_str(r.headers(), name)
}

/// Asserts a whole-file 200 with `body`.
#[track_caller]
fn assert_whole(r: &Got, body: &[u8], what: &str) {
    assert_eq!(r.status(), StatusCode::OK, "{what}");
    assert_eq!(r.body().as_ref(), body, "{what}");
    assert_eq!(h(r, "content-length"), body.len().to_string(), "{what}");
    assert_eq!(
        h(r, "content-range"),
        "",
        "{what}: no Content-Range on a 200"
    );
}

#[tokio::test]
async fn get_and_head_serve_files_with_their_headers_over_h1_tls_and_h2() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    // (path, bytes, Content-Type prefixes any of which is right)
    let cases: &[(&str, &[u8], &[&str])] = &[
        ("/static/a.css", CSS, &["text/css"]),
        (
            "/static/app.js",
            JS,
            &["text/javascript", "application/javascript"],
        ),
        ("/static/data.json", JSON, &["application/json"]),
        (
            "/static/blob.unknownext",
            BLOB,
            &["application/octet-stream"],
        ),
        ("/static/docs/page.html", b"<p>page</p>\n", &["text/html"]),
    ];
    for via in ALL {
        for (path, bytes, types) in cases {
            let what = format!("{via:?} GET {path}");
            let r = fx.get(via, path, &[]).await;
            assert_whole(&r, bytes, &what);
            let ct = h(&r, "content-type");
            assert!(
                types.iter().any(|t| ct.starts_with(t)),
                "{what}: Content-Type {ct:?}, want one of {types:?}"
            );
            assert_eq!(h(&r, "last-modified"), last_modified(), "{what}");
            assert_eq!(h(&r, "etag"), etag(bytes.len()), "{what}");
            assert_eq!(h(&r, "accept-ranges"), "bytes", "{what}");
            assert_eq!(h(&r, "cache-control"), CACHE, "{what}");
            assert_eq!(h(&r, "content-encoding"), "", "{what}: identity");

            let what = format!("{via:?} HEAD {path}");
            let head = fx.send(via, "HEAD", path, &[]).await;
            assert_eq!(head.status(), StatusCode::OK, "{what}");
            assert!(head.body().is_empty(), "{what}: HEAD has no body");
            for name in [
                "content-type",
                "content-length",
                "last-modified",
                "etag",
                "accept-ranges",
                "cache-control",
            ] {
                assert_eq!(h(&head, name), h(&r, name), "{what}: {name} as for GET");
            }
        }
        // A query string does not change the file (cache busting).
        let r = fx.get(via, "/static/a.css?v=1.2.3&x=%2e%2e", &[]).await;
        assert_whole(&r, CSS, &format!("{via:?} with a query"));
        // A route without cache_control sends none.
        let r = fx.get(via, "/plain/a.css", &[]).await;
        assert_whole(&r, CSS, &format!("{via:?} /plain/a.css"));
        assert_eq!(h(&r, "cache-control"), "", "{via:?}: no cache_control set");
    }
    assert_eq!(pool.app_count(), 0, "no file request reached the pool");
}

#[tokio::test]
async fn other_methods_get_405_on_a_files_route_and_go_to_the_pool_on_a_mixed_one() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    for via in [Via::Plain, Via::H2] {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let what = format!("{via:?} {method} /static/a.css");
            let r = fx
                .site
                .send(via, method, "/static/a.css", &[], Bytes::from("x=1"))
                .await;
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{what}");
            assert_eq!(h(&r, "allow"), "GET, HEAD", "{what}");
            assert!(
                !r.body().windows(CSS.len()).any(|w| w == CSS),
                "{what}: no file bytes"
            );
        }
    }
    assert_eq!(
        pool.app_count(),
        0,
        "a files-only route never asks the pool"
    );

    // On a files+pool route the pool answers other methods, even for a
    // path that is a file.
    for via in [Via::Plain, Via::H2] {
        let r = fx
            .site
            .send(
                via,
                "POST",
                "/mixed/exists.txt",
                &[("content-type", "application/x-www-form-urlencoded")],
                Bytes::from("name=value"),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?}");
        assert_eq!(r.body().as_ref(), POOL.as_bytes(), "{via:?}");
        let seen = pool.last();
        assert_eq!(seen.method, http::Method::POST);
        assert_eq!(seen.uri.path(), "/mixed/exists.txt");
        assert_eq!(seen.body.as_ref(), b"name=value");
    }
    assert_eq!(pool.app_count(), 2);
}

#[tokio::test]
async fn conditional_requests_give_304_and_412() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    let tag = etag(CSS.len());
    let weak = format!("W/{tag}");
    let list = format!("\"nope\", {tag}, \"other\"");
    let lm = last_modified();
    let older = http_date(MTIME - 86_400);
    let newer = http_date(MTIME + 86_400);
    let path = "/static/a.css";
    for via in [Via::Plain, Via::H2] {
        // If-None-Match: weak comparison, lists and `*`.
        for inm in [tag.as_str(), weak.as_str(), list.as_str(), "*"] {
            for method in ["GET", "HEAD"] {
                let what = format!("{via:?} {method} If-None-Match: {inm}");
                let r = fx.send(via, method, path, &[("if-none-match", inm)]).await;
                assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{what}");
                assert_eq!(h(&r, "etag"), tag, "{what}: ETag kept on 304");
                // RFC 9110 §15.4.5: a 304 carries the Cache-Control a 200 would.
                assert_eq!(h(&r, "cache-control"), CACHE, "{what}");
                assert!(r.body().is_empty(), "{what}: no body on 304");
            }
        }
        let r = fx.get(via, path, &[("if-none-match", "\"nope\"")]).await;
        assert_whole(&r, CSS, &format!("{via:?} If-None-Match not matching"));

        // If-Modified-Since.
        let r = fx.get(via, path, &[("if-modified-since", &lm)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{via:?} IMS = LM");
        assert!(r.body().is_empty());
        let r = fx.get(via, path, &[("if-modified-since", &newer)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{via:?} IMS later");
        let r = fx.get(via, path, &[("if-modified-since", &older)]).await;
        assert_whole(&r, CSS, &format!("{via:?} If-Modified-Since older"));
        // If-Modified-Since is ignored when If-None-Match is present.
        let r = fx
            .get(
                via,
                path,
                &[("if-none-match", "\"nope\""), ("if-modified-since", &lm)],
            )
            .await;
        assert_whole(&r, CSS, &format!("{via:?} INM not matching beats IMS"));
        // A date that does not parse is ignored.
        let r = fx
            .get(via, path, &[("if-modified-since", "yesterday")])
            .await;
        assert_whole(&r, CSS, &format!("{via:?} IMS unparseable"));

        // If-Match: strong comparison.
        for im in ["\"nope\"", weak.as_str()] {
            let r = fx.get(via, path, &[("if-match", im)]).await;
            assert_eq!(
                r.status(),
                StatusCode::PRECONDITION_FAILED,
                "{via:?} If-Match: {im}"
            );
            assert!(
                !r.body().windows(CSS.len()).any(|w| w == CSS),
                "{via:?} If-Match: {im}: no file on 412"
            );
        }
        for im in [tag.as_str(), "*"] {
            let r = fx.get(via, path, &[("if-match", im)]).await;
            assert_whole(&r, CSS, &format!("{via:?} If-Match: {im}"));
        }

        // If-Unmodified-Since.
        let r = fx.get(via, path, &[("if-unmodified-since", &older)]).await;
        assert_eq!(
            r.status(),
            StatusCode::PRECONDITION_FAILED,
            "{via:?} IUS in the past"
        );
        for ius in [lm.as_str(), newer.as_str()] {
            let r = fx.get(via, path, &[("if-unmodified-since", ius)]).await;
            assert_whole(&r, CSS, &format!("{via:?} If-Unmodified-Since: {ius}"));
        }
    }
}

#[tokio::test]
async fn single_ranges_give_206_and_the_rest_the_whole_file() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    let data = range_bytes();
    let len = data.len();
    let tag = etag(len);
    let lm = last_modified();
    let path = "/static/range.txt";
    for via in [Via::Plain, Via::H1, Via::H2] {
        // (Range, first byte, last byte)
        for (range, a, b) in [
            ("bytes=0-9", 0, 9),
            ("bytes=-5", 95, 99),
            ("bytes=10-", 10, 99),
            ("bytes=42-42", 42, 42),
            ("bytes=90-200", 90, 99),
            ("bytes=-500", 0, 99),
        ] {
            let what = format!("{via:?} Range: {range}");
            let r = fx.get(via, path, &[("range", range)]).await;
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{what}");
            assert_eq!(
                h(&r, "content-range"),
                format!("bytes {a}-{b}/{len}"),
                "{what}"
            );
            assert_eq!(r.body().as_ref(), &data[a..=b], "{what}");
            assert_eq!(h(&r, "content-length"), (b - a + 1).to_string(), "{what}");
            assert_eq!(h(&r, "etag"), tag, "{what}");
        }
        for range in ["bytes=99999-", "bytes=100-", "bytes=100-200"] {
            let what = format!("{via:?} Range: {range}");
            let r = fx.get(via, path, &[("range", range)]).await;
            assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{what}");
            assert_eq!(h(&r, "content-range"), format!("bytes */{len}"), "{what}");
            assert!(
                !r.body().windows(20).any(|w| w == &data[..20]),
                "{what}: no file bytes"
            );
        }
        // Several ranges, a malformed one or another unit: the whole file.
        for range in ["bytes=0-1,5-6", "bytes=abc", "bytes=5-2", "items=0-9"] {
            let r = fx.get(via, path, &[("range", range)]).await;
            assert_whole(&r, &data, &format!("{via:?} Range: {range}"));
        }
        // If-Range: the current validator gives the range, a stale one the whole file.
        for if_range in [tag.as_str(), lm.as_str()] {
            let what = format!("{via:?} If-Range: {if_range}");
            let r = fx
                .get(via, path, &[("range", "bytes=0-9"), ("if-range", if_range)])
                .await;
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{what}");
            assert_eq!(r.body().as_ref(), &data[..10], "{what}");
        }
        let stale_date = http_date(MTIME - 86_400);
        for if_range in ["\"5f5e1000-1\"", stale_date.as_str()] {
            let r = fx
                .get(via, path, &[("range", "bytes=0-9"), ("if-range", if_range)])
                .await;
            assert_whole(&r, &data, &format!("{via:?} stale If-Range: {if_range}"));
        }
        // HEAD with a Range: RFC 9110 §14.2 defines ranges for GET only,
        // so either the whole head (200) or the 206 head; never a body.
        let r = fx.send(via, "HEAD", path, &[("range", "bytes=0-9")]).await;
        match r.status() {
            StatusCode::OK => assert_eq!(h(&r, "content-length"), len.to_string()),
            StatusCode::PARTIAL_CONTENT => {
                assert_eq!(h(&r, "content-range"), format!("bytes 0-9/{len}"))
            }
            s => panic!("{via:?} HEAD with Range: {s}"),
        }
        assert!(r.body().is_empty());
    }
}

#[tokio::test]
async fn precompressed_siblings_follow_accept_encoding() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    let identity_tag = etag(CSS.len());
    // (Accept-Encoding, Content-Encoding expected, bytes)
    let cases: &[(&str, &str, &[u8])] = &[
        ("gzip", "gzip", CSS_GZ),
        ("GZIP", "gzip", CSS_GZ),
        ("br", "br", CSS_BR),
        ("zstd", "zstd", CSS_ZST),
        ("gzip, br, zstd", "zstd", CSS_ZST),
        ("gzip, deflate, br", "br", CSS_BR),
        ("br;q=1, zstd;q=0.5", "br", CSS_BR),
        ("gzip;q=0.9, br;q=0.8", "gzip", CSS_GZ),
        ("zstd;q=0, gzip", "gzip", CSS_GZ),
        ("zstd;q=0, br;q=0, gzip;q=0", "", CSS),
        ("deflate", "", CSS),
        ("identity", "", CSS),
        ("", "", CSS),
    ];
    for via in [Via::Plain, Via::H2] {
        for (ae, ce, bytes) in cases {
            let what = format!("{via:?} Accept-Encoding: {ae:?}");
            let headers: &[(&str, &str)] = if ae.is_empty() {
                &[]
            } else {
                &[("accept-encoding", ae)]
            };
            let r = fx.get(via, "/static/a.css", headers).await;
            assert_eq!(r.status(), StatusCode::OK, "{what}");
            assert_eq!(r.body().as_ref(), *bytes, "{what}");
            assert_eq!(h(&r, "content-encoding"), *ce, "{what}");
            assert_eq!(h(&r, "content-length"), bytes.len().to_string(), "{what}");
            assert!(
                h(&r, "content-type").starts_with("text/css"),
                "{what}: the original's Content-Type, got {:?}",
                h(&r, "content-type")
            );
            // Identity too: a cache must not give it to a client that
            // would have got a sibling.
            let vary = h(&r, "vary").to_ascii_lowercase();
            assert!(vary.contains("accept-encoding"), "{what}: Vary {vary:?}");
            if !ce.is_empty() {
                assert!(!h(&r, "etag").is_empty(), "{what}: an ETag");
                assert_ne!(
                    h(&r, "etag"),
                    identity_tag,
                    "{what}: the sibling's own ETag"
                );
            } else {
                assert_eq!(h(&r, "etag"), identity_tag, "{what}");
            }
        }
        // Validators are per representation: the sibling's ETag gives 304
        // for the sibling only.
        let gz = fx
            .get(via, "/static/a.css", &[("accept-encoding", "gzip")])
            .await;
        let gz_tag = h(&gz, "etag").to_owned();
        let r = fx
            .get(
                via,
                "/static/a.css",
                &[("accept-encoding", "gzip"), ("if-none-match", &gz_tag)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{via:?} gzip INM");
        assert!(r.body().is_empty());
        let r = fx
            .get(via, "/static/a.css", &[("if-none-match", &gz_tag)])
            .await;
        assert_whole(&r, CSS, &format!("{via:?} identity with the gzip ETag"));

        // A file without siblings is sent as is.
        let r = fx
            .get(
                via,
                "/static/app.js",
                &[("accept-encoding", "gzip, br, zstd")],
            )
            .await;
        assert_whole(&r, JS, &format!("{via:?} no sibling"));
        assert_eq!(h(&r, "content-encoding"), "");
    }
}

#[tokio::test]
async fn index_files_and_directory_redirects_never_list() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    for via in [Via::Plain, Via::H2] {
        let r = fx.get(via, "/static/docs/", &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?} /static/docs/");
        assert_eq!(r.body().as_ref(), DOCS_INDEX, "{via:?}");
        assert!(h(&r, "content-type").starts_with("text/html"), "{via:?}");
        let r = fx.get(via, "/static/", &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?} /static/");
        assert_eq!(r.body().as_ref(), INDEX, "{via:?}");

        // A directory without the index file: 404, never a listing.
        let r = fx.get(via, "/static/empty/", &[]).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{via:?} /static/empty/");
        assert!(
            !String::from_utf8_lossy(r.body()).contains("other.txt"),
            "{via:?}: a listing"
        );
        let r = fx.get(via, "/static/empty", &[]).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{via:?} /static/empty");

        // A directory with its index, without the slash: 301 to the slash.
        let r = fx.get(via, "/static/docs", &[]).await;
        assert_eq!(
            r.status(),
            StatusCode::MOVED_PERMANENTLY,
            "{via:?} /static/docs"
        );
        let loc = h(&r, "location");
        assert!(loc.ends_with("/static/docs/"), "{via:?}: Location {loc:?}");

        // A route without `index`: directories are 404, with or without slash.
        for path in ["/plain/", "/plain/docs/", "/plain/docs"] {
            let r = fx.get(via, path, &[]).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{via:?} {path}");
            assert!(
                !String::from_utf8_lossy(r.body()).contains("page.html"),
                "{via:?} {path}: a listing"
            );
        }
    }
    assert_eq!(pool.app_count(), 0);
}

#[tokio::test]
async fn a_missing_file_on_a_mixed_route_goes_to_the_pool_and_a_file_does_not() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    for via in [Via::Plain, Via::H2] {
        let before = pool.app_count();
        let r = fx.get(via, "/mixed/exists.txt", &[]).await;
        assert_whole(&r, EXISTS, &format!("{via:?} /mixed/exists.txt"));
        assert_eq!(
            pool.app_count(),
            before,
            "{via:?}: a file never asks the pool"
        );

        let r = fx.get(via, "/mixed/nope/missing.txt?page=2", &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?} missing file");
        assert_eq!(r.body().as_ref(), POOL.as_bytes(), "{via:?}");
        assert_eq!(pool.app_count(), before + 1);
        let seen = pool.last();
        assert_eq!(seen.method, http::Method::GET);
        assert_eq!(seen.uri.to_string(), "/mixed/nope/missing.txt?page=2");
        assert_eq!(header_str(&seen.headers, "host"), HOST);

        // HEAD of a missing file goes there too.
        let r = fx.send(via, "HEAD", "/mixed/gone.txt", &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?} HEAD missing");
        assert_eq!(pool.last().method, http::Method::HEAD);
    }
    // A directory without index on a mixed route is "no file" too.
    let r = fx.get(Via::Plain, "/mixed/empty/", &[]).await;
    assert_eq!(r.body().as_ref(), POOL.as_bytes());
}

#[tokio::test]
async fn a_file_request_never_takes_a_pool_slot() {
    // The backend holds every request until released.
    let Held {
        backend: pool,
        mut seen,
        release,
    } = Held::new().await;
    // One slot; a queued request would wait far beyond WAIT.
    let fx = fixture(pool.addr, "max_in_flight = 1\nqueue_timeout = \"60s\"").await;
    let held = tokio::spawn({
        let addr = fx.site.proxy.http;
        async move { plain_request(addr, get(HOST, "/mixed/hold-the-slot")).await }
    });
    let first = tokio::time::timeout(WAIT, seen.recv()).await.unwrap();
    assert_eq!(first.as_deref(), Some("/mixed/hold-the-slot"));

    // While the only slot is taken, files on the same pool's routes are served.
    for via in ALL {
        let r = fx.get(via, "/mixed/exists.txt", &[]).await;
        assert_whole(&r, EXISTS, &format!("{via:?} file while the slot is held"));
        let r = fx.get(via, "/static/a.css", &[]).await;
        assert_whole(&r, CSS, &format!("{via:?} /static/ while the slot is held"));
    }
    assert_eq!(
        pool.app_count(),
        1,
        "only the held request reached the pool"
    );

    release.cancel();
    let r = tokio::time::timeout(WAIT, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.body().as_ref(), b"late");
}

#[tokio::test]
async fn internal_routes_answer_clients_404() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    for via in ALL {
        // Conditional or range headers do not open it either.
        let r = fx
            .get(
                via,
                "/protected/range.txt",
                &[("range", "bytes=0-9"), ("if-none-match", "*")],
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{via:?} range on internal"
        );
        for method in ["GET", "HEAD"] {
            for path in ["/protected/a.css", "/protected/", "/protected/docs/"] {
                let r = fx.send(via, method, path, &[]).await;
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{via:?} {method} {path}");
                assert!(
                    !r.body().windows(CSS.len()).any(|w| w == CSS),
                    "{via:?} {method} {path}: file bytes"
                );
                assert_eq!(h(&r, "etag"), "", "{via:?} {method} {path}");
            }
        }
    }
    assert_eq!(pool.app_count(), 0, "an internal route never asks the pool");
    drop(fx.root);
}

#[tokio::test]
async fn head_of_a_missing_file_is_a_404_without_a_body_over_h1_and_h2() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    for via in ALL {
        for path in ["/static/missing.txt", "/static/empty/", "/static/.env"] {
            let r = fx.send(via, "HEAD", path, &[]).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{via:?} HEAD {path}");
            assert!(r.body().is_empty(), "{via:?} HEAD {path}");
        }
        // A 412 to HEAD likewise.
        let r = fx
            .send(via, "HEAD", "/static/a.css", &[("if-match", "\"nope\"")])
            .await;
        assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED, "{via:?}");
        assert!(r.body().is_empty());
    }
}

#[tokio::test]
async fn a_64_mib_file_arrives_whole_over_h1_and_h2() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    let data = noise(64 << 20, 0x9E37_79B9_7F4A_7C15);
    write_file(fx.root.path(), "big/video.bin", &data);
    for via in ALL {
        let r = fx.get(via, "/static/big/video.bin", &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{via:?}");
        assert_eq!(h(&r, "content-length"), data.len().to_string(), "{via:?}");
        assert_eq!(r.body().len(), data.len(), "{via:?}: length");
        // Not assert_eq: a mismatch must not print 64 MiB.
        let first_diff = r.body().iter().zip(&data).position(|(a, b)| a != b);
        assert!(first_diff.is_none(), "{via:?}: differs at {first_diff:?}");
    }
    // A range deep inside it.
    let a = (40 << 20) + 12_345;
    let b = a + 99_999;
    let r = fx
        .get(
            Via::H2,
            "/static/big/video.bin",
            &[("range", &format!("bytes={a}-{b}"))],
        )
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(r.body().as_ref() == &data[a..=b], "range bytes differ");
    assert_eq!(pool.app_count(), 0);
}

#[tokio::test]
async fn a_changed_file_is_served_fresh_with_new_validators() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    let r = fx.get(Via::Plain, "/static/exists.txt", &[]).await;
    assert_whole(&r, EXISTS, "before");
    let old_tag = h(&r, "etag").to_owned();

    let changed = b"rewritten on disk, longer than before\n";
    let p = write_file(fx.root.path(), "exists.txt", changed);
    set_mtime(&p, MTIME + 3600);
    for via in ALL {
        let r = fx.get(via, "/static/exists.txt", &[]).await;
        assert_whole(&r, changed, &format!("{via:?} after the change"));
        assert_eq!(h(&r, "last-modified"), http_date(MTIME + 3600), "{via:?}");
        assert_ne!(h(&r, "etag"), old_tag, "{via:?}: a new ETag");
        // The old validator no longer matches.
        let r = fx
            .get(via, "/static/exists.txt", &[("if-none-match", &old_tag)])
            .await;
        assert_whole(&r, changed, &format!("{via:?} stale If-None-Match"));
    }
    // A file created after start is served; a deleted one is 404.
    write_file(fx.root.path(), "new/late.txt", b"late\n");
    let r = fx.get(Via::Plain, "/static/new/late.txt", &[]).await;
    assert_whole(&r, b"late\n", "a new file");
    std::fs::remove_file(fx.root.path().join("new/late.txt")).unwrap();
    let r = fx.get(Via::Plain, "/static/new/late.txt", &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a deleted file");
}

#[test]
fn files_settings_are_checked_at_load() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("no-such-dir").display().to_string();
    let a_file = write_file(root.path(), "plain.txt", b"x")
        .display()
        .to_string();
    let cases = [
        // (site routes, words the error must name)
        (
            format!("[[routes]]\npath = \"/s/\"\nfiles = {missing:?}\n"),
            vec!["files", "no-such-dir"],
        ),
        (
            format!("[[routes]]\npath = \"/s/\"\nfiles = {a_file:?}\n"),
            vec!["files", "plain.txt"],
        ),
        (
            "[[routes]]\npath = \"/s/\"\npool = \"web\"\nindex = \"index.html\"\n".to_owned(),
            vec!["index"],
        ),
        (
            "[[routes]]\npath = \"/s/\"\npool = \"web\"\ninternal = true\n".to_owned(),
            vec!["internal"],
        ),
    ];
    for (routes, words) in cases {
        let site =
            format!("hosts = [\"f.test\"]\n[pools.web]\nservers = [\"127.0.0.1:9\"]\n{routes}");
        let cfg = ConfigDir::new(&main_toml(""), &[("site", site)]);
        let err = match switchyard::config::load(cfg.path()) {
            Ok(_) => panic!("loaded:\n{routes}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("site.toml:"), "{err}: names the site file");
        for w in words {
            assert!(err.contains(w), "{err}: names {w:?}");
        }
    }
}

/// (method, path, headers, status, body)
type Exchange<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16, Vec<u8>);

#[tokio::test]
async fn many_file_responses_share_one_connection_with_correct_framing() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    let tag = etag(CSS.len());
    let data = range_bytes();
    let exchanges: Vec<Exchange> = vec![
        ("GET", "/static/a.css", vec![], 200, CSS.to_vec()),
        ("HEAD", "/static/a.css", vec![], 200, vec![]),
        (
            "GET",
            "/static/a.css",
            vec![("if-none-match", &tag)],
            304,
            vec![],
        ),
        (
            "GET",
            "/static/range.txt",
            vec![("range", "bytes=5-14")],
            206,
            data[5..15].to_vec(),
        ),
        (
            "GET",
            "/static/range.txt",
            vec![("range", "bytes=500-")],
            416,
            vec![],
        ),
        (
            "GET",
            "/static/a.css",
            vec![("accept-encoding", "br")],
            200,
            CSS_BR.to_vec(),
        ),
        ("GET", "/static/nope.txt", vec![], 404, vec![]),
        ("POST", "/static/a.css", vec![], 405, vec![]),
        ("GET", "/static/docs", vec![], 301, vec![]),
        (
            "GET",
            "/mixed/to-the-pool",
            vec![],
            200,
            POOL.as_bytes().to_vec(),
        ),
        ("GET", "/static/data.json", vec![], 200, JSON.to_vec()),
    ];
    // HTTP/1.1 keep-alive: one after another on one connection.
    let tcp = tokio::net::TcpStream::connect(fx.site.proxy.http)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (method, path, headers, status, body) in &exchanges {
        let mut b = http::Request::builder()
            .method(*method)
            .uri(*path)
            .header("host", HOST);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).unwrap();
        let one = async {
            let r = send.send_request(req).await.unwrap();
            let (parts, b) = r.into_parts();
            (
                parts,
                http_body_util::BodyExt::collect(b)
                    .await
                    .unwrap()
                    .to_bytes(),
            )
        };
        let (parts, got) = tokio::time::timeout(WAIT, one)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer on the kept-alive connection"));
        assert_eq!(parts.status.as_u16(), *status, "h1 {method} {path}");
        if *status != 404 && *status != 405 && *status != 416 && *status != 301 {
            assert_eq!(got.as_ref(), body.as_slice(), "h1 {method} {path}");
        }
        send.ready()
            .await
            .unwrap_or_else(|e| panic!("after {method} {path}: {e}"));
    }
    // HTTP/2: all at once, as concurrent streams on one connection.
    let send = h2_connect(&fx.site.pki, fx.site.proxy.https, HOST).await;
    let mut tasks = Vec::new();
    for (method, path, headers, status, body) in exchanges.iter().filter(|e| e.0 != "HEAD") {
        let mut b = http::Request::builder()
            .method(*method)
            .uri(format!("https://{HOST}{path}"))
            .header("host", HOST);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).unwrap();
        let mut send = send.clone();
        let what = format!("h2 {method} {path}");
        let (status, body) = (*status, body.clone());
        tasks.push(tokio::spawn(async move {
            let r = send.send_request(req).await.unwrap();
            let (parts, b) = r.into_parts();
            let got = http_body_util::BodyExt::collect(b)
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(parts.status.as_u16(), status, "{what}");
            if status == 200 || status == 206 || status == 304 {
                assert_eq!(got.as_ref(), body.as_slice(), "{what}");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn an_empty_file_and_unusual_but_legal_names() {
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    write_file(fx.root.path(), "empty.txt", b"");
    write_file(fx.root.path(), "café menu.txt", b"cafe");
    write_file(fx.root.path(), "a+b.txt", b"plus");
    write_file(fx.root.path(), "UPPER.CSS", b"upper");
    for via in ALL {
        let r = fx.get(via, "/static/empty.txt", &[]).await;
        assert_whole(&r, b"", &format!("{via:?} empty file"));
        let r = fx
            .get(via, "/static/empty.txt", &[("range", "bytes=0-")])
            .await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{via:?}");
        assert_eq!(h(&r, "content-range"), "bytes */0", "{via:?}");

        let r = fx.get(via, "/static/caf%C3%A9%20menu.txt", &[]).await;
        assert_whole(&r, b"cafe", &format!("{via:?} UTF-8 name"));
        // `+` is a plain character in a path, not a space.
        let r = fx.get(via, "/static/a+b.txt", &[]).await;
        assert_whole(&r, b"plus", &format!("{via:?} plus"));
        let r = fx.get(via, "/static/a%2Bb.txt", &[]).await;
        assert_whole(&r, b"plus", &format!("{via:?} encoded plus"));
        // Extensions are case-insensitive.
        let r = fx.get(via, "/static/UPPER.CSS", &[]).await;
        assert_whole(&r, b"upper", &format!("{via:?} UPPER.CSS"));
        assert!(h(&r, "content-type").starts_with("text/css"), "{via:?}");
    }
}

/// An answer given before the request body was read (the client waits for
/// it before sending the body, as with `Expect: 100-continue`) says
/// `Connection: close`: the unread body would otherwise be read as the next
/// request, so the connection cannot be reused.
#[tokio::test]
async fn an_answer_before_the_body_says_connection_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    for (method, path, status) in [
        ("POST", "/static/a.css", 405),
        ("POST", "/protected/a.css", 404),
        ("GET", "/static/a.css", 200),
        ("GET", "/static/missing.txt", 404),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(fx.site.proxy.http)
            .await
            .unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i;
                }
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "{method} {path}: closed before a response");
                got.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("a response before the body is sent");
        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("http/1.1 {status}")),
            "{method} {path}: {head}"
        );
        assert!(
            head.contains("\r\nconnection: close"),
            "{method} {path}: {head}"
        );
    }
    assert_eq!(pool.app_count(), 0);
}

/// The directory is reopened by its path at least every second, so a
/// `current` symlink swapped on deploy is followed without a reload.
#[tokio::test]
async fn a_swapped_release_symlink_is_followed_without_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    for (release, body) in [("v1", "first release"), ("v2", "second release")] {
        write_file(&tmp.path().join(release), "app.css", body.as_bytes());
    }
    let current = tmp.path().join("current");
    std::os::unix::fs::symlink(tmp.path().join("v1"), &current).unwrap();
    let rest = format!(
        "[[routes]]\npath = \"/static/\"\nfiles = {:?}\n",
        current.display().to_string()
    );
    let site = TlsSite::start(HOST, &rest).await;
    let r = site
        .send(Via::Plain, "GET", "/static/app.css", &[], Bytes::new())
        .await;
    assert_eq!(r.body().as_ref(), b"first release");
    // Swap atomically, as deploy tools do: a new link renamed over the old.
    let next = tmp.path().join("current.next");
    std::os::unix::fs::symlink(tmp.path().join("v2"), &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = site
            .send(Via::Plain, "GET", "/static/app.css", &[], Bytes::new())
            .await;
        if r.body().as_ref() == b"second release" {
            break;
        }
        assert_eq!(r.body().as_ref(), b"first release");
        assert!(
            std::time::Instant::now() < deadline,
            "the new release was not served within {WAIT:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Reads one HTTP/1.1 response (head, then Content-Length bytes unless it
/// answers a HEAD) from `buf` at `*at`; `None` if it is not all there.
fn next_response(buf: &[u8], at: &mut usize, head_only: bool) -> Option<(String, Vec<u8>)> {
    let rest = &buf[*at..];
    let end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&rest[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let len = if head_only { 0 } else { len };
    let body = rest.get(end..end + len)?.to_vec();
    *at += end + len;
    Some((head, body))
}

#[tokio::test]
async fn pipelined_large_files_over_plain_http_arrive_in_order_and_whole() {
    // Large files on plain HTTP go by sendfile (`src/sendfile.rs`): each
    // response's bytes must come from its own file, in request order,
    // whether whole, ranged, or behind a HEAD that sends none.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    let a = noise(300_000, 1);
    let b = noise(1_500_000, 2);
    write_file(fx.root.path(), "big/a.bin", &a);
    write_file(fx.root.path(), "big/b.bin", &b);
    let (r1, r2) = (70_001, 1_234_566);
    let reqs = format!(
        "GET /static/big/a.bin HTTP/1.1\r\nhost: {HOST}\r\n\r\n\
         GET /static/big/b.bin HTTP/1.1\r\nhost: {HOST}\r\nrange: bytes={r1}-{r2}\r\n\r\n\
         HEAD /static/big/b.bin HTTP/1.1\r\nhost: {HOST}\r\n\r\n\
         GET /static/a.css HTTP/1.1\r\nhost: {HOST}\r\n\r\n\
         GET /static/big/b.bin HTTP/1.1\r\nhost: {HOST}\r\n\r\n\
         GET /static/big/a.bin HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n"
    );
    let mut tcp = tokio::net::TcpStream::connect(fx.site.proxy.http)
        .await
        .unwrap();
    tcp.write_all(reqs.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("the pipelined responses within WAIT")
        .unwrap();
    let mut at = 0;
    let mut next = |what: &str, head_only| {
        next_response(&got, &mut at, head_only)
            .unwrap_or_else(|| panic!("{what}: response incomplete"))
    };
    let (head, body) = next("a.bin", false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body == a, "a.bin differs");
    let (head, body) = next("b.bin range", false);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(body == b[r1..=r2], "b.bin range differs");
    // A HEAD's Content-Length names the file's length, but no body follows.
    let (head, _) = next("HEAD b.bin", true);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", b.len())),
        "{head}"
    );
    let (head, body) = next("a.css", false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, CSS);
    let (_, body) = next("b.bin", false);
    assert!(body == b, "b.bin differs");
    let (_, body) = next("a.bin again", false);
    assert!(body == a, "a.bin (second) differs");
    assert_eq!(at, got.len(), "nothing after the last response");
}

#[tokio::test]
async fn a_file_truncated_mid_download_over_plain_http_ends_the_connection_short() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pool = Backend::named(POOL).await;
    let fx = fixture(pool.addr, "").await;
    let len = 32 << 20;
    let path = write_file(fx.root.path(), "big/shrinks.bin", &noise(len, 3));
    let mut tcp = tokio::net::TcpStream::connect(fx.site.proxy.http)
        .await
        .unwrap();
    let req = format!("GET /static/big/shrinks.bin HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    // The head and the first bytes, then the file is cut to 1 MiB.
    let mut first = vec![0; 64 * 1024];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut rest = Vec::new();
    // A reset is as good as a close here: either way the client sees the
    // response end before its Content-Length.
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the connection closes within WAIT");
    assert!(
        first.len() + rest.len() < len,
        "{} bytes arrived of a {len}-byte response whose file was cut to 1 MiB",
        first.len() + rest.len()
    );
}
