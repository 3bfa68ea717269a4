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
one Redis round trip, and signs only when the device's desired state changed.
"""

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from fleet import epochs, selectors
from fleet.auth import DeviceSnapshot
from ota import signing
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.profiles import expected_bins

logger = logging.getLogger(__name__)
TOLD_TTL = 90 * 24 * 3600
PROTOCOL = 1
FLOAT_ACCELERATORS = frozenset({"gpu", "cuda", "tensorrt", "jetson", "rocm", "directml", "coreml", "openvino-gpu"})


# ---------------------------------------------------------------- generation


def bump_generation() -> str:
    """Say that releases/versions/cohorts/campaigns changed: every process reloads, manifests rebuild."""
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

    state = State(generation)
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


def load_state(generation: str | None = None) -> State:
    """The resolution data for ``generation`` (the current one by default), from process memory."""
    global _state
    generation = generation or current_generation()
    st = _state
    if st is not None and st.generation == generation:
        return st
    with _state_lock:
        if _state is None or _state.generation != generation:
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
# (fleet/epochs.py), so a poll neither queries the database nor signs unless something changed:
# - process memory: token hash -> Ready (generation, auth epoch, ETag, the bytes). The canonical
#   bytes after "device_id" are interned by content: thousands of devices share them, so 100,000
#   ready devices cost tens of MB, not hundreds;
# - Redis, so any worker can serve a device it has never seen: ef:poll:<token hash> ->
#   "gen\netag\nsignature\nrest hash\ndevice id\nsnapshot json", and ef:rest:<hash> -> the shared
#   bytes. A first poll in a process is one pipelined round trip (plus one for a rest it has not seen
#   yet); a background thread loads them all in bulk at a process's first poll (``warm``).
# A forgotten device (revoked, rotated, relabelled) is dropped from every process's memory by the
# forget log (fleet/epochs.py), one device at a time; the rest of the fleet stays ready.
# After a generation bump the entry's own snapshot rebuilds the manifest (no token lookup), and the
# old signature is reused when the canonical bytes came out the same (the ETag did not change).
# An entry is written only if the device's forget counter (fleet.auth.forget_device) is what it was
# before the snapshot was read, so a poll racing a revocation cannot re-cache the old snapshot.

POLL_TTL = 24 * 3600
_SET_IF_NOT_FORGOTTEN = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class Ready:
    """A device's signed manifest, ready to serve: ``body`` for 200, ``etag`` alone for 304."""

    device_id: uuid.UUID
    gen: str
    auth: str
    etag: str
    prefix: bytes  # b'{"device_id":"<uuid>",'
    rest: bytes  # the canonical bytes after it (shared between devices)
    sig: bytes  # the signature object, JSON

    @property
    def body(self) -> bytes:
        return b'{"manifest":' + self.prefix + self.rest + b',"signature":' + self.sig + b"}"

    @property
    def canonical(self) -> bytes:
        return self.prefix + self.rest


Built = Ready  # the older name


_ready: dict[str, Ready] = {}
_rests: dict[str, bytes] = {}
_READY_MAX = 300_000
_script: Any = None


def _prefix(device_id: uuid.UUID) -> bytes:
    return b'{"device_id":' + json.dumps(str(device_id)).encode() + b","


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


def _authenticate(token: str, *, local: bool = True) -> DeviceSnapshot:
    from fleet.auth import snapshot_for_token
    from fleet.errors import ProtocolError

    snap = snapshot_for_token(token, local=local)
    if snap is None:
        raise ProtocolError(401, "token_invalid", "The device token is not known; enroll again.")
    if snap.revoked:
        raise ProtocolError(403, "token_revoked", "This device token was revoked.")
    return snap


def _build(
    snapshot: DeviceSnapshot, gen: str, auth: str, stale: tuple[str, bytes] | None
) -> tuple[Ready, str, set[str]]:
    """Build and sign (unless ``stale`` = (etag, signature) already signs these exact bytes)."""
    manifest, named = manifest_dict(snapshot, load_state(gen))
    canon = signing.canonical(manifest)
    prefix = _prefix(snapshot.id)
    if not canon.startswith(prefix):  # "device_id" sorts first among the manifest's keys
        raise RuntimeError("manifest keys changed: device_id no longer sorts first")
    etag = signing.etag_of(canon)
    if stale is not None and stale[0] == etag and signing.public_info()["key_id"].encode() in stale[1]:
        sig = stale[1]
    else:
        sig = json.dumps(signing.sign(canon), separators=(",", ":")).encode()
    rest = canon[len(prefix) :]
    rest_hash = signing.etag_of(rest).strip('"')
    return Ready(snapshot.id, gen, auth, etag, prefix, _intern(rest_hash, rest), sig), rest_hash, named


