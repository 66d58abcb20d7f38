//! Files: static and media files served from disk at the proxy, as nginx's
//! `alias` and Caddy's `file_server` do, so no worker's slot is spent on
//! them.
//!
//! A request path is mapped beneath the route's directory ([`path`]), the
//! file opened without leaving it ([`open`]), a precompressed sibling
//! picked when the client takes it, the preconditions and range decided
//! ([`conditional`]), and the bytes streamed in bounded chunks
//! ([`FileBody`]). Everything here is synchronous and cheap: a lookup is a
//! few system calls on the page cache, like nginx's.

mod body;
mod conditional;
mod open;
pub mod path;

use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::accept_encoding::Coding;
use conditional::{Precondition, Range, Validators};

pub use body::FileBody;
pub use path::{Mapped, map_path};

/// A files route's directory and settings, ready to serve.
#[derive(Debug)]
pub(crate) struct Files {
    /// The route's path prefix, stripped from request paths.
    pub(crate) prefix: String,
    /// The directory files are served from.
    pub(crate) root: PathBuf,
    /// File served for a path ending in `/`.
    pub(crate) index: Option<String>,
    /// `Cache-Control` on every file response.
    pub(crate) cache_control: Option<HeaderValue>,
    /// Clients get 404; only X-Accel-Redirect reaches it.
    pub(crate) internal: bool,
    /// Compress textual files that have no precompressed sibling.
    pub(crate) compress: bool,
    /// The directory, opened, and when: reused for [`ROOT_VALID`].
    root_dir: arc_swap::ArcSwapOption<RootDir>,
}

/// How long an opened directory serves lookups before it is opened again
/// by its path: saves two system calls a request (a third of them for a
/// small file), and a `current` symlink swapped on deploy is still
/// followed within this time (as nginx's `open_file_cache_valid`, shorter).
const ROOT_VALID: std::time::Duration = std::time::Duration::from_secs(1);

/// A files route's directory, open.
#[derive(Debug)]
struct RootDir {
    fd: rustix::fd::OwnedFd,
    opened: std::time::Instant,
}

