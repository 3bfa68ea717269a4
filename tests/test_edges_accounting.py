"""Edges of the privacy accounting: the distributed-discrete-Gaussian charge against its formula,
composition against zCDP's additivity, δ used up exactly, the join tolerance, and calibration's
refusals and grid.

Written from mutation testing (`make mutation`): each test pins a behaviour a one-token change to
``telemetry/accounting.py`` would otherwise alter silently. Pure: no database.
"""

import math
from fractions import Fraction

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from telemetry import accounting as acc
from telemetry.accounting import RoundCharge


def test_policy_constants() -> None:
    assert (acc.DEFAULT_DELTA, acc.DEFAULT_EPSILON_DAY, acc.SIGMA2_GRID) == (1e-6, 4.0, 1000)
    assert acc.BUDGETS == ("drift", "health")
    assert acc.TRUNCATION_DELTA == 2.0**-40


@pytest.mark.parametrize(("n", "s2"), [(5, 0.1), (40, 0.02), (2, 1.0)])
def test_ddg_tau_formula(n: int, s2: float) -> None:
    k = np.arange(1, n)
    assert acc.ddg_tau(n, s2) == pytest.approx(10 * np.sum(np.exp(-2 * np.pi**2 * s2 * k / (k + 1))), rel=1e-12)


def test_ddg_tau_of_one_device_or_none_is_zero() -> None:
    assert acc.ddg_tau(1, 0.1) == 0.0
    assert acc.ddg_tau(0, 0.1) == 0.0


def test_round_charge_formula() -> None:
    c = RoundCharge.for_round(3.0, Fraction(1, 4), 5, 7)
    assert c.rho == pytest.approx(9.0 / (2 * 5 * 0.25), rel=1e-15)
    assert c.xi == pytest.approx(acc.ddg_tau(5, 0.25) * 7, rel=1e-15)
    assert c.delta == 2.0**-40
    assert c.event() == dp_accounting.ZCDpEvent(rho=c.rho, xi=c.xi)
    assert RoundCharge(0.5).xi == 0.0 and RoundCharge(0.5).delta == 0.0


@pytest.mark.parametrize(("s2", "t"), [(0.0, 5), (-1.0, 5), (1.0, 0)])
def test_round_charge_refusals(s2: float, t: int) -> None:
    with pytest.raises(ValueError) as info:
        RoundCharge.for_round(1.0, s2, t, 3)
    assert str(info.value) == "a round needs positive noise and at least one survivor"


def test_one_survivor_is_enough() -> None:
    assert RoundCharge.for_round(1.0, 2.0, 1, 3).rho == 0.25


def test_composition_is_zcdp_additivity() -> None:
    c = RoundCharge(rho=0.01, xi=0.0, delta=1e-9)
    independent = RdpAccountant()
    independent.compose(dp_accounting.ZCDpEvent(rho=0.05, xi=0.0))
    assert acc.epsilon([c] * 5, 1e-6) == pytest.approx(independent.get_epsilon(1e-6 - 5e-9), rel=1e-9)
    assert acc.epsilon([c] * 5) == acc.epsilon([c] * 5, 1e-6)
    assert acc.combined_epsilon([c] * 2, [c] * 3) == acc.epsilon([c] * 5)
    assert acc.combined_epsilon([c] * 2, [c] * 3, 1e-5) == acc.epsilon([c] * 5, 1e-5)


def test_epsilon_edges() -> None:
    assert acc.epsilon([]) == 0.0
    c = RoundCharge(rho=0.01, xi=0.0, delta=2.5e-7)
    assert acc.epsilon([c] * 4, 1e-6) == math.inf  # truncation used up all of δ, exactly
    assert math.isfinite(acc.epsilon([c] * 3, 1e-6))


def test_may_join_with_its_tolerance() -> None:
    c = RoundCharge(rho=0.02)
    e = acc.epsilon([c] * 3)
    assert acc.may_join([c, c], c, e) is True
    assert acc.may_join([c, c], c, e / (1 + 0.5e-9)) is True  # within the float tolerance
    assert acc.may_join([c, c], c, e / (1 + 2e-9)) is False
    assert acc.may_join([c, c], c, e / 2) is False
    # exactly at the tolerance: still allowed
    limit = e / (1 + 1e-9)
    while limit * (1 + 1e-9) < e:
        limit = math.nextafter(limit, math.inf)
    while limit * (1 + 1e-9) > e:
        limit = math.nextafter(limit, 0.0)
    if limit * (1 + 1e-9) == e:
        assert acc.may_join([c, c], c, limit) is True
    assert acc.may_join([], c, acc.epsilon([c])) is True
    assert acc.may_join([c, c], c, acc.epsilon([c] * 3, 1e-3), delta=1e-3) is True
    assert acc.may_join([c, c], c, acc.epsilon([c] * 3, 1e-3)) is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 24, 20, 1.0, 10), "epsilon_day must be positive and finite"),
        ((-1.0, 24, 20, 1.0, 10), "epsilon_day must be positive and finite"),
        ((math.inf, 24, 20, 1.0, 10), "epsilon_day must be positive and finite"),
        ((math.nan, 24, 20, 1.0, 10), "epsilon_day must be positive and finite"),
        ((4.0, 24, 20, 1.0, 10, 0.0), "need 0 < delta < 1"),
        ((4.0, 24, 20, 1.0, 10, 1.0), "need 0 < delta < 1"),
        ((4.0, 0, 20, 1.0, 10), "need 0 < delta < 1"),
        ((4.0, 24, 0, 1.0, 10), "need 0 < delta < 1"),
        ((4.0, 24, 20, 0.0, 10), "need 0 < delta < 1"),
        ((4.0, 4, 20, 1.0, 10, 4 * 2.0**-40), "delta is too small for this many rounds' truncation"),
    ],
)
def test_calibrate_refusals(args: tuple, message: str) -> None:
    with pytest.raises(ValueError) as info:
        acc.calibrate(*args)
    assert str(info.value).startswith(message)
    assert str(info.value) in (
        "epsilon_day must be positive and finite",
        "need 0 < delta < 1, rounds_per_day ≥ 1, min_survivors ≥ 1, sensitivity > 0",
        "delta is too small for this many rounds' truncation",
    )


