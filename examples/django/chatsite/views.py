"""Synchronous views, served by gunicorn sync workers behind switchyard."""

import hashlib
import os
import time

from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

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
    return JsonResponse({"name": f.name, "size": f.size, "sha256": digest.hexdigest(),
                         "instance": INSTANCE})


@require_GET
def slow(request):
    """Holds the worker, as a slow report or an external API call would."""
    seconds = min(float(request.GET.get("seconds", "1")), 10.0)
    time.sleep(seconds)
    return JsonResponse({"instance": INSTANCE, "slept": seconds})


def healthz(request):
    return HttpResponse("ok\n", content_type="text/plain")
