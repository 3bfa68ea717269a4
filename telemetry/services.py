"""What devices, jobs and pages do with telemetry: ingest, rollups, drift, alerts, canary analysis.

Each function takes plain values and does its own transaction(s); api.py, tasks.py and views.py
only parse, call one of these and answer.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet.models import Cohort, Device, DeviceEvent
from ota.models import ModelVersion
from telemetry import drift, privacy, regression
from telemetry.binning import DEFAULT_FEATURE_EDGES, LATENCY_EDGES_MS
from telemetry.models import Alert, DriftResult, PrivacyLedger, Report, Rollup, RollupMark
from telemetry.profiles import expected_bins, output_bin_count

ALL = "all"
OUTPUT = "output"
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def min_cohort() -> int:
    return int(setting("EDGEFLEET_MIN_COHORT", 20))


def rollup_seconds() -> int:
    return int(setting("EDGEFLEET_ROLLUP_SECONDS", 3600))


def retention_days() -> int:
    return int(setting("EDGEFLEET_TELEMETRY_RETENTION_DAYS", 30))


# ----------------------------------------------------------------------------------------- ingest


class Rejection(Exception):
    """One report that cannot be stored; the rest of the batch goes on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def device_was_told(device_id: uuid.UUID, version: ModelVersion) -> bool:
    """THE single place that decides whether a device may report on a version.

    Asks the manifest's record ("was this device ever told to run it") when rollout has it;
    until then, any version that passed validation (staged or archived) is accepted.
    """
    try:
        from rollout.manifest import was_told
    except ImportError:
        return version.status in (ModelVersion.Status.STAGED, ModelVersion.Status.ARCHIVED)
    return bool(was_told(device_id, version.id))


def _check_counts(counts: list[float], n: int, what: str) -> None:
    if len(counts) != n:
        raise Rejection("bins_mismatch", f"{what} has {len(counts)} counts; the manifest's edges give {n}")


class _Batch:
    """Per-batch caches, so 500 reports on one version cost one lookup."""

    def __init__(self, device_id: uuid.UUID) -> None:
        self.device_id = device_id
        self.versions: dict[tuple[str, str], ModelVersion | None] = {}
        self.told: dict[int, bool] = {}
        self.bins: dict[int, dict] = {}

    def version(self, model: str, label: str) -> ModelVersion:
        key = (model, label)
        if key not in self.versions:
            self.versions[key] = ModelVersion.objects.filter(model__name=model, label=label).first()
        v = self.versions[key]
        if v is None:
            raise Rejection("unknown_version", f"no version {label!r} of model {model!r}")
        if v.id not in self.told:
            self.told[v.id] = device_was_told(self.device_id, v)
            self.bins[v.id] = expected_bins(v)
        if not self.told[v.id]:
            raise Rejection("version_not_assigned", f"this device was never told to run {model}:{label}")
        return v


def check_report(r: Any, batch: _Batch, now: datetime) -> tuple[ModelVersion, Report]:
    """Semantic checks of one schema-valid report → an unsaved Report, or raise Rejection."""
    version = batch.version(r.model, r.version)
    start, end = r.window_start, r.window_end
    if start.tzinfo is None or end.tzinfo is None:
        raise Rejection("bad_window", "window times need a UTC offset")
    length = (end - start).total_seconds()
    if length <= 0:
        raise Rejection("bad_window", "window_end must be after window_start")
    if length > int(setting("EDGEFLEET_MAX_WINDOW_SECONDS", 86400)):
        raise Rejection("bad_window", "a window may span at most a day")
    if end > now + timedelta(minutes=5):
        raise Rejection("bad_window", "window_end is in the future")
    if start < now - timedelta(days=retention_days()):
        raise Rejection("bad_window", f"window is older than the {retention_days()}-day retention")
    bins = batch.bins[version.id]
    _check_counts(r.latency_ms.counts, len(LATENCY_EDGES_MS) - 1, "latency_ms")
    _check_counts(r.outputs.counts, output_bin_count(bins["output"]), "outputs")
    expected = {f["name"]: len(f["edges"]) - 1 for f in bins["features"]}
    if set(r.features) != set(expected):
        missing, extra = sorted(set(expected) - set(r.features)), sorted(set(r.features) - set(expected))
        raise Rejection("bins_mismatch", f"features differ from the manifest (missing {missing}, unknown {extra})")
    for name, n in expected.items():
        _check_counts(r.features[name].counts, n, f"features.{name}")
    mech = setting("EDGEFLEET_DP_MECHANISM", "laplace")
    if r.privacy.mechanism != mech:
        raise Rejection("privacy_mismatch", f"mechanism must be {mech!r} as the manifest says")
    max_eps = float(setting("EDGEFLEET_DP_EPSILON", 1.0))
    if not (0 < r.privacy.epsilon <= max_eps * (1 + 1e-9)):
        raise Rejection("privacy_mismatch", f"epsilon must be in (0, {max_eps}]")
    report = Report(
        id=r.id,
        device_id=batch.device_id,
        version_id=version.id,
        window_start=start,
        window_end=end,
        inference_count=r.inference_count,
        error_count=r.error_count,
        latency=list(r.latency_ms.counts),
        outputs=list(r.outputs.counts),
        features={k: list(v.counts) for k, v in r.features.items()},
        mechanism=r.privacy.mechanism,
        epsilon=r.privacy.epsilon,
        received_at=now,
    )
    return version, report