def test_calibration_is_the_smallest_grid_noise_within_budget() -> None:
    cal = acc.calibrate(2.0, 6, 10, 3.0, 12)
    assert 1000 % cal.sigma2_device.denominator == 0
    assert cal.epsilon_reached <= 2.0
    below = cal.sigma2_device - Fraction(1, 1000)
    assert acc.epsilon_day_for(below, 6, 10, 3.0, 12) > 2.0
    assert acc.epsilon_day_for(cal.sigma2_device, 6, 10, 3.0, 12) == cal.epsilon_reached
    assert (cal.epsilon_day, cal.delta, cal.rounds_per_day, cal.min_survivors) == (2.0, 1e-6, 6, 10)
    assert (cal.sensitivity_l2, cal.length) == (3.0, 12)
    assert cal.sigma2_total == pytest.approx(10 * float(cal.sigma2_device), rel=1e-15)
    assert cal.charge == RoundCharge.for_round(3.0, cal.sigma2_device, 10, 12)
    assert cal.noise_multiplier == pytest.approx(math.sqrt(cal.sigma2_total) / 3.0)


def test_calibration_steps_up_when_the_search_lands_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search's tolerance may land below the noise the budget needs: the grid value is then
    raised by 0.1 % plus one grid step at a time until the day's ε holds."""
    real = acc.dp_accounting.calibrate_dp_mechanism
    monkeypatch.setattr(acc.dp_accounting, "calibrate_dp_mechanism", lambda *a, **k: real(*a, **k) * 0.97)
    cal = acc.calibrate(2.0, 6, 10, 3.0, 12)
    monkeypatch.setattr(acc.dp_accounting, "calibrate_dp_mechanism", real)
    mult = real(
        acc._fresh,
        lambda m: dp_accounting.SelfComposedDpEvent(RoundCharge.for_round(3.0, (m * 3.0) ** 2 / 10, 10, 12).event(), 6),
        2.0,
        1e-6 - 6 * 2.0**-40,
        dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        tol=1e-9,
    )
    s2 = Fraction(math.ceil((0.97 * mult * 3.0) ** 2 / 10 * 1000), 1000)
    steps = 0
    while acc.epsilon_day_for(s2, 6, 10, 3.0, 12) > 2.0:
        s2 = s2 * Fraction(1001, 1000) + Fraction(1, 1000)
        steps += 1
    assert steps > 1
    assert cal.sigma2_device == s2
    assert cal.epsilon_reached <= 2.0


def test_calibration_with_a_single_survivor() -> None:
    assert acc.calibrate(2.0, 6, 1, 3.0, 12).min_survivors == 1


def test_calibration_at_another_delta() -> None:
    cal = acc.calibrate(2.0, 6, 10, 3.0, 12, delta=1e-4)
    assert cal.delta == 1e-4 and cal.epsilon_reached <= 2.0
    assert acc.epsilon_day_for(cal.sigma2_device - Fraction(1, 1000), 6, 10, 3.0, 12, 1e-4) > 2.0
    assert cal.sigma2_device < acc.calibrate(2.0, 6, 10, 3.0, 12).sigma2_device


def test_epsilon_day_for_is_many_rounds_of_one_charge() -> None:
    charge = RoundCharge.for_round(2.0, Fraction(3), 8, 5)
    assert acc.epsilon_day_for(Fraction(3), 4, 8, 2.0, 5) == acc.epsilon([charge] * 4)
    assert acc.epsilon_day_for(3.0, 4, 8, 2.0, 5, 1e-3) == acc.epsilon([charge] * 4, 1e-3)


def test_day_spend() -> None:
    c = RoundCharge(rho=0.01)
    spend = acc.day_spend("health", [c, c], 1.0)
    assert (spend.budget, spend.rounds, spend.epsilon_day) == ("health", 2, 1.0)
    assert spend.rho == pytest.approx(0.02)
    assert spend.epsilon == acc.epsilon([c, c])
    assert spend.remaining == pytest.approx(1.0 - spend.epsilon)
    assert acc.day_spend("drift", [c], 1.0, delta=1e-3).epsilon == acc.epsilon([c], 1e-3)
    assert acc.day_spend("drift", [], 1.0).remaining == 1.0
    with pytest.raises(ValueError) as info:
        acc.day_spend("both", [c], 1.0)
    assert str(info.value) == "unknown budget 'both'"
