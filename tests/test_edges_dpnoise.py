"""Edges of the exact discrete Gaussian sampler: each step of Canonne–Kamath–Steinke's algorithms with
the random source scripted (the one true boundary: the OS's secure randomness), the truncation bound
against its formula, resampling beyond the bound, and the ring check at equality.

Written from mutation testing (`make mutation`): the pmf tests in test_dp_noise.py take seconds each
and are statistical; these pin every branch deterministically. Pure: no database.
"""

import math
from fractions import Fraction

import numpy as np
import pytest

from agent import dpnoise
from agent.dpnoise import DeviceNoise
from agent.secagg.ring import Ring, RingOverflow


class Script:
    """Stands in for ``secrets``' randrange: hands out the given draws and records each bound asked."""

    def __init__(self, *draws: int) -> None:
        self.draws, self.bounds = list(draws), []

    def __call__(self, bound: int) -> int:
        value = self.draws.pop(0)
        assert 0 <= value < bound, (value, bound)
        self.bounds.append(bound)
        return value


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch):
    def use(*draws: int) -> Script:
        s = Script(*draws)
        monkeypatch.setattr(dpnoise, "_randbelow", s)
        return s

    return use


def test_truncation_constant() -> None:
    assert dpnoise.TRUNCATION_LOG2 == 40


def test_bernoulli_unit_counts_its_draws(script) -> None:
    s = script(0, 3)  # first draw below num (k → 2), second not: k = 2 is even → False
    assert dpnoise._bernoulli_exp_unit(1, 2) is False
    assert s.bounds == [2, 4]
    s = script(1)  # first draw not below num: k = 1 → True
    assert dpnoise._bernoulli_exp_unit(1, 2) is True
    assert s.bounds == [2]
    s = script(0, 1, 7)  # two draws below num, then k = 3 → True
    assert dpnoise._bernoulli_exp_unit(2, 3) is True
    assert s.bounds == [3, 6, 9]
    s = script(0)
    assert dpnoise._bernoulli_exp_unit(0, 5) is True  # exp(0) = 1: no draw is below 0
    assert s.bounds == [5]


def test_bernoulli_exp_splits_off_whole_units(script) -> None:
    # A True Bernoulli(exp(−1)): randbelow(1) = 0 < 1 (k 2), randbelow(2) = 0 < 1 (k 3), randbelow(3) = 1 (stop, odd).
    # A False one: randbelow(1) = 0 (k 2), randbelow(2) = 1 (stop, even).
    s = script(0, 0, 1, 0, 0, 1, 2)  # γ = 7/3: two whole units, both True, then Bernoulli(exp(−1/3)) True
    assert dpnoise.bernoulli_exp(7, 3) is True
    assert s.bounds == [1, 2, 3, 1, 2, 3, 3]
    s = script(0, 1)  # the first whole unit fails: stop at once
    assert dpnoise.bernoulli_exp(7, 3) is False
    assert s.bounds == [1, 2]
    s = script(0, 0, 1, 0, 1)  # the second whole unit fails
    assert dpnoise.bernoulli_exp(7, 3) is False
    assert s.bounds == [1, 2, 3, 1, 2]
    s = script(2)
    assert dpnoise.bernoulli_exp(1, 3) is True  # no whole unit
    assert s.bounds == [3]
    s = script(0, 0, 1, 0)  # γ = 1 exactly: one whole unit, then Bernoulli(exp(−0/3)), always True
    assert dpnoise.bernoulli_exp(3, 3) is True
    assert s.bounds == [1, 2, 3, 3]


def test_discrete_laplace_steps(script) -> None:
    # t = 3: u = 2; accept Bernoulli(exp(−2/3)) with draw 2 (k = 1); v: Bernoulli(exp(−1)) fails at once
    # (draw 0 < 1 → k 2, draw 1 → even → False), so v = 0; sign draw 1 → negative → −2
    s = script(2, 2, 0, 1, 1)
    assert dpnoise.discrete_laplace(3) == -2
    assert s.bounds == [3, 3, 1, 2, 2]


def test_discrete_laplace_adds_whole_periods_and_never_gives_negative_zero(script) -> None:
    # t = 2. u = 1; Bernoulli(exp(−1/2)): draw 1 ≥ 1 → True. v loop: Bernoulli(exp(−1)) True once
    # (unit(1,1): 0, 0, 1; unit(0,1): 0), then False (0, 1). x = 1 + 2·1 = 3; sign draw 0 → positive.
    s = script(1, 1, 0, 0, 1, 0, 0, 1, 0)
    assert dpnoise.discrete_laplace(2) == 3
    assert s.bounds == [2, 2, 1, 2, 3, 1, 1, 2, 2]
    # u = 0 accepted, v = 0, negative sign: −0 is rejected and the loop starts over; then +0
    s = script(0, 0, 0, 1, 1, 0, 0, 0, 1, 0)
    assert dpnoise.discrete_laplace(2) == 0
    assert s.bounds == [2, 2, 1, 2, 2, 2, 2, 1, 2, 2]
    # u rejected first (Bernoulli(exp(−1/2)) with draw 0 < 1 then 1 → k 2 → False), then u = 0 → 0
    s = script(1, 0, 1, 0, 0, 0, 1, 0)
    assert dpnoise.discrete_laplace(2) == 0
    assert s.bounds == [2, 2, 4, 2, 2, 1, 2, 2]


