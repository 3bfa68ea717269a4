"""Round rollups: the finished secure-aggregation rounds of a (version, window) as the rollup drift,
charts and health cards read (part of the ``telemetry.rollup_and_drift`` beat job).

For each rollup window (``EDGEFLEET_ROLLUP_SECONDS``) of a version, every finished round whose window
starts in it is read as a ``telemetry.group_sums.GroupSum`` (its sum, its survivors ``u3`` and each
device's noise ``noise_sigma2`` — public parameters, never a device's declaration), drift rounds and
health rounds are pooled apart (median across the informative groups), and the result overwrites the
window's cohort-"all" ``Rollup`` with ``source="rounds"``: where a version-window has round results
they are what everything reads; per-report sums remain for windows (and saved cohorts) without
them. A void or failed round is left out and counted with its reason.

Incremental: a high-water mark on ``finished_at`` (``RollupMark`` "rounds", with the report job's
settle lag) picks the windows with rounds finished since the last run, and each such window is
recomputed whole from all its rounds (a median cannot be updated by adding), so a rerun — or a
window recomputed for a late round — writes nothing unless a figure changed.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from telemetry import quarantine
from telemetry.group_sums import GroupSum, Pooled, pool
from telemetry.models import AggRound, Quarantine, Rollup, RollupMark, RoundMember
from telemetry.services import ALL, EPOCH, bucket_of, rollup_seconds

DRIFT, HEALTH = "drift", "health"  # telemetry.rounds' budgets (read, not imported: rounds.py is the protocol's)
DONE, FAILED = AggRound.Phase.DONE, AggRound.Phase.FAILED
FEATURE = "feature:"
REASON_CHARS = 200


def layout_of(r: AggRound) -> Any:
    from telemetry.rounds import layout_from_json

    return layout_from_json(r.layout)


def group_sum(r: AggRound) -> GroupSum:
    """A finished round's sum with its public facts: survivors and each device's noise variance."""
    return GroupSum(layout_of(r), np.asarray(r.result, dtype=np.int64), len(r.u3), float(Fraction(r.noise_sigma2)))


def figures(drift: Pooled | None, health: Pooled | None, windows: dict[str, int]) -> dict[str, Any]:
    """Rollup fields from the pooled drift and health groups (pure).

    Mass unit: one active device. A histogram is the median distribution times the mean number of
    active devices per round window, ``inference_count`` that number and ``error_count`` the median
    error fraction times it — so every reader that normalises histograms or divides errors by
    inferences reads the device-weighted figures unchanged. ``noise_var`` is the latency bins'
    noise in those units (the only per-bin variance report-path readers take from a rollup); drift
    reads the per-block variances in shares from ``rounds``.
    """
    out: dict[str, Any] = {"features": {}, "outputs": [], "latency": [], "inference_count": 0.0}
    out.update(error_count=0.0, noise_var=0.0)
    detail: dict[str, Any] = {}
    for budget, p in ((DRIFT, drift), (HEALTH, health)):
        if p is None:
            continue
        w = max(windows.get(budget, 1), 1)
        detail[budget] = {
            "groups": p.groups,
            "informative": p.informative,
            "devices": p.devices,
            "windows": w,
            "active": p.active / w,
            "bin_var": dict(p.bin_var),
            "fraction_var": dict(p.fraction_var),
        }
    if drift is not None and drift.informative:
        a = drift.active / max(windows.get(DRIFT, 1), 1)
        for name, dist in drift.distributions.items():
            if name.startswith(FEATURE):
                out["features"][name[len(FEATURE) :]] = [float(x) * a for x in dist]
        if "output" in drift.distributions:
            # The layout's last output bin holds failed rows; the output distribution is the others'.
            out["outputs"] = [float(x) * a for x in drift.distributions["output"][:-1]]
        out["inference_count"] = a
    if health is not None and health.informative:
        a = health.active / max(windows.get(HEALTH, 1), 1)
        if "latency" in health.distributions:
            out["latency"] = [float(x) * a for x in health.distributions["latency"]]
            out["noise_var"] = health.bin_var["latency"] * a * a
        out["inference_count"] = a
        out["error_count"] = health.fractions.get("error_fraction", 0.0) * a
    out["rounds"] = detail
    return out


def update_round_rollups(now: datetime | None = None, settle_seconds: int = 10) -> dict[str, int]:
    """Fold rounds finished since the mark into their windows' rollups; mark and rollups commit together."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settle_seconds)
    width = rollup_seconds()
    out = {"rounds": 0, "rollups": 0, "unchanged": 0, "left_out": 0, "quarantined": 0}
    with transaction.atomic():
        mark, _ = RollupMark.objects.select_for_update().get_or_create(
            name="rounds", defaults={"received_before": EPOCH}
        )
        if cutoff <= mark.received_before:
            return out
        finished = AggRound.objects.filter(
            phase__in=(DONE, FAILED), finished_at__gt=mark.received_before, finished_at__lte=cutoff
        ).values_list("version_id", "window_start")
        keys: set[tuple[int, datetime]] = set()
        for version_id, ws in finished:
            keys.add((version_id, bucket_of(ws, width)))
            out["rounds"] += 1
        for version_id, b in sorted(keys):
            try:
                with transaction.atomic():
                    changed, left_out = _window(version_id, b, width)
                out["rollups" if changed else "unchanged"] += 1
                out["left_out"] += left_out
            except Exception as e:
                out["quarantined"] += 1
                quarantine.record(
                    Quarantine.Kind.ROLLUP,
                    f"{version_id}/{ALL}/{b.isoformat()}/rounds",
                    f"the round results of this window could not be read: {quarantine.describe(e)}",
                    version_id,
                    now,
                )
        mark.received_before = cutoff
        mark.save()
    return out


