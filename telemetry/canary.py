"""Canary vs control: is a version worse than the one it replaces, on comparable devices and windows?

Reads raw reports (a campaign's windows are always within retention) so any cohort selector works.
What one report or one device can do to the answer is bounded:

- every row is judged like the rollup job judges it (``trust.RowJudge``); a bad one is quarantined
  and left out, so it can neither fail the evaluation nor turn a gate off with a huge "noise";
- each report's noise is its server assignment's, never a number stored with it;
- install failures count devices (their latest install outcome), not events;
- below the statistical floor (``min_devices`` per side) nothing is computed; below k
  (``EDGEFLEET_MIN_COHORT``) the verdict is computed but its numbers are not returned
  (``regression.hide_small``), so they are neither stored with the campaign nor shown;
- a gate whose computation fails says not-enough-data with the reason (quarantined), the others go on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from fleet.models import Device, DeviceEvent
from ota.models import ModelVersion
from telemetry import canary_rounds, quarantine, regression, services, trust
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.models import Quarantine, Report, Rollup
from telemetry.profiles import expected_bins

DEFAULT_THRESHOLDS = {
    "error_rate": 0.02,
    "latency_p95": 1.25,
    "latency_p50": 1.25,
    "install_failure_rate": 0.05,
    "drift": 0.25,
    "min_devices": 20,
    "latency_min_delta_ms": 5.0,
}
ONE_SIDED = regression.ONE_SIDED


class _Side:
    """Summed telemetry of one side (canary or control) over a time range."""

    def __init__(self) -> None:
        self.devices: set[uuid.UUID] = set()
        self.inferences = self.errors = self.noise = 0.0
        self.latency = np.zeros(len(LATENCY_EDGES_MS) - 1)
        self.features: dict[str, np.ndarray] = {}
        self.outputs: np.ndarray | None = None


def _side(
    version_id: int,
    since: datetime,
    until: datetime | None,
    device_ids: set | None,
    judge: trust.RowJudge,
    bad: list[tuple[uuid.UUID, int, str]],
) -> _Side:
    qs = Report.objects.filter(version_id=version_id, window_start__gte=since, quarantined=False)
    if until is not None:
        qs = qs.filter(window_start__lt=until)
    s = _Side()
    rows = qs.values_list(
        "id", "device_id", "window_start", "window_end", "inference_count", "error_count", "latency", "outputs",
        "features", "mechanism", "epsilon",
    )  # fmt: skip
    for rid, dev, ws, we, inf, err, lat, out, feats, mech, eps in rows.iterator(chunk_size=5000):
        if device_ids is not None and dev not in device_ids:
            continue
        try:
            problem, noise = judge.judge(version_id, (we - ws).total_seconds(), inf, err, lat, out, feats, mech, eps)
        except Exception as e:
            problem, noise = f"unreadable row ({quarantine.describe(e)})", 0.0
        if problem:
            bad.append((rid, version_id, problem))
            continue
        s.devices.add(dev)
        s.inferences += inf
        s.errors += err
        s.noise += noise
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
    profile = services.ensure_reference(version)
    if profile is None or not side.devices:
        return None, None, "no reference profile yet" if profile is None else "no reports"
    roll = Rollup(
        features={k: v.tolist() for k, v in side.features.items()},
        outputs=[] if side.outputs is None else side.outputs.tolist(),
        noise_var=side.noise,
    )
    results = services.drift_of(profile, expected_bins(version), roll)
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
    gates: Collection[str] | None = None,
    rounds: bool = True,
) -> dict[str, dict]:
    """Is ``version_id`` (canary) worse than ``control_version_id`` on comparable devices, same windows?

    Keys ``error_rate``, ``latency_p50``, ``latency_p95``, ``install_failure_rate``, ``drift``; each a
    verdict dict (see ``telemetry.regression.Verdict``). n = distinct reporting devices; ``min_devices``
    (threshold key) is the statistical floor, below which a gate computes nothing.

    When both sides have finished health rounds for the windows since ``since``, the health gates
    judge on their group sums (``telemetry.canary_rounds``: no report, no device label is read) and
    n is the devices in the sums; ``gates`` (the campaign's configured gates; None: all) says which
    must be decided there, and whether drift is needed at all; ``rounds=False`` reads reports only.
    """
    t = dict(DEFAULT_THRESHOLDS, **(thresholds or {}))
    floor = int(t["min_devices"])
    k = services.min_cohort()
    on_rounds = None
    rounds_key = f"{version_id}/rounds"
    if rounds:
        try:
            on_rounds = canary_rounds.judge(version_id, control_version_id, since, until, t, k, gates)
        except Exception as e:  # unreadable round rows: say so, and judge on reports as before
            reason = f"round sums unreadable, judged on reports: {quarantine.describe(e)}"
            quarantine.record(Quarantine.Kind.GATE, rounds_key, reason, version_id)
        else:
            Quarantine.objects.filter(kind=Quarantine.Kind.GATE, key=rounds_key).delete()
    if on_rounds is not None:
        return _with_rounds(on_rounds, version_id, control_version_id, since, until, cohort_selector, t, gates)
    device_ids: set | None = None
    if cohort_selector:
        from fleet.selectors import parse, predicate

        pred = predicate(parse(cohort_selector))
        device_ids = {d for d, labels in Device.objects.values_list("id", "labels") if pred(labels or {})}
    judge = trust.RowJudge()
    bad: list[tuple[uuid.UUID, int, str]] = []
    can = _side(version_id, since, until, device_ids, judge, bad)
    con = _side(control_version_id, since, until, device_ids, judge, bad)
    quarantine.reports(bad)
    nc, nk = len(can.devices), len(con.devices)
    too_few = regression.Verdict(
        regression.NOT_ENOUGH,
        n_canary=nc,
        n_control=nk,
        detail=f"{nc} reporting canary device(s) and {nk} control device(s): a gate needs {floor} on each side "
        "before anything is computed",
    )

    def error_rate() -> dict:
        return regression.error_rate_verdict(
            can.errors, can.inferences, con.errors, con.inferences, nc, nk, float(t["error_rate"]), floor,
            canary_noise_var=can.noise, control_noise_var=con.noise,
        ).as_dict()  # fmt: skip

    def latency(key: str, q: float) -> Callable[[], dict]:
        return lambda: regression.latency_verdict(
            LATENCY_EDGES_MS, can.latency, con.latency, q, nc, nk, float(t[key]), floor, can.noise, con.noise,
            float(t["latency_min_delta_ms"]),
        ).as_dict()  # fmt: skip

    gates: dict[str, Callable[[], dict]] = {
        "error_rate": error_rate,
        "latency_p50": latency("latency_p50", 0.5),
        "latency_p95": latency("latency_p95", 0.95),
        "install_failure_rate": lambda: _install_verdict(version_id, control_version_id, since, until, device_ids, t),
        "drift": lambda: _drift_verdict(version_id, control_version_id, can, con, float(t["drift"]), floor),
    }
    out: dict[str, dict] = {}
    failed = False
    for name, compute in gates.items():
        needs_both = name not in ONE_SIDED and name != "drift"
        if name != "install_failure_rate" and (nc < floor or (needs_both and nk < floor)):
            out[name] = {**too_few.as_dict(), "threshold": float(t[name])}
            continue
        try:
            verdict = compute()
        except Exception as e:
            failed = True
            reason = f"could not be computed: {quarantine.describe(e)}"
            quarantine.record(Quarantine.Kind.GATE, f"{version_id}/{name}", reason, version_id)
            verdict = regression.Verdict(
                regression.NOT_ENOUGH, n_canary=nc, n_control=nk, threshold=float(t[name]), detail=reason
            ).as_dict()
        out[name] = regression.hide_small(verdict, k, one_sided=name in ONE_SIDED)
    if not failed:
        Quarantine.objects.filter(kind=Quarantine.Kind.GATE, key__startswith=f"{version_id}/").exclude(
            key=rounds_key
        ).delete()
    return out


def _with_rounds(
    health: dict[str, dict],
    version_id: int,
    control_id: int,
    since: datetime,
    until: datetime | None,
    cohort_selector: str | None,
    t: dict,
    gates: Collection[str] | None,
) -> dict[str, dict]:
    """The health gates from round sums, plus install failures (the canary version's own install
    events: only devices this campaign targeted install it, so no cohort labels are read) and, when
    the campaign gates on it, drift (still from reports: drift-round sums are a later step)."""
    k = services.min_cohort()
    out = dict(health)
    try:
        install = _install_verdict(version_id, control_id, since, until, None, t)
        Quarantine.objects.filter(kind=Quarantine.Kind.GATE, key=f"{version_id}/install_failure_rate").delete()
    except Exception as e:
        reason = f"could not be computed: {quarantine.describe(e)}"
        quarantine.record(Quarantine.Kind.GATE, f"{version_id}/install_failure_rate", reason, version_id)
        install = regression.Verdict(regression.NOT_ENOUGH, threshold=float(t["install_failure_rate"]), detail=reason)
        install = install.as_dict()
    out["install_failure_rate"] = regression.hide_small(install, k, one_sided=True)
    if gates is None or "drift" in gates:
        reports = canary_vs_control(version_id, control_id, since, until, cohort_selector, t, rounds=False)
        out["drift"] = reports["drift"]
    return out


def _install_rate(
    version_id: int,
    since: datetime,
    until: datetime | None,
    device_ids: set | None,
    commit_seconds: float | None = None,
) -> tuple:
    """``(devices whose latest install of the version failed, devices with an install outcome, their ids)``.

    Per device, not per event: one device sending a thousand failure events is still one device.
    With ``commit_seconds`` (a campaign's probation, rollout/progress.py) success is a *commit*: a
    device that fell back, or installed and has not reported ``committed`` within that long, failed.
    """
    from django.utils import timezone

    v = ModelVersion.objects.select_related("model").get(pk=version_id)
    kinds = ["installed", "install_failed", "verify_failed"]
    if commit_seconds is not None:
        kinds += ["committed", "fell_back"]
    qs = DeviceEvent.objects.filter(model_name=v.model.name, version_label=v.label, at__gte=since, kind__in=kinds)
    if until is not None:
        qs = qs.filter(at__lt=until)
    latest: dict[Any, tuple[str, datetime]] = {}
    for dev, kind, at in qs.order_by("at", "received_at").values_list("device_id", "kind", "at").iterator():
        if device_ids is not None and dev not in device_ids:
            continue
        latest[dev] = (kind, at)
    if commit_seconds is None:
        fails = sum(kind != "installed" for kind, _ in latest.values())
    else:
        deadline = (until or timezone.now()) - timedelta(seconds=commit_seconds)
        fails = sum(
            kind in ("install_failed", "verify_failed", "fell_back") or (kind == "installed" and at < deadline)
            for kind, at in latest.values()
        )
    return fails, len(latest), set(latest)


def _install_verdict(
    version_id: int, control_id: int, since: datetime, until: datetime | None, ids: set | None, t: dict
) -> dict:
    floor = int(t["min_devices"])
    commit = t.get("commit_seconds")
    commit = float(commit) if isinstance(commit, int | float) else None
    fails, attempts, devices = _install_rate(version_id, since, until, ids, commit)
    v = regression.rate_verdict(fails, attempts, len(devices), float(t["install_failure_rate"]), floor)
    if v.verdict != regression.NOT_ENOUGH:
        cf, ca, cdev = _install_rate(control_id, since, until, ids)
        v.n_control = len(cdev)
        v.control = cf / ca if ca and len(cdev) >= floor else None
    return v.as_dict()


def _drift_verdict(version_id: int, control_id: int, can: _Side, con: _Side, limit: float, floor: int) -> dict:
    nc, nk = len(can.devices), len(con.devices)
    v = regression.Verdict(regression.NOT_ENOUGH, n_canary=nc, n_control=nk, threshold=limit)
    v.canary, level, why = _max_drift(version_id, can)
    if v.canary is None:
        v.detail = why
        return v.as_dict()
    # The control's drift counts only from the floor on (below it, it is noise and may not be computed).
    v.control = _max_drift(control_id, con)[0] if nk >= floor else None
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
