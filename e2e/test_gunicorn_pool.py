"""Issue 4, point 8: switchyard in front of two real gunicorn sync workers.

Two gunicorn instances (`--workers 1 --worker-class sync`) run e2e/apps/slowapp.py
on 127.0.0.1; each test starts its own switchyard on a generated config and
checks, through real sockets and the admin listener's /metrics:

- admission: max_in_flight = 1 per server, 20 concurrent requests to a 100 ms
  view all succeed, no gunicorn ever has a second request waiting in its accept
  queue, and the queue-depth gauge rises and returns to 0;
- queue_timeout: the late requests get 503 with Retry-After and never reach
  gunicorn;
- health: kill one gunicorn under load, GETs keep succeeding and its
  switchyard_upstream_up goes to 0; restart it and it goes back to 1;
- a slow client (10 KiB/s) reading a 16 MiB response does not hold the only
  worker of a one-server pool.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import (DEV_CA, Proc, Switchyard, free_port, http_get, localhost_tls,
                      wait_until, write_config)

APPS = Path(__file__).resolve().parent / "apps"
SITE = "pool"


class Gunicorn(Proc):
    def __init__(self, name: str, port: int, workdir: Path, log: Path):
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        super().__init__(
            f"gunicorn-{name}",
            [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync",
             "--bind", self.addr, "--chdir", str(APPS), "--graceful-timeout", "2",
             "--timeout", "60", "slowapp:app"],
            workdir / f"gunicorn-{name}.log",
            env={"SLOWAPP_NAME": name, "SLOWAPP_PORT": str(port), "SLOWAPP_LOG": str(log),
                 "SLOWAPP_COUNTER": str(workdir / f"inflight-{name}")})

    def start(self, timeout: float = 20.0):
        # A killed worker leaves its in-flight counter behind.
        Path(self.env["SLOWAPP_COUNTER"]).write_text("0")
        super().start()
        def ready():
            if not self.alive():
                raise AssertionError(f"gunicorn exited:\n{self.tail()}")
            return http_get(f"http://{self.addr}/healthz", timeout=0.5)[0] == 200
        wait_until(ready, timeout, f"{self.name} /healthz")
        return self


class AppLog:
    """The JSON lines slowapp writes; `mark()` then `since(mark)` isolates one test."""

    def __init__(self, path: Path):
        self.path = path
        path.touch()

    def mark(self) -> int:
        return self.path.stat().st_size

    def since(self, mark: int) -> list[dict]:
        with open(self.path, "rb") as f:
            f.seek(mark)
            return [json.loads(l) for l in f.read().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    work = tmp_path_factory.mktemp("gunicorn")
    log = AppLog(work / "requests.jsonl")
    a = Gunicorn("a", free_port(), work, log.path).start()
    b = Gunicorn("b", free_port(), work, log.path).start()
    yield {"a": a, "b": b, "log": log, "work": work}
    for g in (a, b):
        if g.alive():
            g.stop()


def start_proxy(tmp_path, procs, pool_toml: str) -> Switchyard:
    https, admin = free_port(), free_port()
    site = f"""
hosts = ["localhost", "127.0.0.1"]
{localhost_tls()}

[pools.web]
{pool_toml}

[[routes]]
name = "app"
path = "/"
pool = "web"
"""
    cfg = write_config(tmp_path / "config", https, admin, {SITE: site})
    sy = Switchyard(cfg, https, admin, tmp_path / "switchyard.log")
    procs.append(sy)
    return sy.start()


def client(**kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(DEV_CA)),
                             timeout=httpx.Timeout(20.0), **kw)


class Sampler(threading.Thread):
    """Scrapes /metrics every few ms and keeps the highest queue depth seen."""

    def __init__(self, sy: Switchyard):
        super().__init__(daemon=True)
        self.sy = sy
        self.stop = threading.Event()
        self.max_depth = 0.0
        self.max_in_flight: dict[str, float] = {}
        self.scrapes = 0

    def run(self):
        while not self.stop.is_set():
            m = self.sy.metrics()
            self.scrapes += 1
            self.max_depth = max(self.max_depth,
                                 m.get("switchyard_pool_queue_depth", site=SITE, pool="web"))
            for labels, v in m.series("switchyard_upstream_in_flight", site=SITE, pool="web"):
                s = labels["server"]
                self.max_in_flight[s] = max(self.max_in_flight.get(s, 0), v)
            self.stop.wait(0.01)


def test_admission_max_in_flight_one(backends, tmp_path, procs):
    a, b, log = backends["a"], backends["b"], backends["log"]
    sy = start_proxy(tmp_path, procs, f"""
