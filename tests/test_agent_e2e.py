"""The agent against a LIVE server (pytest-django live_server, real PostgreSQL and Redis).

Faults come from a real HTTP proxy in between (tests/agent_proxy.py): server down, lost answers,
a manifest or artifact changed in transit, a download cut half-way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.agent import Agent
from agent.client import ServerAway
from agent.config import AgentConfig
from agent.guard import GuardPolicy
from agent.runtime import SessionPool
from tests import factories
from tests.agent_proxy import Proxy, proxy_to

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HW = {
    "arch": "aarch64",
    "cores": 4,
    "ram_mb": 4096,
    "accelerator": "none",
    "ort_version": "1.32.0",
    "providers": ["CPUExecutionProvider"],
    "storage_free_mb": 2048,
}


@pytest.fixture(autouse=True)
def _fresh_generation() -> None:
    from rollout.manifest import bump_generation

    bump_generation()


@pytest.fixture
def proxy(live_server: object) -> Iterator[Proxy]:
    with proxy_to(live_server.url) as p:
        yield p


@pytest.fixture
def enrollment_key(db: None) -> str:
    return factories.enrollment_key(default_labels={"fleet": "test"})[1]


def make_agent(url: str, key: str, data: Path, **kw: object) -> Agent:
    cfg = AgentConfig(
        server=url,
        enrollment_key=key,
        data_dir=data,
        name="cam-1",
        labels={"region": "eu"},
        hardware=HW,
        backoff_base=0.05,
        backoff_cap=0.2,
        request_timeout=10,
    )
    return Agent(cfg, pool=SessionPool(), seed=1, **kw)


def events_of(device_id: str) -> list[str]:
    from fleet.models import DeviceEvent

    return list(DeviceEvent.objects.filter(device_id=device_id).order_by("at").values_list("kind", flat=True))


class Clock:
    """Wall-clock epoch seconds the test moves: windows close without waiting for them."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


W = 300  # the server's telemetry window (EDGEFLEET_TELEMETRY_WINDOW default)


def rows(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)


def test_enroll_install_update_and_report(live_server: object, enrollment_key: str, tmp_path: Path) -> None:
    from fleet.models import Device
    from telemetry.models import Report

    v1 = factories.staged_version(label="v1", seed=1)
    factories.release(v1)
    clock = Clock(time.time() - 2 * W)  # a recent window that is over by the time it is sent
    agent = make_agent(live_server.url, enrollment_key, tmp_path, clock=clock)
    device_id = agent.enroll()
    assert Device.objects.get(pk=device_id).labels["region"] == "eu"
    assert agent.poll_once() is True
    assert agent.status()["models"]["fraud"]["active"] == "v1"
    assert agent.predict(rows())["probs"].shape == (8, 3)
    assert agent.close_window() == 0  # reported once it is over, never earlier
    clock.t += W
    assert agent.close_window() == 1
    agent.poll_once()  # flushes events and the report; the manifest is now 304
    assert agent.stats["not_modified"] == 1
    assert Device.objects.get(pk=device_id).installed == {"fraud": "v1"}
    assert {"download_started", "download_finished", "installed", "activated"} <= set(events_of(device_id))
    report = Report.objects.get(device_id=device_id)
    assert report.version.label == "v1" and report.epsilon == 1.0
    assert report.window_start.timestamp() % W == 0 and (report.window_end - report.window_start).seconds == W
    assert len(agent.spool) == 0

    v2 = factories.staged_version(label="v2", seed=2)
    factories.release(v2)
    agent.poll_once()
    st = agent.status()["models"]["fraud"]
    assert (st["active"], st["previous"]) == ("v2", "v1")
    # a restart comes back on v2, with v1 still on disk for an instant fallback
    again = make_agent(live_server.url, enrollment_key, tmp_path)
    assert again.device_id == device_id and again.runtimes["fraud"].version == "v2"
    assert again.store.has(v1.artifact.sha256)


def test_tampered_manifest_and_artifact_are_refused(proxy: Proxy, enrollment_key: str, tmp_path: Path) -> None:
    v1 = factories.staged_version(label="v1", seed=1)
    factories.release(v1)
    agent = make_agent(proxy.url, enrollment_key, tmp_path)
    agent.enroll()
    agent.poll_once()
    assert agent.runtimes["fraud"].version == "v1"

    factories.release(factories.staged_version(label="v2", seed=2))
    proxy.mode = {"tamper_manifest"}
    assert agent.poll_once() is False
    assert agent.stats["manifest_refused"] == 1 and agent.runtimes["fraud"].version == "v1"
    assert agent.poll_interval() == 60  # the tampered value was not taken

    proxy.mode = {"flip_artifact"}
    agent.poll_once()
    assert agent.stats["artifacts_refused"] == 1 and agent.runtimes["fraud"].version == "v1"
    assert agent.status()["models"]["fraud"]["active"] == "v1"
    proxy.mode = set()
    agent.poll_once()
    kinds = events_of(agent.device_id)
    assert kinds.count("verify_failed") == 2
    assert agent.runtimes["fraud"].version == "v2"  # once the bytes arrive intact


