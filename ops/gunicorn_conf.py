"""gunicorn hooks for Prometheus multiprocess mode (``gunicorn -c python:ops.gunicorn_conf``).

With ``PROMETHEUS_MULTIPROC_DIR`` set, each worker writes its counters to files in that directory;
it must start empty (counters from an earlier run would add up) and a dead worker's gauges go.
"""

import os
import shutil
from pathlib import Path
from typing import Any


def on_starting(server: Any) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
