"""The device API's limits (fleet/limits.py): token buckets per device and per client IP answering 429
with Retry-After, on every device endpoint, before any body is parsed; load shedding that engages with
the deployed gunicorn settings. Real PostgreSQL and Redis; the load-shedding test runs real gunicorn."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from django.test import Client

from fleet import limits, manifests
from fleet.limits import Rate, _LocalBuckets
from fleet.models import Device, DeviceEvent
from fleet.presence import redis_client
from rollout import manifest
from rollout.manifest import bump_generation
from telemetry.models import Report
from tests import factories, telemetry_support

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh() -> None:
    bump_generation()


def rates(settings: Any, **over: str) -> None:
    settings.EDGEFLEET_RATE_LIMITS = {**settings.EDGEFLEET_RATE_LIMITS, **over}


def poll(client: Client, token: str, **extra: str):
    return client.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {token}", **extra)


def assert_limited(resp, code: str = "rate_limited", most: int = 3600) -> int:
    assert resp.status_code == 429, resp.content
    assert resp.json()["error"]["code"] == code and resp.json()["error"]["field"] is None
    retry = int(resp["Retry-After"])
    assert 1 <= retry <= most
    return retry


# ---------------------------------------------------------------- per device


@pytest.mark.parametrize("path", ["memory", "redis"])
def test_manifest_polls_beyond_the_burst_are_429_per_device(client: Client, settings, path: str) -> None:
    """Both poll paths spend from the bucket: the answer in process memory (its own round trip) and
    the one read from Redis (the charge rides in the poll's pipeline)."""
    rates(settings, manifest="3/6")  # burst 3, then one every 10 s
    _, token = factories.device()
    _, other = factories.device(name="other")
    for _ in range(3):
        if path == "redis":
            manifests._ready.clear()
        assert poll(client, token).status_code == 200
    if path == "redis":
        manifests._ready.clear()
    assert_limited(poll(client, token), most=10)
    assert poll(client, other).status_code == 200  # another device has its own bucket


def test_a_poll_read_from_redis_is_its_pipeline_and_the_rounds_hint(client: Client, settings, monkeypatch) -> None:
    """The manifest, the device's rate limit and its fence come in one pipeline; the rounds hint
    (fleet/round_hints.py, keyed by device, not by token) is one more: two round trips, no more."""
    _, token = factories.device()
    assert poll(client, token).status_code == 200  # the ready manifest is in Redis now
    manifests._ready.clear()
    r = redis_client()
    calls: list[str] = []
    real_execute = type(r.pipeline()).execute

    def counting_execute(pipe: Any, *a: Any, **kw: Any) -> Any:
        calls.append("pipeline")
        return real_execute(pipe, *a, **kw)

    monkeypatch.setattr(type(r.pipeline()), "execute", counting_execute)
    monkeypatch.setattr(type(r), "execute_command", lambda *a, **kw: pytest.fail(f"an extra round trip: {a[1:3]}"))
    monkeypatch.setattr(manifest.epochs, "current", lambda: manifest.epochs._memo[1:])  # no epoch re-read now
    assert poll(client, token).status_code == 200
    assert calls == ["pipeline", "pipeline"]


def test_a_poll_answered_from_memory_makes_one_round_trip_for_the_rounds_hint(client: Client, monkeypatch) -> None:
    """The answer, its rate limit and presence stay in process memory; the one round trip is the
    rounds hint's (its marker and the device's hash in one pipeline)."""
    _, token = factories.device()
    assert poll(client, token).status_code == 200  # ready in this process's memory now
    r = redis_client()
    me = threading.get_ident()
    calls: list[Any] = []
    for cls, name in [(type(r), "execute_command"), (type(r.pipeline()), "execute")]:
        real = getattr(cls, name)

        def spy(obj: Any, *a: Any, _real: Any = real, **kw: Any) -> Any:
            if threading.get_ident() == me:
                calls.append(a[:2])
            return _real(obj, *a, **kw)

        monkeypatch.setattr(cls, name, spy)
    monkeypatch.setattr(manifest.epochs, "current", lambda: manifest.epochs._memo[1:])  # no epoch re-read now
    for _ in range(3):
        assert poll(client, token).status_code == 200
    assert calls == [()] * 3  # one pipeline execute per poll, nothing else


def test_a_device_over_its_limit_in_other_processes_is_refused_here_after_the_next_sync(
    client: Client, settings
) -> None:
    """Warm polls spend from this process's bucket and reach Redis in the once-a-second batch; a
    device that used its bucket up elsewhere is refused here as soon as that batch comes back."""
    rates(settings, manifest="3/6")
    _, token = factories.device()
    assert poll(client, token).status_code == 200  # cold: spent in Redis (1 of 3)
    key = f"ef:rl:manifest:{hashlib.sha256(token.encode()).hexdigest()[:32]}"
    r = limits.rate("manifest")
    limits._spend_many(redis_client())(keys=[key], args=[r.interval_ms, r.burst, 2], client=redis_client())
    # ^ another process's batch of two warm polls: 3 of 3 spent
    assert poll(client, token).status_code == 200  # this process has not heard yet (its bucket is full)
    limits.ledger.sync()  # what the ledger thread does every second
    assert_limited(poll(client, token), most=20)  # overdrawn by one: two intervals until a token is back
    assert limits.ledger.pending == {}


def test_uploads_share_a_bucket_and_are_refused_before_the_body_is_read(client: Client, settings) -> None:
    rates(settings, upload="2/6")
    v = factories.staged_version("fraud", "v1", seed=1)
    factories.release(v)
    _, token = factories.device(labels={"region": "eu"})
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    ev = {"id": str(uuid.uuid4()), "kind": "installed", "at": "2026-11-25T10:00:00Z"}
    assert client.post("/api/v1/events", {"events": [ev]}, content_type="application/json", **auth).status_code == 200
    report = telemetry_support.report(v)
    got = client.post("/api/v1/telemetry", {"reports": [report]}, content_type="application/json", **auth)
    assert got.status_code == 202
    # The bucket is empty: a third upload is refused whatever its body (garbage is not even parsed).
    assert_limited(client.post("/api/v1/events", b"{garbage", content_type="application/json", **auth), most=10)
    second = {"reports": [{**report, "id": str(uuid.uuid4())}]}
    assert_limited(client.post("/api/v1/telemetry", second, content_type="application/json", **auth))
    assert DeviceEvent.objects.count() == 1 and Report.objects.count() == 1


def test_artifact_downloads_have_their_own_bucket(client: Client, settings) -> None:
    rates(settings, artifact="2/60")
    v = factories.staged_version("fraud", "v1", seed=1)
    factories.release(v)
    _, token = factories.device()
    assert poll(client, token).status_code == 200
    url = f"/api/v1/artifacts/{v.artifact.sha256}"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get(url, **auth).status_code == 200
    assert client.get(url, HTTP_RANGE="bytes=10-", **auth).status_code == 206
    assert_limited(client.get(url, **auth), most=1)
    assert poll(client, token).status_code == 200  # polls are not downloads


# ---------------------------------------------------------------- per client IP


def test_enroll_and_signing_key_are_limited_per_client_ip(client: Client, settings) -> None:
    rates(settings, enroll="2/1", signing_key="1/1")
    _, plain = factories.enrollment_key()
    body = {"enrollment_key": plain, "name": "cam"}

    def enroll(ip: str, **extra: str):
        return client.post("/api/v1/enroll", body, content_type="application/json", REMOTE_ADDR=ip, **extra)

    assert enroll("10.0.0.1").status_code == 201
    assert enroll("10.0.0.1").status_code == 201
    assert_limited(enroll("10.0.0.1"), most=60)
    assert enroll("10.0.0.2").status_code == 201  # another client
    assert Device.objects.count() == 3
    assert client.get("/api/v1/signing-key", REMOTE_ADDR="10.0.0.1").status_code == 200
    assert_limited(client.get("/api/v1/signing-key", REMOTE_ADDR="10.0.0.1"))
    # Behind one proxy, the client is the last hop it added; X-Forwarded-For is ignored without one.
    settings.EDGEFLEET_NUM_PROXIES = 1
    assert enroll("10.0.0.9", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 201
    assert enroll("10.0.0.9", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 201
    assert_limited(enroll("10.0.0.9", HTTP_X_FORWARDED_FOR="203.0.113.5"))
    assert enroll("10.0.0.9", HTTP_X_FORWARDED_FOR="1.1.1.1, 203.0.113.6").status_code == 201


def test_unknown_tokens_spend_the_client_ips_failure_bucket_then_get_no_lookups(
    client: Client, settings, django_assert_num_queries
) -> None:
    rates(settings, auth_fail="3/1")
    _, good = factories.device()
    assert poll(client, good).status_code == 200  # known to the server from here on
    for i in range(3):
        assert poll(client, f"efd_guess_{i}").status_code == 401
    with django_assert_num_queries(0):  # the fourth guess is not looked up
        assert_limited(poll(client, "efd_guess_3"))
        ev = {"events": []}
        guess = client.post(
            "/api/v1/events", ev, content_type="application/json", HTTP_AUTHORIZATION="Bearer efd_guess_4"
        )
        assert_limited(guess)
    assert poll(client, good).status_code == 200  # a device the server knows is not held up
    assert poll(client, "efd_guess_5", REMOTE_ADDR="10.9.9.9").status_code == 401  # another IP still is looked up
    # Wrong enrollment keys spend from the same bucket.
    settings.EDGEFLEET_RATE_LIMITS = {**settings.EDGEFLEET_RATE_LIMITS, "auth_fail": "2/1"}
    limits.reset()
    body = {"enrollment_key": "efk_wrong", "name": "x"}
    for _ in range(2):
        resp = client.post("/api/v1/enroll", body, content_type="application/json", REMOTE_ADDR="10.1.1.1")
        assert resp.status_code == 401
    assert_limited(poll(client, "efd_guess_6", REMOTE_ADDR="10.1.1.1"))


# ---------------------------------------------------------------- sizing


def test_default_rates_never_touch_a_well_behaved_agent(settings) -> None:
    """A day of an agent at the manifest's interval (jitter at its fastest, 0.9x) that starts with a
    full spool (10,000 items after an outage: 100 batches), restarts every hour (a poll at once and
    the hour's spool, five batches) and downloads an update with four resumes each time: never
    refused. A fake clock drives the same GCRA as the Redis script."""
    for interval in (1, 5, 60, 300):
        settings.EDGEFLEET_POLL_INTERVAL = interval
        clock = [0.0]
        buckets = _LocalBuckets(clock=lambda clock=clock: clock[0])
        refused: list[tuple[str, float]] = []

        def spend(
            bucket: str, n: int = 1, *, buckets: _LocalBuckets = buckets, clock: list = clock, refused: list = refused
        ) -> None:
            r: Rate = limits.rate(bucket)
            for _ in range(n):
                if buckets.wait(bucket, r, charge=True) > 0:
                    refused.append((bucket, clock[0]))

        spend("upload", 100)  # the full spool
        next_restart = 0.0
        while clock[0] < 24 * 3600:
            if clock[0] >= next_restart:
                spend("upload", 5)  # what the hour left in the spool, at the first poll after a restart
                spend("artifact", 5)
                next_restart += 3600
            spend("manifest")
            spend("upload", 2)  # events and telemetry after each poll
            clock[0] += 0.9 * interval
        assert refused == [], (interval, refused[:5])
        # ...and a device polling ten times as often as told is held to it within a few minutes.
        flood = _LocalBuckets(clock=lambda clock=clock: clock[0])
        admitted = 0
        for _ in range(1000):
            admitted += flood.wait("manifest", limits.rate("manifest"), charge=True) == 0
            clock[0] += interval / 100
        assert admitted <= 30 + 10 * 10 + 1  # the burst, then ten per interval over ten intervals


def test_without_redis_the_buckets_live_in_process_memory(client: Client, settings) -> None:
    """Embedded mode: no Redis at all, the same limits from the process's own buckets."""
    rates(settings, manifest="2/1", enroll="1/1")
    _, token = factories.device()
    settings.REDIS_URL = ""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    redis_client.cache_clear()
    try:
        assert poll(client, token).status_code == 200
        assert poll(client, token).status_code == 200
        assert_limited(poll(client, token))
        _, plain = factories.enrollment_key()
        body = {"enrollment_key": plain}
        assert client.post("/api/v1/enroll", body, content_type="application/json").status_code == 201
        assert_limited(client.post("/api/v1/enroll", body, content_type="application/json"))
    finally:
        redis_client.cache_clear()


# ---------------------------------------------------------------- load shedding under gunicorn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slow_upload(port: int, token: str) -> socket.socket:
    """A telemetry upload that sends its headers and half its body, then waits: it holds a thread."""
    body = json.dumps({"reports": []}).encode() + b" " * 2000
    s = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /api/v1/telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    s.sendall(head.encode() + body[:10])
    return s


def test_load_shedding_engages_with_the_deployed_gunicorn_settings(transactional_db, settings) -> None:
    """gunicorn with docker/gunicorn.conf.py (4 threads): three slow uploads fill the device slots, so
    a fourth device request is answered 429 at once while the last thread still serves /healthz; when
    the uploads finish, polls are served again."""
    _, token = factories.device()
    port = _free_port()
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "edgefleet.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "EDGEFLEET_DATA_DIR": str(settings.DATA_DIR),
        "SECRET_KEY": "test-only-secret-key-for-the-load-shedding-test-0123456789",
        "EDGEFLEET_WEB_BIND": f"127.0.0.1:{port}",
        "EDGEFLEET_WEB_WORKERS": "1",
    }
    env.pop("EDGEFLEET_WEB_THREADS", None)
    env.pop("EDGEFLEET_DEVICE_API_CONCURRENCY", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "docker/gunicorn.conf.py", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    held: list[socket.socket] = []
    try:
        for _ in range(150):
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still importing the app
                time.sleep(0.1)
        else:
            pytest.fail("gunicorn did not start")
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.get(f"{base}/api/v1/manifest", headers=auth, timeout=10).status_code == 200
        held = [_slow_upload(port, token) for _ in range(3)]
        shed = None
        for _ in range(100):  # until the three uploads are inside their slots
            resp = requests.get(f"{base}/api/v1/manifest", headers=auth, timeout=10)
            if resp.status_code == 429:
                shed = resp
                break
            time.sleep(0.05)
        assert shed is not None, "the device slots never filled"
        assert shed.json()["error"]["code"] == "overloaded" and int(shed.headers["Retry-After"]) > 0
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200  # the reserved thread
        for s in held:
            s.close()
        held = []
        for _ in range(100):
            if requests.get(f"{base}/api/v1/manifest", headers=auth, timeout=10).status_code == 200:
                break
            time.sleep(0.05)
        else:
            pytest.fail("polls were not served again after the uploads ended")
    finally:
        for s in held:
            s.close()
        server.terminate()
        server.wait(30)
