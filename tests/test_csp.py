"""The Content-Security-Policy: only the project's own scripts, styles, images and connections, inline
scripts only with the per-response nonce, no inline event handlers or style attributes anywhere in the
templates (so any page, including ones no browser test opens, keeps working under the policy)."""

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from edgefleet import plotly_css

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = sorted((ROOT / "templates").rglob("*.html"))


def directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_the_policy_allows_only_our_own_origin(operator_client: Client) -> None:
    response = operator_client.get("/campaigns/new/")
    policy = directives(response["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["form-action"] == ["'self'"]
    assert policy["style-src"] == policy["style-src-elem"] == ["'self'"]
    assert policy["style-src-attr"] == ["'unsafe-hashes'", *settings.PLOTLY_STYLE_ATTR_HASHES]
    assert policy["img-src"] == ["'self'", "data:"]  # Plotly draws heatmaps as PNG data URLs
    scripts = policy["script-src"]
    assert scripts[0] == "'self'" and len(scripts) == 2 and scripts[1].startswith("'nonce-")
    everything = " ".join(w for words in policy.values() for w in words if not w.startswith("'sha256-"))
    assert "unsafe-inline" not in everything and "unsafe-eval" not in everything and "*" not in everything
    assert "http:" not in everything and "https:" not in everything


def test_each_inline_script_carries_this_responses_nonce(operator_client: Client) -> None:
    pages = [operator_client.get("/campaigns/new/"), operator_client.get("/campaigns/new/")]
    nonces = []
    for response in pages:
        nonce = re.search(r"'nonce-([^']+)'", response["Content-Security-Policy"]).group(1)
        html = response.content.decode()
        inline = re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)([^>]*)>", html)
        assert inline, "the page has an inline script to check"
        assert all(f'nonce="{nonce}"' in attrs for attrs in inline), inline
        nonces.append(nonce)
    assert nonces[0] != nonces[1]  # a fresh nonce per response


INLINE_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.I)
STYLE_ATTR = re.compile(r"<[^>]*\sstyle\s*=", re.I)
JS_URL = re.compile(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", re.I)
SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.I)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT / "templates")))
def test_templates_use_nothing_the_policy_forbids(path: Path) -> None:
    text = path.read_text()
    assert not INLINE_HANDLER.search(text), "inline event handler: bind it in static/js instead"
    assert not STYLE_ATTR.search(text), "style attribute: use a class in static/css instead"
    assert not JS_URL.search(text), "javascript: URL"
    for attrs in SCRIPT_TAG.findall(text):
        ok = "src=" in attrs or "application/json" in attrs or 'nonce="{{ request.csp_nonce }}"' in attrs
        assert ok, f"inline <script{attrs}> without the nonce"


def test_plotly_stylesheet_is_the_one_the_bundle_would_inject() -> None:
    """Plotly injects its CSS as an inline <style> unless the page links it (a strict style-src forbids
    the injection); the linked copy must be exactly what the installed plotly.js would inject."""
    shipped = (ROOT / "static" / "css" / "plotly.css").read_text()
    assert shipped == plotly_css.render(plotly_css.bundle_path()), (
        "static/css/plotly.css is out of date with the installed plotly: python -m edgefleet.plotly_css"
    )


def test_pages_carry_every_marker_that_stops_plotly_injecting_styles(operator_client: Client) -> None:
    html = operator_client.get("/").content.decode()
    assert re.search(r'<link[^>]*id="plotly.js-style-global"[^>]*class="no-inline-styles"', html)
    assert settings.STATIC_URL + "css/plotly.css" in html or "/static/css/plotly.css" in html
    for ident in plotly_css.marker_ids(plotly_css.bundle_path()):
        assert f'id="{ident}"' in html, f"templates/base.html needs an element with id {ident} (plotly upgrade?)"


def test_the_style_attributes_allowed_by_hash_are_the_ones_plotly_sets() -> None:
    assert plotly_css.style_attribute_hashes(plotly_css.bundle_path()) == settings.PLOTLY_STYLE_ATTR_HASHES, (
        "plotly.js sets other style attributes now: python -m edgefleet.plotly_css prints the hashes"
    )
