"""What a device may ask of the server: load shedding per process, and token buckets per device.

**Load shedding.** At most ``EDGEFLEET_DEVICE_API_CONCURRENCY`` device requests run at once in a
process (default: the web server's threads minus one, edgefleet/serving.py). The slot is held for
the whole request, reading the body included (fleet/middleware.py), so slow uploads fill it too. A
request that finds no free slot within 50 ms is answered ``429 overloaded`` with ``Retry-After:
EDGEFLEET_RETRY_AFTER`` instead of queueing, and the reserved thread keeps pages and /healthz alive.

**Rate limits.** A token bucket per device (its token) and bucket class (manifest, upload, artifact),
or per client IP for calls without a device (enroll, signing-key); ``EDGEFLEET_RATE_LIMITS`` gives
each as "burst/per_minute". Beyond it: ``429 rate_limited`` with ``Retry-After`` (whole seconds until
a token is back). Failed token and enrollment-key checks also spend from the client IP's
``auth_fail`` bucket; while it is empty, unknown tokens from that IP are not looked up (429), so
guessing costs the database nothing. Tokens the server already holds are not affected.

The bucket is GCRA (the "virtual scheduling" form of a token bucket): one Redis key per bucket
holds the time at which it will be full again, updated by one Lua script that also peeks at the
client's ``auth_fail`` bucket, so a request costs one round trip (folded into the manifest poll's own
pipeline when that makes one: fleet/manifests.py ``poll``). A manifest poll answered from process
memory makes no round trip at all, and keeps none for its limit either (``Charge.run_in_memory``):
it spends from this process's own bucket for the device, and the spends go to Redis in bulk once a
second (``ledger``), which answers which devices are over; those are refused here until their bucket
has room. Written here rather than taken from ``limits`` or ``django-ratelimit``: those make their
own round trip per check, so they can neither share the poll's pipeline nor be batched, and
neither has a token bucket.

Without Redis (embedded mode), or for 5 s after Redis failed, the same buckets live in process
memory: exact within a process, so a device spread over N processes gets at most N times its rate.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from fleet.errors import ProtocolError

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- load shedding

_lock = threading.Lock()
_sems: dict[int, threading.BoundedSemaphore] = {}


def slots() -> int:
    return max(1, int(settings.EDGEFLEET_DEVICE_API_CONCURRENCY))


def semaphore() -> threading.BoundedSemaphore:
    limit = slots()
    sem = _sems.get(limit)
    if sem is None:
        with _lock:
            sem = _sems.setdefault(limit, threading.BoundedSemaphore(limit))
    return sem


def take_slot() -> threading.BoundedSemaphore:
    """One slot (``release()`` it when the request is done), or the 429 the API answers with."""
    sem = semaphore()
    if not sem.acquire(timeout=0.05):
        retry = str(int(getattr(settings, "EDGEFLEET_RETRY_AFTER", 10)))
        raise ProtocolError(
            429, "overloaded", "The server is busy; retry after the given seconds.", None, {"Retry-After": retry}
        )
    return sem


@contextmanager
def device_slot() -> Iterator[None]:
    """Hold one slot for the body of a device request, or raise the 429 the API answers with."""
    sem = take_slot()
    try:
        yield
    finally:
        sem.release()


# ---------------------------------------------------------------- rates


@dataclass(frozen=True)
class Rate:
    burst: int
    interval_ms: int  # one token comes back every interval

    @property
    def per_minute(self) -> float:
        return 60_000 / self.interval_ms


@lru_cache(maxsize=64)
def _parse_rate(text: str, poll_interval: float) -> Rate:
    burst, _, per_minute = str(text).partition("/")
    per_min = 10 * 60 / max(poll_interval, 0.001) if per_minute.strip() == "auto" else float(per_minute)
    return Rate(max(1, int(burst)), max(1, math.ceil(60_000 / max(per_min, 1e-6))))


def rate(bucket: str) -> Rate:
    """The bucket's rate from ``EDGEFLEET_RATE_LIMITS`` ("burst/per_minute"; "auto": ten per poll
    interval, read now, so a changed ``EDGEFLEET_POLL_INTERVAL`` moves it too)."""
    return _parse_rate(settings.EDGEFLEET_RATE_LIMITS[bucket], float(settings.EDGEFLEET_POLL_INTERVAL))


# KEYS[1]: the bucket to charge; KEYS[2]: the client's auth_fail bucket (peeked, or charged when
# ARGV[5] is 1 and KEYS[1] is it). ARGV: interval ms and burst of each. Returns
# {ms until KEYS[1] admits (0: admitted now), ms until KEYS[2] would admit}.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function wait(key, interval, burst)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + interval
  return new, new - now - burst * interval
end
local new, w1 = wait(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if w1 <= 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', string.format('%.0f', new - now))
  w1 = 0
end
local _, w2 = wait(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
if w2 < 0 then w2 = 0 end
return {string.format('%.0f', w1), string.format('%.0f', w2)}
"""


