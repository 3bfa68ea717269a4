"""Telemetry pages: charts, k-suppression with reasons, alert resolution by role with audit, real browser."""

import json
import os
from datetime import timedelta

import numpy as np
import pytest

from accounts.models import AuditEntry
from fleet.models import Cohort
from telemetry import services
from telemetry.models import Alert
from tests import factories
from tests.test_telemetry_jobs import fleet, hour, send

# Playwright's sync API keeps an event loop in the test thread; the ORM calls in fixtures are still sync.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def populate() -> object:
    v = factories.staged_version("fraud", "v1")
    factories.release(v)
    rng = np.random.default_rng(9)
    Cohort.objects.create(name="eu", selector="region=eu")
    Cohort.objects.create(name="tiny", selector="hw=jetson")
    devices = fleet(21) + fleet(2, {"region": "us", "hw": "jetson"})
    send(v, devices, rng, hour(3) + timedelta(minutes=1), n=1000)
    send(v, devices, rng, hour(2) + timedelta(minutes=1), n=1000, shift=0.7)
    services.update_rollups(settle_seconds=0)
    services.compute_drift()
    return v


@pytest.mark.django_db
def test_version_page_shows_charts_and_hides_small_cohorts(viewer_client) -> None:
    v = populate()
    resp = viewer_client.get(f"/telemetry/versions/{v.id}/")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "vendor/plotly.min.js" in html and "cdn" not in html.lower()
    figs = resp.context["figures"]
    assert set(figs) == {"drift", "overlay", "heatmap", "health"}
    heat = json.loads(figs["heatmap"])["data"][0]
    tiny = heat["y"].index("tiny")
    assert all(z is None for z in heat["z"][tiny]), "a 2-device cohort must not show numbers"
    assert "fewer than the minimum of 20" in heat["text"][tiny][0]
    assert "hidden: 2 reporting device(s)" in html
    assert any(a.feature == "input[0]" for a in resp.context["alerts"])
    assert viewer_client.get(f"/telemetry/versions/{v.id}/?feature=output").status_code == 200
    assert viewer_client.get("/telemetry/versions/999999/").status_code == 404


@pytest.mark.django_db
def test_pages_need_a_role(client) -> None:
    assert client.get("/telemetry/alerts/").status_code == 302


@pytest.mark.django_db
def test_operator_resolves_alert_with_audit_viewer_cannot(viewer_client, operator, client) -> None:
    populate()
    alert = Alert.objects.filter(state="open").first()
    assert viewer_client.get("/telemetry/alerts/").status_code == 200
    assert viewer_client.post(f"/telemetry/alerts/{alert.pk}/resolve").status_code == 403
    client.force_login(operator)
    resp = client.post(f"/telemetry/alerts/{alert.pk}/resolve", {"next": "https://evil.example/"})
    assert resp.status_code == 302 and resp["Location"] == "/telemetry/alerts/"
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_by == "olivia"
    entry = AuditEntry.objects.get(action="telemetry.alert.resolve")
    assert entry.actor == operator and entry.details["alert"] == alert.pk


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_charts_render_in_a_real_browser(page, login, live_server, viewer) -> None:
    v = populate()
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204))  # the site has none yet
    login(page, "victor", "pw-victor-123")
    page.goto(f"{live_server.url}/telemetry/versions/{v.id}/")
    for name in ("drift", "overlay", "heatmap", "health"):
        page.wait_for_selector(f"#chart-{name} .main-svg", timeout=15000)
    assert page.locator("#chart-drift .scatterlayer .trace").count() >= 5
    # Each point says what it sums (hover text from the figure's customdata).
    page.locator("#chart-drift .scatterlayer .trace .points path").first.hover(force=True)
    page.wait_for_selector("#chart-drift .hoverlayer .hovertext", timeout=5000)
    assert "devices (per-device reports)" in page.locator("#chart-drift .hoverlayer .hovertext").first.text_content()
    assert page.console_errors == []
