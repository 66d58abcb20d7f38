"""Shared helpers for the end-to-end tests: real processes on 127.0.0.1.

The proxy binary is $SWITCHYARD_BIN, else target/debug/switchyard (build it
with `cargo build --bin switchyard` first; .ci/run does). Every wait here is
bounded by a deadline; nothing sleeps to synchronise where an event can be
polled for.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CERTS = REPO / "certs"
DEV_CA = CERTS / "dev-ca.crt"
SWITCHYARD_BIN = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll predicate() until it returns a truthy value; fail after timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def tls_context() -> ssl.SSLContext:
    """A client context that trusts only the development CA."""
    ctx = ssl.create_default_context(cafile=str(DEV_CA))
    return ctx


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Plain-HTTP GET (admin listener, backends) with a timeout."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# --- Prometheus text format ------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """One scrape of /metrics, queried by name and a subset of labels."""

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if not m:
                continue
            labels = dict(_LABEL.findall(m.group(2) or ""))
            self.samples.append((m.group(1), labels, float(m.group(3))))

    def get(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
        total = 0.0
        for n, l, v in self.samples:
            if n == name and all(l.get(k) == str(val) for k, val in labels.items()):
                total += v
        return total

    def series(self, name: str, **labels) -> list[tuple[dict[str, str], float]]:
        return [(l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == str(val) for k, val in labels.items())]


def scrape(admin: str) -> Metrics:
    status, body = http_get(f"http://{admin}/metrics")
    assert status == 200, f"/metrics answered {status}"
    return Metrics(body.decode())


# --- processes ---------------------------------------------------------------------

class Proc:
    """A child process in its own process group, killed with its children."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None

    def start(self):
        self.logf = open(self.log, "ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})}, cwd=self.cwd, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig=signal.SIGKILL, timeout: float = 10.0):
        """Signal the whole process group and reap the leader."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        # The group may have outlived its leader (gunicorn workers): finish it.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.logf.close()

    def stop(self, timeout: float = 10.0):
        self.kill(signal.SIGTERM, timeout)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Switchyard(Proc):
    """switchyard on a config directory written by `write_config`."""

    def __init__(self, config_dir: Path, https_port: int, admin_port: int, log: Path):
        if not SWITCHYARD_BIN.exists():
            pytest.fail(f"{SWITCHYARD_BIN} not found: run `cargo build --bin switchyard` first")
        super().__init__("switchyard", [str(SWITCHYARD_BIN), "run", "-c", str(config_dir)], log,
                         env={"RUST_LOG": os.environ.get("E2E_RUST_LOG", "info")})
        self.https_port = https_port
        self.admin = f"127.0.0.1:{admin_port}"
        self.base = f"https://localhost:{https_port}"

    def start(self, timeout: float = 15.0):
        super().start()
        def ready():
            if not self.alive():
                raise AssertionError(f"switchyard exited early:\n{self.tail()}")
            return http_get(f"http://{self.admin}/readyz", timeout=0.5)[0] == 200 \
                and port_open(self.https_port)
        wait_until(ready, timeout, "switchyard /readyz")
        return self

    def metrics(self) -> Metrics:
        return scrape(self.admin)


def write_config(dir: Path, https_port: int, admin_port: int, sites: dict[str, str],
                 extra: str = "") -> Path:
    """Write switchyard.toml (loopback listeners, short drain) and sites/*.toml."""
    (dir / "sites").mkdir(parents=True, exist_ok=True)
    (dir / "switchyard.toml").write_text(f"""
[listen]
https = ["127.0.0.1:{https_port}"]
http = []
admin = "127.0.0.1:{admin_port}"

[timeouts]
upstream_connect = "1s"
upstream_response = "30s"
drain = "2s"

[log]
level = "info"
{extra}
""")
    for name, text in sites.items():
        (dir / "sites" / f"{name}.toml").write_text(text)
    return dir


def localhost_tls() -> str:
    """The `tls = ...` line for a site, with absolute paths to the dev certificate."""
    return f'tls = {{ cert = "{CERTS / "localhost.crt"}", key = "{CERTS / "localhost.key"}" }}'


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


@pytest.fixture
def procs(request):
    """Collects processes a test starts; stops them all at teardown, logs on failure."""
    started: list[Proc] = []
    yield started
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for p in started:
            print(f"----- {p.name} ({p.log}) -----\n{p.tail()}")
    for p in reversed(started):
        if p.alive():
            p.kill(signal.SIGTERM, timeout=10)
        elif p.popen is not None and not p.logf.closed:
            p.logf.close()


def pytest_report_header(config):
    return [f"switchyard binary: {SWITCHYARD_BIN}", f"python: {sys.version.split()[0]}"]


def example_backend(name: str, run_dir: Path) -> str:
    """The Django example's pool server string for a backend, exactly as its
    site file (or, for another RUN_DIR, run.sh's rendered copy) writes it: a
    unix socket in RUN_DIR."""
    if run_dir.resolve() == (REPO / "examples" / "django" / ".run").resolve():
        return f"unix:../../.run/{name}.sock"   # relative to sites/django.toml
    return f"unix:{run_dir.resolve()}/{name}.sock"
