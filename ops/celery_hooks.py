"""Celery signal handlers: job durations into Redis (all workers' figures in one place), and the
request id of the web request that queued a job carried into the job's log lines."""

import time
from typing import Any

from celery import signals

from ops.logs import REQUEST_ID

_started: dict[str, tuple[float, Any]] = {}


def _publish(headers: dict[str, Any] | None = None, **kw: Any) -> None:
    rid = REQUEST_ID.get()
    if rid and headers is not None and "request_id" not in headers:
        headers["request_id"] = rid


def _prerun(task_id: str = "", task: Any = None, **kw: Any) -> None:
    rid = getattr(getattr(task, "request", None), "request_id", None)
    token = REQUEST_ID.set(rid if isinstance(rid, str) else f"task-{task_id}")
    _started[task_id] = (time.perf_counter(), token)


def _postrun(task_id: str = "", task: Any = None, state: str | None = None, **kw: Any) -> None:
    started = _started.pop(task_id, None)
    if started is None:
        return
    start, token = started
    try:
        REQUEST_ID.reset(token)
    except ValueError:  # reset from another context (a pool that switched threads): harmless
        REQUEST_ID.set(None)
    outcome = {"SUCCESS": "success", "RETRY": "retry"}.get(state or "", "failure")
    try:
        from ops.metrics import record_task

        record_task(getattr(task, "name", "?"), time.perf_counter() - start, outcome)
    except Exception:
        pass


def connect() -> None:
    signals.before_task_publish.connect(_publish, dispatch_uid="ops.publish", weak=False)
    signals.task_prerun.connect(_prerun, dispatch_uid="ops.prerun", weak=False)
    signals.task_postrun.connect(_postrun, dispatch_uid="ops.postrun", weak=False)
