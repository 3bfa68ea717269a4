"""Rounds through faults: a Celery worker SIGKILLed between phases, Redis restarting mid-round (a
private redis-server the test kills and starts again), and the Django server process restarting
between phases (a real runserver process the devices talk HTTP to). A round's state is in
PostgreSQL, so each ends ``done`` with the exact sum.

Devices are the real client state machine (tests/test_rounds_service.py); real PostgreSQL, Redis,
Celery worker processes (tests/worker_procs.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edgefleet.queues import CONTROL
from fleet import round_hints
from fleet.presence import redis_client
from telemetry import rounds
from telemetry.models import AggRound
from tests import factories
from tests.test_rounds_service import (
    Dev,
    advertise_all,
    enrol,
    expected_sum,
    health_round,
    mask_all,
    share_all,
    step,
    unmask_all,
)
from tests.worker_procs import BASE_DIR, worker, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def _exact(settings: Any) -> None:
    settings.EDGEFLEET_ROUND_NOISE = False
    settings.EDGEFLEET_ROUND_PHASE_SECONDS = 3600
    settings.EDGEFLEET_TELEMETRY_WINDOW = 300


def wait_phase(round_id: str, phase: str, timeout: float = 120) -> AggRound:
    deadline = time.monotonic() + timeout
    while (r := AggRound.objects.get(id=round_id)).phase != phase:
        assert time.monotonic() < deadline, f"round stayed in {r.phase} ({r.reason}), waiting for {phase}"
        time.sleep(0.2)
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the worker ------------------------------------------------------------------------------------


def test_a_worker_killed_between_phases_loses_nothing_and_the_next_one_finishes(settings: Any, tmp_path: Path) -> None:
    """Phases close early through ``telemetry.advance_round`` on a real worker process. The first is
    SIGKILLed once it has closed the advertise phase; the share phase's last answer then queues its
    close with no worker alive; a new worker takes it, and the round ends with the exact sum."""
    version = factories.staged_version()
    devs = enrol(20, version)
    r = health_round(version, devs)
    env = worker_env(settings)
    with worker(env, CONTROL, name="rounds-a", log=tmp_path / "a.log"):
        advertise_all(r, devs)  # the 20th answer sends advance_round: the worker closes the phase
        r = wait_phase(r.id, "share")
    # leaving the block SIGKILLed the worker (and any child) between phases
    share_all(r, devs)
    time.sleep(2)
    assert AggRound.objects.get(id=r.id).phase == "share"  # the close waits in Redis: no worker
    with worker(env, CONTROL, name="rounds-b", log=tmp_path / "b.log"):
        r = wait_phase(r.id, "masked")
        mask_all(r, devs, np.random.default_rng(3))
        r = wait_phase(r.id, "unmask")
        unmask_all(r, devs)
        r = wait_phase(r.id, "done")
    assert r.result == expected_sum(devs) and not r.void


# ---- Redis ---------------------------------------------------------------------------------------


@contextmanager
def private_redis(port: int, where: Path) -> Iterator[subprocess.Popen]:
    """A redis-server of the test's own (no persistence: a restart comes back empty)."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=where,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=port, socket_timeout=0.5).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _use_redis(settings: Any, url: str) -> None:
    settings.REDIS_URL = url
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}}
    redis_client.cache_clear()
    round_hints._client = None


