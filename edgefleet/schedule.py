"""Periodic jobs run by Celery beat. One place, so an operator sees every background job at once."""

import os

# Seconds between gate evaluations of running campaigns (settings.EDGEFLEET_GATE_INTERVAL).
GATE_INTERVAL = int(os.environ.get("EDGEFLEET_GATE_INTERVAL", 30))

BEAT_SCHEDULE: dict = {
    # "name": {"task": "app.tasks.fn", "schedule": seconds},
    "rollout-evaluate-campaigns": {"task": "rollout.evaluate_campaigns", "schedule": GATE_INTERVAL},
    "telemetry-rollup-and-drift": {"task": "telemetry.rollup_and_drift", "schedule": 60},
    "telemetry-prune-reports": {"task": "telemetry.prune_reports", "schedule": 3600},
}
