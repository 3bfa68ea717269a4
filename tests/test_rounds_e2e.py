"""Secure aggregation end to end: real agents (onnxruntime, HTTP) against a LIVE server on PostgreSQL
and Redis, with a real Celery worker closing phases (issue 11 phase 2).

The agents run inferences, their windows close, and they take part in the rounds the server formed
for the version they run. The server's unmasked sum must equal exactly the sum of the vectors the
surviving devices meant to send (noise off here, so "exactly" means exactly), with and without
dropouts, and its participation coordinate must equal the number of devices that were active.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.agent import Agent
from agent.config import AgentConfig
from agent.runtime import SessionPool
from agent.secagg.messages import b64
from telemetry import rounds
from telemetry.models import AggRound, RoundMember, RoundMessage
from telemetry.tasks import advance_rounds
from tests import factories
from tests.test_rounds_service import _all_rows_text, _redis_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

W = 12  # seconds: the server's telemetry window here
N = 20
HW = {"arch": "x86_64", "cores": 2, "ram_mb": 2048, "accelerator": "none", "providers": ["CPUExecutionProvider"]}


@pytest.fixture(autouse=True)
def fast(settings: Any, store: Path) -> None:
    from rollout.manifest import bump_generation

    settings.EDGEFLEET_POLL_INTERVAL = 1
    settings.EDGEFLEET_TELEMETRY_WINDOW = W
    settings.EDGEFLEET_ROUND_PHASE_SECONDS = 20
    settings.EDGEFLEET_ROUND_NOISE = False  # exact sums (noise: tests/test_dp_noise.py)
    settings.EDGEFLEET_DP_DAILY_BUDGET = 100_000
    bump_generation()


@pytest.fixture
def deadlines(celery_worker: object) -> Iterator[None]:
    """What beat does: the deadline job, sent through Redis to the real worker every second."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            advance_rounds.apply_async(expires=2)

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    yield
    stop.set()
    t.join()


def fleet(url: str, tmp: Path, n: int) -> list[Agent]:
    key = factories.enrollment_key(default_labels={"fleet": "sa"})[1]
    pool = SessionPool()
    agents = []
    for i in range(n):
        cfg = AgentConfig(
            server=url,
            enrollment_key=key,
            data_dir=tmp / f"a{i}",
            name=f"sa-{i}",
            hardware=HW,
            backoff_base=0.05,
            backoff_cap=0.2,
            request_timeout=20,
        )
        a = Agent(cfg, pool=pool, seed=i)
        a.enroll()
        agents.append(a)
    return agents


def install(agents: list[Agent], label: str) -> None:
    from fleet.models import Device

    for a in agents:
        a.poll_once()
    for _ in range(20):
        for a in agents:
            a.poll_once()
        if Device.objects.filter(installed__fraud=label).count() == len(agents):
            return
        time.sleep(0.2)
    raise AssertionError("agents did not install the version")


def work(agents: list[Agent], active: set[int]) -> None:
    """Inferences in the open window for the ``active`` agents (different data each); others idle."""
    for i in sorted(active):
        rows = np.random.default_rng(i).normal(loc=i / 10, size=(4 + i, 4)).astype(np.float32)
        agents[i].predict(rows)


