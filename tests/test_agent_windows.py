"""Telemetry windows on the device: on the UTC epoch grid, one report per version and window, empty ones too.

No server: a real Agent with real onnxruntime sessions on models in its store, a manifest set the way
the footprint bench does, and a clock the test moves (the only thing faked: time).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from agent.agent import Agent
from agent.config import AgentConfig
from agent.guard import GuardPolicy
from agent.store import Installed, ModelStore
from agent.verify import sha256_file
from agent.window import window_bounds, window_iso
from tests.onnx_models import mlp_classifier, save

W = 60
T0 = 1_800_000_000  # a multiple of 60 and of 300: 2027-01-15T08:00:00Z
SPEC = {
    "features": [{"name": f"input[{j}]", "edges": [-3.0, -1.0, 0.0, 1.0, 3.0]} for j in range(4)],
    "output": {"kind": "classes", "n": 3},
}


class Clock:
    """Wall-clock seconds since the epoch, moved by the test."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def install(data: Path, tmp: Path, model: str, *versions: str) -> None:
    store = ModelStore(data)
    for i, v in enumerate(versions):
        path = save(mlp_classifier(seed=sum(map(ord, model)) + i), tmp / f"{model}-{v}.onnx")
        sha = sha256_file(path)
        shutil.copy(path, store.path_for(sha))
        store.activate(model, Installed(v, sha))


def manifest(mechanism: str = "none", models: tuple[str, ...] = ("m",), version: str = "v1") -> dict:
    return {
        "telemetry": {"window_seconds": W, "privacy": {"mechanism": mechanism, "epsilon": 1.0}},
        "models": [{"model": m, "version": version, "telemetry": SPEC} for m in models],
    }


def make_agent(data: Path, clock: Clock, mechanism: str = "none", w_from_manifest: bool = False, **kw: object) -> Agent:
    """An agent as after a restart with its manifest on disk: W in force from the first window (by
    default through the config override; ``w_from_manifest`` takes it from the manifest once it is set)."""
    cfg = AgentConfig(
        server="http://127.0.0.1:9", enrollment_key="-", data_dir=data, window_seconds=None if w_from_manifest else W
    )
    agent = Agent(cfg, clock=clock, seed=5, **kw)
    agent.manifest = manifest(mechanism, models=tuple(sorted(agent.store.state)))
    return agent


def reports(agent: Agent) -> list[dict]:
    return agent.spool.peek("report", 10_000)


def rows(n: int = 8) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)