def ingest_reports(device_id: uuid.UUID, reports: list[Any], now: datetime | None = None) -> dict[str, list]:
    """Store a batch of schema-valid reports from one device; durable when this returns.

    Replays (an id this device sent before) are acknowledged as duplicates and change nothing,
    not even the privacy budget. Each accepted report spends its epsilon on the ledger of its
    window's UTC day; one past the daily budget is refused with ``budget_exhausted``. The ledger
    rows are locked first, so two copies of a batch racing each other serialise per device-day.
    """
    now = now or timezone.now()
    batch = _Batch(device_id)
    rejected: list[dict] = []
    candidates: list[Report] = []
    seen: set[uuid.UUID] = set()
    duplicates: list[str] = []
    for r in reports:
        if r.id in seen:
            duplicates.append(str(r.id))
            continue
        seen.add(r.id)
        try:
            candidates.append(check_report(r, batch, now)[1])
        except Rejection as e:
            rejected.append({"id": str(r.id), "code": e.code, "message": e.message})
    accepted: list[Report] = []
    if candidates:
        budget = float(setting("EDGEFLEET_DP_DAILY_BUDGET", 400.0))
        days = sorted({c.window_start.astimezone(UTC).date() for c in candidates})
        with transaction.atomic():
            PrivacyLedger.objects.bulk_create(
                [PrivacyLedger(device_id=device_id, day=d) for d in days], ignore_conflicts=True
            )
            locked = PrivacyLedger.objects.select_for_update().filter(device_id=device_id, day__in=days)
            ledgers: dict[date, PrivacyLedger] = {lg.day: lg for lg in locked.order_by("day")}
            owners = dict(Report.objects.filter(id__in=[c.id for c in candidates]).values_list("id", "device_id"))
            for c in candidates:
                owner = owners.get(c.id)
                if owner is not None:
                    if owner == device_id:
                        duplicates.append(str(c.id))
                    else:
                        rejected.append({"id": str(c.id), "code": "id_conflict", "message": "id already used"})
                    continue
                lg = ledgers[c.window_start.astimezone(UTC).date()]
                if not privacy.budget_allows(lg.spent, c.epsilon, budget):
                    lg.refused += 1
                    rejected.append(
                        {
                            "id": str(c.id),
                            "code": "budget_exhausted",
                            "message": f"daily privacy budget {budget:g} spent ({lg.spent:g}) for {lg.day}",
                        }
                    )
                    continue
                lg.spent += c.epsilon
                lg.reports += 1
                accepted.append(c)
            Report.objects.bulk_create(accepted, ignore_conflicts=True, batch_size=500)
            PrivacyLedger.objects.bulk_update(list(ledgers.values()), ["spent", "reports", "refused"])
    return {"accepted": [str(c.id) for c in accepted], "duplicates": duplicates, "rejected": rejected}


# ---------------------------------------------------------------------------------------- rollups


def bucket_of(t: datetime, seconds: int) -> datetime:
    ts = int(t.timestamp())
    return datetime.fromtimestamp(ts - ts % seconds, tz=UTC)


