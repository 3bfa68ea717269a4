"""The canary gate on health-round sums (telemetry/canary_sums.py): edges with exact sums, the
variance pinned to the privacy page's formula, and Monte-Carlo runs of the real encoding, the real
exact noise sampler and the SecAgg+ sum for its false-rollback rate and its power."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from agent.dpnoise import DeviceNoise, sample_noise
from agent.encoding import encode, health_layout, sensitivity
from agent.secagg.simulation import make_round, run_round
from telemetry import canary_sums as cs
from telemetry import detectability as det
from telemetry import regression
from telemetry.accounting import calibrate
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.group_sums import GroupSum

H12 = health_layout(12)
M = 1024
K = 20
LAT = [0, 5, 30, 40, 15, 6, 3, 1, 0, 0, 0, 0]  # most calls 2–20 ms


def vec(layout, errors: int, rows: int, latency=LAT, active: bool = True) -> np.ndarray:
    return encode(layout, active, {"latency": latency}, {"error_fraction": (errors, rows)})


def group(n: int, errors: int, rows: int = M, *, active: int | None = None, sigma2: float = 0.0, latency=LAT):
    """An exact (noise-free) sum of ``n`` identical devices; ``sigma2`` is the noise it claims to carry."""
    a = n if active is None else active
    total = np.sum([vec(H12, errors, rows, latency, i < a) for i in range(n)], axis=0)
    return GroupSum(H12, total, n, sigma2)


def verdict(can, con, max_increase=0.02):
    return cs.error_verdict(cs.side(can), cs.side(con), max_increase, K)


# ---- edges ---------------------------------------------------------------------------------------


def test_effect_equal_to_the_threshold_passes_one_unit_above_fails() -> None:
    con = [[group(20, 0)]]
    at = verdict([[group(20, 20)]], con, max_increase=20 / M)
    assert at.effect == pytest.approx(20 / M) and at.verdict == regression.PASS
    above = verdict([[group(20, 21)]], con, max_increase=20 / M)
    assert above.verdict == regression.FAIL and above.p_value < regression.GATE_ALPHA


def test_one_group_per_side_is_judged_and_says_so() -> None:
    v = verdict([[group(20, 200)]], [[group(20, 10)]])
    assert v.verdict == regression.FAIL
    assert v.n_canary == 20 and "canary 20 devices in 1 group" in v.detail
    ok = verdict([[group(20, 10)]], [[group(20, 10)]])
    assert ok.verdict == regression.PASS and ok.effect == 0


def test_no_informative_group_is_not_enough_data() -> None:
    idle = [[group(20, 0, active=0), group(20, 0, active=0)]]
    v = verdict(idle, [[group(20, 10)]])
    assert v.verdict == regression.NOT_ENOUGH and "no group on a side was active" in v.detail
    assert v.detail.startswith(cs.UNRESOLVED), "reports may still tell: the job falls back to them"
    assert verdict([], [[group(20, 10)]]).verdict == regression.NOT_ENOUGH


def test_below_k_devices_on_a_side_is_not_enough_data_at_k_it_is_judged() -> None:
    v = verdict([[group(19, 200)]], [[group(40, 10)]])
    assert v.verdict == regression.NOT_ENOUGH and "need 20 devices on each side" in v.detail
    assert verdict([[group(20, 200)]], [[group(20, 10)]]).verdict == regression.FAIL


def test_a_spoiled_canary_group_cannot_fail_a_healthy_canary() -> None:
    honest = [group(20, 10), group(20, 12), group(20, 11)]
    spoiled = GroupSum(H12, np.concatenate([[0, 20 * M], np.zeros(10, int), [20 * M, 20]]), 20, 0.0)
    con = [[group(20, 10), group(20, 11), group(20, 12)]]
    assert verdict([[*honest[:2], spoiled]], con).verdict == regression.PASS
    # spoiled in every window (a compromised device that stays): still one group of each
    assert verdict([[*honest[:2], spoiled]] * 3, con * 3).verdict == regression.PASS


def test_a_spoiled_control_group_cannot_hide_a_regression() -> None:
    can = [[group(20, 200), group(20, 210), group(20, 190)]]
    honest = [group(20, 10), group(20, 12)]
    high = GroupSum(H12, np.concatenate([[0, 20 * M], np.zeros(10, int), [20 * M, 20]]), 20, 0.0)
    # claims one active device among 20: its stated noise is 400 times the others'
    faint = GroupSum(H12, np.concatenate([[0, M], np.zeros(10, int), [M, 1]]), 20, 5.0e4)
    for bad in (high, faint):
        assert verdict(can, [[*honest, bad]]).verdict == regression.FAIL


def test_noise_that_hides_the_canary_goal_is_not_a_pass() -> None:
    """A sum too noisy to catch 1 % → 10 % says not-enough-data (the job then reads reports)."""
    v = verdict([[group(20, 10, sigma2=4e7)]], [[group(20, 10, sigma2=4e7)]])
    assert v.verdict == regression.NOT_ENOUGH and v.detail.startswith(cs.UNRESOLVED)
    fine = verdict([[group(20, 10, sigma2=100.0)]], [[group(20, 10, sigma2=100.0)]])
    assert fine.verdict == regression.PASS


def test_latency_quantiles_from_pooled_distributions() -> None:
    slow = [0, 0, 0, 5, 30, 40, 15, 6, 3, 1, 0, 0]  # one decade slower
    can, con = cs.side([[group(20, 10, latency=slow)]]), cs.side([[group(20, 10)]])
    v = cs.latency_verdict(LATENCY_EDGES_MS, can, con, 0.95, 1.25, K, 5.0)
    assert v.verdict == regression.FAIL and v.canary > 2 * v.control
    assert "mean" in v.detail and "20 devices in 1 group" in v.detail
    same = cs.latency_verdict(LATENCY_EDGES_MS, con, con, 0.95, 1.25, K, 5.0)
    assert same.verdict == regression.PASS and same.effect == 1.0
    assert cs.latency_verdict(LATENCY_EDGES_MS, cs.side([]), con, 0.5, 1.25, K, 5.0).verdict == regression.NOT_ENOUGH


def test_variance_is_the_privacy_pages_canary_formula() -> None:
    """Equal noise-only groups: the gate's standard error is ``detectability.canary_sd`` (without its
    sampling term, which this group sum does not carry), at the default setting of docs/privacy.md."""
    s = det.Setting(fleet=1000, epsilon_health_day=4.9, health_rounds_per_day=0, soak_rounds=3, canary=100,
                    canary_group_size=100, inferences_per_window=10**12)  # fmt: skip
    windows, p = 3, 0.01
    errs = round(p * M)
    s_can, s_con = det.health_sigma2_device(s, 100), det.health_sigma2_device(s, 333)
    can = cs.side([[group(100, errs, sigma2=s_can)]] * windows)
    con = cs.side([[group(333, errs, sigma2=s_con)] * 2] * windows)
    sd = math.sqrt(can.error_var + con.error_var)
    assert sd == pytest.approx(det.canary_sd(s, windows, p), rel=1e-6)
    assert cs.smallest_caught(sd, 0.02) == pytest.approx(det.detectable_error_rise(s, windows, p), abs=2e-3)
    assert cs.smallest_caught(sd, 0.02) < cs.GOAL_RISE  # the default budget resolves the goal in 3 windows


# ---- Monte-Carlo: real encoding, real exact noise, the SecAgg+ sum ---------------------------------


H4 = health_layout(4)
LAT4 = [0.1, 0.6, 0.25, 0.05]


def _noisy_group(rng, n, rate, rows, noise, sigma2, secure=False) -> GroupSum:
    vecs = {}
    for u in range(1, n + 1):
        e = int(rng.binomial(rows, rate))
        lat = rng.multinomial(rows, LAT4)
        vecs[u] = encode(H4, True, {"latency": lat}, {"error_fraction": (e, rows)}) + sample_noise(H4.length, noise)
    total = np.sum(list(vecs.values()), axis=0)
    if secure:
        members = make_round(n, H4.length, min_survivors=math.ceil(0.7 * n))
        _server, ring_total = run_round(members, vecs)
        assert np.array_equal(members.config.ring.centred(ring_total), total)
    return GroupSum(H4, total, n, float(sigma2))


@pytest.mark.slow
def test_false_rollback_rate_and_power_match_the_stated_levels() -> None:
    """Canary of 60 in three groups of 20 against a control of 60 likewise, two windows of 40
    inferences per device: at no regression the gate fails at most at its level α = 1 % (any gate,
    latency included); at the rise the privacy page's formula says is caught with 95 % probability,
    it is caught that often."""
    s = det.Setting(fleet=120, group_size=20, canary=60, canary_group_size=20, latency_bins=4, epsilon_health_day=150.0,
                    health_rounds_per_day=0, soak_rounds=6, inferences_per_window=40)  # fmt: skip
    cal = calibrate(s.epsilon_health_day, s.health_rounds_total, s.min_survivors(20), sensitivity(H4).l2, H4.length)
    sigma2: Fraction = cal.sigma2_device
    noise = DeviceNoise.for_group(sigma2, 20, H4.length)
    windows, base = 2, 0.01
    rise = det.detectable_error_rise(s, windows, base)
    predicted = det.canary_power(s, rise, windows, base)
    assert predicted == pytest.approx(0.95, abs=1e-3) and 0.02 < rise < cs.GOAL_RISE
    edges = [0, 5, 20, 100, 1000]
    rng = np.random.default_rng(7)

    def trial(rate: float, first: bool) -> bool:
        arms = []
        for r in (rate, base):
            arms.append(
                cs.side(
                    [
                        [_noisy_group(rng, 20, r, 40, noise, sigma2, secure=first and g == w == 0) for g in range(3)]
                        for w in range(windows)
                    ]
                )
            )
            first = False
        verdicts = [cs.error_verdict(arms[0], arms[1], 0.02, K)]
        verdicts += [cs.latency_verdict(edges, arms[0], arms[1], q, 1.25, K, 5.0) for q in (0.5, 0.95)]
        return any(v.verdict == regression.FAIL for v in verdicts)

    null_trials, power_trials = 200, 100
    false = sum(trial(base, first=i == 0) for i in range(null_trials))
    caught = sum(trial(base + rise, first=False) for _ in range(power_trials))
    assert false <= 6  # α = 1 %: 2 expected; P(≥ 7 of 200) < 0.5 %
    assert caught / power_trials == pytest.approx(predicted, abs=0.08)


# ---- the pieces, pinned -----------------------------------------------------------------------------


def test_side_counts_devices_groups_and_rounds() -> None:
    idle = group(20, 0, active=0)
    s = cs.side([[group(20, 10), group(20, 10), idle], [group(30, 10)], [group(30, 10, active=0)]])
    assert (s.windows, s.groups, s.rounds) == (2, 3, 5)
    assert (s.devices, s.groups_per_window) == (60, 3), "the largest window's survivors and its groups"
    tie = cs.side([[group(20, 10), group(20, 10)], [group(40, 10)]])
    assert (tie.devices, tie.groups_per_window) == (40, 2), "the first of equal windows"
    empty = cs.side([[idle]])
    assert (empty.windows, empty.groups, empty.rounds, empty.devices, empty.groups_per_window) == (0, 0, 1, 20, 1)
    assert empty.error is None and empty.latency is None
    assert empty.error_var == empty.error_noise_var == empty.latency_bin_var == math.inf


def test_noise_variance_is_the_median_factor_over_windows_squared() -> None:
    two = cs.side([[group(20, 10, sigma2=400.0), group(20, 10, sigma2=400.0)]] * 2)
    one_group = 20 * 400.0 / (M * 20) ** 2  # survivors·σ² / (M·a)²
    assert two.error_noise_var == pytest.approx(2 * 0.5 * one_group / 4)
    assert two.error_var == pytest.approx(two.error_noise_var), "identical groups: no spread beyond noise"
    assert two.latency_bin_var == pytest.approx(2 * 0.5 * one_group / 4)


def test_spread_across_groups_counts_when_larger_than_the_noise() -> None:
    """Residuals from each window's median, pooled over windows with at least two groups (MAD)."""
    s = cs.side([[group(20, 51), group(20, 153)], [group(20, 100), group(20, 100)], [group(20, 7)]])
    res = [(51 - 153) / 2 / M, (153 - 51) / 2 / M, 0.0, 0.0]
    spread2 = (cs.MAD_TO_SD * float(np.median(np.abs(res)))) ** 2
    assert s.error_noise_var == 0.0
    assert s.error_var == pytest.approx((0.5 * spread2 + 0.5 * spread2 + 1.0 * spread2) / 9)
    assert cs._robust_spread2([]) == 0.0 and cs._robust_spread2([0.5, -0.5]) == pytest.approx((cs.MAD_TO_SD * 0.5) ** 2)


