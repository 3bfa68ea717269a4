"""The privacy page's formulas, each against an independent re-computation from its documented
definition (scipy's normal distribution, the accounting module's calibration), at small settings,
plus the group-size and canary-group rules at their boundaries.

Written from mutation testing (`make mutation`): the Monte-Carlo checks in test_dp_detectability.py
take a minute, so each formula is also pinned here in milliseconds. Pure: no database.
"""

import math

import numpy as np
import pytest
from scipy import stats

from agent.encoding import drift_layout, health_layout, sensitivity
from telemetry import detectability as det
from telemetry.accounting import DEFAULT_DELTA, calibrate

EDGES = (-4.0, -1.0, -0.2, 0.5, 1.5, 4.0)
SMALL = det.Setting(
    fleet=90, features=2, bins=5, output_bins=3, edges=EDGES, reference_days=2.0, epsilon_drift_day=40.0
)


def test_policy_constants() -> None:
    assert (det.POWER, det.DRIFT_ALPHA, det.GATE_ALPHA, det.SECONDS_PER_DAY) == (0.95, 0.01, 0.01, 86_400)
    assert (det.MIN_GROUP, det.MAX_GROUP, det.ROBUST_GROUPS) == (20, 1000, 3)
    s = det.Setting()
    assert (s.fleet, s.window_s, s.epsilon_drift_day, s.epsilon_health_day, s.delta) == (1000, 300, 4.0, 4.0, 1e-6)
    assert (s.drift_rounds_per_day, s.health_rounds_per_day, s.soak_rounds, s.dropout) == (24, 24, 24, 0.3)


def test_default_edges_are_equal_mass_normal_quantiles() -> None:
    e = det.default_edges(4)
    assert e == pytest.approx([-4.0, stats.norm.ppf(0.25), 0.0, stats.norm.ppf(0.75), 4.0], abs=1e-15)
    assert len(det.default_edges()) == 21
    assert det.bin_probabilities(det.default_edges(5)) == pytest.approx([0.2] * 5, abs=1e-12)


def test_bin_probabilities_clip_into_the_end_bins() -> None:
    shift = 0.7
    p = det.bin_probabilities(EDGES, shift)
    expected = [
        stats.norm.cdf(-1.0, loc=shift),
        stats.norm.cdf(-0.2, loc=shift) - stats.norm.cdf(-1.0, loc=shift),
        stats.norm.cdf(0.5, loc=shift) - stats.norm.cdf(-0.2, loc=shift),
        stats.norm.cdf(1.5, loc=shift) - stats.norm.cdf(0.5, loc=shift),
        stats.norm.sf(1.5, loc=shift),
    ]
    assert p == pytest.approx(expected, abs=1e-14)
    assert det.bin_probabilities(EDGES)[0] == pytest.approx(stats.norm.cdf(-1.0), abs=1e-15)


def test_centres_and_binned_mean_shift() -> None:
    c = det.centres(EDGES)
    assert c.tolist() == [-2.5, -0.6, 0.15, 1.0, 2.75]
    d = det.binned_mean_shift(EDGES, 0.4)
    assert d == pytest.approx(np.dot(c, det.bin_probabilities(EDGES, 0.4)) - np.dot(c, det.bin_probabilities(EDGES)))
    assert d > 0 and det.binned_mean_shift(EDGES, 0.0) == 0.0


