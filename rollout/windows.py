"""Maintenance windows and install conditions of a campaign (pure: no Django, no database).

A window is days of the week and a span of wall-clock hours, ``mon-fri 01:00-05:00``. It is read in
the device's time zone (its ``tz`` label, e.g. ``tz=Europe/Berlin``; UTC when it has none or an
unknown one) or in one fixed zone the campaign names. The span is half-open: open at ``start``,
closed again at ``end`` (``01:00-05:00`` is open at 04:59:59 and closed at 05:00). A span whose end
is not after its start crosses midnight (``22:00-02:00``) and belongs to the day it starts on, so
``fri 22:00-02:00`` is open Friday night into Saturday 02:00. ``24:00`` is the end of the day.

Wall-clock times are what an operator means around DST changes: ``01:00-05:00`` on the night the
clocks go forward is an hour shorter in real time, and the repeated hour when they go back is open
twice. No windows at all means "always open".

Install conditions are what a device reports about itself in its poll (``X-Agent-State``):
``power`` (``external`` or ``battery``), ``network`` (``unmetered``, ``metered`` or ``none``) and
``idle`` (true or false). A campaign may require any of them; a device that has not reported a
condition a campaign requires does not meet it. The agent (agent/conditions.py) evaluates the same
rules on the device; tests/test_campaign_windows.py checks that both sides agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEVICE_TZ = "device"  # read each window in the device's own time zone (its ``tz`` label)
TZ_LABEL = "tz"
MAX_WINDOWS = 14
MAX_WINDOW_TEXT = 64
DAY_MINUTES = 24 * 60

CONDITION_VALUES: dict[str, tuple[Any, ...]] = {
    "power": ("external", "battery"),
    "network": ("unmetered", "metered", "none"),
    "idle": (True, False),
}
# What a campaign may require of each condition (requiring "battery" or a "metered" network makes no sense).
REQUIRABLE: dict[str, tuple[Any, ...]] = {"power": ("external",), "network": ("unmetered",), "idle": (True,)}


class WindowError(ValueError):
    """A window, time zone or condition that does not make sense, with a message for a person."""


@dataclass(frozen=True)
class Window:
    """Days (0 = Monday) and minutes after midnight; ``end <= start`` crosses midnight."""

    days: frozenset[int]
    start: int
    end: int

    def as_dict(self) -> dict[str, Any]:
        return {"days": [DAYS[d] for d in sorted(self.days)], "start": _hhmm(self.start), "end": _hhmm(self.end)}

    def text(self) -> str:
        return f"{_days_text(self.days)} {_hhmm(self.start)}-{_hhmm(self.end)}"

    def crosses_midnight(self) -> bool:
        return self.end <= self.start


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days_text(days: frozenset[int]) -> str:
    if days == frozenset(range(7)):
        return "daily"
    return ",".join(DAYS[d] for d in sorted(days))


_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


def _minutes(text: str, *, end: bool) -> int:
    m = _TIME.match(text.strip())
    if not m:
        raise WindowError(f"{text.strip()!r} is not a time HH:MM.")
    h, mi = int(m.group(1)), int(m.group(2))
    if end and (h, mi) == (24, 0):
        return DAY_MINUTES
    if h > 23 or mi > 59:
        raise WindowError(f"{text.strip()!r} is not a time of day (00:00 to 23:59, or 24:00 as an end).")
    return h * 60 + mi


FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(text: str) -> int:
    t = text.strip().lower()
    for i, (short, full) in enumerate(zip(DAYS, FULL_DAYS, strict=True)):
        if t in (short, full):
            return i
    raise WindowError(f"{text.strip()[:20]!r} is not a day (mon, tue, wed, thu, fri, sat, sun).")


def parse_days(text: str) -> frozenset[int]:
    """``mon-fri``, ``sat,sun``, ``mon,wed-fri``, ``daily`` (or ``*``) → day numbers; ranges may wrap (``fri-mon``)."""
    t = text.strip().lower()
    if t in ("daily", "*", "every", "all"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in t.split(","):
        if not part.strip():
            raise WindowError(f"{text.strip()!r}: an empty day in the list.")
        a, dash, b = part.partition("-")
        if dash:
            first, last = _day(a), _day(b)
            d = first
            while True:
                days.add(d)
                if d == last:
                    break
                d = (d + 1) % 7
        else:
            days.add(_day(a))
    return frozenset(days)


def parse_window(text: str) -> Window:
    """``mon-fri 01:00-05:00`` (days optional: ``01:00-05:00`` is every day) → Window; WindowError if not."""
    if not isinstance(text, str) or not text.strip():
        raise WindowError("A window is 'DAYS HH:MM-HH:MM', e.g. 'mon-fri 01:00-05:00'.")
    if len(text) > MAX_WINDOW_TEXT:
        raise WindowError(f"A window is at most {MAX_WINDOW_TEXT} characters.")
    parts = text.split()
    if len(parts) == 1:
        days, hours = frozenset(range(7)), parts[0]
    elif len(parts) == 2:
        days, hours = parse_days(parts[0]), parts[1]
    else:
        raise WindowError(f"{text.strip()!r} is not 'DAYS HH:MM-HH:MM' (e.g. 'mon-fri 01:00-05:00').")
    start_text, dash, end_text = hours.partition("-")
    if not dash:
        raise WindowError(f"{hours!r} is not a span of hours HH:MM-HH:MM.")
    start, end = _minutes(start_text, end=False), _minutes(end_text, end=True)
    if start == end % DAY_MINUTES and end != DAY_MINUTES:
        raise WindowError(f"{text.strip()!r}: start and end are the same time (use 00:00-24:00 for the whole day).")
    return Window(days, start, end)


def window_from_dict(data: Any) -> Window:
    """A stored window (``Window.as_dict``) back; WindowError if the row was changed into nonsense."""
    if not isinstance(data, Mapping) or set(data) != {"days", "start", "end"}:
        raise WindowError('A window is {"days": [...], "start": "HH:MM", "end": "HH:MM"}.')
    days = data["days"]
    if not isinstance(days, list) or not days or not all(isinstance(d, str) for d in days):
        raise WindowError("A window's days are a non-empty list of day names.")
    if not isinstance(data["start"], str) or not isinstance(data["end"], str):
        raise WindowError("A window's start and end are HH:MM.")
    return parse_window(f"{','.join(days)} {data['start']}-{data['end']}")


def parse_windows(items: Iterable[Any]) -> list[Window]:
    """Texts or stored dicts → windows (at most ``MAX_WINDOWS``), each problem named by its number."""
    items = list(items)
    if len(items) > MAX_WINDOWS:
        raise WindowError(f"At most {MAX_WINDOWS} windows.")
    out: list[Window] = []
    for i, item in enumerate(items, start=1):
        try:
            out.append(parse_window(item) if isinstance(item, str) else window_from_dict(item))
        except WindowError as e:
            raise WindowError(f"Window {i}: {e}") from None
    return out


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """An IANA time zone; WindowError for an unknown or malformed name."""
    if not isinstance(name, str) or not name or len(name) > 64 or not re.fullmatch(r"[A-Za-z0-9_+\-/]+", name):
        raise WindowError(f"{str(name)[:64]!r} is not a time zone name (e.g. Europe/Berlin or UTC).")
    if name.startswith("/") or ".." in name:
        raise WindowError(f"{name!r} is not a time zone name.")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise WindowError(f"{name!r} is not a known time zone (e.g. Europe/Berlin or UTC).") from None


def validate_tz_mode(mode: str) -> str:
    """``device`` or a known IANA zone name."""
    if mode == DEVICE_TZ:
        return mode
    zone(mode)
    return mode


def device_zone(labels: Mapping[str, Any] | None, mode: str = DEVICE_TZ) -> str:
    """The zone a device reads its windows in: the campaign's fixed zone, else its ``tz`` label, else UTC."""
    if mode != DEVICE_TZ:
        return mode
    name = (labels or {}).get(TZ_LABEL)
    if isinstance(name, str):
        try:
            zone(name)
            return name
        except WindowError:
            pass
    return "UTC"


