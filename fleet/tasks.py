"""Fleet background jobs (only call services)."""

from celery import shared_task

from fleet import presence


@shared_task(name="fleet.tasks.flush_presence", ignore_result=True)
def flush_presence() -> int:
    """Write last-seen and reported state batched in Redis to the database (beat: every 15 s)."""
    return presence.flush()
