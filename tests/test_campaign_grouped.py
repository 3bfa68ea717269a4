"""The grouped PostgreSQL scan and the kept counts answer dry runs and install progress as the per-device loop does.

``rollout.cohorts`` groups devices in the database (bucket by sha256 in SQL, storage compared in
SQL) for campaigns with legacy buckets, and reads the kept counts (``fleet.kept``) for keyed ones;
these tests run each against the per-device loop over a fleet with every kind of odd hardware and
compare the results number for number.
"""

import random
import uuid

import pytest

from fleet import kept
from fleet.models import DeviceEvent
from rollout import cohorts, lifecycle, placement, targeting
from rollout.models import Campaign
from rollout.progress import install_progress
from tests import test_campaign_factories as f

pytestmark = pytest.mark.django_db

ODD_HARDWARE = [
    {},
    {"storage_free_mb": 0},
    {"storage_free_mb": "4096"},  # a string: placement reads it as a number
    {"storage_free_mb": None},
    {"storage_free_mb": 0.2},  # below the fp32 threshold, above the int8 one
    {"ram_mb": 512},  # small: gets int8 when there is one
    {"ram_mb": None},
    {"ort_version": "1.10.0"},
    {"ort_version": "garbage"},
    {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
    {"providers": "CPUExecutionProvider"},
]


@pytest.fixture
def mixed_fleet() -> dict:
    rng = random.Random(5)
    m = f.model()
    v1, v2 = f.version(m, "v1"), f.version(m, "v2", int8_size=50_000)
    f.release(v1)
    devices = []
    for i in range(120):
        hw = dict(rng.choice(ODD_HARDWARE))
        devices.append(
            f.device(
                {"region": rng.choice(["eu", "us", "apac"]), "hw": rng.choice(["rpi4", "x86"])}
                | ({"beta": "yes"} if i % 7 == 0 else {}),
                {"fraud": rng.choice(["v1", "v2", "v0"])} if i % 9 else {},
                **hw,
            )
        )
    # Missing keys must be missing, not defaulted by the factory.
    for d in devices[:5]:
        d.hardware.pop("storage_free_mb", None)
        d.hardware.pop("providers", None)
        d.save()
    return {"model": m, "v1": v1, "v2": v2, "devices": devices}


def both(monkeypatch: pytest.MonkeyPatch, call) -> tuple:
    grouped = call()
    monkeypatch.setattr(cohorts, "grouped_scan_available", lambda: False)
    monkeypatch.setattr(kept, "available", lambda: False)
    per_device = call()
    monkeypatch.undo()
    return grouped, per_device


@pytest.mark.parametrize("bucketing", [placement.LEGACY, placement.KEYED])
@pytest.mark.parametrize("selector", ["", "region=eu", "region!=eu, !beta", "hw in (rpi4)"])
@pytest.mark.parametrize("requirements", [None, {"provider": "CUDAExecutionProvider"}, {"min_storage_mb": 1000}])
def test_dry_run_grouped_equals_per_device(mixed_fleet, monkeypatch, selector, requirements, bucketing) -> None:
    cohort = f.cohort("c", selector) if selector else None
    assert cohorts.grouped_scan_available()

    def call() -> dict:
        return targeting.dry_run(
            version=mixed_fleet["v2"],
            cohort=cohort,
            waves=f.WAVES,
            campaign_id=4242,
            requirements=requirements,
            bucketing=bucketing,
        ).as_dict()

    grouped, per_device = both(monkeypatch, call)
    assert grouped["total"] > 0
    for a, b in zip(grouped["waves"], per_device["waves"], strict=True):
        # Top-8 lists may break ties in another order: compare the counts, not the dict order.
        assert {**a, "by_label": sorted(a["by_label"].items())} == {**b, "by_label": sorted(b["by_label"].items())}
    assert {k: v for k, v in grouped.items() if k != "waves"} == {k: v for k, v in per_device.items() if k != "waves"}


def test_sql_bucket_is_placement_bucket(mixed_fleet) -> None:
    """Every device lands in the same wave in SQL as ``placement.bucket`` puts it (negative digests too)."""
    req = targeting.requirements_for(mixed_fleet["v2"])
    for cid in (1, 77, 123456):
        limits = list(range(1, placement.BUCKETS + 1, 97))
        groups = list(cohorts.grouped_devices(None, cid, limits, req))
        expected: dict[int | None, int] = {}
        for d in mixed_fleet["devices"]:
            b = placement.legacy_bucket(d.id, cid)
            slot = next((i for i, lim in enumerate(limits) if b < lim), None)
            expected[slot] = expected.get(slot, 0) + 1
        got: dict[int | None, int] = {}
        for n, _, _, slot, _, _ in groups:
            got[slot] = got.get(slot, 0) + n
        assert got == expected


@pytest.mark.parametrize("bucketing", [placement.LEGACY, placement.KEYED])
def test_install_progress_grouped_equals_per_device(mixed_fleet, monkeypatch, bucketing) -> None:
    c = lifecycle.create_campaign(
        name="v2", version=mixed_fleet["v2"], cohort=None, waves=f.WAVES, gates={"error_rate": 0.01}
    )
    Campaign.objects.filter(pk=c.pk).update(bucketing=bucketing)
    lifecycle.start(c.pk)
    lifecycle.advance(c.pk, reason="test", expect_wave=0)
    for d in mixed_fleet["devices"][::4]:
        DeviceEvent.objects.create(
            id=uuid.uuid4(),
            device=d,
            kind="install_failed",
            at=d.enrolled_at,
            model_name="fraud",
            version_label="v2",
        )
    c = Campaign.objects.select_related("model", "version", "previous_version", "cohort").get(pk=c.pk)
    grouped, per_device = both(monkeypatch, lambda: install_progress(c))
    assert grouped["targeted"] > 0 and grouped["install_failed"] > 0
    assert grouped == per_device
