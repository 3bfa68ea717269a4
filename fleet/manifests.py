"""The manifest call's path: signed manifests kept ready per device, served without a query.

One way through: the device API (fleet/api.py) calls :func:`poll`, which authenticates the token
(fleet/auth.py) only when no ready manifest answers it, has rollout resolve what the device is told
and its sequence (rollout/manifest.py ``resolve``), has ota sign it (ota/signing.py), keeps it in
process memory and Redis, and records what it named (fleet/presence.py); the API then notes the
poll in presence. Nothing here decides what a device runs.
"""

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.conf import settings

from fleet import epochs, presence
from fleet.auth import DeviceSnapshot, authenticate_token, forget_counter_key, hash_token, poll_key
from fleet.errors import ProtocolError
from fleet.lru import LRU
from ota import signing
from rollout import freshness, manifest

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- the poll path
#
# A device's answer is kept ready and signed at two levels, both checked against the cache epochs
# (fleet/epochs.py) and the manifest's refresh time, so a poll neither queries the database nor signs
# unless something changed or expiry is near:
# - process memory: token hash -> Ready (generation, auth epoch, ETag, freshness, the bytes). The
#   canonical bytes are kept in four pieces: the device's own head (device_id, expires_at,
#   issued_at) and sequence, and two pieces interned by content that thousands of devices share
#   ("models" … "protocol", and "telemetry"), so 100,000 ready devices cost tens of MB, not hundreds;
# - Redis, so any worker can serve a device it has never seen: ef:poll:<token hash> ->
#   "m2\ngen\nsequence\netag\nsignature\nmiddle hash\ntail hash\ndevice id\nissued\nexpires\ndigest\n
#   generation number\nsnapshot json", and ef:rest:<hash> -> the shared bytes. A first poll in a
#   process is one pipelined round trip (plus one for a shared piece it has not seen yet); a
#   background thread loads them all in bulk at a process's first poll (``warm``).
# A forgotten device (revoked, rotated, relabelled) is dropped from every process's memory by the
# forget log (fleet/epochs.py), one device at a time; the rest of the fleet stays ready.
# After a generation bump the entry's own snapshot rebuilds the manifest (no token lookup); when
# what it says is unchanged and it is not near expiry, the old sequence, times and signature are
# kept (no query, no signing). Otherwise the device's sequence comes from the database
# (rollout/freshness.py: one upsert) and the manifest is signed.
# An entry is written only if the device's forget counter (fleet.auth.forget_device) is what it was
# before the snapshot was read, so a poll racing a revocation cannot re-cache the old snapshot; and
# only if Redis does not already hold a higher sequence for the token (another process signed a
# newer manifest meanwhile: that one is served instead), so Redis never goes back for a device.

POLL_TTL = 24 * 3600
_TAG = b"m2"
_STORE_IF_NEWER = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur then
  local seq = string.match(cur, '^m2\\n[^\\n]*\\n(%d+)\\n')
  if seq and tonumber(seq) > tonumber(ARGV[4]) then return cur end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[3])
redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class Ready:
    """A device's signed manifest, ready to serve: ``body`` for 200, ``etag`` alone for 304."""

    device_id: uuid.UUID
    gen: str
    auth: str
    etag: str
    head: bytes  # b'{"device_id":"<uuid>","expires_at":"…","issued_at":"…",'
    mid: bytes  # b'"models":[…],"poll_interval":…,"protocol":2,' (shared between devices)
    tail: bytes  # b'"telemetry":{…}}' (shared between devices)
    sig: bytes  # the signature object, JSON
    fresh: freshness.Fresh
    refresh_at: int  # served until then, re-signed after (fresh.refresh_at, kept for the hot path)

    @property
    def canonical(self) -> bytes:
        return self.head + self.mid + b'"sequence":%d,' % self.fresh.sequence + self.tail

    @property
    def body(self) -> bytes:
        return b'{"manifest":' + self.canonical + b',"signature":' + self.sig + b"}"


Built = Ready  # the older name


