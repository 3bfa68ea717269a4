"""Settings for the test suite: real PostgreSQL and Redis on this machine unless told otherwise.

Each parallel run can pick its own database (``TEST_DATABASE_NAME``) and Redis db (``REDIS_URL``).
"""

import os
import re
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
_xdist = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
if _xdist:
    # Under ``pytest -n N`` each worker gets its own Redis db (cache, buckets and the Celery broker: a
    # worker's Celery must never run another's tasks on the wrong database) and its own data directory;
    # pytest-django already gives each its own test database. Set in the environment, so processes the
    # tests start (gunicorn, celery) inherit them.
    _base, _, _db = os.environ["REDIS_URL"].rpartition("/")
    os.environ["REDIS_URL"] = f"{_base}/{int(_db or 0) + int(_xdist[1])}"
    os.environ["EDGEFLEET_DATA_DIR"] = tempfile.mkdtemp(prefix=f"edgefleet-test-{_xdist[0]}-")
os.environ.setdefault("EDGEFLEET_DATA_DIR", tempfile.mkdtemp(prefix="edgefleet-test-"))
os.environ.setdefault("ORT_NUM_THREADS", "1")
# The live test server runs a thread per connection, not gunicorn's few: size load shedding for that
# (tests/test_protocol_limits.py runs real gunicorn with the deployed settings).
os.environ.setdefault("EDGEFLEET_DEVICE_API_CONCURRENCY", "64")
# Protocol tests run both budgets in every window; tests of the policy's schedule set "policy".
os.environ.setdefault("EDGEFLEET_ROUND_SCHEDULE", "every_window")

from edgefleet.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
DEBUG = False
