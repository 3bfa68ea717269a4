"""Reading group sums (telemetry/group_sums.py) against the real encoding, noise and secure sum."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from agent import dpnoise
from agent.encoding import COUNT, FRACTION, HISTOGRAM, Block, Layout, drift_layout, encode, health_layout
from agent.secagg.simulation import make_round, run_round
from telemetry import group_sums as gs

HEALTH = health_layout(4)
M = 1024


def _device(rng: np.random.Generator, active: bool, err: float) -> np.ndarray:
    lat = rng.integers(0, 50, size=4)
    return encode(HEALTH, active, {"latency": lat}, {"error_fraction": (err * 100, 100)})


def test_exact_sum_gives_the_active_count_the_mean_distribution_and_the_mean_fraction() -> None:
    rng = np.random.default_rng(1)
    vecs = [_device(rng, i < 7, err=i / 20) for i in range(10)]
    g = gs.GroupSum(HEALTH, np.sum(vecs, axis=0), survivors=10, sigma2_device=0.0)
    assert g.active() == 7 and not g.is_idle()
    lat = np.mean([v[:4] / M for v in vecs[:7]], axis=0)
    assert np.allclose(g.distribution("latency"), lat / lat.sum())
    assert g.fraction("error_fraction") == pytest.approx(np.mean([i / 20 for i in range(7)]), abs=1 / M)
    assert g.noise_var == 0 and g.bin_var("latency") == 0


def test_idle_group_reads_as_idle_and_is_left_out_of_the_medians() -> None:
    idle = gs.GroupSum(HEALTH, np.zeros(HEALTH.length, dtype=np.int64), survivors=20, sigma2_device=0.0)
    assert idle.active() == 0 and idle.is_idle()
    assert idle.fraction("error_fraction") == 0.0
    assert np.allclose(idle.distribution("latency"), 0.25)
    assert idle.bin_var("latency") == float("inf")
    rng = np.random.default_rng(2)
    busy = gs.GroupSum(HEALTH, np.sum([_device(rng, True, 0.1) for _ in range(5)], axis=0), 5, 0.0)
    p = gs.pool([idle, busy])
    assert (p.groups, p.informative, p.devices, p.active) == (2, 1, 25, 5.0)
    assert p.fractions["error_fraction"] == pytest.approx(0.1, abs=1 / M)


def test_idle_threshold_is_half_a_device() -> None:
    layout = Layout((Block("participation", COUNT, 1, 4),))
    below = gs.GroupSum(layout, np.array([1]), 3, 0.0)
    at = gs.GroupSum(layout, np.array([2]), 3, 0.0)
    assert below.active() == 0.25 and below.is_idle()
    assert at.active() == gs.IDLE_BELOW == 0.5 and not at.is_idle()


def test_active_count_is_clipped_to_the_survivors_and_to_zero() -> None:
    big = gs.GroupSum(HEALTH, np.array([10 * M, 0, 0, 0, 0, 10]), survivors=3, sigma2_device=0.0)
    assert big.active() == 3
    neg = gs.GroupSum(HEALTH, np.array([-M, 0, 0, 0, 0, -1]), survivors=3, sigma2_device=0.0)
    assert neg.active() == 0


def test_fraction_is_clipped_to_the_unit_interval() -> None:
    over = gs.GroupSum(HEALTH, np.array([M, 0, 0, 0, 3 * M, 1]), survivors=1, sigma2_device=0.0)
    assert over.fraction("error_fraction") == 1.0
    under = gs.GroupSum(HEALTH, np.array([M, 0, 0, 0, -M, 1]), survivors=1, sigma2_device=0.0)
    assert under.fraction("error_fraction") == 0.0


def test_refuses_a_wrong_length_a_wrong_block_kind_and_mixed_layouts() -> None:
    with pytest.raises(ValueError, match="length"):
        gs.GroupSum(HEALTH, np.zeros(3, dtype=np.int64), 1, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        gs.GroupSum(HEALTH, np.zeros(HEALTH.length, dtype=np.int64), -1, 0.0)
    g = gs.GroupSum(HEALTH, np.zeros(HEALTH.length, dtype=np.int64), 1, 0.0)
    with pytest.raises(ValueError, match="not a histogram"):
        g.distribution("error_fraction")
    with pytest.raises(ValueError, match="not a fraction"):
        g.fraction("latency")
    other = gs.GroupSum(health_layout(5), np.zeros(7, dtype=np.int64), 1, 0.0)
    with pytest.raises(ValueError, match="share a layout"):
        gs.pool([g, other])


def test_empty_pool() -> None:
    p = gs.pool([])
    assert (p.groups, p.informative, p.devices, p.active, p.fractions) == (0, 0, 0, 0.0, {})


def test_one_spoiled_group_cannot_move_the_median_beyond_the_honest_groups() -> None:
    rng = np.random.default_rng(3)
    honest = [
        gs.GroupSum(HEALTH, np.sum([_device(rng, True, e) for _ in range(20)], axis=0), 20, 0.0)
        for e in (0.01, 0.02, 0.03, 0.04)
    ]
    spoiled = gs.GroupSum(HEALTH, np.array([20 * M, 0, 0, 0, 20 * M, 20]), 20, 0.0)  # every device "failed"
    p = gs.pool([*honest, spoiled])
    assert 0.02 - 1 / M <= p.fractions["error_fraction"] <= 0.03 + 1 / M
    honest_lat = [h.distribution("latency")[0] for h in honest]
    assert min(honest_lat) <= p.distributions["latency"][0] <= max(honest_lat)
    assert p.distributions["latency"].sum() == pytest.approx(1.0)


def test_noisy_secure_sums_read_back_within_their_stated_noise() -> None:
    """Real encoding, real exact discrete Gaussian noise, the real SecAgg+ sum: each group's error
    rate and active count land within a few of their stated standard deviations."""
    rng = np.random.default_rng(4)
    sigma2 = Fraction(400)
    n = 20
    noise = dpnoise.DeviceNoise.for_group(sigma2, n, HEALTH.length)
    members = make_round(n, HEALTH.length)
    inputs = {u: _device(rng, u <= 15, 0.2) + dpnoise.sample_noise(HEALTH.length, noise) for u in range(1, n + 1)}
    _, total = run_round(members, inputs)
    assert total is not None
    g = gs.GroupSum(HEALTH, members.config.ring.centred(total), n, float(sigma2))
    assert abs(g.active() - 15) < 5 * np.sqrt(g.active_var())
    assert abs(g.fraction("error_fraction") - 0.2) < 5 * np.sqrt(g.fraction_var("error_fraction")) + 1 / M


def test_stated_bin_variance_matches_monte_carlo() -> None:
    """The per-bin variance the drift threshold uses equals the spread seen over many noisy groups."""
    layout = drift_layout([("x", 5)], 2)
    rng = np.random.default_rng(5)
    sigma2, n, a = 900.0, 20, 20
    base = np.sum([encode(layout, True, {"feature:x": [1, 2, 3, 2, 1], "output": [1, 1, 0]}) for _ in range(a)], 0)
    draws = []
    for _ in range(1500):
        total = base + np.rint(rng.normal(0, np.sqrt(n * sigma2), size=layout.length)).astype(np.int64)
        draws.append(gs.GroupSum(layout, total, n, sigma2).distribution("feature:x"))
    g = gs.GroupSum(layout, base, n, sigma2)
    observed = np.var(np.stack(draws), axis=0).mean()
    assert observed == pytest.approx(g.bin_var("feature:x"), rel=0.25)


def test_active_weighs_each_block_by_scale_squared_over_size() -> None:
    layout = Layout((Block("a", HISTOGRAM, 2, 4), Block("b", HISTOGRAM, 4, 4), Block("p", COUNT, 1, 1)))
    g = gs.GroupSum(layout, np.array([5, 3, 4, 4, 4, 4, 3]), survivors=9, sigma2_device=2.0)
    # masses say 2 (a), 4 (b) and 3 (p) devices; weights 16/2, 16/4 and 1
    assert g.active() == pytest.approx((8 * 2 + 4 * 4 + 1 * 3) / 13)
    assert g.active_var() == pytest.approx(9 * 2.0 / 13)
    only_fraction = gs.GroupSum(Layout((Block("f", FRACTION, 1, 4),)), np.array([3]), 2, 1.0)
    assert only_fraction.active() == 0.0 and only_fraction.active_var() == float("inf")


def test_variances_of_a_distribution_bin_and_a_fraction() -> None:
    g = gs.GroupSum(HEALTH, np.array([M // 2, 0, 0, 0, M // 4, 0]), survivors=3, sigma2_device=5.0)
    a = g.active()
    assert 0 < a < 1  # half a device's mass: variances are finite (only a = 0 is "no figure")
    assert g.bin_var("latency") == pytest.approx(15.0 / (M * a) ** 2)
    assert g.fraction_var("error_fraction") == pytest.approx(15.0 / (M * a) ** 2)
    idle = gs.GroupSum(HEALTH, np.zeros(HEALTH.length, dtype=np.int64), 3, 5.0)
    assert idle.fraction_var("error_fraction") == float("inf")


def test_distribution_clips_noise_below_zero_and_keeps_a_mass_of_one() -> None:
    g = gs.GroupSum(HEALTH, np.array([3, -2, 1, 0, 0, 0]), survivors=1, sigma2_device=0.0)
    assert g.distribution("latency") == pytest.approx([0.75, 0.0, 0.25, 0.0])
    one = gs.GroupSum(HEALTH, np.array([0, 1, 0, 0, 0, 0]), survivors=1, sigma2_device=0.0)
    assert one.distribution("latency") == pytest.approx([0.0, 1.0, 0.0, 0.0])


def test_refusal_messages_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^sum of length 3, the layout says 6$"):
        gs.GroupSum(HEALTH, np.zeros(3, dtype=np.int64), 1, 0.0)
    with pytest.raises(ValueError, match=r"^survivors and noise variance must be non-negative$"):
        gs.GroupSum(HEALTH, np.zeros(HEALTH.length, dtype=np.int64), 1, -1.0)
    g = gs.GroupSum(HEALTH, np.zeros(HEALTH.length, dtype=np.int64), 1, 0.0)
    other = gs.GroupSum(health_layout(5), np.zeros(7, dtype=np.int64), 1, 0.0)
    with pytest.raises(ValueError, match=r"^groups of one pool must share a layout$"):
        gs.pool([g, other])


def test_pool_takes_coordinate_medians_renormalised_and_averages_the_variances() -> None:
    def group(lat: list[int], err: int, n: int, s2: float) -> gs.GroupSum:
        return gs.GroupSum(HEALTH, np.array([*lat, err, n]), survivors=n, sigma2_device=s2)

    a = group([M, 0, 0, 0], 0, 1, 1.0)
    b = group([0, M, 0, 0], M // 2, 1, 2.0)
    c = group([M // 2, M // 2, 0, 0], M, 1, 3.0)
    p = gs.pool([a, b, c])
    # per bin: medians of (1, 0, 0.5) and (0, 1, 0.5) = 0.5 and 0.5: already a distribution
    assert p.distributions["latency"] == pytest.approx([0.5, 0.5, 0.0, 0.0])
    d = group([M, 0, 0, 0], 0, 1, 1.0)
    q = gs.pool([a, b, d])  # medians (1, 0, 0, 0) of bins → renormalised stays (1, 0, 0, 0)
    assert q.distributions["latency"] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    e = group([0, 0, M, 0], 0, 1, 1.0)
    r = gs.pool([a, b, e])  # every bin's median is 0: no distribution left, uniform
    assert r.distributions["latency"] == pytest.approx([0.25] * 4)
    h = M // 2
    spread = gs.pool([group([h, h, 0, 0], 0, 1, 1.0), group([h, 0, h, 0], 0, 1, 1.0), group([0, h, h, 0], 0, 1, 1.0)])
    assert spread.distributions["latency"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])  # medians 0.5 × 3, renormalised
    factor = 3.14159265 / 6  # median_variance_factor(3) = π / 2G
    assert p.bin_var["latency"] == pytest.approx(factor * np.mean([1.0, 2.0, 3.0]) / M**2, rel=1e-6)
    assert p.fraction_var["error_fraction"] == pytest.approx(factor * 2.0 / M**2, rel=1e-6)
    assert p.fractions["error_fraction"] == pytest.approx(0.5)
    single = gs.pool([b])
    assert single.informative == 1 and single.fractions["error_fraction"] == pytest.approx(0.5)
    empty = gs.pool([])
    assert (empty.distributions, empty.bin_var, empty.fractions, empty.fraction_var) == ({}, {}, {}, {})
