"""Kept device counts (fleet/kept.py): every write path moves them, and they answer as the devices do.

The counts are kept by a PostgreSQL trigger (deltas) and a fold; these tests write devices through
the project's own services (enroll, set_labels, bulk relabel, install reports, revocation, delete)
and read the counts back, and hold the dry run from the counts to the per-device computation on
random fleets, with and without a fold in between.
"""

from __future__ import annotations

import random

import pytest
from django.db import connection
from django.utils import timezone

from fleet import bulk, kept, overview, selectors, services
from fleet.models import Device, ProfileCount, ProfileCountDelta
from rollout import cohorts, placement, targeting
from tests import factories
from tests import test_campaign_factories as f

pytestmark = pytest.mark.django_db


def count(selector: str) -> int:
    return kept.count_matching(selectors.predicate(selectors.parse(selector)))


def key_count(device: Device, selector: str = "") -> int:
    """Devices with this device's key, by profile: the level-0 slot the device sits in."""
    key = placement.device_key(device.pk)
    match = selectors.predicate(selectors.parse(selector))
    counts = kept.range_counts([[(key, key + 1)]])
    known = kept.profiles({k for k, _ in counts})
    return sum(n for (k, _), n in counts.items() if match(known[k].labels) and not known[k].revoked)


def test_enrollment_adds_one() -> None:
    _, plain = factories.enrollment_key()
    before = count("region=eu")
    enrolled = services.enroll(plain, name="a", hardware={}, labels={"region": "eu"}, agent_version="1")
    device = enrolled.device
    assert count("region=eu") == before + 1
    assert key_count(device, "region=eu") == 1


@pytest.mark.parametrize("folded", [False, True])
def test_relabel_moves_the_device_between_cohort_and_bucket_counts(folded: bool) -> None:
    d = f.device({"region": "eu"})
    others = [f.device({"region": "us"}) for _ in range(3)]
    if folded:
        kept.fold()
    assert (count("region=eu"), count("region=us")) == (1, 3)
    services.set_labels(d, {"region": "us"})
    assert (count("region=eu"), count("region=us")) == (0, 4)
    assert key_count(d, "region=eu") == 0 and key_count(d, "region=us") >= 1
    # the bulk path (one UPDATE for many rows) moves them too
    bulk.relabel([o.pk for o in others], {"region": "apac"}, [])
    assert (count("region=us"), count("region=apac")) == (1, 3)
    kept.fold()
    assert (count("region=eu"), count("region=us"), count("region=apac")) == (0, 1, 3)
    assert ProfileCountDelta.objects.count() == 0


def test_install_report_revocation_and_deletion() -> None:
    m = f.model()
    a = f.device({"region": "eu"}, {"fraud": "v1"})
    b = f.device({"region": "eu"}, {"fraud": "v1"})
    f.version(m, "v1")
    assert overview.versions_in_use() == {"fraud": [("v1", 2)]}
    Device.objects.filter(pk=a.pk).update(installed={"fraud": "v2"})  # as the presence flush writes it
    assert dict(overview.versions_in_use()["fraud"]) == {"v1": 1, "v2": 1}
    # a revoked device still counts as a device, but no campaign reaches it
    Device.objects.filter(pk=b.pk).update(token_revoked_at=timezone.now())
    assert kept.total() == 2 and count("region=eu") == 2
    assert key_count(b) == (1 if placement.device_key(a.pk) == placement.device_key(b.pk) else 0)
    v = f.version(m, "v2")
    dry = targeting.dry_run(version=v, cohort=None, waves=f.WAVES, campaign_id=7)
    assert dry.total == 1
    a.delete()
    assert kept.total() == 1 and overview.versions_in_use() == {"fraud": [("v1", 1)]}


@pytest.mark.django_db(transaction=True)
def test_truncate_empties_the_counts() -> None:
    f.device({"region": "eu"})
    kept.fold()
    f.device({"region": "eu"})
    with connection.cursor() as cur:
        cur.execute("TRUNCATE fleet_device CASCADE")
    assert kept.total() == 0
    assert not ProfileCount.objects.exists() and not ProfileCountDelta.objects.exists()


def test_empty_cohort_and_empty_fleet() -> None:
    m = f.model()
    v = f.version(m, "v1")
    empty = targeting.dry_run(version=v, cohort=None, waves=f.WAVES, campaign_id=3)
    assert (empty.total, empty.compatible, empty.excluded) == (0, 0, {})
    assert [w["devices"] for w in empty.waves] == [0, 0, 0]
    f.device({"region": "eu"})
    nobody = targeting.dry_run(version=v, cohort=f.cohort("mars", "region=mars"), waves=f.WAVES, campaign_id=3)
    assert nobody.total == 0 and [w["new"] for w in nobody.waves] == [0, 0, 0]
    assert services.count_matching("region=mars") == 0 and services.count_matching("region=eu") == 1


