"""What devices, jobs and pages do with telemetry: ingest, rollups, drift, alerts, canary analysis.

Each function takes plain values and does its own transaction(s); api.py, tasks.py and views.py
only parse, call one of these and answer.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet.models import Cohort, Device
from ota.models import ModelVersion
from telemetry import drift, privacy, quarantine, regression, rollback_alerts, trust
from telemetry.binning import DEFAULT_FEATURE_EDGES, LATENCY_EDGES_MS
from telemetry.models import Alert, DriftResult, Quarantine, Report, Rollup, RollupMark
from telemetry.profiles import expected_bins

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
# In telemetry/ingest.py (checks, ledger, one report per window); the names stay importable here.
from telemetry.ingest import Rejection, check_report, device_was_told, ingest_reports  # noqa: E402, F401


def count_bounds(version: ModelVersion) -> tuple[float, float]:
    """The range any count of one report of ``version`` must lie in, under today's assignment."""
    mech, eps = trust.assigned()
    return trust.bounds(mech, eps, trust.shape_of(version))


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
    before = np.asarray(old, float)
    if before.shape != new.shape:
        raise ValueError(f"stored sums have {before.size} bins, the new reports {new.size}")
    return [float(x) for x in before + new]


def update_rollups(now: datetime | None = None, settle_seconds: int = 10, chunk: int = 5000) -> dict[str, int]:
    """Add reports received since the high-water mark to their rollups, in one transaction.

    Only reports received before ``now - settle_seconds`` are taken, so an ingest transaction still
    committing when the job runs is picked up next time rather than skipped. The mark and the sums
    commit together: a crash redoes the increment, it never counts a report twice.

    Nothing one row holds can stop the job: every row is judged (``trust.RowJudge``: shapes, finite
    and bounded counts, a privacy assignment the server made) and a bad one is quarantined; each
    rollup is written in its own savepoint, and one that cannot take its sums is quarantined while
    the others commit. A report's noise is its server assignment's, never a stored number.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settle_seconds)
    width = rollup_seconds()
    with transaction.atomic():
        mark, _ = RollupMark.objects.select_for_update().get_or_create(
            name="rollups", defaults={"received_before": EPOCH}
        )
        if cutoff <= mark.received_before:
            return {"reports": 0, "rollups": 0, "quarantined": 0}
        new = Report.objects.filter(received_at__gt=mark.received_before, received_at__lte=cutoff, quarantined=False)
        device_ids = set(new.values_list("device_id", flat=True).distinct())
        labels = dict(Device.objects.filter(id__in=device_ids).values_list("id", "labels"))
        members = cohort_members(labels)
        cohorts_of: dict[uuid.UUID, list[str]] = defaultdict(list)
        for name, ids in members.items():
            for d in ids:
                cohorts_of[d].append(name)
        accs: dict[tuple[int, str, datetime], _Acc] = defaultdict(_Acc)
        judge = trust.RowJudge()
        bad: list[tuple[uuid.UUID, int, str]] = []
        rows = new.values_list(
            "id",
            "device_id",
            "version_id",
            "window_start",
            "window_end",
            "inference_count",
            "error_count",
            "latency",
            "outputs",
            "features",
            "mechanism",
            "epsilon",
        )
        count = 0
        for rid, dev, ver, ws, we, inf, err, lat, out, feats, mech, eps in rows.iterator(chunk_size=chunk):
            try:
                problem, noise = judge.judge(ver, (we - ws).total_seconds(), inf, err, lat, out, feats, mech, eps)
            except Exception as e:  # the judge is total; this is the last line of defence
                problem, noise = f"unreadable row ({quarantine.describe(e)})", 0.0
            if problem:
                bad.append((rid, ver, problem))
                continue
            b = bucket_of(ws, width)
            for cohort in (ALL, *cohorts_of.get(dev, ())):
                accs[(ver, cohort, b)].add(inf, err, noise, lat, out, feats)
            count += 1
        quarantine.reports(bad, now)
        written = 0
        for (ver, cohort, b), acc in accs.items():
            try:
                with transaction.atomic():
                    _apply_rollup(ver, cohort, b, width, acc, members, device_ids)
                written += 1
            except Exception as e:
                quarantine.record(
                    Quarantine.Kind.ROLLUP,
                    f"{ver}/{cohort}/{b.isoformat()}",
                    f"the rollup could not take {acc.n} new report(s): {quarantine.describe(e)}",
                    ver,
                    now,
                )
        mark.received_before = cutoff
        mark.save()
    return {"reports": count, "rollups": written, "quarantined": len(bad)}


def _apply_rollup(ver: int, cohort: str, b: datetime, width: int, acc: _Acc, members: dict, device_ids: set) -> None:
    roll, _ = Rollup.objects.select_for_update().get_or_create(
        version_id=ver, cohort=cohort, window_start=b, defaults={"window_seconds": width}
    )
    if roll.source == Rollup.Source.ROUNDS:
        return  # the window's secure-aggregation rounds supersede per-device reports
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
    sums = [roll.inference_count, roll.error_count, roll.noise_var, *roll.latency, *roll.outputs]
    if not all(math.isfinite(x) for x in sums) or not all(math.isfinite(x) for v in feats.values() for x in v):
        raise ValueError("its sums are not finite numbers")
    in_bucket = Report.objects.filter(
        version_id=ver, window_start__gte=b, window_start__lt=b + timedelta(seconds=width), quarantined=False
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
    profile = {
        "source": "first_window",
        "n": roll.inference_count,
        "noise_var": roll.noise_var,
        "window_start": roll.window_start.isoformat(),
        "features": feats,
        "output": output,
    }
    if roll.source == Rollup.Source.ROUNDS:
        # Medians of group distributions: no inference count to sample from, the noise is per bin in
        # shares (from the rounds' public parameters), kept per block for the drift thresholds.
        bin_var = (roll.rounds or {}).get("drift", {}).get("bin_var", {})
        profile.update(n=0, noise_var=0.0, rollup="rounds", bin_var={k: float(v) for k, v in bin_var.items()})
    return profile


def ensure_reference(version: ModelVersion) -> dict | None:
    """The version's reference profile; when none was uploaded, learn it from the first window of
    the whole fleet with at least k devices and an error rate no worse than 5%."""
    if version.reference_profile and all("counts" in f for f in version.reference_profile.get("features", [])):
        return version.reference_profile
    k = min_cohort()
    for roll in Rollup.objects.filter(version=version, cohort=ALL, n_devices__gte=k).order_by("window_start"):
        if not (math.isfinite(roll.inference_count) and math.isfinite(roll.error_count)):
            continue
        if roll.source == Rollup.Source.ROUNDS and not (roll.rounds or {}).get("drift", {}).get("informative"):
            continue  # a window whose drift rounds all failed has no distributions to learn from
        if roll.inference_count > 0 and roll.error_count / roll.inference_count <= 0.05:
            try:
                profile = profile_from_rollup(version, roll)
                _finite_profile(profile)
            except (TypeError, ValueError) as e:  # an unreadable rollup cannot be the reference
                quarantine.record(
                    Quarantine.Kind.DRIFT,
                    f"{version.pk}/reference/{roll.window_start.isoformat()}",
                    f"not usable as the reference profile: {quarantine.describe(e)}",
                    version.pk,
                )
                continue
            ModelVersion.objects.filter(pk=version.pk, reference_profile__isnull=True).update(reference_profile=profile)
            version.refresh_from_db(fields=["reference_profile"])
            return version.reference_profile
    return None


def _finite_profile(profile: dict) -> None:
    numbers = [profile["n"], profile["noise_var"], *profile["output"]["counts"]]
    numbers += [x for f in profile["features"] for x in (*f["counts"], f["mean"], f["std"])]
    if not all(isinstance(x, float | int) and math.isfinite(x) for x in numbers):
        raise ValueError("its counts are not finite numbers")


def block_of(feature: str) -> str:
    """The round layout's block for a drift feature (``agent.encoding.drift_layout``)."""
    return OUTPUT if feature == OUTPUT else f"feature:{feature}"


