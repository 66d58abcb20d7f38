"""Issue 18, point 1: TLS 1.3 KeyUpdate from a client that is not rustls.

OpenSSL's `s_client` (3.0) runs interactive commands read from stdin: a read
from stdin whose first byte is `k` sends a KeyUpdate with update_not_requested,
`K` one with update_requested; either way s_client prints `KEYUPDATE` on
stderr and discards the rest of that read. switchyard must take the new
receive keys for both, and answer `K` with its own KeyUpdate and new send keys
(RFC 8446 §4.6.3), all without ending the session.

s_client runs with `-quiet -no_ign_eof`: `-quiet` sends nothing but the
application data to stdout (no "read R BLOCK" or session-ticket dumps, which
s_client otherwise writes through a stdio buffer flushed at random points),
and `-no_ign_eof` after it turns the command letters back on (`-quiet` alone
implies `-ign_eof`, which disables them). `-msg -msgfile` logs every TLS
message both ways to a file, read after a clean `Q`: s_client sent one
KeyUpdate per command with the right request_update, and the proxy answered
each `K` (and nothing else) with one KeyUpdate of its own, update_not_requested,
before any further application data.

Everything written to s_client's stdin is one write() of at most PIPE_BUF
bytes, so it is one read() at s_client, and the next write only happens after
the output it causes was seen (the response, the echo, or `KEYUPDATE`): a
command letter always starts its own read, and data never does with a letter.

1. HTTP/1.1 keep-alive: one connection, GETs (responses of 5 to 40 KiB, so
   several TLS records) alternating with `k` and `K`, ROUNDS of each.
2. A WebSocket relayed to an echo backend (the `websockets` package): the
   Upgrade and the 101 through s_client, then masked text frames of 1 to
   4000 bytes alternating with `k` and `K`, every echo checked byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import select
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from websockets.sync.server import serve as ws_serve

from conftest import DEV_CA, Switchyard, free_port, localhost_tls, wait_until, write_config

OPENSSL = os.environ.get("OPENSSL", "/usr/bin/openssl")
SITE = "keyupdate"
ROUNDS = 20          # `k` rounds and `K` rounds, each, per test
PIPE_BUF = 4096      # a pipe write up to this size is atomic (Linux)


# --- backends on 127.0.0.1, in this process ------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # /n/<tag>/<size>: <size> bytes that start with the tag and depend on it.
        parts = self.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "n":
            body = expected_body(parts[1], int(parts[2]))
        else:
            body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def expected_body(tag: str, size: int) -> bytes:
    seed = hashlib.sha256(tag.encode()).hexdigest().encode()
    unit = f"<{tag}>".encode() + seed + b"\n"
    return (unit * (size // len(unit) + 1))[:size]


@pytest.fixture(scope="module")
def http_backend():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def ws_backend():
    def echo(ws):
        for msg in ws:
            ws.send(msg)

    # No keepalive pings: the client side only expects echoes.
    srv = ws_serve(echo, "127.0.0.1", 0, ping_interval=None, compression=None)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.socket.getsockname()[1]}"
    srv.shutdown()


@pytest.fixture
def proxy(tmp_path, procs, http_backend, ws_backend) -> Switchyard:
    https, admin = free_port(), free_port()
    site = f"""
hosts = ["localhost", "127.0.0.1"]
{localhost_tls()}

[pools.web]
servers = ["{http_backend}"]

[pools.live]
servers = ["{ws_backend}"]

[[routes]]
name = "sockets"
path = "/ws/"
websocket = "live"

