"""Desired state per device, and the signed manifest that tells it.

Resolution is layered so the campaign layer can sit on top of releases:

1. :func:`desired_for` takes a device snapshot and returns ``list[Desired]``: for each model, the
   newest Release whose cohort matches the device (or a whole-fleet release), and as fallback the
   version the next older matching release named.
2. Then every function in :data:`DESIRED_HOOKS` runs in order as
   ``hook(snapshot, desired, state) -> desired``; the campaign layer registers one there (at import
   of its module, e.g. in ``RolloutConfig.ready``) to replace entries for devices in a campaign's
   waves. Hooks must not query the database per call: load what they need once per generation
   (``state.generation``; :func:`per_generation` memoizes a loader), and use
   ``state.version(version_id)`` to get a :class:`VersionInfo`.

Everything resolution needs (releases, versions, artifacts, cohorts) is small: it is loaded once per
*generation* into process memory. :func:`bump_generation` must be called after every change to
releases, versions, variants, cohorts or campaigns. Signed manifests are kept ready per device in
Redis and in process memory (see "the poll path" below), so a poll does no database query, at most
one Redis round trip, and signs only when the device's desired state changed or its manifest
nears expiry. Each signed manifest carries the device's sequence and validity (``sequence``,
``issued_at``, ``expires_at``), held in the database by rollout/freshness.py, so an agent can refuse
a manifest that is older than one it accepted, expired, or another device's (docs/protocol.md).
"""

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django.conf import settings

from fleet import epochs, selectors
from fleet.auth import DeviceSnapshot
from ota import signing
from rollout import freshness
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.profiles import expected_bins

logger = logging.getLogger(__name__)
TOLD_TTL = 90 * 24 * 3600
PROTOCOL = 2  # 2: signed sequence, issued_at and expires_at (docs/protocol.md, "Versions")
FLOAT_ACCELERATORS = frozenset({"gpu", "cuda", "tensorrt", "jetson", "rocm", "directml", "coreml", "openvino-gpu"})


# ---------------------------------------------------------------- generation


def bump_generation() -> str:
    """Say that releases/versions/cohorts/campaigns changed: every process reloads, manifests rebuild.

    The database's count goes first: data loaded after this call is known to be newer than any
    manifest built before it (rollout/freshness.py)."""
    freshness.bump_generation_number()
    return epochs.bump(epochs.GEN_KEY)


def current_generation() -> str:
    return epochs.current()[0]


# ---------------------------------------------------------------- the in-memory state


@dataclass(frozen=True)
class ArtifactRef:
    sha256: str
    size: int
    variant: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": f"/api/v1/artifacts/{self.sha256}",
            "sha256": self.sha256,
            "size": self.size,
            "variant": self.variant,
        }


