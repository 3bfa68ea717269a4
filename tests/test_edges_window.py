"""Edges of the agent's window grid and its record of reported windows (agent/window.py), pure.

A window of exactly one second is a window, a clock stepped back never reopens a reported window,
and an unreadable or stale saved window is dropped, not reported twice (docs/mutation.md).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from agent.window import Window, WindowLog, grid_seconds, next_window, window_bounds, window_iso


@pytest.mark.parametrize(
    ("value", "seconds"), [(1, 1), ("60", 60), (0.51, 1), (1.4, 1), (299.6, 300), (86400.0, 86400)]
)
def test_grid_seconds_rounds_to_whole_seconds_of_at_least_one(value: object, seconds: int) -> None:
    got = grid_seconds(value)
    assert got == seconds and type(got) is int


@pytest.mark.parametrize("value", [0, 0.5, -5, math.nan, math.inf, "x"])
def test_grid_seconds_refuses_less_than_a_second_or_no_number(value: object) -> None:
    with pytest.raises(ValueError):
        grid_seconds(value)
    if value in (0, 0.5, -5):
        with pytest.raises(ValueError, match=r"^a window must be at least one second, got "):
            grid_seconds(value)


def test_window_bounds_at_the_one_second_minimum_and_before_the_epoch() -> None:
    assert window_bounds(10.5, 1) == (10, 11)
    assert window_bounds(-0.5, 60) == (-60, 0)
    got = window_bounds(125.0, 60)
    assert got == (120, 180) and all(type(x) is int for x in got)
    with pytest.raises(ValueError, match=r"^a window must be at least one second$"):
        window_bounds(10.0, 0)


def test_window_iso_is_utc_without_a_fraction() -> None:
    assert window_iso(0) == "1970-01-01T00:00:00Z"
    assert window_iso(86399.9) == "1970-01-01T23:59:59Z"  # type: ignore[arg-type]


def test_next_window_is_the_one_holding_now_unless_already_reported() -> None:
    w = next_window(125.0, 60, 120)  # reported until the start of now's window: it is still open
    assert (w.start, w.end) == (120, 180)
    w = next_window(125.0, 60, 121)  # the clock stepped back into a reported window
    assert (w.start, w.end) == (180, 240)
    w = next_window(125.0, 60, 300)  # far behind: the first window after what was reported
    assert (w.start, w.end) == (300, 360)
    w = next_window(125.0, 60, 301)
    assert (w.start, w.end) == (360, 420)
    assert w.versions == set() and w.aggs == {}


def test_a_windows_state_round_trips_and_lists_every_version_once() -> None:
    w = Window(60, 120, {("m", "v2"), ("a", "v1")})
    state = w.state()
    assert state == {"start": 60, "end": 120, "versions": [["a", "v1"], ["m", "v2"]], "aggs": []}
    back = Window.from_state(json.loads(json.dumps(state)))
    assert (back.start, back.end, back.versions, back.aggs) == (60, 120, {("a", "v1"), ("m", "v2")}, {})
    assert back.report_keys() == [("a", "v1"), ("m", "v2")]


def test_a_saved_window_that_does_not_end_after_it_starts_is_refused() -> None:
    for end in (60, 59):
        with pytest.raises(ValueError, match=r"^saved window ends before it starts$"):
            Window.from_state({"start": 60, "end": end, "versions": [], "aggs": []})
    Window.from_state({"start": "60", "end": "61", "versions": [[1, 2]], "aggs": []})


def test_a_new_log_starts_at_zero_and_is_written_on_every_change(tmp_path: Path) -> None:
    path = tmp_path / "windows.json"
    log = WindowLog(path)
    assert (log.reported_until, log.saved, path.exists()) == (0, None, False)
    assert log.take_saved() is None and not path.exists()  # nothing saved: nothing written
    log.mark_reported(120)
    assert json.loads(path.read_text()) == {"reported_until": 120, "open": None}
    log.mark_reported(60)  # never backwards
    assert WindowLog(path).reported_until == 120
    log.save_open(Window(120, 180, {("m", "v")}))
    assert WindowLog(path).saved == {"start": 120, "end": 180, "versions": [["m", "v"]], "aggs": []}


def test_the_saved_window_is_taken_once(tmp_path: Path) -> None:
    path = tmp_path / "windows.json"
    WindowLog(path).save_open(Window(120, 180, {("m", "v")}))
    log = WindowLog(path)
    w = log.take_saved()
    assert w is not None and (w.start, w.end, w.versions) == (120, 180, {("m", "v")})
    assert log.take_saved() is None
    assert WindowLog(path).saved is None  # the take is durable


def test_a_saved_window_already_reported_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "windows.json"
    log = WindowLog(path)
    log.save_open(Window(120, 180))
    log.mark_reported(179)
    assert WindowLog(path).take_saved() is not None  # ends after what was reported: still open
    log = WindowLog(path)
    log.save_open(Window(120, 180))
    log.mark_reported(180)
    assert WindowLog(path).take_saved() is None


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[1, 2]", b'{"reported_until": "x"}', b'{"reported_until": [1]}'],
)
def test_an_unreadable_log_starts_over_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "windows.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="agent.window"):
        log = WindowLog(path)
    assert (log.reported_until, log.saved) == (0, None)
    assert caplog.messages == ["window log unreadable; starting a new one"]


def test_a_log_with_null_fields_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "windows.json"
    path.write_text('{"reported_until": null, "open": {}}')
    log = WindowLog(path)
    assert (log.reported_until, log.saved) == (0, None)


def test_a_saved_window_that_does_not_load_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "windows.json"
    path.write_text(json.dumps({"reported_until": 0, "open": {"start": 60, "end": 0, "versions": [], "aggs": []}}))
    log = WindowLog(path)
    with caplog.at_level(logging.WARNING, logger="agent.window"):
        assert log.take_saved() is None
    assert caplog.messages == ["saved window does not load (saved window ends before it starts); dropped"]
    assert WindowLog(path).saved is None


def test_window_iso_is_utc_whatever_the_devices_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert window_iso(0) == "1970-01-01T00:00:00Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_saved_window_brings_back_its_aggregates_by_model_and_version() -> None:
    """A clean stop must not lose what the open window counted (the agent saves it in windows.json)."""
    from agent.aggregate import WindowAggregator

    agg = WindowAggregator("m", "v1", {}, [0.0, 10.0, 100.0])
    agg.inferences, agg.errors = 7.0, 2.0
    w = Window(60, 120, {("m", "v1")}, {("m", "v1"): agg})
    back = Window.from_state(json.loads(json.dumps(w.state())))
    assert list(back.aggs) == [("m", "v1")]
    got = back.aggs[("m", "v1")]
    assert (got.model, got.version, got.inferences, got.errors) == ("m", "v1", 7.0, 2.0)
    assert got.state() == agg.state()
