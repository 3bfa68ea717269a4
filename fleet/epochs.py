"""What lets each process keep hot data in memory and still notice changes made elsewhere.

``gen`` (a counter in the cache) changes with releases/versions/cohorts/campaigns (resolution data):
everything built from them is stale. Device changes (token revoked or rotated, labels or hardware
changed) are per device: :func:`forget` appends the device's token hash to a log in Redis (a sorted
set scored by a sequence number), and each process reads the log incrementally, dropping just those
devices from its memory (:func:`on_forget` callbacks). So one revocation costs the fleet nothing
but that device's entry, where a global epoch used to send every device to the cold path.

A process re-reads ``gen`` and the new part of the log at most every ``EDGEFLEET_EPOCH_CHECK_SECONDS``
(default 0.5 s): two small reads per process per interval, not per request. A change made in this
process is applied here at once, elsewhere within that interval. If the log was trimmed past what a
process last read (or Redis lost it), that process drops everything instead: slower, never stale.

Without Redis (embedded mode) there is no log: :func:`forget` bumps the ``auth`` counter instead,
which every process treats as "drop every device" (the old global behaviour).

Filling memory races with a forget: a reader may fetch an entry just before a forget and store it
just after the process applied it. :func:`applied` (read before fetching) and :func:`forgotten_since`
(checked after storing) close that: the reader drops what it stored if the device was forgotten in
between.
"""

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.cache import cache

GEN_KEY = "ef:manifest:gen"
AUTH_KEY = "ef:auth:epoch"
# Changes to the resolution data that only some devices feel (a campaign's start, advance or
# rollback): processes reload what they resolve from, but ready manifests stay valid; the devices
# whose desired state changed are dropped one by one (fleet.manifests.invalidate).
DATA_KEY = "ef:manifest:data"
# Raw Redis keys of the forget log (not through the Django cache: they are read and written by Lua).
SEQ_KEY = "ef:forget:seq"
LOG_KEY = "ef:forget:log"  # sorted set: token hash -> the sequence number of its latest forget
FLOOR_KEY = "ef:forget:floor"  # the highest sequence number trimmed from the log
LOG_KEEP = 100_000  # entries kept; a process that falls further behind drops everything
READ_MAX = 20_000  # entries applied per read; more than this behind also drops everything

_lock = threading.Lock()
_refresh_lock = threading.Lock()
_memo: tuple[float, str, str] = (0.0, "", "")
_data = ""  # DATA_KEY as read with _memo
_applied = -1  # the log's sequence number this process has applied (-1: not read yet)
# Fills are compared against a counter of this process's own (Redis's sequence restarts if Redis
# loses the log): every drop advances it.
_local_seq = 0
_reset_at = 0  # the local count at which this process last dropped everything
_recent: dict[str, int] = {}  # token hash -> local count at which it was forgotten here
_pruned_below = 0  # _recent no longer knows drops at or below this count: assume forgotten
_RECENT_MAX = 50_000
_callbacks: list[Callable[[Iterable[str] | None], None]] = []

# Trims the log to its newest ``keep`` entries and records the cut as the floor; ends both scripts.
_TRIM_LUA = """
local extra = redis.call('ZCARD', KEYS[2]) - keep
if extra > 0 then
  local cut = redis.call('ZRANGE', KEYS[2], extra - 1, extra - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
  redis.call('SET', KEYS[3], cut[2])
end
return seq
"""

# KEYS: seq, log, floor. ARGV: token hash, entries to keep. Returns the new sequence number.
FORGET_LUA = (
    """
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
local keep = tonumber(ARGV[2])
"""
    + _TRIM_LUA
)

# Many devices at once, with their own keys (fleet.manifests.invalidate): KEYS: seq, log, floor, then
# per device its forget counter and its ready-manifest key. ARGV: entries to keep, counter TTL, then
# the token hashes. Per device: count a forget, drop the ready manifest, append to the log; trim once.
FORGET_MANY_LUA = (
    """
local seq = 0
for i = 3, #ARGV do
  local j = 4 + 2 * (i - 3)
  redis.call('INCR', KEYS[j])
  redis.call('EXPIRE', KEYS[j], ARGV[2])
  redis.call('DEL', KEYS[j + 1])
  seq = redis.call('INCR', KEYS[1])
  redis.call('ZADD', KEYS[2], seq, ARGV[i])
end
local keep = tonumber(ARGV[1])
"""
    + _TRIM_LUA
)

