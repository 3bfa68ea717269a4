"""How the web server runs, in one place for gunicorn (docker/gunicorn.conf.py) and the app (settings).

No Django here: gunicorn's config file imports it before any app code. The device API's load
shedding (fleet/limits.py) sizes its slots from ``WEB_THREADS``, so its 429s engage with the
threads the server really has; the config file also writes gunicorn's final thread count back to
the environment of each worker (a ``--threads`` on the command line wins, and the app sees it).
"""

import os

THREADS_ENV = "EDGEFLEET_WEB_THREADS"
WORKERS_ENV = "EDGEFLEET_WEB_WORKERS"


def web_threads() -> int:
    """Request threads per web process (gunicorn ``--threads``; default 4)."""
    return max(1, int(os.environ.get(THREADS_ENV) or 4))


def web_workers() -> int:
    """Web processes (gunicorn ``--workers``; default 4)."""
    return max(1, int(os.environ.get(WORKERS_ENV) or 4))


def device_api_slots(threads: int | None = None) -> int:
    """Device requests one process serves at once: all threads but one, kept for pages and
    /healthz (a process with a single thread has nothing to reserve)."""
    threads = web_threads() if threads is None else threads
    return max(1, threads - 1)