def test_verdict_numbers_and_fields() -> None:
    same = verdict([[group(20, 10)]], [[group(20, 10)]])
    assert (same.statistic, same.p_value) == (0.0, 0.5) and "error rate" in same.detail
    assert (same.n_canary, same.n_control, same.threshold) == (20, 20, 0.02)
    noisy = verdict([[group(20, 60, sigma2=400.0)]], [[group(20, 10, sigma2=400.0)]])
    sd = math.sqrt(2 * 20 * 400.0 / (M * 20) ** 2)
    assert noisy.statistic == pytest.approx(noisy.effect / sd) and noisy.threshold == 0.02
    small = verdict([[group(19, 10)]], [[group(40, 10)]])
    assert (small.n_canary, small.n_control, small.threshold) == (19, 40, 0.02)
    idle = verdict([[group(20, 0, active=0)]], [[group(30, 10)]])
    assert (idle.n_canary, idle.n_control, idle.threshold) == (20, 30, 0.02)


def test_pass_needs_the_goal_caught_at_equality_it_is() -> None:
    can, con = cs.side([[group(20, 10, sigma2=400.0)]]), cs.side([[group(20, 10, sigma2=400.0)]])
    caught = cs.smallest_caught(math.sqrt(can.error_var + con.error_var), 0.02)
    assert cs.error_verdict(can, con, 0.02, K, goal=caught).verdict == regression.PASS
    assert cs.error_verdict(can, con, 0.02, K, goal=caught - 1e-9).verdict == regression.NOT_ENOUGH
    # a threshold above the goal: a rise of the goal's size could never fail, so it is not resolved
    assert cs.error_verdict(can, con, 0.08, K, goal=0.07).verdict == regression.NOT_ENOUGH
    assert cs.smallest_caught(0.0, 0.05) == 0.05
    # the level is the caller's: at α = 20 % the same sums catch a smaller rise
    can, con = cs.side([[group(20, 10, sigma2=8000.0)]]), cs.side([[group(20, 10, sigma2=8000.0)]])
    sd = math.sqrt(can.error_var + con.error_var)
    loose = cs.smallest_caught(sd, 0.02, alpha=0.2)
    assert loose < cs.smallest_caught(sd, 0.02)
    assert cs.error_verdict(can, con, 0.02, K, alpha=0.2, goal=loose).verdict == regression.PASS


