"""Periodic jobs run by Celery beat. One place, so an operator sees every background job at once."""

import os

# Seconds between gate evaluations of running campaigns (settings.EDGEFLEET_GATE_INTERVAL).
GATE_INTERVAL = int(os.environ.get("EDGEFLEET_GATE_INTERVAL", 30))

BEAT_SCHEDULE: dict = {
    # "name": {"task": "app.tasks.fn", "schedule": seconds},
    "rollout-evaluate-campaigns": {"task": "rollout.evaluate_campaigns", "schedule": GATE_INTERVAL},
    "telemetry-rollup-and-drift": {"task": "telemetry.rollup_and_drift", "schedule": 60},
    "telemetry-prune-reports": {"task": "telemetry.prune_reports", "schedule": 3600},
    "ota-recover-stuck-validations": {"task": "ota.tasks.recover_stuck_validations", "schedule": 60},
    "ota-delete-orphan-artifacts": {"task": "ota.tasks.delete_orphan_artifacts", "schedule": 3600},
    "fleet-flush-presence": {"task": "fleet.tasks.flush_presence", "schedule": 15},
    "notify-send-due": {"task": "notify.send_due", "schedule": 10},
    "notify-sweep": {"task": "notify.sweep", "schedule": 60},
}
