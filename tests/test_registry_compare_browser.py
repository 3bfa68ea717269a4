"""An operator points an alias at a version and compares it with the previous one, in headless Chromium."""

import os

import pytest

from ota.models import Alias
from tests import factories
from tests.test_registry_compare import profile

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("roles"),
]

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def test_alias_then_compare_two_versions_with_overlaid_profiles(
    page: object, login: object, live_server: object, operator: object
) -> None:
    v1 = factories.staged_version("vib", "v1", seed=1)
    v2 = factories.staged_version("vib", "v2", seed=2)
    for v, mean, classes in ((v1, 0.0, [70, 20, 10]), (v2, 2.0, [40, 40, 20])):
        v.reference_profile = profile(mean, classes)
        v.report = {**v.report, "latency_ms": {"p50": 0.2 + mean, "p95": 0.4 + mean}}
        v.save()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.set_default_timeout(90_000)  # a busy two-core machine serves plotly.min.js slowly
    login(page, "olivia", "pw-olivia-123")
    page.goto(f"{live_server.url}/models/vib/versions/v2/", wait_until="domcontentloaded")

    page.fill("#alias-name", "production")
    page.click("#alias-form button")
    page.wait_for_selector("h1 [data-alias=production]")
    assert Alias.objects.get(name="production").version_id == v2.pk

    page.select_option("#compare-with", "v1")
    page.click("#compare-form button")
    page.wait_for_url(f"{live_server.url}/models/vib/compare/?b=v2&a=v1", wait_until="domcontentloaded")
    page.wait_for_selector("#chart-output .main-svg")
    page.wait_for_selector("#chart-feature-0 .main-svg")
    # two traces on each chart, named by version, with a legend a person can read
    assert page.locator("#chart-feature-0 .scatterlayer .trace").count() == 2
    assert page.locator("#chart-output .barlayer .trace").count() == 2
    legend = page.locator("#chart-output .legend").text_content()  # SVG text
    assert "v1" in legend and "v2" in legend
    assert "changed" not in page.inner_text("#contract-diff") and "same" in page.inner_text("#contract-diff")
    latency = page.inner_text("#row-latency")
    assert "0.200 / 0.400 ms" in latency and "2.200 / 2.400 ms" in latency
    assert [f for f in failed if not f.endswith("/favicon.ico")] == []
    assert [e for e in page.console_errors if not e.startswith("Failed to load resource")] == []
