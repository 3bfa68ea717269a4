"""The accountant against dp-accounting computed independently, calibration round trips, refusals."""

import math
from fractions import Fraction

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from telemetry import accounting as acc

SENS, LENGTH = 4.242640687119285 * 1024, 172


def test_epsilon_matches_independent_gaussian_rdp_and_brackets_pld():
    for rounds, mult in [(24, 6.2), (288, 21.5), (1, 1.0)]:
        s2_total = (mult * SENS) ** 2
        charge = acc.RoundCharge.for_round(SENS, s2_total / 70, 70, LENGTH)
        assert charge.xi == 0.0  # σ_dev ≫ 2: the sum-of-discrete-Gaussians term vanishes
        ours = acc.epsilon([charge] * rounds, 1e-6)
        delta = 1e-6 - rounds * 2.0**-40
        # The noise multiplier is relative to our replace-one Δ, so the events are stated as-is (the
        # library's REPLACE_ONE would double a Gaussian's sensitivity in its PLD accountant).
        rdp = RdpAccountant()
        rdp.compose(dp_accounting.GaussianDpEvent(mult), rounds)
        assert ours == pytest.approx(rdp.get_epsilon(delta), rel=1e-9)
        pld = PLDAccountant()
        pld.compose(dp_accounting.GaussianDpEvent(mult), rounds)
        rho = rounds / (2 * mult**2)
        assert pld.get_epsilon(delta) <= ours <= rho + 2 * math.sqrt(rho * math.log(1 / delta))


def test_calibration_round_trip():
    cal = acc.calibrate(4.0, 24, 70, SENS, LENGTH)
    assert isinstance(cal.sigma2_device, Fraction)
    assert 4.0 * 0.999 < cal.epsilon_reached <= 4.0
    back = acc.epsilon_day_for(cal.sigma2_device, 24, 70, SENS, LENGTH)
    assert back == pytest.approx(cal.epsilon_reached)
    assert acc.epsilon_day_for(cal.sigma2_device * Fraction(99, 100), 24, 70, SENS, LENGTH) > 4.0
    # the same total noise whatever t_min: σ²_dev·t_min is what the sum carries
    cal2 = acc.calibrate(4.0, 24, 700, SENS, LENGTH)
    assert cal2.sigma2_total == pytest.approx(cal.sigma2_total, rel=1e-3)
    assert 6.0 < cal.noise_multiplier < 6.5  # the DESIGN back-of-envelope said ≈ 6.7 with a looser conversion


def test_may_join_refuses_the_round_that_would_pass_the_daily_target():
    cal = acc.calibrate(4.0, 24, 70, SENS, LENGTH)
    day = [cal.charge] * 23
    assert acc.may_join(day, cal.charge, 4.0)
    assert not acc.may_join([*day, cal.charge], cal.charge, 4.0)
    assert acc.may_join([], cal.charge, 4.0)


def test_two_budgets_are_separate_ledgers_and_compose_together():
    drift = acc.calibrate(4.0, 24, 70, SENS, LENGTH)
    health = acc.calibrate(8.0, 46, 14, 1.7320508 * 1024, 14)
    d = acc.day_spend(acc.DRIFT, [drift.charge] * 24, 4.0)
    h = acc.day_spend(acc.HEALTH, [health.charge] * 46, 8.0)
    assert d.epsilon <= 4.0 and h.epsilon <= 8.0 and d.remaining >= 0
    both = acc.combined_epsilon([drift.charge] * 24, [health.charge] * 46)
    assert max(d.epsilon, h.epsilon) < both < d.epsilon + h.epsilon
    with pytest.raises(ValueError):
        acc.day_spend("other", [], 1.0)


def test_tiny_noise_charges_the_ddg_term_and_truncation():
    assert acc.ddg_tau(20, 4.0) < 1e-15 and acc.ddg_tau(20, 1e6) == 0.0
    assert acc.ddg_tau(20, 0.5) > 1e-4
    small = acc.RoundCharge.for_round(1.0, 0.5, 20, 10)
    assert small.xi > 0
    assert acc.epsilon([small], 1e-6) > acc.epsilon([acc.RoundCharge(small.rho, 0.0, small.delta)], 1e-6)
    assert acc.epsilon([acc.RoundCharge(0.01, 0.0, 1e-6)], 1e-6) == math.inf  # truncation ate all δ


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 24, 70, SENS, LENGTH),
        (math.inf, 24, 70, SENS, LENGTH),
        (4.0, 0, 70, SENS, LENGTH),
        (4.0, 24, 0, SENS, LENGTH),
    ],
)
def test_calibration_refuses_impossible_settings(args):
    with pytest.raises(ValueError):
        acc.calibrate(*args)
    with pytest.raises(ValueError):
        acc.calibrate(4.0, 24, 70, SENS, LENGTH, delta=1.5)
