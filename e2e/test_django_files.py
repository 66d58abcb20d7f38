"""Issue 16: files routes and X-Accel-Redirect in the Django example.

examples/django/run.sh start collects the static files (STATIC_ROOT, with a
.gz beside each CSS and JS file), makes MEDIA_ROOT and a private directory
with a 64 MiB file, all under examples/django/.data/, before switchyard
starts. Its site file serves them with three files routes: /static/
(immutable), /media/ and /protected/ (internal: only through the
/download/NAME view's X-Accel-Redirect).

These tests check, with real clients trusting only certs/dev-ca.crt:
- a collected static file comes from switchyard even with every gunicorn
  dead (so it cannot have come from one), byte-exact, with its validators,
  304 on a conditional GET, and gzip when accepted;
- an upload kept by Django is served under /media/;
- a protected download through X-Accel-Redirect is byte-exact with the
  view's Content-Disposition, and /protected/ itself is 404;
- while as many stalled downloads are open as gunicorn has sync workers in
  all, Django views still answer at once: the workers are free while the
  bytes flow.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import os
import re
import socket
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from conftest import wait_until
from test_django import (BASE, EXAMPLE, GUNICORNS, SITE, all_up, client, csrf_token,
                         ctx, django_stack, kill_service, metrics, run_sh, ORIGIN)

DATA = EXAMPLE / ".data"
STATIC_ROOT = DATA / "static"
MEDIA_ROOT = DATA / "media"
PROTECTED_ROOT = DATA / "protected"
RUN_SH_TEXT = (EXAMPLE / "run.sh").read_text()
BIG_FILE = re.search(r'^BIG_FILE="([^"]+)"', RUN_SH_TEXT, re.M).group(1)
HTTPS_PORT = 18443
IMMUTABLE = "public, max-age=31536000, immutable"


def gunicorn_workers() -> int:
    """Sync workers in all, as run.sh starts them: --workers N per instance."""
    per_instance = int(re.search(r"gunicorn\" --workers (\d+) --worker-class sync",
                                 RUN_SH_TEXT).group(1))
    return per_instance * len(GUNICORNS)


@pytest.fixture(scope="module", autouse=True)
def stack():
    yield from django_stack()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def static_urls() -> list[str]:
    """The stylesheet and script the home page links to, as Django renders them
    (hashed names from the manifest)."""
    with client() as c:
        r = c.get("/")
    assert r.status_code == 200, r.text[:300]
    urls = re.findall(r'(?:href|src)="(/static/[^"]+)"', r.text)
    assert any(u.endswith(".css") for u in urls) and any(u.endswith(".js") for u in urls), urls
    # ManifestStaticFilesStorage: chat.<12 hex>.js
    assert all(re.search(r"\.[0-9a-f]{12}\.(css|js)$", u) for u in urls), urls
    return urls


def on_disk(url: str, root: Path, prefix: str) -> Path:
    assert url.startswith(prefix), url
    return root / unquote(url[len(prefix):])


def check_file_response(r: httpx.Response, path: Path, content_type: str):
    st = path.stat()
    data = path.read_bytes()
    assert r.status_code == 200, (r.url, r.status_code, r.text[:300])
    assert r.content == data, f"{r.url}: {len(r.content)} bytes, {path} has {len(data)}"
    assert int(r.headers["content-length"]) == len(data), r.headers
    assert r.headers["content-type"].startswith(content_type), r.headers
    assert r.headers["accept-ranges"] == "bytes", r.headers
    assert "content-encoding" not in r.headers, r.headers
    # Strong ETag: "<mtime secs hex>-<len hex>".
    assert r.headers["etag"] == f'"{int(st.st_mtime):x}-{len(data):x}"', r.headers
    assert int(parsedate_to_datetime(r.headers["last-modified"]).timestamp()) == int(st.st_mtime)


# --- (a) static files ------------------------------------------------------------------

def test_static_files_come_from_switchyard_not_gunicorn():
    """Every gunicorn is killed; the page's CSS and JS still arrive, byte for
    byte, with validators, and a conditional GET is 304. A Django view answers
    the site's 502 page meanwhile, so nothing could have come from a worker."""
    urls = static_urls()
    killed = []
    try:
        for name in GUNICORNS:
            kill_service(name)
            killed.append(name)
        for http2 in (False, True):
            with client(http2) as c:
                r = c.get("/info")
                assert r.status_code == 502, (r.status_code, r.text[:300])
                assert 'id="switchyard-error" data-status="502"' in r.text, r.text[:300]
                for url in urls:
                    path = on_disk(url, STATIC_ROOT, "/static/")
                    ctype = "text/css" if url.endswith(".css") else ""
                    r = c.get(url, headers={"Accept-Encoding": "identity"})
                    assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                    check_file_response(r, path, ctype)
                    if url.endswith(".js"):
                        assert r.headers["content-type"].split(";")[0] in (
                            "text/javascript", "application/javascript"), r.headers
                    assert r.headers["cache-control"] == IMMUTABLE, r.headers
                    etag, last_modified = r.headers["etag"], r.headers["last-modified"]
                    for cond in ({"If-None-Match": etag}, {"If-None-Match": f"W/{etag}"},
                                 {"If-Modified-Since": last_modified}):
                        r304 = c.get(url, headers={"Accept-Encoding": "identity", **cond})
                        assert r304.status_code == 304, (url, cond, r304.status_code)
                        assert r304.content == b"", (url, cond)
                        assert r304.headers["etag"] == etag, (url, cond, r304.headers)
                    r = c.get(url, headers={"Accept-Encoding": "identity",
                                            "If-None-Match": '"something-else"'})
                    assert r.status_code == 200 and r.content == path.read_bytes()
                    r = c.get(url, headers={"Accept-Encoding": "identity", "Range": "bytes=10-19"})
                    assert r.status_code == 206, (url, r.status_code)
                    assert r.content == path.read_bytes()[10:20]
                    assert r.headers["content-range"] == f"bytes 10-19/{path.stat().st_size}"
                r = c.get("/static/chatsite/no-such-file.css")
                assert r.status_code == 404, r.status_code
    finally:
        for name in killed:
            run_sh("start-one", name)
        wait_until(all_up, 30, "every gunicorn up again")
    print(f"\nwith both gunicorns dead: {', '.join(urls)} served 200/304/206 over h1 and h2; "
          "/info answered the site's 502 page")


