"""REMOTE_ADDR from switchyard's X-Real-IP, for views served by gunicorn."""

import ipaddress


class RealIPMiddleware:
    """Sets ``request.META["REMOTE_ADDR"]`` to the client address switchyard
    sends in ``X-Real-IP``.

    gunicorn sets REMOTE_ADDR to the TCP peer, which behind a proxy is the
    proxy itself, and never rewrites it from headers (its
    ``--forwarded-allow-ips`` governs the scheme headers, not the address).
    switchyard always sets X-Real-IP: from a client outside its
    ``trusted_proxies`` it is the client's own address, whatever the client
    sent; from a trusted proxy it is the right-most X-Forwarded-For address
    that is not a trusted proxy.

    Only safe when the app is reachable through switchyard alone (gunicorn
    bound to 127.0.0.1, a private address or a unix socket): anyone who can
    reach gunicorn directly can send any X-Real-IP they like. A value that is
    not an IP address is ignored and REMOTE_ADDR left as it is.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        real_ip = request.META.get("HTTP_X_REAL_IP", "").strip()
        if real_ip:
            try:
                request.META["REMOTE_ADDR"] = str(ipaddress.ip_address(real_ip))
            except ValueError:
                pass
        return self.get_response(request)
