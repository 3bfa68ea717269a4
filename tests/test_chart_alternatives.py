"""Every chart on every page has a text alternative: a ``role="figure"`` container with a name, and
its key numbers as a table (or a caption) next to it, in the same card; the version page's profile
charts (drawn by ``static/js/upload.js`` from ``profile-figures``) carry their numbers in words.

Walks the pages of ``tests/test_pages_plain.py``'s world (overview, live overview, version, telemetry,
campaign, device, …). The campaign gate charts' captions are written in the browser from the chart
data; their final text is checked in Chromium by ``tests/test_e2e_story.py``.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.test_pages_plain import pages, world  # noqa: F401  (world is a fixture)

pytestmark = pytest.mark.django_db

CHART = re.compile(r'<div\b(?P<attrs>[^>]*\bclass="chart(?:-small)?"[^>]*)>')
ATTR = re.compile(r'([\w-]+)="([^"]*)"')
END_OF_CARD = re.compile(r"</section>|</figure>|<section\b|<figure\b")


def charts(html: str) -> list[tuple[dict[str, str], str]]:
    """Each chart container's attributes and the markup after it up to the end of its card."""
    found = []
    for m in CHART.finditer(html):
        rest = html[m.end() :]
        end = END_OF_CARD.search(rest)
        found.append((dict(ATTR.findall(m["attrs"])), rest[: end.start() if end else 4000]))
    return found


def test_every_chart_has_a_name_and_its_numbers_beside_it(admin_client, world) -> None:  # noqa: F811
    seen: dict[str, list[str]] = {}
    for url in pages(world):
        html = admin_client.get(url).content.decode()
        for attrs, after in charts(html):
            name = attrs.get("id", "?")
            seen.setdefault(url, []).append(name)
            assert attrs.get("role") == "figure", (url, name)
            assert attrs.get("aria-label", "").strip(), (url, name)
            assert "<table" in after or "<figcaption" in after, f"{url} {name}: no table or caption beside it"
        if "Plotly" in html or "plotly.min.js" in html:
            assert url in seen or "profile-figures" in html, f"{url} loads Plotly but has no chart container"
    # The pages with charts are all walked (a chart renamed out of the pattern would fail here).
    campaign = world["campaign"].pk
    assert set(seen) >= {"/", "/?live=1", f"/telemetry/versions/{world['v1'].pk}/", f"/campaigns/{campaign}/"}
    assert {"chart-drift", "chart-overlay", "chart-heatmap", "chart-health"} <= set(
        seen[f"/telemetry/versions/{world['v1'].pk}/"]
    )
    assert "versions-chart" in seen["/"]


def test_the_telemetry_tables_carry_the_charts_numbers(admin_client, world) -> None:  # noqa: F811
    """The drift chart's table has a row per feature with its PSI; not an empty table."""
    html = admin_client.get(f"/telemetry/versions/{world['v1'].pk}/").content.decode()
    (_, after) = next((a, r) for a, r in charts(html) if a.get("id") == "chart-drift")
    rows = re.findall(r"<tr>(.*?)</tr>", after[after.index("<tbody") :], flags=re.S)
    assert rows and all(re.search(r"\d\.\d", r) for r in rows), rows


def test_the_overview_chart_names_every_version_and_its_count(admin_client, world) -> None:  # noqa: F811
    html = admin_client.get("/?live=1").content.decode()
    (attrs, after) = next((a, r) for a, r in charts(html) if a.get("id") == "versions-chart")
    assert re.search(r"v1 on \d+", attrs["aria-label"]), attrs["aria-label"]
    assert "fraud" in after and "v1" in after


def test_the_profile_charts_carry_their_numbers_in_words(admin_client, world) -> None:  # noqa: F811
    html = admin_client.get("/models/fraud/versions/v1/").content.decode()
    m = re.search(r'<script id="profile-figures" type="application/json">(.*?)</script>', html, flags=re.S)
    assert m, "the version has a reference profile, so it has profile charts"
    figures = json.loads(m[1])
    assert figures
    for fig in figures:
        assert fig.get("alt") and re.search(r"\d", fig["alt"]), fig.get("id")