def test_group_mean_and_median() -> None:
    assert det.group_mean(np.array([0.0, 2.0, 0.0, 2.0, 0.0]), EDGES) == pytest.approx((-0.6 + 1.0) / 2)
    assert det.group_mean(np.array([1.0, 0.0, 0.0, 0.0, 3.0]), EDGES) == pytest.approx((-2.5 + 3 * 2.75) / 4)
    # noise can cancel a group's mass entirely, or make it negative: no mean, not a division by zero
    assert det.group_mean(np.array([1.0, -1.0, 0.0, 0.0, 0.0]), EDGES) == 0.0
    assert det.group_mean(np.array([-1.0, 0.0, 0.0, 0.0, -2.0]), EDGES) == 0.0
    # a nearly empty (noisy) group still has a mean
    assert det.group_mean(np.array([0.0, 0.0, 0.0, 0.5, 0.0]), EDGES) == pytest.approx(1.0)
    # a known mass (devices × M × rounds) divides instead of the sum's own noisy mass
    assert det.group_mean(np.array([0.0, 2.0, 0.0, 2.0, 0.0]), EDGES, 8.0) == pytest.approx((-0.6 + 1.0) * 2 / 8)
    assert det.group_mean(np.array([1.0, -1.0, 0.0, 0.0, 1.0]), EDGES, 4.0) == pytest.approx((-2.5 + 0.6 + 2.75) / 4)
    assert det.group_mean(np.array([0.0, 2.0, 0.0, 2.0, 0.0]), EDGES, 0.0) == 0.0
    assert det.median_of_groups([3.0, -1.0, 10.0]) == 3.0
    assert det.median_of_groups([1, 2, 3, 10]) == 2.5


@pytest.mark.parametrize(("groups", "factor"), [(1, 1.0), (2, 0.5), (3, math.pi / 6), (10, math.pi / 20)])
def test_median_variance_factor(groups: int, factor: float) -> None:
    assert det.median_variance_factor(groups) == pytest.approx(factor, rel=1e-15)


@pytest.mark.parametrize(
    ("fleet", "size"),
    [(0, 1), (1, 1), (10, 10), (20, 20), (60, 20), (62, 20), (63, 21), (2999, 999), (3000, 1000), (99999, 1000)],
)
def test_group_size_for(fleet: int, size: int) -> None:
    assert det.group_size_for(fleet) == size


@pytest.mark.parametrize(("canary", "group"), [(1, 1), (59, 59), (60, 20), (61, 20), (100, 33)])
def test_canary_groups(canary: int, group: int) -> None:
    assert det.Setting(canary=canary).canary_group_size == group
    assert det.Setting(canary=canary, canary_group_size=7).canary_group_size == 7


def test_group_size_given_or_derived() -> None:
    assert det.Setting(fleet=90).group_size == 30
    assert det.Setting(fleet=90, group_size=45).group_size == 45


@pytest.mark.parametrize(("n", "dropout", "t"), [(1, 0.3, 2), (2, 0.3, 2), (10, 0.3, 7), (11, 0.3, 8), (10, 0.0, 10)])
def test_min_survivors(n: int, dropout: float, t: int) -> None:
    assert det.Setting(dropout=dropout).min_survivors(n) == t


def _drift_sd_per_bin(s: det.Setting) -> float:
    layout = drift_layout([(f"f{i}", s.bins) for i in range(s.features)], s.output_bins, s.resolution_bits)
    n = min(s.group_size, s.fleet)
    t = max(2, math.ceil((1 - s.dropout) * n))
    cal = calibrate(s.epsilon_drift_day, s.drift_rounds_per_day, t, sensitivity(layout).l2, layout.length, s.delta)
    return math.sqrt(n * float(cal.sigma2_device))


def test_drift_noise_per_bin() -> None:
    sd, m = det.drift_noise_sd_per_bin(SMALL)
    assert m == 1024.0
    other = det._replace(SMALL, resolution_bits=8, delta=1e-4, output_bins=12)
    assert det.drift_noise_sd_per_bin(other) == pytest.approx((_drift_sd_per_bin(other), 256.0), rel=1e-12)
    assert sd == pytest.approx(_drift_sd_per_bin(SMALL), rel=1e-12)
    # a group larger than the fleet is the fleet
    big_group = det._replace(SMALL, group_size=500)
    assert det.drift_noise_sd_per_bin(big_group)[0] == pytest.approx(_drift_sd_per_bin(big_group), rel=1e-12)


