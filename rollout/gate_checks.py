"""Every gate evaluation, kept, so the campaign page charts what the gate judged when it judged it.

The page used to chart rollup windows: per-window rates that lag the gate by a rollup (the gate reads
raw reports since the wave started). At a rollback its chart showed an error rate of 0.008 while the
gate had judged 0.2384. Now the chart's points are the gate's own numbers (``record`` is called by
the gate job with the numbers it acts on), and the decisions are marked on the same time axis.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from django.utils import timezone

from edgefleet import display
from rollout import gates as gate_logic
from rollout.models import Campaign, CampaignDecision, GateCheck

# What the chart marks on its time axis (holds repeat every evaluation: the points show them).
MARKED = ("start", "advance", "pause", "resume", "rollback", "complete", "abort")
# Charts the page always draws (error rate and p95 latency), then any other configured gate.
ALWAYS = ("error_rate", "latency_p95")
MAX_POINTS = 2000
FIELDS = (
    "canary", "control", "observed", "threshold", "verdict", "n_canary", "n_control", "groups_canary", "groups_control",
)  # fmt: skip


def record(
    campaign_id: int, wave_index: int, at: datetime, numbers: dict[str, Any], comparison: dict[str, Any], k: int
) -> GateCheck | None:
    """Keep one evaluation: the configured gates' public rows, and the other comparisons telemetry made.

    Written only while the campaign is still running that wave, so a beat that raced a decision adds
    no point after it.
    """
    if not Campaign.objects.filter(pk=campaign_id, state=Campaign.State.RUNNING, wave_index=wave_index).exists():
        return None
    rows: dict[str, dict[str, Any]] = {}
    for row in numbers.get("gates") or []:
        rows[str(row.get("name"))] = {**_slim(row), "configured": True}
    others = [
        gate_logic._row(name, gate_logic.DEFAULT_GATES.get(name, math.inf), result)
        for name, result in (comparison or {}).items()
        if name in gate_logic.GATES and name not in rows
    ]
    for row in gate_logic.public_rows([vars(r) for r in others], k):
        rows[str(row["name"])] = {**_slim(row), "configured": False}
    return GateCheck.objects.create(
        campaign_id=campaign_id, at=at, wave=wave_index + 1, verdict=str(numbers.get("verdict", "")), gates=rows
    )


def _slim(row: dict[str, Any]) -> dict[str, Any]:
    return {f: row.get(f) for f in FIELDS}


def _public(row: Any, name: str, k: int) -> dict[str, Any]:
    """A stored check's row as it may be shown under today's k: a check recorded while k was smaller
    (or before numbers were hidden) must not show numbers from fewer devices than k now allows."""
    rows = gate_logic.public_rows([{**row, "name": name}] if isinstance(row, dict) else [], k)
    return rows[0] if rows else {}


TITLES = {
    "error_rate": "Error rate (errors per inference)",
    "latency_p95": "Latency p95 (ms)",
    "latency_p50": "Latency p50 (ms)",
    "drift": "Drift (PSI of the worst feature)",
    "install_failure_rate": "Install failures (share of canary devices)",
}


def chart_names(campaign: Campaign) -> list[str]:
    """The gates the page charts: error rate and p95 latency always, then every other configured gate."""
    names = list(ALWAYS)
    return names + [n for n in campaign.gates if n in gate_logic.GATES and n not in names]


def chart_titles(campaign: Campaign) -> list[tuple[str, str]]:
    return [(name, TITLES.get(name, name)) for name in chart_names(campaign)]


def chart(campaign: Campaign) -> dict[str, Any]:
    """Per gate, the canary's and the control's numbers at each check; the decisions with their times.

    ``last`` per gate is the most recent check's numbers: the figures a decision acted on, which the
    gate table shows too.
    """
    from rollout.evaluation import min_cohort  # evaluation records checks: imported here, not at the top

    k = min_cohort()
    checks = list(campaign.gate_checks.order_by("-at", "-id")[:MAX_POINTS])[::-1]
    if campaign.finished_at is not None:
        checks = [c for c in checks if c.at <= campaign.finished_at]
    gates = []
    for name in chart_names(campaign):
        pts = [(c, _public(c.gates[name], name, k)) for c in checks if isinstance(c.gates, dict) and c.gates.get(name)]
        series = {
            "x": [local_iso(c.at) for c, _ in pts],
            "canary": [_finite(r.get("canary")) for _, r in pts],
            "control": [_finite(r.get("control")) for _, r in pts],
            "observed": [_finite(r.get("observed")) for _, r in pts],
            "verdict": [r.get("verdict") for _, r in pts],
        }
        last = pts[-1] if pts else None
        gates.append(
            {
                "name": name,
                "title": TITLES.get(name, name),
                "meaning": gate_logic.meaning(name),
                "configured": name in campaign.gates,
                "threshold": campaign.gates.get(name),
                "unit": "ms" if name.startswith("latency") else ("PSI" if name == "drift" else "share"),
                "series": series,
                "last": {"at": local_iso(last[0].at), **_slim(last[1])} if last else None,
            }
        )
    decisions = [
        {"at": local_iso(d.at), "kind": d.kind, "actor": d.actor_label, "reason": d.reason}
        for d in CampaignDecision.objects.filter(campaign=campaign, kind__in=MARKED).order_by("at", "id")
    ]
    labels = list(campaign.model.versions.order_by("created_at", "id").values_list("label", flat=True))
    return {
        "colours": display.colours(labels),
        "gates": gates,
        "decisions": decisions,
        "versions": {
            "canary": campaign.version.label,
            "control": campaign.previous_version.label if campaign.previous_version else None,
        },
        "checks": len(checks),
    }


def local_iso(at: datetime) -> str:
    """A time as the page shows it (the operator's zone), without an offset: Plotly ignores offsets
    and would draw UTC beside tables in local time."""
    return timezone.localtime(at).replace(tzinfo=None).isoformat(timespec="seconds")


def _finite(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