def cohort_members(labels_by_device: dict[uuid.UUID, dict]) -> dict[str, set[uuid.UUID]]:
    """Saved cohort name → ids of the given devices whose labels match its selector today."""
    from fleet.selectors import SelectorError, parse, predicate

    out: dict[str, set[uuid.UUID]] = {}
    for cohort in Cohort.objects.all():
        try:
            pred = predicate(parse(cohort.selector))
        except SelectorError:
            continue
        out[cohort.name] = {d for d, labels in labels_by_device.items() if pred(labels or {})}
    return out


class _Acc:
    """Running sums of one rollup key."""

    __slots__ = ("errors", "features", "inferences", "latency", "n", "noise", "outputs")

    def __init__(self) -> None:
        self.n = 0
        self.inferences = self.errors = self.noise = 0.0
        self.latency: np.ndarray | None = None
        self.outputs: np.ndarray | None = None
        self.features: dict[str, np.ndarray] = {}

    def add(self, inf: float, err: float, noise: float, lat: list, out: list, feats: dict) -> None:
        self.n += 1
        self.inferences += inf
        self.errors += err
        self.noise += noise
        la, ou = np.asarray(lat, float), np.asarray(out, float)
        self.latency = la if self.latency is None else self.latency + la
        self.outputs = ou if self.outputs is None else self.outputs + ou
        for k, v in feats.items():
            a = np.asarray(v, float)
            self.features[k] = a if k not in self.features else self.features[k] + a


def _add_lists(old: list, new: np.ndarray | None) -> list:
    if new is None:
        return old
    if not old:
        return [float(x) for x in new]
    return [float(x) for x in np.asarray(old, float) + new]


def update_rollups(now: datetime | None = None, settle_seconds: int = 10, chunk: int = 5000) -> dict[str, int]:
    """Add reports received since the high-water mark to their rollups, in one transaction.

    Only reports received before ``now - settle_seconds`` are taken, so an ingest transaction still
    committing when the job runs is picked up next time rather than skipped. The mark and the sums
    commit together: a crash redoes the increment, it never counts a report twice.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settle_seconds)
    width = rollup_seconds()
    with transaction.atomic():
        mark, _ = RollupMark.objects.select_for_update().get_or_create(
            name="rollups", defaults={"received_before": EPOCH}
        )
        if cutoff <= mark.received_before:
            return {"reports": 0, "rollups": 0}
        new = Report.objects.filter(received_at__gt=mark.received_before, received_at__lte=cutoff)
        device_ids = set(new.values_list("device_id", flat=True).distinct())
        labels = dict(Device.objects.filter(id__in=device_ids).values_list("id", "labels"))
        members = cohort_members(labels)
        cohorts_of: dict[uuid.UUID, list[str]] = defaultdict(list)
        for name, ids in members.items():
            for d in ids:
                cohorts_of[d].append(name)
        accs: dict[tuple[int, str, datetime], _Acc] = defaultdict(_Acc)
        noise_cache: dict[tuple[str, float, tuple[str, ...]], float] = {}
        rows = new.values_list(
            "device_id",
            "version_id",
            "window_start",
            "inference_count",
            "error_count",
            "latency",
            "outputs",
            "features",
            "mechanism",
            "epsilon",
        )
        count = 0
        for dev, ver, ws, inf, err, lat, out, feats, mech, eps in rows.iterator(chunk_size=chunk):
            key = (mech, eps, tuple(feats))
            if key not in noise_cache:  # the layout the report was made with (ingest checked it)
                noise_cache[key] = privacy.noise_variance(mech, eps, privacy.layout_of_report(feats))
            b = bucket_of(ws, width)
            for cohort in (ALL, *cohorts_of.get(dev, ())):
                accs[(ver, cohort, b)].add(inf, err, noise_cache[key], lat, out, feats)
            count += 1
        for (ver, cohort, b), acc in accs.items():
            roll, _ = Rollup.objects.select_for_update().get_or_create(
                version_id=ver, cohort=cohort, window_start=b, defaults={"window_seconds": width}
            )
            roll.n_reports += acc.n
            roll.inference_count += acc.inferences
            roll.error_count += acc.errors
            roll.noise_var += acc.noise
            roll.latency = _add_lists(roll.latency, acc.latency)
            roll.outputs = _add_lists(roll.outputs, acc.outputs)
            feats = dict(roll.features)
            for k, v in acc.features.items():
                feats[k] = _add_lists(feats.get(k, []), v)
            roll.features = feats
            in_bucket = Report.objects.filter(
                version_id=ver, window_start__gte=b, window_start__lt=b + timedelta(seconds=width)
            )
            if cohort != ALL:
                cohort_ids = list(members[cohort]) + list(
                    Device.objects.filter(id__in=in_bucket.values("device_id"))
                    .exclude(id__in=device_ids)
                    .values_list("id", flat=True)
                )
                in_bucket = in_bucket.filter(device_id__in=_matching(cohort, cohort_ids))
            roll.n_devices = in_bucket.values("device_id").distinct().count()
            roll.drift_stale = True
            roll.save()
        mark.received_before = cutoff
        mark.save()
    return {"reports": count, "rollups": len(accs)}


def _matching(cohort: str, ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Of ``ids``, the devices whose labels match saved cohort ``cohort`` now."""
    ids = list(ids)
    labels = dict(Device.objects.filter(id__in=ids).values_list("id", "labels"))
    return list(cohort_members(labels).get(cohort, set()))


