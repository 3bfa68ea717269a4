"""At the moment of a decision every part of the campaign page agrees with the gate that decided.

Telemetry rows are written straight into PostgreSQL (``test_campaign_trust``'s helpers), so each test
knows exactly what the gate judged; the gate job runs for real (``evaluate_campaign``).
"""

import re
import uuid
from pathlib import Path

import pytest
from django.utils import timezone
from django.utils.html import escape

from fleet.models import DeviceEvent
from rollout import evaluation, lifecycle
from rollout import gates as gate_logic
from rollout.models import Campaign, GateCheck
from telemetry import services as telemetry
from telemetry.models import Alert, DriftResult
from tests import test_campaign_factories as f
from tests.test_campaign_trust import row

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
TWO_WAVES = [{"percent": 50, "min_soak_minutes": 0, "min_devices": 5}, {"percent": 100, "min_soak_minutes": 0}]
GATES = {"error_rate": 0.02, "latency_p95": 1.25, "latency_p50": 1.25}


def story_fleet() -> dict:
    m = f.model("fraud")
    v1, v2 = f.version(m, "v1"), f.version(m, "v2")
    f.release(v1)
    devices = [f.device({"region": "eu"}, {"fraud": "v1"}) for _ in range(60)]
    c = lifecycle.create_campaign(name="v2 to everyone", version=v2, cohort=None, waves=TWO_WAVES, gates=GATES)
    lifecycle.start(c.pk)
    return {"c": c, "v1": v1, "v2": v2, "devices": devices}


def report(fleet: dict, canary_errors: float) -> None:
    for d in fleet["devices"][:25]:
        row(d, fleet["v2"], canary_errors)
    for d in fleet["devices"][25:50]:
        row(d, fleet["v1"], 5.0)


def local_clock(at) -> str:
    return timezone.localtime(at).strftime("%H:%M:%S")


def rolled_back(fleet: dict) -> Campaign:
    """Wave 1 passes, then v2 fails its error gate in wave 2 and the gate job rolls back."""
    report(fleet, canary_errors=5.0)
    assert evaluation.evaluate_campaign(fleet["c"].pk) == "advance"
    report(fleet, canary_errors=300.0)
    assert evaluation.evaluate_campaign(fleet["c"].pk) == "rollback"
    return Campaign.objects.select_related("version", "previous_version", "model").get(pk=fleet["c"].pk)


def test_the_chart_shows_what_the_gate_judged_when_it_judged_it(viewer_client) -> None:
    fleet = story_fleet()
    c = rolled_back(fleet)
    decision = c.decisions.get(kind="rollback")
    judged = {g["name"]: g for g in decision.numbers["gates"]}
    assert GateCheck.objects.filter(campaign=c).count() == 2, "one point per evaluation"

    data = viewer_client.get(f"/campaigns/{c.pk}/series.json").json()
    by_name = {g["name"]: g for g in data["gates"]}
    error = by_name["error_rate"]
    # The chart's last point is the figure the rollback acted on (and the gate table shows).
    assert error["series"]["canary"][-1] == pytest.approx(judged["error_rate"]["canary"])
    assert error["series"]["control"][-1] == pytest.approx(judged["error_rate"]["control"])
    assert error["last"]["observed"] == pytest.approx(judged["error_rate"]["observed"])
    assert error["last"]["verdict"] == "fail" and error["series"]["verdict"] == ["pass", "fail"]
    assert judged["error_rate"]["canary"] > 0.1, "the gate saw the regression"
    # The decisions are marked on the same time axis, in the page's time zone.
    marks = [(d["kind"], d["at"][11:19]) for d in data["decisions"]]
    assert ("rollback", local_clock(decision.at)) in marks and marks[0][0] == "start"
    assert error["series"]["x"][-1] <= next(d["at"] for d in data["decisions"] if d["kind"] == "rollback")
    assert set(by_name) == {"error_rate", "latency_p95", "latency_p50"}
    assert by_name["latency_p50"]["meaning"] == gate_logic.meaning("latency_p50")


def test_no_point_is_added_after_the_decision(viewer_client) -> None:
    fleet = story_fleet()
    c = rolled_back(fleet)
    # A beat that raced the rollback and judged afterwards adds nothing to the chart.
    assert evaluation.evaluate_campaign(c.pk) == "skip"
    numbers = {"verdict": "pass", "gates": []}
    from rollout import gate_checks

    assert gate_checks.record(c.pk, c.wave_index, timezone.now(), numbers, {}, 20) is None
    assert GateCheck.objects.filter(campaign=c).count() == 2


