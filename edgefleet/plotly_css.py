"""Plotly's own CSS as a static file, so pages can keep a strict ``style-src 'self'``.

plotly.js injects its stylesheet as an inline ``<style>`` element, which a CSP without
``'unsafe-inline'`` blocks; it skips the injection when the page already has an element with id
``plotly.js-style-global`` and class ``no-inline-styles`` (the ``<link>`` in ``templates/base.html``);
the MapLibre code inside the bundle likewise skips its sheet when its element id exists (the
``<meta>`` there). EdgeFleet draws no maps, so MapLibre's sheet (with its ``data:`` images) is left out.
plotly.js also sets a few constant ``style`` attributes; the policy allows exactly those by hash.
The rules live only inside the bundle the Python ``plotly`` package ships, so this module reads them
from there: ``python -m edgefleet.plotly_css`` rewrites ``static/css/plotly.css`` after a plotly upgrade,
and a test fails while the two differ. No Django imports: it runs before settings exist.
"""

import base64
import hashlib
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "static" / "css" / "plotly.css"
# The loop that injects the rules: for(k in RULES)sel=k.replace(/^,/," ,").replace(/X/g,...)...
LOOP = re.compile(
    r'for\((\w+) in (\w+)\)\w+=\1\.replace\(/\^,/," ,"\)'
    r'\.replace\(/X/g,"([^"]+)"\)\.replace\(/Y/g,"([^"]+)"\)'
)


def bundle_path() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _js_string(src: str, i: int) -> tuple[str, int]:
    """The JS string literal starting at ``src[i]`` (a quote) and the index just after it."""
    quote, out, i = src[i], [], i + 1
    while src[i] != quote:
        if src[i] == "\\":
            out.append({"n": "\n", "t": "\t"}.get(src[i + 1], src[i + 1]))
            i += 2
        else:
            out.append(src[i])
            i += 1
    return "".join(out), i + 1


def rules(js: str) -> list[tuple[str, str]]:
    """(selector, declarations) in the order plotly.js leaves them in its sheet."""
    loop = LOOP.search(js)
    if loop is None:
        raise ValueError("plotly.js no longer injects its CSS the way edgefleet/plotly_css.py expects")
    name, x, y = loop.group(2), loop.group(3), loop.group(4)
    start = js.rfind(f"{name}={{", 0, loop.start())
    i = start + len(name) + 2
    found: list[tuple[str, str]] = []
    while js[i] != "}":
        if js[i] in "'\"":
            key, i = _js_string(js, i)
        else:  # an identifier key such as Y:
            key = re.match(r"[\w$]+", js[i:]).group(0)
            i += len(key)
        if js[i] != ":":
            raise ValueError(f"unexpected plotly.js CSS table near {js[i - 40 : i + 40]!r}")
        value, i = _js_string(js, i + 1)
        selector = re.sub(r"^,", " ,", key).replace("X", x).replace("Y", y)
        found.append((selector, value))
        if js[i] == ",":
            i += 1
    # Each rule is inserted at index 0 of the sheet, so the last one ends up first.
    return list(reversed(found))


# Bundled libraries (MapLibre) inject their own sheet unless an element with its id exists.
SELF_INJECTED = re.compile(
    r'if\(!document\.getElementById\("([^"]+)"\)\)\{var (\w+)=document\.createElement\("style"\);'
    r'\2\.id="\1",\2\.textContent='
)


def self_injected(js: str) -> list[tuple[str, str]]:
    """(element id, CSS text) of every sheet a bundled library injects unless that id is taken."""
    found = []
    for m in SELF_INJECTED.finditer(js):
        css, _ = _js_string(js, m.end())
        found.append((m.group(1), css))
    return found


def marker_ids(bundle: Path) -> list[str]:
    """The ids ``templates/base.html`` must carry so that no library injects a <style>."""
    return ["plotly.js-style-global"] + [i for i, _ in self_injected(bundle.read_text(encoding="utf-8"))]


# Inline style attributes plotly.js sets with d3's .attr("style", ...): an empty one on colour-bar
# rectangles, and a fixed image-rendering list on heatmap images (built from CSS_DECLARATIONS).
EMPTY_STYLE = '.attr("style","")'
DECLARATIONS = re.compile(r"CSS_DECLARATIONS=(\[\[.*?\]\]);\w+\.STYLE=\w+\.CSS_DECLARATIONS\.map")


def style_attribute_values(js: str) -> list[str]:
    """The constant ``style`` attribute values plotly.js sets (the CSP allows exactly these)."""
    values = [""] if EMPTY_STYLE in js else []
    found = DECLARATIONS.search(js)
    if found:
        values.append("".join(f"{k}: {v}; " for k, v in json.loads(found.group(1))))
    return values


def style_attribute_hashes(bundle: Path) -> list[str]:
    """CSP source expressions ('sha256-…') for ``style_attribute_values``, for ``style-src-attr``."""
    values = style_attribute_values(bundle.read_text(encoding="utf-8"))
    return [f"'sha256-{base64.b64encode(hashlib.sha256(v.encode()).digest()).decode()}'" for v in values]


def render(bundle: Path) -> str:
    js = bundle.read_text(encoding="utf-8")
    version = re.search(r"plotly\.js v([\w.\-]+)", js[:500])
    made_from = f"plotly.js {version.group(1) if version else '?'}"
    head = f"/* Generated from {made_from} by edgefleet/plotly_css.py; do not edit. */\n"
    return head + "".join(f"{sel}{{{decl}}}\n" for sel, decl in rules(js))


def main() -> None:
    OUT.write_text(render(bundle_path()))
    print(f"wrote {OUT}; templates/base.html needs elements with these ids:", file=sys.stderr)
    for ident in marker_ids(bundle_path()):
        print(f"  {ident}", file=sys.stderr)
    print("and edgefleet/settings.py PLOTLY_STYLE_ATTR_HASHES these:", file=sys.stderr)
    for h in style_attribute_hashes(bundle_path()):
        print(f"  {h}", file=sys.stderr)


if __name__ == "__main__":
    main()
