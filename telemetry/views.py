"""Telemetry pages: one model version's drift and health, the alert list, a model's privacy settings."""

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.audit import record
from accounts.roles import OPERATOR, has_role, operator_required, viewer_required
from edgefleet import display
from ota.models import Model, ModelVersion
from ota.names import class_names, feature_names, label
from telemetry import charts, policy, services
from telemetry import detectability as det
from telemetry.models import Alert, PrivacyLedger


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


def day_mean_text(mean: dict) -> str:
    """The day's mean-shift test in words: "+0.41σ (z 3.2, alarm above 2.58)"."""
    z = mean["z"]
    z_text = ("above 10⁸" if z > 0 else "below −10⁸") if abs(z) >= 1e8 else f"{z:.1f}"
    return f"{mean['shift']:+.2f}σ (z {z_text}, alarm above {mean['level']:.2f})"


def text_alternatives(data: dict, names: dict[str, str]) -> dict:
    """The charts' key numbers as tables (what a screen reader, or a person who wants the figures, reads)."""
    drift = []
    for feature, pts in data["drift_series"].items():
        if pts:
            at, psi, level, sums = pts[-1]
            mean = data.get("drift_mean", {}).get(feature)
            drift.append(
                {
                    "feature": label(feature, names),
                    "at": at,
                    "psi": psi,
                    "level": level,
                    "n": len(pts),
                    "sums": sums,
                    "mean": day_mean_text(mean) if mean else "",
                }
            )
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
        at, err, p50, p95, sums = pts[-1]
        health.append(
            {"version": version, "at": at, "error_rate": err, "p50": p50, "p95": p95, "n": len(pts), "sums": sums}
        )
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


def _plan_fleet(request: HttpRequest, actual: int) -> int:
    """The fleet size the figures are for: the model's own, or a size the operator plans for."""
    raw = request.GET.get("fleet") or request.POST.get("plan_fleet") or ""
    try:
        planned = int(raw)
    except ValueError:
        planned = 0
    if 0 < planned <= 10_000_000:
        return planned
    return actual if actual >= det.MIN_GROUP else 1000


def _privacy_payload(model: Model, values: dict, fleet: int) -> dict:
    """Figures, guarantee and verdict for ``values`` over ``fleet`` devices (the page and the preview)."""
    s, verdict = policy.check(model, values, fleet)
    payload: dict = {"values": values, "ok": verdict.ok, "problems": [], "nearest": None}
    if not verdict.ok:
        err = policy.refusal(values, s, verdict)
        payload.update(problems=[{"field": f, "reason": r} for f, r in err.problems], nearest=err.nearest)
        s = verdict.nearest or s
    payload["figures"] = policy.figures(s)
    payload["text"] = policy.texts(payload["figures"])
    payload["guarantee"] = policy.guarantee(s).sentence
    payload["figures_for_nearest"] = not verdict.ok
    return payload


@viewer_required
def model_privacy(request: HttpRequest, name: str) -> HttpResponse:
    """A model's privacy settings: the guarantee, both budgets, what they let the fleet detect."""
    model = get_object_or_404(Model, name=name)
    actual = policy.fleet_size(model)
    values, error, status = policy.stored_values(model), None, 200
    if request.method == "POST":
        if not has_role(request.user, OPERATOR):
            return HttpResponse("Only an operator can change privacy settings.", status=403)
        try:
            saved = policy.save_policy(model, request.POST, by=request.user.get_username())
        except policy.PolicyError as exc:
            error, status = exc, 400
            values = {**values, **{k: request.POST.get(k, v) for k, v in values.items()}}
        else:
            record("telemetry.privacy.save", saved, request=request, details={"model": model.name, **values})
            return redirect("model-privacy", name=model.name)
    try:
        clean = policy.parse(values, policy.defaults())
    except policy.PolicyError:
        clean = policy.stored_values(model)
    fleet = _plan_fleet(request, actual)
    payload = _privacy_payload(model, clean, fleet)
    ledger = Paginator(
        PrivacyLedger.objects.filter(device__installed__has_key=model.name)
        .select_related("device")
        .order_by("-day", "-spent", "device_id"),
        50,
    ).get_page(request.GET.get("page"))
    context = {
        "model": model,
        "values": values,
        "actual_fleet": actual,
        "fleet": fleet,
        "payload": payload,
        "figures": payload["figures"],
        "error": error,
        "ledger": ledger,
        "min_cohort": det.MIN_GROUP,
        "curve_rows": _curve_rows(payload["figures"]["curve"]),
    }
    return render(request, "telemetry/privacy.html", context, status=status)


def _curve_rows(curve: dict) -> list[tuple]:
    def fmt(v: float | None) -> str | None:
        return f"{v:.2f}" if v is not None else None

    return [(f"{e:g}", fmt(d), fmt(h)) for e, d, h in zip(curve["epsilon"], curve["day"], curve["hour"], strict=True)]


@viewer_required
def model_privacy_preview(request: HttpRequest, name: str) -> JsonResponse:
    """The figures for values not yet saved (the page refreshes them as the operator types)."""
    model = get_object_or_404(Model, name=name)
    try:
        values = policy.parse(request.GET, policy.stored_values(model))
    except policy.PolicyError as exc:
        return JsonResponse({"ok": False, "problems": [{"field": f, "reason": r} for f, r in exc.problems]}, status=400)
    return JsonResponse(_privacy_payload(model, values, _plan_fleet(request, policy.fleet_size(model))))