# ------------------------------------------------------------------------------------------ drift


def _moments(edges: list[float], counts: np.ndarray) -> tuple[float, float]:
    c = np.clip(counts, 0, None)
    if c.sum() <= 0:
        return 0.0, 0.0
    x = drift.centers(edges)
    mean = float(np.average(x, weights=c))
    return mean, float(math.sqrt(np.average((x - mean) ** 2, weights=c)))


def profile_from_rollup(version: ModelVersion, roll: Rollup) -> dict:
    """A reference profile learned from a healthy window (``source: "first_window"``).

    It carries its own noise (``noise_var``) and mass (``n``) so later thresholds account for the
    reference being a noisy sample too.
    """
    bins = expected_bins(version)
    feats = []
    for f in bins["features"]:
        counts = np.asarray(roll.features.get(f["name"]) or [0.0] * (len(f["edges"]) - 1), float)
        mean, std = _moments(f["edges"], counts)
        feats.append({"name": f["name"], "edges": f["edges"], "counts": counts.tolist(), "mean": mean, "std": std})
    output = dict(bins["output"], counts=list(roll.outputs))
    return {
        "source": "first_window",
        "n": roll.inference_count,
        "noise_var": roll.noise_var,
        "window_start": roll.window_start.isoformat(),
        "features": feats,
        "output": output,
    }


def ensure_reference(version: ModelVersion) -> dict | None:
    """The version's reference profile; when none was uploaded, learn it from the first window of
    the whole fleet with at least k devices and an error rate no worse than 5%."""
    if version.reference_profile and all("counts" in f for f in version.reference_profile.get("features", [])):
        return version.reference_profile
    k = min_cohort()
    for roll in Rollup.objects.filter(version=version, cohort=ALL, n_devices__gte=k).order_by("window_start"):
        if roll.inference_count > 0 and roll.error_count / roll.inference_count <= 0.05:
            profile = profile_from_rollup(version, roll)
            ModelVersion.objects.filter(pk=version.pk, reference_profile__isnull=True).update(reference_profile=profile)
            version.refresh_from_db(fields=["reference_profile"])
            return version.reference_profile
    return None


def drift_of(profile: dict, bins: dict, roll: Rollup) -> list[dict]:
    """Drift of every feature and the output of one rollup against ``profile`` (pure once loaded)."""
    out = []
    ref_mass = profile.get("n") or None
    ref_noise = float(profile.get("noise_var") or 0.0)
    ref_feats = {f["name"]: f for f in profile.get("features", [])}
    items = [
        (f["name"], f["edges"], ref_feats.get(f["name"], {}).get("counts"), roll.features.get(f["name"]))
        for f in bins["features"]
    ]
    o = profile.get("output") or {}
    items.append((OUTPUT, o.get("edges") if o.get("kind") == "bins" else None, o.get("counts"), roll.outputs))
    for name, edges, ref, cur in items:
        if not ref or not cur or len(ref) != len(cur):
            continue
        s = drift.scores(edges, ref, cur)
        mass = max(float(np.clip(np.asarray(cur, float), 0, None).sum()), 1.0)
        threshold = drift.psi_threshold(ref, mass, roll.noise_var, ref_mass, ref_noise)
        out.append(dict(feature=name, threshold=threshold, drifted=drift.drifted(s["psi"], threshold), **s))
    return out


