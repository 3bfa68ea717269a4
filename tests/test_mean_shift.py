"""The day's mean-shift test on drift-round sums (telemetry/mean_shift.py): exact values, edges,
calibration under no drift and power, with the real encoding and the secure sum's noise model."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from agent import dpnoise
from agent.encoding import drift_layout, encode
from agent.secagg.simulation import make_round, run_round
from telemetry import detectability as det
from telemetry import mean_shift as ms
from telemetry.group_sums import GroupSum

EDGES = det.default_edges(8)
LAYOUT = drift_layout([("x", 8)], 1)
BLOCK = "feature:x"
M = 1024
SCORES = ms.normal_scores(det.bin_probabilities(EDGES))
MU0 = ms.reference_mean(SCORES, det.bin_probabilities(EDGES))


def _vectors(rng: np.random.Generator, n: int, shift: float, active: int | None = None) -> np.ndarray:
    """Sum of n devices' drift vectors (the first ``active`` ran 300 inferences of N(shift, 1))."""
    active = n if active is None else active
    total = np.zeros(LAYOUT.length, dtype=np.int64)
    for i in range(n):
        rows = rng.normal(shift, 1, 300)
        counts = np.bincount(np.clip(np.searchsorted(EDGES, rows, "right") - 1, 0, 7), minlength=8)
        total += encode(LAYOUT, i < active, {BLOCK: counts, "output": [300, 0]})
    return total


def _group(total: np.ndarray, n: int, sigma2: float, rng: np.random.Generator | None = None) -> GroupSum:
    if rng is not None and sigma2 > 0:
        total = total + np.rint(rng.normal(0, np.sqrt(n * sigma2), size=total.shape)).astype(np.int64)
    return GroupSum(LAYOUT, total, n, sigma2)


def test_group_statistic_is_the_centred_mean_over_the_known_survivors() -> None:
    h = np.zeros(LAYOUT.length, dtype=np.int64)
    h[:8] = [0, 0, 0, 2 * M, 0, 0, 0, 0]  # two active devices, all mass in bin 3
    h[8:10], h[-1] = [2 * M, 0], 2
    g = GroupSum(LAYOUT, h, survivors=4, sigma2_device=9.0)
    c = SCORES
    t, var = ms.group_statistic(g, BLOCK, c, mu_ref=0.1)
    assert t == pytest.approx((c[3] - 0.1) * 2 * M / (M * 4))  # diluted by the idle half: power, not level
    assert var == pytest.approx(np.sum((c - 0.1) ** 2) * 4 * 9.0 / (M * 4) ** 2)
    with pytest.raises(ValueError, match="bin scores"):
        ms.group_statistic(g, BLOCK, c[:-1], 0.0)


def test_normal_scores_reference_mean_and_refusal() -> None:
    s = ms.normal_scores([1, 1])
    assert s == pytest.approx([stats.norm.ppf(0.25), stats.norm.ppf(0.75)])
    assert ms.reference_mean(s, [1, 1]) == pytest.approx(0.0)
    assert ms.reference_mean(s, [3, 1]) == pytest.approx((3 * s[0] + s[1]) / 4)
    # a bin the reference never saw takes its neighbour's cumulative point; negative counts are noise
    assert ms.normal_scores([1, 0, -2, 1]) == pytest.approx(
        [stats.norm.ppf(0.25), 0.0, 0.0, stats.norm.ppf(0.75)], abs=1e-12
    )
    # scores are clipped: an end bin with a sliver of the reference cannot carry an enormous score
    tiny = ms.normal_scores([1e-30, 1, 1e-30])
    assert tiny[0] == -ms.SCORE_CLIP and tiny[2] == ms.SCORE_CLIP
    # the default edges' N(0, 1) bins: scores close to the bins' centres in σ, the mean about 0
    assert abs(MU0) < 1e-9
    assert np.all(np.diff(SCORES) > 0) and SCORES[0] > -2.5
    with pytest.raises(ValueError, match=r"^the reference histogram is empty$"):
        ms.normal_scores([0, -1])
    with pytest.raises(ValueError, match=r"^the reference histogram is empty$"):
        ms.reference_mean([0.0, 1.0], [0, 0])
    assert ms.normal_scores([0, 1, 0]) == pytest.approx([-ms.SCORE_CLIP, 0.0, ms.SCORE_CLIP])
    # shares whose cumulative sum passes 1 by rounding before an empty last bin: a score, not NaN
    rounding = ms.normal_scores([994, 736, 316, 64, 183, 272, 880, 0])
    assert np.all(np.isfinite(rounding)) and rounding[-1] == ms.SCORE_CLIP