def _window(version_id: int, b: datetime, width: int) -> tuple[bool, int]:
    """Recompute one version-window from all its finished rounds: (rollup changed, rounds left out)."""
    rounds = list(
        AggRound.objects.filter(
            version_id=version_id,
            window_start__gte=b,
            window_start__lt=b + timedelta(seconds=width),
            phase__in=(DONE, FAILED),
        ).order_by("window_start", "budget", "group")
    )
    used: dict[str, list[AggRound]] = {DRIFT: [], HEALTH: []}
    reasons: Counter[str] = Counter()
    void = failed = 0
    for r in rounds:
        if r.phase == FAILED:
            failed += 1
            reasons[(r.reason or "failed")[:REASON_CHARS]] += 1
        elif r.void or r.result is None:
            void += 1
            reasons[(r.reason or "void")[:REASON_CHARS]] += 1
        elif r.budget in used:
            used[r.budget].append(r)
    if not used[DRIFT] and not used[HEALTH]:
        return False, void + failed  # nothing usable: the window keeps what reports gave it
    pooled = {budget: pool([group_sum(r) for r in rs]) if rs else None for budget, rs in used.items()}
    windows = {budget: len({r.window_start for r in rs}) for budget, rs in used.items()}
    new = figures(pooled[DRIFT], pooled[HEALTH], windows)
    all_used = used[DRIFT] + used[HEALTH]
    per_window: Counter[tuple[str, datetime]] = Counter((r.budget, r.window_start) for r in all_used)
    new["rounds"]["left_out"] = {"void": void, "failed": failed, "reasons": dict(sorted(reasons.items()))}
    fields = dict(
        new,
        window_seconds=width,
        n_reports=0,
        n_devices=_devices(all_used),
        n_groups=max(per_window.values()),
        source=Rollup.Source.ROUNDS,
    )
    roll = Rollup.objects.select_for_update().filter(version_id=version_id, cohort=ALL, window_start=b).first()
    if roll is not None and all(getattr(roll, k) == v for k, v in fields.items()):
        return False, void + failed
    roll = roll or Rollup(version_id=version_id, cohort=ALL, window_start=b)
    for k, v in fields.items():
        setattr(roll, k, v)
    roll.drift_stale = True
    roll.save()
    return True, void + failed


def _devices(rounds: list[AggRound]) -> int:
    """Distinct devices among the rounds' survivors (a device is in one group per budget and window).

    From the operational member rows; without them, the largest window's summed survivors."""
    survivors = {r.id: set(r.u3) for r in rounds}
    seen = {
        device
        for rid, index, device in RoundMember.objects.filter(round_id__in=survivors).values_list(
            "round_id", "index", "device_id"
        )
        if index in survivors[rid]
    }
    if seen:
        return len(seen)
    per: Counter[tuple[str, datetime]] = Counter()
    for r in rounds:
        per[(r.budget, r.window_start)] += len(r.u3)
    return max(per.values(), default=0)