def open_local(windows: Sequence[Window], local: datetime) -> bool:
    """Is one of the windows open at this wall-clock time? (no windows: always open)."""
    if not windows:
        return True
    day, minute = local.weekday(), local.hour * 60 + local.minute
    for w in windows:
        if not w.crosses_midnight():
            if day in w.days and w.start <= minute < w.end:
                return True
        elif (day in w.days and minute >= w.start) or ((day - 1) % 7 in w.days and minute < w.end):
            return True
    return False


def open_at(windows: Sequence[Window], zone_name: str, at: datetime) -> bool:
    """Is a window open at the aware instant ``at`` in ``zone_name``?"""
    if not windows:
        return True
    return open_local(windows, at.astimezone(zone(zone_name)))


Span = tuple[datetime, datetime]


def _local_intervals(windows: Sequence[Window], tz: ZoneInfo, first: date, last: date) -> list[Span]:
    """Open intervals (UTC) of windows starting on local days ``first``..``last``."""
    out: list[tuple[datetime, datetime]] = []
    d = first
    while d <= last:
        midnight = datetime(d.year, d.month, d.day, tzinfo=tz)
        for w in windows:
            if d.weekday() not in w.days:
                continue
            end_day = d + timedelta(days=1) if w.crosses_midnight() or w.end == DAY_MINUTES else d
            end_min = w.end % DAY_MINUTES if end_day != d else w.end
            start = midnight + timedelta(minutes=w.start)
            end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=tz) + timedelta(minutes=end_min)
            # wall-clock arithmetic: convert each end on its own so a DST change inside is honoured
            out.append((start.astimezone(UTC), end.astimezone(UTC)))
        d += timedelta(days=1)
    return out