class _LocalBuckets:
    """The same GCRA in process memory (embedded mode, or Redis away)."""

    MAX = 200_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.tat: dict[str, float] = {}
        self.lock = threading.Lock()
        self.clock = clock

    def wait(self, key: str, r: Rate, charge: bool) -> float:
        """Milliseconds until ``key`` admits a request (0: now, and spent if ``charge``)."""
        now = self.clock() * 1000
        with self.lock:
            tat = max(self.tat.get(key, 0.0), now)
            new = tat + r.interval_ms
            w = new - now - r.burst * r.interval_ms
            if w <= 0 and charge:
                if len(self.tat) >= self.MAX:
                    self.tat = {k: v for k, v in self.tat.items() if v > now}
                    if len(self.tat) >= self.MAX:
                        self.tat.clear()
                self.tat[key] = new
            return max(w, 0.0)

    def clear(self) -> None:
        with self.lock:
            self.tat.clear()


local_buckets = _LocalBuckets()
_redis_away_until = 0.0
_REDIS_PAUSE = 5.0


def _redis() -> Any:
    global _redis_away_until
    from fleet.presence import redis_client

    if time.monotonic() < _redis_away_until:
        return None
    return redis_client()


def _redis_failed(exc: Exception) -> None:
    global _redis_away_until
    if time.monotonic() >= _redis_away_until:
        logger.warning("rate limits: Redis failed (%s); buckets in process memory for %.0f s", exc, _REDIS_PAUSE)
    _redis_away_until = time.monotonic() + _REDIS_PAUSE


# ---------------------------------------------------------------- the client and its charge

_lookups_blocked: ContextVar[float] = ContextVar("edgefleet_lookups_blocked", default=0.0)


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR, or with ``EDGEFLEET_NUM_PROXIES`` = n the address n hops back in X-Forwarded-For."""
    proxies = int(getattr(settings, "EDGEFLEET_NUM_PROXIES", 0) or 0)
    addr = request.META.get("REMOTE_ADDR") or "unknown"
    if proxies > 0:
        hops = [h.strip() for h in (request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",") if h.strip()]
        if hops:
            addr = hops[-min(proxies, len(hops))]
    return addr[:64]


def _key(bucket: str, who: str) -> str:
    return f"ef:rl:{bucket}:{who}"


def _retry_after(ms: float) -> str:
    return str(max(1, math.ceil(ms / 1000)))


def _refuse(bucket: str, ms: float) -> ProtocolError:
    return ProtocolError(
        429,
        "rate_limited",
        f"Too many {bucket.replace('_', ' ')} requests from this device; retry after the given seconds.",
        None,
        {"Retry-After": _retry_after(ms)},
    )


@dataclass
class Charge:
    """One request's spend from its bucket, and a peek at its client's ``auth_fail`` bucket.

    ``run()`` makes the one round trip; or ``queue(pipe)`` adds it to the caller's pipeline and
    ``settle(result)`` reads the answer. Either raises the 429 when the bucket is empty."""

    bucket: str
    who: str  # the token's hash (per device) or "ip:<addr>"
    ip: str

    @classmethod
    def for_request(cls, bucket: str, request: HttpRequest) -> Charge:
        ip = client_ip(request)
        header = request.META.get("HTTP_AUTHORIZATION") or ""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if bucket in ("manifest", "upload", "artifact") and scheme.lower() == "bearer" and token:
            who = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        else:
            who = f"ip:{ip}"
        return cls(bucket, who, ip)

    def _args(self) -> tuple[list[str], list[int]]:
        mine, fails = rate(self.bucket), rate("auth_fail")
        keys = [_key(self.bucket, self.who), _key("auth_fail", f"ip:{self.ip}")]
        return keys, [mine.interval_ms, mine.burst, fails.interval_ms, fails.burst]

    def queue(self, pipe: Any) -> None:
        keys, args = self._args()
        pipe.eval(GCRA_LUA, 2, *keys, *args)

    def settle(self, result: Any, *, shared: bool = True) -> None:
        """Read the script's answer (``shared``: from Redis, else from this process's buckets)."""
        wait, lookup_wait = (float(x) for x in result)
        _lookups_blocked.set(lookup_wait)
        if wait > 0:
            raise _refuse(self.bucket, wait)
        if shared and self.bucket == "manifest":  # this process's own bucket sees every spend (run_in_memory)
            local_buckets.wait(_key(self.bucket, self.who), rate(self.bucket), charge=True)

    def run(self) -> None:
        r = _redis()
        if r is not None:
            try:
                keys, args = self._args()
                result = _script(r)(keys=keys, args=args, client=r)
            except Exception as e:  # Redis away: the process's own buckets, never a 500 or an open gate
                _redis_failed(e)
            else:
                return self.settle(result)
        self.settle(self._local(), shared=False)

    def run_in_memory(self) -> None:
        """The warm manifest poll's charge, with no round trip: this process's own bucket for the
        device, plus what Redis last said about it (the spends go there in bulk every second,
        ``ledger``). Exact within a process; a device spread over N processes can get at most about
        N bursts more before every process has heard it is over."""
        if _redis() is None:
            return self.run()
        key = _key(self.bucket, self.who)
        until = ledger.blocked.get(key, 0.0)
        now = time.monotonic()
        if until > now:
            raise _refuse(self.bucket, (until - now) * 1000)
        wait = local_buckets.wait(key, rate(self.bucket), charge=True)
        if wait > 0:
            raise _refuse(self.bucket, wait)
        ledger.spent(key, self.bucket)

    def _local(self) -> tuple[float, float]:
        keys, _ = self._args()
        wait = local_buckets.wait(keys[0], rate(self.bucket), charge=True)
        return wait, local_buckets.wait(keys[1], rate("auth_fail"), charge=False)


# KEYS: buckets of one class; ARGV: interval ms, burst, then each key's spends. Applies the spends and
# returns, per key, the ms until its next request would be admitted (0: now).
SPEND_MANY_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + tonumber(ARGV[i + 2]) * interval
  redis.call('SET', key, string.format('%.0f', new), 'PX', string.format('%.0f', new - now))
  local w = new + interval - now - burst * interval
  if w < 0 then w = 0 end
  out[i] = string.format('%.0f', w)
end
return out
"""


