"""When the agent may install a campaign's version: its maintenance windows and install conditions.

The manifest entry of a campaign that has them carries ``install``: ``{"windows": [{"days": ["mon",
...], "start": "01:00", "end": "05:00"}], "tz": "Europe/Berlin", "conditions": {"power": "external",
"network": "unmetered", "idle": true}}`` (docs/protocol.md). The rule is the server's
(rollout/windows.py: half-open spans of wall-clock time, a span whose end is not after its start
crosses midnight and belongs to the day it starts on); this copy keeps the agent free of the server's
code, and tests/test_campaign_windows.py checks that both agree. A window the agent cannot read keeps
the version out (fail closed: the version it runs keeps running); an entry without ``install`` (a
release, a rollback) installs at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
KNOWN = {"power": ("external", "battery"), "network": ("unmetered", "metered", "none"), "idle": (True, False)}


def _minutes(text: Any, end: bool) -> int | None:
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":" or not (text[:2] + text[3:]).isdigit():
        return None
    h, m = int(text[:2]), int(text[3:])
    if end and (h, m) == (24, 0):
        return 1440
    return h * 60 + m if h < 24 and m < 60 else None


def _zone(name: Any) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except Exception:  # unknown here (an old tz database) or malformed: the server's fallback, UTC
        return ZoneInfo("UTC")


def window_open(windows: Sequence[Any], zone_name: str, now: float) -> bool:
    """Is one of ``windows`` open at epoch second ``now`` in ``zone_name``? No windows: always."""
    if not windows:
        return True
    local = datetime.fromtimestamp(now, UTC).astimezone(_zone(zone_name))
    day, minute = local.weekday(), local.hour * 60 + local.minute
    for w in windows:
        if not isinstance(w, Mapping) or not isinstance(w.get("days"), list):
            continue
        days = {DAYS.index(d) for d in w["days"] if d in DAYS}
        start, end = _minutes(w.get("start"), False), _minutes(w.get("end"), True)
        if start is None or end is None:
            continue
        if end > start:
            if day in days and start <= minute < end:
                return True
        elif (day in days and minute >= start) or ((day - 1) % 7 in days and minute < end):
            return True
    return False


def clean(conditions: Any) -> dict[str, Any]:
    """The known conditions of what the host said (anything else is dropped, never sent)."""
    if not isinstance(conditions, Mapping):
        return {}
    out = {}
    for key, allowed in KNOWN.items():
        value = conditions.get(key)
        if value is not None and isinstance(value, bool) == (key == "idle") and value in allowed:
            out[key] = value
    return out


def waiting_for(install: Any, conditions: Mapping[str, Any], now: float) -> list[str]:
    """Why the entry may not install now: ``["window"]``, ``["power", "network"]``…; empty: go ahead."""
    if not install:
        return []
    if not isinstance(install, Mapping):
        return ["window"]
    reasons = []
    if not window_open(install.get("windows") or [], install.get("tz") or "UTC", now):
        reasons.append("window")
    required = install.get("conditions") or {}
    if isinstance(required, Mapping):
        reasons += [k for k, v in required.items() if conditions.get(k) != v]
    return reasons
