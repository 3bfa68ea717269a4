"""Shared by the server benches: a fresh PostgreSQL database, the Django environment, gunicorn on 127.0.0.1.

The poll, simulator and rollback benches each carried a copy of these steps; one copy keeps their database
reset, settings and server start alike, so their figures stay comparable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SECRET_KEY = "bench-only-secret-key-not-for-production-0123456789"
# A bench is a whole fleet behind one address, its clock compressed: the rate limits (fleet/limits.py)
# would throttle it by design. Buckets too large to empty keep their cost (a check in every call's
# Redis round trip) in the figures without refusing anything.
UNLIMITED = "100000000/100000000"
RATES = ("MANIFEST", "UPLOAD", "ARTIFACT", "ENROLL", "SIGNING_KEY", "AUTH_FAIL")


def django_env(db: str, redis_url: str, data_dir: str, **extra: str) -> dict[str, str]:
    """This process's environment plus the bench's settings; applied here too (django.setup() reads it)."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db}",
        REDIS_URL=redis_url,
        EDGEFLEET_DATA_DIR=data_dir,
        DJANGO_SETTINGS_MODULE="edgefleet.settings",
        DEBUG="0",
        SECRET_KEY=SECRET_KEY,
        **{f"EDGEFLEET_RATE_{name}": UNLIMITED for name in RATES},
        **extra,
    )
    os.environ.update(env)
    return env


def fresh_database(name: str, env: dict[str, str]) -> None:
    """Drop and create PostgreSQL database ``name`` on 127.0.0.1, then migrate it (``env`` points at it)."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)


def gunicorn_command(port: int, *args: str) -> list[str]:
    """gunicorn serving the project on 127.0.0.1:``port``; ``args`` are further gunicorn options."""
    return [sys.executable, "-m", "gunicorn", "edgefleet.wsgi", "-b", f"127.0.0.1:{port}", *args]


def wait_until_up(url: str, tries: int = 100) -> None:
    """Poll ``url`` every 0.2 s until it answers, at most ``tries`` times (the bench's requests then tell)."""
    for _ in range(tries):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)


@contextmanager
def start_gunicorn(env: dict[str, str], port: int, *args: str, **popen: Any) -> Iterator[subprocess.Popen]:
    """gunicorn (``gunicorn_command``) answering /healthz for the block; stopped (SIGTERM) after it."""
    server = subprocess.Popen(gunicorn_command(port, *args), cwd=ROOT, env=env, **popen)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz")
        yield server
    finally:
        server.terminate()
        server.wait(30)
