"""gunicorn settings for EdgeFleet: ``gunicorn -c docker/gunicorn.conf.py`` (Dockerfile, run_edgefleet).

Workers and threads come from EDGEFLEET_WEB_WORKERS / EDGEFLEET_WEB_THREADS (edgefleet/serving.py),
the same place the device API's load shedding reads, so its slots (threads - 1) can actually fill.
gunicorn takes one config file: this one also carries ops/gunicorn_conf.py's Prometheus hooks.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgefleet import serving
from ops.gunicorn_conf import child_exit, on_starting  # noqa: F401  (Prometheus multiprocess mode)

wsgi_app = "edgefleet.wsgi"
bind = os.environ.get("EDGEFLEET_WEB_BIND", "0.0.0.0:8000")
workers = serving.web_workers()
threads = serving.web_threads()
worker_class = "gthread"
# A device that opens a connection and sends nothing is dropped after this long, not kept forever.
timeout = 30
keepalive = 5
# Headers: the longest legitimate one is X-Agent-State (4 KiB); gunicorn's defaults bound the rest.
limit_request_field_size = 8190


def post_fork(server: object, worker: object) -> None:
    """Tell the app the thread count gunicorn really runs (a ``--threads`` on the command line wins)."""
    os.environ[serving.THREADS_ENV] = str(worker.cfg.threads)  # type: ignore[attr-defined]
