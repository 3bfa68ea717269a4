"""The privacy page in a real Chromium: the curve is drawn, editing a setting shows the new figures
before saving (and a refusal with the nearest setting), saving stores it."""

import os

import pytest
from django.contrib.auth.models import Group

from telemetry.models import PrivacyPolicy
from tests import test_campaign_factories as f
from tests.test_privacy_policy import devices

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Playwright's sync API keeps an event loop in this thread; the ORM calls here are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def browser_operator(transactional_db, django_user_model) -> None:
    user = django_user_model.objects.create_user("otto", password="pw-otto-12345")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])


def test_operator_previews_then_saves_a_privacy_setting(live_server, page, login, browser_operator) -> None:
    m = f.model()
    devices(1000)
    login(page, "otto", "pw-otto-12345")
    page.goto(f"{live_server.url}/models/{m.name}/")
    page.click("#privacy-link")
    page.wait_for_selector("#chart-privacy-curve .main-svg")  # Plotly, served locally, drew the curve
    before = page.inner_text("#fig-shift-day")
    assert "σ" in before and "differentially private" in page.inner_text("#guarantee")
    page.fill("input[name=epsilon_drift_day]", "16")
    page.wait_for_function(
        "(b) => document.getElementById('fig-shift-day').textContent !== b", arg=before, timeout=20_000
    )
    after = page.inner_text("#fig-shift-day")
    assert float(after.split()[0]) < float(before.split()[0])
    assert not PrivacyPolicy.objects.exists()  # shown before saving
    page.fill("input[name=delta]", "0.5")
    page.wait_for_selector("#privacy-problems li[data-field=delta]", timeout=20_000)
    assert "1/n" in page.inner_text("#privacy-problems") and "delta" in page.inner_text("#privacy-nearest")
    page.fill("input[name=delta]", "1e-6")
    page.wait_for_function("() => !document.querySelector('#privacy-problems li')", timeout=20_000)
    page.click("#privacy-form button.primary")
    page.wait_for_load_state("networkidle")
    assert PrivacyPolicy.objects.get(model=m).epsilon_drift_day == 16
    assert page.input_value("input[name=epsilon_drift_day]") == "16.0"
    assert [e for e in page.console_errors if "404" not in e] == []