def drift_of(profile: dict, bins: dict, roll: Rollup, day: dict | None = None) -> list[dict]:
    """Drift of every feature and the output of one rollup against ``profile`` (pure once loaded).

    A report rollup's threshold simulates its summed inferences plus its summed DP noise; a round
    rollup's, the noise of its median distribution per bin in shares, from the rounds' public
    parameters (``drift.psi_threshold_shares``). ``day``: feature → the day's mean-shift test
    (``telemetry.day_drift``) for a round rollup; a feature has drifted if either test says so.
    """
    day = day or {}
    out = []
    ref_mass = profile.get("n") or None
    ref_noise = float(profile.get("noise_var") or 0.0)
    ref_bin_var = profile.get("bin_var") or {}
    ref_feats = {f["name"]: f for f in profile.get("features", [])}
    items = [
        (f["name"], f["edges"], ref_feats.get(f["name"], {}).get("counts"), roll.features.get(f["name"]))
        for f in bins["features"]
    ]
    o = profile.get("output") or {}
    items.append((OUTPUT, o.get("edges") if o.get("kind") == "bins" else None, o.get("counts"), roll.outputs))
    from_rounds = roll.source == Rollup.Source.ROUNDS
    round_var = (roll.rounds or {}).get("drift", {}).get("bin_var", {}) if from_rounds else {}
    for name, edges, ref, cur in items:
        if not ref or not cur or len(ref) != len(cur):
            continue
        s = drift.scores(edges, ref, cur)
        if from_rounds:
            if block_of(name) not in round_var:
                raise ValueError(f"{name}: the round rollup states no noise variance")
            ref_var = float(ref_bin_var.get(block_of(name), 0.0)) or (ref_noise / ref_mass**2 if ref_mass else 0.0)
            threshold = drift.psi_threshold_shares(ref, float(round_var[block_of(name)]), ref_mass, ref_var)
        else:
            mass = max(float(np.clip(np.asarray(cur, float), 0, None).sum()), 1.0)
            threshold = drift.psi_threshold(ref, mass, roll.noise_var, ref_mass, ref_noise)
        shift = day.get(name)
        drifted = drift.drifted(s["psi"], threshold) or (shift is not None and shift.drifted)
        means = {"mean_shift": shift.shift, "mean_z": shift.z, "mean_level": shift.level} if shift else {}
        out.append(dict(feature=name, threshold=threshold, drifted=drifted, **means, **s))
    return out