class _Ledger:
    """Warm polls' spends, sent to the shared buckets in bulk (one call a second per process), and
    the devices Redis said are over their limit, refused here until their bucket has room again."""

    MAX_BLOCKED = 100_000
    BATCH = 1000

    def __init__(self) -> None:
        self.pending: dict[str, tuple[str, int]] = {}
        self.blocked: dict[str, float] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def spent(self, key: str, bucket: str) -> None:
        with self.lock:
            entry = self.pending.get(key)
            self.pending[key] = (bucket, entry[1] + 1 if entry else 1)
            if self.thread is None:  # one per process; its loop survives any error
                self.thread = threading.Thread(target=self._loop, name="rate-limit-ledger", daemon=True)
                self.thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(1.0)
            try:
                self.sync()
            except Exception as e:  # Redis away: this process's own buckets still hold
                _redis_failed(e)

    def sync(self) -> None:
        """Send the pending spends now; note the devices that are over."""
        with self.lock:
            pending, self.pending = self.pending, {}
        r = _redis()
        if r is None or not pending:
            return
        by_bucket: dict[str, list[tuple[str, int]]] = {}
        for key, (bucket, n) in pending.items():
            by_bucket.setdefault(bucket, []).append((key, n))
        now = time.monotonic()
        for bucket, items in by_bucket.items():
            r_ = rate(bucket)
            for i in range(0, len(items), self.BATCH):
                chunk = items[i : i + self.BATCH]
                waits = _spend_many(r)(
                    keys=[k for k, _ in chunk], args=[r_.interval_ms, r_.burst, *[n for _, n in chunk]], client=r
                )
                for (key, _), w in zip(chunk, waits, strict=True):
                    if float(w) > 0:
                        self.blocked[key] = now + float(w) / 1000
        if len(self.blocked) > self.MAX_BLOCKED:
            self.blocked = {k: v for k, v in self.blocked.items() if v > now}

    def clear(self) -> None:
        with self.lock:
            self.pending.clear()
            self.blocked.clear()


ledger = _Ledger()
_scripts: dict[int, Any] = {}
_spend_scripts: dict[int, Any] = {}


def _spend_many(r: Any) -> Any:
    got = _spend_scripts.get(id(r))
    if got is None:
        got = _spend_scripts[id(r)] = r.register_script(SPEND_MANY_LUA)
    return got


def _script(r: Any) -> Any:
    got = _scripts.get(id(r))
    if got is None:
        got = _scripts[id(r)] = r.register_script(GCRA_LUA)
    return got


def note_auth_failure(ip: str) -> None:
    """A token or enrollment key from ``ip`` was not known: spend from its ``auth_fail`` bucket."""
    with suppress(ProtocolError):  # already empty: the next lookup from this IP is refused anyway
        Charge("auth_fail", f"ip:{ip}", ip).run()


def check_lookup() -> None:
    """Before looking up an unknown token: 429 when this request's client has used up ``auth_fail``."""
    wait = _lookups_blocked.get()
    if wait > 0:
        raise _refuse("auth_fail", wait)


def begin_request() -> None:
    _lookups_blocked.set(0.0)


def reset() -> None:
    """Forget every bucket (tests)."""
    global _redis_away_until
    _redis_away_until = 0.0
    local_buckets.clear()
    ledger.clear()
    _lookups_blocked.set(0.0)
    r = _redis()
    if r is not None:
        keys = list(r.scan_iter(match="ef:rl:*", count=1000))
        if keys:
            r.delete(*keys)
