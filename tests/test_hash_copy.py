"""Long hashes and ids are shown shortened with a copy button that carries the full value
(``templates/hash.html``, bound in ``static/js/edgefleet.js``): on the version, device and campaign
pages; and in Chromium a click puts the full value on the clipboard."""

from __future__ import annotations

import os
import re

import pytest

from rollout import lifecycle
from tests import test_campaign_factories as f

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


HASH = re.compile(
    r'<span class="hash"><code title="(?P<title>[^"]*)">(?P<shown>[^<]*)</code> '
    r"<button (?P<attrs>[^>]*)>copy</button></span>"
)


def copy_controls(html: str, full: str) -> list[dict[str, str]]:
    """The copy buttons for ``full``, each checked: the full value to copy, visible text shortened."""
    found = []
    for m in HASH.finditer(html):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m["attrs"]))
        if attrs.get("data-copy") != full:
            continue
        assert attrs.get("type") == "button" and "onclick" not in attrs, "bound by edgefleet.js, no inline handler"
        assert full in attrs["aria-label"] and full in attrs["title"]
        assert m["title"] == full
        assert len(full) > 13 and m["shown"] == full[:12] + "…", m["shown"]
        found.append(attrs)
    text = re.sub(r"<[^>]+>", " ", html[html.index("<main") :])
    assert full not in text, "the full value is not spelled out in the page text"
    return found


@pytest.mark.django_db
def test_the_version_page_shortens_its_digests_with_a_copy_button(viewer_client) -> None:
    m = f.model("fraud")
    v = f.version(m, "v1")
    html = viewer_client.get(f"/models/fraud/versions/{v.label}/").content.decode()
    # the file card, and the fp32 row of the variant table: each shortened with its own copy control
    assert len(copy_controls(html, v.artifact.sha256)) == 2


@pytest.mark.django_db
def test_the_device_page_shortens_the_device_id_with_a_copy_button(viewer_client) -> None:
    d = f.device({"region": "eu"})
    html = viewer_client.get(f"/devices/{d.pk}/").content.decode()
    (button,) = copy_controls(html, str(d.pk))
    assert "device id" in button["aria-label"]


@pytest.mark.django_db
def test_the_campaign_page_shortens_the_version_digest_with_a_copy_button(viewer_client) -> None:
    m = f.model("fraud")
    v1, v2 = f.version(m, "v1"), f.version(m, "v2")
    f.release(v1)
    c = lifecycle.create_campaign(name="to v2", version=v2, cohort=None, waves=[{"percent": 100}], gates={})
    html = viewer_client.get(f"/campaigns/{c.pk}/").content.decode()
    assert len(copy_controls(html, v2.artifact.sha256)) == 1
    assert v1.artifact.sha256 not in html


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_clicking_copy_puts_the_full_device_id_on_the_clipboard(
    browser: object, login: object, live_server: object, viewer: object
) -> None:
    full = str(f.device({"region": "eu"}).pk)
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    context.set_default_timeout(90_000)  # a loaded machine: the live server is slow, the check is not
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        login(page, "victor", "pw-victor-123")
        page.goto(f"{live_server.url}/devices/{full}/")
        assert page.evaluate("window.isSecureContext") is True  # localhost: the Clipboard API is on
        button = page.locator(f'button[data-copy="{full}"]')
        assert page.locator(".hash code").first.inner_text() == full[:12] + "…"
        page.evaluate("navigator.clipboard.writeText('nothing yet')")
        button.click()
        page.wait_for_function("el => el.textContent === 'copied'", arg=button.element_handle(), timeout=10_000)
        assert page.evaluate("navigator.clipboard.readText()") == full
        page.wait_for_function("el => el.textContent === 'copy'", arg=button.element_handle(), timeout=10_000)
        assert errors == []
    finally:
        context.close()
