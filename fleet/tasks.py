"""Fleet background jobs (only call services)."""

from celery import shared_task

from fleet import presence


@shared_task(name="fleet.tasks.flush_presence", ignore_result=True)
def flush_presence() -> int:
    """Write last-seen and reported state batched in Redis to the database (beat: every 15 s)."""
    return presence.flush()


@shared_task(name="fleet.tasks.fold_counts", ignore_result=True)
def fold_counts() -> int:
    """Add the kept-count deltas into the counts (beat: every 15 s), so readers add only recent ones."""
    from fleet import kept

    return kept.fold() if kept.available() else 0
