"""No single row may fail a telemetry job for everyone: a bad row is quarantined with its reason.

The poisoned rows are written straight into PostgreSQL (as a bug, an old row from before a check, or
a hand edit would leave them); the real beat job then runs on a real Celery worker.
"""

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone

from telemetry import services
from telemetry.api import BatchIn
from telemetry.models import DriftResult, Quarantine, Report, Rollup, RollupMark
from tests import factories
from tests.telemetry_support import simulated


def hour(k: int) -> datetime:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=k)


def send(version, devices, rng, start, **kw) -> list[str]:
    ids = []
    for d in devices:
        body = simulated(version, rng, start=start, **kw)
        out = services.ingest_reports(d.id, BatchIn.model_validate({"reports": [body]}).reports)
        assert out["accepted"], out
        ids.append(body["id"])
    return ids


def sql(statement: str, params: list) -> None:
    with connection.cursor() as cur:
        cur.execute(statement, params)


POISON = [
    ("UPDATE telemetry_report SET latency = '[1, 2, 3]' WHERE id = %s", "latency has 3 counts"),
    ("UPDATE telemetry_report SET inference_count = 'NaN' WHERE id = %s", "inference_count is not a finite number"),
    ("UPDATE telemetry_report SET outputs = '[1e300, 0, 0]' WHERE id = %s", "outputs"),
    ("UPDATE telemetry_report SET epsilon = 1e-300 WHERE id = %s", "privacy parameters"),
    ("UPDATE telemetry_report SET features = '\"abc\"' WHERE id = %s", "features"),
    ("UPDATE telemetry_report SET error_count = 'Infinity' WHERE id = %s", "error_count is not a finite number"),
]


@pytest.fixture
def two_versions(db):
    good = factories.staged_version("fraud", "v1")
    bad = factories.staged_version("scan", "v1", seed=2)
    factories.release(good)
    factories.release(bad)
    devices = [factories.device(labels={"region": "eu"}, name=f"d{i}")[0] for i in range(30)]
    rng = np.random.default_rng(1)
    send(good, devices, rng, hour(1) + timedelta(minutes=5), n=500)
    bad_ids = send(bad, devices, rng, hour(1) + timedelta(minutes=5), n=500)
    for (statement, _), rid in zip(POISON, bad_ids, strict=False):
        sql(statement, [rid])
    # A rollup of the bad version from an earlier hour whose sums cannot be read.
    Rollup.objects.create(
        version=bad, cohort="all", window_start=hour(5), window_seconds=3600, n_reports=30, n_devices=30,
        inference_count=0.0, outputs=["x", "y", "z"], features={"input[0]": ["a"] * 16}, drift_stale=True,
    )  # fmt: skip
    # A drift result newer than any real one, with a PSI no statistic can produce (alerts read the latest).
    DriftResult.objects.create(
        version=bad, cohort="all", feature="input[0]", window_start=hour(0), n_devices=30, n_reports=30,
        psi=float("nan"), js=0.0, w1=None, ks=0.0, threshold=0.1, drifted=True,
    )  # fmt: skip
    Report.objects.update(received_at=timezone.now() - timedelta(minutes=1))
    return {"good": good, "bad": bad, "bad_ids": bad_ids, "devices": devices}


def check_outcome(two_versions: dict) -> None:
    good, bad, bad_ids = two_versions["good"], two_versions["bad"], two_versions["bad_ids"]
    # the good version went all the way: rollup, drift, reference
    assert Rollup.objects.get(version=good, cohort="all").n_reports == 30
    assert DriftResult.objects.filter(version=good, cohort="all").count() == 5
    # the bad version's healthy rows still count; the poisoned ones do not
    roll = Rollup.objects.get(version=bad, cohort="all", window_start=hour(1))
    assert roll.n_reports == 30 - len(POISON) and roll.n_devices == 30 - len(POISON)
    assert np.isfinite(roll.inference_count) and roll.inference_count < 1e6
    quarantined = set(Report.objects.filter(quarantined=True).values_list("id", flat=True))
    assert {str(i) for i in quarantined} == set(bad_ids[: len(POISON)])
    for (_, why), rid in zip(POISON, bad_ids, strict=False):
        q = Quarantine.objects.get(kind="report", key=rid)
        assert why in q.reason, (why, q.reason)
        assert q.version_id == bad.id
    assert Quarantine.objects.filter(kind="drift", version=bad).exists()
    assert Quarantine.objects.filter(kind="alerts", version=bad, key__contains="all").exists()
    assert not Quarantine.objects.filter(version=good).exists()
    assert RollupMark.objects.get(name="rollups").received_before > timezone.now() - timedelta(minutes=1)


