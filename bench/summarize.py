#!/usr/bin/env python3
"""Turns bench/run.sh's raw results (RUN/raw/CASE.PROXY.REP.{out,meta}) into a
markdown table: median (min–max) per proxy, and switchyard's ratio to the
better of nginx and HAProxy (to nginx for the sync-pool case, as issue 4 asks).
The file cases (sf*, issue 16) get a table of their own: switchyard, nginx
and Caddy, with switchyard's ratio to each; so do the compression cases
(issue 17): switchyard and nginx (gzip), switchyard alone (zstd, br).

    python3 bench/summarize.py bench/results/latest
"""

import glob
import os
import re
import statistics
import sys

PROXIES = ["switchyard", "nginx", "haproxy"]
FILE_PROXIES = ["switchyard", "nginx", "caddy"]
NAME = {"switchyard": "switchyard", "nginx": "nginx", "haproxy": "HAProxy", "caddy": "Caddy"}


def unit_ms(v, u):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[u]


def parse_wrk(t):
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", t)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    if m:
        r["rps"] = float(m.group(1))
    for p in ("50", "90", "99"):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s|m)\s*$" % p, t, re.M)
        if m:
            r["p" + p] = unit_ms(*m.groups())
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    r["sock_err"] = sum(map(int, m.groups())) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    r["non2xx"] = int(m.group(1)) if m else 0
    return r


def parse_h2load(t):
    r = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", t)
    if m:
        r["rps"] = float(m.group(2))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", t)
    if m:
        r["requests"] = int(m.group(3))
        r["failed"] = int(m.group(5)) + int(m.group(6))
    return r


def parse_kv(t):
    r = {}
    for line in t.splitlines():
        for k, v in re.findall(r"(\w+)=(\S+)", line):
            r[k] = v
    return r


def cpu_us(meta):
    return int(meta["cpu_ticks"]) * 1e6 / int(meta["clk_tck"])


