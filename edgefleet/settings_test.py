"""Settings for the test suite: real PostgreSQL and Redis on this machine unless told otherwise.

Each parallel run can pick its own database (``TEST_DATABASE_NAME``) and Redis db (``REDIS_URL``).
"""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
os.environ.setdefault("EDGEFLEET_DATA_DIR", tempfile.mkdtemp(prefix="edgefleet-test-"))
os.environ.setdefault("ORT_NUM_THREADS", "1")

from edgefleet.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
DEBUG = False
