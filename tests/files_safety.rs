//! Path safety of `files` routes (issue 16): a corpus of traversal, encoded
//! separator, bad percent-encoding, NUL, dot-file and symlink-escape
//! request targets, each written byte for byte on a raw TCP connection (no
//! client library normalises them), must answer 404 (or 400 when the
//! request line itself is refused) and never carry a secret's bytes. On a
//! files+pool route the same targets are "no file" and go to the pool.
//! The same targets over HTTP/2 (where `http::Uri` accepts them), and
//! legitimate files in the same root as a sanity check.

mod common;

use std::path::Path;

use common::*;

const HOST: &str = "s.test";
/// Beside the root: must never be served.
const SECRET: &str = "TOP-SECRET-7f3a9c-beside-the-root";
/// Dot files inside the root: never served either.
const ENV: &str = "DOTENV-SECRET-41b2";
const GIT: &str = "GITCONFIG-SECRET-d09e";
/// A file named `a`, which a NUL-truncating lookup of `a%00.txt` would open.
const A_FILE: &str = "TRUNCATED-AT-NUL-5c1d";
const LEGIT: &str = "legit public file\n";
const POOL: &str = "POOL-ANSWER";

/// The targets, after `/static` or `/mixed` (route prefix without its slash).
const CORPUS: &[&str] = &[
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/%2E%2E%2Fsecret.txt",
    "/..%2fsecret.txt",
    "/..%2Fsecret.txt",
    "/..%5csecret.txt",
    "/..%5Csecret.txt",
    "/..\\secret.txt",
    "/sub\\..\\..\\secret.txt",
    "/%c0%ae%c0%ae/secret.txt",
    "/%c0%ae%c0%ae%c0%afsecret.txt",
    "/%e0%80%ae%e0%80%ae/secret.txt",
    "/%252e%252e/secret.txt",
    "/%zz",
    "/%",
    "/%2",
    "/legit.txt%",
    "/a%00.txt",
    "/a%00",
    "/legit.txt%00.png",
    "/.env",
    "/%2eenv",
    "/%2Eenv",
    "/./.env",
    "/sub/../.env",
    "/.git/config",
    "/%2egit/config",
    "/.git%2fconfig",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/sub/../../secret.txt",
    "//../secret.txt",
    "/..;/secret.txt",
    "/link/secret.txt",
    "/link",
    "/link/",
    "/link2",
    "/abslink",
    "/absdir/secret.txt",
    "/sub/uplink",
    "/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/../../../../../../etc/passwd",
];

/// DIR/secret.txt beside DIR/root, dot files and symlinks inside the root.
fn write_tree(dir: &Path) {
    write_file(dir, "secret.txt", SECRET.as_bytes());
    let root = dir.join("root");
    write_file(&root, "legit.txt", LEGIT.as_bytes());
    write_file(&root, "with space.txt", LEGIT.as_bytes());
    write_file(&root, "sub/inner.txt", LEGIT.as_bytes());
    write_file(&root, "a", A_FILE.as_bytes());
    write_file(&root, ".env", ENV.as_bytes());
    write_file(&root, ".git/config", GIT.as_bytes());
    let link = |target: &Path, at: &str| std::os::unix::fs::symlink(target, root.join(at)).unwrap();
    link(Path::new(".."), "link");
    link(Path::new("../secret.txt"), "link2");
    link(&dir.join("secret.txt"), "abslink");
    link(dir, "absdir");
    link(Path::new("../../secret.txt"), "sub/uplink");
    // A symlink that stays inside the root.
    link(Path::new("legit.txt"), "inlink");
}

struct Fx {
    _dir: tempfile::TempDir,
    _pool: Backend,
    site: TlsSite,
}

/// `/static/`: files only; `/mixed/`: files + pool. No other route, so a
/// target the proxy normalises out of both prefixes is a plain 404.
async fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path());
    let pool = Backend::named(POOL).await;
    let root = dir.path().join("root").display().to_string();
    let rest = format!(
        "[pools.web]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/static/\"\nfiles = {root:?}\n\
         [[routes]]\npath = \"/mixed/\"\nfiles = {root:?}\npool = \"web\"\n",
        pool.addr
    );
    let site = TlsSite::start(HOST, &rest).await;
    Fx {
        _dir: dir,
        _pool: pool,
        site,
    }
}

