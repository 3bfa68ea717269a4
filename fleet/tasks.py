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


@shared_task(name="fleet.tasks.count_statuses", ignore_result=True)
def count_statuses() -> int:
    """Keep the overview's status counts for a large fleet (beat: every 15 s; fleet/overview.py)."""
    from fleet import kept, overview

    total = kept.total() if kept.available() else 0
    if total < overview.kept_status_above():
        return 0
    return sum(overview.count_statuses().values())
