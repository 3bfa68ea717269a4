"""Canary vs control on health-round sums (pure: numpy/scipy, no Django).

The gate job's statistic when both sides have finished health rounds for the windows it evaluates
(``telemetry.canary_rounds`` reads the rows). Each side is a list of windows, each window the
``GroupSum`` of every group round of that window with a result. Per window the side's figure is the
*median across its informative groups* (``telemetry.group_sums``); the windows' figures are then
averaged. So one group — the most one compromised device reaches in a window — cannot move a side
beyond its honest groups, in any window, and a device that stays spoiled for several windows is
still one group of each (a median over groups pooled across windows would let it spoil several).

Variance of a side's error figure: Σ_w f(G_w)·τ²_w / W², where f is the median's variance factor
(``detectability.median_variance_factor``) and τ²_w one group mean's variance: the noise variance
known from the round's public parameters (survivors × σ²_dev, never anything a device declares),
or the sampling spread seen across the side's groups when that is larger (devices differ more than
noise says). The spread is a robust one (MAD of each group's distance to its window's median), so
a spoiled group can neither shrink nor blow it up. With one group per window and equal groups this
is ``telemetry.detectability.canary_sd``'s formula (``tests/test_canary_sums.py`` pins it), so the
privacy page's promised power is this gate's.

A verdict fails like the per-report gate (effect above ``max_increase`` AND one-sided p < α). It
*passes* only when the sums could have caught the canary goal (``GOAL_RISE``, 1 % → 10 %) with 95 %
power; before that it is not-enough-data with the smallest rise it could catch now, and the gate job
judges on per-device reports instead (``telemetry.canary``), so a noise-drowned sum never passes a
wave.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from telemetry import regression
from telemetry.detectability import GATE_ALPHA, POWER, median_variance_factor
from telemetry.group_sums import GroupSum

ERRORS, LATENCY = "error_fraction", "latency"
# The canary goal the health budget is sized for (docs/privacy.md; detectability.smallest_health_budget):
# a rise of 1 % → 10 % must be caught; a sum that could not catch it cannot pass a wave.
GOAL_RISE = 0.10 - 0.01
MAD_TO_SD = 1.4826  # a normal's standard deviation per median absolute deviation
UNRESOLVED = "unresolved"  # detail prefix of a not-enough-data verdict that more windows would settle


@dataclass(frozen=True)
class Side:
    """One side's health figures over the evaluated windows."""

    windows: int  # windows with at least one informative group
    groups: int  # informative group rounds over those windows
    rounds: int  # group rounds with a result (idle ones included)
    devices: int  # devices in the sums: the largest over windows of the survivors summed
    groups_per_window: int  # groups of that largest window
    error: float | None  # mean over windows of the median group error fraction
    error_var: float  # its variance: noise, or the spread across groups when larger
    error_noise_var: float  # its noise variance alone
    latency: np.ndarray | None  # mean over windows of the median group latency distribution
    latency_bin_var: float  # noise variance of one bin of ``latency``

    @property
    def words(self) -> str:
        g = self.groups_per_window
        return f"{self.devices} devices in {g} group{'s' if g != 1 else ''}"


def _robust_spread2(residuals: list[float]) -> float:
    """Squared robust spread of group figures around their window's median (0 when none)."""
    if not residuals:
        return 0.0
    return (MAD_TO_SD * float(np.median(np.abs(residuals)))) ** 2


