"""Issue 7 point 3: a real browser (headless Chromium) through switchyard.

e2e/browser/chat.js drives Debian's /usr/bin/chromium with playwright-core:
two browser contexts open the Django example's chat page at
https://localhost:18443/, trusting the example's CA through an NSS database
(certutil), join one room, and a message typed in one appears in the other.
This wrapper checks the browser's report and switchyard's side of it: the
metric `switchyard_requests_total{route="ws"}` and the access log tell an
HTTP/2 extended CONNECT (RFC 8441, answered 200) from an HTTP/1.1 upgrade
(answered 101). Issue 17: the pages arrived compressed at the proxy
(`compress = true`; DevTools' Content-Encoding, the Performance API's
encodedBodySize below decodedBodySize), and the /catalog page, with its
SVG compressed too, renders whole.

Nothing is installed here and nothing is skipped: a missing Chromium, certutil,
Node.js or e2e/browser/node_modules fails the test with what to install
(.ci/run installs them). Screenshots are kept in e2e/artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import example_backend, DEV_CA, REPO, wait_until
from test_django import django_stack, metrics

EXAMPLE = REPO / "examples" / "django"
RUN_DIR = Path(os.environ.get("RUN_DIR", EXAMPLE / ".run"))
BROWSER_DIR = REPO / "e2e" / "browser"
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", REPO / "e2e" / "artifacts"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BASE = "https://localhost:18443"
ADMIN = "127.0.0.1:19901"
SITE = "django"


def backend(name: str) -> str:
    return example_backend(name, RUN_DIR)


# Backend name -> its server string in the site file (the `server` metric label,
# the access log's `upstream`): the backends listen on unix sockets in RUN_DIR.
DAPHNES = {n: backend(n) for n in ("daphne-1", "daphne-2")}
GUNICORNS = {n: backend(n) for n in ("gunicorn-1", "gunicorn-2")}


def require_tools():
    """Fail (never skip) with what to install when a tool is missing."""
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"Chromium at {CHROMIUM}: install the Debian package `chromium` "
                       "(apt-get install chromium)")
    if shutil.which("certutil") is None:
        missing.append("certutil (makes the NSS database that trusts certs/dev-ca.crt): "
                       "install the Debian package `libnss3-tools`")
    node = shutil.which("node")
    if node is None:
        missing.append("node (Node.js): install the Debian package `nodejs`")
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append(f"{BROWSER_DIR / 'node_modules' / 'playwright-core'}: "
                       "run `npm ci` in e2e/browser")
    if missing:
        pytest.fail("the browser test needs:\n  - " + "\n  - ".join(missing) +
                    "\n(.ci/run installs all of these)", pytrace=False)
    return node


@pytest.fixture(scope="module")
def node():
    return require_tools()


@pytest.fixture(scope="module")
def stack(node):
    yield from django_stack()


def access_lines(room: str) -> list[dict[str, str]]:
    """switchyard's access-log lines for the WebSocket handshakes into `room`."""
    log = RUN_DIR / "switchyard.log"
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if "switchyard::access" in line and f'path="/ws/chat/{room}/"' in line:
            out.append(dict(re.findall(r'(\w+)="?([^"\s]*)"?', line.split("switchyard::access:", 1)[1])))
    return out


def run_browser(node: str, mode: str, room: str) -> dict:
    env = {**os.environ, "BASE": BASE, "CA_CERT": str(DEV_CA), "ROOM": room,
           "ARTIFACTS": str(ARTIFACTS), "CHROMIUM": CHROMIUM, "MODE": mode}
    try:
        r = subprocess.run([node, str(BROWSER_DIR / "chat.js")], cwd=BROWSER_DIR, env=env,
                           capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"chat.js did not finish in 90s:\n{e.stderr}")
    print(r.stderr)
    lines = r.stdout.strip().splitlines()
    assert lines, f"chat.js printed nothing (exit {r.returncode}):\n{r.stderr}"
    result = json.loads(lines[-1])
    assert r.returncode == 0 and result["ok"], \
        f"chat.js failed (exit {r.returncode}): {result.get('error')}\n{json.dumps(result, indent=1)}"
    return result


