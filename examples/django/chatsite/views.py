"""Synchronous views, served by gunicorn sync workers behind switchyard."""

import hashlib
import mimetypes
import os
import time
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core import signing
from django.core.files.storage import default_storage
from django.http import (Http404, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden,
                         JsonResponse, StreamingHttpResponse)
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_http_methods, require_safe

INSTANCE = os.environ.get("INSTANCE", "gunicorn")


def _request_info(request):
    """What Django knows about the request thanks to the proxy's headers."""
    return {
        "instance": INSTANCE,
        "pid": os.getpid(),
        "is_secure": request.is_secure(),
        "scheme": request.scheme,
        "host": request.get_host(),
        "port": request.get_port(),
        "absolute_uri": request.build_absolute_uri(),
        # The client: set from X-Real-IP by chatsite.middleware.RealIPMiddleware.
        "remote_addr": request.META.get("REMOTE_ADDR", ""),
        # The headers as they reached Django (switchyard sets or replaces them;
        # a client's Forwarded header is dropped, so "forwarded" stays empty).
        "x_forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR", ""),
        "x_forwarded_proto": request.META.get("HTTP_X_FORWARDED_PROTO", ""),
        "x_forwarded_host": request.META.get("HTTP_X_FORWARDED_HOST", ""),
        "x_forwarded_port": request.META.get("HTTP_X_FORWARDED_PORT", ""),
        "x_real_ip": request.META.get("HTTP_X_REAL_IP", ""),
        "forwarded": request.META.get("HTTP_FORWARDED", ""),
        # What the client accepts reaches Django unchanged; Django compresses
        # nothing itself (no GZipMiddleware): switchyard does, on routes with
        # compress = true.
        "accept_encoding": request.META.get("HTTP_ACCEPT_ENCODING", ""),
    }


@require_GET
def index(request):
    return render(request, "index.html", {"info": _request_info(request)})


@require_GET
def info(request):
    return JsonResponse(_request_info(request))


@require_http_methods(["GET", "POST"])
def form(request):
    """A form protected by CSRF (the middleware checks Origin, Host, the token)."""
    if request.method == "POST":
        name = request.POST.get("name", "")
        return render(request, "form.html", {"submitted": name, "info": _request_info(request)})
    return render(request, "form.html", {"info": _request_info(request)})


@require_http_methods(["GET", "POST"])
def upload(request):
    if request.method == "GET":
        return render(request, "upload.html", {})
    f = request.FILES.get("file")
    if f is None:
        return HttpResponseBadRequest("no file\n")
    digest = hashlib.sha256()
    for chunk in f.chunks():
        digest.update(chunk)
    result = {"name": f.name, "size": f.size, "sha256": digest.hexdigest(), "instance": INSTANCE}
    if request.POST.get("save"):
        # Kept in MEDIA_ROOT; switchyard's /media/ route serves it from now on.
        stored = default_storage.save(f"uploads/{f.name}", f)
        result["url"] = default_storage.url(stored)
    return JsonResponse(result)


# --- protected downloads: the view decides, switchyard sends the bytes ---------------

# A download link carries a token signed with SECRET_KEY (the file name and
# the time it was made), so it can be handed out and expires; a real site
# would check request.user instead, or as well.
DOWNLOAD_SIGNER = signing.TimestampSigner(salt="chatsite.download")
DOWNLOAD_MAX_AGE = 3600


def _protected_files():
    root = settings.PROTECTED_ROOT
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


@require_GET
def downloads(request):
    files = [{"name": p.name, "size": p.stat().st_size,
              "url": reverse("download", args=[p.name]) + "?" +
              urlencode({"token": DOWNLOAD_SIGNER.sign(p.name)})}
             for p in _protected_files()]
    return render(request, "downloads.html", {"files": files, "root": settings.PROTECTED_ROOT,
                                              "max_age": DOWNLOAD_MAX_AGE})


