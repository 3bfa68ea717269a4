"""The day's mean-shift test of one input feature on secure-aggregation drift rounds (pure, no Django).

This is the statistic the privacy page's "smallest shift found within a day" is computed for
(``telemetry.detectability.drift_statistic_sd``), run by the drift job on the rounds themselves:

- per group and round, the *centred* mean score ``T = Σ (c_i − μ_ref) h_i / (M · s)``: h the
  group's noisy feature histogram sum, c each bin's normal score under the reference (Φ⁻¹ of the
  reference's mid-bin cumulative share, within ±4), μ_ref the reference's mean score, M the block's
  per-device mass and s the round's survivors (public). Scores, not bin centres: a feature's end bins
  reach to its data's extremes (±1000 for the default edges), and a centre there would let the
  noise of one end bin swamp the statistic; scores put the shift in reference standard deviations
  (exactly the privacy page's units for a normal feature) whatever the edges. Dividing by the known s, not by the
  sum's own noisy mass, keeps T a sum of Gaussians under no drift — a ratio of two noisy figures is
  heavy-tailed when the noise per bin is of the order of a group's mass — and centring on μ_ref
  makes E[T] = 0 under no drift however many of the survivors were idle (idle devices add zeros; a
  real shift δ shows as δ · active/survivors, which costs power, never false alarms);
- per round window, the median of its groups' T (one group, the reach of one compromised device,
  cannot move it alone), with variance ``median_variance_factor(G)`` × the groups' noise variance
  Σ (c_i − μ_ref)² σ²_sum / (M s)² — known from the rounds' public parameters, nothing a device
  declares — or the groups' observed spread, if larger (devices that differ more than sampling
  says: still no false alarm);
- the day's statistic is the mean over its windows, tested two-sided at ``alpha`` per feature-day
  against that variance plus the reference mean's own.

Regrouping differs per window (groups are drawn afresh), so windows are combined by their medians,
never by pooling "group g" across windows: that would let one device spoil several pooled groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from telemetry.detectability import DRIFT_ALPHA, median_variance_factor
from telemetry.group_sums import GroupSum

MIN_SPREAD_DF = 10  # group statistics beyond their windows' count before their spread is trusted


@dataclass(frozen=True)
class MeanShift:
    shift: float  # the day's mean of window medians: mean score minus the reference's (reference σ)
    sd: float  # its standard deviation under no drift
    z: float
    level: float  # |z| above this is drift (two-sided, alpha per feature-day)
    min_shift: float  # and |shift| above this (a practical floor: an exact sum's tiny shift is no drift)
    windows: int  # round windows with an informative group
    groups: int  # informative group sums read
    devices: int  # survivors summed over them

    @property
    def drifted(self) -> bool:
        return abs(self.z) > self.level and abs(self.shift) > self.min_shift


SCORE_CLIP = 4.0


def _shares(counts: Sequence[float]) -> np.ndarray:
    q = np.clip(np.asarray(counts), 0.0, None)
    total = q.sum()
    if not total > 0:
        raise ValueError("the reference histogram is empty")
    return q / total


def normal_scores(counts: Sequence[float]) -> np.ndarray:
    """Each bin's normal score under the reference histogram: Φ⁻¹ of its mid-bin cumulative share,
    clipped to ±SCORE_CLIP (a bin the reference never saw gets its neighbour's cumulative point)."""
    q = _shares(counts)
    mid = np.cumsum(q) - q / 2
    # the cumulative sum can pass 1 by a rounding step (Φ⁻¹ of it is NaN); Φ⁻¹(0) = −∞ and Φ⁻¹(1) = ∞ clip
    # like any far tail
    return np.clip(stats.norm.ppf(np.minimum(mid, 1.0)), -SCORE_CLIP, SCORE_CLIP)


def reference_mean(scores: Sequence[float], counts: Sequence[float]) -> float:
    """The reference's mean score (≈ 0 for its own normal scores; not exactly, by the binning)."""
    return float(np.dot(scores, _shares(counts)))


def group_statistic(g: GroupSum, block: str, c: np.ndarray, mu_ref: float) -> tuple[float, float]:
    """(T, its noise variance) of one group for one histogram block (see the module doc)."""
    b = g.layout.block(block)
    if c.shape != (b.size,):
        raise ValueError(f"{block}: {c.size} bin scores for {b.size} bins")
    if g.survivors < 1:
        raise ValueError("a group without survivors has no statistic")
    h = g.blocks()[block]
    d = c - mu_ref
    unit = float(b.scale * g.survivors)
    return float(np.dot(d, h) / unit), float(np.dot(d, d) * g.noise_var / unit**2)


def day_test(
    windows: Sequence[Sequence[GroupSum]],
    block: str,
    scores: Sequence[float],
    mu_ref: float,
    reference_var: float = 0.0,
    alpha: float = DRIFT_ALPHA,
    min_shift: float = 0.0,
) -> MeanShift | None:
    """The day's test over ``windows`` (each: the group sums of one drift-round window), or None
    when no window has an informative group (nothing to judge: not "no drift")."""
    c = np.asarray(scores)
    medians: list[float] = []
    variances: list[float] = []
    residuals: list[float] = []
    df = groups = devices = 0
    noise_vars: list[tuple[int, float]] = []
    for sums in windows:
        live = [g for g in sums if not g.is_idle()]
        if not live:
            continue
        pairs = [group_statistic(g, block, c, mu_ref) for g in live]
        ts, vs = [t for t, _ in pairs], [v for _, v in pairs]
        medians.append(float(np.median(ts)))
        noise_vars.append((len(live), float(np.mean(vs))))
        residuals.extend(float(t - np.mean(ts)) for t in ts)
        df += len(live) - 1
        groups += len(live)
        devices += sum(g.survivors for g in live)
    if not medians:
        return None
    spread = float(np.dot(residuals, residuals) / df) if df >= MIN_SPREAD_DF else 0.0
    for n_live, noise in noise_vars:
        variances.append(median_variance_factor(n_live) * max(noise, spread))
    w = len(medians)
    shift = float(np.mean(medians))
    var = float(np.sum(variances)) / w**2 + max(reference_var, 0.0)
    sd = math.sqrt(var)
    level = float(stats.norm.isf(alpha / 2))
    z = shift / sd if sd > 0 else (0.0 if shift == 0 else math.copysign(math.inf, shift))
    return MeanShift(
        shift=shift, sd=sd, z=z, level=level, min_shift=min_shift, windows=w, groups=groups, devices=devices
    )
