"""Last seen and reported state per poll, without a database write per poll.

With Redis, polls are buffered in the process and written each second in one pipeline (HSET each
device's hash, SADD them to a dirty set); ``fleet.tasks.flush_presence`` then writes the dirty
devices to the database every 15 s: on PostgreSQL one ``COPY`` into a temporary table and one
``UPDATE … FROM`` per 20,000 devices, never moving a last seen backwards (docs/scale.md). In embedded
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
_drain_lock = threading.Lock()
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
    r = redis_client()
    if r is None or not (_pending or _told):
        return 0
    with _drain_lock:  # one drain at a time: two could otherwise write one device's polls out of order
        return _drain(r)


def _drain(r: Any) -> int:
    global _pending, _told
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


FLUSH_BATCH = 20_000


def flush(batch: int = FLUSH_BATCH) -> int:
    """Write every dirty device's last seen (and state) to the database in bulk; returns how many.

    Each round takes up to ``batch`` ids off the dirty set and writes them in one statement
    (PostgreSQL: ``COPY`` into a temporary table and one ``UPDATE … FROM``; elsewhere one UPDATE per
    row, see :func:`store`). A write only ever moves a device's last seen forward, so two flushes that
    overlap (a slow one and the next beat) cannot put an older time over a newer one, and a poll that
    lands while a round runs is simply dirty again for the next flush: nothing is lost under load.
    A flush takes on only as many ids as were dirty when it started, so it ends even while polls
    keep coming.
    If the database cannot be reached, the round's ids go back to the dirty set before the error
    is raised.

    Shared by the whole fleet, so no single entry may stop it: an entry that does not parse (an id
    that is no UUID, a time that is no number, a state that is not what a poll may report) is
    skipped with a log line, and a batch the database refuses is written row by row, skipping the
    row it refuses."""
    r = redis_client()
    if r is None:
        return 0
    total, left = 0, r.scard(DIRTY)
    while left > 0:  # what was dirty when it started: under load, later polls wait for the next beat
        raw_ids = r.spop(DIRTY, min(batch, left)) or []
        if not raw_ids:
            break
        left -= len(raw_ids)
        try:
            total += _flush_round(r, raw_ids)
        except Exception:
            r.sadd(DIRTY, *raw_ids)  # not written: the next flush tries them again
            raise
    return total


# device id, last seen, installed state and install conditions as JSON (None: not reported)
Row = tuple[uuid.UUID, datetime, str | None, str | None]


def _flush_round(r: Any, raw_ids: list[bytes]) -> int:
    ids = [i.decode("utf-8", "replace") for i in raw_ids]
    pipe = r.pipeline(transaction=False)
    for did in ids:
        pipe.hmget(hash_key(did), "seen", "state", "cond")
    rows: list[Row] = []
    for did, (seen, state, cond) in zip(ids, pipe.execute(), strict=True):
        try:
            row = _entry(did, seen, state, cond)
        except (ValueError, TypeError, OverflowError, OSError) as e:
            logger.warning("presence: skipped the entry of device %r: %s", did[:64], e)
            continue
        if row is not None:
            rows.append(row)
    return _write(rows)


def _entry(did: str, seen: bytes | None, state: bytes | None, cond: bytes | None = None) -> Row | None:
    """The row to write for one Redis entry (None: nothing to write); ValueError if it is garbage."""
    from fleet import wire
    from fleet.errors import ProtocolError

    device_id = uuid.UUID(did)
    if seen is None:
        return None
    when = float(seen)
    if not math.isfinite(when):
        raise ValueError(f"last seen {seen[:40]!r} is not a time")
    encoded = None
    if state is not None:
        try:
            encoded = json.dumps(valid_state(wire.loads(state)), separators=(",", ":"))
        except ProtocolError as e:
            raise ValueError(f"state: {e.message}") from None
    conditions = None
    if cond is not None:
        try:
            conditions = json.dumps(valid_conditions(wire.loads(cond)), separators=(",", ":"))
        except ProtocolError as e:
            raise ValueError(f"conditions: {e.message}") from None
    return device_id, datetime.fromtimestamp(when, UTC), encoded, conditions


def _write(rows: list[Row]) -> int:
    """:func:`store` the rows; if the database refuses the batch (not: cannot be reached), row by row."""
    from django.db import DatabaseError, InterfaceError, OperationalError

    if not rows:
        return 0
    try:
        store(rows)
        return len(rows)
    except (OperationalError, InterfaceError):
        raise  # the database is away: the caller puts the ids back
    except DatabaseError:
        logger.warning("presence: a batch of %d was refused; writing it row by row", len(rows), exc_info=True)
    written = 0
    for row in rows:
        try:
            store([row])
            written += 1
        except (OperationalError, InterfaceError):
            raise
        except DatabaseError as e:
            logger.warning("presence: skipped the entry of device %s: %s", row[0], e)
    return written


def store(rows: list[Row], *, bulk: bool | None = None) -> None:
    """Write ``rows`` in one transaction, each only if it is not older than what the database holds.

    ``bulk`` (default: on PostgreSQL) streams them with ``COPY`` into a temporary table and applies
    them with one ``UPDATE … FROM``: 250,000 rows in a few seconds, where ``bulk_update``'s
    ``CASE WHEN`` took over a minute. Otherwise (SQLite, the embedded mode) one UPDATE per row
    through the ORM, which is plenty for a demo fleet."""
    from django.db import connection, transaction

    if bulk is None:
        bulk = connection.vendor == "postgresql"
    with transaction.atomic():
        if bulk:
            _store_copy(connection, rows)
        else:
            _store_rows(rows)


def _store_rows(rows: list[Row]) -> None:
    from django.db.models import Q

    from fleet.models import Device

    for device_id, seen, state, conditions in rows:
        fields: dict[str, Any] = {"last_seen_at": seen}
        if state is not None:
            fields["installed"] = json.loads(state)
        if conditions is not None:
            fields["conditions"] = json.loads(conditions)
        Device.objects.filter(Q(last_seen_at__isnull=True) | Q(last_seen_at__lte=seen), pk=device_id).update(**fields)


_COPY_TABLE = "ef_presence_in"


def _store_copy(connection: Any, rows: list[Row]) -> None:
    import csv
    import io

    from fleet.models import Device

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for device_id, seen, state, conditions in rows:
        w.writerow((str(device_id), seen.isoformat(), state or "", conditions or ""))
    buf.seek(0)
    table = connection.ops.quote_name(Device._meta.db_table)
    with connection.cursor() as cur:
        cur.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_COPY_TABLE} (id uuid, seen timestamptz, state jsonb, cond jsonb) "
            "ON COMMIT DELETE ROWS"
        )
        # Empty even inside an outer transaction (where no commit has emptied it): a row of an earlier
        # round left here would join the UPDATE too, and which of two rows wins is unspecified.
        cur.execute(f"TRUNCATE {_COPY_TABLE}")
        raw = cur.cursor  # the driver's cursor: COPY is not in the DB-API
        sql = f"COPY {_COPY_TABLE} (id, seen, state, cond) FROM STDIN WITH (FORMAT csv)"
        if hasattr(raw, "copy_expert"):  # psycopg2
            raw.copy_expert(sql, buf)
        else:  # psycopg 3
            with raw.copy(sql) as copy:
                copy.write(buf.getvalue())
        cur.execute(
            f"UPDATE {table} AS d SET last_seen_at = t.seen, installed = COALESCE(t.state, d.installed), "
            "conditions = COALESCE(t.cond, d.conditions) "
            f"FROM {_COPY_TABLE} AS t WHERE d.id = t.id AND (d.last_seen_at IS NULL OR d.last_seen_at <= t.seen)"
        )
