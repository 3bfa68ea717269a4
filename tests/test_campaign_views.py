"""Campaign pages and actions: permissions, bad input, refusals, and the live fragments."""

import pytest

from accounts.models import AuditEntry
from rollout import lifecycle
from rollout.models import Campaign
from tests import test_campaign_factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup() -> dict:
    m = f.model()
    v1, v2 = f.version(m, "v1"), f.version(m, "v2")
    f.release(v1)
    eu = f.cohort("eu", "region=eu")
    for _ in range(12):
        f.device({"region": "eu", "hw": "rpi4"}, {"fraud": "v1"})
    f.device({"region": "eu"}, ram_mb=32)
    return {"v1": v1, "v2": v2, "eu": eu}


def form(setup: dict, **kw) -> dict:
    data = {
        "name": "v2 to eu",
        "version": setup["v2"].pk,
        "cohort": setup["eu"].pk,
        "waves": "10, 0, 0\n50\n100",
        "gate_error_rate": "0.02",
        "gate_latency_p95": "1.25",
        "on_failure": "rollback",
    }
    return {**data, **kw}


def draft(setup: dict) -> Campaign:
    return lifecycle.create_campaign(
        name="c", version=setup["v2"], cohort=setup["eu"], waves=f.WAVES, gates={"error_rate": 0.02}
    )