def next_window_start() -> float:
    """Sleep into a fresh window, so the agents' inferences and the round share one window; returns
    the window's end."""
    now = time.time()
    time.sleep((W - now % W) + 0.2)
    return (time.time() // W + 1) * W


def still_in(window_end: float) -> None:
    """The rounds were formed and the inferences ran in one window (a guard on the test's timing,
    which has W − 0.2 s for both; it says so rather than reporting a wrong participation)."""
    assert time.time() < window_end, "forming the rounds and the inferences took longer than the window"


def run_rounds(agents: list[Agent], live: list[bool], ids: list[str], timeout: float = 150) -> list[AggRound]:
    """Every live agent polls in its own thread, as devices do, until the rounds end."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def device(a: Agent, i: int) -> None:
        while not stop.is_set():
            if live[i]:
                try:
                    a.poll_once()
                except BaseException as e:  # surfaced below: a device must never crash on a round
                    errors.append(e)
                    return
            stop.wait(0.3)

    threads = [threading.Thread(target=device, args=(a, i), daemon=True) for i, a in enumerate(agents)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not errors:
            if AggRound.objects.filter(id__in=ids, phase__in=("done", "failed")).count() == len(ids):
                return list(AggRound.objects.filter(id__in=ids).order_by("budget"))
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    phases = list(AggRound.objects.filter(id__in=ids).values_list("phase", "reason"))
    raise AssertionError(f"rounds did not end: {phases}")


def _advertise_then_vanish(agent: Agent, live: list[bool], i: int) -> Any:
    """The device answers the advertise phase of both rounds, then drops off the network for good."""
    real = agent.rounds.step

    def step(hint: Any = None) -> int:
        sent = real(hint)
        if agent.rounds.stats.get("sent_advertise", 0) >= 2:
            live[i] = False
        return sent

    return step


def slow_manifest(agent: Agent, seconds: float = 0.4) -> None:
    """The manifest call returns late, as on a slow link: the window can end between the poll's
    first look at the clock and its rounds step, where a contribution once came out as zeros."""
    real = agent.client.manifest

    def manifest(*args: Any, **kw: Any) -> Any:
        out = real(*args, **kw)
        time.sleep(seconds)
        return out

    agent.client.manifest = manifest  # type: ignore[method-assign]


def meant(agents: list[Agent], r: AggRound) -> np.ndarray:
    """The sum of what the surviving devices meant to send: the vector each encoded from its closed
    window (before masking; noise is off), as the agent recorded it."""
    by_device = {str(d): i for d, i in RoundMember.objects.filter(round=r).values_list("device_id", "index")}
    total = np.zeros(r.vector_length, dtype=np.int64)
    for a in agents:
        if by_device.get(a.device_id) in r.u3:
            total += a.rounds.sent[r.id]
    return total


def participation(r: AggRound) -> int:
    layout = rounds.layout_from_json(r.layout)
    return int(np.asarray(r.result)[layout.slices()["participation"]].sum())


def form(agents: list[Agent]) -> list[str]:
    assert rounds.form_rounds() == 2  # one group of 20, a health and a drift round
    return list(AggRound.objects.values_list("id", flat=True))


def test_agents_sum_exactly_through_a_live_server_and_worker(
    live_server: Any, deadlines: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    v1 = factories.staged_version(label="v1", seed=1)
    factories.release(v1)
    agents = fleet(live_server.url, tmp_path, N)
    install(agents, "v1")
    end = next_window_start()
    ids = form(agents)
    active = set(range(0, N, 2)) | {1, 3}
    work(agents, active)
    still_in(end)
    for a in agents:
        slow_manifest(a)
    done = run_rounds(agents, [True] * N, ids)
    for r in done:
        assert r.phase == "done", r.reason
        assert len(r.u3) == N and not r.void
        assert r.result == [int(v) for v in meant(agents, r)]
        # every active device counts, however long its polls take around the window's end
        assert participation(r) == len(active)
        assert not RoundMessage.objects.filter(round=r).exists() and r.running_sum is None
    health = next(r for r in done if r.budget == "health")
    layout = rounds.layout_from_json(health.layout)
    latency = np.asarray(health.result)[layout.slices()["latency"]]
    assert latency.sum() == participation(health) * 1024  # every active device's latency histogram has mass M
    assert all(a.rounds.stats.get("sent_unmask") == 2 for a in agents)
    # Nothing the server stored (every table, every Redis string) or logged holds one device's vector.
    stored = _all_rows_text() + _redis_text() + caplog.text
    for r in done:
        ring = rounds.config_of(r).ring
        for a in agents:
            x = a.rounds.sent[r.id]
            if not x.any():
                continue  # an idle device's zero vector is in every row of zeros
            raw = ring.to_bytes(ring.reduce(x))
            assert raw.hex() not in stored and b64(raw) not in stored
            assert json.dumps([int(v) for v in x]) not in stored and str([int(v) for v in x]) not in stored


def test_agents_sum_exactly_with_dropouts(live_server: Any, deadlines: None, tmp_path: Path) -> None:
    v1 = factories.staged_version(label="v1", seed=1)
    factories.release(v1)
    agents = fleet(live_server.url, tmp_path, N)
    install(agents, "v1")
    end = next_window_start()
    ids = form(agents)
    work(agents, set(range(N)))
    still_in(end)
    live = [True] * N
    # Two devices go silent before advertising, two once they have advertised (before dealing
    # shares); the deadlines (20 s) close the phases without them. Complete graph, n = 20, t = 14.
    live[5] = live[6] = False
    for i in (9, 12):
        agents[i].rounds.step = _advertise_then_vanish(agents[i], live, i)  # type: ignore[method-assign]
    done = run_rounds(agents, live, ids)
    for r in done:
        assert r.phase == "done", r.reason
        assert len(r.u3) == N - 4
        assert r.result == [int(v) for v in meant(agents, r)]
        assert participation(r) == N - 4
    dropped = set(RoundMember.objects.filter(round=done[0]).exclude(dropped="").values_list("device_id", flat=True))
    assert {str(d) for d in dropped} == {agents[i].device_id for i in (5, 6, 9, 12)}
