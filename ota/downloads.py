"""Serving artifact bytes to devices: ranges for resume, the hash in a header, pluggable storage.

Local storage streams a ``FileResponse`` (with ``Range``); behind nginx, ``EDGEFLEET_X_ACCEL_REDIRECT``
hands the file to nginx with an empty body; with ``EDGEFLEET_STORAGE=s3`` the device is redirected to
a presigned URL so bytes never pass through the app.
"""

import os
import re

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse, HttpResponseRedirect

from fleet.auth import DeviceSnapshot
from fleet.errors import ProtocolError
from ota.models import Artifact
from rollout.manifest import may_fetch

SHA256_RE = re.compile(r"[0-9a-f]{64}")
RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII)  # ASCII digits only: \d also matches "٣"
BEYOND = 10**19  # what a number longer than 19 digits counts as: past any artifact (and no 4,300-digit int())
CHUNK = 256 * 1024


class _Slice:
    """A file object reading only ``length`` bytes, so FileResponse streams just the range."""

    def __init__(self, f: object, length: int) -> None:
        self.f, self.left = f, length

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` for a single ``bytes=`` range; None for none. ProtocolError 416 if unsatisfiable."""
    if not header:
        return None
    m = RANGE_RE.fullmatch(header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None  # a malformed Range is ignored, as RFC 9110 says
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix: the last N bytes
        n = _number(last)
        if n == 0:
            raise _unsatisfiable(size)
        return max(size - n, 0), size - 1
    start = _number(first)
    end = min(_number(last), size - 1) if last else size - 1
    if start >= size or (last and _number(last) < start):
        raise _unsatisfiable(size)
    return start, end


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 19 else BEYOND


def _unsatisfiable(size: int) -> ProtocolError:
    return ProtocolError(
        416, "range_not_satisfiable", f"The artifact has {size} bytes.", "Range", {"Content-Range": f"bytes */{size}"}
    )


def serve(snapshot: DeviceSnapshot, sha256: str, range_header: str | None) -> HttpResponse:
    """The bytes of ``sha256`` for this device, or 404 when its manifests never named it."""
    if not SHA256_RE.fullmatch(sha256):
        raise ProtocolError(400, "invalid", "An artifact is named by 64 lowercase hex characters.", "sha256")
    artifact = Artifact.objects.filter(sha256=sha256).first()
    if artifact is None or not may_fetch(snapshot, sha256):
        raise ProtocolError(404, "not_found", "No such artifact for this device.", "sha256")
    headers = {"X-Content-SHA256": sha256, "Accept-Ranges": "bytes"}
    if os.environ.get("EDGEFLEET_STORAGE", "local") == "s3":
        resp: HttpResponse = HttpResponseRedirect(default_storage.url(artifact.storage_key))
    elif settings.EDGEFLEET_X_ACCEL_REDIRECT:
        resp = HttpResponse(b"", content_type="application/octet-stream")
        resp["X-Accel-Redirect"] = settings.EDGEFLEET_X_ACCEL_REDIRECT.rstrip("/") + "/" + artifact.storage_key
    else:
        size = artifact.size
        rng = parse_range(range_header, size)
        f = default_storage.open(artifact.storage_key, "rb")
        if rng is None:
            resp = FileResponse(f, content_type="application/octet-stream")
            resp["Content-Length"] = str(size)
        else:
            start, end = rng
            f.seek(start)
            resp = FileResponse(_Slice(f, end - start + 1), content_type="application/octet-stream", status=206)
            resp["Content-Range"] = f"bytes {start}-{end}/{size}"
            resp["Content-Length"] = str(end - start + 1)
    for k, v in headers.items():
        resp[k] = v
    return resp
