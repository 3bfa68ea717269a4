"""A local fallback tells the server the decision and its rule, never the device's observed numbers.

The agent is real (onnxruntime sessions on models in its store, the real guard); its ``fell_back``
event goes through the real device API into the database, and the device page shows the rule as
plain text: no error rate, no latency, no Python repr.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from django.test import Client

from agent.agent import Agent
from agent.config import AgentConfig
from agent.guard import Guard, GuardPolicy
from agent.store import Installed, ModelStore
from agent.verify import sha256_file
from tests import factories
from tests.onnx_models import mlp_classifier, save

POLICY = GuardPolicy(min_samples=20)


def agent_with(tmp_path: Path, fault: object) -> Agent:
    store = ModelStore(tmp_path / "d")
    for i, v in enumerate(("v1", "v2")):
        path = save(mlp_classifier(seed=i + 1), tmp_path / f"{v}.onnx")
        sha = sha256_file(path)
        shutil.copy(path, store.path_for(sha))
        store.activate("m", Installed(v, sha))
    cfg = AgentConfig(server="http://127.0.0.1:9", enrollment_key="-", data_dir=tmp_path / "d")
    return Agent(cfg, guard_policy=POLICY, fault=fault, seed=1)


def fell_back(agent: Agent) -> list[dict]:
    return [e for e in agent.spool.peek("event", 1000) if e["kind"] == "fell_back"]


def _numbers(obj: object) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [float(obj)] if isinstance(obj, int | float) and not isinstance(obj, bool) else []


def run_until_fallback(agent: Agent, baseline_calls: int = 0) -> None:
    x = np.zeros((1, 4), np.float32)
    for _ in range(200):
        if agent.runtimes["m"].version == "v1":
            return
        with contextlib.suppress(RuntimeError):
            agent.predict(x)
    pytest.fail("the guard never fell back")


def test_error_rate_fallback_without_a_baseline_carries_the_rule_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def fault(model: str, version: str) -> float:
        if version == "v2" and rng.random() < 0.73:
            raise RuntimeError("simulated regression")
        return 0.0

    agent = agent_with(tmp_path, fault)
    run_until_fallback(agent)
    (event,) = fell_back(agent)
    assert (event["model"], event["version"]) == ("m", "v2")
    assert event["details"] == {"rule": "error_rate", "threshold": POLICY.max_error_rate, "to": "v1"}


def test_fallbacks_against_the_previous_version_name_the_rule_and_its_limits(tmp_path: Path) -> None:
    slow = {"on": False}

    def fault(model: str, version: str) -> float:
        if version == "v2" and slow["on"]:
            return 137.25
        return 0.0

    agent = agent_with(tmp_path, fault)
    x = np.zeros((1, 4), np.float32)
    # v2 is active: its first 40 calls become the baseline, then it turns slow against itself
    for _ in range(40):
        agent.predict(x)
    guard = agent.guards["m"]
    guard.switched()
    slow["on"] = True
    for _ in range(40):
        agent.predict(x)
    (event,) = fell_back(agent)
    assert event["details"] == {
        "rule": "latency_p90_vs_previous",
        "ratio": POLICY.latency_ratio,
        "margin_ms": POLICY.latency_margin_ms,
        "to": "v1",
    }
    assert 137.25 not in _numbers(event)


def test_the_guard_verdict_keeps_its_numbers_on_the_device() -> None:
    g = Guard(POLICY)
    for _ in range(100):
        g.observe(True, 5.0)
    g.switched()
    verdicts = [g.observe(i % 2 == 0, 5.0) for i in range(20)]
    v = verdicts[-1]
    assert v.fall_back and v.rule == "error_rate_vs_previous"
    assert v.public() == {"rule": "error_rate_vs_previous", "ratio": 3.0, "margin": 0.05}
    assert v.numbers["error_rate"] == 0.5  # for local logs and status only
    assert 0.5 not in _numbers(v.public())


@pytest.mark.django_db
def test_the_device_page_shows_the_rule_not_the_numbers(tmp_path: Path, viewer_client: Client) -> None:
    from fleet.models import DeviceEvent

    rng = np.random.default_rng(3)

    def fault(model: str, version: str) -> float:
        if version == "v2" and rng.random() < 0.9:
            raise RuntimeError("simulated regression")
        return 0.0

    agent = agent_with(tmp_path, fault)
    run_until_fallback(agent)
    device, token = factories.device()
    legacy = {  # what agents before this change sent: the device's exact error rate and p90
        "id": str(uuid.uuid4()),
        "kind": "fell_back",
        "at": "2026-12-01T10:00:00Z",
        "model": "m",
        "version": "v9",
        "details": {
            "to": "v8",
            "reason": "error rate 61.2% vs baseline 1.3%",
            "numbers": {"samples": 50, "error_rate": 0.6123, "baseline_error_rate": 0.0131, "p90_ms": 48.77},
        },
    }
    resp = Client().post(
        "/api/v1/events",
        json.dumps({"events": [*fell_back(agent), legacy]}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert resp.status_code == 200, resp.content
    assert DeviceEvent.objects.filter(device=device, kind="fell_back").count() == 2
    html = viewer_client.get(f"/devices/{device.pk}/").content.decode()
    assert "error_rate" in html and "threshold" in html and "0.5" in html and "v1" in html
    for leaked in ("0.6123", "0.0131", "48.77", "61.2%", "1.3%", "numbers"):
        assert leaked not in html, leaked
    assert "{&#x27;" not in html and "{'" not in html and "&#x27;:" not in html  # no Python reprs


@pytest.mark.django_db
def test_other_event_details_read_as_plain_key_values(viewer_client: Client) -> None:
    from fleet.models import DeviceEvent

    device, _ = factories.device()
    DeviceEvent.objects.create(
        id=uuid.uuid4(),
        device=device,
        kind="download_started",
        at="2026-12-01T10:00:00Z",
        model_name="m",
        version_label="v2",
        details={"resume_from": 1024, "nested": {"a": [1, 2]}, "flag": True, "none": None},
    )
    html = viewer_client.get(f"/devices/{device.pk}/").content.decode()
    # Plain text for people (edgefleet.display.plain): no Python repr, no raw JSON either.
    assert "resume_from" in html and "1,024" in html and "nested</span> a 1, 2" in html
    assert "{&#x27;" not in html and "True" not in html and "{&quot;" not in html
    assert "flag</span> yes" in html and "none</span> —" in html