class _Entry(NamedTuple):
    """A ready manifest as Redis holds it (see "the poll path" above)."""

    gen: str
    fresh: freshness.Fresh
    etag: str
    sig: bytes
    mid_hash: str
    tail_hash: str
    device_id: uuid.UUID
    snap_json: bytes
    refresh_at: int


_READY_MAX = int(getattr(settings, "EDGEFLEET_POLL_READY_MAX", 300_000))
# Least recently polled out first: past _READY_MAX the devices that poll keep their place (fleet/lru.py).
_ready: LRU[str, Ready] = LRU(_READY_MAX)
_rests: LRU[str, bytes] = LRU(10_000)
_script: Any = None


def _intern(rest_hash: str, rest: bytes) -> bytes:
    got = _rests.get(rest_hash)
    if got is not None:
        return got
    _rests.put(rest_hash, rest)
    return rest


def _rest_key(rest_hash: str) -> str:
    return f"ef:rest:{rest_hash}"


def _build(
    snapshot: DeviceSnapshot, gen: str, auth: str, stale: Ready | _Entry | None, at: float
) -> tuple[Ready, str, str, set[str]]:
    """Resolve (rollout), then sign (ota), keeping ``stale``'s sequence, times and signature when it says
    the same and is not near expiry."""
    try:
        resolved = manifest.resolve(snapshot, gen, stale.fresh if stale is not None else None, at)
    except manifest.DeviceGone as e:
        raise ProtocolError(401, "token_invalid", "The device token is not known; enroll again.") from e
    if resolved is None:
        busy = "The manifest is being rebuilt; try again."
        raise ProtocolError(503, "unavailable", busy, headers={"Retry-After": "1"})
    mid, tail, fresh, named = resolved
    head = manifest.head_bytes(snapshot.id, freshness.utc(fresh.issued_at), freshness.utc(fresh.expires_at))
    canon = head + mid + b'"sequence":%d,' % fresh.sequence + tail
    etag = signing.etag_of(canon)
    if stale is not None and stale.etag == etag and signing.public_info()["key_id"].encode() in stale.sig:
        sig = stale.sig
    else:
        sig = json.dumps(signing.sign(canon), separators=(",", ":")).encode()
    mid_hash, tail_hash = manifest.piece_hash(mid), manifest.piece_hash(tail)
    mid, tail = _intern(mid_hash, mid), _intern(tail_hash, tail)
    ready = Ready(snapshot.id, gen, auth, etag, head, mid, tail, sig, fresh, fresh.refresh_at)
    return ready, mid_hash, tail_hash, named


def poll(token: str, charge: Any = None) -> Ready:
    """The ready manifest for the device holding ``token``; ProtocolError 401/403 for a bad token.

    ``charge`` (fleet/limits.py ``Charge``): the device's rate limit, spent in the Redis round trip the
    poll makes anyway, or in process memory when the answer is there; ProtocolError 429 if empty."""
    th = hash_token(token)
    gen, auth = epochs.current()
    at = freshness.now()
    ready = _ready.get(th)
    if ready is not None and ready.gen == gen and ready.auth == auth and ready.refresh_at > at:
        if charge is not None:
            charge.run_in_memory()  # no round trip: the spend goes to Redis with the process's next batch
        return ready
    seq = epochs.applied()  # before reading anything we may keep (see fleet/epochs.py)
    r = presence.redis_client()
    if r is None:
        if charge is not None:
            charge.run()
        snap = authenticate_token(token)
        ready, _, _, named = _build(snap, gen, auth, ready, at)
        _remember_told(snap.id, named)
    else:
        _start_warming(r)
        ready = _poll_redis(r, token, th, gen, auth, at, charge)
    _ready.put(th, ready)
    if epochs.forgotten_since(th, seq):  # forgotten while we read it: serve it this once, keep nothing
        _ready.pop(th, None)
    return ready


def _drop_ready(token_hashes: Iterable[str] | None) -> None:
    if token_hashes is None:
        _ready.clear()
        return
    for th in token_hashes:
        _ready.pop(th, None)


epochs.on_forget(_drop_ready)


