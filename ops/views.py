"""``/metrics`` for Prometheus, behind a bearer token or an address allow-list.

With neither configured it answers only in DEBUG or the embedded setup (``make run`` without
``DATABASE_URL``), and then only to loopback clients: metrics name models, versions and queue
sizes, which are not for the internet.
"""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ops import metrics


def _addr(request: HttpRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return None


def _embedded() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")


def allowed(request: HttpRequest) -> tuple[bool, int, str]:
    token = getattr(settings, "EDGEFLEET_METRICS_TOKEN", "")
    nets = getattr(settings, "EDGEFLEET_METRICS_ALLOW", [])
    addr = _addr(request)
    if token:
        given = request.headers.get("Authorization", "")
        if given.lower().startswith("bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode()):
            return True, 200, ""
    if nets and addr is not None and any(addr in ipaddress.ip_network(n, strict=False) for n in nets):
        return True, 200, ""
    if not token and not nets:
        if (settings.DEBUG or _embedded()) and addr is not None and addr.is_loopback:
            return True, 200, ""
        return False, 403, "Metrics are off: set EDGEFLEET_METRICS_TOKEN or EDGEFLEET_METRICS_ALLOW."
    if token:
        return False, 401, "Send Authorization: Bearer <EDGEFLEET_METRICS_TOKEN>."
    return False, 403, "This address is not in EDGEFLEET_METRICS_ALLOW."


def metrics_view(request: HttpRequest) -> HttpResponse:
    ok, status, why = allowed(request)
    if not ok:
        response = HttpResponse(why + "\n", status=status, content_type="text/plain; charset=utf-8")
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
