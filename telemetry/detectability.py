"""What a privacy setting lets the operator see, and how fast (pure: numpy/scipy, no Django).

The statistics the jobs use on round sums, and closed-form power for them, so the privacy page can
say for a fleet size, window, group size and budgets:

- the smallest mean shift of one input feature (in reference standard deviations) detected with
  95 % probability within a day (or an hour), with at most ``alpha`` false alarms per feature-day;
- the smallest error-rate rise a canary wave of m devices detects within a gate interval.

Drift statistic (``group_mean``, ``median_of_groups``): each group's pooled sums give the group's
mean of the binned feature (bin centres, clipped end bins at their centres); the fleet statistic is
the median of the group means, so one group — one compromised device's reach — cannot move it
alone; a two-sided z-test against the reference mean with the noise variance known from the round
parameters (nothing a device declares). The median of G normal means has variance ≈ π/(2G) times
one's (conservative for small G). Canary statistic: the one-sided gate of ``telemetry.regression``
(effect above ``max_increase`` AND z above z_{1−α}) on the canary's mean error fraction against the
control's, with DP noise variance from the health rounds' parameters.

The formulas are checked against Monte-Carlo runs of the real encoding, the real exact noise and
the secure-aggregation sum in ``tests/test_dp_detectability.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import optimize, stats

from agent.encoding import drift_layout, health_layout, sensitivity
from telemetry.accounting import DEFAULT_DELTA, calibrate

POWER = 0.95
DRIFT_ALPHA = 0.01  # false alarms per feature-day (two-sided)
GATE_ALPHA = 0.01  # the canary gate's one-sided level (telemetry.regression.GATE_ALPHA)
SECONDS_PER_DAY = 86_400


def default_edges(bins: int = 20) -> list[float]:
    """Equal-mass edges of a N(0, 1) reference (what ``quantile_edges`` learns), ends at ±4σ."""
    inner = stats.norm.ppf(np.linspace(0, 1, bins + 1)[1:-1])
    return [-4.0, *inner.tolist(), 4.0]


def bin_probabilities(edges: Sequence[float], shift: float = 0.0) -> np.ndarray:
    """P(bin) for N(shift, 1) with the clipping rule (mass beyond the ends lands in the end bins)."""
    cdf = stats.norm.cdf(np.asarray(edges, float)[1:-1] - shift)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def centres(edges: Sequence[float]) -> np.ndarray:
    e = np.asarray(edges, float)
    return 0.5 * (e[:-1] + e[1:])


def group_mean(hist_sum: np.ndarray, edges: Sequence[float], mass: float | None = None) -> float:
    """A group's binned mean from its (noisy) pooled histogram sum.

    ``mass``: the sum's known mass (M × contributing devices × rounds). Dividing by the sum's own
    noisy mass instead makes the mean a ratio of two noisy figures, heavy-tailed when the noise per
    bin is of the order of a group's mass (small fleets at a strict ε): at 100 devices that ratio
    raised the false alarms from 1 % to 3.5 % a feature-day. The known mass keeps the statistic a
    sum of Gaussians, whose variance ``drift_statistic_sd`` states; the own mass is the fallback
    when the count of active devices is not known.
    """
    h = np.asarray(hist_sum, float)
    mass = h.sum() if mass is None else mass
    return float(np.dot(centres(edges), h) / mass) if mass > 0 else 0.0


def median_of_groups(means: Sequence[float]) -> float:
    return float(np.median(np.asarray(means, float)))


def median_variance_factor(groups: int) -> float:
    """Var(median of G iid normals) / Var(one), conservative (asymptotic π/2G, exact for G ≤ 2)."""
    if groups <= 2:
        return 1.0 / groups
    return math.pi / (2 * groups)


@dataclass(frozen=True)
class Setting:
    """A model's privacy setting and fleet, as the privacy page edits it."""

    fleet: int = 1000
    group_size: int = 0  # 0: ``group_size_for(fleet)``
    window_s: int = 300
    epsilon_drift_day: float = 4.0
    epsilon_health_day: float = 4.0
    delta: float = DEFAULT_DELTA
    features: int = 8
    bins: int = 20
    output_bins: int = 10
    latency_bins: int = 12
    resolution_bits: int = 10
    drift_rounds_per_day: int = 24  # hourly drift rounds
    health_rounds_per_day: int = 24  # hourly health rounds outside a soak
    soak_rounds: int = 24  # health rounds per window while soaking (2 h of 5-minute windows)
    dropout: float = 0.3  # the rounds' design dropout: min_survivors = ⌈(1 − dropout)·n⌉
    inferences_per_window: int = 300
    canary: int = 100
    canary_group_size: int = 0  # 0: the canary in three groups (median of three), one below 60
    reference_days: float = 1.0  # the reference was learned from this much fleet data
    edges: tuple[float, ...] = field(default_factory=lambda: tuple(default_edges()))

    def __post_init__(self) -> None:
        if self.group_size == 0:
            object.__setattr__(self, "group_size", group_size_for(self.fleet))
        if self.canary_group_size == 0:
            object.__setattr__(self, "canary_group_size", self.canary if self.canary < 60 else self.canary // 3)

    @property
    def groups(self) -> int:
        return max(self.fleet // self.group_size, 1)

    def min_survivors(self, n: int) -> int:
        return max(2, math.ceil((1 - self.dropout) * n))

    @property
    def health_rounds_total(self) -> int:
        """A soaking device's health rounds that day: every window of the soak, hourly otherwise."""
        soak_hours = self.soak_rounds * self.window_s / 3600
        return self.soak_rounds + max(self.health_rounds_per_day - math.ceil(soak_hours), 0)


MIN_GROUP, MAX_GROUP, ROBUST_GROUPS = 20, 1000, 3


def group_size_for(fleet: int) -> int:
    """Groups as large as possible (each group sum carries its own noise: G groups cost G times the
    variance) but at least three (a median needs three to outvote one bad group), within
    [EDGEFLEET_MIN_COHORT, 1000] (cost per device grows with log n, a round's latency with n)."""
    return int(min(max(fleet // ROBUST_GROUPS, MIN_GROUP), MAX_GROUP, max(fleet, 1)))


def drift_noise_sd_per_bin(s: Setting) -> tuple[float, float]:
    """(σ of one group-round sum per bin, M): noise of n survivors at the calibrated σ²_dev."""
    layout = drift_layout([(f"f{i}", s.bins) for i in range(s.features)], s.output_bins, s.resolution_bits)
    n = min(s.group_size, s.fleet)
    cal = calibrate(
        s.epsilon_drift_day, s.drift_rounds_per_day, s.min_survivors(n), sensitivity(layout).l2, layout.length, s.delta
    )
    return math.sqrt(n * float(cal.sigma2_device)), float(1 << s.resolution_bits)


def drift_statistic_sd(s: Setting, rounds: int) -> float:
    """σ of the median-of-group-means statistic over ``rounds`` pooled rounds (no shift)."""
    sd_bin, m = drift_noise_sd_per_bin(s)
    n = min(s.group_size, s.fleet)
    c = centres(s.edges)
    p = bin_probabilities(s.edges)
    dp_var = float(np.sum(c**2)) * sd_bin**2 / (m * n) ** 2 / rounds
    mu = float(np.dot(c, p))
    sampling_var = float(np.dot(c**2, p) - mu**2) / (n * rounds * s.inferences_per_window)
    group_var = dp_var + sampling_var
    var = group_var * median_variance_factor(s.groups)
    return math.sqrt(var * (1 + 1 / s.reference_days))


def binned_mean_shift(edges: Sequence[float], shift: float) -> float:
    c = centres(edges)
    return float(np.dot(c, bin_probabilities(edges, shift)) - np.dot(c, bin_probabilities(edges)))


def detectable_shift(
    s: Setting, seconds: int = SECONDS_PER_DAY, alpha: float = DRIFT_ALPHA, power: float = POWER
) -> float:
    """Smallest mean shift (in σ) found with probability ``power`` within ``seconds`` of rounds."""
    rounds = max(1, round(s.drift_rounds_per_day * seconds / SECONDS_PER_DAY))
    need = (stats.norm.isf(alpha / 2) + stats.norm.isf(1 - power)) * drift_statistic_sd(s, rounds)
    hi = 4.0
    if binned_mean_shift(s.edges, hi) < need:
        return math.inf
    return float(optimize.brentq(lambda d: binned_mean_shift(s.edges, d) - need, 0.0, hi, xtol=1e-6))


def drift_power(s: Setting, shift: float, seconds: int = SECONDS_PER_DAY, alpha: float = DRIFT_ALPHA) -> float:
    rounds = max(1, round(s.drift_rounds_per_day * seconds / SECONDS_PER_DAY))
    sd = drift_statistic_sd(s, rounds)
    z = stats.norm.isf(alpha / 2)
    eff = binned_mean_shift(s.edges, shift) / sd
    return float(stats.norm.sf(z - eff) + stats.norm.cdf(-z - eff))


def health_sigma2_device(s: Setting, n: int) -> float:
    layout = health_layout(s.latency_bins, s.resolution_bits)
    cal = calibrate(
        s.epsilon_health_day, s.health_rounds_total, s.min_survivors(n), sensitivity(layout).l2, layout.length, s.delta
    )
    return float(cal.sigma2_device)


def canary_sd(s: Setting, windows: int, p: float) -> float:
    """σ of (canary − control) mean error fraction over ``windows`` health rounds at rate p."""
    m_groups = max(s.canary // s.canary_group_size, 1)
    n = min(s.canary_group_size, s.canary)
    scale = float(1 << s.resolution_bits)

    def arm(devices: int, groups: int, group_n: int) -> float:
        s2 = health_sigma2_device(s, group_n)  # each arm's groups carry the noise of their own size
        dp = s2 / (scale**2 * group_n * windows)  # per group: n·σ²_dev·W / (M·n·W)²
        sampling = p * (1 - p) / (group_n * windows * s.inferences_per_window)
        return (dp + sampling) * median_variance_factor(groups)

    control = max(s.fleet - s.canary, s.canary)
    c_groups = max(control // s.group_size, 1)
    return math.sqrt(arm(s.canary, m_groups, n) + arm(control, c_groups, min(s.group_size, control)))


def detectable_error_rise(
    s: Setting, windows: int = 1, base: float = 0.01, max_increase: float = 0.02, power: float = POWER
) -> float:
    """Smallest rise of the canary's error rate over ``base`` caught with ``power`` within ``windows``."""
    z_a, z_p = stats.norm.isf(GATE_ALPHA), stats.norm.isf(1 - power)

    def gap(rise: float) -> float:
        sd = canary_sd(s, windows, base + rise)
        return rise - (max(max_increase, z_a * sd) + z_p * sd)

    if gap(1 - base) < 0:
        return math.inf
    return float(optimize.brentq(gap, 0.0, 1 - base, xtol=1e-6))


def smallest_health_budget(s: Setting, windows: int = 3, base: float = 0.01, target: float = 0.10) -> float:
    """The smallest ε_health_day at which the canary detects base → target within ``windows``."""

    def short(eps: float) -> float:
        return detectable_error_rise(_replace(s, epsilon_health_day=eps), windows, base) - (target - base)

    lo, hi = 0.05, 200.0
    if short(hi) > 0:
        return math.inf
    return float(optimize.brentq(short, lo, hi, xtol=1e-3)) if short(lo) > 0 else lo


def _replace(s: Setting, **changes: float) -> Setting:
    d = asdict(s)
    d.update(changes)
    d["edges"] = tuple(d["edges"])
    return Setting(**d)


def summary(s: Setting) -> dict[str, float]:
    """The privacy page's figures for one setting."""
    return {
        "epsilon_drift_day": s.epsilon_drift_day,
        "epsilon_health_day": s.epsilon_health_day,
        "delta": s.delta,
        "groups": s.groups,
        "detect_shift_day_sigma": detectable_shift(s),
        "detect_shift_hour_sigma": detectable_shift(s, 3600),
        "canary_error_rise_1_window": detectable_error_rise(s, 1),
        "canary_error_rise_3_windows": detectable_error_rise(s, 3),
    }


def canary_power(s: Setting, rise: float, windows: int = 1, base: float = 0.01, max_increase: float = 0.02) -> float:
    """Probability the gate fails a canary whose error rate rose by ``rise`` within ``windows``."""
    sd = canary_sd(s, windows, base + rise)
    return float(stats.norm.sf((max(max_increase, stats.norm.isf(GATE_ALPHA) * sd) - rise) / sd))