def compute_drift(limit: int = 5000) -> dict[str, int]:
    """Drift for every rollup changed since last time (``drift_stale``), then alert bookkeeping.

    Rollups of fewer than k devices are skipped: their drift could not be shown, and it is noise.
    """
    k = min_cohort()
    done = results = 0
    touched: set[tuple[int, str]] = set()
    versions: dict[int, tuple[ModelVersion, dict | None, dict]] = {}
    for roll in Rollup.objects.filter(drift_stale=True).order_by("window_start")[:limit]:
        if roll.version_id not in versions:
            v = ModelVersion.objects.get(pk=roll.version_id)
            versions[v.id] = (v, None, expected_bins(v))
        v, profile, bins = versions[roll.version_id]
        if profile is None:
            profile = ensure_reference(v)
            versions[v.id] = (v, profile, expected_bins(v))
        if profile is None or roll.n_devices < k:
            if roll.n_devices < k:
                Rollup.objects.filter(pk=roll.pk).update(drift_stale=False)
            continue
        for r in drift_of(profile, bins, roll):
            DriftResult.objects.update_or_create(
                version_id=roll.version_id,
                cohort=roll.cohort,
                feature=r["feature"],
                window_start=roll.window_start,
                defaults=dict(
                    n_devices=roll.n_devices,
                    n_reports=roll.n_reports,
                    psi=r["psi"],
                    js=r["js"],
                    w1=r["w1"],
                    ks=r["ks"],
                    threshold=r["threshold"],
                    drifted=r["drifted"],
                ),
            )
            results += 1
        Rollup.objects.filter(pk=roll.pk).update(drift_stale=False)
        touched.add((roll.version_id, roll.cohort))
        done += 1
    opened = resolved = 0
    for version_id, cohort in touched:
        o, r = update_drift_alerts(version_id, cohort)
        opened, resolved = opened + o, resolved + r
    return {"rollups": done, "results": results, "opened": opened, "resolved": resolved}


def update_drift_alerts(version_id: int, cohort: str, now: datetime | None = None) -> tuple[int, int]:
    """Open, update or resolve one drift alert per feature from the LATEST window's result."""
    now = now or timezone.now()
    latest = DriftResult.objects.filter(version_id=version_id, cohort=cohort).order_by("-window_start").first()
    if latest is None:
        return 0, 0
    opened = resolved = 0
    for res in DriftResult.objects.filter(version_id=version_id, cohort=cohort, window_start=latest.window_start):
        numbers = {
            "psi": res.psi,
            "js": res.js,
            "w1": res.w1,
            "ks": res.ks,
            "threshold": res.threshold,
            "n_devices": res.n_devices,
            "window_start": res.window_start.isoformat(),
        }
        alert = Alert.objects.filter(
            kind=Alert.Kind.DRIFT, version_id=version_id, cohort=cohort, feature=res.feature, state=Alert.State.OPEN
        ).first()
        if res.drifted:
            msg = f"PSI {res.psi:.3f} above the noise-aware level {res.threshold:.3f} ({res.n_devices} devices)"
            if alert is None:
                Alert.objects.create(
                    kind=Alert.Kind.DRIFT,
                    version_id=version_id,
                    cohort=cohort,
                    feature=res.feature,
                    opened_at=now,
                    updated_at=now,
                    numbers=numbers,
                    message=msg,
                )
                opened += 1
            else:
                Alert.objects.filter(pk=alert.pk).update(updated_at=now, numbers=numbers, message=msg)
        elif alert is not None:
            Alert.objects.filter(pk=alert.pk).update(
                state=Alert.State.RESOLVED, resolved_at=now, updated_at=now, resolved_by="system", numbers=numbers
            )
            resolved += 1
    return opened, resolved


