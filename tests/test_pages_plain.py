"""Every page reads as text for people: no Python repr of a dict, a list or None anywhere; counts agree
with their neighbours; the telemetry page of a version is one click away; the navigation has Alerts
and Releases."""

import re
import uuid

import pytest
from django.core.cache import cache
from django.utils import timezone

from accounts.audit import record
from demo import story
from fleet.models import DeviceEvent
from ota.models import Artifact, Model, ModelVersion
from rollout import lifecycle
from rollout.models import Campaign
from tests import factories
from tests import test_campaign_factories as f
from tests.test_telemetry_pages import populate

pytestmark = pytest.mark.django_db

# What a repr looks like in a page's text: {'k': …}, ['a', …], a bare None/True/False (JSON in a docs example is fine).
REPR = re.compile(r"\{'|\['|'\]|'\}|\bNone\b|\bTrue\b|\bFalse\b")


def visible(html: str) -> str:
    """The page's text as a person reads it (scripts, JSON data blocks and tags removed)."""
    html = re.sub(r"<script\b.*?</script>", " ", html, flags=re.S)
    html = re.sub(r"<style\b.*?</style>", " ", html, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", html)
    from html import unescape

    return " ".join(unescape(text).split())


@pytest.fixture
def world(admin_client) -> dict:
    v1 = populate()  # fraud v1, released, telemetry with drift alerts
    v1.report = {
        **v1.report,
        "parameters": 1234567,
        "metadata": {"features": "rms,peak,kurtosis,temperature", "tags": ["a", "b"], "extra": {"k": None}},
    }
    v1.save(update_fields=["report"])
    v2 = factories.staged_version("fraud", "v2", seed=1)
    broken = Model.objects.create(name="broken")
    art = Artifact.objects.create(sha256="b" * 64, size=324_000_121, storage_key="artifacts/bb")
    ModelVersion.objects.create(model=broken, label="v1", status="rejected", artifact=art, error="not an onnx file")
    devices = [f.device({"region": "eu"}, {"fraud": "v1"}) for _ in range(3)]
    d = devices[0]
    for kind, details in (
        ("activated", {"previous": None}),
        ("installed", {"sha256": "a" * 64, "variant": "int8", "ok": True}),
        ("fell_back", {"rule": "error_rate", "threshold": 0.5, "to": "v1", "at_start": False}),
        ("download_started", {"resume_from": 0, "nested": {"a": [1, 2]}}),
    ):
        at = timezone.now()
        DeviceEvent.objects.create(
            id=uuid.uuid4(), device=d, kind=kind, at=at, model_name="fraud", version_label="v2", details=details
        )
    c = lifecycle.create_campaign(name="v2 to everyone", version=v2, cohort=None, waves=f.WAVES, gates={"drift": 0.25})
    lifecycle.start(c.pk)
    numbers = {"gates": [{"name": "drift", "canary": 0.46, "control": 0.3, "observed": 0.46, "verdict": "fail"}]}
    lifecycle.rollback(c.pk, reason="gate failed: drift", numbers=numbers)
    record("campaign.test", c, details={"numbers": numbers, "previous": None, "list": ["x", "y"]})
    cache.set(story.STATUS_KEY, {"message": "the fleet is back on v1", "at": 0})
    return {"v1": v1, "v2": v2, "device": d, "campaign": Campaign.objects.get(pk=c.pk)}


def pages(world: dict) -> list[str]:
    v1, c = world["v1"], world["campaign"]
    return [
        "/",
        "/?live=1",
        "/devices/",
        f"/devices/{world['device'].pk}/",
        "/models/",
        "/models/fraud/",
        "/models/fraud/versions/v1/",
        "/models/broken/",
        "/models/broken/versions/v1/",
        "/campaigns/",
        f"/campaigns/{c.pk}/",
        f"/campaigns/{c.pk}/live/",
        "/releases/",
        "/cohorts/",
        "/enrollment-keys/",
        f"/telemetry/versions/{v1.pk}/",
        "/telemetry/alerts/?state=all",
        "/accounts/audit/",
        "/accounts/tokens/",
        "/notifications/",
    ]


def test_no_page_shows_a_python_repr(admin_client, world) -> None:
    for url in pages(world):
        resp = admin_client.get(url)
        assert resp.status_code == 200, url
        text = visible(resp.content.decode())
        found = REPR.findall(text)
        assert not found, f"{url}: {found} in …{text[text.find(found[0]) - 80 : text.find(found[0]) + 80]}…"


def test_sizes_say_their_units_and_numbers_have_separators(admin_client, world) -> None:
    text = visible(admin_client.get("/models/broken/").content.decode())
    assert "309.0 MiB" in text and "309.0 MB" not in text
    text = visible(admin_client.get("/models/fraud/versions/v1/").content.decode())
    assert "1,234,567" in text
    assert "batch × 4" in text, "shapes as people write them"


def test_the_overview_the_models_page_and_their_neighbours_agree(admin_client, world) -> None:
    overview = visible(admin_client.get("/").content.decode())
    assert "1 model (+1 with only rejected uploads)" in overview
    models = visible(admin_client.get("/models/").content.decode())
    assert "1 model with a version that was not rejected · 1 with only rejected uploads" in models
    assert "only rejected uploads" in models
    # the banner says no numbers the live chart could contradict
    assert "Demo: the fleet is back on v1" in overview
    # a rolled-back campaign is not "running"
    assert re.search(r"Running campaigns 0\b", overview)


def test_the_telemetry_page_is_one_click_from_version_model_campaign_and_overview(admin_client, world) -> None:
    v1, v2, c = world["v1"], world["v2"], world["campaign"]
    link = f'href="/telemetry/versions/{v1.pk}/"'
    assert link in admin_client.get("/models/fraud/versions/v1/").content.decode()
    assert link in admin_client.get("/models/fraud/").content.decode()
    assert link in admin_client.get("/").content.decode(), "from the versions in use"
    campaign = admin_client.get(f"/campaigns/{c.pk}/").content.decode()
    assert f'href="/telemetry/versions/{v2.pk}/"' in campaign and link in campaign
    assert "/telemetry/versions/" not in admin_client.get("/models/broken/versions/v1/").content.decode()


def test_alerts_and_releases_are_in_the_navigation(admin_client, world) -> None:
    nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', admin_client.get("/devices/").content.decode(), re.S)
    assert nav and 'href="/telemetry/alerts/"' in nav.group(1) and 'href="/releases/"' in nav.group(1)
    alerts = admin_client.get("/telemetry/alerts/").content.decode()
    assert 'href="/telemetry/alerts/" class="active" aria-current="page"' in alerts