def open_seconds(windows: Sequence[Window], zones: Iterable[str], start: datetime, end: datetime) -> float:
    """Seconds in ``[start, end)`` during which a window is open in at least one of ``zones``.

    The soak clock of a wave: it runs only while some device of the wave may install. No windows:
    the whole span. No zones (no device yet): UTC.
    """
    if end <= start:
        return 0.0
    if not windows:
        return (end - start).total_seconds()
    spans: list[tuple[datetime, datetime]] = []
    for name in set(zones) or {"UTC"}:
        tz = zone(name)
        first = start.astimezone(tz).date() - timedelta(days=1)
        last = end.astimezone(tz).date()
        spans += [(max(a, start), min(b, end)) for a, b in _local_intervals(windows, tz, first, last)]
    spans = sorted((a, b) for a, b in spans if b > a)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += (cur_b - cur_a).total_seconds()
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += (cur_b - cur_a).total_seconds()
    return total


# ---------------------------------------------------------------- install conditions


def validate_conditions(required: Any) -> dict[str, Any]:
    """What a campaign requires, checked: ``{"power": "external", "network": "unmetered", "idle": true}``."""
    if required is None:
        return {}
    if not isinstance(required, Mapping):
        raise WindowError("Install conditions are an object, e.g. {'power': 'external', 'network': 'unmetered'}.")
    out: dict[str, Any] = {}
    for key, value in required.items():
        if key not in REQUIRABLE:
            raise WindowError(f"Unknown install condition {str(key)[:40]!r} (known: {', '.join(REQUIRABLE)}).")
        if value is None or (value is False and key == "idle"):
            continue
        if value not in REQUIRABLE[key] or (key == "idle" and value is not True):
            allowed = " or ".join(repr(v) for v in REQUIRABLE[key])
            raise WindowError(f"Install condition {key} can only require {allowed}, not {str(value)[:40]!r}.")
        out[key] = value
    return out


def parse_requirement_text(text: str) -> dict[str, Any]:
    """The CLI's and the form's words: ``power``, ``unmetered``, ``idle`` (comma separated) → conditions."""
    words = {"power": ("power", "external"), "unmetered": ("network", "unmetered"), "idle": ("idle", True)}
    out: dict[str, Any] = {}
    for word in (w.strip().lower() for w in (text or "").replace(" ", ",").split(",")):
        if not word:
            continue
        if word not in words:
            raise WindowError(f"{word[:40]!r} is not an install condition (power, unmetered, idle).")
        key, value = words[word]
        out[key] = value
    return out


def valid_reported(conditions: Any) -> dict[str, Any]:
    """What a device may say about itself (its poll's ``conditions``); WindowError if anything else."""
    if not isinstance(conditions, Mapping) or len(conditions) > len(CONDITION_VALUES):
        raise WindowError("conditions is an object with power, network and idle")
    out: dict[str, Any] = {}
    for key, value in conditions.items():
        allowed = CONDITION_VALUES.get(key) if isinstance(key, str) else None
        if allowed is None:
            raise WindowError(f"conditions: unknown key {str(key)[:40]!r} (known: power, network, idle)")
        if isinstance(value, bool) != (key == "idle") or value not in allowed:
            raise WindowError(f"conditions.{key} must be one of {', '.join(str(v).lower() for v in allowed)}")
        out[key] = value
    return out


def unmet(required: Mapping[str, Any], reported: Mapping[str, Any] | None) -> list[str]:
    """Required conditions the device does not meet (not reported counts as not met); empty: it may install."""
    reported = reported or {}
    return [key for key, value in required.items() if reported.get(key) != value]


def conditions_text(required: Mapping[str, Any]) -> str:
    """For a person: "on external power, unmetered network, idle"."""
    parts = []
    if required.get("power") == "external":
        parts.append("on external power")
    if required.get("network") == "unmetered":
        parts.append("on an unmetered network")
    if required.get("idle") is True:
        parts.append("idle")
    return ", ".join(parts)