def open_regression_alert(version_id: int, cohort: str, message: str, numbers: dict) -> Alert:
    """Record that a version regressed against its control (the gate job found it and acted).

    One open regression alert per version and cohort: a second failing campaign updates it.
    """
    now = timezone.now()
    with transaction.atomic():
        alert, created = Alert.objects.select_for_update().get_or_create(
            kind=Alert.Kind.REGRESSION,
            version_id=version_id,
            cohort=cohort,
            feature="",
            state=Alert.State.OPEN,
            defaults={"opened_at": now, "updated_at": now, "numbers": numbers, "message": message},
        )
        if not created:
            alert.updated_at, alert.numbers, alert.message = now, numbers, message
            alert.save(update_fields=["updated_at", "numbers", "message"])
    return alert


def resolve_alert(alert_id: int, by: str, now: datetime | None = None) -> Alert:
    """An operator closes an alert (the caller checks the role and writes the audit entry)."""
    now = now or timezone.now()
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_id)
        if alert.state == Alert.State.OPEN:
            alert.state, alert.resolved_at, alert.updated_at, alert.resolved_by = Alert.State.RESOLVED, now, now, by
            alert.save()
    return alert


def prune_reports(now: datetime | None = None, batch: int = 10000) -> int:
    """Delete raw reports older than the retention period that are already in rollups."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=retention_days())
    mark = RollupMark.objects.filter(name="rollups").values_list("received_before", flat=True).first() or EPOCH
    deleted = 0
    while True:
        ids = list(
            Report.objects.filter(window_end__lt=cutoff, received_at__lte=mark).values_list("id", flat=True)[:batch]
        )
        if not ids:
            return deleted
        deleted += Report.objects.filter(id__in=ids).delete()[0]


# -------------------------------------------------------------------------------- canary analysis

DEFAULT_THRESHOLDS = {
    "error_rate": 0.02,
    "latency_p95": 1.25,
    "latency_p50": 1.25,
    "install_failure_rate": 0.05,
    "drift": 0.25,
    "min_devices": 20,
    "latency_min_delta_ms": 5.0,
}


class _Side:
    """Summed telemetry of one side (canary or control) over a time range."""

    def __init__(self) -> None:
        self.devices: set[uuid.UUID] = set()
        self.inferences = self.errors = self.noise = 0.0
        self.latency = np.zeros(len(LATENCY_EDGES_MS) - 1)
        self.features: dict[str, np.ndarray] = {}
        self.outputs: np.ndarray | None = None


def _side(version_id: int, since: datetime, until: datetime | None, device_ids: set | None) -> _Side:
    qs = Report.objects.filter(version_id=version_id, window_start__gte=since)
    if until is not None:
        qs = qs.filter(window_start__lt=until)
    s = _Side()
    rows = qs.values_list(
        "device_id", "inference_count", "error_count", "latency", "outputs", "features", "mechanism", "epsilon"
    )
    for dev, inf, err, lat, out, feats, mech, eps in rows.iterator(chunk_size=5000):
        if device_ids is not None and dev not in device_ids:
            continue
        s.devices.add(dev)
        s.inferences += inf
        s.errors += err
        s.noise += privacy.noise_variance(mech, eps, privacy.layout_of_report(feats))
        s.latency += np.asarray(lat, float)
        o = np.asarray(out, float)
        s.outputs = o if s.outputs is None else s.outputs + o
        for k, v in feats.items():
            a = np.asarray(v, float)
            s.features[k] = a if k not in s.features else s.features[k] + a
    return s


def _max_drift(version_id: int, side: _Side) -> tuple[float | None, float | None, str]:
    """Largest PSI over features/output of a side vs its version's reference, and its noise-aware level."""
    version = ModelVersion.objects.get(pk=version_id)
    profile = ensure_reference(version)
    if profile is None or not side.devices:
        return None, None, "no reference profile yet" if profile is None else "no reports"
    roll = Rollup(
        features={k: v.tolist() for k, v in side.features.items()},
        outputs=[] if side.outputs is None else side.outputs.tolist(),
        noise_var=side.noise,
    )
    results = drift_of(profile, expected_bins(version), roll)
    if not results:
        return None, None, "no comparable histograms"
    worst = max(results, key=lambda r: r["psi"])
    return worst["psi"], worst["threshold"], f"worst {worst['feature']}"


