"""Settings for the test suite: real PostgreSQL and Redis on this machine unless told otherwise.

Each parallel run can pick its own database (``TEST_DATABASE_NAME``) and Redis db (``REDIS_URL``).
"""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
os.environ.setdefault("EDGEFLEET_DATA_DIR", tempfile.mkdtemp(prefix="edgefleet-test-"))
os.environ.setdefault("ORT_NUM_THREADS", "1")
# The live test server runs a thread per connection, not gunicorn's few: size load shedding for that
# (tests/test_protocol_limits.py runs real gunicorn with the deployed settings).
os.environ.setdefault("EDGEFLEET_DEVICE_API_CONCURRENCY", "64")

from edgefleet.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
DEBUG = False
