"""Campaign services on real PostgreSQL: creation and refusals, dry runs, transitions and the gate job."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditEntry
from ota.models import ModelVersion
from rollout import evaluation, lifecycle, placement, targeting
from rollout.lifecycle import CampaignError
from rollout.models import Campaign, CampaignDecision, Release
from rollout.progress import install_progress
from tests import test_campaign_factories as f

pytestmark = pytest.mark.django_db

GATES = {"error_rate": 0.01, "latency_p95": 1.25}


@pytest.fixture
def fleet() -> dict:
    m = f.model()
    v1, v2 = f.version(m, "v1"), f.version(m, "v2")
    f.release(v1)
    eu = f.cohort("eu", "region=eu")
    devices = [f.device({"region": "eu", "hw": "rpi4"}, {"fraud": "v1"}) for _ in range(40)]
    devices += [f.device({"region": "us", "hw": "jetson"}, {"fraud": "v1"}) for _ in range(10)]
    return {"model": m, "v1": v1, "v2": v2, "eu": eu, "devices": devices}


def make(fleet: dict, **kw) -> Campaign:
    args = {"name": "v2 to eu", "version": fleet["v2"], "cohort": fleet["eu"], "waves": f.WAVES, "gates": GATES}
    return lifecycle.create_campaign(**{**args, **kw})


# --- create -------------------------------------------------------------------------------------


def test_create_takes_previous_version_from_the_release_and_records_it(fleet, operator) -> None:
    c = make(fleet, user=operator)
    assert c.state == Campaign.State.DRAFT and c.previous_version == fleet["v1"]
    assert c.waves[0] == {"percent": 10.0, "min_soak_minutes": 0.0, "min_devices": 0}
    assert c.decisions.get().kind == "create"
    entry = AuditEntry.objects.get(action="campaign.create")
    assert entry.actor_label == "olivia" and entry.details["campaign"] == c.pk


def test_cohort_release_wins_over_fleet_release(fleet) -> None:
    v0 = f.version(fleet["model"], "v0")
    f.release(v0, fleet["eu"])
    assert make(fleet).previous_version == v0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": " "}, "name"),
        ({"waves": [{"percent": 50}]}, "100%"),
        ({"gates": {"speed": 1}}, "Unknown gate"),
        ({"on_failure": "explode"}, "pause or rollback"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_made(fleet, kw, message) -> None:
    with pytest.raises(CampaignError, match=message):
        make(fleet, **kw)
    assert not Campaign.objects.exists() and not AuditEntry.objects.exists()


def test_unstaged_version_is_refused(fleet) -> None:
    v3 = f.version(fleet["model"], "v3", status=ModelVersion.Status.VALIDATING)
    with pytest.raises(CampaignError, match="not staged"):
        make(fleet, version=v3)
    rejected = f.version(fleet["model"], "v4", status=ModelVersion.Status.REJECTED)
    with pytest.raises(CampaignError, match="not staged"):
        make(fleet, version=rejected)


def test_rolling_out_what_devices_already_run_is_refused(fleet) -> None:
    with pytest.raises(CampaignError, match="already what these devices run"):
        make(fleet, version=fleet["v1"])


def test_overlapping_active_campaign_is_refused_with_the_reason(fleet) -> None:
    first = make(fleet)
    lifecycle.start(first.pk)
    v3 = f.version(fleet["model"], "v3")
    rpi = f.cohort("rpi", "hw=rpi4")  # every eu device is an rpi4: overlap through shared devices
    with pytest.raises(CampaignError, match="one active campaign per model and device") as err:
        make(fleet, version=v3, cohort=rpi, name="other")
    assert "v2 to eu" in str(err.value) and "device" in str(err.value)
    with pytest.raises(CampaignError, match="one active campaign"):
        make(fleet, version=v3, cohort=None, name="everyone")
    # a disjoint cohort is fine, and so is another model
    us = f.cohort("us", "region=us")
    assert make(fleet, version=v3, cohort=us, name="us").state == Campaign.State.DRAFT
    other = f.model("vision")
    assert make(fleet, version=f.version(other, "a"), previous_version=None, name="vision").pk


def test_two_drafts_may_overlap_but_only_one_can_start(fleet) -> None:
    a = make(fleet)
    b = make(fleet, version=f.version(fleet["model"], "v3"), name="b")
    lifecycle.start(a.pk)
    with pytest.raises(CampaignError, match="one active campaign"):
        lifecycle.start(b.pk)
    assert Campaign.objects.get(pk=b.pk).state == Campaign.State.DRAFT


# --- dry run ------------------------------------------------------------------------------------


def test_dry_run_counts_waves_by_label_and_hardware_and_exclusions(fleet) -> None:
    f.device({"region": "eu"}, ram_mb=64)  # too little RAM
    f.device({"region": "eu"}, ort_version="1.10.0")  # opset 17 needs ort >= 1.12
    f.device({"region": "eu"}, ort_version="1.10.0")
    c = make(fleet)
    dr = targeting.dry_run(version=c.version, cohort=c.cohort, waves=c.waves, campaign_id=c.pk)
    assert dr.total == 43 and dr.compatible == 40
    assert dr.excluded == {"ram": 1, "ort_version": 2}
    counts = [w["devices"] for w in dr.waves]
    assert counts == sorted(counts) and counts[-1] == 40
    expected_first = sum(placement.bucket(d.pk, c.pk) < placement.coverage(c.waves, 0) for d in fleet["devices"][:40])
    assert counts[0] == expected_first
    last = dr.waves[-1]
    assert last["by_label"]["region=eu"] == 40 and last["by_label"]["hw=rpi4"] == 40
    assert sum(last["by_hardware"].values()) == 40 and last["by_variant"] == {"fp32": 40}


def test_dry_run_gives_small_devices_the_int8_build(fleet) -> None:
    v3 = f.version(fleet["model"], "v3", int8_size=50_000)
    f.device({"region": "eu"}, ram_mb=512)
    dr = targeting.dry_run(version=v3, cohort=fleet["eu"], waves=f.WAVES, campaign_id=7)
    assert dr.waves[-1]["by_variant"] == {"fp32": 40, "int8": 1}


def test_required_provider_excludes_devices_without_it(fleet) -> None:
    f.device({"region": "eu"}, providers=["CPUExecutionProvider", "CUDAExecutionProvider"])
    dr = targeting.dry_run(
        version=fleet["v2"],
        cohort=fleet["eu"],
        waves=f.WAVES,
        campaign_id=1,
        requirements={"provider": "CUDAExecutionProvider"},
    )
    assert dr.compatible == 1 and dr.excluded == {"provider": 40}


def test_reserved_id_makes_the_preview_exact(fleet) -> None:
    reserved = lifecycle.reserve_campaign_id()
    preview = targeting.dry_run(version=fleet["v2"], cohort=fleet["eu"], waves=f.WAVES, campaign_id=reserved)
    c = make(fleet, reserved_id=reserved)
    assert c.pk == reserved
    again = targeting.dry_run(version=c.version, cohort=c.cohort, waves=c.waves, campaign_id=c.pk)
    assert again.waves == preview.waves
    # an id nobody reserved is ignored rather than trusted
    c2 = make(fleet, cohort=f.cohort("us", "region=us"), reserved_id=10**9, name="x")
    assert c2.pk != 10**9


# --- transitions --------------------------------------------------------------------------------


def test_start_pause_resume_advance_rollback_are_recorded_and_audited(fleet, operator) -> None:
    c = make(fleet)
    lifecycle.start(c.pk, user=operator)
    c.refresh_from_db()
    assert c.state == "running" and c.wave_index == 0 and c.started_at and c.exclusions == {}
    lifecycle.pause(c.pk, user=operator, reason="looking at it")
    lifecycle.resume(c.pk, user=operator)
    lifecycle.advance(c.pk, user=operator, reason="numbers look fine")
    c.refresh_from_db()
    assert c.wave_index == 1 and c.state == "running"
    lifecycle.rollback(c.pk, user=operator, reason="customer complaint")
    c.refresh_from_db()
    assert c.state == "rolled_back" and c.finished_at
    kinds = list(c.decisions.order_by("at", "id").values_list("kind", flat=True))
    assert kinds == ["create", "start", "pause", "resume", "advance", "rollback"]
    assert c.decisions.get(kind="advance").reason == "numbers look fine"
    assert c.decisions.get(kind="advance").actor_label == "olivia"
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"campaign.start", "campaign.pause", "campaign.resume", "campaign.advance", "campaign.rollback"} <= actions


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("draft", "pause"),
        ("draft", "resume"),
        ("draft", "advance"),
        ("draft", "rollback"),
        ("running", "start"),
        ("running", "resume"),
        ("paused", "pause"),
        ("completed", "abort"),
        ("rolled_back", "start"),
        ("aborted", "resume"),
    ],
)
def test_transitions_that_are_not_allowed_change_nothing(fleet, operator, state, action) -> None:
    c = make(fleet)
    Campaign.objects.filter(pk=c.pk).update(state=state, wave_index=0 if state != "draft" else -1)
    before = (CampaignDecision.objects.count(), AuditEntry.objects.count())
    with pytest.raises(CampaignError, match=f"Cannot {action}"):
        lifecycle.ACTIONS[action](c.pk, user=operator, reason="because")
    assert Campaign.objects.get(pk=c.pk).state == state
    assert (CampaignDecision.objects.count(), AuditEntry.objects.count()) == before


def test_manual_advance_and_rollback_need_a_reason(fleet, operator) -> None:
    c = make(fleet)
    lifecycle.start(c.pk)
    for fn in (lifecycle.advance, lifecycle.rollback):
        with pytest.raises(CampaignError, match="Say why"):
            fn(c.pk, user=operator, reason="  ")
    c.refresh_from_db()
    assert c.state == "running" and c.wave_index == 0


def test_advancing_past_the_last_wave_completes_and_releases(fleet, operator) -> None:
    c = make(fleet)
    lifecycle.start(c.pk)
    for _ in range(3):
        lifecycle.advance(c.pk, user=operator, reason="go")
    c.refresh_from_db()
    assert c.state == "completed" and c.finished_at
    rel = Release.objects.filter(model=fleet["model"]).first()
    assert rel.version == fleet["v2"] and rel.cohort == fleet["eu"] and rel.campaign == c


def test_abort_from_draft(fleet) -> None:
    c = make(fleet)
    lifecycle.abort(c.pk, reason="wrong cohort")
    assert Campaign.objects.get(pk=c.pk).state == "aborted"


def test_install_progress_counts_targeted_devices(fleet) -> None:
    c = make(fleet, waves=[{"percent": 100}])
    lifecycle.start(c.pk)
    eu = fleet["devices"][:40]
    for d in eu[:15]:
        d.installed = {"fraud": "v2"}
        d.save()
    progress = install_progress(Campaign.objects.get(pk=c.pk))
    assert progress["targeted"] == 40 and progress["on_version"] == 15 and progress["on_previous"] == 25


# --- the gate job with synthetic comparisons ----------------------------------------------------


def comparison(verdict: str = "pass", n: int = 30, error_canary: float = 0.01) -> dict:
    row = {
        "verdict": verdict,
        "canary": error_canary,
        "control": 0.01,
        "effect": error_canary - 0.01,
        "statistic": 0.0,
        "p_value": 0.5,
        "n_canary": n,
        "n_control": n,
        "threshold": 0.01,
        "detail": "",
    }
    return {"error_rate": row, "latency_p95": {**row, "verdict": "pass" if verdict != "not_enough_data" else verdict}}


@pytest.fixture
def synthetic(monkeypatch) -> dict:
    box = {"value": comparison()}
    monkeypatch.setattr(evaluation, "compare", lambda campaign, since, min_devices=1: box["value"])
    return box


def test_job_advances_through_every_wave_to_completion(fleet, synthetic) -> None:
    c = make(fleet)
    lifecycle.start(c.pk)
    results = [evaluation.evaluate_campaign(c.pk) for _ in range(4)]
    assert results == ["advance", "advance", "complete", "skip"]
    c.refresh_from_db()
    assert c.state == "completed"
    advance = c.decisions.filter(kind="advance").order_by("at", "id").first()
    assert advance.actor_label == "system" and advance.numbers["verdict"] == "pass"
    assert {g["name"] for g in advance.numbers["gates"]} == set(GATES)
    assert AuditEntry.objects.filter(action="campaign.complete", actor_label="system").exists()


def test_job_holds_while_soaking_and_while_too_few_devices_report(fleet, synthetic) -> None:
    waves = [{"percent": 50, "min_soak_minutes": 10, "min_devices": 20}, {"percent": 100}]
    c = make(fleet, waves=waves)
    lifecycle.start(c.pk)
    soon = timezone.now() + timedelta(seconds=1)  # one instant: a loaded machine must not change the reason
    assert evaluation.evaluate_campaign(c.pk, now=soon) == "hold"
    assert evaluation.evaluate_campaign(c.pk, now=soon) == "hold"
    assert c.decisions.filter(kind="hold").count() == 1  # the same reason is not repeated
    later = timezone.now() + timedelta(minutes=11)
    synthetic["value"] = comparison(n=5)
    commit(c, fleet["devices"][:19])
    assert evaluation.evaluate_campaign(c.pk, now=later) == "hold"
    hold = c.decisions.filter(kind="hold").order_by("-at", "-id").first()
    assert "5 of 20" in hold.reason
    # 25 devices report, but a wave counts only devices that committed the version (agent probation)
    synthetic["value"] = comparison(n=25)
    assert evaluation.evaluate_campaign(c.pk, now=later) == "hold"
    hold = c.decisions.filter(kind="hold").order_by("-at", "-id").first()
    assert "19 of 20 canary devices committed" in hold.reason
    commit(c, fleet["devices"][19:20])  # equality at the threshold is enough
    assert evaluation.evaluate_campaign(c.pk, now=later) == "advance"


def commit(c: Campaign, devices: list, kind: str = "committed", at: datetime | None = None) -> None:
    """Devices report an outcome of the campaign's version, as their agent does."""
    import uuid

    from fleet.models import DeviceEvent

    for d in devices:
        DeviceEvent.objects.create(
            id=uuid.uuid4(), device=d, kind=kind, at=at or timezone.now(), model_name="fraud", version_label="v2"
        )


