"""Liveness (/healthz: the process answers, no I/O) and readiness (/readyz: the database, Redis, the
Celery broker and artifact storage each answer within a short timeout). Readiness answers 503 naming
what failed, never a 500; the backing services are made really unreachable (closed ports, a socket
that never answers, a storage root that is a file), not mocked."""

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

CLOSED_PORT_DB = "postgres://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1
CLOSED_PORT_REDIS = "redis://127.0.0.1:6399/0"
CHECKS = {"database", "redis", "broker", "storage"}


def test_readyz_answers_200_with_every_check_when_all_is_up(client: Client, store: Path) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["ok"] is True and body["failed"] == []
    assert set(body["checks"]) == CHECKS
    assert all(c["ok"] for c in body["checks"].values()), body
    assert list(store.iterdir()) == []  # the storage probe cleans up after itself


def test_healthz_is_cheap_and_says_ok(client: Client, django_assert_num_queries) -> None:
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"ok": True}


def test_readyz_names_storage_that_cannot_be_written(client: Client, settings, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("a file where the artifact root should be")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(not_a_dir)}},
    }
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["storage"] and body["checks"]["database"]["ok"] is True
    assert str(tmp_path) not in response.content.decode()  # no server paths to the outside


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung dependency, not a refused one."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for s in held:
        s.close()
    srv.close()


def test_readyz_gives_up_on_a_hung_redis_and_says_so(client: Client, settings, store: Path, silent_server) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{silent_server}/0"
    settings.EDGEFLEET_READYZ_TIMEOUT = 0.5
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["redis"]
    assert body["checks"]["redis"]["error"] == "timeout"


def run_probe(env_over: dict, *, host: str = "localhost", secure: bool = False) -> dict:
    """GET /healthz and /readyz in a fresh process whose settings come from ``env_over``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "CELERY_", "EDGEFLEET_", "DJANGO_SETTINGS"))
    }
    env.update({"DJANGO_SETTINGS_MODULE": "edgefleet.settings", **env_over})
    code = f"""
import json, django
django.setup()
from django.test import Client
c = Client(HTTP_HOST={host!r})
out = {{}}
for path in ("/healthz", "/readyz"):
    r = c.get(path, secure={secure!r})
    out[path] = {{"status": r.status_code, "body": r.content.decode()}}
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_postgres_and_redis_unreachable_liveness_ok_readiness_503(tmp_path: Path) -> None:
    out = run_probe(
        {
            "DATABASE_URL": CLOSED_PORT_DB,
            "REDIS_URL": CLOSED_PORT_REDIS,
            "EDGEFLEET_DATA_DIR": str(tmp_path),
            "EDGEFLEET_READYZ_TIMEOUT": "2",
        }
    )
    assert out["/healthz"]["status"] == 200
    ready = out["/readyz"]
    assert ready["status"] == 503, ready
    body = json.loads(ready["body"])
    assert body["ok"] is False
    assert set(body["failed"]) == {"database", "redis", "broker"}
    assert body["checks"]["storage"]["ok"] is True


def test_postgres_unreachable_alone_is_named_alone(tmp_path: Path) -> None:
    from django.conf import settings

    out = run_probe(
        {"DATABASE_URL": CLOSED_PORT_DB, "REDIS_URL": settings.REDIS_URL, "EDGEFLEET_DATA_DIR": str(tmp_path)}
    )
    assert out["/healthz"]["status"] == 200
    assert out["/readyz"]["status"] == 503
    assert json.loads(out["/readyz"]["body"])["failed"] == ["database"]


def test_embedded_defaults_are_ready_without_redis(tmp_path: Path) -> None:
    """``make run`` on nothing but Python: SQLite, file broker, no Redis configured (not a failure)."""
    out = run_probe({"EDGEFLEET_DATA_DIR": str(tmp_path)})
    assert out["/readyz"]["status"] == 200, out
    checks = json.loads(out["/readyz"]["body"])["checks"]
    assert checks["redis"] == {"ok": True, "skipped": "not configured"}


def test_probes_answer_any_host_over_plain_http_in_production(tmp_path: Path) -> None:
    """Load balancers and container health checks probe by IP over HTTP: no 400 for the Host, no
    redirect to HTTPS, even with the production settings."""
    from django.conf import settings

    out = run_probe(
        {
            "SECRET_KEY": "x" * 20 + "y" * 20 + "z" * 20,
            "DEBUG": "0",
            "EDGEFLEET_HTTPS": "1",
            "ALLOWED_HOSTS": "fleet.example.com",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{_test_db_name()}",
            "REDIS_URL": settings.REDIS_URL,
            "EDGEFLEET_DATA_DIR": str(tmp_path),
        },
        host="10.1.2.3:8000",
    )
    assert out["/healthz"]["status"] == 200
    assert out["/readyz"]["status"] == 200, out


def _test_db_name() -> str:
    from django.db import connection

    return connection.settings_dict["NAME"]