def ts(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def test_window_bounds_are_multiples_of_the_window_since_the_epoch() -> None:
    assert window_bounds(T0 + 17.25, 60) == (T0, T0 + 60)
    assert window_bounds(T0, 60) == (T0, T0 + 60)  # a boundary starts the window it bounds
    assert window_bounds(T0 - 0.000001, 60) == (T0 - 60, T0)
    assert window_bounds(T0 + 299.999, 300) == (T0, T0 + 300)
    midnight = T0 - T0 % 86_400
    assert window_bounds(midnight + 86_399.5, 86_400) == (midnight, midnight + 86_400)
    assert window_iso(T0) == "2027-01-15T08:00:00Z"
    with pytest.raises(ValueError):
        window_bounds(T0, 0)


def test_a_report_names_its_grid_window_not_the_first_inference(tmp_path: Path) -> None:
    install(tmp_path / "d", tmp_path, "m", "v1")
    clock = Clock(T0 + 17.25)
    agent = make_agent(tmp_path / "d", clock, w_from_manifest=True)
    agent.predict(rows())
    clock.t = T0 + 59.999
    assert agent.close_window() == 0  # the window is not over: nothing is reported early
    assert agent.tick() <= 0.05  # and the loop wakes at its end, not a poll interval later
    clock.t = T0 + 60.4
    assert agent.close_window() == 1
    (r,) = reports(agent)
    assert (r["window_start"], r["window_end"]) == ("2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z")
    start, end = ts(r["window_start"]), ts(r["window_end"])
    assert start.timestamp() % W == 0 and (end - start).total_seconds() == W and start.microsecond == 0
    assert r["inference_count"] == 8


def test_every_installed_model_reports_every_window_busy_or_idle(tmp_path: Path) -> None:
    data = tmp_path / "d"
    install(data, tmp_path, "m", "v1")
    install(data, tmp_path, "n", "v1")
    clock = Clock(T0 + 5)
    agent = make_agent(data, clock)
    for k in range(1, 4):  # window 0 idle, window 1 busy on m only, window 2 idle
        if k == 2:
            agent.predict(rows(), model="m")
        clock.t = T0 + k * W + 1
        assert agent.close_window() == 2
    made = reports(agent)
    assert sorted((r["model"], r["window_start"]) for r in made) == sorted(
        (m, window_iso(T0 + k * W)) for m in ("m", "n") for k in range(3)
    )
    busy = [r for r in made if r["inference_count"] > 0]
    assert [(r["model"], r["window_start"]) for r in busy] == [("m", window_iso(T0 + W))]
    empty = next(r for r in made if r["model"] == "n")
    # an empty window's report is all zeros (before noise) and has exactly the busy report's shape
    assert set(empty) == set(busy[0]) and empty["privacy"] == busy[0]["privacy"]
    for part in ("latency_ms", "outputs"):
        assert len(empty[part]["counts"]) == len(busy[0][part]["counts"]) and not any(empty[part]["counts"])
    assert {k: len(v["counts"]) for k, v in empty["features"].items()} == {
        k: len(v["counts"]) for k, v in busy[0]["features"].items()
    }
    assert empty["inference_count"] == empty["error_count"] == 0


def test_an_idle_window_carries_the_calibrated_noise_all_the_same(tmp_path: Path) -> None:
    install(tmp_path / "d", tmp_path, "m", "v1")
    clock = Clock(T0 + 1)
    agent = make_agent(tmp_path / "d", clock, mechanism="laplace")
    for k in range(1, 201):
        clock.t = T0 + k * W + 1
        agent.close_window()
    made = reports(agent)
    assert len(made) == 200
    counts = np.array([[r["inference_count"], r["error_count"], *r["outputs"]["counts"]] for r in made])
    # Laplace with b = (4 features + 3) / 1: variance 2 * 49 = 98 on every count, also when nothing ran
    assert np.var(counts) == pytest.approx(98, rel=0.2) and abs(np.mean(counts)) < 2


def test_at_most_one_report_per_version_and_window(tmp_path: Path) -> None:
    data = tmp_path / "d"
    install(data, tmp_path, "m", "v1")
    clock = Clock(T0 + 10)
    agent = make_agent(data, clock)
    agent.predict(rows(3))
    clock.t = T0 + W + 1
    assert agent.close_window() == 1 and agent.close_window() == 0 and agent.tick() > 0
    assert agent.close_window() == 0
    # the wall clock steps back into the window already reported: it is not reported again
    clock.t = T0 + 30
    agent.predict(rows(2))
    clock.t = T0 + W + 2
    assert agent.close_window() == 0
    clock.t = T0 + 2 * W + 1
    assert agent.close_window() == 1
    starts = [r["window_start"] for r in reports(agent)]
    assert starts == [window_iso(T0), window_iso(T0 + W)] and reports(agent)[1]["inference_count"] == 2


def test_a_restart_resumes_the_open_window_and_never_reports_one_twice(tmp_path: Path) -> None:
    data = tmp_path / "d"
    install(data, tmp_path, "m", "v1")
    clock = Clock(T0 + 10)
    agent = make_agent(data, clock)
    agent.predict(rows(3))
    agent.shutdown()  # a clean stop keeps the open window; it is not reported half-way
    assert reports(agent) == []
    clock.t = T0 + 40
    again = make_agent(data, clock)
    again.predict(rows(2))
    clock.t = T0 + W + 1
    assert again.close_window() == 1
    (r,) = reports(again)
    assert r["window_start"] == window_iso(T0) and r["inference_count"] == 5
    # a restart with the clock stepped back into the reported window does not report it again
    clock.t = T0 + 50
    third = make_agent(data, clock)
    third.predict(rows(1))
    clock.t = T0 + W + 5
    assert third.close_window() == 0
    assert [r["window_start"] for r in reports(third)] == [window_iso(T0)]


def test_a_window_saved_at_shutdown_and_over_at_start_is_reported_then(tmp_path: Path) -> None:
    data = tmp_path / "d"
    install(data, tmp_path, "m", "v1")
    clock = Clock(T0 + 10)
    agent = make_agent(data, clock)
    agent.predict(rows(4))
    agent.shutdown()
    clock.t = T0 + 10 * W + 3  # down for nine windows
    again = make_agent(data, clock)
    assert again.close_window() == 1
    (r,) = reports(again)
    assert r["window_start"] == window_iso(T0) and r["inference_count"] == 4
    # the windows while the agent was not running are not back-filled; the next one is the current
    clock.t = T0 + 11 * W
    assert again.close_window() == 1
    assert [r["window_start"] for r in reports(again)] == [window_iso(T0), window_iso(T0 + 10 * W)]


def test_a_gap_while_running_is_not_back_filled(tmp_path: Path) -> None:
    install(tmp_path / "d", tmp_path, "m", "v1")
    clock = Clock(T0 + 10)
    agent = make_agent(tmp_path / "d", clock)
    clock.t = T0 + 5 * W + 10  # the host did not wake the agent for four windows (a suspend)
    agent.predict(rows(2))  # belongs to the current window, not to the stale one
    assert agent.close_window() == 1
    clock.t = T0 + 6 * W
    assert agent.close_window() == 1
    made = reports(agent)
    assert [(r["window_start"], r["inference_count"]) for r in made] == [
        (window_iso(T0), 0),
        (window_iso(T0 + 5 * W), 2),
    ]


def test_a_version_active_at_any_time_in_a_window_reports_it(tmp_path: Path) -> None:
    data = tmp_path / "d"
    install(data, tmp_path, "m", "v1", "v2")

    def fault(model: str, version: str) -> float:
        if version == "v2":
            raise RuntimeError("simulated regression")
        return 0.0

    clock = Clock(T0 + 10)
    agent = make_agent(data, clock, fault=fault, guard_policy=GuardPolicy(min_samples=5))
    assert agent.runtimes["m"].version == "v2"
    for _ in range(5):
        with pytest.raises(RuntimeError):
            agent.predict(rows(1))
    assert agent.runtimes["m"].version == "v1"  # the guard fell back; v1 ran nothing this window
    clock.t = T0 + W + 1
    assert agent.close_window() == 2
    clock.t = T0 + 2 * W + 1
    assert agent.close_window() == 1
    got = {(r["version"], r["window_start"]): (r["inference_count"], r["error_count"]) for r in reports(agent)}
    assert got == {
        ("v2", window_iso(T0)): (5, 5),
        ("v1", window_iso(T0)): (0, 0),
        ("v1", window_iso(T0 + W)): (0, 0),
    }


def test_a_fractional_or_compressed_window_is_whole_seconds(tmp_path: Path) -> None:
    install(tmp_path / "d", tmp_path, "m", "v1")
    clock = Clock(T0 + 1)
    cfg = AgentConfig(server="http://127.0.0.1:9", enrollment_key="-", data_dir=tmp_path / "d", window_seconds=2.4)
    agent = Agent(cfg, clock=clock, seed=1)
    agent.manifest = manifest()
    assert agent.window_seconds() == 2
    clock.t = T0 + 2
    assert agent.close_window() == 1
    (r,) = reports(agent)
    assert (r["window_start"], r["window_end"]) == (window_iso(T0), window_iso(T0 + 2))


def test_when_the_server_changes_the_window_the_open_one_moves_onto_the_new_grid(tmp_path: Path) -> None:
    install(tmp_path / "d", tmp_path, "m", "v1")
    clock = Clock(T0 + 10)
    agent = make_agent(tmp_path / "d", clock, w_from_manifest=True)
    agent.predict(rows(3))
    clock.t = T0 + 30
    agent.manifest["telemetry"]["window_seconds"] = 300
    agent.predict(rows(1))
    clock.t = T0 + 299
    assert agent.close_window() == 0
    clock.t = T0 + 300
    assert agent.close_window() == 1
    (r,) = reports(agent)
    assert (r["window_start"], r["window_end"], r["inference_count"]) == (window_iso(T0), window_iso(T0 + 300), 4)


def test_the_simulator_refuses_a_compressed_window_that_is_not_whole_seconds() -> None:
    from agent.simulate import SimOptions, run_simulation

    with pytest.raises(ValueError, match="whole number of seconds"):
        run_simulation(SimOptions(server="http://127.0.0.1:9", enrollment_key="-", window_seconds=100, speed=60))