def canary_vs_control(
    version_id: int,
    control_version_id: int,
    since: datetime,
    until: datetime | None = None,
    cohort_selector: str | None = None,
    thresholds: dict | None = None,
) -> dict[str, dict]:
    """Is ``version_id`` (canary) worse than ``control_version_id`` on comparable devices, same windows?

    Keys ``error_rate``, ``latency_p50``, ``latency_p95``, ``install_failure_rate``, ``drift``; each a
    verdict dict (see ``telemetry.regression.Verdict``). n = distinct reporting devices. Reads raw
    reports (a campaign's windows are always within retention) so any cohort selector works.
    """
    t = dict(DEFAULT_THRESHOLDS, **(thresholds or {}))
    min_dev = int(t["min_devices"])
    device_ids: set | None = None
    if cohort_selector:
        from fleet.selectors import parse, predicate

        pred = predicate(parse(cohort_selector))
        device_ids = {d for d, labels in Device.objects.values_list("id", "labels") if pred(labels or {})}
    can = _side(version_id, since, until, device_ids)
    con = _side(control_version_id, since, until, device_ids)
    nc, nk = len(can.devices), len(con.devices)
    out: dict[str, dict] = {}
    out["error_rate"] = regression.error_rate_verdict(
        can.errors,
        can.inferences,
        con.errors,
        con.inferences,
        nc,
        nk,
        float(t["error_rate"]),
        min_dev,
        canary_noise_var=can.noise,
        control_noise_var=con.noise,
    ).as_dict()
    for key, q in (("latency_p50", 0.5), ("latency_p95", 0.95)):
        out[key] = regression.latency_verdict(
            LATENCY_EDGES_MS,
            can.latency,
            con.latency,
            q,
            nc,
            nk,
            float(t[key]),
            min_dev,
            can.noise,
            con.noise,
            float(t["latency_min_delta_ms"]),
        ).as_dict()
    out["install_failure_rate"] = _install_verdict(version_id, control_version_id, since, until, device_ids, t)
    out["drift"] = _drift_verdict(version_id, control_version_id, can, con, float(t["drift"]), min_dev)
    return out


def _install_rate(version_id: int, since: datetime, until: datetime | None, device_ids: set | None) -> tuple:
    v = ModelVersion.objects.select_related("model").get(pk=version_id)
    qs = DeviceEvent.objects.filter(
        model_name=v.model.name,
        version_label=v.label,
        at__gte=since,
        kind__in=["installed", "install_failed", "verify_failed"],
    )
    if until is not None:
        qs = qs.filter(at__lt=until)
    fails = attempts = 0
    devices = set()
    for dev, kind in qs.values_list("device_id", "kind").iterator():
        if device_ids is not None and dev not in device_ids:
            continue
        devices.add(dev)
        attempts += 1
        fails += kind != "installed"
    return fails, attempts, devices


def _install_verdict(
    version_id: int, control_id: int, since: datetime, until: datetime | None, ids: set | None, t: dict
) -> dict:
    fails, attempts, devices = _install_rate(version_id, since, until, ids)
    v = regression.rate_verdict(fails, attempts, len(devices), float(t["install_failure_rate"]), int(t["min_devices"]))
    cf, ca, cdev = _install_rate(control_id, since, until, ids)
    v.n_control = len(cdev)
    v.control = cf / ca if ca else None
    return v.as_dict()


def _drift_verdict(version_id: int, control_id: int, can: _Side, con: _Side, limit: float, min_dev: int) -> dict:
    nc, nk = len(can.devices), len(con.devices)
    v = regression.Verdict(regression.NOT_ENOUGH, n_canary=nc, n_control=nk, threshold=limit)
    v.canary, level, why = _max_drift(version_id, can)
    v.control, _, _ = _max_drift(control_id, con)
    if v.canary is None or len(can.devices) < min_dev:
        v.detail = why if v.canary is None else f"needs {min_dev} reporting canary devices (have {len(can.devices)})"
        return v.as_dict()
    # Input drift reaches canary and control devices alike; a version is to blame only for the drift
    # it sees beyond what the control sees (e.g. outputs that moved), so the effect is the difference.
    v.statistic = v.canary
    v.effect = v.canary - (v.control or 0.0)
    v.verdict = regression.FAIL if (v.effect > limit and v.canary > (level or 0)) else regression.PASS
    v.detail = (
        f"max PSI {v.canary:.3f} ({why}) vs control {v.control or 0:.3f}; noise-aware level {level:.3f}; "
        f"fails when the canary drifts more than the control by over {limit}"
    )
    return v.as_dict()