def test_nothing_to_judge_is_none_not_no_drift() -> None:
    idle = GroupSum(LAYOUT, np.zeros(LAYOUT.length, dtype=np.int64), 20, 4.0)
    assert ms.day_test([], BLOCK, SCORES, MU0) is None
    assert ms.day_test([[idle], []], BLOCK, SCORES, MU0) is None
    # an idle window before a busy one is skipped, not the end of the day
    busy = _group(_vectors(np.random.default_rng(0), 20, 0.0), 20, 4.0)
    r = ms.day_test([[idle], [], [busy]], BLOCK, SCORES, MU0)
    assert r is not None and (r.windows, r.groups, r.devices) == (1, 1, 20)
    with pytest.raises(ValueError, match=r"^a group without survivors has no statistic$"):
        ms.group_statistic(GroupSum(LAYOUT, np.zeros(LAYOUT.length, dtype=np.int64), 0, 4.0), BLOCK, SCORES, 0.0)
    one = GroupSum(LAYOUT, _vectors(np.random.default_rng(1), 1, 0.0), 1, 4.0)  # a group of one survivor
    t, var = ms.group_statistic(one, BLOCK, SCORES, 0.0)
    assert var == pytest.approx(np.dot(SCORES, SCORES) * 4.0 / M**2) and abs(t) < 4


def test_exact_sums_judge_any_shift_unless_a_floor_is_set_and_no_shift_is_z_zero() -> None:
    rng = np.random.default_rng(7)
    moved = ms.day_test([[_group(_vectors(rng, 20, 0.3), 20, 0.0)]], BLOCK, SCORES, MU0)
    assert moved is not None and moved.sd == 0 and moved.z == np.inf and moved.drifted  # default floor: none
    zero = GroupSum(LAYOUT, np.zeros(LAYOUT.length, dtype=np.int64), 20, 0.0)
    exact = ms.day_test([[zero]], BLOCK, SCORES, MU0)
    assert exact is None  # an all-zero sum is idle
    same = np.zeros(LAYOUT.length, dtype=np.int64)
    same[:8] = [0, 0, 0, M, M, 0, 0, 0]  # two devices, symmetric about the reference's centre
    same[8], same[-1] = 2 * M, 2
    r = ms.day_test([[GroupSum(LAYOUT, same, 2, 0.0)]], BLOCK, SCORES, MU0)
    assert r is not None and r.sd == 0 and abs(r.shift) < 1e-12 and r.z == 0.0 and not r.drifted


def test_variance_is_the_median_factor_times_the_noise_over_windows() -> None:
    rng = np.random.default_rng(1)
    sigma2, n = 400.0, 20
    windows = [[_group(_vectors(rng, n, 0.0), n, sigma2) for _ in range(3)] for _ in range(4)]
    r = ms.day_test(windows, BLOCK, SCORES, MU0)
    assert r is not None and (r.windows, r.groups, r.devices) == (4, 12, 240)
    d = SCORES - MU0
    one = np.dot(d, d) * n * sigma2 / (M * n) ** 2
    spread_df = 4 * 2  # below MIN_SPREAD_DF: the noise alone
    assert spread_df < ms.MIN_SPREAD_DF
    assert r.sd == pytest.approx(np.sqrt(4 * det.median_variance_factor(3) * one / 16))
    assert r.level == pytest.approx(stats.norm.isf(det.DRIFT_ALPHA / 2))
    with_ref = ms.day_test(windows, BLOCK, SCORES, MU0, reference_var=r.sd**2)
    assert with_ref is not None and with_ref.sd == pytest.approx(r.sd * np.sqrt(2))


def test_the_groups_spread_counts_once_there_are_enough_of_them() -> None:
    """Devices that differ more than the noise says (group means far apart) widen the variance, from
    exactly MIN_SPREAD_DF residual degrees of freedom on."""
    rng = np.random.default_rng(2)
    n = 20

    def day(windows: int, groups: int) -> ms.MeanShift:
        ws = [[_group(_vectors(rng, n, s), n, 1.0) for s in rng.choice([-1.0, 1.0], groups)] for _ in range(windows)]
        r = ms.day_test(ws, BLOCK, SCORES, MU0)
        assert r is not None
        return r

    noise_only = day(3, 3)  # 6 residual df: the (tiny) noise alone, so the spread shows as drift
    spread = day(5, 3)  # 10 residual df: the spread counts
    assert spread.sd > 20 * noise_only.sd
    assert abs(spread.z) < spread.level


