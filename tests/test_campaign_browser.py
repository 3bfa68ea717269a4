"""The campaign pages in a real Chromium against a live server: form, live dry run, start, charts."""

import os

import pytest
from django.contrib.auth.models import Group

from rollout.models import Campaign
from tests import test_campaign_factories as f

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Playwright's sync API keeps an event loop in this thread; the ORM calls here are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def browser_operator(transactional_db, django_user_model) -> None:
    user = django_user_model.objects.create_user("otto", password="pw-otto-12345")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])


def test_operator_previews_creates_and_starts_a_campaign(live_server, page, login, browser_operator) -> None:
    m = f.model()
    v1, v2 = f.version(m, "v1"), f.version(m, "v2")
    f.release(v1)
    eu = f.cohort("eu", "region=eu")
    for _ in range(20):
        f.device({"region": "eu"}, {"fraud": "v1"})
    f.device({"region": "eu"}, ort_version="1.8.0")
    login(page, "otto", "pw-otto-12345")
    page.goto(f"{live_server.url}/campaigns/new/")
    page.fill("input[name=name]", "v2 to eu")
    page.select_option("select[name=version]", str(v2.pk))
    page.select_option("select[name=cohort]", str(eu.pk))
    page.wait_for_selector("#dry-run-waves")
    assert "21" in page.inner_text("#dry-run-summary") and "20" in page.inner_text("#dry-run-summary")
    assert "onnxruntime too old" in page.inner_text("#dry-run-exclusions")
    page.fill("textarea[name=waves]", "10\n100")
    # A function, not an expression string: Playwright evals strings in the page, which the CSP forbids.
    page.wait_for_function("() => document.querySelectorAll('#dry-run-waves tbody tr').length === 2")
    page.click("#campaign-form button[type=submit]")
    page.wait_for_selector("#campaign-state")
    c = Campaign.objects.get()
    assert page.url.endswith(f"/campaigns/{c.pk}/")
    page.click("#actions button.primary")
    page.wait_for_load_state("networkidle")
    assert "Running" in page.inner_text("#campaign-state")
    page.wait_for_selector("#chart-error .main-svg")  # Plotly, served locally, drew the chart
    failed = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.reload()
    page.wait_for_selector("#chart-error .main-svg")
    assert not [u for u in failed if "favicon" not in u], failed
    assert [e for e in page.console_errors if "404" not in e] == []