# ----------------------------------------------------------------------------------------- charts


def feature_edges(bins: dict, name: str) -> list[float]:
    for f in bins["features"]:
        if f["name"] == name:
            return f["edges"]
    return list(DEFAULT_FEATURE_EDGES)


def version_overview(version_id: int, feature: str | None = None, limit_windows: int = 168) -> dict:
    """Everything the version page shows, already k-suppressed (plain values; charts.py draws it).

    Only rollups of at least k devices contribute numbers; every hidden cell is listed with why.
    """
    k = min_cohort()
    version = ModelVersion.objects.select_related("model").get(pk=version_id)
    bins = expected_bins(version)
    names = [f["name"] for f in bins["features"]] + [OUTPUT]
    feature = feature if feature in names else (names[0] if names else OUTPUT)
    hidden: list[dict] = []

    drift_rows = list(
        DriftResult.objects.filter(version=version, cohort=ALL).order_by("window_start")[: limit_windows * len(names)]
    )
    drift_series: dict[str, list[tuple]] = defaultdict(list)
    for r in drift_rows:
        drift_series[r.feature].append((r.window_start, r.psi, r.threshold))

    rollups = list(Rollup.objects.filter(version=version).order_by("window_start"))
    for r in rollups:
        reason = privacy.suppressed(r.n_devices, k)
        if reason:
            hidden.append({"cohort": r.cohort, "window_start": r.window_start, "reason": reason})

    overlay = None
    shown_all = [r for r in rollups if r.cohort == ALL and r.n_devices >= k]
    profile = version.reference_profile or {}
    if shown_all:
        latest = shown_all[-1]
        if feature == OUTPUT:
            cur, ref, edges = latest.outputs, (profile.get("output") or {}).get("counts"), None
        else:
            cur = latest.features.get(feature)
            ref = next((f.get("counts") for f in profile.get("features", []) if f["name"] == feature), None)
            edges = feature_edges(bins, feature)
        overlay = {
            "feature": feature,
            "window_start": latest.window_start,
            "n_devices": latest.n_devices,
            "edges": edges,
            "current": drift.distribution(cur, 0.0).tolist() if cur else None,
            "reference": drift.distribution(ref, 0.0).tolist() if ref else None,
        }

    latest_by_cohort: dict[str, datetime] = {}
    for r in rollups:
        latest_by_cohort[r.cohort] = r.window_start
    cohorts = sorted(latest_by_cohort, key=lambda c: (c != ALL, c))
    heat: dict[tuple[str, str], float | None] = {}
    heat_notes: dict[tuple[str, str], str] = {}
    devices_at = {(r.cohort, r.window_start): r.n_devices for r in rollups}
    for c in cohorts:
        ws = latest_by_cohort[c]
        reason = privacy.suppressed(devices_at[(c, ws)], k)
        results = {d.feature: d.psi for d in DriftResult.objects.filter(version=version, cohort=c, window_start=ws)}
        for f in names:
            heat[(c, f)] = None if reason else results.get(f)
            if reason:
                heat_notes[(c, f)] = reason

    siblings = ModelVersion.objects.filter(model=version.model).order_by("created_at")
    health: dict[str, list[tuple]] = {}
    for sib in siblings:
        pts = []
        for r in Rollup.objects.filter(version=sib, cohort=ALL).order_by("window_start")[:limit_windows]:
            if r.n_devices < k or r.inference_count <= 0:
                continue
            p95 = regression.histogram_quantile(LATENCY_EDGES_MS, r.latency, 0.95)
            p50 = regression.histogram_quantile(LATENCY_EDGES_MS, r.latency, 0.5)
            pts.append((r.window_start, max(r.error_count, 0.0) / r.inference_count, p50, p95))
        if pts:
            health[sib.label] = pts

    alerts = list(Alert.objects.filter(version=version, state=Alert.State.OPEN))
    return {
        "version": version,
        "k": k,
        "features": names,
        "feature": feature,
        "drift_series": dict(drift_series),
        "overlay": overlay,
        "heat": {"cohorts": cohorts, "features": names, "values": heat, "notes": heat_notes},
        "health": health,
        "alerts": alerts,
        "hidden": hidden[-50:],
        "profile_source": profile.get("source"),
    }