servers = ["{a.addr}", "{b.addr}"]
max_in_flight = 1
queue_timeout = "10s"
""")
    before = sy.metrics()
    mark = log.mark()
    sampler = Sampler(sy)
    sampler.start()

    async def burst():
        async with client(limits=httpx.Limits(max_connections=50)) as c:
            return await asyncio.gather(*(c.get(f"{sy.base}/slow?ms=100&tag=adm{i}")
                                          for i in range(20)))

    t0 = time.monotonic()
    responses = asyncio.run(burst())
    elapsed = time.monotonic() - t0
    sampler.stop.set()
    sampler.join(5)

    assert [r.status_code for r in responses] == [200] * 20
    served = log.since(mark)
    assert len(served) == 20, served
    by_server: dict[str, list[dict]] = {}
    for e in served:
        by_server.setdefault(e["server"], []).append(e)
    print(f"\nadmission: 20 requests in {elapsed:.2f}s, per server "
          f"{ {k: len(v) for k, v in by_server.items()} }, max queue depth seen "
          f"{sampler.max_depth:.0f} over {sampler.scrapes} scrapes, "
          f"max upstream_in_flight {sampler.max_in_flight}")
    # The gunicorn side: never a second request waiting while one runs, never
    # two inside the app at once, and requests on one server never overlap.
    assert max(e["backlog"] for e in served) == 0, served
    assert max(e["inflight"] for e in served) == 1, served
    for entries in by_server.values():
        entries.sort(key=lambda e: e["start"])
        for prev, nxt in zip(entries, entries[1:]):
            assert nxt["start"] >= prev["end"] - 0.005, (prev, nxt)
    # Both servers were used.
    assert set(by_server) == {"a", "b"}
    # 20 x 100 ms over two one-at-a-time servers takes about 1 s, not 100 ms.
    assert elapsed >= 0.9
    # The proxy side: the queue filled, then emptied; in-flight never above 1.
    assert sampler.max_depth >= 5
    assert all(v <= 1 for v in sampler.max_in_flight.values()), sampler.max_in_flight
    after = sy.metrics()
    assert after.get("switchyard_pool_queue_depth", site=SITE, pool="web") == 0
    assert after.get("switchyard_upstream_in_flight", site=SITE, pool="web") == 0
    ok = lambda m: m.get("switchyard_requests_total", site=SITE, route="app", method="GET",
                         status="200")
    assert ok(after) - ok(before) == 20


def test_queue_timeout_503_retry_after(backends, tmp_path, procs):
    a, b, log = backends["a"], backends["b"], backends["log"]
    sy = start_proxy(tmp_path, procs, f"""
servers = ["{a.addr}", "{b.addr}"]
max_in_flight = 1
queue_timeout = "300ms"
""")
    before = sy.metrics()
    mark = log.mark()

    async def burst():
        async with client(limits=httpx.Limits(max_connections=50)) as c:
            async def one(i):
                t = time.monotonic()
                r = await c.get(f"{sy.base}/slow?ms=600&tag=qt{i}")
                return r, time.monotonic() - t
            return await asyncio.gather(*(one(i) for i in range(20)))

    results = asyncio.run(burst())
    ok = [r for r, _ in results if r.status_code == 200]
    rejected = [(r, t) for r, t in results if r.status_code == 503]
    print(f"\nqueue_timeout: {len(ok)} x 200, {len(rejected)} x 503 "
          f"(waited {min(t for _, t in rejected):.2f}-{max(t for _, t in rejected):.2f}s), "
          f"Retry-After {sorted({r.headers.get('retry-after') for r, _ in rejected})}")
    assert len(ok) + len(rejected) == 20, [r.status_code for r, _ in results]
    assert 2 <= len(ok) <= 6
    for r, waited in rejected:
        assert r.headers.get("retry-after", "").strip().isdigit(), r.headers
        assert 0.25 <= waited < 3.0
    # Only the admitted requests ever reached gunicorn.
    served = log.since(mark)
    assert len(served) == len(ok)
    assert max(e["backlog"] for e in served) == 0
    after = sy.metrics()
    delta = lambda name, **l: after.get(name, **l) - before.get(name, **l)
    assert delta("switchyard_pool_rejected_total", site=SITE, pool="web",
                 reason="queue_timeout") == len(rejected)
    assert delta("switchyard_requests_total", site=SITE, route="app", method="GET",
                 status="503") == len(rejected)
    assert after.get("switchyard_pool_queue_depth", site=SITE, pool="web") == 0


def test_health_kill_and_restart(backends, tmp_path, procs):
    a, b = backends["a"], backends["b"]
    sy = start_proxy(tmp_path, procs, f"""