@dataclass(frozen=True)
class VersionInfo:
    id: int
    model: str
    label: str
    artifacts: dict[str, ArtifactRef]  # variant kind ("fp32", "int8", …) -> artifact
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    telemetry: dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One release: ``version_id`` is desired for devices matching ``matches`` (None: all)."""

    id: int
    model: str
    version_id: int
    cohort_id: int | None
    matches: Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Desired:
    model: str
    version: VersionInfo
    fallback: VersionInfo | None
    campaign_id: int | None = None


@dataclass
class State:
    generation: str
    number: int = 0  # the database's generation count when this was loaded (rollout/freshness.py)
    versions: dict[int, VersionInfo] = field(default_factory=dict)
    rules: dict[str, list[Rule]] = field(default_factory=dict)  # model -> newest first
    cohorts: dict[int, Callable[[dict[str, Any]], bool]] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)

    def version(self, version_id: int) -> VersionInfo | None:
        return self.versions.get(version_id)

    def cohort_matches(self, cohort_id: int | None, labels: dict[str, Any]) -> bool:
        if cohort_id is None:
            return True
        pred = self.cohorts.get(cohort_id)
        return bool(pred and pred(labels))


def _load(generation: str) -> State:
    from fleet.models import Cohort
    from ota.models import ModelVersion
    from rollout.models import Campaign, Release

    state = State(generation, freshness.generation_number())  # the count first, then what it counts
    for c in Cohort.objects.all():
        try:
            state.cohorts[c.id] = selectors.predicate(selectors.parse(c.selector))
        except selectors.SelectorError:
            state.cohorts[c.id] = lambda labels: False  # a broken saved selector matches nobody
    releases = list(Release.objects.select_related("model").order_by("-created_at", "-id"))
    wanted = {r.version_id for r in releases}
    for c in Campaign.objects.only("version_id", "previous_version_id"):
        wanted |= {c.version_id, c.previous_version_id} - {None}
    versions = (
        ModelVersion.objects.filter(id__in=wanted)
        .select_related("model", "artifact")
        .prefetch_related("variants__artifact")
    )
    for v in versions:
        arts = {"fp32": ArtifactRef(v.artifact.sha256, v.artifact.size, "fp32")}
        for var in v.variants.all():
            arts[var.kind] = ArtifactRef(var.artifact.sha256, var.artifact.size, var.kind)
        report = v.report or {}
        state.versions[v.id] = VersionInfo(
            id=v.id,
            model=v.model.name,
            label=v.label,
            artifacts=arts,
            inputs=list(report.get("inputs") or []),
            outputs=list(report.get("outputs") or []),
            telemetry=expected_bins(v),
        )
    for r in releases:
        if r.version_id not in state.versions:
            continue
        pred = (lambda labels: True) if r.cohort_id is None else state.cohorts.get(r.cohort_id, lambda labels: False)
        state.rules.setdefault(r.model.name, []).append(Rule(r.id, r.model.name, r.version_id, r.cohort_id, pred))
    return state


_state_lock = threading.Lock()
_state: State | None = None


def load_state(generation: str | None = None, *, reload: bool = False) -> State:
    """The resolution data for ``generation`` (the current one by default), from process memory;
    ``reload``: from the database again (a manifest shows this process's copy is behind)."""
    global _state
    generation = generation or current_generation()
    st = _state
    if st is not None and st.generation == generation and not reload:
        return st
    with _state_lock:
        if _state is None or _state.generation != generation or (reload and _state is st):
            _state = _load(generation)
        return _state


def per_generation(state: State, name: str, loader: Callable[[], Any]) -> Any:
    """Memoize ``loader()`` for this generation (for hooks that need their own rows, e.g. campaigns)."""
    if name not in state.memo:
        state.memo[name] = loader()
    return state.memo[name]


# ---------------------------------------------------------------- resolution

DESIRED_HOOKS: list[Callable[[DeviceSnapshot, list[Desired], State], list[Desired]]] = []


def choose_variant(hardware: dict[str, Any], available: Collection[str]) -> str:
    """The artifact variant for a device: int8 (when there is one) for small RAM or no float accelerator."""
    if "int8" in available:
        ram = hardware.get("ram_mb")
        accel = str(hardware.get("accelerator") or "none").lower()
        if (isinstance(ram, int | float) and ram < 1024) or accel not in FLOAT_ACCELERATORS:
            return "int8"
    return "fp32" if "fp32" in available else sorted(available)[0]


def releases_for(labels: dict[str, Any], state: State) -> list[Desired]:
    out = []
    for model, rules in state.rules.items():
        matching = [r for r in rules if r.matches(labels)]
        if not matching:
            continue
        desired = state.versions[matching[0].version_id]
        fallback = next(
            (state.versions[r.version_id] for r in matching[1:] if r.version_id != desired.id),
            None,
        )
        out.append(Desired(model, desired, fallback, None))
    return out


def desired_for(snapshot: DeviceSnapshot, state: State | None = None) -> list[Desired]:
    """Releases first, then each hook (campaigns) in order."""
    state = state or load_state()
    desired = releases_for(snapshot.labels, state)
    for hook in DESIRED_HOOKS:
        desired = hook(snapshot, desired, state)
    return sorted(desired, key=lambda d: d.model)


# ---------------------------------------------------------------- building and serving


def telemetry_settings() -> dict[str, Any]:
    return {
        "window_seconds": settings.EDGEFLEET_TELEMETRY_WINDOW,
        "privacy": {
            "mechanism": settings.EDGEFLEET_DP_MECHANISM,
            "epsilon": settings.EDGEFLEET_DP_EPSILON,
            "unit": "inference",  # each report spends epsilon once per device-window (docs/privacy.md)
            "daily_budget": settings.EDGEFLEET_DP_DAILY_BUDGET,
        },
        "latency_edges_ms": list(LATENCY_EDGES_MS),
    }


def manifest_dict(snapshot: DeviceSnapshot, state: State) -> tuple[dict[str, Any], set[str]]:
    """The manifest object and the set of things it names ("v:<version id>", "a:<sha256>")."""
    named: set[str] = set()
    models = []
    for d in desired_for(snapshot, state):
        art = d.version.artifacts[choose_variant(snapshot.hardware, d.version.artifacts)]
        named |= {f"v:{d.version.id}", f"a:{art.sha256}"}
        fallback = None
        if d.fallback is not None:
            fart = d.fallback.artifacts[choose_variant(snapshot.hardware, d.fallback.artifacts)]
            named |= {f"v:{d.fallback.id}", f"a:{fart.sha256}"}
            fallback = {"version": d.fallback.label, "version_id": d.fallback.id, "artifact": fart.as_dict()}
        models.append(
            {
                "model": d.model,
                "version": d.version.label,
                "version_id": d.version.id,
                "campaign_id": d.campaign_id,
                "artifact": art.as_dict(),
                "fallback": fallback,
                "inputs": d.version.inputs,
                "outputs": d.version.outputs,
                "telemetry": d.version.telemetry,
            }
        )
    manifest = {
        "protocol": PROTOCOL,
        "device_id": str(snapshot.id),
        "poll_interval": settings.EDGEFLEET_POLL_INTERVAL,
        "telemetry": telemetry_settings(),
        "models": models,
    }
    return manifest, named


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


_ready: dict[str, Ready] = {}
_rests: dict[str, bytes] = {}
_READY_MAX = 300_000
_script: Any = None


def _head(device_id: uuid.UUID, issued_at: str, expires_at: str) -> bytes:
    return (
        b'{"device_id":'
        + json.dumps(str(device_id)).encode()
        + b',"expires_at":"'
        + expires_at.encode()
        + b'","issued_at":"'
        + issued_at.encode()
        + b'",'
    )


def _intern(rest_hash: str, rest: bytes) -> bytes:
    got = _rests.get(rest_hash)
    if got is not None:
        return got
    if len(_rests) > 10_000:
        _rests.clear()
    _rests[rest_hash] = rest
    return rest


def _rest_key(rest_hash: str) -> str:
    return f"ef:rest:{rest_hash}"


def _hash(piece: bytes) -> str:
    return hashlib.sha256(piece).hexdigest()[:32]


def _authenticate(token: str, *, local: bool = True) -> DeviceSnapshot:
    from fleet.auth import snapshot_for_token
    from fleet.errors import ProtocolError

    snap = snapshot_for_token(token, local=local)
    if snap is None:
        raise ProtocolError(401, "token_invalid", "The device token is not known; enroll again.")
    if snap.revoked:
        raise ProtocolError(403, "token_revoked", "This device token was revoked.")
    return snap


def _split(device_id: uuid.UUID, content: dict[str, Any]) -> tuple[bytes, bytes]:
    """The shared pieces of the canonical bytes: ``"models"`` … ``"protocol":2,`` and ``"telemetry":{…}}``.

    The per-device fields sort before "models" (device_id, expires_at, issued_at) and between
    "protocol" and "telemetry" (sequence); the layout is checked, not assumed.
    """
    probe = {**content, "sequence": 0, "issued_at": freshness.EPOCH, "expires_at": freshness.EPOCH}
    canon = signing.canonical(probe)
    head = _head(device_id, freshness.EPOCH, freshness.EPOCH)
    tail = b'"telemetry":' + signing.canonical(content["telemetry"]) + b"}"
    seq_tail = b'"sequence":0,' + tail
    mid = canon[len(head) : len(canon) - len(seq_tail)]
    if not (canon.startswith(head) and canon.endswith(seq_tail) and mid.startswith(b'"models":')):
        raise RuntimeError("manifest keys changed: the per-device fields are no longer where _split expects")
    return mid, tail


def _build(
    snapshot: DeviceSnapshot, gen: str, auth: str, stale: Ready | _Entry | None, at: float
) -> tuple[Ready, str, str, set[str]]:
    """Build and sign, keeping ``stale``'s sequence, times and signature when it says the same and is
    not near expiry; otherwise the device's sequence comes from the database (rollout/freshness.py)."""
    from fleet.errors import ProtocolError

    state = load_state(gen)
    for _ in range(2):
        content, named = manifest_dict(snapshot, state)
        mid, tail = _split(snapshot.id, content)
        digest = _hash(mid + tail)
        if stale is not None and stale.fresh.digest == digest and stale.refresh_at > at:
            fresh: freshness.Fresh | None = stale.fresh
            break
        try:
            fresh = freshness.claim(snapshot.id, digest, state.number, at)
        except LookupError as e:
            raise ProtocolError(401, "token_invalid", "The device token is not known; enroll again.") from e
        if fresh is not None:
            break
        state = load_state(gen, reload=True)  # the device was told something from newer data than ours
    else:
        busy = "The manifest is being rebuilt; try again."
        raise ProtocolError(503, "unavailable", busy, headers={"Retry-After": "1"})
    head = _head(snapshot.id, freshness.utc(fresh.issued_at), freshness.utc(fresh.expires_at))
    canon = head + mid + b'"sequence":%d,' % fresh.sequence + tail
    etag = signing.etag_of(canon)
    if stale is not None and stale.etag == etag and signing.public_info()["key_id"].encode() in stale.sig:
        sig = stale.sig
    else:
        sig = json.dumps(signing.sign(canon), separators=(",", ":")).encode()
    mid_hash, tail_hash = _hash(mid), _hash(tail)
    mid, tail = _intern(mid_hash, mid), _intern(tail_hash, tail)
    ready = Ready(snapshot.id, gen, auth, etag, head, mid, tail, sig, fresh, fresh.refresh_at)
    return ready, mid_hash, tail_hash, named


def poll(token: str, charge: Any = None) -> Ready:
    """The ready manifest for the device holding ``token``; ProtocolError 401/403 for a bad token.

    ``charge`` (fleet/limits.py ``Charge``): the device's rate limit, spent in the Redis round trip the
    poll makes anyway, or in process memory when the answer is there; ProtocolError 429 if empty."""
    from fleet.auth import hash_token
    from fleet.presence import redis_client

    th = hash_token(token)
    gen, auth = epochs.current()
    at = freshness.now()
    ready = _ready.get(th)
    if ready is not None and ready.gen == gen and ready.auth == auth and ready.refresh_at > at:
        if charge is not None:
            charge.run_in_memory()  # no round trip: the spend goes to Redis with the process's next batch
        return ready
    seq = epochs.applied()  # before reading anything we may keep (see fleet/epochs.py)
    r = redis_client()
    if r is None:
        if charge is not None:
            charge.run()
        snap = _authenticate(token)
        ready, _, _, named = _build(snap, gen, auth, ready, at)
        _remember_told(snap.id, named)
    else:
        _start_warming(r)
        ready = _poll_redis(r, token, th, gen, auth, at, charge)
    if len(_ready) >= _READY_MAX:
        _ready.clear()
    _ready[th] = ready
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
    head = _head(entry.device_id, freshness.utc(f.issued_at), freshness.utc(f.expires_at))
    return Ready(entry.device_id, gen, auth, entry.etag, head, pieces[0], pieces[1], entry.sig, f, entry.refresh_at)


def _poll_redis(r: Any, token: str, th: str, gen: str, auth: str, at: float, charge: Any = None) -> Ready:
    global _script
    from fleet.auth import forget_counter_key, poll_key

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
        snap = _authenticate(token, local=False)
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


def warm(r: Any = None, limit: int = _READY_MAX) -> int:
    """Load the current generation's ready manifests from Redis into this process; returns how many."""
    from fleet.presence import redis_client

    r = r or redis_client()
    if r is None:
        return 0
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
                _ready[th] = _ready_from(entry, gen, auth, r)  # type: ignore[assignment]  # pieces are here
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


def _told_key(device_id: uuid.UUID | str) -> str:
    return f"ef:told:{device_id}"


def _remember_told(device_id: uuid.UUID, named: set[str]) -> None:
    """Record what a manifest named; goes out with the presence pipeline (no round trip here)."""
    from fleet import presence

    presence.note_told(_told_key(device_id), named, TOLD_TTL)


def _durable_named(labels: dict[str, Any], state: State) -> set[str]:
    """Everything ever released or campaigned to a cohort the device matches now (the Redis-less fallback)."""
    from rollout.models import Campaign

    version_ids = {r.version_id for rules in state.rules.values() for r in rules if r.matches(labels)}
    campaigns = Campaign.objects.exclude(state=Campaign.State.DRAFT)
    for c in campaigns.only("cohort_id", "version_id", "previous_version_id"):
        if state.cohort_matches(c.cohort_id, labels):
            version_ids |= {c.version_id, c.previous_version_id} - {None}
    named = set()
    for vid in version_ids:
        info = state.versions.get(vid)
        if info:
            named.add(f"v:{vid}")
            named |= {f"a:{a.sha256}" for a in info.artifacts.values()}
    return named


def _labels_of(device_id: uuid.UUID | str) -> dict[str, Any] | None:
    from fleet.models import Device

    row = Device.objects.filter(pk=device_id).values_list("labels", flat=True).first()
    return row


def _was_named(device_id: uuid.UUID | str, item: str, labels: dict[str, Any] | None = None) -> bool:
    from fleet import presence
    from fleet.presence import redis_client

    r = redis_client()
    if presence.pending_told(_told_key(device_id), item):
        return True
    if r is not None and r.sismember(_told_key(device_id), item):
        return True
    if labels is None:
        labels = _labels_of(device_id)
        if labels is None:
            return False
    return item in _durable_named(labels, load_state())


def was_told(device_id: uuid.UUID | str, version_id: int) -> bool:
    """Has any manifest for this device named ``version_id`` (desired or fallback)?

    Redis remembers what each built manifest named; without that record (Redis flushed, embedded
    mode) it falls back to: the version was released or campaigned to a cohort the device matches.
    """
    return _was_named(device_id, f"v:{int(version_id)}")


def may_fetch(snapshot: DeviceSnapshot, sha256: str) -> bool:
    """May this device download ``sha256``: named by one of its manifests, now or before."""
    return _was_named(snapshot.id, f"a:{sha256}", snapshot.labels)
