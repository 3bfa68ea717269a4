"""An automated accessibility check of pages with axe-core (axe-playwright-python's bundled copy).

axe is injected with ``page.evaluate`` of its source, which the Content-Security-Policy refuses, so
the check runs in a second browser context that bypasses the policy, logged in with the first
context's cookies. The policy itself is held by ``test_csp_browser``.
"""

from __future__ import annotations

from collections.abc import Iterable

SERIOUS = ("serious", "critical")


def check(browser: object, logged_in: object, base: str, urls: Iterable[str]) -> dict[str, list[str]]:
    """``{url: ["rule: help (targets)", …]}`` for every serious or critical violation on each page."""
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    context = browser.new_context(viewport={"width": 1366, "height": 860}, bypass_csp=True)
    context.add_cookies(logged_in.context.cookies())
    page = context.new_page()
    found: dict[str, list[str]] = {}
    try:
        for url in urls:
            page.goto(base + url)
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(300)  # charts drawn after load
            result = axe.run(page)
            bad = [v for v in result.response["violations"] if v.get("impact") in SERIOUS]
            if bad:
                found[url] = [f"{v['id']}: {v['help']} ({[n['target'] for n in v['nodes'][:3]]})" for v in bad]
    finally:
        context.close()
    return found