impl Files {
    /// The files settings of `route`.
    pub(crate) fn new(route: &crate::config::Route, config: &crate::config::Files) -> Self {
        Files {
            prefix: route.path.clone(),
            compress: route.compress,
            root: config.dir.clone(),
            index: config.index.clone(),
            cache_control: config
                .cache_control
                .as_deref()
                .and_then(|cc| HeaderValue::from_str(cc).ok()),
            internal: config.internal,
            root_dir: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// The directory, open: the one opened less than [`ROOT_VALID`] ago,
    /// else opened now.
    fn root_dir(&self) -> io::Result<Arc<RootDir>> {
        let now = std::time::Instant::now();
        if let Some(dir) = &*self.root_dir.load()
            && now.duration_since(dir.opened) < ROOT_VALID
        {
            return Ok(dir.clone());
        }
        let dir = Arc::new(RootDir {
            fd: open::open_root(&self.root)?,
            opened: now,
        });
        self.root_dir.store(Some(dir.clone()));
        Ok(dir)
    }
}

/// A site's files routes, longest prefix first: where an
/// `X-Accel-Redirect` path is looked up.
#[derive(Debug, Default)]
pub(crate) struct Catalog(Vec<std::sync::Arc<Files>>);

impl Catalog {
    /// These routes' files, in any order.
    pub(crate) fn new(mut files: Vec<std::sync::Arc<Files>>) -> Self {
        files.sort_by_key(|f| std::cmp::Reverse(f.prefix.len()));
        Catalog(files)
    }

    /// Whether the site serves no files at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The files route whose prefix is the longest to match `path`.
    pub(crate) fn find(&self, path: &str) -> Option<&Files> {
        self.0
            .iter()
            .find(|f| path.starts_with(f.prefix.as_str()))
            .map(|f| &**f)
    }
}

/// What serving a request from disk came to.
#[derive(Debug)]
pub(crate) enum Served {
    /// A response: the file, a range of it, 304, 412, 416, or a redirect
    /// to a directory's slash form.
    Response(Response<FileBody>),
    /// No file to serve at this path: missing, refused by the path rules,
    /// not a regular file, or a directory without an index.
    Missing,
    /// Only GET and HEAD are served from disk.
    MethodNotAllowed,
    /// The proxy may not read the file (permissions).
    Forbidden,
    /// Reading the file failed otherwise.
    Failed(io::Error),
}

impl Files {
    /// Serves `path` (percent-encoded, as requested; `query` is kept for a
    /// redirect) with the conditional and range headers in `h`, to a client
    /// that takes `codings` (its Accept-Encoding, parsed once by the caller,
    /// which compresses with it too).
    pub(crate) fn serve(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        h: &HeaderMap,
        codings: &[Coding],
    ) -> Served {
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Served::MethodNotAllowed,
        };
        let Some(mapped) = map_path(&self.prefix, path) else {
            return Served::Missing;
        };
        let dir = match self.root_dir() {
            Ok(dir) => dir,
            Err(e) => return failure(e),
        };
        let dir = &dir.fd;
        let mut rel = mapped.path;
        if mapped.directory {
            match &self.index {
                Some(index) => rel.push(index),
                None => return Served::Missing,
            }
        }
        let (file, meta) = match open_file(dir, &rel) {
            Ok(opened) => opened,
            Err(e) => return failure(e),
        };
        if meta.is_dir() {
            return self.directory(dir, &rel, path, query);
        }
        if !meta.is_file() {
            return Served::Missing;
        }
        let (file, meta, coding) = match sibling(dir, &rel, codings) {
            Some((file, meta, coding)) => (file, meta, Some(coding)),
            None => (file, meta, None),
        };
        let file = Found {
            file,
            meta,
            coding,
            content_type: content_type(&rel),
        };
        match self.respond(file, head, h, codings) {
            Ok(resp) => Served::Response(resp),
            Err(e) => failure(e),
        }
    }

    /// A directory named without its trailing slash: redirected to the
    /// slash form when it has an index (as nginx and Caddy do), else no file.
    fn directory(
        &self,
        dir: &rustix::fd::OwnedFd,
        rel: &Path,
        path: &str,
        q: Option<&str>,
    ) -> Served {
        let Some(index) = &self.index else {
            return Served::Missing;
        };
        match open_file(dir, &rel.join(index)) {
            Ok((_, meta)) if meta.is_file() => {}
            _ => return Served::Missing,
        }
        let location = match q {
            Some(q) => format!("{path}/?{q}"),
            None => format!("{path}/"),
        };
        let Ok(location) = HeaderValue::try_from(location) else {
            return Served::Missing;
        };
        let mut resp = Response::new(FileBody::empty());
        *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
        resp.headers_mut().insert(header::LOCATION, location);
        Served::Response(resp)
    }

    /// The response for an opened file, after preconditions and Range.
    fn respond(
        &self,
        found: Found,
        head: bool,
        h: &HeaderMap,
        codings: &[Coding],
    ) -> io::Result<Response<FileBody>> {
        let len = found.meta.len();
        let validators = Validators::new(found.meta.modified()?, len);
        let mut resp = Response::new(FileBody::empty());
        let out = resp.headers_mut();
        out.insert(header::ETAG, validators.etag());
        out.insert(header::LAST_MODIFIED, validators.last_modified());
        if let Some(cc) = &self.cache_control {
            out.insert(header::CACHE_CONTROL, cc.clone());
        }
        // Any file may have a precompressed sibling, so what is sent may
        // depend on Accept-Encoding (as nginx with gzip_vary, and Caddy).
        out.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if let Some(coding) = found.coding {
            out.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(coding.token()),
            );
        }
        match conditional::evaluate(h, &validators) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                *resp.status_mut() = StatusCode::NOT_MODIFIED;
                if !head && self.compressed_at_proxy(&found, codings) {
                    // The ETag the 200 would carry (RFC 9110 §15.4.5).
                    let weak = format!("W/{}", validators.etag);
                    if let Ok(v) = HeaderValue::try_from(weak) {
                        resp.headers_mut().insert(header::ETAG, v);
                    }
                }
                return Ok(resp);
            }
            Precondition::Failed => {
                *resp.status_mut() = StatusCode::PRECONDITION_FAILED;
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                return Ok(resp);
            }
        }
        let out = resp.headers_mut();
        out.insert(header::CONTENT_TYPE, found.content_type);
        out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        // Range is defined for GET only (RFC 9110 §14.2).
        let range = if head {
            Range::Whole
        } else {
            conditional::range(h, len, &validators)
        };
        let (offset, count) = match range {
            Range::Whole => (0, len),
            Range::Part(first, last) => {
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                let cr = format!("bytes {first}-{last}/{len}");
                if let Ok(v) = HeaderValue::try_from(cr) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                (first, last - first + 1)
            }
            Range::Unsatisfiable => {
                *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let h = resp.headers_mut();
                if let Ok(v) = HeaderValue::try_from(format!("bytes */{len}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                return Ok(resp);
            }
        };
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        if !head {
            *resp.body_mut() = FileBody::new(found.file, offset, count)?;
        }
        Ok(resp)
    }

    /// Whether a GET of this file is compressed at the proxy (`compress`):
    /// no sibling was picked, the client takes a coding, and the file is
    /// textual and long enough.
    fn compressed_at_proxy(&self, found: &Found, codings: &[Coding]) -> bool {
        self.compress
            && found.coding.is_none()
            && !codings.is_empty()
            && crate::compress::worth_it(Some(&found.content_type), Some(found.meta.len()))
    }
}

/// An opened file about to be served.
struct Found {
    file: File,
    meta: Metadata,
    /// The coding of a precompressed sibling sent instead of the file.
    coding: Option<Coding>,
    /// The type of the file asked for (not of its sibling).
    content_type: HeaderValue,
}

fn open_file(dir: &rustix::fd::OwnedFd, rel: &Path) -> io::Result<(File, Metadata)> {
    let file = open::open_beneath(dir, rel)?;
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// The first precompressed sibling (`FILE.zst`, `.br`, `.gz`) the client
/// accepts, in its order of preference, that is a regular file.
fn sibling(
    dir: &rustix::fd::OwnedFd,
    rel: &Path,
    codings: &[Coding],
) -> Option<(File, Metadata, Coding)> {
    codings.iter().find_map(|&coding| {
        let mut name = rel.as_os_str().to_owned();
        name.push(coding.suffix());
        let (file, meta) = open_file(dir, Path::new(&name)).ok()?;
        meta.is_file().then_some((file, meta, coding))
    })
}

/// `Content-Type` by the file's extension; text is declared UTF-8, as
/// Django's static files and Caddy's file_server do.
fn content_type(rel: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(rel)
        .first_raw()
        .unwrap_or("application/octet-stream");
    if mime.starts_with("text/") {
        HeaderValue::try_from(format!("{mime}; charset=utf-8"))
            .unwrap_or(HeaderValue::from_static("text/plain; charset=utf-8"))
    } else {
        HeaderValue::from_static(mime)
    }
}

/// A failed lookup or read, by what it means for the client.
fn failure(e: io::Error) -> Served {
    if open::is_missing(&e) {
        Served::Missing
    } else if e.kind() == io::ErrorKind::PermissionDenied {
        Served::Forbidden
    } else {
        Served::Failed(e)
    }
}
