"""Rollups, reference learning, drift results, alerts and pruning — and the beat job on a real worker."""

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.utils import timezone

from fleet.models import Cohort
from telemetry import services
from telemetry.api import BatchIn
from telemetry.models import Alert, DriftResult, Report, Rollup
from tests import factories
from tests.telemetry_support import simulated


def hour(k: int) -> datetime:
    """Start of the hour ``k`` hours before the current one."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=k)


def fleet(n: int, labels: dict | None = None) -> list:
    return [factories.device(labels=labels or {"region": "eu"}, name=f"d{i}")[0] for i in range(n)]


def send(version, devices, rng, start, backdate: bool = False, **kw) -> None:
    """Each device reports one window starting at ``start`` through the ingest service."""
    for d in devices:
        batch = BatchIn.model_validate({"reports": [simulated(version, rng, start=start, **kw)]})
        out = services.ingest_reports(d.id, batch.reports)
        assert out["accepted"], out
    if backdate:  # as if received a minute ago, so the job's settle lag does not hold them back
        Report.objects.update(received_at=timezone.now() - timedelta(minutes=1))


@pytest.fixture
def version(db):
    v = factories.staged_version("fraud", "v1")
    factories.release(v)
    return v


@pytest.mark.django_db
def test_rollups_drift_and_alert_lifecycle(version) -> None:
    rng = np.random.default_rng(1)
    Cohort.objects.create(name="eu", selector="region=eu")
    Cohort.objects.create(name="tiny", selector="hw=jetson")
    devices = fleet(25) + fleet(3, {"region": "us", "hw": "jetson"})
    send(version, devices, rng, hour(3) + timedelta(minutes=1), n=1000)
    assert services.update_rollups(settle_seconds=0)["reports"] == 28
    assert services.update_rollups(settle_seconds=0)["reports"] == 0  # high-water mark: nothing new
    all_, eu, tiny = (Rollup.objects.get(version=version, cohort=c) for c in ("all", "eu", "tiny"))
    assert (all_.n_devices, eu.n_devices, tiny.n_devices) == (28, 25, 3)
    assert all_.n_reports == 28 and len(all_.features["input[0]"]) == 16
    assert all_.inference_count == pytest.approx(28_000, rel=0.01)
    assert all_.noise_var == pytest.approx(28 * 2 * 7.0**2)

    services.compute_drift()
    version.refresh_from_db()
    assert version.reference_profile["source"] == "first_window"
    assert {r.cohort for r in DriftResult.objects.all()} == {"all", "eu"}  # tiny is below k
    assert not DriftResult.objects.filter(drifted=True).exists()

    send(version, devices, rng, hour(2) + timedelta(minutes=1), n=1000, shift=0.5)
    services.update_rollups(settle_seconds=0)
    services.compute_drift()
    shifted = DriftResult.objects.get(version=version, cohort="all", feature="input[0]", window_start=hour(2))
    assert shifted.drifted and shifted.psi > shifted.threshold
    assert not DriftResult.objects.filter(window_start=hour(2), drifted=True).exclude(feature="input[0]").exists()
    alert = Alert.objects.get(version=version, cohort="all", feature="input[0]", state="open")
    assert alert.numbers["psi"] == pytest.approx(shifted.psi)
    assert Alert.objects.filter(state="open").count() == 2  # all and eu

    send(version, devices, rng, hour(1) + timedelta(minutes=1), n=1000)
    services.update_rollups(settle_seconds=0)
    services.compute_drift()
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_by == "system"
    assert not Alert.objects.filter(state="open").exists()


@pytest.mark.django_db
def test_prune_only_old_rolled_up_reports(version, settings) -> None:
    rng = np.random.default_rng(2)
    devices = fleet(2)
    send(version, devices, rng, hour(1))
    services.update_rollups(settle_seconds=0)
    Report.objects.filter(device=devices[0]).update(
        window_start=timezone.now() - timedelta(days=40), window_end=timezone.now() - timedelta(days=40)
    )
    assert services.prune_reports() == 1
    assert Report.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_beat_job_runs_on_a_real_worker(version, celery_worker) -> None:
    from edgefleet.schedule import BEAT_SCHEDULE
    from telemetry.tasks import prune_reports, rollup_and_drift

    assert {e["task"] for e in BEAT_SCHEDULE.values()} >= {"telemetry.rollup_and_drift", "telemetry.prune_reports"}
    rng = np.random.default_rng(3)
    send(version, fleet(21), rng, hour(1) + timedelta(minutes=1), backdate=True, n=500)
    rollup_and_drift.delay()
    prune_reports.delay()
    # The job writes one drift row per feature as it goes: wait for the last, not the first.
    drift_rows = DriftResult.objects.filter(version=version, cohort="all")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and drift_rows.count() < 5:
        time.sleep(0.3)
    assert Rollup.objects.get(cohort="all").n_devices == 21
    assert drift_rows.count() == 5  # 4 features + output