def test_static_head_and_other_methods():
    """HEAD: the headers of GET, no body. Other methods: 405 from switchyard
    (a files-only route), never a worker."""
    url = static_urls()[0]
    path = on_disk(url, STATIC_ROOT, "/static/")
    with client() as c:
        r = c.head(url, headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200 and r.content == b"", (r.status_code, r.content[:100])
    assert int(r.headers["content-length"]) == path.stat().st_size, r.headers
    assert r.headers["etag"] and r.headers["last-modified"], r.headers
    for method in ("POST", "PUT", "DELETE"):
        # A connection each: see test_early_answer_then_body_keeps_connection_or_says_close.
        with client() as c:
            r = c.request(method, url, content=b"x")
        assert r.status_code == 405, (method, r.status_code)
        allow = {m.strip() for m in r.headers["allow"].split(",")}
        assert allow == {"GET", "HEAD"}, (method, r.headers)


@pytest.mark.parametrize("method,path,status", [
    ("POST", "/static/chatsite/site.css", 405),
    ("POST", f"/protected/{BIG_FILE}", 404),
])
def test_early_answer_then_body_keeps_connection_or_says_close(method, path, status):
    """HTTP/1.1: the proxy answers before the body is sent (the client sends it
    only after reading the answer, so no timing is involved). Then it either
    said `Connection: close`, or it reads past the body and answers the next
    request on the same connection, as nginx does (it discards the body)."""
    s = tls_connect()
    try:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost:{HTTPS_PORT}\r\n"
                  "Content-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\n".encode())
        got, headers, rest = read_head(s)
        assert got == status, (got, headers)
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            chunk = s.recv(65536)
            assert chunk, "closed inside the response body"
            rest += chunk
        if "close" in headers.get("connection", "").lower():
            return
        try:
            s.sendall(b"hello")
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: localhost:{HTTPS_PORT}\r\n\r\n".encode())
            nxt, _, _ = read_head(s)
        except (OSError, AssertionError) as e:
            raise AssertionError(f"{method} {path} answered {got} without Connection: close "
                                 f"({headers}), then the next request on the connection "
                                 f"failed: {e!r}") from None
        assert nxt == 200, nxt
    finally:
        s.close()