def compute_drift(limit: int = 5000) -> dict[str, int]:
    """Drift for every rollup changed since last time (``drift_stale``), then alert bookkeeping.

    Rollups of fewer than k devices are skipped: their drift could not be shown, and it is noise.
    Each rollup is judged in its own savepoint and each (version, cohort)'s alerts likewise: one that
    fails is quarantined with the reason, and the rest go on.
    """
    k = min_cohort()
    done = results = failed = 0
    touched: set[tuple[int, str]] = set()
    versions: dict[int, tuple[ModelVersion, dict | None, dict] | None] = {}
    for roll in Rollup.objects.filter(drift_stale=True).order_by("window_start")[:limit]:
        try:
            if roll.version_id not in versions:
                v = ModelVersion.objects.get(pk=roll.version_id)
                versions[v.id] = (v, None, expected_bins(v))
            v, profile, bins = versions[roll.version_id]
            if profile is None and roll.n_devices >= k:
                profile = ensure_reference(v)
                versions[v.id] = (v, profile, bins)
            if profile is None or roll.n_devices < k:
                if roll.n_devices < k:
                    Rollup.objects.filter(pk=roll.pk).update(drift_stale=False)
                continue
            with transaction.atomic():
                results += _store_drift(roll, profile, bins)
                Rollup.objects.filter(pk=roll.pk).update(drift_stale=False)
            touched.add((roll.version_id, roll.cohort))
            done += 1
        except Exception as e:
            failed += 1
            quarantine.record(
                Quarantine.Kind.DRIFT,
                f"{roll.version_id}/{roll.cohort}/{roll.window_start.isoformat()}",
                f"drift could not be computed for this rollup: {quarantine.describe(e)}",
                roll.version_id,
            )
            Rollup.objects.filter(pk=roll.pk).update(drift_stale=False)
    opened = resolved = 0
    for version_id, cohort in sorted(touched):
        try:
            with transaction.atomic():
                o, r = update_drift_alerts(version_id, cohort)
            opened, resolved = opened + o, resolved + r
        except Exception as e:
            failed += 1
            quarantine.record(
                Quarantine.Kind.ALERTS,
                f"{version_id}/{cohort}",
                f"drift alerts could not be updated: {quarantine.describe(e)}",
                version_id,
            )
    return {"rollups": done, "results": results, "opened": opened, "resolved": resolved, "quarantined": failed}


