"""Two versions of a model side by side: the I/O contract diff and the figures each has (pure; no Django)."""

from __future__ import annotations

from typing import Any

ROLES = (("input", "inputs"), ("output", "outputs"))


def _spec(report: dict | None, key: str) -> dict[str, dict]:
    items = (report or {}).get(key)
    return {str(i.get("name")): i for i in items if isinstance(i, dict)} if isinstance(items, list) else {}


def contract_diff(a: dict | None, b: dict | None) -> list[dict[str, Any]]:
    """One row per input/output name of either version: ``change`` is same, changed, added or removed.

    ``added``: only the second version has it; ``removed``: only the first.
    """
    rows = []
    for role, key in ROLES:
        sa, sb = _spec(a, key), _spec(b, key)
        for name in list(sa) + [n for n in sb if n not in sa]:
            x, y = sa.get(name), sb.get(name)
            if x is None:
                change = "added"
            elif y is None:
                change = "removed"
            else:
                same = (x.get("dtype"), x.get("shape")) == (y.get("dtype"), y.get("shape"))
                change = "same" if same else "changed"
            rows.append({"role": role, "name": name, "a": x, "b": y, "change": change})
    return rows


def variant_rows(a: list[dict], b: list[dict]) -> list[dict[str, Any]]:
    """Variants by kind, each side's ``{"size", "metrics"}`` or None."""
    da, db = {v["kind"]: v for v in a}, {v["kind"]: v for v in b}
    return [{"kind": k, "a": da.get(k), "b": db.get(k)} for k in sorted(set(da) | set(db))]


def hardware_rows(a: dict | None, b: dict | None) -> list[dict[str, Any]]:
    """Fleet latency per hardware class of two versions (``telemetry.fleet_latency``), joined by class."""
    ca = {c["hardware"]: c for c in (a or {}).get("classes", [])}
    cb = {c["hardware"]: c for c in (b or {}).get("classes", [])}
    return [{"hardware": h, "a": ca.get(h), "b": cb.get(h)} for h in sorted(set(ca) | set(cb))]
