"""Local differential privacy: noise on histogram counts before a report leaves the device.

Laplace adds Lap(Δ1/ε) to every count (ε-DP for L1 sensitivity Δ1); Gaussian adds N(0, σ²) with
σ = Δ2·sqrt(2 ln(1.25/δ))/ε ((ε, δ)-DP for L2 sensitivity Δ2, ε ≤ 1). The sensitivities the agent
uses for one report are derived in ``report_sensitivity`` and explained in docs/agent.md.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_DELTA = 1e-5


def report_sensitivity(n_features: int) -> tuple[float, float]:
    """(L1, L2) sensitivity of one report to one inference (one input row) within the device-window.

    One row adds 1 to: inference_count, one latency bin, one output bin *or* error_count, and one
    bin of each feature histogram — ``3 + n_features`` counts, each by 1.
    """
    k = 3 + n_features
    return float(k), math.sqrt(k)


def laplace_scale(sensitivity_l1: float, epsilon: float) -> float:
    return sensitivity_l1 / epsilon


def gaussian_sigma(sensitivity_l2: float, epsilon: float, delta: float = DEFAULT_DELTA) -> float:
    return sensitivity_l2 * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def add_noise(
    counts: np.ndarray,
    mechanism: str,
    epsilon: float,
    sensitivity: float,
    rng: np.random.Generator,
    delta: float = DEFAULT_DELTA,
) -> np.ndarray:
    """``counts`` plus calibrated noise; ``mechanism`` "none" (or epsilon <= 0 meaning off) adds none."""
    c = np.asarray(counts, dtype=np.float64)
    if mechanism == "none":
        return c.copy()
    if epsilon <= 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if mechanism == "laplace":
        return c + rng.laplace(0.0, laplace_scale(sensitivity, epsilon), size=c.shape)
    if mechanism == "gaussian":
        return c + rng.normal(0.0, gaussian_sigma(sensitivity, epsilon, delta), size=c.shape)
    raise ValueError(f"unknown DP mechanism {mechanism!r}")