def _store_drift(roll: Rollup, profile: dict, bins: dict) -> int:
    from telemetry import day_drift

    stored = 0
    day = day_drift.tests_for(profile, roll) if roll.source == Rollup.Source.ROUNDS else {}
    for r in drift_of(profile, bins, roll, day):
        bad = [name for name in ("psi", "js", "ks", "threshold") if not math.isfinite(r[name])]
        bad += [name for name in ("mean_shift", "mean_level") if name in r and not math.isfinite(r[name])]
        if r["w1"] is not None and not math.isfinite(r["w1"]):
            bad.append("w1")
        if bad:
            raise ValueError(f"{r['feature']}: {', '.join(bad)} not finite")
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
                mean_shift=r.get("mean_shift"),
                mean_z=_finite_or_sign(r.get("mean_z")),
                mean_level=r.get("mean_level"),
            ),
        )
        stored += 1
    return stored


def _finite_or_sign(z: float | None) -> float | None:
    """An exact (noise-free) sum's z is ±inf; stored as ±1e9 (a float column holds no infinity on
    every database), which reads the same against any level."""
    if z is None or math.isfinite(z):
        return z
    return math.copysign(1e9, z) if not math.isnan(z) else None


def update_drift_alerts(version_id: int, cohort: str, now: datetime | None = None) -> tuple[int, int]:
    """Open, update or resolve one drift alert per feature from the LATEST window's result."""
    now = now or timezone.now()
    latest = DriftResult.objects.filter(version_id=version_id, cohort=cohort).order_by("-window_start").first()
    if latest is None:
        return 0, 0
    opened = resolved = 0
    rolled_back = rollback_alerts.rolled_back_at(version_id)  # windows before it open no alert
    for res in DriftResult.objects.filter(version_id=version_id, cohort=cohort, window_start=latest.window_start):
        if not all(math.isfinite(x) for x in (res.psi, res.js, res.ks, res.threshold)):
            raise ValueError(f"the drift result of {res.feature} at {res.window_start.isoformat()} is not finite")
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
        if res.mean_z is not None:
            numbers.update(mean_shift=res.mean_shift, mean_z=res.mean_z, mean_level=res.mean_level)
        if res.drifted:
            if res.psi > res.threshold or res.mean_z is None:
                msg = f"PSI {res.psi:.3f} above the noise-aware level {res.threshold:.3f} ({res.n_devices} devices)"
            else:
                msg = (
                    f"mean moved by {res.mean_shift:+.3g} over the last day of rounds (z = {res.mean_z:.1f}, "
                    f"level {res.mean_level:.2f}; {res.n_devices} devices)"
                )
            if alert is None:
                if rolled_back is not None and res.window_start < rolled_back:
                    continue
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


def rollup_and_drift() -> dict[str, Any]:
    """The beat job: report rollups, round rollups (which supersede them per version-window), then
    drift. A step that fails outright (the database went away) is
    logged and the other still runs; bad items inside a step are quarantined by the step itself."""
    from telemetry.round_rollups import update_round_rollups

    out: dict[str, Any] = {}
    for name, step in (("rollup", update_rollups), ("rounds", update_round_rollups), ("drift", compute_drift)):
        try:
            out[name] = step()
        except Exception as e:
            logging.getLogger(__name__).exception("telemetry %s step failed", name)
            out[name] = {"error": quarantine.describe(e)}
    return out