def test_job_holds_on_not_enough_data(fleet, synthetic) -> None:
    synthetic["value"] = comparison("not_enough_data")
    c = make(fleet)
    lifecycle.start(c.pk)
    assert evaluation.evaluate_campaign(c.pk) == "hold"
    c.refresh_from_db()
    assert c.state == "running" and c.wave_index == 0 and c.gate_report["verdict"] == "not_enough_data"


def test_job_rolls_back_on_a_failing_gate_with_the_numbers(fleet, synthetic) -> None:
    synthetic["value"] = comparison("fail", error_canary=0.2)
    c = make(fleet)
    lifecycle.start(c.pk)
    assert evaluation.evaluate_campaign(c.pk) == "rollback"
    c.refresh_from_db()
    assert c.state == "rolled_back"
    d = c.decisions.get(kind="rollback")
    assert "error_rate" in d.reason and d.actor_label == "system"
    row = next(g for g in d.numbers["gates"] if g["name"] == "error_rate")
    assert row["observed"] == pytest.approx(0.19) and row["verdict"] == "fail"
    assert AuditEntry.objects.get(action="campaign.rollback").actor_label == "system"


def test_job_pauses_when_the_campaign_says_pause(fleet, synthetic) -> None:
    synthetic["value"] = comparison("fail", error_canary=0.2)
    c = make(fleet, on_failure="pause")
    lifecycle.start(c.pk)
    assert evaluation.evaluate_campaign(c.pk) == "pause"
    assert Campaign.objects.get(pk=c.pk).state == "paused"
    assert evaluation.evaluate_campaign(c.pk) == "skip"  # a paused campaign is held by the job