@pytest.mark.django_db(transaction=True)
def test_poisoned_rows_are_quarantined_and_the_real_job_goes_on(two_versions, celery_worker) -> None:
    from telemetry.tasks import rollup_and_drift

    rollup_and_drift.delay()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not DriftResult.objects.filter(version=two_versions["good"]).exists():
        time.sleep(0.3)
    time.sleep(0.5)
    check_outcome(two_versions)
    # the next run does not trip over them again, and adds nothing twice
    assert services.update_rollups()["reports"] == 0
    assert Rollup.objects.get(version=two_versions["good"], cohort="all").n_reports == 30


@pytest.mark.django_db
def test_quarantine_is_visible_on_the_version_page_and_in_the_admin(two_versions, viewer_client, admin_client) -> None:
    services.update_rollups(settle_seconds=0)
    services.compute_drift()
    bad = two_versions["bad"]
    page = viewer_client.get(f"/telemetry/versions/{bad.id}/").content.decode()
    assert "Quarantined" in page and "latency has 3 counts" in page
    assert "inference_count is not a finite number" in page
    listing = admin_client.get("/admin/telemetry/quarantine/")
    assert listing.status_code == 200 and "latency has 3 counts" in listing.content.decode()


@pytest.mark.django_db
def test_a_rollup_that_cannot_take_its_reports_is_quarantined_alone(two_versions) -> None:
    """A stored rollup with unreadable sums (here: the bad version's current hour) is set aside; the
    other rollups of the run commit, and the high-water mark moves on."""
    bad = two_versions["bad"]
    Rollup.objects.create(
        version=bad, cohort="all", window_start=hour(1), window_seconds=3600, latency=["?"] * 12, drift_stale=False
    )
    out = services.update_rollups(settle_seconds=0)
    assert out["reports"] == 30 + 30 - len(POISON)
    assert Rollup.objects.get(version=two_versions["good"], cohort="all").n_reports == 30
    q = Quarantine.objects.get(kind="rollup", version=bad)
    assert "all" in q.key and q.reason


@pytest.mark.django_db
def test_pages_do_not_fail_on_a_rollup_with_unreadable_sums(two_versions, viewer_client) -> None:
    """A rollup changed by other means than the jobs is listed as hidden with the reason, not drawn."""
    services.update_rollups(settle_seconds=0)
    services.compute_drift()
    bad = two_versions["bad"]
    Rollup.objects.create(
        version=bad, cohort="all", window_start=hour(0), window_seconds=3600, n_reports=30, n_devices=30,
        inference_count=float("inf"), error_count=1.0, latency=["?"] * 12, outputs=[1.0, 2.0, 3.0],
    )  # fmt: skip
    resp = viewer_client.get(f"/telemetry/versions/{bad.id}/")
    assert resp.status_code == 200
    assert "quarantined: its counts are not finite numbers" in resp.content.decode()


@pytest.mark.django_db
def test_old_quarantine_notes_are_pruned_with_the_reports(two_versions) -> None:
    services.update_rollups(settle_seconds=0)
    assert Quarantine.objects.filter(kind="report").count() == len(POISON)
    Quarantine.objects.filter(key=two_versions["bad_ids"][0]).update(last_at=timezone.now() - timedelta(days=31))
    services.prune_reports()
    assert Quarantine.objects.filter(kind="report").count() == len(POISON) - 1