def side(windows: Sequence[Sequence[GroupSum]], errors: str = ERRORS, latency: str = LATENCY) -> Side:
    """Median across groups per window, mean across windows (see the module's docstring)."""
    per_window: list[tuple[list[GroupSum], int]] = []
    devices = per = rounds = 0
    for sums in windows:
        rounds += len(sums)
        survivors = sum(s.survivors for s in sums)
        if survivors > devices:
            devices, per = survivors, len(sums)
        live = [s for s in sums if not s.is_idle()]
        if live:
            per_window.append((live, survivors))
    if not per_window:
        return Side(0, 0, rounds, devices, per, None, math.inf, math.inf, None, math.inf)
    w = len(per_window)
    medians, noise, residuals = [], [], []
    dists, bin_vars = [], []
    for live, _ in per_window:
        x = np.array([s.fraction(errors) for s in live])
        m = float(np.median(x))
        medians.append(m)
        noise.append(float(np.median([s.fraction_var(errors) for s in live])))
        if len(live) >= 2:
            residuals += [float(v - m) for v in x]
        d = np.median(np.stack([s.distribution(latency) for s in live]), axis=0)
        # the median of distributions need not sum to 1 (all zero when the groups have disjoint bins)
        dists.append(d / d.sum() if d.sum() > 0 else np.full(d.size, 1.0 / d.size))
        bin_vars.append(float(np.median([s.bin_var(latency) for s in live])))
    spread2 = _robust_spread2(residuals)
    factors = np.array([median_variance_factor(len(live)) for live, _ in per_window])
    error_noise = float(np.dot(factors, noise)) / w**2
    error_var = float(np.dot(factors, np.maximum(noise, spread2))) / w**2
    lat_var = float(np.dot(factors, bin_vars)) / w**2
    return Side(
        windows=w,
        groups=sum(len(live) for live, _ in per_window),
        rounds=rounds,
        devices=devices,
        groups_per_window=per,
        error=float(np.mean(medians)),
        error_var=error_var,
        error_noise_var=error_noise,
        latency=np.mean(np.stack(dists), axis=0),  # each window's distribution sums to 1
        latency_bin_var=lat_var,
    )


def smallest_caught(sd: float, max_increase: float, alpha: float = GATE_ALPHA, power: float = POWER) -> float:
    """The smallest rise this gate catches with ``power`` at standard error ``sd`` (detectability's gap)."""
    return max(max_increase, stats.norm.isf(alpha) * sd) + stats.norm.isf(1 - power) * sd


def _too_few(can: Side, con: Side, k: int, threshold: float) -> regression.Verdict | None:
    v = regression.Verdict(regression.NOT_ENOUGH, n_canary=can.devices, n_control=con.devices, threshold=threshold)
    if can.devices < k or con.devices < k:
        v.detail = f"canary {can.words}, control {con.words}: round sums need {k} devices on each side"
        return v
    if can.windows == 0 or con.windows == 0:
        # unreadable rather than idle when the noise is of the order of a group's mass: let reports judge
        v.detail = (
            f"{UNRESOLVED}: canary {can.words}, control {con.words}: no group on a side was active in these windows"
        )
        return v
    return None


def error_verdict(
    can: Side, con: Side, max_increase: float, k: int, alpha: float = GATE_ALPHA, goal: float = GOAL_RISE
) -> regression.Verdict:
    """Fail when the canary's error figure is above the control's by more than ``max_increase`` AND
    significantly (one-sided z, p < ``alpha``); pass only when a rise of ``goal`` would have been
    caught; otherwise not-enough-data (detail starts with ``UNRESOLVED``)."""
    v = _too_few(can, con, k, max_increase)
    if v is not None:
        return v
    assert can.error is not None and con.error is not None
    v = regression.Verdict(regression.NOT_ENOUGH, n_canary=can.devices, n_control=con.devices, threshold=max_increase)
    v.canary, v.control = can.error, con.error
    v.effect = can.error - con.error
    sd = math.sqrt(can.error_var + con.error_var)
    v.statistic = v.effect / sd if sd > 0 else (math.inf if v.effect > 0 else 0.0)
    v.p_value = float(stats.norm.sf(v.statistic))
    caught = smallest_caught(sd, max_increase, alpha)
    sides = f"canary {can.words}, control {con.words}, {min(can.windows, con.windows)} window(s)"
    figures = f"error rate {v.canary:.4f} vs {v.control:.4f} (+{v.effect:.4f}, z={v.statistic:.2f}, p={v.p_value:.3g})"
    if v.effect > max_increase and v.p_value < alpha:
        v.verdict = regression.FAIL
    elif caught <= goal:
        v.verdict = regression.PASS
    else:
        v.detail = (
            f"{UNRESOLVED}: {figures}; these round sums catch a rise of +{caught:.3f} at best, "
            f"not yet +{goal:.2f}; {sides}"
        )
        return v
    v.detail = f"{figures}; fails above +{max_increase} when p<{alpha}; {sides}"
    return v