def test_discrete_gaussian_uses_floor_sigma_plus_one(script, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def laplace(t: int) -> int:
        seen.append(t)
        return 3

    monkeypatch.setattr(dpnoise, "discrete_laplace", laplace)
    calls = []

    def bern(num: int, den: int) -> bool:
        calls.append((num, den))
        return True

    monkeypatch.setattr(dpnoise, "bernoulli_exp", bern)
    assert dpnoise.discrete_gaussian(Fraction(9, 2)) == 3  # σ² = 4.5: ⌊σ⌋ + 1 = 3
    assert seen == [3]
    # γ = (|y|·t·den − num)² / (2·num·t²·den) with y = 3, t = 3, σ² = 9/2
    assert calls == [((3 * 3 * 2 - 9) ** 2, 2 * 9 * 9 * 2)]
    seen.clear()
    calls.clear()
    assert dpnoise.discrete_gaussian(Fraction(4)) == 3  # σ = 2 exactly: t = 3
    assert seen == [3] and calls == [((3 * 3 - 4) ** 2, 2 * 4 * 9)]


def test_discrete_gaussian_rejects_until_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    ys = iter([-5, 2])
    monkeypatch.setattr(dpnoise, "discrete_laplace", lambda t: next(ys))
    answers = iter([False, True])
    monkeypatch.setattr(dpnoise, "bernoulli_exp", lambda num, den: next(answers))
    assert dpnoise.discrete_gaussian(Fraction(1)) == 2


@pytest.mark.parametrize(
    ("sigma2", "group", "length", "log2"),
    [
        (Fraction(9), 20, 50, 40),
        (Fraction(1, 3), 1, 1, 10),
        *((Fraction(s2), g, 7, 40) for s2 in (1, 50, 2000) for g in (1, 3, 30)),
    ],
)
def test_truncation_bound_formula(sigma2: Fraction, group: int, length: int, log2: int) -> None:
    per_sample = log2 * math.log(2) + math.log(2 * group * length)
    expected = math.ceil(math.sqrt(2 * float(sigma2) * per_sample)) + 1
    assert dpnoise.truncation_bound(sigma2, group, length, log2) == expected
    # the bound really makes the union bound hold: 2·n·exp(−B²/2σ²) ≤ 2^−log2
    b = expected
    assert 2 * group * length * math.exp(-(b**2) / (2 * float(sigma2))) <= 2.0**-log2
    assert dpnoise.truncation_bound(Fraction(9), 20, 50) == dpnoise.truncation_bound(Fraction(9), 20, 50, 40)


def test_device_noise_bounds() -> None:
    assert DeviceNoise(Fraction(0), 0).bound == 0
    for args in ((Fraction(-1), 0), (Fraction(1), -1)):
        with pytest.raises(ValueError) as info:
            DeviceNoise(*args)
        assert str(info.value) == "noise variance and bound must be non-negative"
    n = DeviceNoise.for_group(Fraction(9), 20, 50)
    assert n == DeviceNoise(Fraction(9), dpnoise.truncation_bound(Fraction(9), 20, 50))
    assert DeviceNoise.for_group(0, 20, 50) == DeviceNoise(Fraction(0), 0)
    half = DeviceNoise.for_group(Fraction(1, 2), 20, 50)
    assert half.bound == dpnoise.truncation_bound(Fraction(1, 2), 20, 50) > 0
    assert isinstance(DeviceNoise.for_group(2, 1, 1).sigma2, Fraction)


def test_zero_noise_is_zero_without_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dpnoise, "discrete_gaussian", lambda s2: pytest.fail("drew noise"))
    out = dpnoise.sample_noise(4, DeviceNoise(Fraction(0), 0))
    assert out.tolist() == [0, 0, 0, 0] and out.dtype == np.int64


def test_samples_beyond_the_bound_are_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([4, -4, 3, -3, 5, 0])
    monkeypatch.setattr(dpnoise, "discrete_gaussian", lambda s2: next(draws))
    out = dpnoise.sample_noise(3, DeviceNoise(Fraction(1), 3))
    assert out.tolist() == [3, -3, 0]
    assert out.dtype == np.int64


def test_pmf_is_the_normalised_gaussian_kernel() -> None:
    xs = np.arange(-60, 61)
    kernel = np.exp(-(xs.astype(float) ** 2) / (2 * 7.5))
    assert dpnoise.discrete_gaussian_pmf(7.5, np.array([0, 1, -3])) == pytest.approx(
        kernel[[60, 61, 57]] / kernel.sum(), rel=1e-12
    )
    assert dpnoise.discrete_gaussian_pmf(0.3, np.arange(-20, 21)).sum() == pytest.approx(1.0, abs=1e-15)
    # a tiny and a large variance are normalised over a range that holds their mass
    assert dpnoise.discrete_gaussian_pmf(0.01, np.array([0, 1])) == pytest.approx([1.0, np.exp(-50.0)], rel=1e-12)
    wide = np.arange(-1000, 1001)
    assert dpnoise.discrete_gaussian_pmf(10_000.0, wide).sum() == pytest.approx(1.0, abs=1e-12)


def test_group_sum_bound_and_ring_check_at_equality() -> None:
    noise = DeviceNoise(Fraction(1), 7)
    assert dpnoise.max_abs_group_sum(1024, 30, noise) == 30 * (1024 + 7)
    # 2^15 = 32768: 32 devices × (1017 + 7) = 32768 → refused; one less coordinate → 32736 passes
    dpnoise.check_ring(Ring(16), 1016, 32, noise)
    with pytest.raises(RingOverflow):
        dpnoise.check_ring(Ring(16), 1017, 32, noise)
