"""Replayed manifests, end to end: real agents against a LIVE server (real PostgreSQL and Redis)
through the fault-injecting proxy (tests/agent_proxy.py), which captures every manifest it passes
and can answer a device's poll with any of them, as an attacker on the path would.

A captured manifest of another device, and the device's own older one, are refused (before and
after the agent restarts), change nothing installed, and are reported; a real rollback is a newer
manifest and is taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import factories
from tests.agent_proxy import Proxy, proxy_to
from tests.test_agent_e2e import make_agent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


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


def refusals(device_id: str) -> list[str]:
    from fleet.models import DeviceEvent

    rows = DeviceEvent.objects.filter(device_id=device_id, kind="verify_failed").order_by("at")
    return [e.details.get("reason") for e in rows if e.details.get("what") == "manifest"]


def test_replayed_manifests_are_refused_and_a_real_rollback_is_newer(
    proxy: Proxy, enrollment_key: str, tmp_path: Path
) -> None:
    from rollout import lifecycle

    v1 = factories.staged_version(label="v1", seed=1)
    v2 = factories.staged_version(label="v2", seed=2)
    factories.release(v1)
    a = make_agent(proxy.url, enrollment_key, tmp_path / "a")
    d = make_agent(proxy.url, enrollment_key, tmp_path / "d")
    for agent in (a, d):
        agent.enroll()
        assert agent.poll_once() is True and agent.runtimes["fraud"].version == "v1"
    a_v1 = proxy.captured[a.identity["token"]][-1]  # device A's signed v1 manifest
    d_v1 = proxy.captured[d.identity["token"]][-1]  # D's own, older than what comes next

    campaign = lifecycle.create_campaign(name="to v2", version=v2, cohort=None, waves=[{"percent": 100}], gates={})
    lifecycle.start(campaign.pk)
    assert d.poll_once() is True and d.runtimes["fraud"].version == "v2"

    proxy.replay(a_v1)  # another device's manifest: the signature is valid, the device is not D
    assert d.poll_once() is False
    assert d.runtimes["fraud"].version == "v2" and d.store.active("fraud").version == "v2"
    assert d.stats["manifest_refused_device_id"] == 1
    on_v2 = d.accepted.sequence

    proxy.replay(d_v1)  # D's own v1 manifest: signed for D, but older than v2's
    assert d.poll_once() is False
    assert d.runtimes["fraud"].version == "v2" and d.accepted.sequence == on_v2
    assert d.stats["manifest_refused_sequence_older"] == 1

    restarted = make_agent(proxy.url, enrollment_key, tmp_path / "d")  # the floor is on disk
    assert restarted.accepted.sequence == on_v2 and restarted.runtimes["fraud"].version == "v2"
    assert restarted.poll_once() is False
    assert restarted.runtimes["fraud"].version == "v2" and restarted.stats["manifest_refused_sequence_older"] == 1

    proxy.replay(None)
    restarted.poll_once()  # the real server again: v2, unchanged; the refusals reach the server
    assert restarted.runtimes["fraud"].version == "v2" and restarted.stats["manifest_refused"] == 1
    assert refusals(d.device_id) == ["device_id", "sequence_older", "sequence_older"]

    downloads = len(proxy.hits("/api/v1/artifacts/"))
    lifecycle.rollback(campaign.pk, reason="test")  # a real rollback: a newer manifest naming v1
    assert restarted.poll_once() is True
    assert restarted.runtimes["fraud"].version == "v1" and restarted.accepted.sequence > on_v2
    assert len(proxy.hits("/api/v1/artifacts/")) == downloads  # v1 was still on disk

    proxy.replay(proxy.captured[d.identity["token"]][-2])  # and now v2's manifest is the old one
    assert restarted.poll_once() is False and restarted.runtimes["fraud"].version == "v1"


def test_a_release_change_back_is_newer_too(proxy: Proxy, enrollment_key: str, tmp_path: Path) -> None:
    v1 = factories.staged_version(label="v1", seed=1)
    factories.release(v1)
    d = make_agent(proxy.url, enrollment_key, tmp_path)
    d.enroll()
    d.poll_once()
    factories.release(factories.staged_version(label="v2", seed=2))
    d.poll_once()
    assert d.runtimes["fraud"].version == "v2"
    on_v2 = d.accepted.sequence
    factories.release(v1)  # the operator releases v1 again
    assert d.poll_once() is True
    assert d.runtimes["fraud"].version == "v1" and d.accepted.sequence > on_v2