def test_a_round_finishes_across_a_redis_restart(settings: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Rounds keep only the poll hint in Redis (and send their early closes through the broker).
    Redis is killed mid-round: devices this server process knows still answer (never a 500), the
    answer whose early close cannot reach the broker included, and the deadline job closes the phase
    though its hints cannot be written. Redis comes back empty: the poll carries no hint (devices ask)
    until the deadline job has rebuilt the hints from PostgreSQL; the round ends with the exact sum."""
    from kombu.exceptions import OperationalError

    from telemetry import tasks

    settings.EDGEFLEET_EPOCH_CHECK_SECONDS = 60  # known devices are served from memory through the outage
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    saved = settings.REDIS_URL, settings.CACHES
    try:
        with private_redis(port, tmp_path) as first:
            _use_redis(settings, url)
            version = factories.staged_version()
            devs = enrol(20, version)
            auth = {"HTTP_AUTHORIZATION": f"Bearer {devs[0].token}"}
            rounds.advance_due()  # marks the (empty) hints ready
            r = health_round(version, devs)
            poll = devs[0].http.get("/api/v1/manifest", **auth)
            assert poll.status_code == 200 and poll.headers["X-Rounds"].startswith(f"{r.id}:advertise:")
            advertise_all(r, devs)
            r = step(r)
            first.kill()  # Redis goes away mid-round
            first.wait(timeout=10)

        def broker_away(*a: Any, **kw: Any) -> None:
            raise OperationalError("Error 111 connecting to the broker. Connection refused.")

        monkeypatch.setattr(tasks.advance_round, "delay", broker_away)
        share_all(r, devs)  # every answer 200, the 20th too: its early close is left to the deadline job
        monkeypatch.undo()
        assert AggRound.objects.get(id=r.id).answered == 20
        r = step(r)  # the deadline job closes the phase; the hints cannot be written
        assert r.phase == "masked"
        with private_redis(port, tmp_path):  # back, empty
            _use_redis(settings, url)
            poll = devs[0].http.get("/api/v1/manifest", **auth)
            assert poll.status_code == 200 and "X-Rounds" not in poll.headers  # no hint: ask
            rounds.advance_due()  # the deadline job: rebuilds the hints
            poll = devs[0].http.get("/api/v1/manifest", **auth)
            assert poll.headers["X-Rounds"].startswith(f"{r.id}:masked:")
            mask_all(r, devs, np.random.default_rng(5))
            r = step(r)
            unmask_all(r, devs)
            r = step(r)
    finally:
        _use_redis(settings, saved[0])
        settings.CACHES = saved[1]
    assert r.phase == "done" and r.result == expected_sum(devs)


# ---- the server process ------------------------------------------------------------------------


class HttpDev(Dev):
    """A device talking HTTP to a server process (not the in-process test client)."""

    base: str = ""

    def get(self, path: str) -> Any:
        return requests.get(self.base + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def post(self, path: str, body: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.post(self.base + path, json=body, headers=headers, timeout=30)


@contextmanager
def server_process(settings: Any, port: int, log: Path) -> Iterator[subprocess.Popen]:
    env = worker_env(settings)
    out = open(log, "ab")  # noqa: SIM115
    cmd = [sys.executable, "manage.py", "runserver", "--noreload", "--nothreading", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, env=env, cwd=BASE_DIR, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/api/v1/signing-key", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        out.close()


def test_a_server_process_restarting_between_phases_loses_nothing(settings: Any, tmp_path: Path) -> None:
    """Devices talk HTTP to a real server process; it is SIGKILLed after the advertise and the share
    phases and a fresh one (empty process caches) serves the next phase. The round ends exactly."""
    version = factories.staged_version()
    devs = [HttpDev(d.device, d.token, d.identity) for d in enrol(20, version)]
    r = health_round(version, devs)
    port = free_port()
    for d in devs:
        d.base = f"http://127.0.0.1:{port}"
    with server_process(settings, port, tmp_path / "s1.log"):
        advertise_all(r, devs)
    r = step(r)  # the deadline job, between the two server processes
    with server_process(settings, port, tmp_path / "s2.log"):
        share_all(r, devs)
    r = step(r)
    with server_process(settings, port, tmp_path / "s3.log"):
        mask_all(r, devs, np.random.default_rng(7))
        r = step(r)
        unmask_all(r, devs)
    r = step(r)
    assert r.phase == "done" and r.result == expected_sum(devs)
