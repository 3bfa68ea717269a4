"""Forming rounds within each device's daily ε: ``form_rounds`` leaves out a device one more round
would take past its day's target, judged from what the server assigned (the rounds' stored noise,
survivors and layout), never from what a device says. Real PostgreSQL; noise on.

With W = 43,200 s the policy's health rounds (three soak rounds) fit two windows a day, so the noise
is calibrated for two: a device's second round of the day lands exactly at the target (it joins)
and a third is one over (it is left out).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest

from agent.encoding import sensitivity
from telemetry import rounds
from telemetry.accounting import RoundCharge, epsilon
from telemetry.models import AggRound, RoundMember
from tests import factories
from tests.test_rounds_service import enrol

pytestmark = pytest.mark.django_db(transaction=True)

W = 43_200
DAY = datetime(2027, 3, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _noisy(settings: Any) -> None:
    settings.EDGEFLEET_ROUND_NOISE = True
    settings.EDGEFLEET_TELEMETRY_WINDOW = W
    settings.EDGEFLEET_ROUND_BUDGETS = "health"
    settings.EDGEFLEET_ROUND_PHASE_SECONDS = 3600
    settings.EDGEFLEET_ROUND_SCHEDULE = "every_window"


def charge(r: AggRound) -> RoundCharge:
    """The round's charge from what the server stored for it."""
    lay = rounds.layout_from_json(r.layout)
    return RoundCharge.for_round(sensitivity(lay).l2, Fraction(r.noise_sigma2), r.min_survivors, lay.length)


def plan(version: Any) -> Any:
    return rounds.plan_for(version, rounds.HEALTH, 20)


def members(r: AggRound) -> set:
    return set(RoundMember.objects.filter(round=r).values_list("device_id", flat=True))


def test_the_round_that_reaches_the_target_is_joined_the_one_past_it_is_not() -> None:
    version = factories.staged_version()
    fresh = [d.device for d in enrol(20, version)]
    assert rounds.form_rounds(DAY + timedelta(seconds=1)) == 1  # the day's first round: everyone
    first = AggRound.objects.get()
    assert members(first) == {d.id for d in fresh}
    assert rounds.form_rounds(DAY + timedelta(seconds=W + 1)) == 1  # the second: exactly at the target
    second = AggRound.objects.exclude(id=first.id).get()
    assert members(second) == {d.id for d in fresh}
    target = rounds.plan_for(version, rounds.HEALTH).epsilon_day
    assert target == 4.9  # the model's policy: EDGEFLEET_PRIVACY_EPSILON_HEALTH_DAY
    assert 0.99 * target <= epsilon([charge(first), charge(second)]) <= target * (1 + 1e-9)  # at the edge
    # A third round the same day (an extra group, a changed window) would be one over: nobody joins,
    # and twenty devices left out leave no group to form.
    extra = rounds.within_budget(version, DAY + timedelta(seconds=W + 60), fresh, plan(version))
    assert extra == []
    # The next day starts a new ledger.
    assert rounds.form_rounds(DAY + timedelta(days=1, seconds=1)) == 1


def test_only_the_devices_past_their_target_are_left_out() -> None:
    version = factories.staged_version()
    busy = [d.device for d in enrol(20, version)]
    rounds.form_rounds(DAY + timedelta(seconds=1))
    rounds.form_rounds(DAY + timedelta(seconds=W + 1))  # busy: two rounds today, at the target
    idle = [d.device for d in enrol(20, version)]  # enrolled later: no round yet today
    kept = rounds.within_budget(version, DAY + timedelta(seconds=W + 60), busy + idle, plan(version))
    assert {d.id for d in kept} == {d.id for d in idle}


def test_with_noise_off_there_is_nothing_to_account(settings: Any) -> None:
    settings.EDGEFLEET_ROUND_NOISE = False
    version = factories.staged_version()
    devs = [d.device for d in enrol(20, version)]
    for k in range(3):
        assert rounds.form_rounds(DAY + timedelta(seconds=k * W // 2 + 1)) in (0, 1)
    assert rounds.within_budget(version, DAY, devs, plan(version)) == devs
