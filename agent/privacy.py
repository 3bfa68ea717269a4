"""Local differential privacy: noise on histogram counts before a report leaves the device.

Laplace adds Lap(Δ1/ε) to every count (ε-DP for L1 sensitivity Δ1); Gaussian adds N(0, σ²) with
σ = Δ2·sqrt(2 ln(1.25/δ))/ε ((ε, δ)-DP for L2 sensitivity Δ2, ε ≤ 1). ``report_sensitivity`` derives
Δ1 and Δ2 from a report's layout and from how ``agent.aggregate`` encodes one inference; the server's
``telemetry.privacy.report_sensitivity`` is the same function (the agent cannot import the server),
and a test pins the two on many layouts. docs/privacy.md explains the choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_DELTA = 1e-5

# What one inference (one input row) adds to each part of a report, by construction of
# ``WindowAggregator.record``: exactly this much L1 mass, however many values the row has.
ROW_MASS = 1.0


def report_parts(layout: Mapping[str, Any]) -> int:
    """How many parts of a report one inference touches.

    ``inference_count``; the latency histogram; the output histogram *or* ``error_count`` (a failed
    inference has no output); and one histogram per feature. Each gets exactly ``ROW_MASS``: a row's
    several values (50 scores, a [4, 5] grid, a whole input) share that mass equally.
    """
    return 3 + len(layout.get("features") or ())


def report_sensitivity(layout: Mapping[str, Any]) -> tuple[float, float]:
    """(L1, L2) change of the whole report vector when one inference is added or removed.

    ``layout`` is the manifest's per-model ``telemetry`` block (``features``, ``output``). The parts
    are disjoint coordinates, each moved by L1 mass ``ROW_MASS``, so L1 = parts·mass; a part's L2 is
    at most its L1 (equal when the mass lands in one bin), so L2 = sqrt(parts)·mass.
    """
    parts = report_parts(layout)
    return parts * ROW_MASS, math.sqrt(parts) * ROW_MASS


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
    """``counts`` plus calibrated noise; ``mechanism`` "none" adds none, a non-positive epsilon is refused."""
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
