"""The device API's front door: a load-shedding slot and the rate limit, before a body byte is read.

Here rather than in each view: ninja parses a body before the view runs, so a view-level check
would let a flood cost a full parse each, and a slow upload would hold a thread without a slot.
The manifest poll's charge is left to the view (``request.edge_charge``) so it can share the
poll's one Redis round trip (fleet/manifests.py ``poll``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from fleet import limits
from fleet.errors import ProtocolError, from_exception

_ROUTES = [
    (re.compile(r"/api/v1/manifest/?"), "manifest"),
    (re.compile(r"/api/v1/(events|telemetry)/?"), "upload"),
    (re.compile(r"/api/v1/artifacts/[^/]*/?"), "artifact"),
    (re.compile(r"/api/v1/enroll/?"), "enroll"),
    (re.compile(r"/api/v1/signing-key/?"), "signing_key"),
]


def bucket_for(path: str) -> str | None:
    """The rate-limit bucket of a device call (whatever its method), or None for any other path."""
    if not path.startswith("/api/v1/"):
        return None
    for pattern, bucket in _ROUTES:
        if pattern.fullmatch(path):
            return bucket
    return None


class DeviceEdgeMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        bucket = bucket_for(request.path_info)
        if bucket is None:
            return self.get_response(request)
        charge = limits.Charge.for_request(bucket, request)
        try:
            slot = limits.take_slot()
        except ProtocolError as e:
            return from_exception(e)
        limits.begin_request()
        try:
            if bucket == "manifest":
                request.edge_charge = charge  # type: ignore[attr-defined]
            else:
                charge.run()
            response = self.get_response(request)
        except ProtocolError as e:
            response = from_exception(e)
        finally:
            slot.release()
            limits.begin_request()
        if response.status_code == 401:
            limits.note_auth_failure(charge.ip)
        return response
