"""Which Celery queue each task runs on, and how long it may run. One table, read by settings and docs.

Three queues, each served by its own worker so no queue can hold up another:

- ``control``: the jobs that decide about the fleet (campaign gates and rollbacks, presence flush,
  rollups and drift) and the watchdog that re-queues stuck validations. Short jobs; a rollback must
  never wait behind a model upload.
- ``validation``: checking uploaded models (each in a limited child process, ``ota.sandbox``).
- ``default``: housekeeping (pruning, orphan artifacts), notifications, and any task not routed elsewhere.

Every task has a soft and a hard time limit (enforced by the prefork pool). The validation limits
follow ``EDGEFLEET_VALIDATION_TIMEOUT``: the child's wall clock, plus a grace for storing the results.
"""

from __future__ import annotations

CONTROL = "control"
VALIDATION = "validation"
DEFAULT = "default"
QUEUES = (CONTROL, VALIDATION, DEFAULT)

# task name -> (queue, soft limit s, hard limit s); ``None`` limits are filled in by ``annotations``.
TASKS: dict[str, tuple[str, int | None, int | None]] = {
    "rollout.evaluate_campaigns": (CONTROL, 240, 300),
    "rollout.evaluate_campaign": (CONTROL, 240, 300),
    "rollout.move_devices": (CONTROL, 540, 600),
    "rollout.resume_moves": (CONTROL, 20, 30),
    "fleet.tasks.flush_presence": (CONTROL, 50, 60),
    "fleet.tasks.fold_counts": (CONTROL, 50, 60),
    "fleet.tasks.count_statuses": (CONTROL, 10, 15),
    "telemetry.rollup_and_drift": (CONTROL, 540, 600),
    "ota.tasks.recover_stuck_validations": (CONTROL, 50, 60),
    # Secure-aggregation rounds: short steps (one phase of one round), deadlines a poll apart.
    "telemetry.form_rounds": (CONTROL, 50, 60),
    "telemetry.advance_rounds": (CONTROL, 50, 60),
    "telemetry.advance_round": (CONTROL, 50, 60),
    "ota.tasks.validate_version": (VALIDATION, None, None),
    "telemetry.prune_reports": (DEFAULT, 840, 900),
    "ota.tasks.delete_orphan_artifacts": (DEFAULT, 540, 600),
    # Notifications wait on other people's servers: never on the control worker. A delivery's hard
    # limit stays inside its own claim (2 x EDGEFLEET_NOTIFY_TIMEOUT + 30 s), so a killed one is retried.
    "notify.deliver": (DEFAULT, 40, 50),
    "notify.send_due": (DEFAULT, 50, 60),
    "notify.sweep": (DEFAULT, 240, 300),
}
# Any task not in the table (a new one) still has limits.
DEFAULT_SOFT_LIMIT = 240
DEFAULT_HARD_LIMIT = 300
VALIDATION_GRACE = 60  # seconds after the child's wall clock, for fetching the artifact and storing results


def validation_limits(timeout: int) -> tuple[int, int]:
    """(soft, hard) for one validation task whose child may run ``timeout`` seconds."""
    return timeout + min(VALIDATION_GRACE // 2, timeout), timeout + min(VALIDATION_GRACE, timeout)


def routes() -> dict[str, dict[str, str]]:
    return {name: {"queue": queue} for name, (queue, _, _) in TASKS.items()}


def annotations(validation_timeout: int) -> dict[str, dict[str, int]]:
    """``task_annotations``: the time limits of each task (set on the task class by Celery)."""
    out: dict[str, dict[str, int]] = {}
    for name, (_, soft, hard) in TASKS.items():
        if soft is None or hard is None:
            soft, hard = validation_limits(validation_timeout)
        out[name] = {"soft_time_limit": soft, "time_limit": hard}
    return out


def longest_hard_limit(validation_timeout: int) -> int:
    return max(hard for hard in (a["time_limit"] for a in annotations(validation_timeout).values()))


def queue_of(task: str) -> str:
    return TASKS.get(task, (DEFAULT, None, None))[0]
