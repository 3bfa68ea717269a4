"""Periodic jobs run by Celery beat. One place, so an operator sees every background job at once."""

BEAT_SCHEDULE: dict = {
    # "name": {"task": "app.tasks.fn", "schedule": seconds},
}