def test_static_gzip_sibling():
    """run.sh writes FILE.gz beside each CSS/JS file; a client that accepts
    gzip gets it with Content-Encoding and Vary, the original's type."""
    for url in static_urls():
        path = on_disk(url, STATIC_ROOT, "/static/")
        gz = path.with_name(path.name + ".gz")
        assert gz.is_file(), gz
        with httpx.Client(verify=ctx(), base_url=BASE, timeout=10) as c:
            with c.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as r:
                raw = b"".join(r.iter_raw())
        assert r.status_code == 200, (url, r.status_code)
        assert r.headers["content-encoding"] == "gzip", r.headers
        assert "accept-encoding" in r.headers["vary"].lower(), r.headers
        assert raw == gz.read_bytes(), f"{url}: got {len(raw)} bytes, {gz} has {gz.stat().st_size}"
        assert int(r.headers["content-length"]) == gz.stat().st_size
        assert gzip.decompress(raw) == path.read_bytes()
        want = "text/css" if url.endswith(".css") else "text/javascript"
        assert r.headers["content-type"].split(";")[0] in (want, "application/javascript"), r.headers
        # gzip refused (q=0): the file itself.
        with httpx.Client(verify=ctx(), base_url=BASE, timeout=10) as c:
            r = c.get(url, headers={"Accept-Encoding": "gzip;q=0, identity"})
        assert r.status_code == 200 and "content-encoding" not in r.headers, r.headers
        assert r.content == path.read_bytes()


@pytest.mark.parametrize("path", [
    "/static/%2e%2e/%2e%2e/chatsite/settings.py",
    "/static/..%2f..%2fchatsite%2fsettings.py",
    "/static/staticfiles.json%00.css",
    "/media/%2e%2e/protected/" + BIG_FILE,
])
def test_static_path_traversal_is_404(path):
    """Nothing outside a files route's directory, not even another route's."""
    s = tls_connect()
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost:{HTTPS_PORT}\r\n"
                  "Connection: close\r\n\r\n".encode())
        status, _, _ = read_head(s)
    finally:
        s.close()
    assert status == 404, (path, status)


# --- media ---------------------------------------------------------------------------

def test_upload_kept_by_django_is_served_from_media():
    data = os.urandom(300_000)
    name = f"e2e-{uuid.uuid4().hex[:8]}.bin"
    with client() as c:
        token = csrf_token(c, "/upload")
        r = c.post("/upload", data={"csrfmiddlewaretoken": token, "save": "1"},
                   files={"file": (name, data, "application/octet-stream")},
                   headers={"Origin": ORIGIN})
        assert r.status_code == 200, r.text[:300]
        url = r.json()["url"]
        path = on_disk(url, MEDIA_ROOT, "/media/")
        try:
            assert path.read_bytes() == data
            r = c.get(url)
            check_file_response(r, path, "application/octet-stream")
            assert r.headers["cache-control"] == "public, max-age=3600", r.headers
            r = c.get("/media/uploads/no-such-upload.bin")
            assert r.status_code == 404
        finally:
            path.unlink(missing_ok=True)
        # Gone from disk: gone from the site, no reload needed.
        assert c.get(url).status_code == 404


