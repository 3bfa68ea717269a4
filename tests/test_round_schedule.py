"""Rounds follow the model's privacy policy (``EDGEFLEET_ROUND_SCHEDULE = "policy"``, the default
outside tests): which windows run drift and health rounds, how a version in a campaign is grouped,
and what the noise is calibrated for — the schedule the privacy page computes its figures for.
Real PostgreSQL, noise on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest

from agent import dpnoise
from agent.encoding import sensitivity
from rollout.models import Campaign
from telemetry import rounds
from telemetry.accounting import calibrate
from telemetry.models import AggRound
from tests import factories
from tests.test_rounds_service import enrol

pytestmark = pytest.mark.django_db(transaction=True)

DAY = datetime(2027, 3, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@pytest.fixture(autouse=True)
def _policy(settings: Any) -> None:
    settings.EDGEFLEET_ROUND_SCHEDULE = "policy"
    settings.EDGEFLEET_ROUND_NOISE = True
    settings.EDGEFLEET_TELEMETRY_WINDOW = 300
    settings.EDGEFLEET_ROUND_BUDGETS = "health,drift"
    settings.EDGEFLEET_ROUND_PHASE_SECONDS = 3600


def formed(at: datetime) -> list[tuple[str, int]]:
    before = set(AggRound.objects.values_list("id", flat=True))
    rounds.form_rounds(at)
    new = AggRound.objects.exclude(id__in=before).order_by("budget", "group")
    return [(r.budget, r.n) for r in new]


def test_drift_hourly_and_no_health_outside_a_campaign() -> None:
    version = factories.staged_version()
    enrol(25, version)
    assert formed(DAY + MINUTE) == [("drift", 25)]  # the day's first window: a drift round
    assert formed(DAY + 5 * MINUTE + MINUTE) == []  # the next: none (24 drift rounds a day, hourly)
    assert formed(DAY + 60 * MINUTE + MINUTE) == [("drift", 25)]


def test_a_campaigns_versions_run_health_rounds_every_window_until_the_devices_budget_is_spent() -> None:
    v1 = factories.staged_version(label="v1", seed=1)
    v2 = factories.staged_version(label="v2", seed=2)
    enrol(25, v1)
    Campaign.objects.create(
        name="c", model=v1.model, version=v2, previous_version=v1, waves=[{"percent": 10}], state="running"
    )
    # v1 is the control of a running campaign: health rounds in every window, its devices as one group
    # (canary_groups = 1); the noise is the policy's — ε_health over its three soak rounds a day.
    assert formed(DAY + 6 * MINUTE) == [("health", 25)]
    r = AggRound.objects.get(budget="health")
    layout = rounds.layout_from_json(r.layout)
    cal = calibrate(4.9, 3, r.min_survivors, sensitivity(layout).l2, layout.length, 1e-6)
    assert Fraction(r.noise_sigma2) == dpnoise.DeviceNoise.for_group(cal.sigma2_device, 25, layout.length).sigma2
    assert formed(DAY + 11 * MINUTE) == [("health", 25)]
    assert formed(DAY + 16 * MINUTE) == [("health", 25)]
    # three health rounds today: a fourth would take every device past ε_health, so none is formed
    assert formed(DAY + 21 * MINUTE) == []
    # a campaign that is not running (paused, finished) schedules nothing extra
    Campaign.objects.update(state="paused")
    assert formed(DAY + 1 * timedelta(days=1) + 6 * MINUTE) == []


def test_a_policy_with_hourly_health_rounds_runs_them_outside_campaigns(settings: Any) -> None:
    settings.EDGEFLEET_PRIVACY_HEALTH_ROUNDS_PER_DAY = 24
    version = factories.staged_version()
    enrol(25, version)
    assert formed(DAY + MINUTE) == [("drift", 25), ("health", 25)]
    assert formed(DAY + 6 * MINUTE) == []