def _entry(gen: str, ready: Ready, mid_hash: str, tail_hash: str, snap: DeviceSnapshot) -> bytes:
    """The Redis form of a ready manifest (see "the poll path" above)."""
    f = ready.fresh
    fields = [
        _TAG,
        gen.encode(),
        b"%d" % f.sequence,
        ready.etag.encode(),
        ready.sig,
        mid_hash.encode(),
        tail_hash.encode(),
        str(snap.id).encode(),
        b"%d" % f.issued_at,
        b"%d" % f.expires_at,
        f.digest.encode(),
        b"%d" % f.generation,
        json.dumps(snap.as_dict()).encode(),
    ]
    return b"\n".join(fields)


def _parse(raw: bytes) -> _Entry | None:
    """An entry of this format, or None (an entry written before manifests had a sequence: rebuild)."""
    parts = raw.split(b"\n", 12)
    if len(parts) != 13 or parts[0] != _TAG:
        return None
    _, gen, seq, etag, sig, mid_hash, tail_hash, did, issued, expires, digest, number, snap_json = parts
    fresh = freshness.Fresh(int(seq), int(issued), int(expires), digest.decode(), int(number))
    return _Entry(
        gen.decode(),
        fresh,
        etag.decode(),
        sig,
        mid_hash.decode(),
        tail_hash.decode(),
        uuid.UUID(did.decode()),
        snap_json,
        fresh.refresh_at,
    )


def _ready_from(entry: _Entry, gen: str, auth: str, r: Any) -> Ready | None:
    """A Ready from a Redis entry, fetching a shared piece this process has not seen (None if gone)."""
    pieces = []
    for h in (entry.mid_hash, entry.tail_hash):
        piece = _rests.get(h)
        if piece is None and (fetched := r.get(_rest_key(h))) is not None:
            piece = _intern(h, fetched)
        if piece is None:
            return None
        pieces.append(piece)
    f = entry.fresh
    head = manifest.head_bytes(entry.device_id, freshness.utc(f.issued_at), freshness.utc(f.expires_at))
    return Ready(entry.device_id, gen, auth, entry.etag, head, pieces[0], pieces[1], entry.sig, f, entry.refresh_at)


def _poll_redis(r: Any, token: str, th: str, gen: str, auth: str, at: float, charge: Any = None) -> Ready:
    global _script
    fkey, pkey = forget_counter_key(th), poll_key(th)
    pipe = r.pipeline(transaction=False).get(fkey).get(pkey)  # counter first
    if charge is not None:
        charge.queue(pipe)
    forgotten, raw, *spent = pipe.execute()
    if charge is not None:
        charge.settle(spent[0])
    entry = _parse(raw) if raw else None
    if entry is not None:
        if entry.gen == gen and entry.refresh_at > at and (ready := _ready_from(entry, gen, auth, r)) is not None:
            return ready
        snap = DeviceSnapshot.from_dict(json.loads(entry.snap_json))
    else:
        snap = authenticate_token(token, local=False)
    ready, mid_hash, tail_hash, named = _build(snap, gen, auth, entry, at)
    if _script is None:
        _script = r.register_script(_STORE_IF_NEWER)
    stored = _script(
        keys=[pkey, fkey, _rest_key(mid_hash), _rest_key(tail_hash)],
        args=[
            _entry(gen, ready, mid_hash, tail_hash, snap),
            forgotten or b"",
            POLL_TTL,
            ready.fresh.sequence,
            ready.mid,
            ready.tail,
        ],
        client=r,
    )
    if isinstance(stored, bytes) and (newer := _parse(stored)) is not None:
        ready = _ready_from(newer, gen, auth, r) or ready  # another process signed a newer one: serve it
    _remember_told(snap.id, named)
    return ready


# ---------------------------------------------------------------- warming a process's memory
#
# A worker that has just started would answer each device's first poll with a Redis round trip.
# Instead, its first poll starts one background thread that reads every ready manifest of the
# current generation from Redis in bulk (SCAN + MGET, a few thousand a round trip) into memory, up
# to _READY_MAX; polls meanwhile take the normal path. Entries are guarded against forgets like
# any other fill (fleet/epochs.py: applied / forgotten_since).

