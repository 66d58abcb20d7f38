#!/usr/bin/env python3
"""Compression ratio and speed by level (issue 17: which levels switchyard
uses for dynamic content, and why). See bench/README.md, "Compression".

Two documents, both of the kind switchyard compresses on the fly:
  json  bench-http's /json64k (65,536 bytes of REST-API JSON): the script
        starts bench/tools/target/release/bench-http on 127.0.0.1 (a free
        port) and fetches it, or reads --json FILE;
  html  a Django-admin-like change-list page (71,175 bytes), generated here
        from a fixed seed (the same bytes every run), or --html FILE.

For each codec and level, one whole document is compressed by a fresh
encoder, as switchyard does per response, repeated for at least --secs
seconds; --runs rounds each time every codec and level once (interleaved,
so that a busy moment on a shared machine spreads over all of them), and
the best round gives microseconds per document and MB/s of input (1 MB =
10^6 bytes); ratio = input ÷ output. Two
implementations of each codec:

  switchyard's  bench/tools/target/release/bench-compress-levels: the crates
                and features switchyard compresses with (flate2 on zlib-rs,
                Dropbox's brotli in Rust, zstd on libzstd), set up as
                src/compress/codec.rs does (brotli window 2^18, zstd 2^19);
  C             Python's zlib (the system's zlib, 1.2.13 on Debian 12: the
                one nginx's gzip filter uses), brotli (Google's C library)
                with a 2^18 window, zstandard (libzstd) with a 2^19 window.

Every output is decoded once and compared with the input. The ratio shown
is switchyard's codec's; the C library's is added in parentheses where it
differs (zlib and zlib-rs choose different matches at a level).

    cargo build --release --manifest-path bench/tools/Cargo.toml
    .venv-e2e/bin/python bench/compress_levels.py            # needs brotli, zstandard
    taskset -c 1 .venv-e2e/bin/python bench/compress_levels.py --secs 0.2 --runs 9
"""

import argparse
import os
import re
import tempfile
import random
import socket
import subprocess
import sys
import time
import urllib.request
import zlib

try:
    import brotli
    import zstandard
except ImportError:
    sys.exit("needs the brotli and zstandard modules: .venv-e2e/bin/python, or pip install brotli zstandard")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = {"gzip": [1, 3, 5, 6, 9], "br": [1, 3, 4, 5, 6, 9], "zstd": [1, 3, 6, 9]}
CHOSEN = {"gzip": 5, "br": 4, "zstd": 3}  # switchyard's (src/compress/codec.rs)