@pytest.mark.parametrize("mode", ["h2", "h1"])
def test_chromium_chat_through_switchyard(stack, node, mode):
    """h2: Chromium as it ships (the path users get); h1: with --disable-http2."""
    room = f"browser-{mode}-{uuid.uuid4().hex[:8]}"
    before = metrics()
    res = run_browser(node, mode, room)

    # --- the browser's side -------------------------------------------------------
    page_proto = "h2" if mode == "h2" else "http/1.1"
    ws_status = 200 if mode == "h2" else 101
    for name in ("a", "b"):
        p = res["pages"][name]
        assert p["nextHopProtocol"] == page_proto, (name, p)
        assert p["secureContext"] is True and p["isSecure"] == "True", (name, p)
        assert p["wsState"] == "open" and p["daphne"] in DAPHNES, (name, p)
    if mode == "h2":
        # Trust comes from the CA in the NSS db: without it Chromium refuses.
        assert res["untrusted"] == "net::ERR_CERT_AUTHORITY_INVALID", res["untrusted"]
    # Issue 17: the documents came compressed with the coding the browser
    # prefers (ties: zstd, br, gzip) and decoded to what rendered above.
    codings = ("zstd", "br", "gzip")

    def preferred(accept_encoding):
        offered = {t.split(";")[0].strip().lower() for t in (accept_encoding or "").split(",")}
        return next((c for c in codings if c in offered), None)
    for name in ("a", "b"):
        p = res["pages"][name]
        doc = p["document"]
        assert doc and doc["status"] == 200, (name, doc)
        assert doc["contentEncoding"] in codings, (name, doc)
        assert doc["contentEncoding"] == preferred(doc["acceptEncoding"]), (name, doc)
        assert "accept-encoding" in (doc["vary"] or "").lower(), (name, doc)
        assert 0 < p["encodedBodySize"] < p["decodedBodySize"], (name, p)
    cat = res["catalog"]
    n_rows = cat["expectedRows"]
    assert cat["rows"] == n_rows and cat["lastRow"] == f"SKU-{n_rows - 1:06d}", cat
    assert cat["nextHopProtocol"] == page_proto, cat
    cat_doc = cat["responses"]["/catalog"]
    assert cat_doc["status"] == 200 and cat_doc["contentEncoding"] in codings, cat_doc
    assert 0 < cat["encodedBodySize"] * 3 < cat["decodedBodySize"], cat
    svg = cat["responses"][cat["imgPath"]]
    assert svg["status"] == 200 and svg["contentEncoding"] in codings, svg
    assert cat["imgComplete"] and cat["imgNaturalWidth"] == 64, cat
    assert 0 < cat["svgEncodedBodySize"] < cat["svgDecodedBodySize"], cat
    assert Path(cat["screenshot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    sockets = res["websockets"]
    assert len(sockets) >= 2, sockets
    # DevTools' handshake status: 200 is the answer to an HTTP/2 extended
    # CONNECT (RFC 8441), 101 an HTTP/1.1 upgrade.
    assert [s.get("status") for s in sockets] == [ws_status] * len(sockets), sockets
    assert all(s["url"] == f"wss://localhost:18443/ws/chat/{room}/" for s in sockets), sockets
    # The two contexts sit on different daphne instances: the message crossed Redis.
    assert res["spread"] and res["pages"]["a"]["daphne"] != res["pages"]["b"]["daphne"], \
        res["pages"]
    via = res["pages"]["a"]["daphne"]
    assert res["received"]["b"] == f"{res['message']}  (via {via})", res["received"]
    assert res["received"]["a"] == f"{res['message']}  (via {via})", res["received"]
    for key in ("screenshot", "screenshotSender"):
        shot = Path(res[key])
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot

    # --- switchyard's side --------------------------------------------------------
    def settled():
        m = metrics()
        active = lambda x: x.get("switchyard_websocket_sessions_active", site=SITE, route="ws")
        return m if active(m) == active(before) else None
    after = wait_until(settled, 10, "the browser's WebSocket sessions to end")
    d = lambda name, **l: after.get(name, site=SITE, **l) - before.get(name, site=SITE, **l)
    n = len(sockets)
    by_status = {s: d("switchyard_requests_total", route="ws", status=str(s)) for s in (101, 200)}
    methods = sorted({l["method"] for l, v in after.series("switchyard_requests_total", site=SITE,
                                                            route="ws", status=str(ws_status))
                      if v - before.get("switchyard_requests_total", site=SITE, route="ws",
                                        method=l["method"], status=str(ws_status)) > 0})
    assert by_status == {101: (0 if mode == "h2" else n), 200: (n if mode == "h2" else 0)}, \
        by_status
    assert d("switchyard_websocket_sessions_total", route="ws") == n
    # Page a, page b (loaded once or more) and the catalog; the SVG.
    compressed = {r: d("switchyard_compressed_responses_total", route=r) for r in ("app", "static")}
    assert compressed["app"] >= 3 and compressed["static"] >= 1, compressed

    # Each WebSocket has two access-log lines: its handshake request, and its
    # session (websocket=true) when it ends.
    sessions = lambda l: [x for x in l if x.get("websocket") == "true"]
    all_lines = wait_until(lambda: (l := access_lines(room)) and len(sessions(l)) >= n
                           and len(l) >= 2 * n and l, 5,
                           "the access log lines of the sessions")
    lines = sessions(all_lines)
    assert len(lines) == n and len(all_lines) == 2 * n, all_lines
    assert [l["status"] for l in all_lines] == [str(ws_status)] * (2 * n), all_lines
    assert {l["client"] for l in all_lines} == {"127.0.0.1"}, all_lines
    assert sorted({l["upstream"] for l in lines}) == sorted(DAPHNES.values()), lines

    print(f"\n{mode}: Chromium {res['browserVersion']}: page over {page_proto} (a: "
          f"{res['pages']['a']['gunicorn']}, b: {res['pages']['b']['gunicorn']}); "
          f"{n} WebSocket handshakes answered {ws_status} "
          f"({'HTTP/2 extended CONNECT, RFC 8441' if mode == 'h2' else 'HTTP/1.1 upgrade'}); "
          f"a on {res['pages']['a']['daphne']}, b on {res['pages']['b']['daphne']}; "
          f"b received {res['received']['b']!r}; switchyard_requests_total{{route=\"ws\"}} "
          f"+{n} status {ws_status} (method label {methods}), +0 status "
          f"{101 if mode == 'h2' else 200}; access log: "
          + "; ".join(f"{l['method']} {l['path']} {l['status']} -> {l['upstream']}" for l in lines)
          + f"; screenshot {res['screenshot']}; documents "
          f"{res['pages']['a']['document']['contentEncoding']} (Accept-Encoding "
          f"{res['pages']['a']['document']['acceptEncoding']!r}): page a "
          f"{res['pages']['a']['encodedBodySize']} -> {res['pages']['a']['decodedBodySize']} bytes, "
          f"/catalog {cat['encodedBodySize']} -> {cat['decodedBodySize']} bytes ({cat['rows']} rows "
          f"rendered), SVG {svg['contentEncoding']} {cat['svgEncodedBodySize']} -> "
          f"{cat['svgDecodedBodySize']} bytes; switchyard_compressed_responses_total +{compressed}")
