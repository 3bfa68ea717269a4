"""The agent's uploads never stand between a device and its manifests (agent/agent.py ``upload``).

Against a LIVE server (real PostgreSQL and Redis) through the fault-injecting proxy: uploads that
fail with a 5xx, a timeout or the server's own 429 keep their items and back off while polls go on
(a rollback still arrives); a batch the server refuses as bad input is narrowed down, the bad items
dropped and counted, and the count reported in a ``spool_dropped`` event.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.agent import Agent, _fit_details
from agent.config import AgentConfig
from agent.runtime import SessionPool
from fleet import limits
from tests import factories
from tests.agent_proxy import Proxy, proxy_to

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HW = {"arch": "aarch64", "cores": 4, "ram_mb": 4096, "accelerator": "none"}


@pytest.fixture(autouse=True)
def _fresh_generation() -> None:
    from rollout.manifest import bump_generation

    bump_generation()


@pytest.fixture
def proxy(live_server: object) -> Iterator[Proxy]:
    with proxy_to(live_server.url) as p:
        yield p


class Clock:
    """Wall-clock epoch seconds the test moves: telemetry windows close without waiting for them."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


W = 300  # the server's telemetry window (EDGEFLEET_TELEMETRY_WINDOW default)


def make_agent(url: str, data: Path, clock: Clock) -> Agent:
    key = factories.enrollment_key(default_labels={"fleet": "test"})[1]
    cfg = AgentConfig(
        server=url,
        enrollment_key=key,
        data_dir=data,
        labels={"region": "eu"},
        hardware=HW,
        backoff_base=0.01,
        backoff_cap=0.02,
        request_timeout=10.0,
    )
    agent = Agent(cfg, pool=SessionPool(), seed=1, clock=clock)
    agent.enroll()
    return agent


def rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)


def events_on_server(device_id: str) -> list:
    from fleet.models import DeviceEvent

    return list(DeviceEvent.objects.filter(device_id=device_id))


def poll_when_uploads_may_go(agent: Agent) -> bool:
    agent.next_upload_at = 0.0  # the test does not wait out the (tiny) upload backoff
    return agent.poll_once()


def test_uploads_that_keep_failing_never_stop_the_poll_rollback_included(
    proxy: Proxy, tmp_path: Path, settings
) -> None:
    from rollout.manifest import bump_generation
    from rollout.models import Release
    from telemetry.models import Report

    v1 = factories.staged_version(label="v1", seed=1)
    factories.release(v1)
    clock = Clock(time.time() - 4 * W)
    agent = make_agent(proxy.url, tmp_path, clock)
    assert agent.poll_once() is True and agent.store.active("fraud").version == "v1"
    assert len(agent.spool) == 0

    # 1. Every upload answered 500: the report stays, the next manifest (v2) is installed anyway.
    proxy.mode = {"500_uploads"}
    agent.predict(rows())
    clock.t += W
    assert agent.close_window() == 1
    v2 = factories.staged_version(label="v2", seed=2)
    factories.release(v2)
    assert poll_when_uploads_may_go(agent) is True
    assert agent.store.active("fraud").version == "v2"
    kept = len(agent.spool)
    assert kept >= 3  # the report and v2's download/install events
    assert agent.stats["uploads_deferred"] >= 1

    # 2. Uploads time out: a rollback (the manifest names v1 again) still reaches the device, from disk.
    proxy.mode = {"slow_uploads"}
    proxy.delay = 1.5
    agent.client.timeout = 1.0
    Release.objects.filter(version=v2).delete()
    bump_generation()
    downloads_before = len(proxy.hits("/api/v1/artifacts/"))
    assert poll_when_uploads_may_go(agent) is True
    assert agent.store.active("fraud").version == "v1"
    assert len(proxy.hits("/api/v1/artifacts/")) == downloads_before  # v1 was still on disk
    assert len(agent.spool) >= kept

    # 3. The server's own 429 on uploads: the events batch goes, the reports wait; the poll is served.
    proxy.mode = set()
    agent.client.timeout = 10.0
    settings.EDGEFLEET_RATE_LIMITS = {**settings.EDGEFLEET_RATE_LIMITS, "upload": "1/1"}
    limits.reset()
    polls = len(proxy.hits("/api/v1/manifest"))
    assert poll_when_uploads_may_go(agent) is False
    assert len(proxy.hits("/api/v1/manifest")) == polls + 1
    posts = [h for h in proxy.log if h[0] == "POST"]
    assert [h[2] for h in posts[-2:]] == [200, 429]
    assert agent.spool.count("event") == 0 and agent.spool.count("report") == 1

    # 4. Uploads work again: everything kept arrives, once.
    settings.EDGEFLEET_RATE_LIMITS = {**settings.EDGEFLEET_RATE_LIMITS, "upload": "120/auto"}
    limits.reset()
    poll_when_uploads_may_go(agent)
    assert len(agent.spool) == 0
    server_events = events_on_server(agent.device_id)
    assert len({e.id for e in server_events}) == len(server_events)
    kinds = {e.kind for e in server_events}
    assert {"download_started", "download_finished", "installed", "activated"} <= kinds
    assert Report.objects.filter(device_id=agent.device_id).count() == 1
    assert agent.stats["events_rejected"] == 0 and agent.stats["reports_rejected"] == 0


