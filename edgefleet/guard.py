"""The delivery guard: a message that killed its worker twice is not run a third time.

Tasks are acknowledged late (``task_acks_late``) and re-queued when their worker dies
(``task_reject_on_worker_lost``), so no job is lost to a crash. The price is a message that crashes
every worker it reaches (one input that runs a worker out of memory, say) coming back forever and
stopping every job behind it. So each run counts itself, by task id, in the cache (Redis in
production) before it starts and clears the count when it returns or raises; a run that finds
``EDGEFLEET_TASK_MAX_CRASHES`` earlier runs that never returned does not run: the task's
``on_poisoned`` says what that means for its data (a validation rejects its version), the message
is acknowledged and the worker carries on.

If the cache is away the guard steps aside (the task runs): losing the guard is better than losing
the fleet's jobs.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

log = logging.getLogger(__name__)

KEY = "edgefleet:task-runs:{}"
TTL = 24 * 3600  # longer than any redelivery (visibility timeout) can take


def max_crashes() -> int:
    from django.conf import settings

    return int(getattr(settings, "EDGEFLEET_TASK_MAX_CRASHES", 2))


def _cache() -> Any:
    from django.core.cache import cache

    return cache


def start(task_id: str) -> int | None:
    """Count a run of ``task_id``; the number of runs so far including this one (None: cache away)."""
    key = KEY.format(task_id)
    try:
        cache = _cache()
        cache.add(key, 0, TTL)
        return int(cache.incr(key))
    except Exception as exc:  # the guard must never be the thing that stops jobs
        log.warning("delivery guard unavailable, running %s unguarded: %s", task_id, exc)
        return None


def finish(task_id: str) -> None:
    try:
        _cache().delete(KEY.format(task_id))
    except Exception as exc:
        log.warning("delivery guard could not clear %s: %s", task_id, exc)


class GuardedTask(Task):
    """Every EdgeFleet task: counts its runs and refuses a message that crashed its worker twice."""

    def on_poisoned(self, *args: Any, **kwargs: Any) -> None:
        """Called instead of the task when its message crashed workers too often. Override to clean up."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        task_id = request.id
        if request.called_directly or request.is_eager or not task_id:
            return super().__call__(*args, **kwargs)
        runs = start(task_id)
        if runs is not None and runs - 1 >= max_crashes():
            log.error("task %s[%s] crashed its worker %d times; not running it again", self.name, task_id, runs - 1)
            try:
                self.on_poisoned(*args, **kwargs)
            except Exception:
                log.exception("on_poisoned of %s[%s] failed", self.name, task_id)
            return None
        try:
            # The worker's tracer has pushed this delivery's request already; calling run() directly
            # keeps ``self.request.id`` visible to the task (Task.__call__ would push an empty one).
            return self.run(*args, **kwargs)
        finally:
            finish(task_id)
