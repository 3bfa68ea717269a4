"""Telemetry pages: one model version's drift and health, and the alert list."""

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.audit import record
from accounts.roles import operator_required, viewer_required
from edgefleet import display
from ota.models import ModelVersion
from ota.names import class_names, feature_names, label
from telemetry import charts, services
from telemetry.models import Alert


@viewer_required
def version_telemetry(request: HttpRequest, version_id: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=version_id)
    data = services.version_overview(version_id, request.GET.get("feature"))
    names = feature_names(version.report)
    labels = list(version.model.versions.order_by("created_at", "id").values_list("label", flat=True))
    colours = display.colours(labels)
    figures = {
        "drift": charts.drift_over_time(data["drift_series"], names),
        "overlay": charts.overlay(data["overlay"], names, class_names(version.report)),
        "heatmap": charts.heatmap(data["heat"], names),
        "health": charts.health(data["health"], colours),
    }
    context = {
        **data,
        "figures": figures,
        "feature_options": [(f, label(f, names)) for f in data["features"]],
        "feature_label": label(data["feature"], names),
        "tables": text_alternatives(data, names),
        "colours": colours,
    }
    for a in data["alerts"]:
        a.feature_label = label(a.feature, names) if a.feature else ""
    return render(request, "telemetry/version.html", context)


def text_alternatives(data: dict, names: dict[str, str]) -> dict:
    """The charts' key numbers as tables (what a screen reader, or a person who wants the figures, reads)."""
    drift = []
    for feature, pts in data["drift_series"].items():
        if pts:
            at, psi, level = pts[-1]
            drift.append({"feature": label(feature, names), "at": at, "psi": psi, "level": level, "n": len(pts)})
    overlay = []
    o = data["overlay"]
    if o and o["current"]:
        edges, ref = o["edges"], o["reference"] or []
        for i, share in enumerate(o["current"]):
            where = f"{edges[i]:.3g} to {edges[i + 1]:.3g}" if edges else f"class {i}"
            overlay.append({"bin": where, "reference": ref[i] if i < len(ref) else None, "current": share})
    heat = data["heat"]
    heat_rows = [
        {"cohort": c, "cells": [heat["values"].get((c, f)) for f in heat["features"]]} for c in heat["cohorts"]
    ]
    health = []
    for version, pts in data["health"].items():
        at, err, p50, p95 = pts[-1]
        health.append({"version": version, "at": at, "error_rate": err, "p50": p50, "p95": p95, "n": len(pts)})
    return {
        "drift": drift,
        "overlay": overlay,
        "heat_features": [names.get(f, f) for f in heat["features"]],
        "heat_rows": heat_rows,
        "health": health,
    }


@viewer_required
def alert_list(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "open")
    qs = Alert.objects.select_related("version__model")
    if state in {"open", "resolved"}:
        qs = qs.filter(state=state)
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    for a in page:
        a.feature_label = label(a.feature, feature_names(a.version.report)) if a.feature else ""
    return render(request, "telemetry/alerts.html", {"page": page, "state": state})


@require_POST
@operator_required
def alert_resolve(request: HttpRequest, alert_id: int) -> HttpResponse:
    get_object_or_404(Alert, pk=alert_id)
    alert = services.resolve_alert(alert_id, by=request.user.get_username())
    record("telemetry.alert.resolve", alert, request=request, details={"alert": alert.pk, "numbers": alert.numbers})
    nxt = request.POST.get("next", "")
    safe = url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}, require_https=request.is_secure())
    return redirect(nxt if safe else "telemetry-alerts")