def latency_verdict(
    edges: Sequence[float],
    can: Side,
    con: Side,
    quantile: float,
    max_ratio: float,
    k: int,
    min_delta_ms: float,
) -> regression.Verdict:
    """``regression.latency_verdict`` on the sides' pooled latency distributions (each device weighs
    the same), bins below 4 noise standard deviations dropped first."""
    v = _too_few(can, con, k, max_ratio)
    if v is not None:
        return v
    assert can.latency is not None and con.latency is not None
    v = regression.latency_verdict(
        edges, can.latency, con.latency, quantile, can.devices, con.devices, max_ratio, 0,
        can.latency_bin_var, con.latency_bin_var, min_delta_ms,
    )  # fmt: skip
    sides = f"canary {can.words}, control {con.words}, {min(can.windows, con.windows)} window(s)"
    mean = f"mean {mean_ms(edges, can.latency):.1f} vs {mean_ms(edges, con.latency):.1f} ms"
    if v.verdict == regression.NOT_ENOUGH:
        v.detail = f"{UNRESOLVED}: {v.detail}; {sides}"
        return v
    if v.verdict == regression.FAIL and v.control is not None:
        # A quantile read from coarse noisy bins jumps a whole bin when the true quantile sits on an
        # edge; fail only when the canary's mass below the slowest latency allowed (control × ratio)
        # is significantly short of the control's there, i.e. the canary really is slower.
        t = v.control * max_ratio
        short = cdf_at(edges, con.latency, t) - cdf_at(edges, can.latency, t)
        sd = math.sqrt(_cdf_var(edges, t, can.latency_bin_var) + _cdf_var(edges, t, con.latency_bin_var))
        z = short / sd if sd > 0 else math.inf  # noise-free, a quantile above t is a shortfall below it
        v.p_value = float(stats.norm.sf(z))
        if v.p_value >= GATE_ALPHA:
            v.verdict = regression.PASS
            v.detail += f" — but not significantly (p={v.p_value:.3g} at {t:.1f} ms)"
    v.detail = f"{v.detail}; {mean}; {sides}"
    return v


def cdf_at(edges: Sequence[float], dist: np.ndarray, t: float) -> float:
    """Share of a binned distribution below ``t`` (linear within its bin, as quantiles are read)."""
    p = np.clip(dist, 0.0, None)
    p = p / p.sum() if p.sum() > 0 else p
    return float(np.interp(t, edges, np.concatenate([[0.0], np.cumsum(p)])))


def _cdf_var(edges: Sequence[float], t: float, bin_var: float) -> float:
    """Noise variance of ``cdf_at``: the bins it sums (or the complement's, whichever are fewer)."""
    bins = float(np.interp(t, edges, np.arange(len(edges))))
    return min(bins, len(edges) - 1 - bins) * bin_var


def mean_ms(edges: Sequence[float], dist: np.ndarray) -> float:
    """Mean latency of a binned distribution at bin centres (the last bin at its lower edge if open)."""
    e = np.asarray(edges)
    centres = np.where(np.isfinite(e[1:]), 0.5 * (e[:-1] + e[1:]), e[:-1])
    p = np.clip(dist, 0.0, None)
    return float(np.dot(centres, p) / p.sum()) if p.sum() > 0 else 0.0
