"""The overview page: the fleet's state in one look, every number linked, live refresh, demo restart."""

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from accounts.models import AuditEntry
from fleet.models import Device
from rollout.models import Campaign, CampaignDecision
from telemetry.models import Alert
from tests import factories

pytestmark = pytest.mark.django_db


def _seen(device: Device, seconds_ago: float | None, installed: dict | None = None) -> None:
    device.last_seen_at = None if seconds_ago is None else timezone.now() - timedelta(seconds=seconds_ago)
    device.installed = installed or {}
    device.save(update_fields=["last_seen_at", "installed"])


def test_empty_fleet_says_how_to_enroll(viewer_client) -> None:
    page = viewer_client.get("/").content.decode()
    assert "No devices yet" in page and "/enrollment-keys/" in page and "python -m agent run" in page


def test_counts_by_status_and_versions_in_use(viewer_client) -> None:
    v1 = factories.staged_version("fraud", "v1")
    factories.staged_version("fraud", "v2", seed=1)
    for i in range(3):
        _seen(factories.device(name=f"on{i}")[0], 10, {"fraud": "v1"})
    _seen(factories.device(name="on-v2")[0], 10, {"fraud": "v2"})
    _seen(factories.device(name="stale")[0], 900, {"fraud": "v1"})
    _seen(factories.device(name="gone")[0], 86400 * 2)
    _seen(factories.device(name="new")[0], None)
    response = viewer_client.get("/")
    ctx = response.context
    assert ctx["status"] == {"online": 4, "stale": 1, "offline": 1, "never": 1}
    assert ctx["total_devices"] == 7
    assert ctx["in_use"] == {"fraud": [("v1", 4), ("v2", 1)]}
    page = response.content.decode()
    assert 'href="/devices/?status=online">4<' in page
    assert "/devices/?model=fraud&amp;version=v1" in page
    bars = {trace["name"]: trace["x"] for trace in ctx["versions_figure"]["data"]}
    assert bars == {"v1": [4], "v2": [1]}
    assert v1.model.name in page


def test_campaigns_alerts_and_system_decisions_are_listed(viewer_client) -> None:
    v1 = factories.staged_version("fraud", "v1")
    v2 = factories.staged_version("fraud", "v2", seed=1)
    campaign = Campaign.objects.create(
        name="v2 out",
        model=v1.model,
        version=v2,
        previous_version=v1,
        state="running",
        wave_index=0,
        waves=[{"percent": 10}, {"percent": 100}],
    )
    CampaignDecision.objects.create(campaign=campaign, kind="hold", reason="soaking")
    rollback = CampaignDecision.objects.create(campaign=campaign, kind="rollback", reason="gate failed: error_rate")
    CampaignDecision.objects.create(campaign=campaign, kind="start", reason="a script started it")
    CampaignDecision.objects.create(campaign=campaign, actor_label="olivia", kind="pause", reason="by hand")
    now = timezone.now()
    Alert.objects.create(
        kind="drift",
        version=v2,
        cohort="apac",
        feature="input[0]",
        opened_at=now,
        updated_at=now,
        message="PSI 1.2 above the noise-aware level 0.1",
    )
    Alert.objects.create(
        kind="drift",
        version=v2,
        cohort="eu",
        feature="input[1]",
        opened_at=now,
        updated_at=now,
        state="resolved",
        resolved_at=now,
    )
    ctx = viewer_client.get("/").context
    assert [c.pk for c in ctx["campaigns"]] == [campaign.pk]
    assert ctx["open_alerts"] == 1 and ctx["alerts"][0].cohort == "apac"
    assert [d.pk for d in ctx["decisions"]] == [rollback.pk], "holds and people's actions are not automatic decisions"
    page = viewer_client.get("/?live=1").content.decode()
    assert "wave 1 of 2" in page and f"/campaigns/{campaign.pk}/" in page and "gate failed: error_rate" in page
    assert "<html" not in page, "the live fragment is a fragment"


def test_overview_needs_login(client) -> None:
    assert client.get("/").status_code == 302


def test_demo_restart_is_for_operators_and_audited(viewer_client, client, operator) -> None:
    cache.delete("demo:restart")
    assert viewer_client.post("/demo/restart").status_code == 403
    assert not cache.get("demo:restart")
    client.force_login(operator)
    assert client.get("/demo/restart").status_code == 405
    response = client.post("/demo/restart")
    assert response.status_code == 302 and cache.get("demo:restart")
    assert AuditEntry.objects.filter(action="demo.restart", actor_label="olivia").exists()
    cache.delete("demo:restart")
