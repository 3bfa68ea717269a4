"""A device's inferences count in the round of the window they happened in.

The masked input of a round carries the vector of the round's window as the agent closed it. The
clock passes a window's end before the agent rolls that window (a poll takes time between its first
roll and its rounds step); a contribution read in that gap used to be the zero vector, so on a busy
machine most active devices counted as idle. No server: a real Agent with onnxruntime sessions and a
clock the test moves (tests/test_agent_windows.py), its round state read directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.encoding import window_vectors
from agent.window import window_iso
from tests.test_agent_windows import T0, Clock, W, install, make_agent, rows


def public(budget: str, start: int, length: int) -> dict:
    """What a round's public configuration says that ``_contribution`` reads."""
    return {
        "model": "m",
        "version": "v1",
        "budget": budget,
        "window_start": window_iso(start),
        "window_seconds": W,
        "vector_length": length,
    }


def lengths(agent: object) -> dict[str, int]:
    agg = agent._new_aggregator("m", "v1")  # type: ignore[attr-defined]
    return {b: len(v) for b, (_, v) in window_vectors(agg).items()}


def test_the_contribution_waits_for_the_agent_to_close_the_window_not_for_the_clock(tmp_path: Path) -> None:
    install(tmp_path / "d", tmp_path, "m", "v1")
    clock = Clock(T0 + 5)
    agent = make_agent(tmp_path / "d", clock)
    n = lengths(agent)
    agent.predict(rows())
    clock.t = T0 + W - 0.001
    agent.roll_window_if_due()
    assert agent.rounds._contribution(public("health", T0, n["health"])) is None  # window still open
    clock.t = T0 + W  # the window is over by the clock, the agent has not rolled it yet
    assert agent.rounds._contribution(public("health", T0, n["health"])) is None  # wait, never zeros
    agent.roll_window_if_due()
    for budget in ("health", "drift"):
        x = agent.rounds._contribution(public(budget, T0, n[budget]))
        assert x is not None and x.any()  # the window's inferences, not an idle vector


def test_a_poll_that_crosses_the_window_end_closes_it_before_answering_rounds(tmp_path: Path) -> None:
    install(tmp_path / "d", tmp_path, "m", "v1")
    clock = Clock(T0 + 5)
    agent = make_agent(tmp_path / "d", clock)
    n = lengths(agent)
    agent.predict(rows())
    clock.t = T0 + W + 0.5
    agent.take_part()  # no server here: the rounds step is deferred, but the window is closed first
    assert agent.stats["rounds_deferred"] == 1
    x = agent.rounds._contribution(public("health", T0, n["health"]))
    assert x is not None and x.any()


def test_an_idle_window_contributes_zeros_once_closed(tmp_path: Path) -> None:
    install(tmp_path / "d", tmp_path, "m", "v1")
    clock = Clock(T0 + 5)
    agent = make_agent(tmp_path / "d", clock)
    n = lengths(agent)
    clock.t = T0 + W + 1
    agent.roll_window_if_due()
    x = agent.rounds._contribution(public("drift", T0, n["drift"]))
    assert x is not None and not x.any() and x.shape == (n["drift"],)


def test_a_window_skipped_while_suspended_is_closed_by_the_next_roll(tmp_path: Path) -> None:
    """Windows between the last one the agent had open and the one it opens now (a suspend) held
    nothing: a round for one of them gets zeros at once, not after the open window ends too."""
    install(tmp_path / "d", tmp_path, "m", "v1")
    clock = Clock(T0 + 5)
    agent = make_agent(tmp_path / "d", clock)
    n = lengths(agent)
    agent.predict(rows())
    clock.t = T0 + 3 * W + 1
    agent.roll_window_if_due()
    gap = agent.rounds._contribution(public("health", T0 + W, n["health"]))
    assert gap is not None and not gap.any()
    assert agent.rounds._contribution(public("health", T0, n["health"])).any()
    assert agent.rounds._contribution(public("health", T0 + 3 * W, n["health"])) is None  # open now
    assert np.array_equal(
        agent.rounds._contribution(public("health", T0, n["health"])),
        agent.rounds.vectors[("m", "v1", T0)]["health"],
    )