def test_the_spread_is_the_pooled_within_window_variance() -> None:
    """Groups that all moved alike: their spread about each window's own mean is small, so a common
    shift is still found (residuals are taken about the window's mean, not about zero)."""
    rng = np.random.default_rng(8)
    ws = [[_group(_vectors(rng, 20, 1.0), 20, 1.0) for _ in range(3)] for _ in range(5)]
    r = ms.day_test(ws, BLOCK, SCORES, MU0)
    assert r is not None and r.drifted
    ts = [[ms.group_statistic(g, BLOCK, SCORES, MU0)[0] for g in w] for w in ws]
    spread = sum(float(np.sum((np.asarray(t) - np.mean(t)) ** 2)) for t in ts) / 10
    noise = ms.group_statistic(ws[0][0], BLOCK, SCORES, MU0)[1]
    assert spread > noise  # so the spread is what counts here
    assert r.sd == pytest.approx(np.sqrt(5 * det.median_variance_factor(3) * spread / 25))


def test_exact_sums_with_a_tiny_shift_are_not_drift_below_the_floor() -> None:
    rng = np.random.default_rng(3)
    ws = [[_group(_vectors(rng, 20, 0.02), 20, 0.0)] for _ in range(2)]
    r = ms.day_test(ws, BLOCK, SCORES, MU0, min_shift=0.1)
    assert r is not None and r.sd == 0 and abs(r.z) == np.inf
    assert abs(r.shift) < 0.1 and not r.drifted
    at = ms.MeanShift(shift=0.1, sd=0.01, z=10.0, level=2.5, min_shift=0.1, windows=1, groups=1, devices=1)
    assert not at.drifted  # the floor itself is not above it
    above = ms.MeanShift(shift=0.1001, sd=0.01, z=10.01, level=2.5, min_shift=0.1, windows=1, groups=1, devices=1)
    assert above.drifted
    level = ms.MeanShift(shift=1.0, sd=0.4, z=2.5, level=2.5, min_shift=0.0, windows=1, groups=1, devices=1)
    assert not level.drifted  # z exactly at the level is not above it


def test_one_spoiled_group_per_window_cannot_raise_an_alarm() -> None:
    rng = np.random.default_rng(4)
    sigma2, n = 2500.0, 20
    spoiled = np.zeros(LAYOUT.length, dtype=np.int64)
    spoiled[7] = 20 * M  # every device's mass in the top bin: a huge shift
    spoiled[8], spoiled[-1] = 20 * M, 20
    ws = [
        [_group(_vectors(rng, n, 0.0), n, sigma2, rng) for _ in range(2)] + [GroupSum(LAYOUT, spoiled, n, sigma2)]
        for _ in range(6)
    ]
    r = ms.day_test(ws, BLOCK, SCORES, MU0)
    assert r is not None and not r.drifted
    alone = ms.day_test([[GroupSum(LAYOUT, spoiled, n, sigma2)]] * 6, BLOCK, SCORES, MU0)
    assert alone is not None and alone.drifted  # the same group alone is what the median outvotes


@pytest.mark.slow
def test_false_alarms_and_power_match_the_stated_level() -> None:
    """300 simulated days of 6 windows × 3 groups of 20 devices at a noise that hides one device:
    false alarms within sampling error of alpha = 5 %, and a 1σ shift found nearly always."""
    rng = np.random.default_rng(5)
    sigma2, n, days = 40_000.0, 20, 300
    base = [_vectors(rng, n, 0.0) for _ in range(30)]
    moved = [_vectors(rng, n, 1.0) for _ in range(30)]

    def day(pool: list[np.ndarray]) -> ms.MeanShift:
        ws = [[_group(pool[rng.integers(len(pool))], n, sigma2, rng) for _ in range(3)] for _ in range(6)]
        r = ms.day_test(ws, BLOCK, SCORES, MU0, alpha=0.05)
        assert r is not None
        return r

    false = sum(day(base).drifted for _ in range(days))
    assert 3 <= false <= 30  # expected 15 (binomial sd 3.8)
    hits = sum(day(moved).drifted for _ in range(100))
    assert hits >= 90


def test_a_real_secure_sum_with_real_noise_reads_as_no_drift() -> None:
    rng = np.random.default_rng(6)
    n, sigma2 = 20, Fraction(900)
    noise = dpnoise.DeviceNoise.for_group(sigma2, n, LAYOUT.length)
    members = make_round(n, LAYOUT.length)
    inputs = {u: _vectors(rng, 1, 0.0) + dpnoise.sample_noise(LAYOUT.length, noise) for u in range(1, n + 1)}
    _, total = run_round(members, inputs)
    assert total is not None
    g = GroupSum(LAYOUT, members.config.ring.centred(total), n, float(sigma2))
    r = ms.day_test([[g]], BLOCK, SCORES, MU0)
    assert r is not None and abs(r.z) < 4.5