fn raw_get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Panics if `body` carries any secret.
#[track_caller]
fn assert_no_secret(body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body);
    for marker in [SECRET, ENV, GIT, A_FILE] {
        assert!(
            !text.contains(marker),
            "{what}: the response carries {marker:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn legit_files_in_the_same_root_are_served() {
    let fx = fixture().await;
    let absolute = format!("http://{HOST}/static/legit.txt");
    for target in [
        "/static/legit.txt",
        "/static//legit.txt",
        "/static/sub//inner.txt",
        "/static/%6cegit.txt",
        "/static/with%20space.txt",
        "/static/legit.txt?file=../../secret.txt",
        "/static/sub/inner.txt",
        absolute.as_str(),
    ] {
        let r = raw_http(fx.site.proxy.http, &raw_get(target))
            .await
            .unwrap_or_else(|| panic!("{target}: closed without a response"));
        assert_eq!(r.status, 200, "{target}: {}", r.head);
        assert_eq!(r.body, LEGIT.as_bytes(), "{target}");
    }
}

#[tokio::test]
async fn a_symlink_that_stays_inside_the_root_is_followed() {
    let fx = fixture().await;
    let r = raw_http(fx.site.proxy.http, &raw_get("/static/inlink"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, LEGIT.as_bytes());
}

#[tokio::test]
async fn the_corpus_gets_404_on_a_files_route_and_never_a_secret() {
    let fx = fixture().await;
    let mut targets: Vec<String> = CORPUS.iter().map(|t| format!("/static{t}")).collect();
    // Absolute-form request targets (RFC 9112 §3.2.2).
    targets.push(format!("http://{HOST}/static/../secret.txt"));
    targets.push(format!("http://{HOST}/static/%2e%2e/secret.txt"));
    targets.push(format!("http://{HOST}/static/.env"));
    let mut wrong = Vec::new();
    for target in &targets {
        let r = raw_http(fx.site.proxy.http, &raw_get(target)).await;
        let Some(r) = r else {
            wrong.push(format!("{target}: connection closed without a response"));
            continue;
        };
        assert_no_secret(&r.body, target);
        assert_no_secret(r.head.as_bytes(), target);
        if r.status != 404 && r.status != 400 {
            wrong.push(format!(
                "{target}: {} ({:?})",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
    }
    assert!(wrong.is_empty(), "not 404/400:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn the_corpus_goes_to_the_pool_on_a_files_and_pool_route() {
    let fx = fixture().await;
    let mut wrong = Vec::new();
    for t in CORPUS {
        let target = format!("/mixed{t}");
        let Some(r) = raw_http(fx.site.proxy.http, &raw_get(&target)).await else {
            wrong.push(format!("{target}: connection closed without a response"));
            continue;
        };
        assert_no_secret(&r.body, &target);
        let pool_answer = r.status == 200 && r.body == POOL.as_bytes();
        if !(pool_answer || r.status == 404 || r.status == 400) {
            wrong.push(format!(
                "{target}: {} ({:?})",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "neither the pool's answer nor 404/400:\n{}",
        wrong.join("\n")
    );
    // A legit file on the same route is still served from disk.
    let r = raw_http(fx.site.proxy.http, &raw_get("/mixed/legit.txt"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, LEGIT.as_bytes());
}

#[tokio::test]
async fn the_corpus_over_h2_gets_404_and_never_a_secret() {
    let fx = fixture().await;
    let mut wrong = Vec::new();
    let mut sent = 0;
    for t in CORPUS {
        let uri = format!("https://{HOST}/static{t}");
        // Targets http::Uri refuses cannot be sent by a client library.
        let Ok(uri) = uri.parse::<http::Uri>() else {
            continue;
        };
        let req = http::Request::get(uri.clone())
            .header("host", HOST)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = match https_request(&fx.site.pki, fx.site.proxy.https, HOST, true, req).await {
            Ok(r) => r,
            // A refused stream carries no secret either.
            Err(e) => {
                wrong.push(format!("{uri}: error {e}"));
                continue;
            }
        };
        sent += 1;
        assert_no_secret(r.body(), &uri.to_string());
        if r.status() != 404 && r.status() != 400 {
            wrong.push(format!("{uri}: {}", r.status()));
        }
    }
    assert!(sent > CORPUS.len() / 2, "only {sent} targets sent over h2");
    assert!(
        wrong.is_empty(),
        "not 404/400 over h2:\n{}",
        wrong.join("\n")
    );

    // Sanity over h2: a legit file.
    let req = http::Request::get(format!("https://{HOST}/static/legit.txt"))
        .header("host", HOST)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = https_request(&fx.site.pki, fx.site.proxy.https, HOST, true, req)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().as_ref(), LEGIT.as_bytes());
}