def metrics(case, out, meta):
    """Returns {metric: value} for one run."""
    m = {}
    if case in ("a", "b", "c", "sync", "syncmix"):
        r = parse_h2load(out) if case == "c" else parse_wrk(out)
        n = r.get("requests", 0)
        if not n:
            return m
        cpu = cpu_us(meta)
        util = cpu / 1e6 / float(meta["wall"]) * 100
        if case == "a":
            m = {"cpu_us_per_req": cpu / n, "req_s": r["rps"], "p99_ms": r.get("p99"), "cpu_util_pct": util}
        elif case == "b":
            m = {"cpu_us_per_handshake": cpu / n, "handshakes_s": r["rps"], "cpu_util_pct": util}
        elif case == "c":
            m = {"cpu_us_per_req": cpu / n, "req_s": r["rps"], "cpu_util_pct": util}
        else:
            errors = r["non2xx"] + r["sock_err"]
            m = {"ok_req_s": r["rps"] * (n - r["non2xx"]) / n, "p50_ms": r.get("p50"),
                 "p90_ms": r.get("p90"), "p99_ms": r.get("p99"), "errors": errors}
    elif case in ("a_nopp", "a_pp"):
        r = parse_kv(out)
        n = int(r.get("requests", 0))
        if not n:
            return m
        cpu = cpu_us(meta)
        m = {"cpu_us_per_req": cpu / n, "req_s": float(r["req_per_s"]), "p99_ms": int(r["p99_us"]) / 1000,
             "cpu_util_pct": cpu / 1e6 / float(meta["wall"]) * 100,
             "errors": int(r["failed"]) + int(r["errors"])}
    elif case in ("d128", "d64k"):
        r = parse_kv(out)
        n = int(r.get("messages", 0))
        if not n:
            return m
        cpu = cpu_us(meta)
        m = {"cpu_us_per_msg": cpu / (2 * n), "p99_rtt_ms": int(r["p99_us"]) / 1000,
             "round_trips_s": float(r["msgs_per_s"]), "cpu_util_pct": cpu / 1e6 / float(meta["wall"]) * 100,
             "errors": int(r["errors"])}
    elif case in ("e", "ew"):
        r = parse_kv(out)
        n = int(r.get("opened", 0))
        if not n:
            return m
        m = {"kib_per_session": (int(meta["rss_after_kib"]) - int(meta["rss_before_kib"])) / n,
             "sessions_open": n, "failed": int(r.get("failed", 0))}
    elif case == "sf1k":
        r = parse_wrk(out)
        n = r.get("requests", 0)
        if not n:
            return m
        cpu = cpu_us(meta)
        m = {"cpu_us_per_req": cpu / n, "req_s": r["rps"], "p99_ms": r.get("p99"),
             "cpu_util_pct": cpu / 1e6 / float(meta["wall"]) * 100, "errors": r["non2xx"] + r["sock_err"]}
    elif case in ("sfdown", "sfdown_http"):
        r = parse_kv(out)
        if r.get("http") != "200" or not float(r.get("secs", 0)):
            return {"failed": 1}
        m = {"MiB_s": int(r["bytes"]) / float(r["secs"]) / 2**20, "cpu_s": cpu_us(meta) / 1e6,
             "cpu_util_pct": cpu_us(meta) / 1e6 / float(meta["wall"]) * 100,
             "peak_rss_mib": int(meta["hwm_kib"]) / 1024}
    elif case == "sfrss":
        lines = re.findall(r"http=(\d+) bytes=(\d+)", out)
        ok = [int(b) for code, b in lines if code == "200"]
        if not ok:
            return m
        m = {"peak_rss_mib": int(meta["peak_rss_all_kib"]) / 1024 if int(meta["samples_all"]) else None,
             "rss_before_mib": int(meta["rss_before_kib"]) / 1024,
             "hwm_mib": int(meta["hwm_kib"]) / 1024,
             "in_flight": int(meta["max_conns"]), "downloads_200": len(ok),
             "MiB_sent": sum(ok) / 2**20,
             "cpu_util_pct": cpu_us(meta) / 1e6 / float(meta["wall"]) * 100}
    elif case in ("gz64k", "zs64k", "br64k"):
        r = parse_wrk(out)
        n = r.get("requests", 0)
        if not n or "encoded_bytes" not in meta:
            return m
        cpu = cpu_us(meta)
        enc = int(meta["encoded_bytes"])
        m = {"cpu_us_per_req": cpu / n, "req_s": r["rps"], "p99_ms": r.get("p99"),
             "cpu_util_pct": cpu / 1e6 / float(meta["wall"]) * 100, "errors": r["non2xx"] + r["sock_err"],
             "encoded_bytes": enc, "compression_ratio": int(meta["plain_bytes"]) / enc}
    elif case in ("gzstream", "zsstream"):
        r = parse_kv(out)
        plain = int(meta.get("plain_bytes", 0))
        if r.get("http") != "200" or not float(r.get("secs", 0)) or int(meta.get("decoded_bytes", -1)) != plain:
            return m
        secs, cpu_s = float(r["secs"]), cpu_us(meta) / 1e6
        m = {"MiB_s": plain / secs / 2**20, "wire_MiB_s": int(r["bytes"]) / secs / 2**20,
             "cpu_s_per_GiB": cpu_s / (plain / 2**30),
             "cpu_util_pct": cpu_s / float(meta["wall"]) * 100,
             "peak_rss_mib": int(meta["peak_rss_kib"]) / 1024, "rss_before_mib": int(meta["rss_before_kib"]) / 1024,
             "hwm_mib": int(meta["hwm_kib"]) / 1024, "compression_ratio": plain / int(r["bytes"])}
    elif case in ("fup", "fdown"):
        r = parse_kv(out)
        if r.get("http") != "200" or not float(r.get("secs", 0)):
            return {"failed": 1}
        m = {"MiB_s": int(r["bytes"]) / float(r["secs"]) / 2**20, "peak_rss_mib": int(meta["hwm_kib"]) / 1024}
    return m