servers = ["{a.addr}", "{b.addr}"]
max_in_flight = 1
queue_timeout = "5s"
health = {{ path = "/healthz", interval = "200ms", timeout = "500ms", rise = 2, fall = 2 }}
""")
    up = lambda m, g: m.get("switchyard_upstream_up", site=SITE, pool="web", server=g.addr)
    wait_until(lambda: up(sy.metrics(), a) == 1 and up(sy.metrics(), b) == 1, 10,
               "both servers up")

    statuses: list[tuple[float, int, str]] = []
    stop = threading.Event()
    ctx = ssl.create_default_context(cafile=str(DEV_CA))

    def load():
        with httpx.Client(verify=ctx, timeout=10) as c:
            while not stop.is_set() and len(statuses) < 2000:
                r = c.get(f"{sy.base}/slow?ms=20")
                statuses.append((time.monotonic(), r.status_code, r.text))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load) for _ in range(4)]
        try:
            wait_until(lambda: len(statuses) >= 20, 10, "load running")
            killed_at = time.monotonic()
            b.kill(signal.SIGKILL)
            wait_until(lambda: up(sy.metrics(), b) == 0, 10, "upstream_up{b} == 0")
            down_after = time.monotonic() - killed_at
            n = len(statuses)
            wait_until(lambda: len(statuses) >= n + 30, 10, "load continues on a")
            b.start()
            restarted_at = time.monotonic()
            wait_until(lambda: up(sy.metrics(), b) == 1, 10, "upstream_up{b} == 1")
            up_after = time.monotonic() - restarted_at
            wait_until(lambda: any(t > restarted_at and body == "b" for t, _, body in statuses),
                       10, "b serving again")
        finally:
            stop.set()
            for f in futures:
                f.result(timeout=20)

    codes = [s for _, s, _ in statuses]
    print(f"\nhealth: {len(codes)} GETs, statuses {sorted(set(codes))}, "
          f"up{{b}} -> 0 after {down_after:.2f}s, -> 1 after {up_after:.2f}s")
    # Every request succeeds, including the one that was inside b's worker
    # when it was killed: it is retried on a (see
    # test_get_in_flight_on_killed_server_is_retried).
    failed = [(t - killed_at, s) for t, s, _ in statuses if s != 200]
    assert not failed, failed
    assert len(codes) - len(failed) >= 50
    assert up(sy.metrics(), a) == 1


def test_get_in_flight_on_killed_server_is_retried(backends, tmp_path, procs):
    """A GET inside a worker when its gunicorn is killed (the connection closes
    before the status line) is idempotent and had no body: it is retried once
    on the other server and succeeds."""
    a, b, work = backends["a"], backends["b"], backends["work"]
    for g in (a, b):
        if not g.alive():
            g.start()
    sy = start_proxy(tmp_path, procs, f"""
servers = ["{a.addr}", "{b.addr}"]
max_in_flight = 1
queue_timeout = "5s"
""")
    inflight = lambda name: int((work / f"inflight-{name}").read_text() or 0) \
        if (work / f"inflight-{name}").exists() else 0
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(httpx.get, f"{sy.base}/slow?ms=3000",
                          verify=ssl.create_default_context(cafile=str(DEV_CA)), timeout=15)
        busy = wait_until(lambda: [g for g in (a, b) if inflight(g.name[-1]) == 1], 5,
                          "the request inside a worker")[0]
        busy.kill(signal.SIGKILL)
        try:
            r = fut.result(timeout=15)
        finally:
            busy.start()
    other = "a" if busy is b else "b"
    print(f"\nin-flight GET on killed {busy.name}: {r.status_code} {r.text!r}")
    assert r.status_code == 200 and r.text == other


def test_slow_client_does_not_hold_worker(backends, tmp_path, procs):
    a, log = backends["a"], backends["log"]
    sy = start_proxy(tmp_path, procs, f"""
servers = ["{a.addr}"]
max_in_flight = 1
queue_timeout = "5s"
""")
    mark = log.mark()
    size = 16 * 1024 * 1024
    received = 0
    done = threading.Event()
    stop = threading.Event()

    ctx = ssl.create_default_context(cafile=str(DEV_CA))
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", sy.https_port))
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"GET /big?mib=16 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")

    def slow_reader():
        # About 10 KiB/s: 1 KiB every 100 ms.
        nonlocal received
        try:
            while not stop.is_set():
                chunk = tls.recv(1024)
                if not chunk:
                    break
                received += len(chunk)
                stop.wait(0.1)
        except OSError:
            pass
        finally:
            done.set()

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    try:
        # The worker finishes writing all 16 MiB (into the proxy) although the
        # client has read only a few KiB.
        entry = wait_until(lambda: [e for e in log.since(mark) if e["path"] == "/big"], 15,
                           "gunicorn to finish /big")[0]
        worker_secs = entry["end"] - entry["start"]
        read_then = received
        # The server's only slot is free: another request is served at once.
        t = time.monotonic()
        r = httpx.get(f"{sy.base}/slow?ms=50", verify=ssl.create_default_context(
            cafile=str(DEV_CA)), timeout=5)
        other = time.monotonic() - t
        in_flight = sy.metrics().get("switchyard_upstream_in_flight", site=SITE, pool="web",
                                     server=a.addr)
        still_reading = not done.is_set()
        print(f"\nslow client: gunicorn wrote 16 MiB in {worker_secs:.2f}s while the client "
              f"had read {read_then / 1024:.0f} KiB; another request took {other:.3f}s; "
              f"client still reading: {still_reading} ({received / 1024:.0f} KiB)")
        assert r.status_code == 200 and r.text == "a"
        assert other < 1.5
        assert in_flight == 0
        assert still_reading and received < size // 4
    finally:
        stop.set()
        tls.close()
        reader.join(5)
