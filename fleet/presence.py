"""Last seen and reported state per poll, without a database write per poll.

With Redis, polls are buffered in the process and written each second in one pipeline (HSET each
device's hash, SADD them to a dirty set); ``fleet.tasks.flush_presence`` then writes the dirty
devices to the database in bulk every 15 s. In embedded
mode (no Redis) a poll does one cheap UPDATE instead: correct, and enough for a demo fleet.
"""

import atexit
import json
import logging
import math
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)
DIRTY = "ef:presence:dirty"
HASH_TTL = 7 * 24 * 3600


def hash_key(device_id: str) -> str:
    return f"ef:presence:{device_id}"


@lru_cache(maxsize=1)
def redis_client() -> Any:
    """A raw Redis client on ``REDIS_URL`` (shared connection pool per process), or None."""
    if not settings.REDIS_URL:
        return None
    import redis

    return redis.Redis.from_url(settings.REDIS_URL)


MAX_STATE_CHARS = 4096
MAX_STATE_MODELS = 64
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", re.ASCII)
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", re.ASCII)


def valid_state(models: Any) -> dict[str, str]:
    """``models`` as what a device may say it runs (model name -> version label); ValueError if not.

    The same check guards the request and the flush job, so nothing else can reach the database."""
    if not isinstance(models, dict) or len(models) > MAX_STATE_MODELS:
        raise ValueError(f"X-Agent-State models is an object of at most {MAX_STATE_MODELS} entries")
    for k, v in models.items():
        if not isinstance(k, str) or not _MODEL.fullmatch(k) or not isinstance(v, str) or not _VERSION.fullmatch(v):
            raise ValueError("X-Agent-State models map model names to version labels (letters, digits, _ . -)")
    return dict(models)


def parse_state(header: str | None) -> dict[str, str] | None:
    """``X-Agent-State: {"models": {"fraud": "v2"}}`` → ``{"fraud": "v2"}`` (see ``parse_agent_state``)."""
    return parse_agent_state(header)[0]


def valid_conditions(conditions: Any) -> dict[str, Any]:
    """What a device may say about its install conditions (rollout/windows.py); ValueError if not."""
    from rollout.windows import WindowError, valid_reported

    try:
        return valid_reported(conditions)
    except WindowError as e:
        raise ValueError(f"X-Agent-State {e}") from None


def parse_agent_state(header: str | None) -> tuple[dict[str, str] | None, dict[str, Any] | None]:
    """``X-Agent-State: {"models": {"fraud": "v2"}, "conditions": {"power": "external", "network":
    "unmetered", "idle": true}}`` → ``(models, conditions)``, each None when not sent.

    Strictly parsed like a body (fleet/wire.py: ProtocolError naming the header); ValueError if the
    shape is wrong (an unknown key or value, too long, too many entries)."""
    from fleet import wire

    if not header:
        return None, None
    if len(header) > MAX_STATE_CHARS:
        raise ValueError(f"X-Agent-State is longer than {MAX_STATE_CHARS} characters")
    data = wire.header_json(header, "X-Agent-State")
    if not isinstance(data, dict) or set(data) - {"models", "conditions"}:
        raise ValueError('X-Agent-State must be {"models": {"<model>": "<version>"}, "conditions": {...}}')
    models = valid_state(data["models"]) if "models" in data else None
    conditions = valid_conditions(data["conditions"]) if "conditions" in data else None
    if models is None and conditions is None:
        models = {}
    return models, conditions


# Polls within a process are buffered for up to EDGEFLEET_PRESENCE_BUFFER_SECONDS (default 1 s) and
# written to Redis by one background thread in a single pipeline: a poll makes no round trip for
# presence. A crash loses at most that second of "last seen", which the next poll restores.
_pending: dict[str, tuple[float, str | None, str | None]] = {}  # device -> (seen, models, conditions)
_pending_lock = threading.Lock()
_flusher: threading.Thread | None = None
_told: dict[str, tuple[set[str], int]] = {}  # set key -> (members, ttl) to SADD with the next drain


def note_told(key: str, members: set[str], ttl: int) -> None:
    """Queue ``SADD key members`` for the next drain (used for what manifests named)."""
    if not members or redis_client() is None:
        return
    with _pending_lock:
        _told.setdefault(key, (set(), ttl))[0].update(members)
    if _buffer_seconds() <= 0:
        drain()
    else:
        _ensure_flusher()


TOLD_TTL = 90 * 24 * 3600


def told_key(device_id: uuid.UUID | str) -> str:
    """Redis set of what this device's manifests named (``v:<version id>``, ``a:<sha256>``)."""
    return f"ef:told:{device_id}"


def pending_told(key: str, member: str) -> bool:
    entry = _told.get(key)
    return bool(entry and member in entry[0])


def _buffer_seconds() -> float:
    return float(getattr(settings, "EDGEFLEET_PRESENCE_BUFFER_SECONDS", 1.0))


