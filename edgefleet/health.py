"""Liveness (``/healthz``) and readiness (``/readyz``) probes.

``/healthz`` says the process answers and does no I/O, so a slow database never gets a healthy web
process restarted. ``/readyz`` says whether this process can do its work now: the database, Redis
(when configured), the Celery broker and artifact storage each answer within
``EDGEFLEET_READYZ_TIMEOUT``; 200 with one entry per check, or 503 naming what failed. Never a 500:
every failure, including a hung dependency, becomes a named failed check.

Both are answered by ``ProbeMiddleware``, placed before Django's security middleware (after request
ids and metrics only): load balancers and container health checks probe by IP over plain HTTP, so a
probe must not depend on ``ALLOWED_HOSTS``, the HTTPS redirect, sessions or the CSP. Bodies name
checks and exception classes only; details (hosts, paths) go to the log, not to whoever can reach
the port.
"""

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

log = logging.getLogger(__name__)

# A small fixed pool: checks run side by side (the slowest sets the answer time), and a dependency
# that hangs can hold at most these threads; a probe that finds them all busy says "timeout".
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


def check_database() -> str | None:
    from django.db import connections

    conn = connections["default"]
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        conn.close()  # this pool thread's own connection; the next probe connects afresh
    return None


def check_redis() -> str | None:
    if not settings.REDIS_URL:
        return "not configured"  # embedded defaults: file cache and file broker, nothing to reach
    import redis

    timeout = settings.EDGEFLEET_READYZ_TIMEOUT
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()
    return None


def check_broker() -> str | None:
    """A connection to the broker, not a task round trip (that would need a worker)."""
    from edgefleet.celery import app

    timeout = settings.EDGEFLEET_READYZ_TIMEOUT
    with app.connection_for_write(connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    return None


def check_storage() -> str | None:
    """Local storage: write, read back and delete a small probe (a full or read-only disk shows).
    Remote storage: an existence check only, so probes do not turn into paid writes."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import FileSystemStorage, storages

    storage = storages["default"]
    if not isinstance(storage, FileSystemStorage):
        storage.exists("readyz-probe")
        return None
    payload = uuid.uuid4().hex.encode()
    name = storage.save(f"readyz-{uuid.uuid4().hex}.probe", ContentFile(payload))
    try:
        with storage.open(name, "rb") as f:
            if f.read() != payload:
                raise OSError("the storage probe read back different bytes")
    finally:
        storage.delete(name)
    return None


CHECKS: dict[str, Callable[[], str | None]] = {
    "database": check_database,
    "redis": check_redis,
    "broker": check_broker,
    "storage": check_storage,
}


def _timed(check: Callable[[], str | None]) -> tuple[str | None, float]:
    start = time.monotonic()
    skipped = check()
    return skipped, time.monotonic() - start


def readiness() -> dict:
    """Run every check at once, each bounded by the timeout; the report the probe answers with."""
    timeout = settings.EDGEFLEET_READYZ_TIMEOUT
    futures: dict[str, Future] = {name: _pool.submit(_timed, check) for name, check in CHECKS.items()}
    deadline = time.monotonic() + timeout
    checks: dict[str, dict] = {}
    for name, future in futures.items():
        try:
            skipped, took = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()  # not started yet (the pool is busy with hung checks): never run it
            log.warning("readyz: %s did not answer within %.1f s", name, timeout)
            checks[name] = {"ok": False, "error": "timeout"}
            continue
        except Exception as exc:  # any failure is this dependency's failure, never the probe's 500
            log.warning("readyz: %s failed: %r", name, exc)
            checks[name] = {"ok": False, "error": "timeout" if _is_timeout(exc) else type(exc).__name__}
            continue
        checks[name] = {"ok": True, "skipped": skipped} if skipped else {"ok": True, "ms": round(took * 1000, 1)}
    failed = [name for name, c in checks.items() if not c["ok"]]
    return {"ok": not failed, "failed": failed, "checks": checks}


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError) or "timeout" in type(seen).__name__.lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    return _no_store(JsonResponse({"ok": True}))


def readyz(request: HttpRequest) -> HttpResponse:
    report = readiness()
    return _no_store(JsonResponse(report, status=200 if report["ok"] else 503))


PROBES = {"/healthz": healthz, "/readyz": readyz}


class ProbeMiddleware:
    """Answer GET/HEAD probes before host validation, redirects, sessions and the CSP."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is not None and request.method in ("GET", "HEAD"):
            return probe(request)
        return self.get_response(request)