def test_threshold_edge_a_bucket_equal_to_the_coverage_is_outside() -> None:
    """A device with bucket b is in a wave covering b + 1 buckets and not in one covering b."""
    m = f.model()
    v = f.version(m, "v1")
    d = f.device({"region": "eu"})
    # a campaign whose bucket for this device has a neighbour on both sides (not 0, not the last)
    cid = next(c for c in range(91, 1000) if 0 < placement.bucket(d.pk, c) < placement.BUCKETS - 1)
    b = placement.bucket(d.pk, cid)
    just_in = [{"percent": (b + 1) / 100}, {"percent": 100}]
    just_out = [{"percent": b / 100}, {"percent": 100}]
    assert [w["new"] for w in targeting.dry_run(version=v, cohort=None, waves=just_in, campaign_id=cid).waves] == [1, 0]
    assert [w["new"] for w in targeting.dry_run(version=v, cohort=None, waves=just_out, campaign_id=cid).waves] == [
        0,
        1,
    ]


HW = [{}, {"ram_mb": 512}, {"storage_free_mb": 10}, {"ort_version": "1.10.0"}, {"providers": ["CUDAExecutionProvider"]}]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_dry_run_from_kept_counts_equals_the_per_device_computation(seed: int, monkeypatch) -> None:
    """Random fleets, cohorts, wave plans and campaign ids (wrapping past the last key included)."""
    rng = random.Random(seed)
    m = f.model()
    v = f.version(m, "v2", int8_size=50_000)
    devices = []
    for _ in range(rng.randrange(20, 200)):
        labels = {"region": rng.choice(["eu", "us"]), "hw": rng.choice(["rpi4", "x86", "jetson"])}
        devices.append(f.device(labels, {"fraud": rng.choice(["v1", "v2"])}, **rng.choice(HW)))
    if rng.random() < 0.5:
        kept.fold()
    for d in rng.sample(devices, 5):  # changes after the fold stay in the deltas
        services.set_labels(d, {"region": "apac"})
    cohort = f.cohort("c", rng.choice(["", "region=eu", "hw in (rpi4, jetson), region!=us", "region=apac"]) or "x")
    if cohort.selector == "x":
        cohort = None
    percents = [*sorted({round(rng.uniform(0.01, 99.99), 2) for _ in range(rng.randrange(1, 5))}), 100]
    waves = [{"percent": p} for p in percents]
    for cid in (rng.randrange(1, 10**6), rng.randrange(1, 10**6)):
        fast = targeting.dry_run(version=v, cohort=cohort, waves=waves, campaign_id=cid).as_dict()
        monkeypatch.setattr(kept, "available", lambda: False)
        monkeypatch.setattr(cohorts, "grouped_scan_available", lambda: False)
        slow = targeting.dry_run(version=v, cohort=cohort, waves=waves, campaign_id=cid).as_dict()
        monkeypatch.undo()
        for a, b in zip(fast["waves"], slow["waves"], strict=True):
            assert {**a, "by_label": sorted(a["by_label"].items())} == {**b, "by_label": sorted(b["by_label"].items())}
        assert {k: x for k, x in fast.items() if k != "waves"} == {k: x for k, x in slow.items() if k != "waves"}


def test_a_large_fleet_reads_the_status_counts_the_job_kept_and_says_how_old(settings) -> None:
    """At or above the threshold the overview shows the beat job's status counts and their age; below it
    counts them for the request."""
    from django.core.cache import cache
    from django.template.loader import render_to_string

    from fleet import tasks

    cache.delete(overview.STATUS_KEY)
    f.device({"region": "eu"})
    f.device({"region": "us"})
    settings.EDGEFLEET_STATUS_KEPT_ABOVE = 3
    assert tasks.count_statuses() == 0  # 2 devices: below the threshold, the job does nothing
    settings.EDGEFLEET_STATUS_KEPT_ABOVE = 2
    assert tasks.count_statuses() == 2
    f.device({"region": "eu"})  # enrolled after the count
    settings.EDGEFLEET_STATUS_KEPT_ABOVE = 3  # the edge: 3 devices, threshold 3: the kept figure
    ctx = overview.context()
    assert ctx["total_devices"] == 3 and ctx["status"]["never"] == 2 and ctx["status_age"] >= 0
    assert "counted 0 s ago" in render_to_string("fleet/overview_live.html", ctx)
    settings.EDGEFLEET_STATUS_KEPT_ABOVE = 4  # below it: counted now, no age shown
    ctx = overview.context()
    assert ctx["status"]["never"] == 3 and ctx["status_age"] is None
    assert "counted" not in render_to_string("fleet/overview_live.html", ctx)
