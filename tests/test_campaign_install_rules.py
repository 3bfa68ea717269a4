"""Campaign windows and install conditions through the services, the management API, the device
protocol and the pages: bad input is a clear 400, the manifest tells devices when they may install,
the dry run and the campaign's progress count devices waiting, rollbacks carry no window, and a
wave counts committed devices (a device that never commits is a failure with its reason).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from fleet.models import Device, DeviceEvent
from rollout import lifecycle, progress
from rollout import windows as W
from rollout.manifest import bump_generation
from rollout.models import Campaign
from tests import factories
from tests.test_mgmt_api import Api, error

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roles")]

PLAN = {"model": "fraud", "version": "v2", "waves": [{"percent": 100}]}


@pytest.fixture
def op(operator: Any) -> Api:
    return Api(ApiToken.issue(operator, "ci")[1])


@pytest.fixture
def fleet(db: None) -> dict[str, Any]:
    v1 = factories.staged_version("fraud", "v1", seed=1)
    v2 = factories.staged_version("fraud", "v2", seed=2)
    factories.release(v1)
    hw = {"arch": "aarch64", "cores": 4, "ram_mb": 4096, "accelerator": "none", "ort_version": "1.22.0",
          "providers": ["CPUExecutionProvider"], "storage_free_mb": 10_000}  # fmt: skip
    berlin = [factories.device({"tz": "Europe/Berlin"}, hw, f"ber-{i}") for i in range(3)]
    tokyo = [factories.device({"tz": "Asia/Tokyo"}, hw, f"tok-{i}") for i in range(2)]
    plain = [factories.device({}, hw, "utc-0")]
    return {"v1": v1, "v2": v2, "berlin": berlin, "tokyo": tokyo, "plain": plain, "all": berlin + tokyo + plain}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"windows": ["mon-fri 25:00-26:00"]}, "windows", "time of day"),
        ({"windows": ["funday 01:00-02:00"]}, "windows", "not a day"),
        ({"windows": ["mon 05:00-05:00"]}, "windows", "the same time"),
        ({"windows": ["01:00-02:00"] * 15}, "windows", None),
        ({"windows": "mon 01:00-02:00"}, "windows", None),
        ({"windows": ["x" * 65]}, "windows.0", None),
        ({"window_tz": "Mars/Olympus"}, "window_tz", "not a known time zone"),
        ({"window_tz": "../../etc/passwd"}, "window_tz", "not a time zone name"),
        ({"conditions": {"power": "battery"}}, "conditions.power", None),
        ({"conditions": {"network": "metered"}}, "conditions.network", None),
        ({"conditions": {"idle": False}}, "conditions.idle", None),
        ({"conditions": {"solar": True}}, "conditions.solar", "not permitted"),
        ({"commit_minutes": 0}, "commit_minutes", None),
        ({"commit_minutes": 10_081}, "commit_minutes", None),
    ],
)
def test_bad_windows_conditions_and_probation_are_400_naming_the_field(
    fleet: dict, op: Api, change: dict, field: str, words: str | None
) -> None:
    body = {**PLAN, "name": "nightly", **change}
    code = "unknown_field" if "solar" in str(change) else "invalid"
    err = error(op.post("/campaigns", body), 400, code)
    assert err["field"] is not None and err["field"].startswith(field), err
    if words:
        assert words in err["message"], err
    if "commit_minutes" not in change:  # the dry run takes the same plan and refuses the same way
        error(op.post("/campaigns/dry-run", {**PLAN, **change}), 400, code)
    assert not Campaign.objects.exists()


def test_the_api_creates_a_campaign_with_windows_and_conditions_and_shows_them(fleet: dict, op: Api) -> None:
    body = {**PLAN, "name": "nightly", "windows": ["mon-fri 01:00-05:00", "sat,sun 22:00-02:00"], "start": True,
            "conditions": {"power": "external", "network": "unmetered"}, "commit_minutes": 30}  # fmt: skip
    status, c = op.post("/campaigns", body)
    assert status == 201, c
    assert c["windows"] == [
        {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "01:00", "end": "05:00"},
        {"days": ["sat", "sun"], "start": "22:00", "end": "02:00"},
    ]
    assert c["window_tz"] == "device" and c["conditions"] == {"power": "external", "network": "unmetered"}
    assert c["commit_minutes"] == 30
    # nobody reported conditions yet: every targeted device waits for them
    waiting = c["progress"]["waiting"]
    assert waiting["devices"] == 6 and waiting["power"] == 6 and waiting["network"] == 6
    assert c["progress"]["committed"] == 0
    create = Campaign.objects.get().decisions.get(kind="create")
    assert create.numbers["conditions"] == {"power": "external", "network": "unmetered"}


def poll(token: str, state: dict | str | None = None) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if state is not None:
        headers["HTTP_X_AGENT_STATE"] = state if isinstance(state, str) else json.dumps(state)
    return Client().get("/api/v1/manifest", **headers)


@pytest.mark.parametrize(
    "state",
    [
        {"models": {}, "conditions": {"power": "solar"}},
        {"conditions": {"idle": "yes"}},
        {"conditions": {"power": True}},
        {"conditions": {"network": "unmetered", "gps": "on"}},
        {"conditions": ["power"]},
        {"conditions": {f"k{i}": 1 for i in range(50)}},
        {"models": {}, "conditions": {}, "extra": 1},
        '{"conditions": {"idle": NaN}}',
        '{"conditions": {"power": "external"' + " " * 5000 + "}}",
    ],
)
def test_the_poll_refuses_hostile_conditions_with_400(fleet: dict, state: Any) -> None:
    resp = poll(fleet["plain"][0][1], state)
    assert resp.status_code == 400, resp.content
    assert resp.json()["error"]["field"] == "X-Agent-State"


def test_reported_conditions_are_stored_and_counted(fleet: dict, settings: Any) -> None:
    settings.REDIS_URL = ""  # embedded mode: the poll writes the row itself (the flush path is tested below)
    from fleet import presence

    presence.redis_client.cache_clear()
    try:
        bump_generation()
        device, token = fleet["berlin"][0]
        good = {"models": {"fraud": "v1"}, "conditions": {"power": "external", "network": "unmetered", "idle": True}}
        assert poll(token, good).status_code == 200
        device.refresh_from_db()
        assert device.conditions == good["conditions"] and device.installed == {"fraud": "v1"}
        assert poll(token, {"models": {"fraud": "v1"}}).status_code == 200  # conditions not said: kept
        device.refresh_from_db()
        assert device.conditions == good["conditions"]
    finally:
        presence.redis_client.cache_clear()


def test_the_presence_flush_writes_conditions_and_skips_garbage(fleet: dict) -> None:
    from fleet import presence

    r = presence.redis_client()
    presence.drain()  # the fixture's own polls, and what earlier tests left dirty, are not this test's
    r.delete(presence.DIRTY)
    (ok, _), (bad, _) = fleet["tokyo"]
    now = datetime.now(UTC).timestamp()
    r.hset(presence.hash_key(str(ok.id)), mapping={"seen": now, "cond": json.dumps({"power": "battery"})})
    r.hset(presence.hash_key(str(bad.id)), mapping={"seen": now, "cond": json.dumps({"power": "nuclear"})})
    r.sadd(presence.DIRTY, str(ok.id), str(bad.id))
    assert presence.flush() == 1
    ok.refresh_from_db()
    bad.refresh_from_db()
    assert ok.conditions == {"power": "battery"} and bad.conditions == {}


def _manifest_entry(token: str) -> dict:
    resp = poll(token, {"models": {"fraud": "v1"}})
    assert resp.status_code == 200
    (entry,) = resp.json()["manifest"]["models"]
    return entry


def test_the_manifest_carries_install_rules_in_the_device_zone_and_a_rollback_carries_none(fleet: dict) -> None:
    c = lifecycle.create_campaign(
        name="nightly", version=fleet["v2"], cohort=None, waves=[{"percent": 100}], gates={},
        windows=["mon-fri 01:00-05:00"], conditions={"power": "external"},
    )  # fmt: skip
    lifecycle.start(c.pk)
    bump_generation()
    berlin = _manifest_entry(fleet["berlin"][0][1])
    assert berlin["version"] == "v2" and berlin["fallback"]["version"] == "v1"
    assert berlin["install"] == {
        "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "01:00", "end": "05:00"}],
        "tz": "Europe/Berlin",
        "conditions": {"power": "external"},
    }
    assert _manifest_entry(fleet["plain"][0][1])["install"]["tz"] == "UTC"  # no tz label: UTC
    lifecycle.rollback(c.pk, reason="bad")
    bump_generation()
    back = _manifest_entry(fleet["berlin"][0][1])
    assert back["version"] == "v1" and "install" not in back  # a rollback never waits for a window


def test_a_fixed_zone_and_a_campaign_without_rules_leave_the_manifest_as_before(fleet: dict) -> None:
    c = lifecycle.create_campaign(
        name="plain", version=fleet["v2"], cohort=None, waves=[{"percent": 100}], gates={},
    )  # fmt: skip
    lifecycle.start(c.pk)
    bump_generation()
    assert "install" not in _manifest_entry(fleet["berlin"][0][1])
    lifecycle.abort(c.pk)
    c2 = lifecycle.create_campaign(
        name="tokyo time", version=fleet["v2"], cohort=None, waves=[{"percent": 100}], gates={},
        windows=["daily 02:00-03:00"], window_tz="Asia/Tokyo",
    )  # fmt: skip
    lifecycle.start(c2.pk)
    bump_generation()
    assert _manifest_entry(fleet["berlin"][0][1])["install"] == {
        "windows": [{"days": list(W.DAYS), "start": "02:00", "end": "03:00"}], "tz": "Asia/Tokyo"}  # fmt: skip


def test_the_dry_run_counts_devices_waiting_for_their_window_per_zone(fleet: dict, op: Api) -> None:
    # a window open right now in Berlin only (one hour around Berlin's current wall-clock time)
    now = timezone.now().astimezone(W.zone("Europe/Berlin"))
    start = now - timedelta(minutes=30)
    end = now + timedelta(minutes=30)
    days = W.DAYS[start.weekday()]
    window = f"{days} {start:%H:%M}-{end:%H:%M}"
    status, dry = op.post("/campaigns/dry-run", {**PLAN, "windows": [window]})
    assert status == 200, dry
    # Tokyo (7-8 h ahead) and UTC (1-2 h behind) are outside a one-hour window around Berlin's time
    assert dry["waiting"] == {"devices": 3, "window": 3}
    status, dry = op.post("/campaigns/dry-run", {**PLAN, "windows": [window], "window_tz": "Europe/Berlin"})
    assert dry["waiting"] == {"devices": 0, "window": 0}  # one fixed zone: open for everyone
    status, dry = op.post("/campaigns/dry-run", PLAN)
    assert dry["waiting"] == {}  # no rules: nothing to count


def _event(device: Device, kind: str, at: datetime, details: dict | None = None) -> None:
    DeviceEvent.objects.create(id=uuid.uuid4(), device=device, kind=kind, at=at, model_name="fraud",
                               version_label="v2", details=details or {})  # fmt: skip


def test_waves_count_committed_devices_and_a_device_that_never_commits_fails_with_its_reason(fleet: dict) -> None:
    from rollout.evaluation import compare

    c = lifecycle.create_campaign(
        name="probation", version=fleet["v2"], cohort=None, waves=[{"percent": 100}], gates={}, commit_minutes=30
    )
    lifecycle.start(c.pk)
    now = timezone.now()
    Campaign.objects.filter(pk=c.pk).update(started_at=now - timedelta(hours=1))
    c.refresh_from_db()
    (a, _), (b, _), (d, _), (e, _) = fleet["all"][:4]
    _event(a, "installed", now - timedelta(minutes=40))
    _event(a, "committed", now - timedelta(minutes=35))
    _event(b, "installed", now - timedelta(minutes=31))  # 31 min without a commit: failed
    _event(d, "installed", now - timedelta(minutes=29))  # still in probation
    _event(e, "installed", now - timedelta(minutes=5))
    _event(e, "fell_back", now - timedelta(minutes=4), {"rule": "error_rate", "to": "v1"})
    assert progress.commit_outcomes(c, now) == {"committed": 1, "probation": 1, "not_committed": 1, "fell_back": 1}
    assert progress.committed_count(c) == 1
    # the gate's install failure rate counts the uncommitted device and the fallback as failures
    from telemetry.canary import _install_rate

    fails, attempts, _ = _install_rate(c.version_id, c.started_at - timedelta(hours=1), now, None, 30 * 60)
    assert (fails, attempts) == (2, 4)
    fails, attempts, _ = _install_rate(c.version_id, c.started_at - timedelta(hours=1), now, None)
    assert (fails, attempts) == (0, 4)  # without a probation, an install was a success (as before)
    assert compare(c, c.started_at) is not None  # the campaign's probation reaches the gate


def test_the_server_records_the_version_a_fallback_went_to(fleet: dict) -> None:
    from fleet import services

    device, _ = fleet["berlin"][0]
    at = timezone.now()

    def send(kind: str, version: str, **details: Any) -> None:
        services.record_events(device.pk, [{"id": uuid.uuid4(), "kind": kind, "at": at, "model": "fraud",
                                            "version": version, "details": details}])  # fmt: skip

    send("activated", "v2")
    device.refresh_from_db()
    assert device.installed == {"fraud": "v2"}
    send("fell_back", "v2", rule="error_rate", to="v1")  # the event names v2, the version that failed
    device.refresh_from_db()
    assert device.installed == {"fraud": "v1"}
    send("fell_back", "v1", rule="error_rate", to=None)  # nothing to fall back to: nothing runs
    device.refresh_from_db()
    assert device.installed == {}


def test_the_campaign_page_shows_windows_conditions_commits_and_waiting(fleet: dict, operator: Any) -> None:
    client = Client()
    client.force_login(operator)
    c = lifecycle.create_campaign(
        name="nightly", version=fleet["v2"], cohort=None, waves=[{"percent": 100}], gates={},
        windows=["mon-fri 01:00-05:00"], conditions={"power": "external", "network": "unmetered"},
    )  # fmt: skip
    page = client.get(f"/campaigns/{c.pk}/").content.decode()
    assert "mon,tue,wed,thu,fri 01:00-05:00" in page and "on external power, on an unmetered network" in page
    assert "dry-run-waiting" in page
    lifecycle.start(c.pk)
    live = client.get(f"/campaigns/{c.pk}/live/").content.decode()
    assert 'id="waiting"' in live and 'id="committed"' in live


def test_the_form_refuses_a_bad_window_and_creates_a_good_one(fleet: dict, operator: Any) -> None:
    client = Client()
    client.force_login(operator)
    form = {"name": "nightly", "version": fleet["v2"].pk, "waves": "100", "on_failure": "rollback",
            "windows": "mon-fri 01:00-29:00", "window_tz": "device", "require_power": "1"}  # fmt: skip
    resp = client.post("/campaigns/new/", form)
    assert resp.status_code == 400 and "time of day" in resp.content.decode()
    assert not Campaign.objects.exists()
    resp = client.post("/campaigns/new/", {**form, "windows": "mon-fri 01:00-05:00\nsat 22:00-02:00"})
    assert resp.status_code == 302
    c = Campaign.objects.get()
    assert [w["start"] for w in c.windows] == ["01:00", "22:00"] and c.conditions == {"power": "external"}


def test_a_device_that_joins_the_cohort_while_the_campaign_runs_is_placed_in_its_buckets_wave(fleet: dict) -> None:
    """hawkBit #1465: placement is by stable bucket, so a device enrolled (or relabelled into the
    cohort) after the start gets the version exactly when its bucket's wave is reached."""
    from fleet.services import save_cohort
    from rollout import placement

    eu = save_cohort("eu", "region=eu")
    c = lifecycle.create_campaign(
        name="half", version=fleet["v2"], cohort=eu, waves=[{"percent": 50}, {"percent": 100}], gates={}
    )
    lifecycle.start(c.pk)
    hw = fleet["all"][0][0].hardware
    late = [factories.device({"region": "eu"}, hw, f"late-{i}") for i in range(24)]
    outsider = factories.device({"region": "us"}, hw, "us-late")
    bump_generation()
    inside = {d.pk for d, _ in late if placement.bucket(d.pk, c.pk) < placement.coverage(c.waves, 0)}
    assert 0 < len(inside) < len(late)  # both sides of the wave's edge are exercised
    for d, token in late:
        assert _manifest_entry(token)["version"] == ("v2" if d.pk in inside else "v1"), d.pk
    assert _manifest_entry(outsider[1])["version"] == "v1"  # not in the cohort
    c.refresh_from_db()
    assert progress.install_progress(c)["targeted"] == len(inside)
    lifecycle.advance(c.pk, reason="next")
    bump_generation()
    assert {_manifest_entry(t)["version"] for _, t in late} == {"v2"}