def prune_reports(now: datetime | None = None, batch: int = 10000) -> int:
    """Delete raw reports older than the retention period that are already in rollups, and quarantine
    notes not met again within it (their items are gone or were fixed)."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=retention_days())
    mark = RollupMark.objects.filter(name="rollups").values_list("received_before", flat=True).first() or EPOCH
    Quarantine.objects.filter(last_at__lt=cutoff).delete()
    deleted = 0
    while True:
        ids = list(
            Report.objects.filter(window_end__lt=cutoff, received_at__lte=mark).values_list("id", flat=True)[:batch]
        )
        if not ids:
            return deleted
        deleted += Report.objects.filter(id__in=ids).delete()[0]


# -------------------------------------------------------------------------------- canary analysis
# In telemetry/canary.py; the names stay importable here.
from telemetry.canary import DEFAULT_THRESHOLDS, canary_vs_control  # noqa: E402, F401

# ----------------------------------------------------------------------------------------- charts


def _numbers(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x) for x in values
    )


def unreadable(roll: Rollup) -> str | None:
    """Why a stored rollup cannot be drawn (sums that are not finite numbers), or None.

    The jobs only write finite sums; this keeps a page from failing on a row changed by other means.
    """
    scalars = (roll.inference_count, roll.error_count, roll.noise_var)
    if not all(isinstance(x, float | int) and math.isfinite(x) for x in scalars):
        return "quarantined: its counts are not finite numbers"
    if not (_numbers(roll.latency) and _numbers(roll.outputs) and isinstance(roll.features, dict)):
        return "quarantined: its histograms cannot be read"
    if not all(_numbers(v) for v in roll.features.values()):
        return "quarantined: its feature histograms cannot be read"
    return None


def summed(roll: Rollup) -> str:
    """What a point sums, for hover text and tables: "1,240 devices in 5 groups" (rounds; "× 12
    windows" when the rollup window holds several round windows) or "1,240 devices" (reports)."""
    devices = f"{roll.n_devices:,} device{'' if roll.n_devices == 1 else 's'}"
    if roll.source != Rollup.Source.ROUNDS:
        return f"{devices} (per-device reports)"
    windows = max((b.get("windows", 1) for b in (roll.rounds or {}).values() if isinstance(b, dict)), default=1)
    text = f"{devices} in {roll.n_groups:,} group{'' if roll.n_groups == 1 else 's'}"
    return text + (f" × {windows} windows" if windows > 1 else "")


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
    rollups = []
    for r in Rollup.objects.filter(version=version).order_by("window_start"):
        reason = privacy.suppressed(r.n_devices, k) or unreadable(r)
        if reason:
            hidden.append({"cohort": r.cohort, "window_start": r.window_start, "reason": reason})
        if not unreadable(r):
            rollups.append(r)
    sums_at = {r.window_start: summed(r) for r in rollups if r.cohort == ALL}

    drift_series: dict[str, list[tuple]] = defaultdict(list)
    drift_mean: dict[str, dict] = {}  # feature → the latest day's mean-shift test (round rollups)
    for r in drift_rows:
        drift_series[r.feature].append((r.window_start, r.psi, r.threshold, sums_at.get(r.window_start, "")))
        if r.mean_z is not None:
            drift_mean[r.feature] = {"shift": r.mean_shift, "z": r.mean_z, "level": r.mean_level}
        else:
            drift_mean.pop(r.feature, None)

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
            "summed": summed(latest),
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
            if r.n_devices < k or unreadable(r) or r.inference_count <= 0:
                continue
            p95 = regression.histogram_quantile(LATENCY_EDGES_MS, r.latency, 0.95)
            p50 = regression.histogram_quantile(LATENCY_EDGES_MS, r.latency, 0.5)
            pts.append((r.window_start, regression.clipped_rate(r.error_count, r.inference_count), p50, p95, summed(r)))
        if pts:
            health[sib.label] = pts

    alerts = list(Alert.objects.filter(version=version, state=Alert.State.OPEN))
    return {
        "version": version,
        "k": k,
        "features": names,
        "feature": feature,
        "drift_series": dict(drift_series),
        "drift_mean": drift_mean,
        "overlay": overlay,
        "heat": {"cohorts": cohorts, "features": names, "values": heat, "notes": heat_notes},
        "health": health,
        "alerts": alerts,
        "hidden": hidden[-50:],
        "profile_source": profile.get("source"),
        "quarantined": quarantine.of_version(version.pk),
    }
