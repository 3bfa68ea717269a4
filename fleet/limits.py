"""Load shedding for the device API: a bounded number of requests in flight per process.

A request that cannot get a slot at once is answered ``429`` with ``Retry-After`` instead of
queueing behind the others: agents back off with jitter, and the server stays responsive.
Settings: ``EDGEFLEET_DEVICE_API_CONCURRENCY`` (slots per process, default 64) and
``EDGEFLEET_RETRY_AFTER`` (seconds, default 10).
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from fleet.errors import ProtocolError

_lock = threading.Lock()
_sems: dict[int, threading.BoundedSemaphore] = {}


def semaphore() -> threading.BoundedSemaphore:
    limit = int(getattr(settings, "EDGEFLEET_DEVICE_API_CONCURRENCY", 64))
    with _lock:
        if limit not in _sems:
            _sems[limit] = threading.BoundedSemaphore(limit)
        return _sems[limit]


@contextmanager
def device_slot() -> Iterator[None]:
    """Hold one slot for the body of a device request, or raise the 429 the API answers with."""
    sem = semaphore()
    if not sem.acquire(timeout=0.05):
        retry = str(int(getattr(settings, "EDGEFLEET_RETRY_AFTER", 10)))
        raise ProtocolError(
            429, "overloaded", "The server is busy; retry after the given seconds.", None, {"Retry-After": retry}
        )
    try:
        yield
    finally:
        sem.release()
