"""What the overview page shows: the fleet's state in one look, each number linked to its page.

Every figure is one aggregate query (counts by status, a GROUP BY on the installed version), so
the page costs the same with 100 or 100,000 devices.
"""

import json
from collections import defaultdict
from typing import Any

import plotly.graph_objects as go
from django.core.cache import cache
from django.db.models import Count
from django.utils import timezone

from fleet import services
from fleet.models import Device
from ota.models import Model
from rollout.models import Campaign, CampaignDecision
from telemetry.models import Alert

AUTOMATIC = ["advance", "pause", "rollback", "complete"]  # what the gate job decides (holds are noise)
ACTIVE = [Campaign.State.RUNNING, Campaign.State.PAUSED, Campaign.State.SCHEDULED]


def device_status_counts() -> dict[str, int]:
    now = timezone.now()
    return {
        s: Device.objects.filter(services.status_q(s, now)).count() for s in ("online", "stale", "offline", "never")
    }


def versions_in_use() -> dict[str, list[tuple[str, int]]]:
    """Per model, how many devices report each version installed (largest first)."""
    out: dict[str, list[tuple[str, int]]] = {}
    for name in Model.objects.values_list("name", flat=True):
        key = f"installed__{name}"
        rows = Device.objects.filter(**{f"{key}__isnull": False}).values(key).annotate(n=Count("id")).order_by("-n")
        counts = [(str(r[key]), r["n"]) for r in rows if r[key]]
        if counts:
            out[name] = counts
    return out


def versions_figure(in_use: dict[str, list[tuple[str, int]]]) -> dict | None:
    """A stacked bar per model: devices by installed version."""
    if not in_use:
        return None
    by_version: dict[str, dict[str, int]] = defaultdict(dict)
    for model, counts in in_use.items():
        for label, n in counts:
            by_version[label][model] = n
    models = list(in_use)
    fig = go.Figure(
        [
            go.Bar(name=label, y=models, x=[per.get(m, 0) for m in models], orientation="h")
            for label, per in sorted(by_version.items())
        ]
    )
    fig.update_layout(
        barmode="stack",
        height=120 + 50 * len(models),
        margin={"l": 110, "r": 20, "t": 10, "b": 40},
        xaxis_title="devices",
        legend_title_text="version",
    )
    return json.loads(fig.to_json())


def context() -> dict[str, Any]:
    in_use = versions_in_use()
    demo_status = cache.get("demo:status")
    return {
        "status": device_status_counts(),
        "total_devices": Device.objects.count(),
        "models": Model.objects.count(),
        "in_use": in_use,
        "versions_figure": versions_figure(in_use),
        "campaigns": list(Campaign.objects.filter(state__in=ACTIVE).select_related("version", "model")[:10]),
        "alerts": list(Alert.objects.filter(state=Alert.State.OPEN).select_related("version__model")[:10]),
        "open_alerts": Alert.objects.filter(state=Alert.State.OPEN).count(),
        "decisions": list(
            CampaignDecision.objects.filter(actor_label="system", kind__in=AUTOMATIC).select_related("campaign")[:8]
        ),
        "demo": demo_status,
    }
