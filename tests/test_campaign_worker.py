"""The gate job run by a real Celery worker over Redis, on real telemetry rows in PostgreSQL."""

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import AuditEntry
from fleet.auth import DeviceSnapshot
from rollout import lifecycle, manifest, placement
from rollout.models import Campaign, Release
from rollout.tasks import evaluate_campaigns
from telemetry.binning import DEFAULT_SCORE_EDGES, LATENCY_EDGES_MS
from telemetry.models import Report
from tests import test_campaign_factories as f

pytestmark = pytest.mark.slow

N_BINS = len(LATENCY_EDGES_MS) - 1
N_OUT = len(DEFAULT_SCORE_EDGES) - 1  # the factory's versions declare no outputs: score bins


def report(device, version, errors: float, inferences: float = 1000.0, slow: bool = False) -> Report:
    now = timezone.now()
    latency = [0.0] * N_BINS
    latency[6 if slow else 3] = inferences  # 50-100 ms when slow, else 5-10 ms
    committed(device, version)
    return Report.objects.create(
        id=uuid.uuid4(),
        device=device,
        version=version,
        window_start=now,
        window_end=now + timedelta(minutes=5),
        inference_count=inferences,
        error_count=errors,
        latency=latency,
        outputs=[inferences / N_OUT] * N_OUT,
        features={},
        mechanism="laplace",
        epsilon=1.0,
        received_at=now,
    )


def committed(device, version) -> None:
    """The device's agent passed probation on ``version`` (a wave counts committed devices)."""
    from fleet.models import DeviceEvent

    DeviceEvent.objects.get_or_create(
        id=uuid.uuid5(uuid.NAMESPACE_URL, f"committed:{device.pk}:{version.pk}"),
        defaults=dict(device=device, kind="committed", at=timezone.now(), model_name=version.model.name,
                      version_label=version.label),
    )  # fmt: skip


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the worker")


@pytest.fixture
def fleet(transactional_db) -> dict:
    m = f.model()
    v1, v2 = f.version(m, "v1"), f.version(m, "v2")
    f.release(v1)
    eu = f.cohort("eu", "region=eu")
    devices = [f.device({"region": "eu"}, {"fraud": "v1"}) for _ in range(80)]
    waves = [{"percent": 50, "min_soak_minutes": 0, "min_devices": 5}, {"percent": 100, "min_devices": 5}]
    c = lifecycle.create_campaign(
        name="w", version=v2, cohort=eu, waves=waves, gates={"error_rate": 0.02, "latency_p95": 1.25}
    )
    lifecycle.start(c.pk)
    return {"c": c, "v1": v1, "v2": v2, "devices": devices}


def targeted(c: Campaign, devices: list) -> list:
    c.refresh_from_db()
    covered = placement.coverage(c.waves, c.wave_index)
    return [d for d in devices if placement.bucket(d.pk, c.pk) < covered]


def telemetry(fleet: dict, canary_errors: float, slow: bool = False) -> None:
    canary = targeted(fleet["c"], fleet["devices"])
    for d in fleet["devices"]:
        if d in canary:
            report(d, fleet["v2"], canary_errors, slow=slow)
        else:
            report(d, fleet["v1"], 5.0)


def test_worker_advances_a_healthy_campaign_to_completion(celery_worker, fleet) -> None:
    c = fleet["c"]
    telemetry(fleet, canary_errors=5.0)
    evaluate_campaigns.delay()
    wait_for(lambda: Campaign.objects.get(pk=c.pk).wave_index == 1)
    # wave 2 covers everyone: the control is then v1's reports since the campaign started
    telemetry(fleet, canary_errors=5.0)
    evaluate_campaigns.delay()
    wait_for(lambda: Campaign.objects.get(pk=c.pk).state == "completed")
    c.refresh_from_db()
    assert Release.objects.filter(version=fleet["v2"], campaign=c).exists()
    assert c.decisions.get(kind="complete").numbers["control_since"].startswith("campaign start")
    advance = c.decisions.filter(kind="advance", actor_label="system").first()
    assert advance and advance.numbers["verdict"] == "pass" and advance.numbers["reporting_devices"] >= 5


def test_worker_rolls_back_a_regressing_version_and_devices_go_back(celery_worker, fleet) -> None:
    c = fleet["c"]
    canary = targeted(c, fleet["devices"])
    snap = DeviceSnapshot(id=canary[0].pk, labels=canary[0].labels, hardware=canary[0].hardware, rev="r")
    assert manifest.desired_for(snap)[0].version.label == "v2"
    telemetry(fleet, canary_errors=150.0, slow=True)  # 15% errors vs 0.5%, and 10x slower
    evaluate_campaigns.delay()
    wait_for(lambda: Campaign.objects.get(pk=c.pk).state == "rolled_back")
    decision = c.decisions.get(kind="rollback")
    failed = {g["name"] for g in decision.numbers["gates"] if g["verdict"] == "fail"}
    assert failed == {"error_rate", "latency_p95"} and decision.actor_label == "system"
    assert AuditEntry.objects.filter(action="campaign.rollback", actor_label="system").exists()

    # the bump after commit reaches the resolver (within EDGEFLEET_EPOCH_CHECK_SECONDS): every targeted
    # device desires v1 again
    def label(d: Any) -> str:
        return manifest.desired_for(DeviceSnapshot(id=d.pk, labels=d.labels, hardware=d.hardware, rev="r"))[
            0
        ].version.label

    wait_for(lambda: all(label(d) == "v1" for d in canary), timeout=10.0)


def test_two_racing_evaluations_act_once(celery_worker, fleet) -> None:
    c = fleet["c"]
    telemetry(fleet, canary_errors=5.0)
    for _ in range(4):
        evaluate_campaigns.delay()
    wait_for(lambda: Campaign.objects.get(pk=c.pk).wave_index == 1)
    time.sleep(2)
    assert Campaign.objects.get(pk=c.pk).decisions.filter(kind="advance").count() == 1