@require_GET
def download(request, name):
    """Checks the link, then hands the file to switchyard (X-Accel-Redirect).

    The response has no body: switchyard drops it, frees this worker at once,
    and serves PROTECTED_URL + name from its internal /protected/ route,
    keeping the Content-Type and Content-Disposition set here (Range and
    conditional requests work as for any file). This is what
    django-sendfile2's nginx backend does.
    """
    try:
        signed = DOWNLOAD_SIGNER.unsign(request.GET.get("token", ""), max_age=DOWNLOAD_MAX_AGE)
    except signing.BadSignature:   # SignatureExpired too
        return HttpResponseForbidden("this download link is not valid (or has expired)\n",
                                     content_type="text/plain")
    if signed != name:
        return HttpResponseForbidden("this download link is for another file\n",
                                     content_type="text/plain")
    if name not in {p.name for p in _protected_files()}:
        raise Http404("no such file")
    content_type, _ = mimetypes.guess_type(name)
    response = HttpResponse(content_type=content_type or "application/octet-stream")
    response["Content-Disposition"] = content_disposition_header(True, name)
    response["Cache-Control"] = "private"
    response["X-Accel-Redirect"] = settings.PROTECTED_URL + quote(name)
    return response


@require_GET
def slow(request):
    """Holds the worker, as a slow report or an external API call would."""
    seconds = min(float(request.GET.get("seconds", "1")), 10.0)
    time.sleep(seconds)
    return JsonResponse({"instance": INSTANCE, "slept": seconds})


# --- compression at the proxy ------------------------------------------------------
# The site's app route has `compress = true`: switchyard compresses these
# views' answers (zstd, br or gzip, as the client prefers), the worker sends
# them plain. Their content depends on the query string alone, so the same
# request straight to gunicorn gives the same bytes.

CATALOG_MAX_ROWS = 20000


def _catalog_rows(request):
    try:
        n = int(request.GET.get("rows", "200"))
    except ValueError:
        n = 200
    n = max(0, min(n, CATALOG_MAX_ROWS))
    return [{"sku": f"SKU-{i:06d}", "name": f"Item number {i}",
             "price": f"{(i * 37) % 10000 / 100:.2f}", "stock": (i * 7919) % 250}
            for i in range(n)]


def _cacheable(request, response, body: bytes):
    """A strong ETag from the bytes, `Vary: Cookie` (switchyard merges its
    `Accept-Encoding` into it) and, with `?no_transform=1`, `Cache-Control:
    no-transform`, which tells switchyard to leave the body alone."""
    response["ETag"] = '"%s"' % hashlib.sha256(body).hexdigest()[:20]
    patch_vary_headers(response, ["Cookie"])
    if request.GET.get("no_transform") == "1":
        response["Cache-Control"] = "no-transform"
    return response


@require_safe
def catalog(request):
    """A page of a few hundred table rows (HTML)."""
    response = render(request, "catalog.html", {"rows": _catalog_rows(request)})
    return _cacheable(request, response, response.content)


@require_safe
def catalog_json(request):
    """The same rows as JSON."""
    response = JsonResponse({"rows": _catalog_rows(request)})
    return _cacheable(request, response, response.content)


STREAM_GATE_DEADLINE = 20.0   # below gunicorn's 30 s worker timeout


@require_GET
def stream(request):
    """An HTML page sent in pieces (StreamingHttpResponse), as a long report
    or a progress page is: piece 1 at once, and each next piece only once the
    Redis key `stream-gate:<gate>` counts up to it (an external event: a job
    finished). A gate that does not open within STREAM_GATE_DEADLINE ends the
    page with a timeout marker, so the worker is never held for long."""
    import redis

    gate = request.GET.get("gate", "")
    try:
        pieces = max(1, min(int(request.GET.get("pieces", "3")), 10))
    except ValueError:
        pieces = 3
    key = f"stream-gate:{gate}"
    r = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)

    def piece(i):
        rows = "".join(f"<li>piece {i} line {j}: {'x' * 40}</li>\n" for j in range(30))
        return f'<section id="piece-{i}">\n<ul>\n{rows}</ul>\n</section>\n'

    def body():
        yield "<!doctype html>\n<title>stream</title>\n" + piece(1)
        for i in range(2, pieces + 1):
            deadline = time.monotonic() + STREAM_GATE_DEADLINE
            while int(r.get(key) or 0) < i:
                if time.monotonic() > deadline:
                    yield f'<p id="timeout">gate {gate} stayed shut before piece {i}</p>\n'
                    return
                time.sleep(0.02)
            yield piece(i)
        yield '<p id="end">end</p>\n'

    response = StreamingHttpResponse(body(), content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response


def healthz(request):
    return HttpResponse("ok\n", content_type="text/plain")
