"""The agent's side of windows, install conditions and probation, with real models in a real store.

No server: the manifest entries are built here (the server's side is tests/test_campaign_install_rules.py
and the simulator's end-to-end test in tests/test_simulator.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.agent import Agent
from agent.config import AgentConfig
from agent.guard import GuardPolicy
from agent.store import Installed, ModelStore
from agent.verify import sha256_file
from tests.onnx_models import mlp_classifier, save

MONDAY_0030 = datetime(2026, 12, 7, 0, 30, tzinfo=UTC).timestamp()
MONDAY_0130 = datetime(2026, 12, 7, 1, 30, tzinfo=UTC).timestamp()
WINDOW = {"windows": [{"days": ["mon"], "start": "01:00", "end": "02:00"}], "tz": "UTC"}


class Host:
    """What the host says about itself, and the time the install clock shows."""

    def __init__(self) -> None:
        self.now = MONDAY_0030
        self.conditions: dict[str, Any] = {"power": "external", "network": "unmetered", "idle": True}


def setup(tmp_path: Path, host: Host, policy: GuardPolicy | None = None, fault: Any = None) -> tuple[Agent, dict]:
    """An agent running v1 with v2's file already on disk (so installing it needs no download)."""
    store = ModelStore(tmp_path / "d")
    arts = {}
    for v, seed in (("v2", 2), ("v1", 1)):  # v1 active, v2 kept on disk as its previous
        path = save(mlp_classifier(seed=seed), tmp_path / f"{v}.onnx")
        sha = sha256_file(path)
        shutil.copy(path, store.path_for(sha))
        store.activate("m", Installed(v, sha))
        arts[v] = {"url": f"/api/v1/artifacts/{sha}", "sha256": sha, "size": path.stat().st_size, "variant": "fp32"}
    cfg = AgentConfig(server="http://127.0.0.1:9", enrollment_key="-", data_dir=tmp_path / "d")
    agent = Agent(
        cfg, guard_policy=policy or GuardPolicy(min_samples=20), fault=fault, seed=1,
        conditions=lambda: host.conditions, install_clock=lambda: host.now,
    )  # fmt: skip
    return agent, arts


def entry(arts: dict, install: Any = None) -> dict:
    e = {"model": "m", "version": "v2", "version_id": 2, "campaign_id": 1, "artifact": arts["v2"],
         "fallback": {"version": "v1", "version_id": 1, "artifact": arts["v1"]}}  # fmt: skip
    if install is not None:
        e["install"] = install
    return e


def events(agent: Agent, kind: str) -> list[dict]:
    return [e for e in agent.spool.peek("event", 1000) if e["kind"] == kind]


def test_outside_the_window_nothing_installs_and_the_wait_is_reported_once(tmp_path: Path) -> None:
    host = Host()
    agent, arts = setup(tmp_path, host)
    manifest = {"models": [entry(arts, {**WINDOW, "conditions": {"power": "external"}})]}
    agent.apply(manifest)
    agent.apply(manifest)
    assert agent.runtimes["m"].version == "v1"
    (wait,) = events(agent, "install_waiting")  # reported once, not every poll
    assert wait["version"] == "v2" and wait["details"]["reasons"] == "window"
    assert wait["details"]["power"] == "external"
    host.now = MONDAY_0130  # the window opens, but the device is unplugged now
    host.conditions = {"power": "battery", "network": "unmetered"}
    agent.apply(manifest)
    assert agent.runtimes["m"].version == "v1"
    assert events(agent, "install_waiting")[-1]["details"]["reasons"] == "power"
    host.conditions["power"] = "external"
    agent.apply(manifest)
    assert agent.runtimes["m"].version == "v2" and events(agent, "activated")


def test_an_entry_without_rules_installs_at_once_and_a_broken_window_keeps_the_version_out(tmp_path: Path) -> None:
    host = Host()
    agent, arts = setup(tmp_path, host)
    agent.apply({"models": [entry(arts, {"windows": [{"days": ["mon"], "start": "1am"}], "tz": "UTC"})]})
    assert agent.runtimes["m"].version == "v1"  # fail closed
    agent.apply({"models": [entry(arts)]})  # a release or a rollback: no install rules
    assert agent.runtimes["m"].version == "v2"


def test_the_poll_reports_known_conditions_only(tmp_path: Path) -> None:
    host = Host()
    agent, _ = setup(tmp_path, host)
    host.conditions = {"power": "external", "network": "5g", "idle": "yes", "secret": "x"}
    assert agent.agent_state() == {"models": {"m": "v1"}, "conditions": {"power": "external"}}
    host.conditions = {}
    assert agent.agent_state() == {"models": {"m": "v1"}}  # nothing known: the header is what it was


def test_probation_commits_after_n_inferences_without_a_fallback(tmp_path: Path) -> None:
    host = Host()
    policy = GuardPolicy(min_samples=20, commit_after_inferences=30, commit_after_seconds=10**6)
    agent, arts = setup(tmp_path, host, policy)
    agent.apply({"models": [entry(arts)]})
    x = np.zeros((1, 4), np.float32)
    for _ in range(29):
        agent.predict(x)
    assert not events(agent, "committed")
    agent.predict(x)  # the 30th: equality at the threshold commits
    (c,) = events(agent, "committed")
    assert (c["model"], c["version"], c["details"]["inferences"]) == ("m", "v2", 30)
    for _ in range(50):
        agent.predict(x)
    assert len(events(agent, "committed")) == 1  # once
    assert json.loads((tmp_path / "d" / "probation.json").read_text()) == {}


def test_probation_commits_after_m_seconds_and_survives_a_restart(tmp_path: Path) -> None:
    host = Host()
    policy = GuardPolicy(min_samples=20, commit_after_inferences=10**6, commit_after_seconds=60)
    clock = {"t": 1_000_000.0}
    agent, arts = setup(tmp_path, host, policy)
    agent.clock = lambda: clock["t"]
    agent.apply({"models": [entry(arts)]})
    agent.check_probation()
    assert not events(agent, "committed")
    restarted = Agent(agent.cfg, guard_policy=policy, seed=2, clock=lambda: clock["t"])
    clock["t"] += 60
    restarted.check_probation()
    assert [e["version"] for e in events(restarted, "committed")] == ["v2"]


def test_a_fallback_ends_probation_without_a_commit(tmp_path: Path) -> None:
    host = Host()
    rng = np.random.default_rng(0)

    def fault(model: str, version: str) -> float:
        if version == "v2" and rng.random() < 0.8:
            raise RuntimeError("simulated regression")
        return 0.0

    policy = GuardPolicy(min_samples=20, commit_after_inferences=25, commit_after_seconds=10**6)
    agent, arts = setup(tmp_path, host, policy, fault)
    agent.apply({"models": [entry(arts)]})
    x = np.zeros((1, 4), np.float32)
    for _ in range(200):
        with contextlib.suppress(RuntimeError):
            agent.predict(x)
        if agent.runtimes["m"].version == "v1":
            break
    else:
        pytest.fail("the guard never fell back")
    (fb,) = events(agent, "fell_back")
    assert fb["version"] == "v2" and fb["details"]["to"] == "v1"  # from v2, to v1
    for _ in range(50):
        agent.predict(x)
    assert not events(agent, "committed") and agent.probation == {}