def test_cdf_and_mean_of_binned_latency() -> None:
    edges = [0, 10, 20]
    assert cs.cdf_at(edges, np.array([1.0, 1.0]), 5) == pytest.approx(0.25)
    assert cs.cdf_at(edges, np.array([0.5, 0.5]), 15) == pytest.approx(0.75)
    assert cs.cdf_at(edges, np.array([-1.0, 1.0]), 5) == 0.0 and cs.cdf_at(edges, np.array([1.0, 1.0]), 99) == 1.0
    assert cs._cdf_var([0, 10, 20, 30], 15, 2.0) == pytest.approx(3.0)
    assert cs._cdf_var([0, 10, 20, 30], 5, 2.0) == pytest.approx(1.0)
    assert cs._cdf_var([0, 10, 20, 30], 25, 2.0) == pytest.approx(1.0)
    assert cs.mean_ms(edges, np.array([1.0, 0.0])) == 5.0
    assert cs.mean_ms(edges, np.array([1.0, 3.0])) == 12.5
    assert cs.mean_ms([0, 10, math.inf], np.array([0.0, 2.0])) == 10.0
    assert cs.mean_ms(edges, np.array([0.0, -1.0])) == 0.0
    assert cs.mean_ms(edges, np.array([-1.0, 2.0])) == 15.0, "negative noise is clipped, not subtracted"
    assert cs.cdf_at(edges, np.array([0.25, 0.25]), 5) == pytest.approx(0.25), "normalised below a sum of 1 too"
    assert cs.cdf_at(edges, np.array([0.0, 0.0]), 15) == 0.0


