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
releases, versions, variants, cohorts or campaigns. :func:`resolve` is the poll's one step here: what
the device is told, and its sequence and validity (``sequence``, ``issued_at``, ``expires_at``, held
in the database by rollout/freshness.py, so an agent can refuse a manifest that is older than one it
accepted, expired, or another device's; docs/protocol.md). Signing (ota/signing.py) and keeping
signed manifests ready per device in Redis and process memory (fleet/manifests.py, so a poll does no
database query and signs only when the device's desired state changed or its manifest nears expiry)
happen after it, outside rollout.
"""

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django.conf import settings

from fleet import epochs, selectors
from fleet.auth import DeviceSnapshot
from ota import signing
from rollout import freshness, variant_rule
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.profiles import expected_bins

logger = logging.getLogger(__name__)
PROTOCOL = 2  # 2: signed sequence, issued_at and expires_at (docs/protocol.md, "Versions")
FLOAT_ACCELERATORS = variant_rule.FLOAT_ACCELERATORS


# ---------------------------------------------------------------- generation


def bump_generation() -> str:
    """Say that releases/versions/cohorts/campaigns changed: every process reloads, manifests rebuild.

    The database's count goes first: data loaded after this call is known to be newer than any
    manifest built before it (rollout/freshness.py)."""
    freshness.bump_generation_number()
    return epochs.bump(epochs.GEN_KEY)


def bump_data() -> str:
    """Say that campaign data changed for some devices only: every process reloads its state, but no
    ready manifest is dropped; the caller drops the affected devices (``rollout.moves``)."""
    freshness.bump_generation_number()
    return epochs.bump(epochs.DATA_KEY)


def current_generation() -> str:
    return epochs.current()[0]


# ---------------------------------------------------------------- the in-memory state


@dataclass(frozen=True)
class ArtifactRef:
    sha256: str
    size: int
    variant: str
    p50: float | None = None  # server latency and agreement with fp32: what rollout.variant_rule reads
    agreement: float | None = None
    released: bool = True

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
    install: dict[str, Any] | None = None  # a campaign's windows and conditions (agent/conditions.py)


@dataclass
class State:
    generation: str
    number: int = 0  # the database's generation count when this was loaded (rollout/freshness.py)
    data: str = ""  # fleet.epochs.data() when this was loaded: a campaign change reloads it
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


def _load(generation: str, data: str = "") -> State:
    from fleet.models import Cohort
    from ota.models import ModelVersion
    from rollout.models import Campaign, Release

    state = State(generation, freshness.generation_number(), data)  # the count first, then what it counts
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
        report = v.report or {}
        fp32_p50 = (report.get("latency_ms") or {}).get("p50")
        arts = {"fp32": ArtifactRef(v.artifact.sha256, v.artifact.size, "fp32", fp32_p50, 1.0)}
        for var in v.variants.all():
            m = var.metrics or {}
            arts[var.kind] = ArtifactRef(
                var.artifact.sha256,
                var.artifact.size,
                var.kind,
                (m.get("latency_ms") or {}).get("p50"),
                m.get("agreement"),
                var.released,
            )
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
    data = epochs.data()  # before loading: a change after this read reloads again
    st = _state
    if st is not None and st.generation == generation and st.data == data and not reload:
        return st
    with _state_lock:
        current = _state
        if current is None or current.generation != generation or current.data != data or (reload and current is st):
            _state = _load(generation, data)
        return _state


def per_generation(state: State, name: str, loader: Callable[[], Any]) -> Any:
    """Memoize ``loader()`` for this generation (for hooks that need their own rows, e.g. campaigns)."""
    if name not in state.memo:
        state.memo[name] = loader()
    return state.memo[name]


# ---------------------------------------------------------------- resolution

DESIRED_HOOKS: list[Callable[[DeviceSnapshot, list[Desired], State], list[Desired]]] = []


def choose_variant(hardware: dict[str, Any], available: Mapping[str, ArtifactRef]) -> str:
    """The build a device gets: ``rollout.variant_rule`` over the builds' measured figures."""
    builds = {k: variant_rule.Figures(a.size, a.p50, a.agreement, a.released) for k, a in available.items()}
    return variant_rule.choose(hardware or {}, builds)[0]


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
        entry = {
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
        if d.install is not None:  # only then: manifests of campaigns without windows keep their bytes
            entry["install"] = d.install
        models.append(entry)
    manifest = {
        "protocol": PROTOCOL,
        "device_id": str(snapshot.id),
        "poll_interval": settings.EDGEFLEET_POLL_INTERVAL,
        "telemetry": telemetry_settings(),
        "models": models,
    }
    return manifest, named


# ---------------------------------------------------------------- resolving one device
#
# The canonical bytes of a manifest are kept in pieces (fleet/manifests.py keeps them ready): the
# device's own head (device_id, expires_at, issued_at) and sequence, and two pieces that devices
# with the same desired state share ("models" … "protocol", and "telemetry").


def head_bytes(device_id: uuid.UUID, issued_at: str, expires_at: str) -> bytes:
    return (
        b'{"device_id":'
        + json.dumps(str(device_id)).encode()
        + b',"expires_at":"'
        + expires_at.encode()
        + b'","issued_at":"'
        + issued_at.encode()
        + b'",'
    )


def piece_hash(piece: bytes) -> str:
    return hashlib.sha256(piece).hexdigest()[:32]


def _split(device_id: uuid.UUID, content: dict[str, Any]) -> tuple[bytes, bytes]:
    """The shared pieces of the canonical bytes: ``"models"`` … ``"protocol":2,`` and ``"telemetry":{…}}``.

    The per-device fields sort before "models" (device_id, expires_at, issued_at) and between
    "protocol" and "telemetry" (sequence); the layout is checked, not assumed.
    """
    probe = {**content, "sequence": 0, "issued_at": freshness.EPOCH, "expires_at": freshness.EPOCH}
    canon = signing.canonical(probe)
    head = head_bytes(device_id, freshness.EPOCH, freshness.EPOCH)
    tail = b'"telemetry":' + signing.canonical(content["telemetry"]) + b"}"
    seq_tail = b'"sequence":0,' + tail
    mid = canon[len(head) : len(canon) - len(seq_tail)]
    if not (canon.startswith(head) and canon.endswith(seq_tail) and mid.startswith(b'"models":')):
        raise RuntimeError("manifest keys changed: the per-device fields are no longer where _split expects")
    return mid, tail


class DeviceGone(Exception):
    """The device's row is gone, though its token may still be cached (the poll answers 401)."""


class Resolved(NamedTuple):
    """What a device is told now, as the canonical pieces devices share, with its sequence and times."""

    mid: bytes
    tail: bytes
    fresh: freshness.Fresh
    named: set[str]


def resolve(snapshot: DeviceSnapshot, gen: str, stale: freshness.Fresh | None, at: float) -> Resolved | None:
    """The device's manifest content for generation ``gen``, keeping ``stale`` (what the device holds) when it
    says the same and is not near expiry; otherwise the device's sequence comes from the database
    (rollout/freshness.py). None: twice, the device was told something from newer data than ours."""
    state = load_state(gen)
    for _ in range(2):
        content, named = manifest_dict(snapshot, state)
        mid, tail = _split(snapshot.id, content)
        digest = piece_hash(mid + tail)
        if stale is not None and stale.digest == digest and stale.refresh_at > at:
            return Resolved(mid, tail, stale, named)
        try:
            fresh = freshness.claim(snapshot.id, digest, state.number, at)
        except LookupError as e:
            raise DeviceGone(str(e)) from e
        if fresh is not None:
            return Resolved(mid, tail, fresh, named)
        state = load_state(gen, reload=True)  # the device was told something from newer data than ours
    return None


# ---------------------------------------------------------------- what a device was told


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
    if presence.pending_told(presence.told_key(device_id), item):
        return True
    if r is not None and r.sismember(presence.told_key(device_id), item):
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
