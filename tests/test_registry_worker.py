"""Validation on a real Celery worker (Redis broker, real PostgreSQL), and stuck-job recovery."""

import hashlib
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from ota import services
from ota.models import Model, ModelVersion
from ota.tasks import recover_stuck_validations
from tests.onnx_models import mlp_classifier

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.usefixtures("roles")]


def wait_for(version_id: int, timeout: float = 60) -> ModelVersion:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = ModelVersion.objects.get(pk=version_id)
        if version.status != "validating":
            return version
        time.sleep(0.2)
    raise AssertionError(f"version {version_id} still validating after {timeout} s")


def test_api_upload_is_validated_by_the_worker_and_staged(celery_worker: object, operator: object, store: Path) -> None:
    token = ApiToken.issue(operator, "ci")[1]
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    model = SimpleUploadedFile("m.onnx", mlp_classifier().SerializeToString())
    response = client.post("/api/v1/models/fraud/versions", {"file": model, "label": "v1", "int8": "1"}, **auth)
    assert response.status_code == 201
    version = wait_for(ModelVersion.objects.get(label="v1").pk)
    assert version.status == "staged", version.error
    body = client.get(response.json()["status_url"], **auth).json()
    assert body["status"] == "staged" and body["report"]["latency_ms"]["p95"] > 0
    # every variant but static int8, which needs a reference set to calibrate on
    assert sorted(v["kind"] for v in body["variants"]) == ["fp16", "int8", "optimized"]
    assert version.model.contract["version"] == "v1"


def test_a_bad_upload_is_rejected_by_the_worker(celery_worker: object, operator: object, store: Path) -> None:
    client = Client()
    client.force_login(operator)
    junk = SimpleUploadedFile("m.onnx", b"\x08\x07" + bytes(range(256)) * 8)
    client.post("/models/upload/", {"name": "fraud", "label": "v1", "file": junk})
    version = wait_for(ModelVersion.objects.get(label="v1").pk)
    assert version.status == "rejected" and "ONNX" in version.error


def make_stuck(operator: object, attempts: int, label: str = "v1", seed: int = 0) -> ModelVersion:
    """A version whose validation task was lost (a worker died): validating, started long ago."""
    content = mlp_classifier(seed=seed).SerializeToString()
    sha = hashlib.sha256(content).hexdigest()
    artifact, _ = services.store_bytes(ContentFile(content), sha, len(content), "onnx")
    model, _ = Model.objects.get_or_create(name="fraud")
    long_ago = timezone.now() - timedelta(hours=2)
    version = ModelVersion.objects.create(model=model, label=label, artifact=artifact, validation_attempts=attempts)
    ModelVersion.objects.filter(pk=version.pk).update(created_at=long_ago, validation_started_at=long_ago)
    return version


def test_stuck_validation_is_requeued_and_then_staged(celery_worker: object, operator: object, store: Path) -> None:
    version = make_stuck(operator, attempts=1)
    fresh = make_stuck(operator, attempts=1, label="v2", seed=1)
    ModelVersion.objects.filter(pk=fresh.pk).update(validation_started_at=timezone.now())  # still within timeout
    assert recover_stuck_validations.delay() is not None
    version = wait_for(version.pk)
    assert version.status == "staged" and version.validation_attempts == 2
    assert ModelVersion.objects.get(pk=fresh.pk).validation_attempts == 1  # left alone


def test_stuck_validation_is_rejected_after_three_attempts(
    transactional_db: None, operator: object, store: Path
) -> None:
    version = make_stuck(operator, attempts=3)
    assert services.recover_stuck_validations() == {"requeued": 0, "rejected": 1}
    version.refresh_from_db()
    assert version.status == "rejected" and "did not finish after 3 attempts" in version.error
    assert services.recover_stuck_validations() == {"requeued": 0, "rejected": 0}


def test_recovery_is_in_the_beat_schedule(settings: object) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["ota-recover-stuck-validations"]
    assert entry["task"] == "ota.tasks.recover_stuck_validations" and entry["schedule"] == 60
    assert entry["options"]["queue"] == "control" and entry["options"]["expires"] < 60
