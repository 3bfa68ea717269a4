"""Maintenance windows and install conditions: the pure math (rollout/windows.py) and the agent's copy.

No database: these are the rules both the server (soak clock, counts) and the agent (when to install)
apply, so they are pinned at their edges: the boundary minutes, a window crossing midnight, DST
changes in the device's zone, and nonsense input.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from agent import conditions as agent_conditions
from rollout import windows as W

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def test_parse_days_hours_and_text_round_trip() -> None:
    w = W.parse_window("mon-fri 01:00-05:00")
    assert w == W.Window(frozenset(range(5)), 60, 300)
    assert w.as_dict() == {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "01:00", "end": "05:00"}
    assert W.window_from_dict(w.as_dict()) == w
    assert W.parse_window("01:00-05:00").days == frozenset(range(7))
    assert W.parse_window("daily 00:00-24:00") == W.Window(frozenset(range(7)), 0, 1440)
    assert W.parse_days("fri-mon") == frozenset({4, 5, 6, 0})  # a range may wrap over the weekend
    assert W.parse_days("Sat,sunday") == frozenset({5, 6})
    assert W.parse_window("sat,sun 22:00-02:00").text() == "sat,sun 22:00-02:00"


@pytest.mark.parametrize(
    "text",
    ["", "   ", "mon-fri", "mon-fri 01:00", "mon-fri 1-5", "funday 01:00-05:00", "mon-fri 25:00-26:00",
     "mon 01:60-02:00", "mon 05:00-05:00", "mon 00:00-00:00", "mon, tue 01:00-02:00", "mon,,tue 01:00-02:00",
     "mon 24:00-02:00", "x" * 100, "mon tue wed 01:00-02:00"],
)  # fmt: skip
def test_bad_windows_are_refused_with_a_message(text: str) -> None:
    with pytest.raises(W.WindowError) as e:
        W.parse_window(text)
    assert str(e.value)


def test_too_many_windows_and_tampered_rows_are_refused() -> None:
    with pytest.raises(W.WindowError, match="At most"):
        W.parse_windows(["01:00-02:00"] * (W.MAX_WINDOWS + 1))
    with pytest.raises(W.WindowError, match="Window 2"):
        W.parse_windows(["01:00-02:00", {"days": [], "start": "01:00", "end": "02:00"}])
    with pytest.raises(W.WindowError):
        W.window_from_dict({"days": ["mon"], "start": 1, "end": "02:00"})
    assert W.parse_windows([]) == []


def test_boundaries_open_at_start_closed_at_end() -> None:
    ws = [W.parse_window("mon-fri 01:00-05:00")]
    monday = datetime(2026, 12, 7)  # a Monday
    assert not W.open_local(ws, monday.replace(hour=0, minute=59, second=59))
    assert W.open_local(ws, monday.replace(hour=1))
    assert W.open_local(ws, monday.replace(hour=4, minute=59, second=59))
    assert not W.open_local(ws, monday.replace(hour=5))
    assert not W.open_local(ws, monday + timedelta(days=5, hours=2))  # Saturday
    assert W.open_local([], monday)  # no windows: always open


def test_a_window_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    ws = [W.parse_window("fri 22:00-02:00")]
    friday = datetime(2026, 12, 11)
    assert not W.open_local(ws, friday.replace(hour=21, minute=59))
    assert W.open_local(ws, friday.replace(hour=22))
    assert W.open_local(ws, friday + timedelta(days=1, hours=1, minutes=59))  # Saturday 01:59
    assert not W.open_local(ws, friday + timedelta(days=1, hours=2))  # Saturday 02:00
    assert not W.open_local(ws, friday.replace(hour=1))  # Friday 01:00 belongs to Thursday's night
    whole = [W.parse_window("sun 00:00-24:00")]
    assert W.open_local(whole, datetime(2026, 12, 13, 23, 59)) and not W.open_local(whole, datetime(2026, 12, 14))


def test_device_zone_from_label_or_utc() -> None:
    assert W.device_zone({"tz": "Europe/Berlin"}) == "Europe/Berlin"
    assert W.device_zone({"tz": "Mars/Olympus"}) == "UTC"
    assert W.device_zone({"tz": "../../etc/passwd"}) == "UTC"
    assert W.device_zone({}) == "UTC"
    assert W.device_zone({"tz": "Europe/Berlin"}, "Asia/Tokyo") == "Asia/Tokyo"
    with pytest.raises(W.WindowError):
        W.validate_tz_mode("Nowhere/City")
    assert W.validate_tz_mode("device") == "device"


def test_open_at_reads_the_window_in_the_device_zone() -> None:
    ws = [W.parse_window("mon-fri 01:00-05:00")]
    # 00:30 UTC on a Monday in winter is 01:30 in Berlin: open there, closed in UTC
    at = utc(2026, 12, 7, 0, 30)
    assert W.open_at(ws, "Europe/Berlin", at) and not W.open_at(ws, "UTC", at)


def test_dst_spring_forward_shortens_the_night_and_fall_back_repeats_an_hour() -> None:
    ws = [W.parse_window("daily 01:00-05:00")]
    # 2027-03-28: Berlin goes from 02:00 CET to 03:00 CEST: the window is 3 real hours long
    night = W.open_seconds(ws, ["Europe/Berlin"], utc(2027, 3, 27, 12), utc(2027, 3, 28, 12))
    assert night == 3 * 3600
    # 2026-10-25: 03:00 CEST goes back to 02:00 CET: the window is 5 real hours long
    night = W.open_seconds(ws, ["Europe/Berlin"], utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))
    assert night == 5 * 3600
    # both passes through 02:30 local are open
    assert W.open_at(ws, "Europe/Berlin", utc(2026, 10, 25, 0, 30))
    assert W.open_at(ws, "Europe/Berlin", utc(2026, 10, 25, 1, 30))


def test_open_seconds_unions_zones_and_clips_to_the_span() -> None:
    ws = [W.parse_window("daily 01:00-02:00")]
    day = (utc(2026, 12, 7), utc(2026, 12, 8))
    assert W.open_seconds(ws, ["UTC"], *day) == 3600
    assert W.open_seconds(ws, ["UTC", "Europe/Berlin"], *day) == 7200  # 00:00-01:00 and 01:00-02:00 UTC
    assert W.open_seconds(ws, ["UTC", "Europe/London"], *day) == 3600  # the same hour in winter: counted once
    assert W.open_seconds(ws, [], *day) == 3600  # no zones: UTC
    assert W.open_seconds(ws, ["UTC"], utc(2026, 12, 7, 1, 30), utc(2026, 12, 7, 3)) == 1800
    assert W.open_seconds(ws, ["UTC"], utc(2026, 12, 7, 2), utc(2026, 12, 7, 2)) == 0  # empty span
    assert W.open_seconds([], ["UTC"], *day) == 86400  # no windows: all of it


def test_conditions_validation_and_matching() -> None:
    assert W.validate_conditions({"power": "external", "network": "unmetered", "idle": True}) == {
        "power": "external", "network": "unmetered", "idle": True}  # fmt: skip
    assert W.validate_conditions({"idle": False, "power": None}) == {}
    for bad in ({"power": "battery"}, {"network": "metered"}, {"idle": 1}, {"wifi": True}, ["power"]):
        with pytest.raises(W.WindowError):
            W.validate_conditions(bad)
    assert W.parse_requirement_text("power, unmetered") == {"power": "external", "network": "unmetered"}
    with pytest.raises(W.WindowError):
        W.parse_requirement_text("power,solar")
    req = {"power": "external", "network": "unmetered"}
    assert W.unmet(req, {"power": "external", "network": "unmetered", "idle": False}) == []
    assert W.unmet(req, {"power": "battery", "network": "unmetered"}) == ["power"]
    assert W.unmet(req, None) == ["power", "network"]  # not reported: not met
    assert W.unmet({}, None) == []


@pytest.mark.parametrize(
    "bad",
    [{"power": True}, {"idle": "yes"}, {"network": "5g"}, {"power": "external", "x": 1}, "on", {"idle": 1},
     {f"k{i}": 1 for i in range(10)}],
)  # fmt: skip
def test_reported_conditions_are_hostile_input(bad: object) -> None:
    with pytest.raises(W.WindowError):
        W.valid_reported(bad)


def test_the_agent_and_the_server_agree_on_every_quarter_hour_of_a_dst_week() -> None:
    """The agent carries its own copy of the rule (it imports nothing of the server)."""
    texts = ["mon-fri 01:00-05:00", "sat,sun 22:00-02:30", "wed 00:00-24:00"]
    server = W.parse_windows(texts)
    wire = [w.as_dict() for w in server]
    start = utc(2027, 3, 24)  # the week of Berlin's spring-forward change
    for zone_name, step in itertools.product(["Europe/Berlin", "UTC", "America/New_York"], range(0, 7 * 96)):
        at = start + timedelta(minutes=15 * step)
        assert agent_conditions.window_open(wire, zone_name, at.timestamp()) == W.open_at(server, zone_name, at), (
            zone_name,
            at,
        )
    assert agent_conditions.window_open([], "UTC", start.timestamp())
    assert agent_conditions.window_open([{"days": ["mon"], "start": "bad"}], "UTC", start.timestamp()) is False