[[routes]]
name = "app"
path = "/"
pool = "web"
"""
    cfg = write_config(tmp_path / "config", https, admin, {SITE: site})
    sy = Switchyard(cfg, https, admin, tmp_path / "switchyard.log")
    procs.append(sy)
    return sy.start()


# --- s_client driven through its pipes ------------------------------------------------

class SClient:
    """`openssl s_client` with stdin/stdout/stderr pipes; every wait has a deadline."""

    def __init__(self, port: int, msgfile: Path):
        self.msgfile = msgfile
        self.argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}",
                     "-servername", "localhost", "-tls1_3", "-CAfile", str(DEV_CA),
                     "-verify_return_error", "-verify_hostname", "localhost",
                     "-quiet", "-no_ign_eof", "-msg", "-msgfile", str(msgfile)]
        self.p = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, start_new_session=True)
        self.out = bytearray()      # application data, as received
        self.err = bytearray()      # s_client's own messages
        self.eof = {"out": False, "err": False}
        for f in (self.p.stdout, self.p.stderr):
            os.set_blocking(f.fileno(), False)

    def pump(self, deadline: float) -> None:
        """Read whatever arrives on stdout/stderr until something does or the deadline."""
        fds = {self.p.stdout.fileno(): "out", self.p.stderr.fileno(): "err"}
        live = [fd for fd, n in fds.items() if not self.eof[n]]
        if not live:
            raise AssertionError(f"s_client closed its output\n{self.report()}")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select(live, [], [], left)
        for fd in ready:
            data = os.read(fd, 65536)
            name = fds[fd]
            if not data:
                self.eof[name] = True
            (self.out if name == "out" else self.err).extend(data)

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                                     + self.report())
            if all(self.eof.values()):
                raise AssertionError(f"s_client ended (rc={self.p.poll()}) while waiting "
                                     f"for {what}\n" + self.report())
            self.pump(deadline)

    def send(self, data: bytes) -> None:
        # One write() of at most PIPE_BUF bytes: s_client gets it in one read().
        assert len(data) <= PIPE_BUF, len(data)
        n = os.write(self.p.stdin.fileno(), data)
        assert n == len(data)

    def key_update(self, letter: str, timeout: float = 5.0) -> None:
        assert letter in ("k", "K")
        before = self.err.count(b"KEYUPDATE\n")
        self.send(letter.encode() + b"\n")
        self.wait_for(lambda: self.err.count(b"KEYUPDATE\n") > before, timeout,
                      f"s_client's KEYUPDATE for `{letter}`")

    def quit(self, timeout: float = 5.0) -> int:
        """`Q`: s_client prints DONE, closes the session and flushes the msg file."""
        self.send(b"Q\n")
        self.wait_for(lambda: all(self.eof.values()), timeout, "s_client to exit after Q")
        return self.p.wait(timeout=timeout)

    def messages(self) -> str:
        try:
            return self.msgfile.read_text(errors="replace")
        except OSError:
            return ""

    def report(self) -> str:
        return (f"s_client {' '.join(self.argv)}\n--- stderr ---\n"
                f"{self.err.decode(errors='replace')}\n--- stdout (last 2000 bytes) ---\n"
                f"{bytes(self.out[-2000:])!r}")

    def kill(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait(timeout=5)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            try:
                f.close()
            except OSError:
                pass


def check_key_updates(msgs: str, letters: list[str]) -> None:
    """From s_client's -msg log: it sent one KeyUpdate per command, in order, with
    request_update 0 for `k` and 1 for `K`; the proxy sent exactly one KeyUpdate
    per `K`, each with request_update 0 (RFC 8446 §4.6.3), and never any
    application data between receiving a `K` and answering it."""
    lines = msgs.splitlines()
    events = []     # ("sent", req) | ("received", req) | ("app",)
    for i, line in enumerate(lines):
        if re.match(r"^(>>>|<<<) .*Handshake.*KeyUpdate", line):
            body = lines[i + 1].split()
            assert body[:4] == ["18", "00", "00", "01"], (line, lines[i + 1])
            events.append(("sent" if line.startswith(">>>") else "received", int(body[4], 16)))
        elif line.startswith("<<< TLS 1.3, InnerContent") and lines[i + 1].strip() == "17":
            events.append(("app",))
    sent = [e[1] for e in events if e[0] == "sent"]
    received = [e[1] for e in events if e[0] == "received"]
    tail = "\n".join(lines[-60:])
    assert sent == [1 if l == "K" else 0 for l in letters], (sent, tail)
    assert received == [0] * letters.count("K"), (received, tail)
    waiting = 0     # `K`s sent and not yet answered
    for e in events:
        if e[0] == "sent" and e[1] == 1:
            waiting += 1
        elif e[0] == "received":
            waiting -= 1
            assert waiting >= 0, "an unrequested KeyUpdate from the proxy"
        elif e[0] == "app":
            assert waiting == 0, "application data from the proxy before its answer to `K`"


def schedule() -> list[str]:
    """k, K, k, K, ... ROUNDS of each."""
    return ["k" if i % 2 == 0 else "K" for i in range(2 * ROUNDS)]


# --- 1. HTTP/1.1 keep-alive -------------------------------------------------------------

def read_http_response(c: SClient, start: int, what: str, timeout: float = 5.0):
    """One complete response (Content-Length framed) in c.out from offset `start`;
    returns (status line, headers, body, end offset)."""
    def complete():
        buf = bytes(c.out[start:])
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        lines = buf[:head_end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers["content-length"])
        end = head_end + 4 + length
        if len(buf) < end:
            return None
        return lines[0], headers, buf[head_end + 4:end], start + end
    return c.wait_for(complete, timeout, what)


def test_http11_keep_alive_survives_key_updates(proxy, tmp_path):
    c = SClient(proxy.https_port, tmp_path / "s_client-http.msg")
    try:
        offset = 0
        sizes = [5_000, 17_000, 40_000]   # one record, two, three

        def get(i: int, after: str):
            nonlocal offset
            tag = f"r{i}"
            size = sizes[i % len(sizes)]
            c.send(f"GET /n/{tag}/{size} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            status, headers, body, offset = read_http_response(
                c, offset, f"the response to GET #{i} (after {after})")
            assert status == "HTTP/1.1 200 OK", (status, after)
            assert "close" not in headers.get("connection", "").lower(), (headers, after)
            assert body == expected_body(tag, size), f"GET #{i} body differs (after {after})"

        get(0, "the handshake")
        for i, letter in enumerate(schedule(), start=1):
            c.key_update(letter)
            get(i, f"KeyUpdate #{i} `{letter}`")
        assert len(c.out) == offset, f"unexpected bytes after the last response: " \
                                     f"{bytes(c.out[offset:])[:200]!r}"

        rc = c.quit()
        assert rc == 0, f"s_client exited {rc}\n{c.report()}"
        check_key_updates(c.messages(), schedule())
        assert c.err.count(b"KEYUPDATE\n") == 2 * ROUNDS
    finally:
        c.kill()
    assert proxy.alive(), proxy.tail()


# --- 2. a relayed WebSocket -----------------------------------------------------------------

def ws_frame(payload: bytes, mask: bytes) -> bytes:
    """A masked, final text frame (client to server)."""
    n = len(payload)
    head = bytes([0x81])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        assert n < 65536
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse_server_frame(buf: bytes):
    """(opcode, payload, length used) of one unmasked server frame, or None if short."""
    if len(buf) < 2:
        return None
    assert buf[1] & 0x80 == 0, f"server frame is masked: {buf[:16]!r}"
    n, at = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, at = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, at = int.from_bytes(buf[2:10], "big"), 10
    if len(buf) < at + n:
        return None
    return buf[0], buf[at:at + n], at + n


def test_websocket_relay_survives_key_updates(proxy, tmp_path):
    c = SClient(proxy.https_port, tmp_path / "s_client-ws.msg")
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        c.send((f"GET /ws/echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head_end = c.wait_for(lambda: c.out.find(b"\r\n\r\n") + 1, 5, "the 101 head") + 3
        head = bytes(c.out[:head_end]).decode("latin-1")
        assert head.startswith("HTTP/1.1 101"), head
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        assert re.search(rf"(?im)^sec-websocket-accept:\s*{re.escape(accept)}\s*$", head), head
        offset = head_end

        sizes = [1, 125, 126, 1000, 4000 - 8]    # 7- and 16-bit lengths; frame <= PIPE_BUF

        def echo(i: int, after: str):
            nonlocal offset
            size = sizes[i % len(sizes)]
            text = expected_body(f"m{i}", size)
            c.send(ws_frame(text, os.urandom(4)))

            def frame():
                return parse_server_frame(bytes(c.out[offset:]))
            opcode, payload, used = c.wait_for(frame, 5, f"the echo of message #{i} "
                                                        f"({size} bytes, after {after})")
            offset += used
            assert opcode == 0x81, f"echo #{i}: opcode byte {opcode:#x} (after {after})"
            assert payload == text, f"echo #{i} differs (after {after})"

        echo(0, "the upgrade")
        for i, letter in enumerate(schedule(), start=1):
            c.key_update(letter)
            echo(i, f"KeyUpdate #{i} `{letter}`")
            # A second message under the same keys, right behind the first.
            echo(1000 + i, f"KeyUpdate #{i} `{letter}` and one echo")
        assert len(c.out) == offset, f"unexpected bytes after the last echo: " \
                                     f"{bytes(c.out[offset:])[:200]!r}"

        rc = c.quit()
        assert rc == 0, f"s_client exited {rc}\n{c.report()}"
        check_key_updates(c.messages(), schedule())
    finally:
        c.kill()
    assert proxy.alive(), proxy.tail()
    want = 1 + 2 * 2 * ROUNDS
    wait_until(lambda: proxy.metrics().get(
        "switchyard_websocket_frames_total", site=SITE, route="sockets",
        direction="client_to_upstream", opcode="text") == want,
        5, f"{want} client-to-upstream text frames in switchyard_websocket_frames_total")
