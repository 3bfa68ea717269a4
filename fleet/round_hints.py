"""The rounds hint: which aggregation rounds a device has to answer, told on the manifest poll.

A round's phase changes every poll interval or so, while a signed manifest is cached and served
unchanged for days; putting rounds in it would re-sign and re-send it at every phase. So the poll
response carries, beside the signed manifest (200 and 304 alike), an unsigned header
``X-Rounds: <round>:<phase>:<deadline epoch s>,…`` listing the device's open rounds in which it is
still expected to answer (docs/protocol.md, "Rounds"). The agent calls ``/api/v1/rounds`` only when
the hint names a phase it has not answered yet.

Unsigned is enough: a forged or stale hint can only make a device ask (the authenticated rounds
endpoint answers with the truth) or wait until the next poll's hint; no answer ever rests on it.
An absent header means "no hint" (Redis unreachable, an older server), and the agent then asks at
every poll as before. The hint lives in Redis, one small hash per device
(``ef:rh:<device id>``: round → ``phase:deadline``), written by ``telemetry.rounds`` when a round
forms and each time it changes phase, read with one HGETALL per poll; rounds themselves never read
it (their state is in PostgreSQL), so Redis being away costs only the saving, not a round.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

HEADER = "X-Rounds"
PREFIX = "ef:rh:"
# Set once every open round's hints are in Redis. A Redis that restarted empty has no marker, and
# an empty hash would then read "nothing to answer": without the marker the poll carries no hint (the
# agent asks at every poll) until the deadline job has rebuilt them all from PostgreSQL (``rebuild``).
MARKER = "ef:rh:ready"
TTL = 6 * 3600  # a device's hint outlives no round: refreshed at every phase, gone at the end
_client: Any = None


def _redis() -> Any:
    """One client per process, with short timeouts: the hint must never hold a poll up."""
    global _client
    if _client is None and settings.REDIS_URL:
        import redis

        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    return _client


def key(device_id: uuid.UUID | str) -> str:
    return f"{PREFIX}{device_id}"


def publish(updates: Iterable[tuple[uuid.UUID | str, str, str | None, int]]) -> bool:
    """Set (or, with phase None, remove) ``round → phase:deadline`` for each device; one round trip.
    Best effort: False when Redis is away (devices then ask at every poll until it is back)."""
    r = _redis()
    if r is None:
        return False
    pipe = r.pipeline(transaction=False)
    count = 0
    for device_id, round_id, phase, deadline in updates:
        k = key(device_id)
        if phase is None:
            pipe.hdel(k, round_id)
        else:
            pipe.hset(k, round_id, f"{phase}:{int(deadline)}")
            pipe.expire(k, TTL)
        count += 1
    if not count:
        return True
    try:
        pipe.execute()
    except Exception as e:  # redis.RedisError, OSError: the hint is a saving, never a condition
        log.warning("rounds hint not written (%d updates): %s", count, e)
        return False
    return True


def hint_for(device_id: uuid.UUID | str) -> str | None:
    """The header's value for the device ("" when it has nothing to answer), None when unknown."""
    r = _redis()
    if r is None:
        return None
    try:
        ready, entries = r.pipeline(transaction=False).exists(MARKER).hgetall(key(device_id)).execute()
    except Exception as e:
        log.info("rounds hint unavailable: %s", e)
        return None
    if not ready:
        return None
    return format_hint({k.decode(): v.decode() for k, v in entries.items()})


def ready() -> bool | None:
    """Whether the hints are all in Redis (None: Redis away)."""
    r = _redis()
    if r is None:
        return None
    try:
        return bool(r.exists(MARKER))
    except Exception:
        return None


def mark_ready() -> bool:
    """After a rebuild has published every open round's hints."""
    r = _redis()
    try:
        return r is not None and bool(r.set(MARKER, b"1"))
    except Exception as e:
        log.warning("rounds hint marker not set: %s", e)
        return False


def format_hint(entries: dict[str, str]) -> str:
    """``{round: "phase:deadline"}`` as the header's value, earliest deadline first."""
    rows = sorted(entries.items(), key=lambda kv: (kv[1].rsplit(":", 1)[-1].zfill(12), kv[0]))
    return ",".join(f"{rid}:{value}" for rid, value in rows)
