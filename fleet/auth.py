"""Device bearer tokens: issued once, stored as sha256, checked per poll without the database.

``device_auth`` is a ninja ``HttpBearer``: put ``auth=device_auth`` on a device endpoint and
``request.auth`` is a :class:`DeviceSnapshot` (``.id`` is the Device's UUID; use ``device_id=``
when writing rows). The snapshot is cached by token hash in the Django cache (Redis); every change
to a device's token, labels or hardware must call :func:`forget_device` so the next poll re-reads.
"""

import hashlib
import json
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from ninja.security import HttpBearer

from fleet import epochs
from fleet.errors import ProtocolError

TOKEN_PREFIX = "efd_"
SNAPSHOT_TTL = 24 * 3600
NEGATIVE_TTL = 30  # an unknown token is remembered briefly: a bad client cannot hammer the DB


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_key(token_hash: str) -> str:
    return f"ef:tok:{token_hash}"


def poll_key(token_hash: str) -> str:
    """Raw Redis key of the device's ready, signed manifest (fleet/manifests.py: ``poll``)."""
    return f"ef:poll:{token_hash}"


def forget_counter_key(token_hash: str) -> str:
    """Raw Redis counter bumped by every :func:`forget_device`: a manifest built from a snapshot read
    before the bump is not stored (a poll racing a revocation cannot re-cache the old snapshot)."""
    return f"ef:fgt:{token_hash}"


@dataclass(frozen=True)
class DeviceSnapshot:
    """What a poll needs to know about a device; ``rev`` changes whenever labels or hardware do."""

    id: uuid.UUID
    labels: dict[str, str] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    revoked: bool = False
    rev: str = ""

    @property
    def pk(self) -> uuid.UUID:
        return self.id

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "labels": self.labels,
            "hardware": self.hardware,
            "revoked": self.revoked,
            "rev": self.rev,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeviceSnapshot":
        return cls(uuid.UUID(d["id"]), d["labels"], d["hardware"], d["revoked"], d["rev"])

    @classmethod
    def of(cls, device: Any) -> "DeviceSnapshot":
        raw = json.dumps([device.labels, device.hardware], sort_keys=True).encode()
        return cls(
            id=device.id,
            labels=dict(device.labels or {}),
            hardware=dict(device.hardware or {}),
            revoked=device.token_revoked_at is not None,
            rev=hashlib.sha256(raw).hexdigest()[:12],
        )


# Process-local layer over the shared cache: token hash -> snapshot. A forgotten device is dropped
# by the forget log (fleet/epochs.py); everything when the auth counter changes (embedded mode) or
# the log was lost. Bounded: cleared whole when full (cheap, and rare).
_local: dict[str, DeviceSnapshot] = {}
_local_epoch = ""


def _local_max() -> int:
    return int(getattr(settings, "EDGEFLEET_AUTH_LRU", 250_000))


def _drop_local(token_hashes: Iterable[str] | None) -> None:
    if token_hashes is None:
        _local.clear()
        return
    for th in token_hashes:
        _local.pop(th, None)


epochs.on_forget(_drop_local)


def _forget_count(th: str) -> bytes | None:
    from fleet.presence import redis_client

    r = redis_client()
    return r.get(forget_counter_key(th)) if r is not None else None


def snapshot_for_token(token: str, *, local: bool = True) -> DeviceSnapshot | None:
    """The device behind ``token`` (revoked ones included): process memory, then the cache, then the DB.

    ``local=False`` skips process memory: the poll path stores what it builds in Redis for every
    process, so it must not build from a snapshot this process has not yet heard was forgotten.
    """
    global _local_epoch
    from fleet.models import Device

    th = hash_token(token)
    auth_epoch = epochs.current()[1]
    if auth_epoch != _local_epoch:
        _local.clear()
        _local_epoch = auth_epoch
    if local:
        snap = _local.get(th)
        if snap is not None:
            return snap
    seq = epochs.applied()
    key = token_key(th)
    hit = cache.get(key)
    if hit is not None:
        if not hit:
            return None
        snap = DeviceSnapshot.from_dict(hit)
    else:
        from fleet.limits import check_lookup

        check_lookup()  # a client that keeps sending unknown tokens gets no more lookups for a while
        before = _forget_count(th)
        device = Device.objects.filter(token_hash=th).only("id", "labels", "hardware", "token_revoked_at").first()
        if device is None:
            cache.set(key, {}, NEGATIVE_TTL)
            return None
        snap = DeviceSnapshot.of(device)
        cache.set(key, snap.as_dict(), SNAPSHOT_TTL)
        if _forget_count(th) != before:  # forgotten while we read the row: do not keep what we read
            cache.delete(key)
    if len(_local) >= _local_max():
        _local.clear()
    _local[th] = snap
    if epochs.forgotten_since(th, seq):  # forgotten here while we read: keep nothing
        _local.pop(th, None)
    return snap


def forget_device(token_hash: str) -> None:
    """Drop a device's cached snapshot and ready manifest (revoke, rotate, label or hardware change)
    in every process; again after the surrounding transaction commits, if there is one.

    Only this device is dropped from other processes' memory (the forget log, fleet/epochs.py),
    within ``EDGEFLEET_EPOCH_CHECK_SECONDS``; in this process at once."""
    from django.db import transaction

    from fleet.presence import redis_client

    def drop() -> None:
        # One transaction: count, then drop the cached snapshot (its raw key: the cache lives on
        # REDIS_URL) and the ready manifest, then log. A reader that saw the old count stored
        # nothing that outlives this (snapshot_for_token and the poll path check the count).
        r = redis_client()
        if r is not None:
            pipe = r.pipeline(transaction=True)
            pipe.incr(forget_counter_key(token_hash))
            pipe.expire(forget_counter_key(token_hash), SNAPSHOT_TTL * 2)
            pipe.delete(cache.make_key(token_key(token_hash)), poll_key(token_hash))
            epochs.queue_forget(pipe, token_hash)
            pipe.execute()
        cache.delete(token_key(token_hash))  # the same key, or the cache is elsewhere
        _local.pop(token_hash, None)
        epochs.forgotten_here(token_hash, logged=r is not None)

    drop()
    if not transaction.get_autocommit():
        transaction.on_commit(drop)


def authenticate_token(token: str, *, local: bool = True) -> DeviceSnapshot:
    """The device holding ``token``; ProtocolError 401 when unknown, 403 when revoked."""
    snap = snapshot_for_token(token, local=local)
    if snap is None:
        raise ProtocolError(401, "token_invalid", "The device token is not known; enroll again.")
    if snap.revoked:
        raise ProtocolError(403, "token_revoked", "This device token was revoked.")
    return snap


class DeviceBearer(HttpBearer):
    """401 for a missing or unknown token, 403 for a revoked one."""

    def __call__(self, request: HttpRequest) -> Any:
        header = request.headers.get("Authorization", "")
        if not header:
            raise ProtocolError(401, "token_missing", "Send Authorization: Bearer <device token>.")
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, token: str) -> DeviceSnapshot:
        if not token or len(token) > 200:
            raise ProtocolError(401, "token_invalid", "The device token is not valid.")
        return authenticate_token(token)


device_auth = DeviceBearer()
