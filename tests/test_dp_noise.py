"""The exact discrete Gaussian sampler against its pmf, its truncation, and the ring it must not wrap."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from agent import dpnoise
from agent.dpnoise import DeviceNoise, check_ring, discrete_gaussian_pmf, sample_noise
from agent.secagg.ring import Ring, RingOverflow
from agent.secagg.simulation import make_round, run_round


def _pmf_moments(sigma2: float):
    xs = np.arange(-int(40 * math.sqrt(sigma2)) - 10, int(40 * math.sqrt(sigma2)) + 11)
    p = discrete_gaussian_pmf(sigma2, xs)
    return xs, p, float(np.sum(xs**2 * p))


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(7, 3), Fraction(25)])
def test_samples_follow_the_exact_pmf(sigma2):
    n = 20000
    x = sample_noise(n, DeviceNoise(sigma2, 10**9))  # bound far out: the untruncated law
    xs, p, var = _pmf_moments(float(sigma2))
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
    assert abs(x.var() - var) < 6 * var * math.sqrt(2 / n)
    # chi-square goodness of fit, pooling the tails so every expected count is ≥ 5
    lo, hi = int(np.min(xs[p * n >= 5])), int(np.max(xs[p * n >= 5]))
    observed = [np.sum(x <= lo)] + [np.sum(x == v) for v in range(lo + 1, hi)] + [np.sum(x >= hi)]
    cdf = np.cumsum(p)
    expected = [cdf[xs == lo][0]] + [p[xs == v][0] for v in range(lo + 1, hi)] + [1 - cdf[xs == hi - 1][0]]
    expected = np.array(expected) * n
    _, pvalue = stats.chisquare(observed, expected * sum(observed) / expected.sum())
    assert pvalue > 1e-4
    # tail: P(|X| ≥ 2σ) matches the pmf
    k = math.ceil(2 * math.sqrt(float(sigma2)))
    tail = float(p[np.abs(xs) >= k].sum())
    assert abs(np.mean(np.abs(x) >= k) - tail) < 6 * math.sqrt(tail * (1 - tail) / n) + 1e-3


def test_bernoulli_exp_is_exact_in_rational_arithmetic():
    n = 40000
    freq = np.mean([dpnoise.bernoulli_exp(3, 2) for _ in range(n)])
    assert abs(freq - math.exp(-1.5)) < 5 * math.sqrt(math.exp(-1.5) / n)
    assert all(dpnoise.bernoulli_exp(0, 7) for _ in range(100))


def test_noise_never_exceeds_its_bound_and_zero_noise_is_zero():
    x = sample_noise(3000, DeviceNoise(Fraction(100), 3))
    assert np.all(np.abs(x) <= 3) and set(np.unique(x)) == {-3, -2, -1, 0, 1, 2, 3}
    assert not sample_noise(5, DeviceNoise(Fraction(0), 0)).any()
    with pytest.raises(ValueError):
        DeviceNoise(Fraction(-1), 0)


def test_truncation_bound_meets_its_failure_probability():
    s2 = Fraction(10**6)
    b = dpnoise.truncation_bound(s2, group_size=1000, length=172)
    per_sample = 2 * math.exp(-(b**2) / (2 * float(s2)))
    assert per_sample * 1000 * 172 <= 2.0**-40
    assert dpnoise.truncation_bound(s2, 1000, 172) > dpnoise.truncation_bound(s2, 10, 172)


def test_ring_refuses_parameters_that_could_wrap_and_holds_the_extremes():
    """At the largest group the ring admits, every device at its maximum value plus maximum noise
    (and every device at maximum negative noise) still decodes exactly; one more device is refused."""
    ring, m_max = Ring(16), 40
    noise = DeviceNoise(Fraction(4), 60)  # bound 60
    n_ok = (2**15 - 1) // (m_max + noise.bound)  # 327 devices would fit; use a small group here
    check_ring(ring, m_max, n_ok, noise)
    with pytest.raises(RingOverflow):
        check_ring(ring, m_max, n_ok + 1, noise)
    # A real round at a scaled-down edge: 8 devices, coordinate max 4000 + bound 95 fit 2^15.
    edge_noise = DeviceNoise(Fraction(4), 95)
    check_ring(ring, 4000, 8, edge_noise)
    with pytest.raises(RingOverflow):
        check_ring(ring, 4001, 8, edge_noise)
    members = make_round(8, 3, k=7, t=5, ring_bits=16, min_survivors=5)
    x = {u: np.array([4000 + 95, -95, 4000 - 95]) for u in range(1, 9)}
    _server, total = run_round(members, x)
    assert ring.centred(total).tolist() == [8 * 4095, -8 * 95, 8 * 3905]


def test_default_parameters_fit_a_32_bit_ring_at_a_thousand_devices():
    from agent.encoding import drift_layout, sensitivity
    from telemetry.accounting import calibrate

    layout = drift_layout([(f"f{i}", 20) for i in range(8)], 10)
    cal = calibrate(4.0, 288, 700, sensitivity(layout).l2, layout.length)  # 5-minute rounds, worst case
    noise = DeviceNoise.for_group(cal.sigma2_device, 1000, layout.length)
    check_ring(Ring(32), layout.max_coordinate, 1000, noise)
    fine = drift_layout([(f"f{i}", 20) for i in range(8)], 10, resolution_bits=20)  # 2^20 per histogram
    cal_fine = calibrate(4.0, 288, 700, sensitivity(fine).l2, fine.length)
    fine_noise = DeviceNoise.for_group(cal_fine.sigma2_device, 1000, fine.length)
    with pytest.raises(RingOverflow):
        check_ring(Ring(32), fine.max_coordinate, 1000, fine_noise)
    check_ring(Ring(48), fine.max_coordinate, 1000, fine_noise)
