"""Refusing a privacy setting the fleet cannot meet, with the nearest one that works (pure module)."""

import math

import numpy as np
import pytest

from agent.dpnoise import DeviceNoise, max_abs_group_sum
from agent.encoding import sensitivity
from agent.secagg.ring import Ring
from telemetry import feasibility as f
from telemetry.accounting import calibrate
from telemetry.detectability import MAX_GROUP, MIN_GROUP, Setting


def test_defaults_are_accepted():
    v = f.check(Setting())
    assert v.ok and v.nearest is None and v.problems == ()


@pytest.mark.parametrize(
    ("fleet", "group", "expected"),
    [(1000, 19, MIN_GROUP), (1000, 20, None), (5000, MAX_GROUP + 1, MAX_GROUP), (5000, MAX_GROUP, None)],
)
def test_group_size_bounds_are_inclusive(fleet, group, expected):
    v = f.check(Setting(fleet=fleet, group_size=group), explicit_group=True)
    if expected is None:
        assert v.ok
    else:
        assert [p.field for p in v.problems] == ["group_size"]
        assert v.nearest.group_size == expected and f.check(v.nearest, explicit_group=True).ok


def test_group_larger_than_fleet_is_refused_with_the_fleet_as_group():
    v = f.check(Setting(fleet=50, group_size=60, delta=1e-6), explicit_group=True)
    assert "the fleet has 50" in v.problems[0].reason
    assert v.nearest.group_size == 50 and f.check(v.nearest, explicit_group=True).ok
    assert f.check(Setting(fleet=60, group_size=60), explicit_group=True).ok  # equality is fine


def test_fleet_below_the_cohort_floor_falls_back_to_automatic_groups():
    v = f.check(Setting(fleet=10, group_size=20), explicit_group=True)
    assert not v.ok and v.nearest.group_size == Setting(fleet=10).group_size


@pytest.mark.parametrize(("fleet", "delta", "nearest"), [(1000, 1e-3, 1e-4), (1500, 1e-3, 1e-4), (100, 0.5, 1e-3)])
def test_delta_must_be_below_one_over_n(fleet, delta, nearest):
    v = f.check(Setting(fleet=fleet, delta=delta))
    assert [p.field for p in v.problems] == ["delta"] and "1/n" in v.problems[0].reason
    assert v.nearest.delta == pytest.approx(nearest) and v.nearest.delta < 1 / fleet
    assert f.check(v.nearest).ok


def test_delta_just_below_one_over_n_is_accepted():
    assert f.check(Setting(fleet=1000, delta=0.000999)).ok
    assert f.largest_delta_below(1000) == pytest.approx(1e-4)
    assert f.largest_delta_below(999) == pytest.approx(1e-3)


def test_delta_eaten_by_truncation_is_refused():
    v = f.check(Setting(delta=1e-12))
    assert v.problems[0].field == "delta" and "truncation" in v.problems[0].reason
    assert f.check(v.nearest).ok


@pytest.mark.parametrize("eps", [0.0, -1.0, math.inf, math.nan, 101.0])
def test_epsilon_outside_its_range_is_refused(eps):
    v = f.check(Setting(epsilon_drift_day=eps))
    assert not v.ok and v.problems[0].field == "epsilon_drift_day"
    assert f.check(v.nearest).ok


def test_epsilon_at_the_maximum_is_accepted():
    assert f.check(Setting(epsilon_health_day=f.EPSILON_MAX)).ok


def test_tiny_epsilon_is_refused_with_the_smallest_that_fits_the_ring():
    s = Setting(fleet=3000, group_size=MAX_GROUP, epsilon_drift_day=0.01)
    v = f.check(s)
    assert [p.field for p in v.problems] == ["epsilon_drift_day"] and "wrap" in v.problems[0].reason
    least = v.nearest.epsilon_drift_day
    assert least > 0.01 and f.check(v.nearest).ok
    below = least - f.EPSILON_STEP
    layout, n = f.drift_layout_for(s), s.group_size
    assert not f.fits_ring(s, below, s.drift_rounds_per_day, layout, [n])  # one step less wraps


def test_noise_at_the_nearest_setting_cannot_wrap_even_at_the_extremes():
    """Every device at its largest coordinate and its noise at +bound (or all at −bound): the ring
    sum decodes to the true sum, for the nearest setting of a refused tiny ε at the largest group."""
    s = f.check(Setting(fleet=3000, group_size=MAX_GROUP, epsilon_drift_day=0.01)).nearest
    layout, n = f.drift_layout_for(s), s.group_size
    cal = calibrate(
        s.epsilon_drift_day, s.drift_rounds_per_day, s.min_survivors(n), sensitivity(layout).l2, layout.length, s.delta
    )
    noise = DeviceNoise.for_group(cal.sigma2_device, n, layout.length)
    ring = Ring(f.RING_BITS)
    assert max_abs_group_sum(layout.max_coordinate, n, noise) < 1 << (f.RING_BITS - 1)
    for sign, value in ((1, layout.max_coordinate), (-1, 0)):
        device = np.full(layout.length, value + sign * noise.bound, dtype=np.int64)
        total = ring.zeros(layout.length)
        for _ in range(n):
            total = ring.add(total, ring.reduce(device))
        assert np.array_equal(ring.centred(total), device * n)


def test_several_problems_are_all_reported_and_all_fixed():
    v = f.check(Setting(fleet=100, group_size=500, delta=0.1, epsilon_health_day=0.0), explicit_group=True)
    assert {p.field for p in v.problems} == {"group_size", "delta", "epsilon_health_day"}
    assert f.check(v.nearest, explicit_group=True).ok
