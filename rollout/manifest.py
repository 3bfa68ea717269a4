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
releases, versions, variants, cohorts or campaigns. Manifests are cached per process: the canonical
bytes per (generation, labels/hardware) and the signature per (device, generation), so a warm poll
does no database query and no cache round trip (see ``fleet/epochs.py`` for how changes are seen).
"""

import json
import threading
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from fleet import epochs, selectors
from fleet.auth import DeviceSnapshot
from ota import signing
from telemetry.binning import DEFAULT_FEATURE_EDGES, DEFAULT_SCORE_EDGES, LATENCY_EDGES_MS, MAX_CLASSES

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


def telemetry_block(report: dict[str, Any], profile: dict[str, Any] | None) -> dict[str, Any]:
    """Per-model telemetry settings: features and output binning from the reference profile or shapes."""
    profile = profile or {}
    features: list[dict[str, Any]] = []
    raw = profile.get("features")
    if isinstance(raw, list):
        features = [{"name": str(f["name"]), "edges": [float(x) for x in f["edges"]]} for f in raw]
    elif isinstance(raw, dict):
        for name, f in raw.items():
            edges = f.get("edges") if isinstance(f, dict) else f
            features.append({"name": str(name), "edges": [float(x) for x in edges]})
    else:
        inputs = report.get("inputs") or []
        if inputs:
            shape = inputs[0].get("shape") or []
            cols = shape[-1] if shape and isinstance(shape[-1], int) else 1
            name = inputs[0].get("name", "input")
            features = [{"name": f"{name}[{i}]", "edges": list(DEFAULT_FEATURE_EDGES)} for i in range(min(cols, 256))]
    output = profile.get("output")
    if not isinstance(output, dict):
        outs = report.get("outputs") or []
        shape = (outs[0].get("shape") or []) if outs else []
        n = shape[-1] if shape and isinstance(shape[-1], int) else None
        if n is not None and 2 <= n <= MAX_CLASSES:
            output = {"kind": "classes", "n": n}
        else:
            output = {"kind": "bins", "edges": list(DEFAULT_SCORE_EDGES)}
    return {"features": features, "output": output}


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
            telemetry=telemetry_block(report, v.reference_profile),
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


@dataclass(frozen=True)
class Built:
    etag: str
    body: bytes


def telemetry_settings() -> dict[str, Any]:
    return {
        "window_seconds": settings.EDGEFLEET_TELEMETRY_WINDOW,
        "privacy": {
            "mechanism": settings.EDGEFLEET_DP_MECHANISM,
            "epsilon": settings.EDGEFLEET_DP_EPSILON,
            "unit": "device-window",
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


# Hot-path caches, per process, all keyed by generation so a bump makes them unreachable:
# - _shared[(gen, rev)]: the canonical bytes after "device_id" (same for every device with the same
#   labels and hardware) and what they name; only when no hook (campaigns) is registered, since a
#   hook may make the desired state device-specific;
# - _signed[(device, gen, rev)]: that device's ETag and signature (and its whole canonical bytes when
#   they are not shared).
# Bounded by clearing when full. A warm poll thus only concatenates bytes: no query, no round trip.
_shared: dict[tuple[str, str], tuple[bytes, frozenset[str]]] = {}
_signed: dict[tuple[uuid.UUID, str, str], tuple[str, bytes, bytes | None]] = {}
_SIGNED_MAX = 400_000


def _prefix(snapshot: DeviceSnapshot) -> bytes:
    return b'{"device_id":' + json.dumps(str(snapshot.id)).encode() + b","


def _body(canon: bytes, sig: bytes) -> bytes:
    return b'{"manifest":' + canon + b',"signature":' + sig + b"}"


def manifest_for(snapshot: DeviceSnapshot) -> Built:
    """The device's signed manifest; the signature is made once per (device, generation, labels)."""
    generation = current_generation()
    skey = (snapshot.id, generation, snapshot.rev)
    shkey = (generation, snapshot.rev)
    signed = _signed.get(skey)
    if signed is not None:
        etag, sig, canon = signed
        if canon is None and (shared := _shared.get(shkey)) is not None:
            canon = _prefix(snapshot) + shared[0]
        if canon is not None:
            return Built(etag, _body(canon, sig))
    shared = _shared.get(shkey)
    if shared is not None:
        canon, named = _prefix(snapshot) + shared[0], shared[1]
    else:
        manifest, named_set = manifest_dict(snapshot, load_state(generation))
        canon, named = signing.canonical(manifest), frozenset(named_set)
        prefix = _prefix(snapshot)
        if not DESIRED_HOOKS and canon.startswith(prefix):  # device_id sorts first: the rest is shared
            if len(_shared) > 10_000:
                _shared.clear()
            _shared[shkey] = (canon[len(prefix) :], named)
    sig = json.dumps(signing.sign(canon), separators=(",", ":")).encode()
    etag = signing.etag_of(canon)
    _remember_told(snapshot.id, set(named))
    if len(_signed) >= _SIGNED_MAX:
        _signed.clear()
    _signed[skey] = (etag, sig, None if shkey in _shared else canon)
    return Built(etag, _body(canon, sig))


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