def poll(token: str) -> Ready:
    """The ready manifest for the device holding ``token``; ProtocolError 401/403 for a bad token."""
    from fleet.auth import hash_token
    from fleet.presence import redis_client

    th = hash_token(token)
    gen, auth = epochs.current()
    ready = _ready.get(th)
    if ready is not None and ready.gen == gen and ready.auth == auth:
        return ready
    seq = epochs.applied()  # before reading anything we may keep (see fleet/epochs.py)
    r = redis_client()
    if r is None:
        stale = (ready.etag, ready.sig) if ready is not None else None
        snap = _authenticate(token)
        ready, _, named = _build(snap, gen, auth, stale)
        _remember_told(snap.id, named)
    else:
        _start_warming(r)
        ready = _poll_redis(r, token, th, gen, auth)
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


def _entry(gen: str, ready: Ready, rest_hash: str, snap: DeviceSnapshot) -> bytes:
    """The Redis form of a ready manifest (see "the poll path" above)."""
    fields = [gen, ready.etag, ready.sig.decode(), rest_hash, str(snap.id), json.dumps(snap.as_dict())]
    return "\n".join(fields).encode()


def _parse(raw: bytes) -> tuple[str, str, bytes, str, uuid.UUID | None, bytes]:
    """``(gen, etag, signature, rest hash, device id, snapshot json)``; entries written before the
    device id had its own line give None (read the id from the snapshot)."""
    parts = raw.split(b"\n", 5)
    if len(parts) == 6 and len(parts[4]) == 36:
        gen, etag, sig, rest_hash, did, snap_json = parts
        device_id: uuid.UUID | None = uuid.UUID(did.decode())
    else:
        gen, etag, sig, rest_hash, snap_json = raw.split(b"\n", 4)
        device_id = None
    return gen.decode(), etag.decode(), sig, rest_hash.decode(), device_id, snap_json


def _poll_redis(r: Any, token: str, th: str, gen: str, auth: str) -> Ready:
    global _script
    from fleet.auth import forget_counter_key, poll_key

    fkey, pkey = forget_counter_key(th), poll_key(th)
    forgotten, raw = r.pipeline(transaction=False).get(fkey).get(pkey).execute()  # counter first
    stale = None
    if raw:
        entry_gen, etag, sig, rest_hash, device_id, snap_json = _parse(raw)
        if entry_gen == gen:
            rest = _rests.get(rest_hash)
            if rest is None and (fetched := r.get(_rest_key(rest_hash))) is not None:
                rest = _intern(rest_hash, fetched)
            if rest is not None:
                device_id = device_id or DeviceSnapshot.from_dict(json.loads(snap_json)).id
                return Ready(device_id, gen, auth, etag, _prefix(device_id), rest, sig)
        snap = DeviceSnapshot.from_dict(json.loads(snap_json))
        stale = (etag, sig)
    else:
        snap = _authenticate(token, local=False)
    ready, rest_hash, named = _build(snap, gen, auth, stale)
    if _script is None:
        _script = r.register_script(_SET_IF_NOT_FORGOTTEN)
    entry = _entry(gen, ready, rest_hash, snap)
    _script(keys=[pkey, fkey, _rest_key(rest_hash)], args=[entry, forgotten or b"", POLL_TTL, ready.rest], client=r)
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
            parsed = []
            for key, raw in zip(keys, r.mget(keys), strict=True):
                if raw:
                    entry = _parse(raw)
                    if entry[0] == gen and entry[4] is not None:
                        parsed.append((key[8:].decode(), entry))
            unseen = sorted({e[3] for _, e in parsed if e[3] not in _rests})
            if unseen:
                for rest_hash, rest in zip(unseen, r.mget([_rest_key(h) for h in unseen]), strict=True):
                    if rest is not None:
                        _intern(rest_hash, rest)
            for th, (_, etag, sig, rest_hash, device_id, _) in parsed:
                rest = _rests.get(rest_hash)
                if rest is None or th in _ready or len(_ready) >= limit:
                    continue
                _ready[th] = Ready(device_id, gen, auth, etag, _prefix(device_id), rest, sig)
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
    ready, _, named = _build(snapshot, gen, auth, None)
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
