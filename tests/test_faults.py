"""Backing services away: devices get 503 + Retry-After (they back off and keep their spool), never a
500, and what they re-send once the service is back is accepted."""

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from django.test import Client

from fleet.presence import redis_client
from rollout.manifest import bump_generation
from telemetry.models import Report
from tests import factories

pytestmark = pytest.mark.django_db

DEAD_REDIS = "redis://127.0.0.1:6399/0"  # nothing listens here


@pytest.fixture
def redis_away(settings: object) -> Iterator[None]:
    settings.REDIS_URL = DEAD_REDIS
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": DEAD_REDIS}}
    redis_client.cache_clear()
    yield
    redis_client.cache_clear()


def _report(version: object) -> dict:
    from telemetry.profiles import expected_bins
    from tests.telemetry_support import grid_window

    bins = expected_bins(version)
    start, end = grid_window()  # the window that just closed, on the server's grid
    return {
        "id": str(uuid.uuid4()),
        "model": version.model.name,
        "version": version.label,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "inference_count": 100.0,
        "error_count": 1.0,
        "latency_ms": {"counts": [0.0] * 12},
        "outputs": {"counts": [0.0] * bins["output"]["n"]},
        "features": {f["name"]: {"counts": [0.0] * (len(f["edges"]) - 1)} for f in bins["features"]},
        "privacy": {"mechanism": "laplace", "epsilon": 1.0},
    }


def test_redis_down_known_devices_carry_on_new_ones_are_told_to_come_back(settings) -> None:
    # The outage starts within one epoch check interval of the last check (not after a busy
    # machine's half second): a known device is served from memory only until the next check.
    settings.EDGEFLEET_EPOCH_CHECK_SECONDS = 60
    bump_generation()
    client = Client()
    _, token = factories.device(labels={"region": "eu"})
    _, stranger = factories.device(labels={"region": "eu"}, name="stranger")
    v1 = factories.staged_version("fraud", "v1")
    factories.release(v1)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get("/api/v1/manifest", **auth).status_code == 200  # the device was told v1
    batch = {"reports": [_report(v1)]}
    saved_url, saved_caches = settings.REDIS_URL, settings.CACHES

    settings.REDIS_URL = DEAD_REDIS
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": DEAD_REDIS}}
    redis_client.cache_clear()
    try:
        # A device this worker already knows is served from memory: polls and durable telemetry
        # (acknowledged = committed in PostgreSQL) carry on through a Redis outage.
        assert client.get("/api/v1/manifest", **auth).status_code == 200
        sent = client.post("/api/v1/telemetry", json.dumps(batch), content_type="application/json", **auth)
        assert sent.status_code == 202 and sent.json()["accepted"] == [batch["reports"][0]["id"]]
        # A device this worker has never seen cannot be checked now: come back later, never a 500.
        response = client.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {stranger}")
        assert response.status_code == 503, response.content
        assert response["Retry-After"] == "30"
        assert response.json()["error"]["code"] == "unavailable"
    finally:
        settings.REDIS_URL, settings.CACHES = saved_url, saved_caches
        redis_client.cache_clear()

    again = client.post("/api/v1/telemetry", json.dumps(batch), content_type="application/json", **auth)
    assert again.status_code == 202 and again.json()["duplicates"] == [batch["reports"][0]["id"]]
    assert Report.objects.count() == 1
    assert client.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {stranger}").status_code == 200


def test_pages_say_the_service_is_away(operator_client, redis_away) -> None:
    """A page whose data lives behind the away service answers 503 with a sentence, not a 500."""
    from demo.story import STATUS_KEY  # the overview reads the demo status from the cache

    assert STATUS_KEY
    response = operator_client.get("/")
    assert response.status_code == 503
    assert "unavailable" in response.content.decode() and response["Retry-After"] == "30"


def _worker(env: dict) -> subprocess.Popen:
    """A real Celery worker process on the test database, which the test can SIGKILL."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "edgefleet", "worker", "--pool", "solo", "-l", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_worker_killed_mid_validation_loses_nothing(settings, roles) -> None:
    """SIGKILL a real worker process in the middle of a validation: the version is not lost and not
    stuck; the stuck-validation job re-queues it and another worker stages it."""
    import io
    import os
    import signal
    import time

    import onnx
    from django.db import connection

    from ota import services
    from ota.models import Model, ModelVersion
    from ota.tasks import recover_stuck_validations
    from tests.onnx_models import large_mlp

    buf = io.BytesIO()
    onnx.save(large_mlp(30 * 1024 * 1024, n_features=8, n_classes=3), buf)
    model = Model.objects.create(name="heavy")
    version = ModelVersion.objects.create(
        model=model, label="v1", artifact=factories.artifact(buf.getvalue()), want_int8=True, validation_attempts=1
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "edgefleet.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "EDGEFLEET_DATA_DIR": str(settings.DATA_DIR),
        "ORT_NUM_THREADS": "1",
    }
    first = _worker(env)
    try:
        services.enqueue_validation(version.pk)
        deadline = time.monotonic() + 90
        while ModelVersion.objects.get(pk=version.pk).validation_started_at is None:
            assert time.monotonic() < deadline, "the worker never started the validation"
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert ModelVersion.objects.get(pk=version.pk).status == "validating", "killed before it could finish"

    settings.EDGEFLEET_VALIDATION_TIMEOUT = 0
    assert recover_stuck_validations() == {"requeued": 1, "rejected": 0}
    second = _worker(env)
    try:
        deadline = time.monotonic() + 180
        while (v := ModelVersion.objects.get(pk=version.pk)).status == "validating":
            assert time.monotonic() < deadline, "the re-queued validation never finished"
            time.sleep(0.5)
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert v.status == "staged" and v.validation_attempts == 2
    assert v.variants.filter(kind="int8").exists()