def test_anonymous_is_sent_to_login(client, setup) -> None:
    c = draft(setup)
    for url in ("/campaigns/", "/campaigns/new/", f"/campaigns/{c.pk}/", f"/campaigns/{c.pk}/live/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    response = client.post(f"/campaigns/{c.pk}/start/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert Campaign.objects.get(pk=c.pk).state == "draft"


def test_viewer_sees_but_cannot_act(viewer_client, setup) -> None:
    c = draft(setup)
    page = viewer_client.get("/campaigns/").content.decode()
    assert "c" in page and "New campaign" not in page
    detail = viewer_client.get(f"/campaigns/{c.pk}/").content.decode()
    assert 'id="actions"' not in detail and "Dry run" in detail
    assert viewer_client.get("/campaigns/new/").status_code == 403
    assert viewer_client.post("/campaigns/new/", form(setup)).status_code == 403
    assert viewer_client.post(f"/campaigns/{c.pk}/start/").status_code == 403
    assert viewer_client.get(f"/campaigns/preview/?version={setup['v2'].pk}").status_code == 403
    assert Campaign.objects.get(pk=c.pk).state == "draft" and Campaign.objects.count() == 1


def test_operator_creates_a_campaign_with_the_reserved_id(operator_client, setup) -> None:
    page = operator_client.get("/campaigns/new/")
    reserved = page.context["reserved_id"]
    assert reserved
    response = operator_client.post("/campaigns/new/", form(setup, reserved_id=reserved))
    c = Campaign.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/campaigns/{c.pk}/"
    assert c.pk == reserved and c.previous_version == setup["v1"]
    assert [w["percent"] for w in c.waves] == [10, 50, 100] and c.gates == {"error_rate": 0.02, "latency_p95": 1.25}
    assert AuditEntry.objects.filter(action="campaign.create", actor_label="olivia").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": ""}, "Choose a staged version"),
        ({"version": "999999"}, "Choose a staged version"),
        ({"cohort": "999999"}, "cohort does not exist"),
        ({"waves": "10\n50"}, "must reach 100%"),
        ({"waves": "ten"}, "is not numbers"),
        ({"waves": "10,1,2,3"}, "at most three numbers"),
        ({"gate_error_rate": "lots"}, "must be numbers"),
        ({"gate_drift": "-1"}, "non-negative"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_form_input_is_explained_and_nothing_is_made(operator_client, setup, change, message) -> None:
    response = operator_client.post("/campaigns/new/", form(setup, **change))
    assert response.status_code == 400 and message in response.content.decode()
    assert not Campaign.objects.exists()


def test_overlap_is_refused_in_the_form(operator_client, setup) -> None:
    lifecycle.start(draft(setup).pk)
    response = operator_client.post("/campaigns/new/", form(setup, version=f.version(setup["v1"].model, "v3").pk))
    assert response.status_code == 400 and "one active campaign per model and device" in response.content.decode()
    assert Campaign.objects.count() == 1


def test_preview_shows_waves_and_exclusions(operator_client, setup) -> None:
    data = form(setup, reserved_id=lifecycle.reserve_campaign_id())
    response = operator_client.get("/campaigns/preview/", data)
    page = response.content.decode()
    assert response.status_code == 200 and 'id="dry-run-waves"' in page
    assert "<strong>13</strong> devices in the cohort" in page and "<strong>12</strong> compatible" in page
    assert "not enough RAM" in page
    bad = operator_client.get("/campaigns/preview/", form(setup, waves="10")).content.decode()
    assert "must reach 100%" in bad


def test_actions_walk_the_campaign_and_are_audited(operator_client, setup) -> None:
    c = draft(setup)
    assert operator_client.post(f"/campaigns/{c.pk}/start/").status_code == 302
    assert Campaign.objects.get(pk=c.pk).state == "running"
    operator_client.post(f"/campaigns/{c.pk}/pause/", {"reason": "look"})
    assert Campaign.objects.get(pk=c.pk).state == "paused"
    operator_client.post(f"/campaigns/{c.pk}/resume/")
    operator_client.post(f"/campaigns/{c.pk}/advance/", {"reason": "fine"})
    assert Campaign.objects.get(pk=c.pk).wave_index == 1
    operator_client.post(f"/campaigns/{c.pk}/rollback/", {"reason": "bad numbers"})
    assert Campaign.objects.get(pk=c.pk).state == "rolled_back"
    page = operator_client.get(f"/campaigns/{c.pk}/").content.decode()
    assert "bad numbers" in page and 'id="timeline"' in page
    assert AuditEntry.objects.filter(action="campaign.rollback", actor_label="olivia").exists()


def test_a_refused_action_says_why_and_changes_nothing(operator_client, setup) -> None:
    c = draft(setup)
    response = operator_client.post(f"/campaigns/{c.pk}/pause/", follow=True)
    assert "Cannot pause" in response.content.decode()
    lifecycle.start(c.pk)
    response = operator_client.post(f"/campaigns/{c.pk}/rollback/", {"reason": ""}, follow=True)
    assert "Say why" in response.content.decode()
    c.refresh_from_db()
    assert c.state == "running" and not AuditEntry.objects.filter(action="campaign.rollback").exists()
    assert operator_client.post(f"/campaigns/{c.pk}/explode/").status_code == 404
    assert operator_client.get(f"/campaigns/{c.pk}/start/").status_code == 405


def test_live_fragment_and_series(viewer_client, setup) -> None:
    c = draft(setup)
    lifecycle.start(c.pk)
    page = viewer_client.get(f"/campaigns/{c.pk}/").content.decode()
    assert f'data-poll-url="/campaigns/{c.pk}/live/"' in page and "vendor/plotly.min.js" in page
    live = viewer_client.get(f"/campaigns/{c.pk}/live/").content.decode()
    assert 'id="waves"' in live and 'id="gates"' in live and 'id="install-progress"' in live
    series = viewer_client.get(f"/campaigns/{c.pk}/series.json").json()
    assert {s["role"] for s in series["series"]} == {"canary", "control"}
    assert viewer_client.get("/campaigns/999999/").status_code == 404


def test_series_includes_the_started_bucket_and_reads_latency_through_the_noise(viewer_client, setup, settings) -> None:
    """Rollups are aligned buckets: the one a campaign starts in is charted; noise-only bins are not a tail."""
    from datetime import timedelta

    from django.utils import timezone

    from telemetry.binning import LATENCY_EDGES_MS
    from telemetry.models import Rollup

    settings.EDGEFLEET_MIN_COHORT = 20
    settings.EDGEFLEET_ROLLUP_SECONDS = 3600
    c = draft(setup)
    lifecycle.start(c.pk)
    bucket = timezone.now().replace(minute=0, second=0, microsecond=0)
    latency = [0.0] * (len(LATENCY_EDGES_MS) - 1)
    latency[1] = 5000.0  # 1-2 ms: the real mass
    latency[-1] = 90.0  # a noise-only bin, below 4 sd of the summed noise (sd = 30)
    for v in (setup["v2"], setup["v1"]):
        Rollup.objects.create(
            version=v,
            cohort="all",
            window_start=bucket,
            window_seconds=3600,
            n_reports=100,
            n_devices=25,
            inference_count=5000,
            error_count=50,
            noise_var=900.0,
            latency=latency,
        )
        Rollup.objects.create(
            version=v,
            cohort="all",
            window_start=bucket - timedelta(hours=2),
            window_seconds=3600,
            n_reports=100,
            n_devices=25,
            inference_count=5000,
            error_count=50,
            noise_var=900.0,
            latency=latency,
        )
    series = {s["role"]: s for s in viewer_client.get(f"/campaigns/{c.pk}/series.json").json()["series"]}
    assert series["canary"]["x"] == [bucket.isoformat()], "the started bucket is in, older ones are out"
    assert series["canary"]["error_rate"] == [0.01]
    assert series["canary"]["latency_p95"][0] < 2.0
