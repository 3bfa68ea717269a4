"""Queues, routes, time limits and beat expiry: a long validation or a backlog never delays a rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgefleet import queues
from edgefleet.celery import app
from fleet.management.commands.run_edgefleet import processes

CONTROL = {
    "rollout.evaluate_campaigns",
    "rollout.evaluate_campaign",
    "rollout.move_devices",
    "rollout.resume_moves",
    "fleet.tasks.flush_presence",
    "fleet.tasks.fold_counts",
    "fleet.tasks.count_statuses",
    "telemetry.rollup_and_drift",
    "ota.tasks.recover_stuck_validations",
    "telemetry.form_rounds",
    "telemetry.advance_rounds",
    "telemetry.advance_round",
}


def our_tasks() -> dict:
    app.loader.import_default_modules()
    return {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}


def queue_of(name: str) -> str:
    return app.amqp.router.route({}, name)["queue"].name


def test_fleet_jobs_run_on_control_validation_on_its_own_and_the_rest_on_default() -> None:
    tasks = our_tasks()
    assert set(tasks) >= CONTROL
    for name in tasks:
        expected = "control" if name in CONTROL else "validation" if name == "ota.tasks.validate_version" else "default"
        assert queue_of(name) == expected, name
    assert queue_of("some.future.task") == "default"


def test_every_task_has_a_soft_and_a_hard_time_limit_and_the_delivery_guard(settings: object) -> None:
    from edgefleet.guard import GuardedTask

    for name, task in our_tasks().items():
        assert isinstance(task, GuardedTask), name
        soft = task.soft_time_limit or app.conf.task_soft_time_limit
        hard = task.time_limit or app.conf.task_time_limit
        assert soft and hard and 0 < soft < hard, name
    validate = app.tasks["ota.tasks.validate_version"]
    assert validate.soft_time_limit > settings.EDGEFLEET_VALIDATION_TIMEOUT  # the child's wall clock ends first
    # A redelivered message must find its first run gone: the visibility timeout outlasts every task.
    longest = max(t.time_limit or app.conf.task_time_limit for t in our_tasks().values())
    assert longest < settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] < 3600


def test_every_beat_entry_expires_before_its_next_tick_on_the_right_queue(settings: object) -> None:
    assert settings.CELERY_BEAT_SCHEDULE
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        options = entry["options"]
        assert 0 < options["expires"] < entry["schedule"], name
        assert options["expire_seconds"] == options["expires"], name
        assert options["queue"] == queue_of(entry["task"]), name
    assert queues.queue_of("rollout.evaluate_campaigns") == "control"


def test_the_database_scheduler_sends_ticks_with_their_queue_and_expiry(
    transactional_db: None, settings: object
) -> None:
    """django-celery-beat reads ``expire_seconds`` (not ``expires``) when it stores the schedule."""
    from django_celery_beat.schedulers import DatabaseScheduler

    scheduler = DatabaseScheduler(app=app)
    schedule = scheduler.schedule
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert schedule[name].options["queue"] == entry["options"]["queue"], name
        assert schedule[name].options["expires"] == entry["options"]["expires"], name


@pytest.mark.parametrize("source", ["run_edgefleet", "compose"])
def test_a_control_worker_runs_apart_from_the_validation_worker(source: str) -> None:
    if source == "run_edgefleet":
        commands = [" ".join(cmd) for name, cmd in processes("python", "127.0.0.1", 8000).items() if "worker" in name]
    else:
        compose = yaml.safe_load((Path(__file__).parent.parent / "docker" / "compose.yaml").read_text())
        commands = [s["command"] for s in compose["services"].values() if " worker" in str(s.get("command", ""))]
    consumed = [set(cmd.split(" -Q ")[1].split()[0].split(",")) for cmd in commands]
    assert {"control"} in consumed  # a worker that serves control and nothing else
    assert any({"validation", "default"} <= q and "control" not in q for q in consumed)
    assert all(" -Q " in cmd for cmd in commands), "a worker without -Q would consume every queue"
