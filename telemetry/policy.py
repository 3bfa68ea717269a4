"""A model's privacy policy: the one accessor rounds use, saving with refusal, and the page's figures.

``policy_for(model)`` is what round scheduling calls: the model's saved ``PrivacyPolicy`` (or the
``EDGEFLEET_PRIVACY_*`` defaults) for the fleet it has now, as a ``telemetry.detectability.Setting``,
so the figures the privacy page shows and the noise the rounds add come from one object and one
set of formulas. ``save_policy`` refuses what ``telemetry.feasibility`` refuses, with the reason and
the nearest setting that works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import transaction

from agent.encoding import sensitivity
from fleet.models import Device
from ota.models import Model, ModelVersion
from telemetry import detectability as det
from telemetry import feasibility, profiles
from telemetry.accounting import calibrate, combined_epsilon
from telemetry.models import PrivacyPolicy

# Policy fields an operator edits, with their type and the range the form accepts.
FIELDS: dict[str, tuple[type, float, float]] = {
    "epsilon_drift_day": (float, 0.0, math.inf),
    "epsilon_health_day": (float, 0.0, math.inf),
    "delta": (float, 0.0, 1.0),
    "window_seconds": (int, 60, 86_400),
    "group_size": (int, 0, 100_000),
    "drift_rounds_per_day": (int, 1, 288),
    "health_rounds_per_day": (int, 0, 288),
    "soak_rounds": (int, 0, 288),
    "canary_size": (int, 1, 1_000_000),
    "canary_groups": (int, 1, 3),
}
CURVE_EPSILONS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class PolicyError(ValueError):
    """A policy that cannot be saved: ``problems`` says why, ``nearest`` what would work (or None)."""

    def __init__(self, problems: list[tuple[str, str]], nearest: dict[str, Any] | None = None) -> None:
        super().__init__("; ".join(reason for _field, reason in problems))
        self.problems = problems
        self.nearest = nearest


def defaults() -> dict[str, Any]:
    return {
        "epsilon_drift_day": settings.EDGEFLEET_PRIVACY_EPSILON_DRIFT_DAY,
        "epsilon_health_day": settings.EDGEFLEET_PRIVACY_EPSILON_HEALTH_DAY,
        "delta": settings.EDGEFLEET_PRIVACY_DELTA,
        "window_seconds": settings.EDGEFLEET_TELEMETRY_WINDOW,
        "group_size": 0,
        "drift_rounds_per_day": settings.EDGEFLEET_PRIVACY_DRIFT_ROUNDS_PER_DAY,
        "health_rounds_per_day": settings.EDGEFLEET_PRIVACY_HEALTH_ROUNDS_PER_DAY,
        "soak_rounds": settings.EDGEFLEET_PRIVACY_SOAK_ROUNDS,
        "canary_size": settings.EDGEFLEET_PRIVACY_CANARY_SIZE,
        "canary_groups": settings.EDGEFLEET_PRIVACY_CANARY_GROUPS,
    }


def stored_values(model: Model) -> dict[str, Any]:
    """The model's saved values, or the defaults."""
    p = PrivacyPolicy.objects.filter(model=model).first()
    return {k: getattr(p, k) for k in FIELDS} if p else defaults()


def fleet_size(model: Model) -> int:
    """Devices that run a version of this model (what rounds of this model can draw from)."""
    return Device.objects.filter(installed__has_key=model.name, token_revoked_at__isnull=True).count()


def shape(model: Model) -> dict[str, int]:
    """Features, bins and outputs of the model's newest usable version (the rounds' vector layout)."""
    version = model.versions.exclude(status=ModelVersion.Status.REJECTED).order_by("-created_at", "-id").first()
    bins = profiles.expected_bins(version) if version else {"features": [], "output": {"kind": "bins", "edges": [0, 1]}}
    features = bins["features"]
    return {
        "features": max(len(features), 1),
        "bins": max((len(f["edges"]) - 1 for f in features), default=20),
        "output_bins": profiles.output_bin_count(bins["output"]),
        "latency_bins": profiles.latency_bin_count(),
    }


