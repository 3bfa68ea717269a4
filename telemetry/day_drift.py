"""The drift job's day test on round rollups: each feature's mean over the last day of drift rounds
against the reference (``telemetry.mean_shift``), next to the window's PSI.

PSI on one window's median distribution sees changes of shape but, at a device-level budget, only
large ones: a window's noise is that of one round. The privacy page promises what a *day* of rounds
finds (``telemetry.detectability``: a 0.38σ shift at 1,000 devices and ε_drift = 4); this is the
test that promise is computed for, run on the version's finished drift rounds of the 24 hours up to
the window's end. Reads ``AggRound`` rows only (one per group and window), once per version and
window in a job run.
"""

from __future__ import annotations

import math
from datetime import timedelta
from fractions import Fraction

import numpy as np

from telemetry import mean_shift
from telemetry.group_sums import GroupSum
from telemetry.models import AggRound, Rollup

DAY = timedelta(days=1)
MIN_SHIFT_SIGMA = 0.05  # a day's shift below this many reference σ is no drift, however sure


def day_windows(version_id: int, end) -> list[list[GroupSum]]:
    """The version's finished, non-void drift-round sums of the day before ``end``, per window."""
    from telemetry.rounds import layout_from_json

    rows = (
        AggRound.objects.filter(
            version_id=version_id,
            budget="drift",
            phase=AggRound.Phase.DONE,
            void=False,
            window_start__gte=end - DAY,
            window_start__lt=end,
        )
        .order_by("window_start")
        .values_list("window_start", "result", "u3", "layout", "noise_sigma2")
    )
    windows: dict = {}
    for start, result, u3, layout, sigma2 in rows.iterator(chunk_size=2000):
        if result is None:
            continue
        g = GroupSum(layout_from_json(layout), np.asarray(result, dtype=np.int64), len(u3), float(Fraction(sigma2)))
        windows.setdefault(start, []).append(g)
    return list(windows.values())


def reference_var(scores: np.ndarray, counts: list[float], bin_var: float | None, n: float | None) -> float:
    """Variance of the reference's mean score: from its per-bin noise (learned from rounds) or its
    sample size (learned from reports or uploaded data: scores have unit variance); 0 when it
    states neither."""
    if bin_var:
        d = scores - mean_shift.reference_mean(scores, counts)
        return float(np.dot(d, d) * bin_var)
    return 1.0 / n if n and n > 0 else 0.0


def tests_for(profile: dict, roll: Rollup) -> dict[str, mean_shift.MeanShift]:
    """Feature name → the day's test ending at ``roll``'s window end (features with no informative
    drift round that day, or no usable reference histogram, are left out)."""
    end = roll.window_start + timedelta(seconds=roll.window_seconds)
    windows = day_windows(roll.version_id, end)
    if not windows:
        return {}
    bin_vars = profile.get("bin_var") or {}
    out = {}
    for f in profile.get("features", []):
        block = f"feature:{f['name']}"
        try:
            scores = mean_shift.normal_scores(f["counts"])
            mu = mean_shift.reference_mean(scores, f["counts"])
        except (KeyError, ValueError):
            continue
        sizes = {b.name: b.size for b in windows[0][0].layout.blocks}
        if block not in sizes:
            continue  # a feature the rounds do not carry (the reference changed since they were formed)
        if scores.size != sizes[block]:
            raise ValueError(f"{f['name']}: the reference has {scores.size} bins, the rounds {sizes[block]}")
        ref_var = reference_var(scores, f["counts"], bin_vars.get(block), profile.get("n"))
        result = mean_shift.day_test(windows, block, scores, mu, ref_var, min_shift=MIN_SHIFT_SIGMA)
        if result is not None and math.isfinite(result.shift):
            out[f["name"]] = result
    return out
