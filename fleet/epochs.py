"""Two counters in the cache that let each process keep hot data in memory and still notice changes.

``gen`` changes with releases/versions/cohorts/campaigns (resolution data), ``auth`` with token
revocations, rotations and label changes (device snapshots). A process re-reads both at most every
``EDGEFLEET_EPOCH_CHECK_SECONDS`` (default 0.5 s) with one MGET, so a warm poll usually makes no
round trip at all; a change made in this process is seen here at once, elsewhere within that time.
"""

import threading
import time

from django.conf import settings
from django.core.cache import cache

GEN_KEY = "ef:manifest:gen"
AUTH_KEY = "ef:auth:epoch"
_lock = threading.Lock()
_memo: tuple[float, str, str] = (0.0, "", "")


def _new() -> str:
    return f"{time.time_ns():x}"


def current() -> tuple[str, str]:
    """``(gen, auth)``, from process memory when checked less than the interval ago."""
    global _memo
    checked, gen, auth = _memo
    now = time.monotonic()
    if now - checked < float(getattr(settings, "EDGEFLEET_EPOCH_CHECK_SECONDS", 0.5)) and gen:
        return gen, auth
    got = cache.get_many([GEN_KEY, AUTH_KEY])
    gen, auth = got.get(GEN_KEY), got.get(AUTH_KEY)
    if gen is None or auth is None:
        cache.add(GEN_KEY, "0", None)
        cache.add(AUTH_KEY, "0", None)
        got = cache.get_many([GEN_KEY, AUTH_KEY])
        gen, auth = got.get(GEN_KEY, "0"), got.get(AUTH_KEY, "0")
    _memo = (now, str(gen), str(auth))
    return _memo[1], _memo[2]


def bump(key: str) -> str:
    global _memo
    value = _new()
    cache.set(key, value, None)
    with _lock:
        _memo = (0.0, "", "")  # re-read both at the next call in this process
    return value
