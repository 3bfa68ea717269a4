"""The campaign layer of manifest resolution: who desires which version as a campaign moves."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.auth import DeviceSnapshot
from rollout import lifecycle, manifest, placement
from rollout.models import Campaign
from tests import test_campaign_factories as f

pytestmark = pytest.mark.django_db


def snap(d) -> DeviceSnapshot:
    return DeviceSnapshot(id=d.pk, labels=d.labels, hardware=d.hardware, rev="r")


def desired(d) -> dict[str, tuple]:
    manifest.bump_generation()
    return {x.model: (x.version.label, x.fallback.label if x.fallback else None, x.campaign_id) for x in
            manifest.desired_for(snap(d))}  # fmt: skip


@pytest.fixture
def setup() -> dict:
    m = f.model()
    v1, v2 = f.version(m, "v1"), f.version(m, "v2", opset=21)
    f.release(v1)
    eu = f.cohort("eu", "region=eu")
    devs = [f.device({"region": "eu"}) for _ in range(60)]
    old = f.device({"region": "eu"}, ort_version="1.14.0")  # cannot run opset 21
    us = f.device({"region": "us"})
    c = lifecycle.create_campaign(
        name="c", version=v2, cohort=eu, waves=f.WAVES, gates={"error_rate": 0.02}, previous_version=None
    )
    return {"c": c, "devs": devs, "old": old, "us": us}


def split(c: Campaign, devs: list, wave: int) -> tuple[list, list]:
    covered = placement.coverage(c.waves, wave)
    inside = [d for d in devs if placement.bucket(d.pk, c.pk) < covered]
    return inside, [d for d in devs if d not in inside]


def test_a_draft_changes_nothing(setup) -> None:
    assert desired(setup["devs"][0]) == {"fraud": ("v1", None, None)}


def test_waves_reach_their_buckets_and_pause_holds(setup) -> None:
    c, devs = setup["c"], setup["devs"]
    lifecycle.start(c.pk)
    inside, outside = split(c, devs, 0)
    assert inside and outside
    assert all(desired(d) == {"fraud": ("v2", "v1", c.pk)} for d in inside)
    assert all(desired(d)["fraud"][0] == "v1" for d in outside)
    lifecycle.pause(c.pk)
    assert all(desired(d)["fraud"][0] == "v2" for d in inside)  # a pause holds the fleet where it is
    lifecycle.resume(c.pk)
    lifecycle.advance(c.pk, numbers={})
    inside2, _ = split(Campaign.objects.get(pk=c.pk), devs, 1)
    assert set(map(id, inside)) <= set(map(id, inside2))
    assert all(desired(d)["fraud"][0] == "v2" for d in inside2)
    # other cohorts and incompatible devices never get the version
    assert desired(setup["us"])["fraud"][0] == "v1"
    assert desired(setup["old"])["fraud"][0] == "v1"


def test_rollback_sends_every_targeted_device_back(setup) -> None:
    c, devs = setup["c"], setup["devs"]
    lifecycle.start(c.pk)
    lifecycle.advance(c.pk, numbers={})
    lifecycle.rollback(c.pk, numbers={}, reason="regression")
    assert all(desired(d)["fraud"][0] == "v1" for d in devs)


def test_completion_releases_to_the_cohort_but_not_to_incompatible_devices(setup) -> None:
    c, devs = setup["c"], setup["devs"]
    lifecycle.start(c.pk)
    for _ in range(3):
        lifecycle.advance(c.pk, numbers={})
    assert Campaign.objects.get(pk=c.pk).state == "completed"
    assert all(desired(d)["fraud"][0] == "v2" for d in devs)
    assert desired(setup["old"])["fraud"][0] == "v1"
    assert desired(setup["us"])["fraud"][0] == "v1"


def test_a_warm_resolution_makes_no_query(setup) -> None:
    c = setup["c"]
    lifecycle.start(c.pk)
    manifest.bump_generation()
    manifest.desired_for(snap(setup["devs"][0]))  # loads the generation once
    with CaptureQueriesContext(connection) as q:
        for d in setup["devs"]:
            manifest.desired_for(snap(d))
    assert len(q.captured_queries) == 0
