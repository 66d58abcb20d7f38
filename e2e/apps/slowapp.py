"""A tiny WSGI app for the gunicorn end-to-end test (e2e/test_gunicorn_pool.py).

Run it under gunicorn with one sync worker per instance. Every request to
/slow and /big appends one JSON line to $SLOWAPP_LOG (O_APPEND, so lines from
several instances never interleave):

    {"server": ..., "path": ..., "start": t0, "end": t1, "backlog": n, "inflight": k}

- ``backlog`` is the length of this instance's TCP accept queue sampled in the
  middle of the request, read from /proc/net/tcp: connections the kernel has
  accepted for gunicorn but the (busy) worker has not. A sync worker serves one
  request at a time, so a proxy that sends it a second request while the first
  is running shows up here as backlog >= 1. With a proxy that keeps
  max_in_flight = 1 it stays 0.
- ``inflight`` is a per-instance counter kept in a file under a lock, the
  number of requests inside the app at once (1 for a sync worker).

Endpoints: /healthz, /slow?ms=N (sleeps N ms), /big?mib=N (streams N MiB),
/whoami (the instance name).
"""

import fcntl
import json
import os
import time
from urllib.parse import parse_qs

SERVER = os.environ.get("SLOWAPP_NAME", "?")
PORT = int(os.environ.get("SLOWAPP_PORT", "0"))
LOG = os.environ.get("SLOWAPP_LOG", "/dev/null")
COUNTER = os.environ.get("SLOWAPP_COUNTER", "")


def accept_backlog(port):
    """Connections waiting in the accept queue of 127.0.0.1:port (LISTEN)."""
    want = ":%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[1].endswith(want) and cols[3] == "0A":
                    return int(cols[4].split(":")[1], 16)
    except OSError:
        pass
    return -1


def bump(delta):
    if not COUNTER:
        return 0
    fd = os.open(COUNTER, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 64).decode() or "0"
        value = int(raw) + delta
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(value).encode())
        return value
    finally:
        os.close(fd)


def record(entry):
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    if path == "/whoami":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [SERVER.encode()]
    if path == "/slow":
        ms = int(query.get("ms", ["100"])[0])
        start = time.time()
        inflight = bump(+1)
        try:
            time.sleep(ms / 2000)
            backlog = accept_backlog(PORT)
            time.sleep(ms / 2000)
        finally:
            bump(-1)
        record({"server": SERVER, "path": path, "start": start, "end": time.time(),
                "backlog": backlog, "inflight": inflight,
                "tag": query.get("tag", [""])[0]})
        body = SERVER.encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/big":
        mib = int(query.get("mib", ["16"])[0])
        chunk = b"x" * 65536
        start = time.time()
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(mib * 1024 * 1024))])

        def body():
            for _ in range(mib * 16):
                yield chunk
            # Reached only once the worker has handed every byte to the socket.
            record({"server": SERVER, "path": path, "start": start, "end": time.time(),
                    "backlog": accept_backlog(PORT), "inflight": 1, "tag": ""})

        return body()
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]