def _statistic_sd(s: det.Setting, rounds: int) -> float:
    sd_bin = _drift_sd_per_bin(s)
    n = min(s.group_size, s.fleet)
    m = 2.0**s.resolution_bits
    c, p = det.centres(s.edges), det.bin_probabilities(s.edges)
    dp_var = sum(ci**2 for ci in c) * sd_bin**2 / (m * n) ** 2 / rounds
    mean = sum(c * p)
    sampling = (sum(c**2 * p) - mean**2) / (n * rounds * s.inferences_per_window)
    groups = max(s.fleet // s.group_size, 1)
    factor = 1.0 / groups if groups <= 2 else math.pi / (2 * groups)
    return math.sqrt((dp_var + sampling) * factor * (1 + 1 / s.reference_days))


@pytest.mark.parametrize("rounds", [1, 5])
def test_drift_statistic_sd(rounds: int) -> None:
    assert det.drift_statistic_sd(SMALL, rounds) == pytest.approx(_statistic_sd(SMALL, rounds), rel=1e-12)
    exact_ref = det._replace(SMALL, reference_days=math.inf, group_size=40)
    assert det.drift_statistic_sd(exact_ref, rounds) == pytest.approx(_statistic_sd(exact_ref, rounds), rel=1e-12)


@pytest.mark.parametrize(("seconds", "rounds"), [(86_400, 24), (3600, 1), (60, 1), (7200, 2)])
def test_detectable_shift_solves_the_power_equation(seconds: int, rounds: int) -> None:
    d = det.detectable_shift(SMALL, seconds)
    need = (stats.norm.isf(0.005) + stats.norm.isf(0.05)) * _statistic_sd(SMALL, rounds)
    assert 0 < d < 4
    assert det.binned_mean_shift(EDGES, d) == pytest.approx(need, rel=1e-5)
    assert det.drift_power(SMALL, d, seconds) == pytest.approx(0.95, abs=2e-5)


def test_shifts_beyond_the_edges_are_out_of_reach() -> None:
    """A shift only found beyond ±4σ (where the end bins clip) is reported as out of reach."""
    s = det._replace(SMALL, epsilon_drift_day=1.0, inferences_per_window=10)
    sd = _statistic_sd(s, 24)
    power = stats.norm.cdf(det.binned_mean_shift(EDGES, 4.5) / sd - stats.norm.isf(0.005))
    assert 0 < power < 1
    assert det.detectable_shift(s, power=power) == math.inf
    near = stats.norm.cdf(det.binned_mean_shift(EDGES, 3.9) / sd - stats.norm.isf(0.005))
    assert det.detectable_shift(s, power=near) == pytest.approx(3.9, abs=1e-3)


def test_detectable_shift_other_levels_and_out_of_reach() -> None:
    d = det.detectable_shift(SMALL, alpha=0.1, power=0.5)
    need = stats.norm.isf(0.05) * _statistic_sd(SMALL, 24)
    assert det.binned_mean_shift(EDGES, d) == pytest.approx(need, rel=1e-5)
    hopeless = det._replace(SMALL, fleet=4, epsilon_drift_day=0.5, inferences_per_window=1)
    assert det.detectable_shift(hopeless) == math.inf


@pytest.mark.parametrize("shift", [0.0, 0.05, -0.1])
def test_drift_power_is_the_two_sided_normal_power(shift: float) -> None:
    sd = _statistic_sd(SMALL, 1)
    z = stats.norm.isf(0.025)
    eff = det.binned_mean_shift(EDGES, shift) / sd
    expected = stats.norm.sf(z - eff) + stats.norm.cdf(-z - eff)
    assert det.drift_power(SMALL, shift, 3600, alpha=0.05) == pytest.approx(expected, rel=1e-10)
    assert det.drift_power(SMALL, 0.0) == pytest.approx(0.01, rel=1e-10)


def _health_s2(s: det.Setting, n: int) -> float:
    layout = health_layout(s.latency_bins, s.resolution_bits)
    rounds = s.soak_rounds + max(s.health_rounds_per_day - math.ceil(s.soak_rounds * s.window_s / 3600), 0)
    t = max(2, math.ceil((1 - s.dropout) * n))
    return float(
        calibrate(s.epsilon_health_day, rounds, t, sensitivity(layout).l2, layout.length, s.delta).sigma2_device
    )


def test_health_noise() -> None:
    assert det.health_sigma2_device(SMALL, 30) == pytest.approx(_health_s2(SMALL, 30), rel=1e-12)
    other = det._replace(SMALL, resolution_bits=8, latency_bins=3, delta=1e-4, window_s=600)
    assert det.health_sigma2_device(other, 25) == pytest.approx(_health_s2(other, 25), rel=1e-12)


def _canary_sd(s: det.Setting, windows: int, p: float) -> float:
    scale = 2.0**s.resolution_bits

    def arm(groups: int, group_n: int, s2: float) -> float:
        factor = 1.0 / groups if groups <= 2 else math.pi / (2 * groups)
        dp = s2 / (scale**2 * group_n * windows)
        return (dp + p * (1 - p) / (group_n * windows * s.inferences_per_window)) * factor

    n = min(s.canary_group_size, s.canary)
    control = max(s.fleet - s.canary, s.canary)
    control_n = min(s.group_size, control)  # the control's groups carry the noise of their own size
    return math.sqrt(
        arm(max(s.canary // s.canary_group_size, 1), n, _health_s2(s, n))
        + arm(max(control // s.group_size, 1), control_n, _health_s2(s, control_n))
    )


CANARY = det.Setting(fleet=400, canary=90, inferences_per_window=50, epsilon_health_day=40.0)


@pytest.mark.parametrize(
    "s",
    [
        CANARY,
        det._replace(CANARY, canary=300),
        det._replace(CANARY, canary=100, canary_group_size=0),  # 100 in groups of 33: three groups, not 3.03
        det._replace(CANARY, canary=40, canary_group_size=50, group_size=500),
    ],
)
def test_canary_sd(s: det.Setting) -> None:
    assert det.canary_sd(s, 2, 0.05) == pytest.approx(_canary_sd(s, 2, 0.05), rel=1e-12)


@pytest.mark.parametrize(("rise", "windows"), [(0.03, 1), (0.08, 3)])
def test_canary_power_is_the_one_sided_gate(rise: float, windows: int) -> None:
    sd = _canary_sd(CANARY, windows, 0.01 + rise)
    expected = stats.norm.sf((max(0.02, stats.norm.isf(0.01) * sd) - rise) / sd)
    assert det.canary_power(CANARY, rise, windows) == pytest.approx(expected, rel=1e-10)
    if windows == 1:
        assert det.canary_power(CANARY, rise) == det.canary_power(CANARY, rise, 1)
    sd2 = _canary_sd(CANARY, windows, 0.05 + rise)
    expected2 = stats.norm.sf((max(0.001, stats.norm.isf(0.01) * sd2) - rise) / sd2)
    assert det.canary_power(CANARY, rise, windows, base=0.05, max_increase=0.001) == pytest.approx(expected2, rel=1e-10)


def test_detectable_error_rise_solves_the_gate_equation() -> None:
    rise = det.detectable_error_rise(CANARY, 2)
    sd = _canary_sd(CANARY, 2, 0.01 + rise)
    assert rise == pytest.approx(max(0.02, stats.norm.isf(0.01) * sd) + stats.norm.isf(0.05) * sd, abs=1e-5)
    assert det.canary_power(CANARY, rise, 2) == pytest.approx(0.95, abs=1e-3)
    rise2 = det.detectable_error_rise(CANARY, 1, base=0.05, max_increase=0.0, power=0.5)
    sd2 = _canary_sd(CANARY, 1, 0.05 + rise2)
    assert rise2 == pytest.approx(stats.norm.isf(0.01) * sd2, abs=1e-5)
    hopeless = det._replace(CANARY, epsilon_health_day=0.001, canary=2, canary_group_size=2)
    assert det.detectable_error_rise(hopeless) == math.inf


def test_detectable_error_rise_defaults_and_rates_near_one() -> None:
    assert det.detectable_error_rise(CANARY) == det.detectable_error_rise(CANARY, 1, 0.01, 0.02, 0.95)
    # little noise, one inference per window: the search must stay at error rates ≤ 1
    sharp = det._replace(CANARY, epsilon_health_day=1000.0, inferences_per_window=1)
    assert 0 < det.detectable_error_rise(sharp) < 0.99


def test_smallest_health_budget_defaults_and_edges() -> None:
    cheap = det.Setting(fleet=20_000, canary=3000, inferences_per_window=10_000, soak_rounds=1, health_rounds_per_day=1)
    assert det.smallest_health_budget(cheap) == det.smallest_health_budget(cheap, 3, 0.01, 0.10)
    # the cheapest budget tried is already close but short: the search runs, and lands above it
    eps = det.smallest_health_budget(cheap, windows=3, target=0.2)
    assert 0.05 < eps < 0.2
    assert det.detectable_error_rise(det._replace(cheap, epsilon_health_day=eps), 3) == pytest.approx(0.19, abs=1e-3)
    # the error rate before the rise is the given one, not the default (sampling noise grows with it)
    few = det.Setting(fleet=4000, canary=600, inferences_per_window=1, soak_rounds=1, health_rounds_per_day=1)
    eps2 = det.smallest_health_budget(few, windows=1, base=0.4, target=0.6)
    assert det.detectable_error_rise(det._replace(few, epsilon_health_day=eps2), 1, 0.4) == pytest.approx(0.2, abs=2e-3)
    assert det.detectable_error_rise(det._replace(few, epsilon_health_day=eps2), 1, 0.01) < 0.195
    # a target no budget up to 200 reaches, though the rise is finite there
    assert det.smallest_health_budget(CANARY, target=0.0101) == math.inf
    # the search stops at ε = 200 per day: 199.5 is found, 200.5 is out of reach
    at = {e: det.detectable_error_rise(det._replace(CANARY, epsilon_health_day=e), 3) + 0.01 for e in (199.5, 200.5)}
    assert det.smallest_health_budget(CANARY, target=at[199.5]) == pytest.approx(199.5, abs=2e-3)
    assert det.smallest_health_budget(CANARY, target=at[200.5]) == math.inf


def test_smallest_health_budget() -> None:
    s = det._replace(CANARY, epsilon_health_day=1.0)
    eps = det.smallest_health_budget(s, windows=3, target=0.10)
    assert 0.05 < eps < 200
    at = det.detectable_error_rise(det._replace(s, epsilon_health_day=eps), 3, 0.01)
    assert at == pytest.approx(0.09, abs=1e-3)
    assert det.detectable_error_rise(det._replace(s, epsilon_health_day=eps * 0.9), 3, 0.01) > 0.09
    # found to the stated tolerance of 1e-3 in ε
    assert det.detectable_error_rise(det._replace(s, epsilon_health_day=eps - 2e-3), 3, 0.01) > 0.09
    assert det.detectable_error_rise(det._replace(s, epsilon_health_day=eps + 2e-3), 3, 0.01) < 0.09
    # a target so easy the smallest budget tried already meets it, and one no budget meets
    cheap = det.Setting(fleet=20_000, canary=3000, inferences_per_window=10_000, soak_rounds=1, health_rounds_per_day=1)
    assert det.smallest_health_budget(cheap, windows=3, target=0.5) == 0.05
    tiny = det._replace(s, canary=2, canary_group_size=2, fleet=4, group_size=2, inferences_per_window=1)
    assert det.smallest_health_budget(tiny, windows=1, target=0.011) == math.inf


def test_replace_keeps_everything_else() -> None:
    r = det._replace(SMALL, epsilon_drift_day=9.0)
    assert r.epsilon_drift_day == 9.0 and r.edges == EDGES and isinstance(r.edges, tuple)
    assert det._replace(SMALL) == SMALL


def test_summary_names_each_figure() -> None:
    s = det._replace(CANARY, epsilon_drift_day=40.0)
    assert math.isfinite(det.detectable_error_rise(s, 1)) and math.isfinite(det.detectable_shift(s, 3600))
    assert det.summary(s) == {
        "epsilon_drift_day": s.epsilon_drift_day,
        "epsilon_health_day": s.epsilon_health_day,
        "delta": DEFAULT_DELTA,
        "groups": s.fleet // s.group_size,
        "detect_shift_day_sigma": det.detectable_shift(s),
        "detect_shift_hour_sigma": det.detectable_shift(s, 3600),
        "canary_error_rise_1_window": det.detectable_error_rise(s, 1),
        "canary_error_rise_3_windows": det.detectable_error_rise(s, 3),
    }
