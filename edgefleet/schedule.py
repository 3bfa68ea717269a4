"""Periodic jobs run by Celery beat. One place, so an operator sees every background job at once.

Each entry names its queue (see ``edgefleet/queues.py``) and expires before the next tick is due: a
tick a busy or dead worker could not take in time is dropped, never run late or piled up behind
others. ``expire_seconds`` is the same value for django-celery-beat's database scheduler, which
reads that key instead of ``expires``.
"""

import os

from edgefleet.queues import queue_of

# Seconds between gate evaluations of running campaigns (settings.EDGEFLEET_GATE_INTERVAL).
GATE_INTERVAL = int(os.environ.get("EDGEFLEET_GATE_INTERVAL", 30))
RECOVERY_INTERVAL = 60  # seconds between looks for validations whose worker died


def expires_after(every: float) -> int:
    """A tick is stale once most of its interval has passed (always shorter than the interval)."""
    return max(1, int(every * 0.8))


def entry(task: str, every: int) -> dict:
    ttl = expires_after(every)
    return {
        "task": task,
        "schedule": every,
        "options": {"queue": queue_of(task), "expires": ttl, "expire_seconds": ttl},
    }


BEAT_SCHEDULE: dict = {
    "rollout-evaluate-campaigns": entry("rollout.evaluate_campaigns", GATE_INTERVAL),
    "telemetry-rollup-and-drift": entry("telemetry.rollup_and_drift", 60),
    "telemetry-form-rounds": entry("telemetry.form_rounds", 30),
    "telemetry-advance-rounds": entry("telemetry.advance_rounds", 5),
    "telemetry-prune-reports": entry("telemetry.prune_reports", 3600),
    "ota-recover-stuck-validations": entry("ota.tasks.recover_stuck_validations", RECOVERY_INTERVAL),
    "ota-delete-orphan-artifacts": entry("ota.tasks.delete_orphan_artifacts", 3600),
    "fleet-flush-presence": entry("fleet.tasks.flush_presence", 15),
    "fleet-fold-counts": entry("fleet.tasks.fold_counts", 15),
    "fleet-count-statuses": entry("fleet.tasks.count_statuses", 15),
    "rollout-resume-moves": entry("rollout.resume_moves", 30),
    "notify-send-due": entry("notify.send_due", 10),
    "notify-sweep": entry("notify.sweep", 60),
}
