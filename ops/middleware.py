"""Request ids and the device API's request metrics, outermost in the middleware chain.

``X-Request-ID`` from the client (or a proxy) is kept when it is a sane token (at most 128 of
``A-Z a-z 0-9 . _ : -``), otherwise a fresh one is made; either way it is in every log record of
the request, in Celery tasks the request queues, and echoed in the response.
"""

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from ops import metrics
from ops.logs import REQUEST_ID

SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
access_log = logging.getLogger("edgefleet.access")


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-ID", "")
        rid = given if SANE_ID.match(given) else uuid.uuid4().hex
        request.request_id = rid
        token = REQUEST_ID.set(rid)
        start = time.perf_counter()
        try:
            response = self.get_response(request)
            response["X-Request-ID"] = rid
            if getattr(settings, "EDGEFLEET_ACCESS_LOG", False):
                access_log.info(
                    "%s %s %s",
                    request.method,
                    request.path,
                    response.status_code,
                    extra={
                        "method": request.method,
                        "path": request.path[:300],
                        "status": response.status_code,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                    },
                )
            return response
        finally:
            REQUEST_ID.reset(token)


class MetricsMiddleware:
    """Counts and times the device API by route and status (per process; see docs/operations.md)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        route = metrics.device_route(request.path)
        if route is None:
            response = self.get_response(request)
            if request.path.startswith("/api/v1/"):
                metrics.API_REQUESTS.labels(request.method or "", metrics.status_label(response.status_code)).inc()
            return response
        start = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - start
        status = metrics.status_label(response.status_code)
        metrics.DEVICE_REQUESTS.labels(route, status).inc()
        metrics.DEVICE_LATENCY.labels(route).observe(elapsed)
        if route == "manifest":
            metrics.POLLS.labels(status).inc()
        elif route in ("telemetry", "events") and response.status_code in (200, 202):
            _count_ingest(route, response)
        return response


def _count_ingest(route: str, response: HttpResponse) -> None:
    """Accepted, duplicate and rejected items from the answer the device got (its JSON body)."""
    try:
        body = json.loads(response.content)
    except (ValueError, AttributeError):
        return
    if not isinstance(body, dict):
        return
    counter = metrics.TELEMETRY_REPORTS if route == "telemetry" else metrics.DEVICE_EVENTS
    for result, key in (("accepted", "accepted"), ("duplicate", "duplicates"), ("rejected", "rejected")):
        value = body.get(key)
        n = len(value) if isinstance(value, list) else (value if isinstance(value, int) else 0)
        if n:
            counter.labels(result).inc(n)