def touch(
    device_id: uuid.UUID,
    state: dict[str, str] | None,
    now: datetime | None = None,
    conditions: dict[str, Any] | None = None,
) -> None:
    """Note that the device polled now (and what it runs, and its install conditions, when it said)."""
    now = now or datetime.now(UTC)
    r = redis_client()
    if r is None:
        from fleet.models import Device

        fields: dict[str, Any] = {"last_seen_at": now}
        if state is not None:
            fields["installed"] = state
        if conditions is not None:
            fields["conditions"] = conditions
        Device.objects.filter(pk=device_id).update(**fields)
        return
    did = str(device_id)
    with _pending_lock:
        previous = _pending.get(did)
        encoded = json.dumps(state) if state is not None else (previous[1] if previous else None)
        cond = json.dumps(conditions) if conditions is not None else (previous[2] if previous else None)
        _pending[did] = (now.timestamp(), encoded, cond)
    if _buffer_seconds() <= 0:
        drain()
    else:
        _ensure_flusher()


def _ensure_flusher() -> None:
    global _flusher
    if _flusher is not None and _flusher.is_alive():
        return
    with _pending_lock:
        if _flusher is None or not _flusher.is_alive():
            _flusher = threading.Thread(target=_flush_loop, name="presence-flusher", daemon=True)
            _flusher.start()
            atexit.register(drain)


def _flush_loop() -> None:
    while True:
        time.sleep(_buffer_seconds() or 1.0)
        try:
            drain()
        except Exception:  # Redis away for a moment: keep the buffer for the next round
            logger.warning("presence: could not write to Redis", exc_info=True)


def drain() -> int:
    """Write the buffered polls of this process to Redis now (one pipeline); returns how many."""
    global _pending, _told
    r = redis_client()
    if r is None or not (_pending or _told):
        return 0
    with _pending_lock:
        batch, _pending = _pending, {}
        told, _told = _told, {}
    try:
        pipe = r.pipeline(transaction=False)
        for key, (members, ttl) in told.items():
            pipe.sadd(key, *members)
            pipe.expire(key, ttl)
        for did, (seen, state, cond) in batch.items():
            mapping: dict[str, Any] = {"seen": seen}
            if state is not None:
                mapping["state"] = state
            if cond is not None:
                mapping["cond"] = cond
            key = hash_key(did)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, HASH_TTL)
        if batch:
            pipe.sadd(DIRTY, *batch)
        pipe.execute()
    except Exception:
        with _pending_lock:
            for did, value in batch.items():
                _pending.setdefault(did, value)
            for key, (members, ttl) in told.items():
                _told.setdefault(key, (set(), ttl))[0].update(members)
        raise
    return len(batch)


def flush(batch: int = 5000) -> int:
    """Write every dirty device's last seen (and state) to the database in bulk; returns how many.

    Shared by the whole fleet, so no single entry may stop it: an entry that does not parse (an id
    that is no UUID, a time that is no number, a state that is not what a poll may report) is
    skipped with a log line, and a batch the database refuses is written row by row, skipping the
    row it refuses."""
    r = redis_client()
    if r is None:
        return 0
    total = 0
    while True:
        ids = [i.decode("utf-8", "replace") for i in (r.spop(DIRTY, batch) or [])]
        if not ids:
            return total
        pipe = r.pipeline(transaction=False)
        for did in ids:
            pipe.hmget(hash_key(did), "seen", "state", "cond")
        groups: dict[tuple[str, ...], list[Any]] = {}
        for did, (seen, state, cond) in zip(ids, pipe.execute(), strict=True):
            try:
                device = _entry(did, seen, state, cond)
            except (ValueError, TypeError, OverflowError, OSError) as e:
                logger.warning("presence: skipped the entry of device %r: %s", did[:64], e)
                continue
            if device is not None:
                fields = (
                    ("last_seen_at",)
                    + (("installed",) if state is not None else ())
                    + (("conditions",) if cond is not None else ())
                )
                groups.setdefault(fields, []).append(device)
        total += sum(_write(devices, list(fields)) for fields, devices in groups.items())


def _entry(did: str, seen: bytes | None, state: bytes | None, cond: bytes | None = None) -> Any:
    """The Device row to write for one Redis entry (None: nothing to write); ValueError if it is garbage."""
    from fleet import wire
    from fleet.errors import ProtocolError
    from fleet.models import Device

    device_id = uuid.UUID(did)
    if seen is None:
        return None
    when = float(seen)
    if not math.isfinite(when):
        raise ValueError(f"last seen {seen[:40]!r} is not a time")
    d = Device(id=device_id, last_seen_at=datetime.fromtimestamp(when, UTC))
    if state is not None:
        try:
            d.installed = valid_state(wire.loads(state))
        except ProtocolError as e:
            raise ValueError(f"state: {e.message}") from None
    if cond is not None:
        try:
            d.conditions = valid_conditions(wire.loads(cond))
        except ProtocolError as e:
            raise ValueError(f"conditions: {e.message}") from None
    return d


def _write(devices: list[Any], fields: list[str]) -> int:
    from django.db import DatabaseError, transaction

    from fleet.models import Device

    if not devices:
        return 0
    try:
        with transaction.atomic():
            Device.objects.bulk_update(devices, fields, batch_size=1000)
        return len(devices)
    except DatabaseError:
        logger.warning("presence: a batch of %d was refused; writing it row by row", len(devices), exc_info=True)
    written = 0
    for d in devices:
        try:
            with transaction.atomic():
                Device.objects.filter(pk=d.pk).update(**{f: getattr(d, f) for f in fields})
            written += 1
        except DatabaseError as e:
            logger.warning("presence: skipped the entry of device %s: %s", d.pk, e)
    return written