# KEYS: seq, log, floor. ARGV: last applied, most entries to return.
# Returns {seq, floor, hash, hash, ...}; no hashes when more than ARGV[2] are new (drop everything).
_READ_LUA = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(redis.call('GET', KEYS[3]) or '0')
local since = tonumber(ARGV[1])
local out = {seq, floor}
if seq <= since or since < 0 or seq - since > tonumber(ARGV[2]) then return out end
local items = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. since, '+inf')
for i = 1, #items do out[#out + 1] = items[i] end
return out
"""
_read_script: Any = None


def _new() -> str:
    return f"{time.time_ns():x}"


def _redis() -> Any:
    from fleet.presence import redis_client

    return redis_client()


def on_forget(callback: Callable[[Iterable[str] | None], None]) -> None:
    """Register ``callback(token_hashes)`` to drop forgotten devices from a memory cache;
    ``callback(None)`` means drop everything."""
    if callback not in _callbacks:
        _callbacks.append(callback)


def _drop(hashes: Iterable[str] | None) -> None:
    for cb in _callbacks:
        cb(hashes)


def current() -> tuple[str, str]:
    """``(gen, auth)``, from process memory when checked less than the interval ago.

    The check also applies new forget-log entries. One thread checks; the others keep the values
    they have meanwhile (at most one interval old) instead of queueing behind it.
    """
    global _memo, _data
    checked, gen, auth = _memo
    now = time.monotonic()
    if now - checked < float(getattr(settings, "EDGEFLEET_EPOCH_CHECK_SECONDS", 0.5)) and gen:
        return gen, auth
    if not _refresh_lock.acquire(blocking=not gen):
        return gen, auth
    try:
        checked, gen, auth = _memo
        if now - checked < float(getattr(settings, "EDGEFLEET_EPOCH_CHECK_SECONDS", 0.5)) and gen:
            return gen, auth
        got = cache.get_many([GEN_KEY, AUTH_KEY, DATA_KEY])
        gen, auth = got.get(GEN_KEY), got.get(AUTH_KEY)
        _data = str(got.get(DATA_KEY) or "")
        if gen is None or auth is None:
            # A fresh value, never "0": after Redis lost them (flushed, restarted empty) a repeated
            # value would let a process keep what it built after an earlier loss as if still current.
            cache.add(GEN_KEY, _new(), None)
            cache.add(AUTH_KEY, _new(), None)
            got = cache.get_many([GEN_KEY, AUTH_KEY])
            gen, auth = got.get(GEN_KEY, "0"), got.get(AUTH_KEY, "0")
        r = _redis()
        if r is not None:
            _read_log(r)
        _memo = (now, str(gen), str(auth))
        return _memo[1], _memo[2]
    finally:
        _refresh_lock.release()


def data() -> str:
    """The resolution data's own epoch (``DATA_KEY``), read with ``current``: state built under another
    value is reloaded, ready manifests are not dropped for it."""
    current()
    return _data


def _read_log(r: Any) -> None:
    """Apply the forget-log entries newer than :data:`_applied` (one round trip)."""
    global _applied, _read_script
    if _read_script is None:
        _read_script = r.register_script(_READ_LUA)
    got = _read_script(keys=[SEQ_KEY, LOG_KEY, FLOOR_KEY], args=[_applied, READ_MAX], client=r)
    seq, floor, hashes = int(got[0]), int(got[1]), [h.decode() for h in got[2:]]
    if _applied < 0:  # first read in this process: nothing in memory predates it
        _applied = seq
    elif seq == _applied:
        return
    elif seq < _applied or floor > _applied or seq - _applied > READ_MAX:
        _forget_all()  # Redis lost the log, or it was trimmed past us, or we are far behind
        _applied = seq
    else:
        _forget_here(hashes)
        _applied = seq


def _forget_all() -> None:
    global _local_seq, _reset_at
    with _lock:
        _local_seq += 1
        _reset_at = _local_seq
    _drop(None)


def _forget_here(hashes: list[str]) -> None:
    """Note the forgets first, then drop: a concurrent filler checks the note after it stores."""
    global _local_seq, _pruned_below
    with _lock:
        _local_seq += 1
        for h in hashes:
            _recent.pop(h, None)
            _recent[h] = _local_seq  # insertion order stays count order
        if len(_recent) > _RECENT_MAX:
            drop = list(_recent)[: len(_recent) // 2]
            _pruned_below = max(_pruned_below, max(_recent[h] for h in drop))
            for h in drop:
                del _recent[h]
    _drop(hashes)


def applied() -> int:
    """How many drops this process has applied; read it before fetching data to keep."""
    return _local_seq


def forgotten_since(token_hash: str, seq: int) -> bool:
    """Was the device dropped in this process after :func:`applied` returned ``seq``?"""
    return _reset_at > seq or _pruned_below > seq or _recent.get(token_hash, -1) > seq


def queue_forget(pipe: Any, token_hash: str) -> None:
    """Queue the log append on a Redis pipeline (the caller's other deletes go in the same
    transaction), then call :func:`forgotten_here`."""
    pipe.eval(FORGET_LUA, 3, SEQ_KEY, LOG_KEY, FLOOR_KEY, token_hash, LOG_KEEP)


def forget_many(r: Any, token_hashes: list[str], counter_keys: list[str], poll_keys: list[str], ttl: int) -> None:
    """Forget these devices in one script call (see ``FORGET_MANY_LUA``), then here at once."""
    keys = [SEQ_KEY, LOG_KEY, FLOOR_KEY]
    for counter, poll in zip(counter_keys, poll_keys, strict=True):
        keys += [counter, poll]
    r.eval(FORGET_MANY_LUA, len(keys), *keys, LOG_KEEP, ttl, *token_hashes)
    _forget_here(list(token_hashes))


def forgotten_here(token_hash: str, logged: bool) -> None:
    """Drop a device this process forgot from its own memory at once (no waiting for the log);
    not ``logged`` (no Redis) bumps the ``auth`` counter: every process drops every device."""
    if logged:
        _forget_here([token_hash])
    else:
        bump(AUTH_KEY)


def bump(key: str) -> str:
    global _memo
    value = _new()
    cache.set(key, value, None)
    with _lock:
        _memo = (0.0, "", "")  # re-read both at the next call in this process
    return value