def test_a_batch_refused_as_bad_input_is_dropped_counted_and_reported(proxy: Proxy, tmp_path: Path) -> None:
    from telemetry.models import Report

    factories.release(factories.staged_version(label="v1", seed=1))
    clock = Clock(time.time() - 4 * W)
    agent = make_agent(proxy.url, tmp_path, clock)
    agent.poll_once()
    assert len(agent.spool) == 0
    # What an older or buggy agent version left in the spool, between good items.
    good = [agent.event("activated", "fraud", "v1", n=i) for i in range(3)]
    assert good == [None] * 3
    agent.spool.put("event", {"id": str(uuid.uuid4()), "kind": "installed", "at": "2026-11-25T10:00:00+23:59"})
    agent.spool.put(
        "event",
        {"id": str(uuid.uuid4()), "kind": "fell_back", "at": "2026-11-25T10:00:00Z", "details": {"p90": float("nan")}},
    )
    agent.event("activated", "fraud", "v1", n=3)
    agent.predict(rows())
    clock.t += W
    assert agent.close_window() == 1
    (report,) = agent.spool.peek("report", 10)
    bad_report = {**report, "id": str(uuid.uuid4()), "inference_count": float("nan")}
    agent.spool.put("report", bad_report)
    assert json.dumps(bad_report, allow_nan=True)  # the agent's own encoding lets NaN through

    poll_when_uploads_may_go(agent)
    assert len(agent.spool) == 0  # the good ones were taken, the bad ones dropped
    status = agent.status()
    assert status["spool_counters"]["rejected"] == 3
    assert agent.stats["events_rejected"] == 2 and agent.stats["reports_rejected"] == 1
    on_server = events_on_server(agent.device_id)
    assert sum(e.kind == "activated" and "n" in e.details for e in on_server) == 4
    assert Report.objects.filter(device_id=agent.device_id).count() == 1

    poll_when_uploads_may_go(agent)  # the next flush says what was lost
    (dropped,) = [e for e in events_on_server(agent.device_id) if e.kind == "spool_dropped"]
    assert dropped.details == {"count": 3, "full": 0, "refused": 3}
    assert agent.spool.counters().get("rejected_pending", 0) == 0


def test_event_details_are_fitted_to_what_the_server_takes() -> None:
    fitted = _fit_details(
        {
            "reason": "x" * 5000 + "\x00",
            "p90": float("inf"),
            "deep": {"a": {"b": {"c": {"d": 1}}}},
            "err": "\ud800broken",
            "obj": object(),
        }
    )
    assert len(fitted["reason"]) == 1000 and fitted["p90"] is None
    assert isinstance(fitted["deep"]["a"]["b"], str)
    json.dumps(fitted, allow_nan=False).encode("utf-8")