# metric -> (True if lower is better, target ratio or None, shown in the ratio column)
SPEC = {
    "a": [("cpu_us_per_req", True, 0.8), ("req_s", False, None), ("p99_ms", True, None), ("cpu_util_pct", None, None)],
    "a_nopp": [("cpu_us_per_req", True, None), ("req_s", False, None), ("p99_ms", True, None),
               ("cpu_util_pct", None, None), ("errors", True, None)],
    "a_pp": [("cpu_us_per_req", True, None), ("req_s", False, None), ("p99_ms", True, None),
             ("cpu_util_pct", None, None), ("errors", True, None)],
    "b": [("cpu_us_per_handshake", True, 1.0), ("handshakes_s", False, None), ("cpu_util_pct", None, None)],
    "c": [("cpu_us_per_req", True, 0.8), ("req_s", False, None), ("cpu_util_pct", None, None)],
    "d128": [("cpu_us_per_msg", True, 0.8), ("p99_rtt_ms", True, None), ("round_trips_s", False, None),
             ("cpu_util_pct", None, None), ("errors", True, None)],
    "d64k": [("cpu_us_per_msg", True, 0.8), ("p99_rtt_ms", True, None), ("round_trips_s", False, None),
             ("cpu_util_pct", None, None), ("errors", True, None)],
    "e": [("kib_per_session", True, 0.5), ("sessions_open", None, None)],
    "ew": [("kib_per_session", True, None), ("sessions_open", None, None)],
    "fup": [("MiB_s", False, 0.9), ("peak_rss_mib", True, None)],
    "fdown": [("MiB_s", False, 0.9), ("peak_rss_mib", True, None)],
    "sync": [("ok_req_s", False, None), ("p50_ms", True, None), ("p99_ms", True, None), ("errors", True, None)],
    "syncmix": [("ok_req_s", False, None), ("p50_ms", True, None), ("p90_ms", True, None), ("p99_ms", True, None),
                ("errors", True, None)],
}
# The file cases: (metric, lower is better, target). Targets (issue 16): CPU
# per request not above nginx's, throughput at least 0.9x the better of nginx
# and Caddy, RSS under 64 MiB with the concurrent downloads in flight.
FILE_SPEC = {
    "sf1k": [("cpu_us_per_req", True, "nginx"), ("req_s", False, None), ("p99_ms", True, None),
             ("cpu_util_pct", None, None), ("errors", True, None)],
    "sfdown": [("MiB_s", False, "best"), ("cpu_s", True, None), ("cpu_util_pct", None, None),
               ("peak_rss_mib", True, None)],
    "sfdown_http": [("MiB_s", False, "best"), ("cpu_s", True, None), ("cpu_util_pct", None, None),
                    ("peak_rss_mib", True, None)],
    "sfrss": [("peak_rss_mib", True, "64MiB"), ("rss_before_mib", True, None), ("hwm_mib", True, None),
              ("in_flight", None, None), ("downloads_200", None, None), ("MiB_sent", None, None),
              ("cpu_util_pct", None, None)],
}
# The compression cases (issue 17): (metric, lower is better, target).
# Target: gzip CPU per request at most nginx's at the same level.
COMPRESS_SPEC = {
    "gz64k": [("cpu_us_per_req", True, "nginx"), ("req_s", False, None), ("p99_ms", True, None),
              ("cpu_util_pct", None, None), ("errors", True, None), ("encoded_bytes", True, None),
              ("compression_ratio", False, None)],
    "zs64k": [("cpu_us_per_req", True, None), ("req_s", False, None), ("p99_ms", True, None),
              ("cpu_util_pct", None, None), ("errors", True, None), ("encoded_bytes", True, None),
              ("compression_ratio", False, None)],
    "br64k": [("cpu_us_per_req", True, None), ("req_s", False, None), ("p99_ms", True, None),
              ("cpu_util_pct", None, None), ("errors", True, None), ("encoded_bytes", True, None),
              ("compression_ratio", False, None)],
    "gzstream": [("MiB_s", False, None), ("wire_MiB_s", None, None), ("cpu_s_per_GiB", True, None),
                 ("cpu_util_pct", None, None), ("peak_rss_mib", True, None), ("rss_before_mib", True, None),
                 ("hwm_mib", True, None), ("compression_ratio", False, None)],
    "zsstream": [("MiB_s", False, None), ("wire_MiB_s", None, None), ("cpu_s_per_GiB", True, None),
                 ("cpu_util_pct", None, None), ("peak_rss_mib", True, None), ("rss_before_mib", True, None),
                 ("hwm_mib", True, None), ("compression_ratio", False, None)],
}
TITLE = {
    "a": "a. HTTPS keep-alive GET 1 KiB, 64 conns (wrk)",
    "a_nopp": "a, from bench-h1-load (64 conns, no PROXY header)",
    "a_pp": "a, from bench-h1-load, each connection opened by a PROXY v1 header (proxy_protocol = true)",
    "b": "b. new TLS connection per request (wrk, Connection: close)",
    "c": "c. HTTP/2, 16 conns x 10 streams (h2load)",
    "d128": "d. WebSocket echo over TLS, 64 sessions, 128 B",
    "d64k": "d. WebSocket echo over TLS, 64 sessions, 64 KiB",
    "e": "e. idle TLS WebSocket sessions",
    "ew": "e'. the same, idle after one 4 KiB echo each",
    "fup": "f. 1 GiB upload (curl, HTTP/1.1)",
    "fdown": "f. 1 GiB download (curl, HTTP/1.1)",
    "sync": "sync pool (issue 4): 4 workers x 20 ms, 128 clients",
    "syncmix": "sync pool, mixed: 4 workers, 19 in 20 requests 20 ms, 1 in 20 500 ms, 8 clients",
    "sf1k": "files: HTTPS keep-alive GET of a 1 KiB file, %(sf_conns)s conns (wrk)",
    "sfdown": "files: %(big)s file over HTTPS, one connection (curl, HTTP/1.1)",
    "sfdown_http": "files: %(big)s file over plain HTTP, one connection (curl)",
    "sfrss": "files: %(sf_rss_conns)s concurrent HTTPS downloads of a %(rss)s file, %(sf_rss_rate)sB/s each",
    "gz64k": "compress: HTTPS keep-alive GET of 64 KiB JSON, gzip (level 5 both), %(gz_conns)s conns (wrk)",
    "zs64k": "compress: the same, zstd (level 3)",
    "br64k": "compress: the same, br (quality 4)",
    "gzstream": "compress: %(stream)s of JSON lines, one HTTPS download, gzip (curl --compressed)",
    "zsstream": "compress: the same, zstd",
}