def test_a_stale_evaluation_does_not_act_twice(fleet, synthetic) -> None:
    c = make(fleet)
    lifecycle.start(c.pk)
    lifecycle.advance(c.pk, numbers={}, expect_wave=0)
    with pytest.raises(CampaignError, match="moved on"):
        lifecycle.advance(c.pk, numbers={}, expect_wave=0)
    assert Campaign.objects.get(pk=c.pk).wave_index == 1


def test_an_automatic_rollback_opens_one_regression_alert(fleet, synthetic) -> None:
    from telemetry.models import Alert

    synthetic["value"] = comparison("fail", error_canary=0.2)
    c = make(fleet)
    lifecycle.start(c.pk)
    assert evaluation.evaluate_campaign(c.pk) == "rollback"
    alert = Alert.objects.get(kind="regression", state="open")
    assert alert.version_id == c.version_id and "error_rate" in alert.message and "rolled back" in alert.message
    assert alert.numbers["campaign"] == c.pk
    # A second failing campaign of the same version updates the open alert instead of adding one.
    again = make(fleet)
    lifecycle.start(again.pk)
    assert evaluation.evaluate_campaign(again.pk) == "rollback"
    assert Alert.objects.filter(kind="regression", state="open").count() == 1
    assert Alert.objects.get(kind="regression").numbers["campaign"] == again.pk


def test_a_passing_or_holding_gate_opens_no_alert(fleet, synthetic) -> None:
    from telemetry.models import Alert

    synthetic["value"] = comparison("not_enough_data")
    c = make(fleet)
    lifecycle.start(c.pk)
    assert evaluation.evaluate_campaign(c.pk) == "hold"
    assert not Alert.objects.filter(kind="regression").exists()
