"""Every dashboard page in a real Chromium under the Content-Security-Policy the server sends in
production (the policy does not depend on EDGEFLEET_HTTPS; test_security_settings checks that): no
violation, no console error, the Plotly charts draw, the live regions refresh, the confirm dialogs
and auto-submitting selects still work. Also the login lockout as a person meets it."""

import os
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from fleet.models import Cohort, Device
from notify import services as notify
from rollout import lifecycle
from tests import factories
from tests import test_campaign_factories as f
from tests.test_telemetry_pages import populate

pytestmark = [pytest.mark.browser, pytest.mark.slow]

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  var where = e.sourceFile + ":" + e.lineNumber;
  window.__csp.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") + " at " + where);
});
"""

PROFILE = {
    "source": "reference_set",
    "n": 10,
    "features": [
        {"name": f"input[{j}]", "edges": [-1.0, 0.0, 1.0], "counts": [5, 5], "mean": 0, "std": 1} for j in range(4)
    ],
    "output": {"kind": "classes", "n": 3, "counts": [3, 3, 4]},
}


@pytest.fixture
def world(transactional_db, django_user_model) -> dict:
    """Real telemetry (drift, alerts, hidden cohorts), a reference profile, a running campaign."""
    for name in ("viewer", "operator", "admin"):
        Group.objects.get_or_create(name=name)
    ada = django_user_model.objects.create_user("ada", password="pw-ada-123456", is_staff=True, is_superuser=True)
    ada.groups.add(Group.objects.get(name="admin"))
    v1 = populate()  # fraud v1, released, with rollups, drift alerts and a cohort too small to show
    v2 = factories.staged_version("fraud", "v2", seed=1)
    v2.reference_profile = PROFILE  # its page draws the profile charts
    v2.save(update_fields=["reference_profile"])
    devices = [f.device({"region": "eu"}, {"fraud": "v1"}) for _ in range(20)]
    eu = Cohort.objects.get(name="eu")
    c = lifecycle.create_campaign(name="v2 to eu", version=v2, cohort=eu, waves=f.WAVES, gates={"error_rate": 0.02})
    lifecycle.start(c.pk, user=ada)
    sub, _ = notify.create(ada, name="on call", channel="email", emails=["oncall@example.com"], events=["alert.opened"])
    return {"ada": ada, "v1": v1, "v2": v2, "campaign": c, "device": devices[0], "subscription": sub}


SHOTS = Path(os.environ.get("TEST_OUTPUT_DIR", "test-output")) / "screenshots"


def shot(page: object, name: str) -> None:
    """A picture for people of what the page looks like under the policy."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"csp-{name}.png"), full_page=True)


def violations(page: object) -> list[str]:
    return page.evaluate("window.__csp || []")


def errors(page: object) -> list[str]:
    """Console errors, except the 404 of the browser's own /favicon.ico probe (the admin links none)."""
    failed = getattr(page, "failed_responses", [])
    only_favicon = all(url.endswith("/favicon.ico") for url in failed)
    return [e for e in page.console_errors if not (only_favicon and e.startswith("Failed to load resource"))]


def watch(page: object) -> None:
    page.context.add_init_script(WATCH_CSP)
    page.failed_responses = []
    page.foreign_requests = []
    page.on("response", lambda r: page.failed_responses.append(r.url) if r.status >= 400 else None)
    page.on(
        "request",
        lambda r: None if r.url.startswith(("http://localhost", "data:")) else page.foreign_requests.append(r.url),
    )


def visit(page: object, url: str, *, charts: tuple[str, ...] = ()) -> None:
    response = page.goto(url)
    assert response is not None and response.status == 200, url
    assert "Content-Security-Policy" in response.headers or "content-security-policy" in response.headers
    page.wait_for_load_state("networkidle")
    for chart in charts:
        page.wait_for_selector(f"{chart} .main-svg", timeout=15_000)
    assert violations(page) == [], url
    assert errors(page) == [], url


