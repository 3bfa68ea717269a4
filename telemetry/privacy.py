"""Differential-privacy arithmetic for window reports (pure: no Django, no database).

The protected unit is **one inference** inside a device-window report (event-level DP), and every
report spends its whole epsilon; the server composes those spends per device and day. Why not the
whole device-window as the unit: a window holds hundreds of inferences, so its histogram's
sensitivity is hundreds of counts and the noise would drown every fleet below ~10^7 devices (see
docs/privacy.md for the numbers). What this buys and what it does not is written there too.

Neighbouring reports differ by one inference. One inference adds 1 to ``inference_count``, 1 to one
latency bin, 1 to one output bin *or* to ``error_count`` (a failed inference has no output), and 1 to
one bin of each feature histogram, so the whole report vector has L1 sensitivity ``n_features + 3``
(L2: its square root). This is the agent's ``agent.privacy.report_sensitivity``; tests pin the two
together.
The agent adds noise of one scale to every coordinate; the server uses the same formulas to know
how much noise a sum of reports carries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

MECHANISMS = ("laplace", "gaussian")
GAUSSIAN_DELTA = 1e-5


def l1_sensitivity(n_features: int) -> float:
    """L1 change of one report when one inference is added or removed (see module docstring)."""
    return float(n_features + 3)


def l2_sensitivity(n_features: int) -> float:
    """L2 change of the same: every coordinate moves by at most 1, ``n_features + 3`` of them."""
    return math.sqrt(n_features + 3)


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


def noise_variance(mechanism: str, epsilon: float, n_features: int, delta: float = GAUSSIAN_DELTA) -> float:
    """Variance of the noise on each count of one report (Laplace: 2b², Gaussian: σ²)."""
    if mechanism == "laplace":
        return 2.0 * laplace_scale(epsilon, l1_sensitivity(n_features)) ** 2
    if mechanism == "gaussian":
        return gaussian_sigma(epsilon, l2_sensitivity(n_features), delta) ** 2
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