# --- (b) protected downloads -------------------------------------------------------------

@pytest.fixture(scope="module")
def big():
    path = PROTECTED_ROOT / BIG_FILE
    assert path.is_file(), path
    return path, path.stat().st_size, sha256_file(path)


def download_link(name: str) -> str:
    """The signed link the /downloads page gives for `name`."""
    with client() as c:
        r = c.get("/downloads")
    assert r.status_code == 200, r.text[:300]
    links = {html.unescape(m.group(1)): html.unescape(m.group(2))
             for m in re.finditer(r'data-name="([^"]+)" href="([^"]+)"', r.text)}
    assert name in links, r.text
    return links[name]


def test_protected_download_through_x_accel_redirect(big):
    path, size, digest = big
    link = download_link(BIG_FILE)
    assert link.startswith(f"/download/{BIG_FILE}?token="), link
    etag = None
    with client(False) as c:
        t = time.monotonic()
        h = hashlib.sha256()
        n = 0
        with c.stream("GET", link, headers={"Accept-Encoding": "identity"}) as r:
            assert r.status_code == 200, (r.status_code, r.read()[:300])
            for chunk in r.iter_raw(1 << 20):
                h.update(chunk)
                n += len(chunk)
        took = time.monotonic() - t
        # From the view: Content-Type and Content-Disposition kept.
        assert r.headers["content-type"] == "application/octet-stream", r.headers
        assert r.headers["content-disposition"] == f'attachment; filename="{BIG_FILE}"', r.headers
        assert r.headers["cache-control"] == "private", r.headers
        # From the file.
        assert int(r.headers["content-length"]) == size, r.headers
        assert r.headers["accept-ranges"] == "bytes", r.headers
        etag = r.headers["etag"]
        # Never to the client.
        assert "x-accel-redirect" not in r.headers, r.headers
        assert (n, h.hexdigest()) == (size, digest), f"got {n} bytes, sha256 {h.hexdigest()}"
    print(f"\n{BIG_FILE}: {size} bytes through X-Accel-Redirect in {took:.2f}s, sha256 ok")

    with client(True) as c:
        # Range and conditional requests apply to the file.
        r = c.get(link, headers={"Range": "bytes=1000000-1000999"})
        assert r.status_code == 206, r.status_code
        assert r.http_version == "HTTP/2"
        with open(path, "rb") as f:
            f.seek(1000000)
            assert r.content == f.read(1000)
        assert r.headers["content-range"] == f"bytes 1000000-1000999/{size}", r.headers
        assert r.headers["content-disposition"] == f'attachment; filename="{BIG_FILE}"'
        r = c.get(link, headers={"Range": f"bytes={size}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}", \
            (r.status_code, r.headers)
        r = c.get(link, headers={"If-None-Match": etag})
        assert r.status_code == 304 and r.content == b"", (r.status_code, r.headers)
        assert "x-accel-redirect" not in r.headers

        # The view decides: no token, or another file's token, is Django's 403.
        r = c.get(f"/download/{BIG_FILE}")
        assert r.status_code == 403 and "not valid" in r.text, (r.status_code, r.text[:200])
        r = c.get(link.replace(f"/download/{BIG_FILE}?", "/download/other.bin?"))
        assert r.status_code == 403, r.status_code

    # The internal route itself is not reachable, over either protocol.
    for http2 in (False, True):
        with client(http2) as c:
            for p in (f"/protected/{BIG_FILE}", "/protected/", "/protected"):
                r = c.get(p)
                assert r.status_code == 404, (http2, p, r.status_code)
                assert len(r.content) < 10000, (http2, p, len(r.content))


# --- (c) slow clients do not hold workers ---------------------------------------------------

def tls_connect(rcvbuf: int | None = None) -> ssl.SSLSocket:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", HTTPS_PORT))
    return ctx().wrap_socket(raw, server_hostname="localhost")


def read_head(s: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and whatever body came with them."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before the response head: {buf[:200]!r}")
        buf += chunk
        assert len(buf) < 1 << 20, "response head too long"
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


class StalledDownload:
    """A download that reads its head and a little of the body, then stops
    reading (the kernel buffers fill and the proxy has to wait)."""

    def __init__(self, link: str, first: int):
        self.s = tls_connect(rcvbuf=32 * 1024)
        ua = f"e2e-stalled-{uuid.uuid4().hex[:8]}"
        self.s.sendall(f"GET {link} HTTP/1.1\r\nHost: localhost:{HTTPS_PORT}\r\n"
                       f"User-Agent: {ua}\r\nAccept-Encoding: identity\r\n\r\n".encode())
        self.status, self.headers, self.body = read_head(self.s)
        self.hash = hashlib.sha256()
        self.received = 0
        self._take(self.body)
        while self.received < first:
            chunk = self.s.recv(min(65536, first - self.received))
            assert chunk, "closed early"
            self._take(chunk)

    def _take(self, chunk: bytes):
        self.hash.update(chunk)
        self.received += len(chunk)

    def finish(self, size: int) -> str:
        while self.received < size:
            chunk = self.s.recv(1 << 20)
            assert chunk, f"closed after {self.received} of {size} bytes"
            self._take(chunk)
        assert self.received == size
        return self.hash.hexdigest()

    def close(self):
        self.s.close()


def test_stalled_downloads_do_not_hold_gunicorn_workers(big):
    path, size, digest = big
    workers = gunicorn_workers()
    link = download_link(BIG_FILE)
    stalled: list[StalledDownload] = []
    try:
        for _ in range(workers):
            d = StalledDownload(link, first=256 * 1024)
            stalled.append(d)
            assert d.status == 200, (d.status, d.headers)
            assert d.headers["content-disposition"] == f'attachment; filename="{BIG_FILE}"'
            assert int(d.headers["content-length"]) == size
        # No request is in a gunicorn worker now, though every download is open
        # and far from complete (the proxy holds what the clients do not read).
        in_flight = lambda: sum(v for _, v in metrics().series(
            "switchyard_upstream_in_flight", site=SITE, pool="django"))
        wait_until(lambda: in_flight() == 0, 5, "no request in flight on the django pool")

        # As many concurrent views as there are workers in all: each needs a
        # worker at once, and with every worker free they finish together
        # (a held worker would queue one until queue_timeout, 10s, then 503).
        def view(i):
            with client() as c:
                t = time.monotonic()
                r = c.get("/slow", params={"seconds": "1"})
                return r.status_code, r.json().get("instance") if r.status_code == 200 else r.text, \
                    time.monotonic() - t
        t = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(view, range(workers)))
        took = time.monotonic() - t
        assert [s for s, _, _ in results] == [200] * workers, results
        assert took < 5, f"{workers} one-second views took {took:.2f}s: {results}"
        with client() as c:
            t = time.monotonic()
            r = c.get("/info")
            info_took = time.monotonic() - t
        assert r.status_code == 200 and info_took < 2, (r.status_code, info_took)

        # Still incomplete, still alive: each download goes on where it stopped.
        assert all(d.received < size for d in stalled)
        for d in stalled[1:]:
            more = d.s.recv(65536)
            assert more, "a stalled download was closed"
            d._take(more)
        got = stalled[0].finish(size)
        assert got == digest, "the download that resumed is not the file"
        print(f"\n{workers} stalled downloads of {size} bytes open (read "
              f"{[d.received for d in stalled[1:]]} + 1 finished byte-exact afterwards); "
              f"{workers} concurrent /slow?seconds=1 in {took:.2f}s on "
              f"{sorted(i for _, i, _ in results)}; /info in {info_took * 1000:.0f}ms")
    finally:
        for d in stalled:
            d.close()