_warm_lock = threading.Lock()
_warm_started = False
WARM_BATCH = 2000


def _start_warming(r: Any) -> None:
    global _warm_started
    if _warm_started or not getattr(settings, "EDGEFLEET_POLL_WARM", os.environ.get("EDGEFLEET_POLL_WARM") != "0"):
        return
    with _warm_lock:
        if _warm_started:
            return
        _warm_started = True
    threading.Thread(target=_warm_quietly, args=(r,), name="poll-warmer", daemon=True).start()


def _warm_quietly(r: Any) -> None:
    try:
        warm(r)
    except Exception:  # Redis away for a moment: polls still take the normal path
        logger.warning("poll: could not warm the ready manifests", exc_info=True)


def warm(r: Any = None, limit: int | None = None) -> int:
    """Load the current generation's ready manifests from Redis into this process; returns how many."""
    r = r or presence.redis_client()
    if r is None:
        return 0
    limit = min(limit or _ready.maxsize, _ready.maxsize)  # warming never pushes out a device that polled
    gen, auth = epochs.current()
    loaded, cursor = 0, 0
    while True:
        cursor, keys = r.scan(cursor, match="ef:poll:*", count=WARM_BATCH)
        keys = [k for k in keys if k[8:].decode() not in _ready]
        if keys:
            seq = epochs.applied()
            at = freshness.now()
            parsed = []
            for key, raw in zip(keys, r.mget(keys), strict=True):
                entry = _parse(raw) if raw else None
                if entry is not None and entry.gen == gen and entry.refresh_at > at:
                    parsed.append((key[8:].decode(), entry))
            unseen = sorted({h for _, e in parsed for h in (e.mid_hash, e.tail_hash) if h not in _rests})
            if unseen:
                for rest_hash, rest in zip(unseen, r.mget([_rest_key(h) for h in unseen]), strict=True):
                    if rest is not None:
                        _intern(rest_hash, rest)
            for th, entry in parsed:
                if th in _ready or len(_ready) >= limit or not {entry.mid_hash, entry.tail_hash} <= _rests.keys():
                    continue
                _ready.put(th, _ready_from(entry, gen, auth, r))  # type: ignore[arg-type]  # pieces are here
                loaded += 1
                if epochs.forgotten_since(th, seq):
                    _ready.pop(th, None)
                    loaded -= 1
        if cursor == 0 or len(_ready) >= limit or epochs.current() != (gen, auth):
            return loaded
        time.sleep(0.001)  # let request threads have the GIL between batches


def manifest_for(snapshot: DeviceSnapshot) -> Ready:
    """Build and sign the device's manifest now (no caching; the poll path is :func:`poll`)."""
    gen, auth = epochs.current()
    ready, _, _, named = _build(snapshot, gen, auth, None, freshness.now())
    _remember_told(snapshot.id, named)
    return ready


# ---------------------------------------------------------------- what a device was told


def _remember_told(device_id: uuid.UUID, named: set[str]) -> None:
    """Record what a manifest named; goes out with the presence pipeline (no round trip here)."""
    presence.note_told(presence.told_key(device_id), named, presence.TOLD_TTL)


# ---------------------------------------------------------------- dropping some devices' manifests


def invalidate(token_hashes: list[str]) -> bool:
    """Drop these devices' ready manifests everywhere, so their next poll re-resolves; the rest stay.

    For a change to resolution data that only these devices feel (rollout/moves.py): one Redis
    script call a batch (``epochs.FORGET_MANY_LUA``) deletes each ready entry, counts a forget (a
    poll that read the count before cannot store what it built) and appends to the forget log (every
    process drops them from memory within ``EDGEFLEET_EPOCH_CHECK_SECONDS``). Their cached snapshots
    stay: nothing about the device changed. False without Redis (the caller bumps the generation)."""
    r = presence.redis_client()
    if r is None:
        return False
    if token_hashes:  # one script call a batch: atomic per batch, as forget_device is per device
        keys = [forget_counter_key(th) for th in token_hashes], [poll_key(th) for th in token_hashes]
        epochs.forget_many(r, token_hashes, keys[0], keys[1], POLL_TTL)
    return True
