"""How a device event's details read on a page: plain ``key value`` text, and for a fallback its rule only.

A ``fell_back`` event says which rule of the device's local guard decided and that rule's limits
(``{"rule": "error_rate", "threshold": 0.5, "to": "v1"}``). Agents before that change also sent the
error rate and latency they observed (``numbers``, and quoted in ``reason``): exact, un-noised
measurements of one device's inferences, so the page keeps to the rule whatever an agent sends.
"""

from __future__ import annotations

import re
from typing import Any

from edgefleet.display import plain, short_hash

FELL_BACK_KEYS = ("rule", "threshold", "ratio", "margin", "margin_ms", "to", "at_start")


DIGEST = re.compile(r"^[0-9a-f]{40,128}$")


def text(value: Any) -> str:
    """Plain text for a page (``edgefleet.display.plain``): never a Python repr or raw JSON; a digest
    shortened (the version page has it whole, with a copy button)."""
    if isinstance(value, str) and DIGEST.match(value):
        return short_hash(value)
    return plain(value)


def detail_pairs(kind: str, details: Any) -> list[tuple[str, str]]:
    """``[(key, text)]`` to show for one event's details."""
    if not isinstance(details, dict):
        return []
    if kind == "fell_back":
        keys = [k for k in FELL_BACK_KEYS if k in details]
        if details.get("at_start") is True and "reason" in details:
            keys.append("reason")  # a file check at start: the note names versions, nothing observed
        return [(k, text(details[k])) for k in keys]
    return [(str(k), text(v)) for k, v in details.items()]
