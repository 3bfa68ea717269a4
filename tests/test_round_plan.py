"""The round schedule a model's privacy policy implies (telemetry/round_plan.py), pure."""

from __future__ import annotations

import itertools

import pytest

from telemetry import round_plan as rp
from telemetry.detectability import Setting


@pytest.mark.parametrize(("per_day", "windows"), [(24, 288), (3, 288), (7, 288), (1, 288), (5, 7), (288, 288)])
def test_exactly_per_day_windows_run_spread_over_the_day_starting_with_the_first(per_day: int, windows: int) -> None:
    chosen = [i for i in range(windows) if rp.runs_in(i, per_day, windows)]
    assert len(chosen) == per_day and chosen[0] == 0
    gaps = {b - a for a, b in itertools.pairwise(chosen)}
    assert max(gaps, default=0) - min(gaps, default=0) <= 1  # evenly spread


def test_runs_in_edges() -> None:
    assert rp.runs_in(0, 0, 288) is False  # no rounds of this budget a day
    assert all(rp.runs_in(i, 300, 288) for i in range(288))  # more asked than windows: every window
    assert rp.runs_in(288, 24, 288) is False and rp.runs_in(-1, 24, 288) is False
    assert [rp.runs_in(i, 24, 288) for i in (0, 11, 12, 13)] == [True, False, True, False]


def test_windows_per_day() -> None:
    assert rp.windows_per_day(300) == 288 and rp.windows_per_day(86_400) == 1 and rp.windows_per_day(100_000) == 1
    assert rp.windows_per_day(1) == 86_400 and rp.windows_per_day(7_000) == 12  # whole windows only
    with pytest.raises(ValueError, match=r"^the window must be at least one second$"):
        rp.windows_per_day(0)


def test_canary_group_size() -> None:
    assert rp.canary_group_size(100, 1) == 100
    assert rp.canary_group_size(100, 3) == 34
    assert rp.canary_group_size(30, 3) == 20  # never below the floor
    assert rp.canary_group_size(100, 0) == 100


def _s(**kw: float) -> Setting:
    base = dict(fleet=1000, drift_rounds_per_day=24, health_rounds_per_day=0, soak_rounds=3, window_s=300)
    return Setting(**{**base, **kw})


def test_default_policy_drift_hourly_health_only_in_a_campaign() -> None:
    s = _s()
    first = rp.plan(s, 0, 300, 1000, in_campaign=False)
    assert [p.budget for p in first] == ["drift"]
    assert first[0] == rp.Plan("drift", s.epsilon_drift_day, 24, s.group_size, s.delta)
    assert rp.plan(s, 300, 300, 1000, in_campaign=False) == []  # the next window: nothing
    assert [p.budget for p in rp.plan(s, 3600, 300, 1000, in_campaign=False)] == ["drift"]  # the next hour
    soak = rp.plan(s, 300, 300, 100, in_campaign=True, canary_groups=1)
    assert soak == [rp.Plan("health", s.epsilon_health_day, s.health_rounds_total, 100, s.delta)]
    both = rp.plan(s, 86_400 + 3600, 300, 120, in_campaign=True, canary_groups=3)  # the day wraps
    assert [(p.budget, p.group_size) for p in both] == [("drift", 120), ("health", 40)]


def test_health_rounds_outside_campaigns_and_none_at_all() -> None:
    s = _s(health_rounds_per_day=2)
    runs = [i for i in range(288) if any(p.budget == "health" for p in rp.plan(s, i * 300, 300, 500, False))]
    assert runs == [0, 144]
    none = _s(soak_rounds=0, health_rounds_per_day=0)
    assert all(p.budget != "health" for p in rp.plan(none, 0, 300, 500, in_campaign=True))


def test_group_size_follows_the_policy_within_the_fleet_and_above_the_floor() -> None:
    assert rp.plan(_s(group_size=50), 0, 300, 1000, False)[0].group_size == 50
    assert rp.plan(_s(group_size=500), 0, 300, 120, False)[0].group_size == 120  # no group beyond the fleet
    assert rp.plan(_s(group_size=5), 0, 300, 1000, False, floor=20)[0].group_size == 20


def test_plan_edges() -> None:
    s = _s(group_size=500)
    assert rp.plan(s, 0, 300, 1, False, floor=1)[0].group_size == 1  # a fleet of one: a group of one
    one_soak = _s(soak_rounds=1)
    assert one_soak.health_rounds_total == 1
    assert [p.budget for p in rp.plan(one_soak, 300, 300, 50, in_campaign=True)] == ["health"]
    # a campaign's groups: its devices in canary_groups groups (one by default), floored by ``floor``
    assert rp.plan(_s(), 300, 300, 10, in_campaign=True, floor=5)[0].group_size == 10
    assert rp.plan(_s(), 300, 300, 60, in_campaign=True)[0].group_size == 60
    outside = _s(health_rounds_per_day=2, group_size=50)
    at_noon = rp.plan(outside, 43_200, 300, 500, False)  # window 144: a drift and a health window
    assert at_noon[-1] == rp.Plan("health", outside.epsilon_health_day, 3 + 2 - 1, 50, outside.delta)


def test_of_budget_targets_and_refusal() -> None:
    s = _s(drift_rounds_per_day=300, delta=1e-7)
    assert rp.of_budget(s, "drift", 288, 40) == rp.Plan("drift", s.epsilon_drift_day, 288, 40, 1e-7)  # ≤ windows
    assert rp.of_budget(s, "health", 2, 40) == rp.Plan("health", s.epsilon_health_day, 2, 40, 1e-7)
    with pytest.raises(ValueError, match=r"^unknown budget 'other'$"):
        rp.of_budget(s, "other", 288, 40)
