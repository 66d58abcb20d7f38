"""Issue 17: compression at the proxy, in the Django example.

examples/django/switchyard/sites/django.toml has `compress = true` on the app
route (gunicorn) and on the /static/ files route; Django has no
GZipMiddleware, so every gunicorn answer leaves the worker plain. These
tests check, with real clients and real decoders (Python's gzip/zlib,
brotli and zstandard, curl --compressed; Chromium in test_browser.py):

- a Django page (HTML) and a JSON view, for each of zstd, br and gzip, over
  HTTP/1.1 and HTTP/2, decode to exactly the bytes gunicorn sends for the
  same request straight on its unix socket, and gunicorn's access log shows
  it sent that many bytes (plain) for the proxied request; Vary merged, no
  Content-Length, the view's strong ETag made weak;
- Accept-Encoding with q-values picks the coding; no-transform, HEAD and
  small bodies pass plain;
- a static file without a precompressed sibling is compressed at the proxy;
- a streaming view's first piece reaches the client, decoded, while the view
  is still waiting (on a Redis key only the test sets) to send the next;
- switchyard_compressed_responses_total counts exactly the compressed answers.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
import zlib

import brotli
import httpx
import pytest
import redis
import zstandard

from conftest import DEV_CA, wait_until
from test_django import RUN_DIR, SITE, all_up, client, django_stack, metrics, run_sh
from test_django_files import STATIC_ROOT

BASE = "https://localhost:18443"
CODINGS = ["zstd", "br", "gzip"]
REDIS_PORT = 16379
# A page and a JSON view whose bytes depend on the query string alone
# (chatsite.views.catalog and catalog_json): `tag` only makes the request
# line unique in gunicorn's access log.
VIEWS = {"html": ("/catalog", "text/html"), "json": ("/catalog.json", "application/json")}


@pytest.fixture(scope="module", autouse=True)
def stack():
    yield from django_stack()


# --- decoders: the whole body, one stream, nothing after it -------------------------

def decode(coding: str, raw: bytes) -> bytes:
    if coding == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = d.decompress(raw) + d.flush()
        assert d.eof and d.unused_data == b"", "gzip stream incomplete or followed by bytes"
        return out
    if coding == "br":
        d = brotli.Decompressor()
        out = d.process(raw)
        assert d.is_finished(), "brotli stream incomplete"
        return out
    if coding == "zstd":
        d = zstandard.ZstdDecompressor().decompressobj()
        out = d.decompress(raw)
        assert d.eof and d.unused_data == b"", "zstd frame incomplete or followed by bytes"
        return out
    raise AssertionError(coding)


def vary(r: httpx.Response) -> list[str]:
    return [v.strip().lower() for line in r.headers.get_list("vary") for v in line.split(",")]


def fetch_raw(c: httpx.Client, url: str, accept: str, method: str = "GET"):
    """The response and its body exactly as sent (not decoded by httpx)."""
    with c.stream(method, url, headers={"Accept-Encoding": accept}) as r:
        return r, b"".join(r.iter_raw())


def direct(path: str, instance: str = "gunicorn-1") -> httpx.Response:
    """`path` straight from a gunicorn's unix socket, no proxy in between."""
    transport = httpx.HTTPTransport(uds=str(RUN_DIR / f"{instance}.sock"))
    with httpx.Client(transport=transport, base_url="http://localhost", timeout=30) as c:
        r = c.get(path, headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert "content-encoding" not in r.headers, r.headers
    return r


def gunicorn_sent(request_line: str) -> int:
    """The body bytes gunicorn's access log says it sent for `request_line`
    (the default format: ... "GET /path HTTP/1.1" STATUS BYTES ...)."""
    pat = re.compile(re.escape(f'"{request_line}" 200 ') + r"(\d+)")

    def find():
        hits = [int(m.group(1)) for name in ("gunicorn-1", "gunicorn-2")
                for m in pat.finditer((RUN_DIR / f"{name}.log").read_text(errors="replace"))]
        return hits or None
    hits = wait_until(find, 10, f"gunicorn's access-log line for {request_line}")
    assert len(hits) == 1, (request_line, hits)
    return hits[0]


def tag() -> str:
    return uuid.uuid4().hex[:12]


# --- (a) pages and JSON: every coding, both protocols ---------------------------------

@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("coding", CODINGS)
def test_django_view_compressed_at_proxy_round_trips(http2, view, coding):
    path, ctype = VIEWS[view]
    rows = 300 if view == "html" else 2000       # ~19 KiB of HTML, ~150 KiB of JSON
    ref = direct(f"{path}?rows={rows}&tag=direct-{tag()}")
    plain = ref.content
    assert len(plain) > 16 * 1024, len(plain)    # more than one compressed chunk's worth
    assert ref.headers["etag"].startswith('"'), ref.headers   # the view's strong ETag

    url = f"{path}?rows={rows}&tag={tag()}"
    with client(http2) as c:
        r, raw = fetch_raw(c, url, coding)
    assert r.status_code == 200, (r.status_code, raw[:200])
    assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert r.headers["content-type"].startswith(ctype), r.headers
    assert r.headers.get("content-encoding") == coding, r.headers
    assert "content-length" not in r.headers, r.headers
    assert vary(r).count("accept-encoding") == 1 and "cookie" in vary(r), r.headers
    assert r.headers["etag"] == "W/" + ref.headers["etag"], (r.headers, ref.headers)
    body = decode(coding, raw)
    assert body == plain, f"{coding} over {r.http_version}: {len(body)} bytes decoded, " \
        f"gunicorn sends {len(plain)}"
    assert len(raw) * 3 < len(plain), (len(raw), len(plain))
    # gunicorn itself sent it plain: its access log counts the plain bytes
    # for this very request (Django would have sent fewer, compressed).
    assert gunicorn_sent(f"GET {url} HTTP/1.1") == len(plain)
    print(f"\n{view} over {r.http_version}, {coding}: {len(plain)} -> {len(raw)} bytes "
          f"({len(plain) / len(raw):.1f}x)")


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_identity_and_opt_outs_pass_plain(http2):
    """identity, Cache-Control: no-transform from the view, HEAD, and a body
    under 1 KiB: Django's answer unchanged, Content-Length and strong ETag
    included."""
    ref = direct(f"/catalog?rows=300&tag=direct-{tag()}")
    with client(http2) as c:
        for url, accept in ((f"/catalog?rows=300&tag={tag()}", "identity"),
                            (f"/catalog?rows=300&no_transform=1&tag={tag()}", "gzip, br, zstd")):
            r, raw = fetch_raw(c, url, accept)
            assert r.status_code == 200 and "content-encoding" not in r.headers, (url, r.headers)
            assert raw == ref.content, (url, len(raw), len(ref.content))
            assert int(r.headers["content-length"]) == len(ref.content), r.headers
            assert r.headers["etag"] == ref.headers["etag"], r.headers
        r, raw = fetch_raw(c, "/catalog?rows=300", "gzip", method="HEAD")
        assert r.status_code == 200 and raw == b"" and "content-encoding" not in r.headers, \
            r.headers
        small = direct("/catalog.json?rows=2").content
        assert len(small) < 1024
        r, raw = fetch_raw(c, "/catalog.json?rows=2", "gzip, br, zstd")
        assert "content-encoding" not in r.headers and raw == small, (r.headers, raw)


def test_identity_answer_of_a_compress_route_varies_on_accept_encoding():
    with client() as c:
        r, _ = fetch_raw(c, "/catalog?rows=300", "identity")
    assert "content-encoding" not in r.headers
    assert "accept-encoding" in vary(r), r.headers


@pytest.mark.parametrize("accept,want", [
    ("gzip, br, zstd", "zstd"),                          # ties: zstd, br, gzip
    ("gzip, br", "br"),
    ("gzip;q=1.0, br;q=0.5, zstd;q=0.2", "gzip"),       # q-values first
    ("zstd;q=0, br;q=0.8, gzip;q=0.9", "gzip"),
    ("*", "zstd"),
    ("br;q=0, zstd;q=0, *;q=0.5", "gzip"),              # refused ones stay refused under *
    ("gzip;q=0, br;q=0, zstd;q=0", None),
    ("deflate", None),
    ("identity", None),
])
def test_accept_encoding_q_values(accept, want):
    with client(True) as c:
        r, raw = fetch_raw(c, "/catalog?rows=100", accept)
    assert r.status_code == 200
    assert r.headers.get("content-encoding") == want, (accept, r.headers)
    plain = direct("/catalog?rows=100").content
    assert (decode(want, raw) if want else raw) == plain


# --- static files without a precompressed sibling -------------------------------------

@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_static_file_without_sibling_compressed_at_proxy(http2):
    """The SVG (no .gz beside it: run.sh makes those for CSS and JS only) is
    compressed as it is sent; a client that wants gzip of a CSS or JS file
    still gets the .gz from disk."""
    url = "/static/chatsite/switchyard.svg"
    data = (STATIC_ROOT / "chatsite" / "switchyard.svg").read_bytes()
    assert not (STATIC_ROOT / "chatsite" / "switchyard.svg.gz").exists()
    with client(http2) as c:
        plain, raw = fetch_raw(c, url, "identity")
        assert raw == data and int(plain.headers["content-length"]) == len(data)
        strong = plain.headers["etag"]
        assert strong.startswith('"'), plain.headers
        for coding in CODINGS:
            r, raw = fetch_raw(c, url, coding)
            assert r.status_code == 200, r.status_code
            assert r.headers["content-type"].startswith("image/svg+xml"), r.headers
            assert r.headers.get("content-encoding") == coding, r.headers
            assert "content-length" not in r.headers and "accept-ranges" not in r.headers, \
                r.headers
            assert r.headers["etag"] == "W/" + strong, r.headers
            assert vary(r) == ["accept-encoding"], r.headers
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert decode(coding, raw) == data, coding
        css = next(p for p in (STATIC_ROOT / "chatsite").glob("site.*.css"))
        r, raw = fetch_raw(c, f"/static/chatsite/{css.name}", "gzip")
        assert r.headers.get("content-encoding") == "gzip", r.headers
        assert raw == css.with_name(css.name + ".gz").read_bytes()   # the sibling, as it is


def test_static_304_for_a_compressed_file_has_the_etag_of_its_200():
    with client() as c:
        r, _ = fetch_raw(c, "/static/chatsite/switchyard.svg", "br")
        assert r.headers.get("content-encoding") == "br" and r.headers["etag"].startswith("W/")
        r304 = c.get("/static/chatsite/switchyard.svg",
                     headers={"Accept-Encoding": "br", "If-None-Match": r.headers["etag"]})
    assert r304.status_code == 304, r304.status_code
    assert r304.headers["etag"] == r.headers["etag"], (r304.headers, r.headers)


# --- (b) curl --compressed ---------------------------------------------------------------

@pytest.mark.parametrize("proto", ["--http1.1", "--http2"])
@pytest.mark.parametrize("coding", [None, *CODINGS])
def test_curl_compressed(tmp_path, proto, coding):
    """curl --compressed (libcurl's own decoders) gets the page byte-exact;
    None: curl's own Accept-Encoding (all it supports)."""
    version = subprocess.run(["curl", "-V"], capture_output=True, text=True, check=True).stdout
    features = version.split("Features:", 1)[1].split()
    for f in ("libz", "brotli", "zstd", "HTTP2"):
        assert f in features, f"this curl lacks {f}: {version}"
    plain = direct("/catalog?rows=300").content
    head, body = tmp_path / "head", tmp_path / "body"
    argv = ["curl", "-sS", "--fail", "--max-time", "30", "--cacert", str(DEV_CA), proto,
            "--compressed", "-D", str(head), "-o", str(body), "-w", "%{size_download}"]
    if coding:
        argv += ["-H", f"Accept-Encoding: {coding}"]
    r = subprocess.run(argv + [f"{BASE}/catalog?rows=300"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    headers = head.read_text().lower()
    got = re.search(r"^content-encoding:\s*(\S+)", headers, re.M)
    assert got and got.group(1) == (coding or "zstd"), headers
    assert ("HTTP/2 200" if proto == "--http2" else "HTTP/1.1 200") in head.read_text()
    assert body.read_bytes() == plain
    assert int(r.stdout) * 3 < len(plain), (r.stdout, len(plain))


# --- (d) a streaming view stays streaming ------------------------------------------------

@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_streaming_view_pieces_arrive_compressed_as_sent(http2):
    """chatsite.views.stream sends piece 1, then waits for the Redis key
    stream-gate:<gate> to reach 2 before piece 2, and 3 before piece 3. The
    test opens each gate only once it has decoded the piece before it, so
    every piece reaches the client, through gzip, while the view still holds
    the rest back: the encoder is flushed when the backend pauses."""
    gate = f"e2e-{tag()}"
    key = f"stream-gate:{gate}"
    pieces = 3
    rd = redis.Redis(port=REDIS_PORT, socket_timeout=5)
    rd.delete(key)
    # The whole page, straight from gunicorn, with every gate open already.
    rd.set(f"stream-gate:{gate}-ref", pieces)
    want = direct(f"/stream?gate={gate}-ref&pieces={pieces}").content
    rd.delete(f"stream-gate:{gate}-ref")
    assert b'id="end"' in want and b'id="timeout"' not in want, want[-200:]

    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    text = b""
    chunks = 0
    seen: list[tuple[int, float]] = []
    t0 = time.monotonic()
    try:
        with client(http2) as c:
            with c.stream("GET", f"/stream?gate={gate}&pieces={pieces}",
                          headers={"Accept-Encoding": "gzip"}) as r:
                assert r.status_code == 200, r.status_code
                assert r.headers.get("content-encoding") == "gzip", r.headers
                assert "content-length" not in r.headers, r.headers
                assert "accept-encoding" in vary(r), r.headers
                nxt = 1
                for chunk in r.iter_raw():
                    chunks += 1
                    text += d.decompress(chunk)
                    assert b'id="timeout"' not in text, \
                        f"piece {nxt} did not reach the client before the view gave up: {text[-300:]!r}"
                    while nxt <= pieces and text.count(b"</section>") >= nxt:
                        # Piece nxt is here, decoded, and nothing after it: the
                        # view is blocked on the gate only this test opens.
                        assert f'id="piece-{nxt + 1}"'.encode() not in text
                        seen.append((nxt, round(time.monotonic() - t0, 3)))
                        nxt += 1
                        if nxt <= pieces:
                            rd.set(key, nxt)
                text += d.flush()
    finally:
        rd.delete(key)
    assert [p for p, _ in seen] == list(range(1, pieces + 1)), seen
    assert d.eof and d.unused_data == b"", "the gzip stream did not end cleanly"
    assert text == want, (len(text), len(want))
    assert chunks >= pieces, chunks
    print(f"\nstream over {'h2' if http2 else 'h1'}: pieces decoded at {seen} (s), "
          f"{chunks} chunks, {len(want)} bytes")


# --- (e) the metric ------------------------------------------------------------------------

def test_compressed_responses_metric_counts_exactly():
    before = metrics()
    with client() as c:
        for accept in ("zstd", "zstd", "br", "gzip", "gzip", "gzip"):
            r, _ = fetch_raw(c, "/catalog?rows=300", accept)
            assert r.headers.get("content-encoding") == accept
        # Not compressed: identity, no-transform, HEAD, a small body, 404.
        for url, accept, method in (("/catalog?rows=300", "identity", "GET"),
                                    ("/catalog?rows=300&no_transform=1", "gzip", "GET"),
                                    ("/catalog?rows=300", "gzip", "HEAD"),
                                    ("/catalog.json?rows=1", "gzip", "GET"),
                                    ("/no-such-page", "gzip", "GET")):
            r, _ = fetch_raw(c, url, accept, method)
            assert "content-encoding" not in r.headers, (url, r.headers)
        # Static: the SVG compressed here, the CSS's .gz sibling is not counted.
        r, _ = fetch_raw(c, "/static/chatsite/switchyard.svg", "br")
        assert r.headers.get("content-encoding") == "br"
        r, _ = fetch_raw(c, "/static/chatsite/site.css", "gzip")
        assert r.headers.get("content-encoding") == "gzip"
    after = metrics()
    name = "switchyard_compressed_responses_total"
    assert f"# TYPE {name} counter" in after.text
    delta = {(route, e): after.get(name, site=SITE, route=route, encoding=e)
             - before.get(name, site=SITE, route=route, encoding=e)
             for route in ("app", "static") for e in CODINGS}
    assert delta == {("app", "zstd"): 2, ("app", "br"): 1, ("app", "gzip"): 3,
                     ("static", "zstd"): 0, ("static", "br"): 1, ("static", "gzip"): 0}, delta
    print(f"\n{name} deltas: {delta}")
