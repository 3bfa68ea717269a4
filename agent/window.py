"""Telemetry windows on the UTC epoch grid, and the device's record of which windows it has reported.

A window of W seconds starts at ``floor(t / W) * W`` (seconds since the Unix epoch, UTC), so its start
says nothing about when the device was first used in it (the first inference's microsecond did).
Every device with the same W has the same windows; the server refuses any other start.

``WindowLog`` keeps, in the data directory, the end of the last window reported and the window that
was open at a clean stop. With it a device never reports a (model version, window) twice: not after a
restart, not when the wall clock steps back.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.store import atomic_write

if TYPE_CHECKING:
    from agent.aggregate import WindowAggregator

log = logging.getLogger(__name__)


def grid_seconds(value: Any) -> int:
    """A window length as whole seconds (the grid has no sub-second part); ValueError if not positive."""
    v = float(value)
    if not math.isfinite(v) or round(v) < 1:
        raise ValueError(f"a window must be at least one second, got {value!r}")
    return round(v)


def window_bounds(t: float, seconds: int) -> tuple[int, int]:
    """``(start, end)`` in epoch seconds of the grid window holding instant ``t``."""
    if seconds < 1:
        raise ValueError("a window must be at least one second")
    start = math.floor(t / seconds) * seconds
    return int(start), int(start) + seconds


def window_iso(ts: int) -> str:
    """Epoch seconds as the protocol's UTC timestamp, with no sub-second part."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Window:
    """One open window: the versions that were active in it (each gets a report) and their aggregates."""

    start: int
    end: int
    versions: set[tuple[str, str]] = field(default_factory=set)
    aggs: dict[tuple[str, str], WindowAggregator] = field(default_factory=dict)

    def report_keys(self) -> list[tuple[str, str]]:
        """(model, version) pairs that get a report for this window."""
        return sorted(self.versions | set(self.aggs))

    def state(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "versions": sorted([m, v] for m, v in self.versions),
            "aggs": [a.state() for a in self.aggs.values()],
        }

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Window:
        from agent.aggregate import WindowAggregator

        start, end = int(s["start"]), int(s["end"])
        if end <= start:
            raise ValueError("saved window ends before it starts")
        aggs = [WindowAggregator.from_state(a) for a in s["aggs"]]
        return cls(start, end, {(str(m), str(v)) for m, v in s["versions"]}, {(a.model, a.version): a for a in aggs})


def next_window(now: float, seconds: int, reported_until: int) -> Window:
    """The grid window holding ``now`` or, if the clock stepped back behind what was reported, the
    first grid window after that (never one already reported)."""
    start, end = window_bounds(now, seconds)
    if start < reported_until:
        start = math.ceil(reported_until / seconds) * seconds
        end = start + seconds
    return Window(start, end)


class WindowLog:
    """``windows.json``: ``{"reported_until": <epoch s>, "open": <window saved at a clean stop> | null}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reported_until = 0
        self.saved: dict[str, Any] | None = None
        try:
            data = json.loads(path.read_bytes())
            self.reported_until = int(data.get("reported_until") or 0)
            self.saved = data.get("open") or None
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError):
            log.warning("window log unreadable; starting a new one")

    def _write(self) -> None:
        atomic_write(self.path, json.dumps({"reported_until": self.reported_until, "open": self.saved}).encode())

    def take_saved(self) -> Window | None:
        """The window saved at the last clean stop, unless it was reported since or does not load."""
        saved, self.saved = self.saved, None
        if saved is None:
            return None
        self._write()
        try:
            w = Window.from_state(saved)
        except (KeyError, TypeError, ValueError) as e:
            log.warning("saved window does not load (%s); dropped", e)
            return None
        return w if w.end > self.reported_until else None

    def mark_reported(self, end: int) -> None:
        """Durable before the reports are spooled: a crash in between loses them, never doubles them."""
        self.reported_until = max(self.reported_until, int(end))
        self._write()

    def save_open(self, window: Window) -> None:
        self.saved = window.state()
        self._write()