def _lat_side(dist, bin_var: float) -> cs.Side:
    return cs.Side(1, 1, 1, 20, 1, 0.0, 0.0, 0.0, np.asarray(dist, float), bin_var)


def test_a_quantile_jump_without_a_significant_shortfall_passes() -> None:
    """Control p95 on the 20 ms edge, canary p95 35 ms (×1.75, +15 ms): a fail by quantile; below
    control × 1.25 = 25 ms the canary is short 0.042 of the control's mass, z = 2.18 with these
    bins' noise: not significant at 1 %, so it passes and says why; without noise it fails."""
    edges = [0, 10, 20, 50, 100]
    con, can = [0.5, 0.45, 0.05, 0.0], [0.5, 0.40, 0.10, 0.0]
    v = cs.latency_verdict(edges, _lat_side(can, 1e-4), _lat_side(con, 1e-4), 0.95, 1.25, K, 5.0)
    assert (v.canary, v.control) == (pytest.approx(35.0), pytest.approx(20.0))
    assert v.verdict == regression.PASS and "not significantly" in v.detail
    assert v.p_value == pytest.approx(stats_sf(0.0417 / math.sqrt(2 * (2 + 5 / 30 - 2 * (5 / 30)) * 1e-4)), rel=0.02)
    assert v.detail.startswith("p95 35.00 ms vs 20.00 ms") and "mean 12.0 vs 11.0 ms" in v.detail
    exact = cs.latency_verdict(edges, _lat_side(can, 0.0), _lat_side(con, 0.0), 0.95, 1.25, K, 5.0)
    assert exact.verdict == regression.FAIL and exact.p_value == 0.0 and "not significantly" not in exact.detail
    # the ms floor is the caller's: 15 ms slower fails above a 10 ms floor, not above 20
    assert cs.latency_verdict(edges, _lat_side(can, 0.0), _lat_side(con, 0.0), 0.95, 1.25, K, 20.0).verdict == "pass"
    ok = cs.latency_verdict(edges, _lat_side(con, 1e-4), _lat_side(con, 1e-4), 0.95, 1.25, K, 5.0)
    assert ok.verdict == regression.PASS and ok.p_value is None and "not significantly" not in ok.detail
    noisy = cs.latency_verdict(edges, _lat_side(can, 1.0), _lat_side(con, 1.0), 0.95, 1.25, K, 5.0)
    assert noisy.verdict == regression.NOT_ENOUGH and noisy.detail.startswith(cs.UNRESOLVED)
    few = cs.latency_verdict(edges, cs.side([]), _lat_side(con, 0.0), 0.95, 1.25, K, 5.0)
    assert few.threshold == 1.25 and few.verdict == regression.NOT_ENOUGH


def test_each_window_counts_alike_in_the_pooled_latency() -> None:
    """The median of three groups' distributions need not sum to 1: each window's is normalised
    (disjoint groups: all-zero median, read as uniform) before the windows are averaged."""
    one_hot = [[0] * 12 for _ in range(3)]
    for i in range(3):
        one_hot[i][i + 1] = 10
    disjoint = cs.side([[group(20, 10, latency=lat) for lat in one_hot]])
    assert np.allclose(disjoint.latency, 1 / 12)
    a, b, c = [0, 6, 4] + [0] * 9, [0, 4, 6] + [0] * 9, [0, 0, 0, 10] + [0] * 8
    short = cs.side([[group(20, 10, latency=a), group(20, 10, latency=b), group(20, 10, latency=c)]])
    assert short.latency[:4] == pytest.approx([0, 0.5, 0.5, 0], abs=2e-3)
    assert short.latency.sum() == pytest.approx(1.0)


def stats_sf(z: float) -> float:
    from scipy import stats

    return float(stats.norm.sf(z))