def parse(data: Any, base: dict[str, Any]) -> dict[str, Any]:
    """Form or query values over ``base``; a missing field keeps its value, a malformed one is refused."""
    values, problems = dict(base), []
    for name, (kind, lo, hi) in FIELDS.items():
        raw = data.get(name)
        if raw is None or str(raw).strip() == "":
            continue
        try:
            value = kind(str(raw).strip())
        except ValueError:
            problems.append((name, f"{name.replace('_', ' ')} must be a{'n integer' if kind is int else ' number'}"))
            continue
        if not (lo <= value <= hi) or (kind is float and not math.isfinite(value)):
            problems.append((name, f"{name.replace('_', ' ')} must be between {lo:g} and {hi:g}"))
            continue
        values[name] = value
    if problems:
        raise PolicyError(problems)
    return values


def setting(values: dict[str, Any], fleet: int, dims: dict[str, int]) -> det.Setting:
    canary = values["canary_size"]
    return det.Setting(
        fleet=fleet,
        group_size=values["group_size"],
        window_s=values["window_seconds"],
        epsilon_drift_day=values["epsilon_drift_day"],
        epsilon_health_day=values["epsilon_health_day"],
        delta=values["delta"],
        drift_rounds_per_day=values["drift_rounds_per_day"],
        health_rounds_per_day=values["health_rounds_per_day"],
        soak_rounds=values["soak_rounds"],
        canary=canary,
        canary_group_size=max(canary // values["canary_groups"], 1),
        **dims,
    )


def values_of(s: det.Setting, explicit_group: bool, canary_groups: int) -> dict[str, Any]:
    """A Setting back as policy values (how the nearest working setting is offered to the form)."""
    return {
        "epsilon_drift_day": s.epsilon_drift_day,
        "epsilon_health_day": s.epsilon_health_day,
        "delta": s.delta,
        "window_seconds": s.window_s,
        "group_size": s.group_size if explicit_group else 0,
        "drift_rounds_per_day": s.drift_rounds_per_day,
        "health_rounds_per_day": s.health_rounds_per_day,
        "soak_rounds": s.soak_rounds,
        "canary_size": s.canary,
        "canary_groups": canary_groups,
    }


def policy_for(model: Model) -> det.Setting:
    """The setting rounds of this model use now: its policy over its current fleet and layout."""
    return setting(stored_values(model), fleet_size(model), shape(model))


def check(model: Model, values: dict[str, Any], fleet: int | None = None) -> tuple[det.Setting, feasibility.Verdict]:
    s = setting(values, fleet_size(model) if fleet is None else fleet, shape(model))
    return s, feasibility.check(s, explicit_group=values["group_size"] != 0)


def refusal(values: dict[str, Any], s: det.Setting, verdict: feasibility.Verdict) -> PolicyError:
    """The refusal for ``values``; its nearest keeps an explicit group size only where one can work
    (a fleet below the cohort floor gets the automatic size, 0)."""
    near = verdict.nearest
    explicit = values["group_size"] != 0 and near is not None and det.MIN_GROUP <= near.group_size <= near.fleet
    nearest = values_of(near, explicit, values["canary_groups"]) if near else None
    return PolicyError([(p.field, p.reason) for p in verdict.problems], nearest)


@transaction.atomic
def save_policy(model: Model, data: Any, by: str = "") -> PrivacyPolicy:
    """Store the model's policy, or raise ``PolicyError`` with the reason and the nearest that works."""
    values = parse(data, stored_values(model))
    s, verdict = check(model, values)
    if not verdict.ok:
        raise refusal(values, s, verdict)
    policy, _ = PrivacyPolicy.objects.update_or_create(model=model, defaults={**values, "updated_by": by})
    return policy


@dataclass(frozen=True)
class Guarantee:
    epsilon_drift: float
    epsilon_health: float
    epsilon_combined: float
    delta: float

    @property
    def sentence(self) -> str:
        return (
            f"Each device's telemetry for a day is ({self.epsilon_combined:.2g}, {self.delta:g})-differentially "
            f"private: whatever one device's inputs, outputs, errors and latency were that day, everything "
            f"the server learns from it changes the probability of any conclusion by at most a factor of "
            f"e^{self.epsilon_combined:.2g} ≈ {math.exp(self.epsilon_combined):.3g} (except with probability "
            f"{self.delta:g}). That is ε = {self.epsilon_drift:.2g} for its inputs and outputs and "
            f"ε = {self.epsilon_health:.2g} for its errors and latency, composed by Rényi accounting; the server "
            f"only ever sees sums over at least {settings.EDGEFLEET_MIN_COHORT} devices."
        )


@lru_cache(maxsize=512)
def guarantee(s: det.Setting) -> Guarantee:
    """The day's ε per budget and both composed, for the rounds this setting schedules."""
    charges = {}
    for name, eps, rounds, layout, groups in feasibility._budgets(s):
        if rounds < 1:
            charges[name] = []
            continue
        n = groups[0]
        cal = calibrate(eps, rounds, s.min_survivors(n), sensitivity(layout).l2, layout.length, s.delta)
        charges[name] = [cal.charge] * rounds
    drift, health = charges["epsilon_drift_day"], charges["epsilon_health_day"]
    return Guarantee(
        s.epsilon_drift_day if drift else 0.0,
        s.epsilon_health_day if health else 0.0,
        combined_epsilon(drift, health, s.delta),
        s.delta,
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@lru_cache(maxsize=256)
def figures(s: det.Setting) -> dict[str, Any]:
    """What the privacy page shows for a setting: ``detectability`` figures, the smallest health budget
    that meets the canary goal, and the detectable-shift curve over ε_drift_day."""
    summary = det.summary(s)
    curve = [det.detectable_shift(det._replace(s, epsilon_drift_day=e)) for e in CURVE_EPSILONS]
    curve_hour = [det.detectable_shift(det._replace(s, epsilon_drift_day=e), 3600) for e in CURVE_EPSILONS]
    return {
        "fleet": s.fleet,
        "group_size": s.group_size,
        "groups": s.groups,
        "canary": s.canary,
        "canary_group_size": s.canary_group_size,
        "health_rounds_total": s.health_rounds_total,
        "detect_shift_day_sigma": _finite(summary["detect_shift_day_sigma"]),
        "detect_shift_hour_sigma": _finite(summary["detect_shift_hour_sigma"]),
        "canary_error_rise_1_window": _finite(summary["canary_error_rise_1_window"]),
        "canary_error_rise_3_windows": _finite(summary["canary_error_rise_3_windows"]),
        "smallest_health_budget": _finite(det.smallest_health_budget(s)),
        "curve": {
            "epsilon": list(CURVE_EPSILONS),
            "day": [_finite(v) for v in curve],
            "hour": [_finite(v) for v in curve_hour],
        },
    }


def _sigma(x: float | None) -> str:
    return f"{x:.2f} σ" if x is not None else "beyond reach (more than 4 σ)"


def _rise(x: float | None, base: float = 0.01) -> str:
    if x is None:
        return "no rise at all"
    return f"{100 * x:.1f} percentage points ({100 * base:g} % → {100 * (base + x):.1f} %)"


def texts(f: dict[str, Any]) -> dict[str, str]:
    """The figures in words, the same for the page and its preview."""
    smallest = f["smallest_health_budget"]
    return {
        "shift_day": _sigma(f["detect_shift_day_sigma"]),
        "shift_hour": _sigma(f["detect_shift_hour_sigma"]),
        "canary_1": _rise(f["canary_error_rise_1_window"]),
        "canary_3": _rise(f["canary_error_rise_3_windows"]),
        "smallest_health": f"ε = {smallest:.2f} per device per day" if smallest is not None else "none up to ε = 200",
        "groups": f"{f['groups']} group{'s' if f['groups'] != 1 else ''} of {f['group_size']} devices",
        "canary": f"{f['canary']} devices in groups of {f['canary_group_size']}",
    }
