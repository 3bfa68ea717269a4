"""Expired manifests, end to end: a real agent against a LIVE server (real PostgreSQL and Redis)
through the fault-injecting proxy (tests/agent_proxy.py), which captures a validly signed manifest
and later answers the device's polls with it, as an attacker on the path who withheld it would.

Time is moved, not waited for: the device's clock (the agent's ``clock``) and the server's
(``rollout.freshness.now``) go forward together, as the world's clock does. A manifest past its
expiry plus the device's clock allowance installs nothing and keeps what runs; one exactly at the
edge is still taken; the next fresh manifest from the server is taken as soon as the proxy stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from agent.verify import CLOCK_SKEW, parse_time
from tests import factories
from tests.agent_proxy import Proxy, proxy_to
from tests.test_agent_e2e import Clock, make_agent
from tests.test_agent_replay import refusals

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DAY = 86_400


@pytest.fixture(autouse=True)
def _fresh_generation() -> None:
    from rollout.manifest import bump_generation

    bump_generation()


@pytest.fixture
def proxy(live_server: object) -> Iterator[Proxy]:
    # The live server runs in this process: import what its first device request would import lazily
    # (scipy through the gate statistics), which on a loaded machine can outlast the proxy's timeout.
    import telemetry.detectability
    import telemetry.regression  # noqa: F401

    requests.get(f"{live_server.url}/healthz", timeout=120)
    with proxy_to(live_server.url) as p:
        yield p


@pytest.fixture
def enrollment_key(db: None) -> str:
    return factories.enrollment_key(default_labels={"fleet": "test"})[1]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """One clock for the device and the server (the live server runs in this process)."""
    from rollout import freshness

    clock = Clock(float(int(time.time())))
    monkeypatch.setattr(freshness, "now", clock)
    return clock


def agent(proxy: Proxy, key: str, data: Path, clock: Clock) -> object:
    """A real agent, patient with a loaded machine (the shared CI box runs many suites at once)."""
    a = make_agent(proxy.url, key, data, clock=clock)
    a.client.timeout = 60
    return a


def captured_for(proxy: Proxy, agent: object) -> bytes:
    """Fetch the device's current manifest through the proxy without the agent seeing it (captured)."""
    doc, _ = agent.client.manifest(None, agent.agent_state())
    assert doc is not None
    return proxy.captured[agent.identity["token"]][-1]


def expiry(body: bytes) -> int:
    return parse_time(json.loads(body)["manifest"]["expires_at"])


def artifact_downloads(proxy: Proxy) -> int:
    return len([h for h in proxy.hits("/api/v1/artifacts/") if h[0] == "GET"])


def test_an_expired_manifest_installs_nothing_and_the_next_fresh_one_is_taken(
    proxy: Proxy, enrollment_key: str, tmp_path: Path, world: Clock
) -> None:
    from rollout import lifecycle

    v1 = factories.staged_version(label="v1", seed=1)
    v2 = factories.staged_version(label="v2", seed=2)
    factories.release(v1)
    d = agent(proxy, enrollment_key, tmp_path / "d", world)
    d.enroll()
    assert d.poll_once() is True and d.runtimes["fraud"].version == "v1"
    on_v1 = d.accepted.sequence

    campaign = lifecycle.create_campaign(name="to v2", version=v2, cohort=None, waves=[{"percent": 100}], gates={})
    lifecycle.start(campaign.pk)
    withheld = captured_for(proxy, d)  # signed for D, naming v2; D never saw it
    assert [m["version"] for m in json.loads(withheld)["manifest"]["models"]] == ["v2"]
    expires = expiry(withheld)
    assert d.cfg.clock_skew == CLOCK_SKEW
    downloads = artifact_downloads(proxy)

    # Just past the edge: one second beyond expiry plus the allowance.
    world.t = expires + CLOCK_SKEW + 1
    proxy.replay(withheld)
    assert d.poll_once() is False
    assert d.runtimes["fraud"].version == "v1" and d.store.active("fraud").version == "v1"
    assert d.stats["manifest_refused_expired"] == 1 and d.accepted.sequence == on_v1
    assert artifact_downloads(proxy) == downloads  # v2 was not even fetched

    # Long expired: a month later the same captured manifest is still refused.
    world.t = expires + 30 * DAY
    assert d.poll_once() is False
    assert d.runtimes["fraud"].version == "v1" and d.store.active("fraud").version == "v1"
    assert d.stats["manifest_refused_expired"] == 2 and d.accepted.sequence == on_v1
    assert artifact_downloads(proxy) == downloads

    # The proxy steps aside: the server re-signs (its copy expired too) and v2 arrives.
    proxy.replay(None)
    assert d.poll_once() is True
    assert d.runtimes["fraud"].version == "v2" and d.store.active("fraud").version == "v2"
    assert d.accepted.sequence > on_v1 and d.accepted.expires_at > world.t
    assert d.accepted.digest != json.loads(withheld)["manifest"].get("digest", "")
    fresh = proxy.captured[d.identity["token"]][-1]
    assert fresh != withheld and expiry(fresh) > expires
    assert artifact_downloads(proxy) > downloads
    d.poll_once()  # the refusals reach the server, once per refused manifest and time
    assert refusals(d.device_id) == ["expired", "expired"]


def test_a_manifest_exactly_at_the_edge_of_the_allowance_is_still_taken(
    proxy: Proxy, enrollment_key: str, tmp_path: Path, world: Clock
) -> None:
    from rollout import lifecycle

    v1 = factories.staged_version(label="v1", seed=1)
    v2 = factories.staged_version(label="v2", seed=2)
    factories.release(v1)
    d = agent(proxy, enrollment_key, tmp_path / "d", world)
    d.enroll()
    assert d.poll_once() is True
    lifecycle.start(
        lifecycle.create_campaign(name="to v2", version=v2, cohort=None, waves=[{"percent": 100}], gates={}).pk
    )
    withheld = captured_for(proxy, d)
    world.t = expiry(withheld) + CLOCK_SKEW  # not past it: the allowance is inclusive
    proxy.replay(withheld)
    assert d.poll_once() is True
    assert d.runtimes["fraud"].version == "v2" and d.stats["manifest_refused"] == 0
