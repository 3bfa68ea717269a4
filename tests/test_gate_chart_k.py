"""The campaign page's chart data (``/campaigns/<id>/series.json`` ``gates``, built from the
``rollout.GateCheck`` rows the gate job records) hides every number from fewer than
``EDGEFLEET_MIN_COHORT`` (k) reporting devices on a side, as the HTML pages do; from k on, it shows them.

Telemetry rows are written straight into PostgreSQL (``tests/test_campaign_trust.py``), so each test
controls exactly how many devices report on each side.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from rollout import evaluation
from rollout.models import Campaign, GateCheck
from tests.test_campaign_trust import make_fleet, report_sides, row

pytestmark = pytest.mark.django_db

SIDES = ("canary", "control", "observed")


def series(client: Any, c: Campaign) -> dict[str, Any]:
    resp = client.get(f"/campaigns/{c.pk}/series.json")
    assert resp.status_code == 200
    return resp.json()


def numbers_in(doc: dict[str, Any]) -> dict[str, list[Any]]:
    """Every gate value the chart could draw: the series' points and the last check's figures."""
    found: dict[str, list[Any]] = {}
    for g in doc["gates"]:
        values = [v for side in SIDES for v in g["series"][side] if v is not None]
        last = g["last"] or {}
        values += [last[side] for side in SIDES if last.get(side) is not None]
        if values:
            found[g["name"]] = values
    return found


def test_one_canary_device_puts_no_number_in_the_chart_data_only_not_enough_data(viewer_client, settings) -> None:
    assert settings.EDGEFLEET_MIN_COHORT == 20
    fleet = make_fleet()
    report_sides(fleet, canary=1, control=30, canary_errors=370.5)
    assert evaluation.evaluate_campaign(fleet["c"].pk) == "hold"
    doc = series(viewer_client, fleet["c"])
    assert doc["checks"] == 1
    assert numbers_in(doc) == {}
    error = next(g for g in doc["gates"] if g["name"] == "error_rate")
    assert error["series"]["verdict"] == ["not_enough_data"] and error["last"]["verdict"] == "not_enough_data"
    assert error["last"]["n_canary"] == 1 and error["last"]["n_control"] == 30
    assert len(error["series"]["x"]) == 1, "the check is still a point in time, just without values"
    raw = json.dumps(doc)
    assert "0.3705" not in raw and "4.85" not in raw
    stored = json.dumps([c.gates for c in GateCheck.objects.filter(campaign=fleet["c"])])
    assert "0.3705" not in stored and "4.85" not in stored


def test_one_device_short_of_k_still_hides_a_verdict_that_was_computed(viewer_client) -> None:
    """19 canary devices: past the statistical floor, so the gate judges, but below k: no numbers."""
    fleet = make_fleet()
    report_sides(fleet, canary=19, control=30, canary_errors=5.0)
    assert evaluation.evaluate_campaign(fleet["c"].pk) == "complete", "judged (and passed) on 19 devices"
    doc = series(viewer_client, fleet["c"])
    assert numbers_in(doc) == {}
    error = next(g for g in doc["gates"] if g["name"] == "error_rate")
    assert error["last"]["verdict"] == "pass" and error["last"]["n_canary"] == 19


def test_at_exactly_k_devices_a_side_the_chart_data_carries_the_numbers(viewer_client) -> None:
    fleet = make_fleet()
    report_sides(fleet, canary=20, control=20, canary_errors=5.0)
    assert evaluation.evaluate_campaign(fleet["c"].pk) == "complete"
    doc = series(viewer_client, fleet["c"])
    error = next(g for g in doc["gates"] if g["name"] == "error_rate")
    assert error["series"]["canary"] == [pytest.approx(0.005)]
    assert error["series"]["control"] == [pytest.approx(0.005)]
    assert error["last"]["n_canary"] == 20 and error["last"]["n_control"] == 20
    latency = next(g for g in doc["gates"] if g["name"] == "latency_p95")
    assert latency["series"]["canary"][0] is not None and latency["series"]["control"][0] is not None


def test_checks_recorded_under_a_smaller_k_are_hidden_once_k_is_raised(viewer_client, settings) -> None:
    """A check stored while k was 5 carries numbers from 10 devices; with k back at 20 the chart hides
    them, as the pages hide gate reports stored under older rules."""
    settings.EDGEFLEET_MIN_COHORT = 5
    fleet = make_fleet()
    report_sides(fleet, canary=10, control=10, canary_errors=5.0)
    for d in fleet["devices"][20:30]:
        row(d, fleet["v2"], 5.0)
    evaluation.evaluate_campaign(fleet["c"].pk)
    assert numbers_in(series(viewer_client, fleet["c"])), "with k = 5 the numbers of 10+ devices are shown"
    settings.EDGEFLEET_MIN_COHORT = 20
    assert numbers_in(series(viewer_client, Campaign.objects.get(pk=fleet["c"].pk))) == {}
