"""What the overview page shows: the fleet's state in one look, each number linked to its page.

Every figure is one aggregate query. The device total and the versions in use come from the kept
counts on PostgreSQL (``fleet.kept``: per profile, no device read); the status counts are index
range counts on ``last_seen_at``.
"""

import time
from collections import defaultdict
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count
from django.utils import timezone

from edgefleet import display
from fleet import kept, services
from fleet.models import Device
from ota import names as ota_names
from ota.models import Model, ModelVersion
from rollout.models import Campaign, CampaignDecision
from telemetry.models import Alert

AUTOMATIC = ["advance", "pause", "rollback", "complete"]  # what the gate job decides (holds are noise)
ACTIVE = [Campaign.State.RUNNING, Campaign.State.PAUSED, Campaign.State.SCHEDULED]


STATUS_KEY = "fleet:status-counts"


def kept_status_above() -> int:
    """Fleets of at least this many devices read the status counts the beat job kept (with their age)."""
    return int(getattr(settings, "EDGEFLEET_STATUS_KEPT_ABOVE", 50_000))


def count_statuses() -> dict[str, int]:
    """Count the statuses now and keep them for the overview (beat: ``fleet.tasks.count_statuses``)."""
    counts = device_status_counts()
    cache.set(STATUS_KEY, {"counts": counts, "at": time.time()}, 3600)
    return counts


def status_counts(total: int) -> tuple[dict[str, int], float | None]:
    """``(counts, seconds since counted)``; the age is None when counted now for this request.

    The four counts are index range counts on ``last_seen_at``: together they read an index entry
    per device (about a second at 1,000,000 on a busy 2-core machine). Statuses change with time,
    not with writes, so they cannot be kept by the trigger; above ``kept_status_above()`` devices the
    page reads the figure the beat job counted, and says how old it is.
    """
    if total < kept_status_above():
        return device_status_counts(), None
    got = cache.get(STATUS_KEY)
    if got is None:
        return count_statuses(), 0.0
    return got["counts"], max(0.0, time.time() - float(got["at"]))


def device_status_counts() -> dict[str, int]:
    now = timezone.now()
    return {
        s: Device.objects.filter(services.status_q(s, now)).count() for s in ("online", "stale", "offline", "never")
    }


def versions_in_use(totals: list[tuple[kept.Profile, int]] | None = None) -> dict[str, list[tuple[str, int]]]:
    """Per model, how many devices report each version installed (largest first).

    ``totals``: the kept per-profile totals when the caller read them already."""
    out: dict[str, list[tuple[str, int]]] = {}
    names = list(Model.objects.values_list("name", flat=True))
    if kept.available():
        by_model = kept.installed_counts(names, totals)
        for name in names:
            counts = sorted(by_model.get(name, {}).items(), key=lambda kv: (-kv[1], kv[0]))
            if counts:
                out[name] = counts
        return out
    for name in names:
        key = f"installed__{name}"
        rows = Device.objects.filter(**{f"{key}__isnull": False}).values(key).annotate(n=Count("id")).order_by("-n")
        counts = [(str(r[key]), r["n"]) for r in rows if r[key]]
        if counts:
            out[name] = counts
    return out


def version_order() -> list[str]:
    """Version labels in the order they were made: the order colours are handed out on every page."""
    return list(ModelVersion.objects.order_by("created_at", "id").values_list("label", flat=True))


def versions_figure(in_use: dict[str, list[tuple[str, int]]], order: list[str] | None = None) -> dict | None:
    """A stacked bar per model: devices by installed version, one colour per version as on every page."""
    if not in_use:
        return None
    by_version: dict[str, dict[str, int]] = defaultdict(dict)
    for model, counts in in_use.items():
        for version, n in counts:
            by_version[version][model] = n
    models = list(in_use)
    known = order or []
    palette = display.colours(known + sorted(by_version))
    labels = sorted(by_version, key=lambda x: (known.index(x) if x in known else len(known), x))
    # A plain dict in Plotly's JSON form: graph_objects validation costs more than the queries here.
    bars = [
        {
            "type": "bar",
            "name": version,
            "y": models,
            "x": [by_version[version].get(m, 0) for m in models],
            "orientation": "h",
            "marker": {"color": palette[version]},
            "hovertemplate": "%{y} " + version + ": %{x:,} devices<extra></extra>",
        }
        for version in labels
    ]
    layout = {
        "barmode": "stack",
        "height": 120 + 50 * len(models),
        "margin": {"l": 110, "r": 20, "t": 10, "b": 40},
        "xaxis": {"title": {"text": "devices"}, "tickformat": ","},
        "legend": {"title": {"text": "version"}, "traceorder": "normal"},
        "showlegend": True,
    }
    return {"data": bars, "layout": layout}


def in_use_rows(in_use: dict[str, list[tuple[str, int]]]) -> list[dict[str, Any]]:
    """``in_use`` with each version's id, so the page links its devices and its telemetry."""
    ids = {
        (m, label): pk
        for pk, m, label in ModelVersion.objects.filter(model__name__in=list(in_use)).values_list(
            "pk", "model__name", "label"
        )
    }
    return [
        {"model": m, "versions": [{"label": label, "n": n, "id": ids.get((m, label))} for label, n in counts]}
        for m, counts in in_use.items()
    ]


def model_counts() -> dict[str, int]:
    """Models with a version that is not rejected, and models whose every upload was rejected.

    The overview's "N models" is the first, and the models page says both the same way.
    """
    usable = Model.objects.filter(versions__in=ModelVersion.objects.exclude(status=ModelVersion.Status.REJECTED))
    n_usable = usable.distinct().count()
    return {"usable": n_usable, "rejected_only": Model.objects.count() - n_usable}


def named(alerts: list[Alert]) -> list[Alert]:
    """Alerts with their feature as the model names it (``rms (input[0])``)."""
    for a in alerts:
        a.feature_label = ota_names.label(a.feature, ota_names.feature_names(a.version.report)) if a.feature else ""
    return alerts


def context() -> dict[str, Any]:
    totals = kept.totals_by_profile() if kept.available() else None  # one read for the two figures
    in_use = versions_in_use(totals)
    total = sum(n for _, n in totals) if totals is not None else Device.objects.count()
    status, status_age = status_counts(total)
    demo_status = cache.get("demo:status")
    campaigns = list(Campaign.objects.filter(state__in=ACTIVE).select_related("version", "model")[:10])
    return {
        "status": status,
        "status_age": status_age,
        "total_devices": total,
        "models": model_counts(),
        "in_use": in_use,
        "in_use_rows": in_use_rows(in_use),
        "versions_figure": versions_figure(in_use, version_order()),
        "campaigns": campaigns,
        "active": dict(
            Campaign.objects.filter(state__in=ACTIVE).values_list("state").annotate(n=Count("id")).order_by()
        ),
        "alerts": named(list(Alert.objects.filter(state=Alert.State.OPEN).select_related("version__model")[:10])),
        "open_alerts": Alert.objects.filter(state=Alert.State.OPEN).count(),
        "decisions": list(
            CampaignDecision.objects.filter(actor_label="system", kind__in=AUTOMATIC).select_related("campaign")[:8]
        ),
        "demo": demo_status,
    }