def gzip_c(level):
    def f(data):
        c = zlib.compressobj(level, zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()
    return f


def br_c(level):
    return lambda data: brotli.compress(data, quality=level, lgwin=18)


def zstd_c(level):
    params = zstandard.ZstdCompressionParameters.from_level(level, window_log=19)
    # A fresh context per document, as a fresh encoder per response.
    return lambda data: zstandard.ZstdCompressor(compression_params=params).compress(data)


DECODE = {
    "gzip": lambda b: zlib.decompress(b, 31),
    "br": brotli.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompress(b),
}
MAKE = {"gzip": gzip_c, "br": br_c, "zstd": zstd_c}


def fetch_json():
    exe = os.path.join(ROOT, "bench", "tools", "target", "release", "bench-http")
    if not os.path.exists(exe):
        sys.exit("build bench/tools first (cargo build --release --manifest-path bench/tools/Cargo.toml), or pass --json FILE")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen([exe, "--listen", "127.0.0.1:%d" % port], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/json64k" % port, timeout=5) as r:
                    return r.read()
            except OSError:
                time.sleep(0.05)
        sys.exit("bench-http did not answer")
    finally:
        p.terminate()
        p.wait()


def django_page():
    """A Django admin change list (orders), as Django renders it: the admin's
    header, breadcrumbs, filters, a CSRF token, 100 rows of a table."""
    r = random.Random(17)
    first = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Dennis", "Frances",
             "John", "Radia", "Leslie", "Tony", "Niklaus", "Sophie", "Guido", "Linus", "Katherine", "Hedy"]
    last = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Ritchie",
            "Allen", "McCarthy", "Perlman", "Lamport", "Hoare", "Wirth", "Wilson", "Torvalds", "Johnson"]
    products = ["Espresso beans, 1 kg", "Pour-over kettle", "Ceramic dripper", "Paper filters (100)",
                "Burr grinder", "Milk jug 600 ml", "Travel mug", "Cold brew bottle", "Cupping spoon",
                "Digital scale", "Tamper 58 mm", "Knock box"]
    status = [("pending", "Pending"), ("paid", "Paid"), ("shipped", "Shipped"), ("delivered", "Delivered"),
              ("refunded", "Refunded")]
    token = "".join(r.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(64))
    out = ["""<!DOCTYPE html>
<html lang="en-us" dir="ltr">
<head>
<title>Select order to change | Shop administration</title>
<link rel="stylesheet" href="/static/admin/css/base.css">
<link rel="stylesheet" href="/static/admin/css/dark_mode.css">
<script src="/static/admin/js/theme.js" defer></script>
<link rel="stylesheet" href="/static/admin/css/nav_sidebar.css">
<script src="/static/admin/js/nav_sidebar.js" defer></script>
<link rel="stylesheet" href="/static/admin/css/changelists.css">
<script src="/admin/jsi18n/"></script>
<script src="/static/admin/js/vendor/jquery/jquery.min.js"></script>
<script src="/static/admin/js/jquery.init.js"></script>
<script src="/static/admin/js/core.js"></script>
<script src="/static/admin/js/admin/RelatedObjectLookups.js"></script>
<script src="/static/admin/js/actions.js"></script>
<script src="/static/admin/js/urlify.js"></script>
<script src="/static/admin/js/prepopulate.js"></script>
<script src="/static/admin/js/vendor/xregexp/xregexp.min.js"></script>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="/static/admin/css/responsive.css">
<meta name="robots" content="NONE,NOARCHIVE">
</head>
<body class=" app-shop model-order change-list" data-admin-utc-offset="0">
<a href="#content-start" class="skip-to-content-link">Skip to main content</a>
<div id="container">
    <header id="header">
        <div id="branding">
        <div id="site-name"><a href="/admin/">Shop administration</a></div>
        </div>
        <div id="user-tools">
                Welcome,
                <strong>admin</strong>.
                    <a href="/">View site</a> /
                <a href="/admin/password_change/">Change password</a> /
                <form id="logout-form" method="post" action="/admin/logout/">
                    <input type="hidden" name="csrfmiddlewaretoken" value="%s">
                    <button type="submit">Log out</button>
                </form>
        </div>
    </header>
    <nav aria-label="Breadcrumbs">
<div class="breadcrumbs">
<a href="/admin/">Home</a>
&rsaquo; <a href="/admin/shop/">Shop</a>
&rsaquo; Orders
</div>
    </nav>
    <div class="main" id="main">
      <nav class="sticky" id="nav-sidebar" aria-label="Sidebar">
  <input type="search" id="nav-filter" placeholder="Start typing to filter…" aria-label="Filter navigation items">
""" % token]
    for app, models in (("auth", ["Groups", "Users"]), ("shop", ["Customers", "Orders", "Products", "Invoices", "Shipments"])):
        out.append('  <div class="app-%s module">\n  <table>\n    <caption>\n      <a href="/admin/%s/" class="section" '
                   'title="Models in the %s application">%s</a>\n    </caption>\n' % (app, app, app.title(), app.title()))
        for m in models:
            u = m.lower()
            out.append('      <tr class="model-%s">\n        <th scope="row"><a href="/admin/%s/%s/">%s</a></th>\n'
                       '        <td><a href="/admin/%s/%s/add/" class="addlink">Add</a></td>\n      </tr>\n'
                       % (u[:-1], app, u[:-1], m, app, u[:-1]))
        out.append("  </table>\n  </div>\n")
    out.append("""</nav>
      <main id="content-start" class="content" tabindex="-1">
        <h1>Select order to change</h1>
  <div id="content-main">
        <ul class="object-tools">
            <li><a href="/admin/shop/order/add/" class="addlink">Add order</a></li>
        </ul>
    <div class="module filtered" id="changelist">
      <div class="changelist-form-container">
<div id="toolbar"><form id="changelist-search" method="get" role="search">
<div><!-- DIV needed for valid HTML -->
<label for="searchbar"><img src="/static/admin/img/search.svg" alt="Search"></label>
<input type="text" size="40" name="q" value="" id="searchbar">
<input type="submit" value="Search">
</div>
</form></div>
        <form id="changelist-form" method="post" novalidate><input type="hidden" name="csrfmiddlewaretoken" value="%s">
<div class="actions">
  <label>Action: <select name="action" required>
  <option value="" selected>---------</option>
  <option value="delete_selected">Delete selected orders</option>
  <option value="mark_shipped">Mark selected orders as shipped</option>
</select></label>
<button type="submit" class="button" title="Run the selected action" name="index" value="0">Go</button>
</div>
<div class="results">
<table id="result_list">
<thead>
<tr>
<th scope="col" class="action-checkbox-column"><div class="text"><span><input type="checkbox" id="action-toggle" aria-label="Select all objects on this page for an action"></span></div><div class="clear"></div></th>
<th scope="col" class="sortable column-number"><div class="text"><a href="?o=1">Number</a></div><div class="clear"></div></th>
<th scope="col" class="sortable column-customer"><div class="text"><a href="?o=2">Customer</a></div><div class="clear"></div></th>
<th scope="col" class="sortable column-product"><div class="text"><a href="?o=3">Product</a></div><div class="clear"></div></th>
<th scope="col" class="sortable column-total"><div class="text"><a href="?o=4">Total</a></div><div class="clear"></div></th>
<th scope="col" class="sortable column-status"><div class="text"><a href="?o=5">Status</a></div><div class="clear"></div></th>
<th scope="col" class="sortable column-created"><div class="text"><a href="?o=6">Created</a></div><div class="clear"></div></th>
</tr>
</thead>
<tbody>
""" % token)
    for i in range(100):
        pk = 48213 - i
        f, l = r.choice(first), r.choice(last)
        code, label = r.choice(status)
        out.append(
            '<tr><td class="action-checkbox"><input type="checkbox" name="_selected_action" value="%d" '
            'class="action-select" aria-label="Select this object for an action - #%d"></td>'
            '<th class="field-number"><a href="/admin/shop/order/%d/change/">#%d</a></th>'
            '<td class="field-customer"><a href="/admin/shop/customer/%d/change/">%s %s</a> &lt;%s.%s@example.com&gt;</td>'
            '<td class="field-product">%s &times; %d</td>'
            '<td class="field-total">%d.%02d&nbsp;&euro;</td>'
            '<td class="field-status"><span class="status status-%s">%s</span></td>'
            '<td class="field-created nowrap">%s %d, 2026, %d:%02d %s</td></tr>\n'
            % (pk, pk, pk, pk, r.randrange(1000, 9999), f, l, f.lower(), l.lower(), r.choice(products),
               r.randrange(1, 6), r.randrange(5, 900), r.randrange(100), code, label,
               r.choice(["Jan.", "Feb.", "March", "April", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov."]),
               r.randrange(1, 29), r.randrange(1, 13), r.randrange(60), r.choice(["a.m.", "p.m."])))
    out.append("""</tbody>
</table>
</div>
<p class="paginator">
<span class="this-page">1</span> <a href="?p=2">2</a> <a href="?p=3">3</a> <span class="dots">…</span> <a href="?p=481">481</a> <a href="?p=482">482</a>
48213 orders
</p>
</form>
      </div>
        <div id="changelist-filter">
          <h2>Filter</h2>
""")
    for field, opts in (("status", [s[1] for s in status]), ("created", ["Any date", "Today", "Past 7 days", "This month", "This year"])):
        out.append('<details data-filter-title="%s" open>\n  <summary>\n    By %s\n  </summary>\n  <ul>\n' % (field, field))
        for o in opts:
            out.append('    <li>\n    <a href="?%s__exact=%s">%s</a></li>\n' % (field, o.lower().replace(" ", "_"), o))
        out.append("  </ul>\n</details>\n")
    out.append("""        </div>
    </div>
  </div>
        <br class="clear">
      </main>
    </div>
    <footer id="footer"></footer>
</div>
</body>
</html>
""")
    return "".join(out).encode()


def rust_levels(docs, secs, runs):
    """{(codec, level, doc): (ratio, µs)} from bench-compress-levels."""
    exe = os.path.join(ROOT, "bench", "tools", "target", "release", "bench-compress-levels")
    if not os.path.exists(exe):
        sys.exit("build bench/tools first (cargo build --release --manifest-path bench/tools/Cargo.toml), or pass --no-rust")
    with tempfile.TemporaryDirectory() as d:
        args = [exe, "--secs", str(secs), "--runs", str(runs)]
        for flag, (name, data) in zip(("--file", "--file2"), docs.items()):
            path = os.path.join(d, name)
            open(path, "wb").write(data)
            args += [flag, "%s=%s" % (name, path)]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    r = {}
    for line in out.splitlines():
        kv = dict(re.findall(r"(\w+)=(\S+)", line))
        r[(kv["codec"], int(kv["level"]), kv["doc"])] = (int(kv["in"]) / int(kv["out"]), float(kv["us"]))
    return r


def c_levels(docs, secs, runs):
    """{(codec, level, doc): (ratio, seconds per document)}, the C libraries."""
    cases = []
    for codec, levels in LEVELS.items():
        for lv in levels:
            for name, data in docs.items():
                fn = MAKE[codec](lv)
                out = fn(data)
                assert DECODE[codec](out) == data, (codec, lv, name)
                cases.append([(codec, lv, name), fn, data, len(data) / len(out), float("inf")])
    for _ in range(runs):
        for c in cases:
            fn, data = c[1], c[2]
            n, t0 = 0, time.perf_counter()
            while True:
                fn(data)
                n += 1
                t = time.perf_counter() - t0
                if t >= secs:
                    break
            c[4] = min(c[4], t / n)
    return {c[0]: (c[3], c[4]) for c in cases}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="the JSON document (default: fetched from bench-http /json64k)")
    ap.add_argument("--html", help="the HTML page (default: a generated Django admin change list)")
    ap.add_argument("--secs", type=float, default=0.1, help="seconds per measurement")
    ap.add_argument("--runs", type=int, default=5, help="rounds (the best counts)")
    ap.add_argument("--no-rust", action="store_true", help="only the C libraries (no bench-compress-levels)")
    a = ap.parse_args()
    docs = {
        "json": open(a.json, "rb").read() if a.json else fetch_json(),
        "html": open(a.html, "rb").read() if a.html else django_page(),
    }
    print("documents: %s; zlib %s (Python's), brotli %s, zstandard %s (libzstd %s); best of %d rounds × %.2f s" % (
        ", ".join("%s %d bytes" % (k, len(v)) for k, v in docs.items()), zlib.ZLIB_RUNTIME_VERSION,
        getattr(brotli, "__version__", "?"), zstandard.__version__,
        ".".join(map(str, getattr(zstandard, "ZSTD_VERSION", ()))), a.runs, a.secs))
    rust = {} if a.no_rust else rust_levels(docs, a.secs, a.runs)
    c = c_levels(docs, a.secs, a.runs)
    print("switchyard's codecs: flate2 1.1 on zlib-rs, brotli 8 (Rust), zstd 0.13 (libzstd 1.5.7)"
          if rust else "C libraries only")
    print()
    head = []
    for name in docs:
        n = name.upper()
        head += ["%s ratio" % n, "%s µs" % n, "%s MB/s" % n, "%s MB/s, C" % n]
    print("| codec | level | %s |" % " | ".join(head))
    print("|---|---|%s" % ("---|" * len(head)))
    for codec, levels in LEVELS.items():
        for lv in levels:
            cells = []
            for name, data in docs.items():
                c_ratio, per = c[(codec, lv, name)]
                if rust:
                    ratio, us = rust[(codec, lv, name)]
                    rc = "%.2f" % ratio
                    if rc != "%.2f" % c_ratio:
                        rc += " (%.2f)" % c_ratio
                    cells += [rc, "%.0f" % us, "%.0f" % (len(data) / us), "%.0f" % (len(data) / per / 1e6)]
                else:
                    cells += ["%.2f" % c_ratio, "%.0f" % (per * 1e6), "–", "%.0f" % (len(data) / per / 1e6)]
            mark = "**%d**" % lv if CHOSEN[codec] == lv else str(lv)
            print("| %s | %s | %s |" % (codec, mark, " | ".join(cells)))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
