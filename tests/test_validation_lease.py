"""The validation lease and the delivery guard, on the real database and Redis (no worker needed).

A version whose worker died is re-queued once its lease (the validation task's hard time limit) has
run out, so it is never left ``validating`` longer than that plus one recovery interval; duplicate
messages stand aside; a message that crashed its worker twice rejects its version instead of running.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from edgefleet import guard
from edgefleet.schedule import BEAT_SCHEDULE, RECOVERY_INTERVAL
from ota import services
from ota.limits import CRASHED_TWICE
from ota.models import Model, ModelVersion
from ota.tasks import validate_version
from tests.onnx_models import mlp_classifier

pytestmark = pytest.mark.django_db(transaction=True)


def version(label: str = "v1", seed: int = 0, **fields: object) -> ModelVersion:
    content = mlp_classifier(seed=seed).SerializeToString()
    sha = hashlib.sha256(content).hexdigest()
    artifact, _ = services.store_bytes(ContentFile(content), sha, len(content), "onnx")
    model, _ = Model.objects.get_or_create(name="fraud")
    fields.setdefault("validation_attempts", 1)
    return ModelVersion.objects.create(model=model, label=label, artifact=artifact, **fields)


def started(seconds_ago: float, task_id: str = "run-a", **fields: object) -> ModelVersion:
    """A version whose validation started ``seconds_ago`` on a worker that then died (lease as it set it)."""
    at = timezone.now() - timedelta(seconds=seconds_ago)
    deadline = at + timedelta(seconds=services.lease_seconds())
    return version(validation_started_at=at, validation_deadline=deadline, validation_task_id=task_id, **fields)


def test_the_lease_is_the_validation_task_hard_limit_and_recovery_runs_each_interval(settings: object) -> None:
    lease = services.lease_seconds()
    assert lease == settings.CELERY_TASK_ANNOTATIONS["ota.tasks.validate_version"]["time_limit"]
    assert settings.EDGEFLEET_VALIDATION_TIMEOUT < lease <= settings.EDGEFLEET_VALIDATION_TIMEOUT + 60
    assert BEAT_SCHEDULE["ota-recover-stuck-validations"]["schedule"] == RECOVERY_INTERVAL == 60
    # So the worst case after a worker dies is the time limit plus one interval: 7 minutes, not 15 + 60.
    assert lease + RECOVERY_INTERVAL <= 420


def test_a_dead_workers_version_is_requeued_as_soon_as_its_lease_runs_out(store: object) -> None:
    lease = services.lease_seconds()
    alive = started(lease - 5, label="alive", seed=1)
    dead = started(lease + 1, label="dead", seed=2)
    assert services.recover_stuck_validations() == {"requeued": 1, "rejected": 0}
    dead.refresh_from_db()
    assert dead.status == "validating" and dead.validation_attempts == 2
    assert dead.validation_task_id not in ("", "run-a") and dead.validation_started_at is None
    alive.refresh_from_db()
    assert alive.validation_attempts == 1 and alive.validation_task_id == "run-a"
    assert services.recover_stuck_validations() == {"requeued": 0, "rejected": 0}  # re-queued once, not twice


def test_a_message_that_never_started_is_requeued_without_counting_an_attempt(store: object) -> None:
    lost = version(validation_task_id="lost", validation_deadline=timezone.now() - timedelta(seconds=1))
    assert services.recover_stuck_validations() == {"requeued": 1, "rejected": 0}
    lost.refresh_from_db()
    assert lost.validation_attempts == 1 and lost.validation_task_id != "lost"


def test_a_duplicate_message_stands_aside_and_a_redelivery_takes_over(store: object) -> None:
    v = started(5, task_id="run-a")
    before = v.validation_started_at
    assert services.run_validation(v.pk, "run-b") == "validating"  # another message, live lease: no run
    v.refresh_from_db()
    assert v.validation_started_at == before and v.validation_task_id == "run-a"
    # The same message again is the broker re-delivering it after its run died: it takes over and finishes.
    assert services.run_validation(v.pk, "run-a") == "staged"
    assert services.run_validation(v.pk, "run-b") == "staged"  # a late duplicate changes nothing


def test_a_requeued_validation_is_idempotent(store: object) -> None:
    v = started(services.lease_seconds() + 1, task_id="run-a")
    services.recover_stuck_validations()
    v.refresh_from_db()
    new = v.validation_task_id
    assert services.run_validation(v.pk, new) == "staged"
    assert services.run_validation(v.pk, "run-a") == "staged"  # the original message, restored late
    v.refresh_from_db()
    assert v.status == "staged" and v.validation_attempts == 2 and v.error == ""


def test_the_guard_refuses_a_message_that_crashed_its_worker_twice(store: object) -> None:
    task_id = str(uuid.uuid4())
    v = version(validation_task_id=task_id)
    assert guard.start(task_id) == 1 and guard.start(task_id) == 2  # two runs that never returned
    validate_version.push_request(id=task_id, called_directly=False, is_eager=False)
    try:
        assert validate_version(v.pk) is None
    finally:
        validate_version.pop_request()
    v.refresh_from_db()
    assert v.status == "rejected" and v.error == CRASHED_TWICE


def test_one_crash_is_forgiven_and_a_finished_run_clears_its_count(store: object) -> None:
    task_id = str(uuid.uuid4())
    v = version(validation_task_id=task_id)
    assert guard.start(task_id) == 1  # the first run died
    validate_version.push_request(id=task_id, called_directly=False, is_eager=False)
    try:
        assert validate_version(v.pk) == "staged"
    finally:
        validate_version.pop_request()
    assert guard.start(task_id) == 1  # cleared when the run returned


def test_the_guard_leaves_a_version_another_message_owns(store: object) -> None:
    v = started(5, task_id="owner")
    assert services.reject_crashed(v.pk, "stale-duplicate") == "validating"
    assert services.reject_crashed(v.pk, "owner") == "rejected"