def size(n):
    n = int(n)
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f and n % f == 0:
            return "%d %s" % (n // f, unit)
    return "%d B" % n


def file_table(data, info):
    """The file cases' table: switchyard, nginx, Caddy, and switchyard's ratios."""
    cases = [c for c in FILE_SPEC if any(k[0] == c for k in data)]
    if not cases:
        return
    params = {"sf_conns": "50", "sf_big_bytes": str(2**30), "sf_rss_bytes": str(100 * 2**20),
              "sf_rss_conns": "200", "sf_rss_rate": "1M"}
    params.update(re.findall(r"(\w+)=(\S+)", info.get("files", "")))
    params["big"] = size(params["sf_big_bytes"])
    params["rss"] = size(params["sf_rss_bytes"])
    print("| case | metric | switchyard | nginx | Caddy | switchyard ÷ nginx | switchyard ÷ Caddy | target |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        for metric, lower, target in FILE_SPEC[case]:
            cells, med = [], {}
            for p in FILE_PROXIES:
                vs = data.get((case, p, metric))
                if not vs:
                    cells.append("–")
                    continue
                med[p] = statistics.median(vs)
                cells.append("%s (%s–%s)" % (fmt(med[p]), fmt(min(vs)), fmt(max(vs))) if len(vs) > 1 else fmt(vs[0]))
            ratios = []
            for p in ("nginx", "caddy"):
                ok = lower is not None and "switchyard" in med and med.get(p)
                ratios.append("%.2f×" % (med["switchyard"] / med[p]) if ok else "")
            tgt = ""
            s = med.get("switchyard")
            if s is not None and target == "nginx" and med.get("nginx"):
                tgt = "≤ 1.0× nginx %s" % ("met" if s <= med["nginx"] else "**missed**")
            elif s is not None and target == "best":
                rv = [med[p] for p in ("nginx", "caddy") if med.get(p)]
                if rv:
                    tgt = "≥ 0.9× best %s" % ("met" if s >= 0.9 * max(rv) else "**missed**")
            elif s is not None and target == "64MiB":
                tgt = "< 64 MiB %s" % ("met" if s < 64 else "**missed**")
            title = TITLE[case] % params if metric == FILE_SPEC[case][0][0] else ""
            print("| %s | %s | %s | %s | %s | %s |" % (title, metric, " | ".join(cells), ratios[0], ratios[1], tgt))


def compress_table(data, info):
    """The compression cases' table: switchyard and nginx, switchyard ÷ nginx."""
    cases = [c for c in COMPRESS_SPEC if any(k[0] == c for k in data)]
    if not cases:
        return
    params = {"gz_conns": "50", "gz_stream_bytes": str(2**30)}
    params.update(re.findall(r"(\w+)=(\S+)", info.get("compress", "")))
    params["stream"] = size(params["gz_stream_bytes"])
    print("| case | metric | switchyard | nginx | switchyard ÷ nginx | target |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        for metric, lower, target in COMPRESS_SPEC[case]:
            cells, med = [], {}
            for p in ("switchyard", "nginx"):
                vs = data.get((case, p, metric))
                if not vs:
                    cells.append("–")
                    continue
                med[p] = statistics.median(vs)
                cells.append("%s (%s–%s)" % (fmt(med[p]), fmt(min(vs)), fmt(max(vs))) if len(vs) > 1 else fmt(vs[0]))
            ok = lower is not None and "switchyard" in med and med.get("nginx")
            ratio = "%.2f×" % (med["switchyard"] / med["nginx"]) if ok else ""
            tgt = ""
            if target == "nginx" and ok:
                tgt = "≤ 1.0× nginx %s" % ("met" if med["switchyard"] <= med["nginx"] else "**missed**")
            title = TITLE[case] % params if metric == COMPRESS_SPEC[case][0][0] else ""
            print("| %s | %s | %s | %s | %s |" % (title, metric, " | ".join(cells), ratio, tgt))


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.2f" % v


def main():
    run = sys.argv[1]
    data = {}  # (case, proxy, metric) -> [values]
    for out_path in sorted(glob.glob(os.path.join(run, "raw", "*.out"))):
        case, proxy, rep = os.path.basename(out_path)[:-4].split(".")
        meta_path = out_path[:-4] + ".meta"
        meta = {}
        if os.path.exists(meta_path):
            meta = dict(l.split("=", 1) for l in open(meta_path).read().split())
        try:
            ms = metrics(case, open(out_path, errors="replace").read(), meta)
        except (KeyError, ValueError) as e:
            print("warning: %s: %r" % (out_path, e), file=sys.stderr)
            ms = {}
        if not ms:
            ms = {"failed_runs": 1}
        for k, v in ms.items():
            if v is not None:
                data.setdefault((case, proxy, k), []).append(v)

    info = {}
    mf = os.path.join(run, "machine.txt")
    if os.path.exists(mf):
        info = dict(l.split("=", 1) for l in open(mf).read().splitlines() if "=" in l)
    if info:
        print("%s; %s cores, %s; kernel %s; switchyard %s, nginx %s, HAProxy %s, %swrk %s, h2load %s; %s; "
              "load average %s at start, %s at end; %ss in all" % (
                  info.get("date"), info.get("nproc"), info.get("cpu"), info.get("kernel"),
                  info.get("switchyard"), info.get("nginx"), info.get("haproxy"),
                  "Caddy %s, " % info["caddy"] if info.get("caddy") else "", info.get("wrk"),
                  info.get("h2load"), "reps=" + info.get("reps", ""), info.get("loadavg_start"),
                  info.get("loadavg_end"), info.get("elapsed_s")))
        if info.get("switchyard_bin"):
            print("switchyard binary: built " + info["switchyard_bin"] + " (HEAD above is the checkout's at run time)")
        if info.get("workers"):
            print("workers: " + info["workers"])
        if info.get("files"):
            print("files: " + info["files"])
        if info.get("compress"):
            print("compress: " + info["compress"])
        print()
    cases = [c for c in SPEC if any(k[0] == c for k in data)]
    if cases:
        print("| case | metric | switchyard | nginx | HAProxy | switchyard ÷ best | target |")
        print("|---|---|---|---|---|---|---|")
    # Two workers each (bench/run.sh cores2): issue 20's target is at most
    # the better of nginx and HAProxy.
    two_core = info.get("workers", "1").split()[0] != "1"
    for case in cases:
        for metric, lower, target in SPEC[case]:
            if two_core and target is not None:
                target = 1.0
            cells, med = [], {}
            for p in PROXIES:
                vs = data.get((case, p, metric))
                if not vs:
                    cells.append("–")
                    continue
                med[p] = statistics.median(vs)
                cells.append("%s (%s–%s)" % (fmt(med[p]), fmt(min(vs)), fmt(max(vs))) if len(vs) > 1 else fmt(vs[0]))
            ratio, tgt = "", ""
            rivals = ["nginx"] if case in ("sync", "syncmix") else ["nginx", "haproxy"]
            rv = [med[p] for p in rivals if p in med]
            if lower is not None and "switchyard" in med and rv:
                best = min(rv) if lower else max(rv)
                who = [p for p in rivals if p in med and med[p] == best][0]
                if best:
                    r = med["switchyard"] / best
                    ratio = "%.2f× (vs %s)" % (r, "HAProxy" if who == "haproxy" else who)
                    if target is not None:
                        ok = r <= target if lower else r >= target
                        tgt = "%s %.1f× %s" % ("≤" if lower else "≥", target, "met" if ok else "**missed**")
            if case in ("fup", "fdown") and metric == "peak_rss_mib" and "switchyard" in med:
                tgt = "< 64 MiB %s" % ("met" if med["switchyard"] < 64 else "**missed**")
            if case == "e" and metric == "kib_per_session" and "switchyard" in med:
                tgt += " (aim < 10 KiB: %s)" % ("met" if med["switchyard"] < 10 else "**missed**")
            print("| %s | %s | %s | %s |" % (TITLE[case] if metric == SPEC[case][0][0] else "", metric,
                                             " | ".join(cells), ratio + " | " + tgt))
    if any(c in FILE_SPEC for (c, p, k) in data):
        if cases:
            print()
        file_table(data, info)
    if any(c in COMPRESS_SPEC for (c, p, k) in data):
        if cases or any(c in FILE_SPEC for (c, p, k) in data):
            print()
        compress_table(data, info)
    # What PROXY protocol costs each proxy: a_pp against a_nopp (the same load tool).
    pp = []
    for p in PROXIES:
        a = data.get(("a_nopp", p, "cpu_us_per_req"))
        b = data.get(("a_pp", p, "cpu_us_per_req"))
        if a and b and statistics.median(a):
            pp.append("%s %.3f×" % ("HAProxy" if p == "haproxy" else p, statistics.median(b) / statistics.median(a)))
    if pp:
        print()
        print("CPU per request with a PROXY header ÷ without (a_pp ÷ a_nopp, medians): " + ", ".join(pp))
    failed = sorted({(c, p) for (c, p, k) in data if k == "failed_runs"})
    if failed:
        print()
        print("Runs that produced no result: " + ", ".join("%s/%s" % cp for cp in failed))


if __name__ == "__main__":
    main()
