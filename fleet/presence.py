"""Last seen and reported state per poll, without a database write per poll.

With Redis, a poll does one pipelined round trip (HSET the device's hash, SADD it to a dirty set)
and ``fleet.tasks.flush_presence`` writes the dirty devices in bulk every few seconds. In embedded
mode (no Redis) a poll does one cheap UPDATE instead: correct, and enough for a demo fleet.
"""

import json
import uuid
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.conf import settings

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


def parse_state(header: str | None) -> dict[str, str] | None:
    """``X-Agent-State: {"models": {"fraud": "v2"}}`` → ``{"fraud": "v2"}``; ValueError if malformed."""
    if not header:
        return None
    if len(header) > 4096:
        raise ValueError("X-Agent-State is longer than 4096 characters")
    data = json.loads(header)
    if not isinstance(data, dict) or set(data) - {"models"} or not isinstance(data.get("models", {}), dict):
        raise ValueError('X-Agent-State must be {"models": {"<model>": "<version>"}}')
    models = data.get("models", {})
    if not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 100 and len(v) <= 64 for k, v in models.items()):
        raise ValueError("X-Agent-State models map model names to version labels (strings)")
    return models


def touch(device_id: uuid.UUID, state: dict[str, str] | None, now: datetime | None = None) -> None:
    """Note that the device polled now (and what it runs, when it said)."""
    now = now or datetime.now(UTC)
    r = redis_client()
    did = str(device_id)
    if r is None:
        from fleet.models import Device

        fields: dict[str, Any] = {"last_seen_at": now}
        if state is not None:
            fields["installed"] = state
        Device.objects.filter(pk=device_id).update(**fields)
        return
    mapping = {"seen": now.timestamp()}
    if state is not None:
        mapping["state"] = json.dumps(state)
    key = hash_key(did)
    pipe = r.pipeline(transaction=False)
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, HASH_TTL)
    pipe.sadd(DIRTY, did)
    pipe.execute()


def flush(batch: int = 5000) -> int:
    """Write every dirty device's last seen (and state) to the database in bulk; returns how many."""
    from fleet.models import Device

    r = redis_client()
    if r is None:
        return 0
    total = 0
    while True:
        ids = [i.decode() for i in (r.spop(DIRTY, batch) or [])]
        if not ids:
            return total
        pipe = r.pipeline(transaction=False)
        for did in ids:
            pipe.hmget(hash_key(did), "seen", "state")
        seen_only, with_state = [], []
        for did, (seen, state) in zip(ids, pipe.execute(), strict=True):
            if seen is None:
                continue
            d = Device(id=uuid.UUID(did), last_seen_at=datetime.fromtimestamp(float(seen), UTC))
            if state is not None:
                d.installed = json.loads(state)
                with_state.append(d)
            else:
                seen_only.append(d)
        Device.objects.bulk_update(seen_only, ["last_seen_at"], batch_size=1000)
        Device.objects.bulk_update(with_state, ["last_seen_at", "installed"], batch_size=1000)
        total += len(seen_only) + len(with_state)