def test_every_dashboard_page_works_under_the_policy(live_server, page, login, world) -> None:
    watch(page)
    base = live_server.url
    login(page, "ada", "pw-ada-123456")
    v1, c, device = world["v1"], world["campaign"], world["device"]

    # The overview: the versions chart draws, and redraws when the live region refreshes.
    with page.expect_response(lambda r: "live=1" in r.url, timeout=20_000):
        visit(page, f"{base}/", charts=("#versions-chart",))
    page.wait_for_selector("#versions-chart .main-svg")
    shot(page, "overview")

    visit(page, f"{base}/models/")
    visit(page, f"{base}/models/fraud/")
    visit(page, f"{base}/models/fraud/versions/v2/", charts=("#chart-output",))
    shot(page, "version")
    visit(page, f"{base}/models/upload/")
    visit(page, f"{base}/devices/")
    visit(page, f"{base}/devices/{device.pk}/")
    visit(page, f"{base}/enrollment-keys/")
    visit(page, f"{base}/releases/")
    visit(page, f"{base}/telemetry/alerts/")
    visit(page, f"{base}/accounts/tokens/")
    visit(page, f"{base}/accounts/audit/")
    visit(page, f"{base}/notifications/")
    visit(page, f"{base}/notifications/{world['subscription'].pk}/")

    # Cohorts: the live count comes back as the selector is typed.
    visit(page, f"{base}/cohorts/")
    page.fill("#selector", "region=eu")
    page.wait_for_function("() => document.getElementById('selector-count').textContent.includes('matching')")
    eu = Device.objects.filter(labels__region="eu").count()
    assert page.inner_text("#selector-count") == f"{eu} matching devices"

    # Telemetry: four charts; choosing a feature submits the form by itself.
    charts = ("#chart-drift", "#chart-overlay", "#chart-heatmap", "#chart-health")
    visit(page, f"{base}/telemetry/versions/{v1.pk}/", charts=charts)
    assert page.locator("#chart-drift .scatterlayer .trace").count() >= 1  # drawn with data, not empty
    shot(page, "telemetry")
    if page.locator("#feature option").count() > 1:
        with page.expect_navigation():
            page.select_option("#feature", index=1)
        assert "feature=" in page.url

    # Campaigns: the state filter submits by itself; the dry run fills in as the form changes.
    visit(page, f"{base}/campaigns/")
    with page.expect_navigation():
        page.select_option("#state-filter", "running")
    assert "state=running" in page.url and "v2 to eu" in page.inner_text("main")
    visit(page, f"{base}/campaigns/new/")
    page.select_option("select[name=version]", str(world["v2"].pk))
    page.wait_for_selector("#dry-run-waves")

    # A running campaign: charts, the live region refreshing, and a confirm that means it.
    with page.expect_response(lambda r: f"/campaigns/{c.pk}/live/" in r.url, timeout=20_000):
        visit(page, f"{base}/campaigns/{c.pk}/", charts=("#chart-error", "#chart-latency"))
    shot(page, "campaign")
    page.once("dialog", lambda d: d.dismiss())
    page.click("#actions form[data-confirm*='Abort'] button")
    page.wait_for_load_state("networkidle")
    assert "Running" in page.inner_text("#campaign-state")  # dismissed: nothing was sent
    messages: list[str] = []
    page.once("dialog", lambda d: (messages.append(d.message), d.accept()))
    with page.expect_navigation():
        page.click("#actions form[data-confirm*='Abort'] button")
    assert messages == ["Abort this campaign?"]
    assert "Aborted" in page.inner_text("#campaign-state")

    # The API's own docs page: its bundled Swagger UI, not a CDN. (Swagger UI then logs a parse
    # error of the schema, whose responses carry duplicate keys: a schema matter, not the CSP's.)
    response = page.goto(f"{base}/api/v1/docs")
    assert response is not None and response.status == 200
    page.wait_for_function(  # the schema was fetched and rendered, or its error shown
        "() => document.querySelector('.swagger-ui .errors-wrapper, .swagger-ui .info .title') !== null"
    )
    assert violations(page) == []
    page.console_errors.clear()

    # The admin site, including a change form with its widgets.
    visit(page, f"{base}/admin/")
    visit(page, f"{base}/admin/auth/user/")
    visit(page, f"{base}/admin/auth/user/{world['ada'].pk}/change/")
    visit(page, f"{base}/admin/axes/accessattempt/")

    assert violations(page) == [] and errors(page) == []
    assert [u for u in page.failed_responses if not u.endswith("/favicon.ico")] == []
    assert page.foreign_requests == []  # every asset is our own


def test_a_person_locked_out_is_told_why_and_for_how_long(live_server, page, world) -> None:
    watch(page)
    for _ in range(5):
        page.goto(f"{live_server.url}/login/")
        page.fill("input[name=username]", "ada")
        page.fill("input[name=password]", "not her password")
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "pw-ada-123456")
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    text = page.inner_text("main")
    assert "Too many failed logins" in text and re.search(r"15 minutes", text)
    shot(page, "locked-out")
    assert page.goto(f"{live_server.url}/accounts/tokens/").url.startswith(f"{live_server.url}/login/")
    assert violations(page) == []
    assert [e for e in page.console_errors if "429" not in e] == []  # the lockout page answers 429
