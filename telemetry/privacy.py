"""Differential-privacy arithmetic for window reports (pure: no Django, no database).

The protected unit is **one inference** inside a device-window report (event-level DP), and every
report spends its whole epsilon; the server composes those spends per device and day. Why not the
whole device-window as the unit: a window holds hundreds of inferences, so its histogram's
sensitivity is hundreds of counts and the noise would drown every fleet below ~10^7 devices (see
docs/privacy.md for the numbers). What this buys and what it does not is written there too.

Neighbouring reports differ by one inference (one input row). The agent encodes a row so that it adds
exactly one unit of mass to each part of the report: 1 to ``inference_count``, 1 to one latency bin,
one unit to the output histogram *or* 1 to ``error_count`` (a failed inference has no output), and one
unit to each feature histogram, a row's several values (50 scores, a [4, 5] output, a whole input)
sharing their unit equally (agent/aggregate.py). So for a layout with F feature histograms the whole
report vector has L1 sensitivity ``F + 3`` and L2 sensitivity ``sqrt(F + 3)``, whatever the model's
shapes; ``report_sensitivity(layout)`` is that derivation, the same function as the agent's
``agent.privacy.report_sensitivity`` (tests pin the two on many layouts and measure it on real models).
The agent adds noise of one scale to every coordinate; the server uses the same formulas to know
how much noise a sum of reports carries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

MECHANISMS = ("laplace", "gaussian")
GAUSSIAN_DELTA = 1e-5


# One inference moves each part of a report by exactly this much L1 mass (agent.privacy.ROW_MASS).
ROW_MASS = 1.0


def report_parts(layout: Mapping[str, Any]) -> int:
    """Parts one inference touches: inference_count, latency, output-or-error, one per feature."""
    return 3 + len(layout.get("features") or ())


def report_sensitivity(layout: Mapping[str, Any]) -> tuple[float, float]:
    """(L1, L2) change of one report's whole vector when one inference is added or removed.

    ``layout`` is a version's telemetry layout as ``telemetry.profiles.expected_bins`` gives it (only
    ``features`` matters: the encoding makes outputs of any size one part). Disjoint parts of mass
    ``ROW_MASS`` each: L1 = parts·mass, L2 = sqrt(parts)·mass (tight when each lands in one bin).
    """
    parts = report_parts(layout)
    return parts * ROW_MASS, math.sqrt(parts) * ROW_MASS


def l1_sensitivity(layout: Mapping[str, Any]) -> float:
    """L1 change of one report when one inference is added or removed (see ``report_sensitivity``)."""
    return report_sensitivity(layout)[0]


def l2_sensitivity(layout: Mapping[str, Any]) -> float:
    """L2 change of the same."""
    return report_sensitivity(layout)[1]


def layout_of_report(features: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    """The layout a stored report was made with, from its feature names (ingest checked them against
    the version's ``expected_bins``, so this is the version's layout at the time of the report)."""
    return {"features": list(features)}


def laplace_scale(epsilon: float, sensitivity: float) -> float:
    """Laplace scale b = Δ1/ε: the classic ε-DP calibration."""
    if epsilon <= 0:
        raise ValueError("epsilon must be positive")
    return sensitivity / epsilon


def gaussian_sigma(epsilon: float, sensitivity: float, delta: float = GAUSSIAN_DELTA) -> float:
    """σ = Δ2·sqrt(2 ln(1.25/δ))/ε: the analytic (ε, δ) calibration valid for ε ≤ 1.

    Kept for ε > 1 as a conservative choice; the manifest names δ with the mechanism.
    """
    if epsilon <= 0:
        raise ValueError("epsilon must be positive")
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def noise_variance(mechanism: str, epsilon: float, layout: Mapping[str, Any], delta: float = GAUSSIAN_DELTA) -> float:
    """Variance of the noise on each count of one report of ``layout`` (Laplace: 2b², Gaussian: σ²)."""
    if mechanism == "laplace":
        return 2.0 * laplace_scale(epsilon, l1_sensitivity(layout)) ** 2
    if mechanism == "gaussian":
        return gaussian_sigma(epsilon, l2_sensitivity(layout), delta) ** 2
    if mechanism == "none":
        return 0.0
    raise ValueError(f"unknown mechanism {mechanism!r}")


def summed_noise_variance(per_report_variances: Iterable[float]) -> float:
    """Independent noises add variances: the noise a rollup bin carries is the sum of its reports'."""
    return float(sum(per_report_variances))


def compose_sequential(epsilons: Iterable[float]) -> float:
    """Basic sequential composition: releases about the same data add their epsilons."""
    return float(sum(epsilons))


def budget_allows(spent: float, epsilon: float, budget: float) -> bool:
    """Whether one more release of ``epsilon`` keeps the day's total within ``budget``.

    A tiny tolerance lets 400 reports of 1.0 fit a budget of 400.0 despite float sums.
    """
    return spent + epsilon <= budget * (1 + 1e-12) + 1e-12


def suppressed(n_devices: int, k: int) -> str | None:
    """Why an aggregate over ``n_devices`` must be hidden, or None when it may be shown."""
    if n_devices < k:
        return f"hidden: {n_devices} reporting device(s), fewer than the minimum of {k}"
    return None


def k_suppress(value: float | None, n_devices: int, k: int) -> tuple[float | None, str | None]:
    """``(value, None)`` when at least ``k`` devices contributed, else ``(None, reason)``."""
    reason = suppressed(n_devices, k)
    return (None, reason) if reason else (value, None)
