"""Telemetry pages: one model version's drift and health, and the alert list."""

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.audit import record
from accounts.roles import operator_required, viewer_required
from ota.models import ModelVersion
from telemetry import charts, services
from telemetry.models import Alert


@viewer_required
def version_telemetry(request: HttpRequest, version_id: int) -> HttpResponse:
    get_object_or_404(ModelVersion, pk=version_id)
    data = services.version_overview(version_id, request.GET.get("feature"))
    figures = {
        "drift": charts.drift_over_time(data["drift_series"]),
        "overlay": charts.overlay(data["overlay"]),
        "heatmap": charts.heatmap(data["heat"]),
        "health": charts.health(data["health"]),
    }
    return render(request, "telemetry/version.html", {**data, "figures": figures})


@viewer_required
def alert_list(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "open")
    qs = Alert.objects.select_related("version__model")
    if state in {"open", "resolved"}:
        qs = qs.filter(state=state)
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
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