def test_interrupted_download_resumes_with_range(proxy: Proxy, enrollment_key: str, tmp_path: Path) -> None:
    v1 = factories.staged_version(label="v1", seed=1)
    factories.release(v1)
    agent = make_agent(proxy.url, enrollment_key, tmp_path)
    agent.enroll()
    proxy.mode = {"cut_artifact"}
    agent.poll_once()
    part = agent.store.part_for(v1.artifact.sha256)
    assert agent.status()["models"] == {} and 0 < part.stat().st_size < v1.artifact.size
    agent.poll_once()
    assert agent.runtimes["fraud"].version == "v1" and agent.stats["downloads_resumed"] == 1
    ranged = [h for h in proxy.hits("/api/v1/artifacts/") if "bytes=" in h[1]]
    assert ranged and ranged[-1][2] == 206  # the second attempt asked only for the rest
    assert not part.exists() and agent.store.has(v1.artifact.sha256)
    assert "download_failed" in events_of(agent.device_id)


def test_local_guard_falls_back_without_the_server(live_server: object, enrollment_key: str, tmp_path: Path) -> None:
    def fault(model: str, version: str) -> float:
        if version == "v2":
            raise RuntimeError("simulated regression")
        return 0.0

    factories.release(factories.staged_version(label="v1", seed=1))
    agent = make_agent(live_server.url, enrollment_key, tmp_path, fault=fault, guard_policy=GuardPolicy(min_samples=30))
    agent.enroll()
    agent.poll_once()
    for _ in range(60):
        agent.predict(rows(1))
    factories.release(factories.staged_version(label="v2", seed=2))
    agent.poll_once()
    assert agent.runtimes["fraud"].version == "v2"
    errors = 0
    for _ in range(40):
        try:
            agent.predict(rows(1))
        except RuntimeError:
            errors += 1
    assert agent.runtimes["fraud"].version == "v1" and errors == 30  # guarded after min_samples
    agent.poll_once()  # the server still says v2; the device stays on v1 and says why
    assert agent.runtimes["fraud"].version == "v1"
    from fleet.models import DeviceEvent

    fb = DeviceEvent.objects.get(device_id=agent.device_id, kind="fell_back")
    assert fb.version_label == "v2"
    assert fb.details == {"rule": "error_rate_vs_previous", "ratio": 3.0, "margin": 0.05, "to": "v1"}  # no numbers


def test_telemetry_spooled_in_an_outage_arrives_exactly_once(proxy: Proxy, enrollment_key: str, tmp_path: Path) -> None:
    from telemetry.models import Report

    factories.release(factories.staged_version(label="v1", seed=1))
    clock = Clock(time.time() - 4 * W)
    agent = make_agent(proxy.url, enrollment_key, tmp_path, clock=clock)
    agent.enroll()
    agent.poll_once()
    proxy.mode = {"down"}
    for _ in range(3):
        agent.predict(rows())
        clock.t += W
        assert agent.close_window() == 1
        with pytest.raises(ServerAway):
            agent.poll_once()
    assert agent.spool.count("report") == 3
    ids = {r["id"] for r in agent.spool.peek("report", 10)}
    # the server comes back, but the first answer is lost on the way: the device must re-send
    proxy.mode = {"lose_answer"}
    with pytest.raises(ServerAway):
        agent.flush()
    proxy.mode = set()
    agent.poll_once()
    assert set(map(str, Report.objects.filter(device_id=agent.device_id).values_list("id", flat=True))) == ids
    assert len(agent.spool) == 0
    # and a restart does not send them again
    make_agent(proxy.url, enrollment_key, tmp_path).poll_once()
    assert Report.objects.filter(device_id=agent.device_id).count() == 3


def test_retry_after_from_the_server_is_honoured(proxy: Proxy, enrollment_key: str, tmp_path: Path) -> None:
    factories.release(factories.staged_version(label="v1", seed=1))
    agent = make_agent(proxy.url, enrollment_key, tmp_path)
    agent.enroll()
    proxy.mode = {"503"}
    agent.tick()  # returns earlier when a telemetry window rolls over first; the next try is what counts
    assert agent.next_net_at - time.monotonic() >= 1.9  # Retry-After: 2 (plus jitter), the backoff base 0.05 s
    for _ in range(10):  # the host loop may wake early (window roll-over): no request before then
        agent.tick()
    assert [h[2] for h in proxy.log] == [201, 503]  # enroll, then one manifest try
    assert agent.stats["server_away"] == 1
