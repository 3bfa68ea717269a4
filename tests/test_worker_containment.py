"""Real Celery worker processes against hostile uploads, crashes and backlogs.

- A worker survives uploads built to exhaust its memory, and goes on staging healthy models.
- A message whose run was SIGKILLed twice is not run a third time; its version is rejected.
- A rollback runs on the control worker while the validation worker is busy with a slow model.
"""

from __future__ import annotations

import hashlib
import os
import signal
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from ota import services
from ota.limits import CRASHED_TWICE
from ota.models import Model, ModelVersion
from rollout.models import Campaign
from rollout.tasks import evaluate_campaigns
from tests import onnx_models as models
from tests.test_campaign_worker import fleet, telemetry  # noqa: F401  (the fleet fixture)
from tests.worker_procs import (
    alive,
    children,
    cmdline,
    descendants,
    peak_rss_mb,
    wait_until,
    worker,
    worker_env,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def finished(*pks: int) -> list[ModelVersion] | None:
    versions = list(ModelVersion.objects.filter(pk__in=pks).order_by("pk"))
    return None if any(v.status == "validating" for v in versions) else versions


def upload(client: Client, token: str, name: str, model: object, **extra: object) -> object:
    data = {"label": "v1", "file": SimpleUploadedFile(f"{name}.onnx", model.SerializeToString()), **extra}
    return client.post(f"/api/v1/models/{name}/versions", data, HTTP_AUTHORIZATION=f"Bearer {token}")


def stored(content: bytes, kind: str) -> object:
    sha = hashlib.sha256(content).hexdigest()
    return services.store_bytes(ContentFile(content), sha, len(content), kind)[0]


def queued_version(name: str, model: object, **fields: object) -> ModelVersion:
    """A version row as ``create_version`` leaves it (validating, lease owner set), then queued."""
    version = ModelVersion.objects.create(
        model=Model.objects.get_or_create(name=name)[0],
        label=fields.pop("label", "v1"),
        artifact=stored(model.SerializeToString(), "onnx"),
        validation_attempts=1,
        validation_task_id=str(uuid.uuid4()),
        validation_deadline=timezone.now() + timedelta(seconds=services.lease_seconds()),
        **fields,
    )
    services.enqueue_validation(version.pk, version.validation_task_id)
    return version


def sandbox_child_of(pid: int) -> int | None:
    return next((p for p in descendants(pid) if "ota.sandbox_child" in cmdline(p)), None)


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.npz_bomb(tmp_path_factory.mktemp("bomb") / "bomb.npz")


def test_a_worker_survives_hostile_uploads_and_still_stages_a_good_model(
    settings: object, roles: None, operator: object, npz_bomb: Path
) -> None:
    client, token = Client(), ApiToken.issue(operator, "ci")[1]
    with worker(worker_env(settings), "validation,default") as proc:
        assert upload(client, token, "huge", models.huge_input()).status_code == 201
        assert upload(client, token, "expand", models.expand_to(1 << 28)).status_code == 201
        # The web refuses a reference bomb from its zip headers (read in a sandbox child of its own) ...
        refused = upload(
            client,
            token,
            "bombed",
            models.mlp_classifier(),
            reference=SimpleUploadedFile("r.npz", npz_bomb.read_bytes()),
        )
        assert refused.status_code == 400 and "unpacks to 1.0 GiB" in refused.json()["error"]["message"]
        # ... and a version holding one anyway (stored before the check existed) is refused by the worker.
        bombed = queued_version(
            "bombed", models.mlp_classifier(seed=1), reference_artifact=stored(npz_bomb.read_bytes(), "npz")
        )
        assert upload(client, token, "fraud", models.mlp_classifier(seed=2), int8="1").status_code == 201
        pks = [ModelVersion.objects.get(model__name=n).pk for n in ("huge", "expand")] + [bombed.pk]
        good = ModelVersion.objects.get(model__name="fraud")
        huge, expand, bombed, good = wait_until(lambda: finished(*pks, good.pk), 300, "the four validations")

        assert huge.status == "rejected" and "Input 'x' is declared as [10000000, 10000000]" in huge.error
        assert expand.status == "rejected" and "would hold 268,435,456 elements" in expand.error
        assert bombed.status == "rejected"
        assert bombed.error.startswith("Reference data set: The reference set unpacks to 1.0 GiB")
        assert good.status == "staged", good.error
        assert good.variants.filter(kind="int8").exists() and good.report["limits"]["memory_bytes"] == 2048 << 20
        for v in (huge, expand, bombed):
            assert "Traceback" not in v.error and str(settings.DATA_DIR) not in v.error

        # The same worker process did all of it and never grew: the models ran in its children.
        assert alive(proc.pid) and peak_rss_mb(proc.pid) < 400
        assert sandbox_child_of(proc.pid) is None


def test_a_message_that_killed_its_worker_twice_is_not_run_a_third_time(
    settings: object, roles: None, tmp_path: Path
) -> None:
    """SIGKILL the pool process running a validation twice: the worker re-queues the message each
    time (acks late, reject on worker lost); the third delivery is refused by the delivery guard."""
    slow = queued_version("slow", models.busy_loop())
    log = tmp_path / "worker.log"
    with worker(worker_env(settings), "validation,default", pool="prefork", log=log) as proc:
        for attempt in (1, 2):
            sandboxed = wait_until(lambda: sandbox_child_of(proc.pid), 120, f"run {attempt} in the sandbox")
            pool = next(p for p in children(proc.pid) if sandboxed in [*descendants(p)])
            os.kill(pool, signal.SIGKILL)
            wait_until(lambda p=pool, s=sandboxed: not alive(p) and not alive(s), 30, "the pool process to die")
        rejected = wait_until(lambda: finished(slow.pk), 120, "the guard to reject the version")[0]
        assert rejected.status == "rejected" and rejected.error == CRASHED_TWICE
        assert "validation crashed the worker twice" in rejected.error
        assert rejected.report["steps"][-1] == {"name": "worker", "ok": False, "error": CRASHED_TWICE}
        assert sandbox_child_of(proc.pid) is None  # the killed runs' children died with them

        # The worker goes on: the next upload is validated and staged.
        good = queued_version("fraud", models.mlp_classifier())
        assert wait_until(lambda: finished(good.pk), 120, "the next validation")[0].status == "staged"
        assert alive(proc.pid)
    assert log.read_text().count("crashed its worker 2 times") == 1


def test_a_rollback_runs_while_a_validation_is_still_running(
    settings: object,
    roles: None,
    fleet: dict,  # noqa: F811
) -> None:
    env = worker_env(settings)
    # One slow validation runs and two wait behind it: the validation worker is busy for minutes.
    slow = [queued_version("slow", models.busy_loop(1 << 40 | i), label=f"v{i}") for i in range(3)]
    with worker(env, "validation,default", name="validation") as busy, worker(env, "control", name="control"):
        wait_until(lambda: sandbox_child_of(busy.pid), 120, "a validation to be running")
        telemetry(fleet, canary_errors=150.0, slow=True)
        evaluate_campaigns.delay()
        wait_until(lambda: Campaign.objects.get(pk=fleet["c"].pk).state == "rolled_back", 60, "the rollback")
        assert [v.status for v in ModelVersion.objects.filter(pk__in=[s.pk for s in slow])] == ["validating"] * 3
        assert sandbox_child_of(busy.pid) is not None  # the validation is still being worked on
