"""How values read on a page: plain text for people, never a Python repr (pure; no Django).

Pages show values that come from JSON columns (audit details, device events, hardware, validation
reports); printed with ``{{ value }}`` a dict reads ``{'previous': None}`` and a list
``['batch', 4]``. These functions turn any such value into text a person reads, and sizes and counts
into the units they are in. ``edgefleet.templatetags`` makes them template filters on every page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

# Nested values longer than this are folded away on a page (``pairs``): a gate report in an audit
# entry is a paragraph, not a cell.
LONG = 120


def number(value: float | int) -> str:
    """Thousands separators for whole numbers, four significant decimals at most for others."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "—" if math.isnan(value) else ("∞" if value > 0 else "−∞")
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    text = f"{value:.4g}"
    return text if "e" not in text else f"{value:.3e}"


def plain(value: Any) -> str:
    """Any JSON-like value as text: ``None`` → "—", lists joined, mappings as ``key value`` pairs."""
    if value is None:
        return "—"
    if isinstance(value, bool | int | float):
        return number(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return " · ".join(f"{k} {plain(v)}" for k, v in value.items()) or "—"
    if isinstance(value, list | tuple | set | frozenset):
        items = [plain(v) for v in value]
        if any(isinstance(v, Mapping) for v in value):
            return "; ".join(f"({i})" for i in items) or "—"
        return ", ".join(items) or "—"
    return str(value)


def shape(value: Any) -> str:
    """A tensor shape as people write it: ``[batch, 4]`` → "batch × 4"."""
    if isinstance(value, list | tuple):
        return " × ".join(plain(d) if d not in (None, "") else "?" for d in value) or "scalar"
    return plain(value)


def pairs(value: Any) -> list[tuple[str, str, bool]]:
    """``(key, text, long)`` for each top-level entry of a mapping; ``long`` entries fold on the page."""
    if not isinstance(value, Mapping):
        text = plain(value)
        return [("", text, len(text) > LONG)] if value not in (None, "", {}, []) else []
    out = []
    for k, v in value.items():
        text = plain(v)
        out.append((str(k), text, len(text) > LONG))
    return out


_UNITS = ["bytes", "KiB", "MiB", "GiB", "TiB"]


def size(n: Any) -> str:
    """Bytes in binary units, named as such: 324,000,121 bytes is "309.0 MiB" (not "309.0 MB")."""
    try:
        b = float(n)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(b) or b < 0:
        return "—"
    if b < 1024:
        return f"{int(b):,} byte{'s' if int(b) != 1 else ''}"
    i = min(int(math.log(b, 1024)), len(_UNITS) - 1)
    return f"{b / 1024**i:,.1f} {_UNITS[i]}"


def short_hash(value: Any, keep: int = 12) -> str:
    """The first ``keep`` hex digits of a digest (the full one goes in a title and the copy button)."""
    text = str(value or "")
    return text if len(text) <= keep + 1 else text[:keep] + "…"


_SAFE_NAME = re.compile(r"[^\w .:/+\-()]", re.UNICODE)


def safe_label(text: Any, limit: int = 40) -> str:
    """A name from an uploaded model's metadata, fit for a chart label.

    Plotly reads a few HTML tags in labels (``<a href>``, ``<b>``); names come from whoever uploaded
    the model, so anything but word characters, spaces and ``.:/+-()`` is dropped, and the length
    is capped.
    """
    cleaned = " ".join(_SAFE_NAME.sub("", str(text or "")).split())
    return cleaned[:limit]


# One colour per version on every chart of a page (Okabe–Ito, told apart with colour-blindness too),
# given in the order versions were made, so v1 has the same colour on every page of its model.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#44AA99"]


def colours(labels: list[str]) -> dict[str, str]:
    """``{label: colour}`` for labels in the order they were made (repeats keep their first colour)."""
    out: dict[str, str] = {}
    for label in labels:
        if label not in out:
            out[label] = PALETTE[len(out) % len(PALETTE)]
    return out


def percent(share: Any, digits: int = 1) -> str:
    """A share (0.0543) as a percentage ("5.4%"); "—" when it is not a number."""
    try:
        value = float(share)
    except (TypeError, ValueError):
        return "—"
    return f"{value * 100:.{digits}f}%" if math.isfinite(value) else "—"