def test_after_the_rollback_the_cards_and_the_badge_say_what_happened(viewer_client) -> None:
    fleet = story_fleet()
    c = rolled_back(fleet)
    # Ten devices installed v2 during the campaign; seven are back on v1, three still on v2.
    took = fleet["devices"][:10]
    for i, d in enumerate(took):
        DeviceEvent.objects.create(
            id=uuid.uuid4(), device=d, kind="installed", at=timezone.now(), model_name="fraud", version_label="v2"
        )
        d.installed = {"fraud": "v1" if i < 7 else "v2"}
        d.save(update_fields=["installed"])
    # A device that installed v2 before this campaign is not one it sent back.
    old = DeviceEvent.objects.create(
        id=uuid.uuid4(), device=fleet["devices"][50], kind="installed", at=timezone.now(), model_name="fraud",
        version_label="v2",
    )  # fmt: skip
    DeviceEvent.objects.filter(pk=old.pk).update(received_at=c.started_at - timezone.timedelta(minutes=1))

    live = viewer_client.get(f"/campaigns/{c.pk}/live/").content.decode()
    text = re.sub(r"<[^>]+>", " ", live)
    text = " ".join(text.split())
    assert f"Rolled Back at {local_clock(c.decisions.get(kind='rollback').at)}" in text
    assert f"Rolled Back since {local_clock(c.wave_started_at)}" not in text
    assert "Devices returned to v1 7 of 10" in text
    assert "Still on v2 3" in text
    assert "Targeted now" not in text


def test_the_drift_gate_judges_and_shows_canary_minus_control() -> None:
    drift = {"canary": 0.4618, "control": 0.30, "effect": 0.1618, "verdict": "pass", "n_canary": 30, "n_control": 30}
    comparison = {"drift": drift}
    outcome = gate_logic.evaluate({"drift": 0.25}, comparison)
    assert outcome.rows[0].observed == pytest.approx(0.1618) and outcome.rows[0].verdict == "pass"
    # A row stored before (observed = the canary's level) reads as it was judged.
    stored = [{"name": "drift", "threshold": 0.25, "observed": 0.4618, "canary": 0.4618, "control": 0.30,
               "verdict": "pass", "n_canary": 30, "n_control": 30}]  # fmt: skip
    assert gate_logic.public_rows(stored, 20)[0]["observed"] == pytest.approx(0.1618)


def test_each_gate_means_one_thing_in_the_form_the_table_and_the_docs(operator_client) -> None:
    fleet = story_fleet()
    Campaign.objects.filter(pk=fleet["c"].pk).update(waves=[{"percent": 100, "min_soak_minutes": 30}])
    report(fleet, canary_errors=5.0)
    assert evaluation.evaluate_campaign(fleet["c"].pk) == "hold"  # soaking: the table shows the numbers
    form = operator_client.get("/campaigns/new/").content.decode()
    table = operator_client.get(f"/campaigns/{fleet['c'].pk}/live/").content.decode()
    docs = " ".join((ROOT / "docs" / "rollout.md").read_text().split())
    for name in gate_logic.GATES:
        meaning = gate_logic.meaning(name)
        assert escape(meaning) in form, name
        assert f"`{name}`: {meaning}" in docs, name
    for name in GATES:
        assert escape(gate_logic.meaning(name)) in table, name
    assert "highest drift score of the canary's inputs against the version's reference" not in form + table + docs


def test_a_rollback_resolves_its_versions_drift_alerts_and_late_windows_open_none(
    django_capture_on_commit_callbacks,
) -> None:
    fleet = story_fleet()
    now = timezone.now()
    v1_alert = Alert.objects.create(
        kind="drift", version=fleet["v1"], cohort="apac", feature="input[0]", opened_at=now, updated_at=now
    )
    v2_alert = Alert.objects.create(
        kind="drift", version=fleet["v2"], cohort="apac", feature="input[0]", opened_at=now, updated_at=now
    )
    window_before = timezone.now() - timezone.timedelta(minutes=1)
    with django_capture_on_commit_callbacks(execute=True):
        c = rolled_back(fleet)
    v2_alert.refresh_from_db()
    v1_alert.refresh_from_db()
    assert v2_alert.state == "resolved" and v2_alert.resolved_by == "rollback of “v2 to everyone”"
    assert v1_alert.state == "open", "v1 still runs: its drift is still news"
    assert Alert.objects.get(kind="regression", version=fleet["v2"]).state == "open", "the finding stays"

    # A window from before the rollback, rolled up after it, opens no new alert...
    drifted = dict(psi=2.5, js=0.5, w1=1.0, ks=0.6, threshold=0.1, drifted=True, n_devices=28, n_reports=28)
    where = dict(version=fleet["v2"], cohort="apac", feature="input[0]")
    DriftResult.objects.create(window_start=window_before, **where, **drifted)
    telemetry.update_drift_alerts(fleet["v2"].pk, "apac")
    assert not Alert.objects.filter(version=fleet["v2"], kind="drift", state="open").exists()
    # ...one after it (a device still on v2, or v2 out again) does.
    later = c.finished_at + timezone.timedelta(seconds=1)
    DriftResult.objects.create(window_start=later, **where, **drifted)
    telemetry.update_drift_alerts(fleet["v2"].pk, "apac")
    assert Alert.objects.filter(version=fleet["v2"], kind="drift", state="open").count() == 1


def test_a_paused_campaign_says_since_when_it_is_paused(viewer_client) -> None:
    fleet = story_fleet()
    lifecycle.pause(fleet["c"].pk, reason="looking into it")
    c = Campaign.objects.get(pk=fleet["c"].pk)
    live = " ".join(re.sub(r"<[^>]+>", " ", viewer_client.get(f"/campaigns/{c.pk}/live/").content.decode()).split())
    assert f"Paused at {local_clock(c.decisions.get(kind='pause').at)}" in live
    assert "Reached when paused" in live and "Targeted now" not in live
