"""Campaign pages: list, creation form with a live dry run, the campaign page and its actions.

Views only parse the request and call the rollout services (``lifecycle``, ``targeting``, ``progress``,
``charts``); refusals come back as messages.
"""

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.roles import operator_required, viewer_required
from fleet.models import Cohort
from ota import aliases
from ota.models import ModelVersion
from rollout import gate_checks, lifecycle, moves, outcome, placement, targeting, variant_rule, waiting
from rollout import gates as gate_logic
from rollout import windows as window_rules
from rollout.charts import chart_series
from rollout.evaluation import min_cohort
from rollout.models import Campaign
from rollout.progress import install_progress
from telemetry import quarantine
from telemetry.models import Quarantine

DEFAULT_WAVES_TEXT = "5, 30, 20\n25, 30, 50\n100, 60, 100"


def _campaign_form_values(data: Any) -> dict[str, Any]:
    """Turn the form's fields into ``create_campaign`` arguments (raises CampaignError on bad input)."""
    CampaignError = lifecycle.CampaignError
    version = aliases.from_form(data.get("version") or "")  # a version id, or "model@alias"
    if version is None:
        raise CampaignError("Choose a staged version to roll out.")
    cohort = None
    if data.get("cohort"):
        try:
            cohort = Cohort.objects.get(pk=int(data["cohort"]))
        except (ValueError, Cohort.DoesNotExist) as exc:
            raise CampaignError("That cohort does not exist.") from exc
    previous = None
    if data.get("previous_version"):
        previous = aliases.from_form(data["previous_version"])
        if previous is None:
            raise CampaignError("That previous version does not exist.")
    gates: dict[str, str] = {}
    for name in gate_logic.GATES:
        value = (data.get(f"gate_{name}") or "").strip()
        if value:
            gates[name] = value
    try:
        float_gates = {k: float(v) for k, v in gates.items()}
    except ValueError as exc:
        raise CampaignError("Gate thresholds must be numbers.") from exc
    requirements = {}
    if (data.get("provider") or "").strip():
        requirements["provider"] = data["provider"].strip()
    reserved = data.get("reserved_id")
    try:
        windows = [w.as_dict() for w in window_rules.parse_windows(_lines(data.get("windows", "")))]
        window_tz = window_rules.validate_tz_mode((data.get("window_tz") or "").strip() or window_rules.DEVICE_TZ)
    except window_rules.WindowError as exc:
        raise CampaignError(str(exc)) from exc
    conditions = {
        key: value
        for field, (key, value) in {
            "require_power": ("power", "external"),
            "require_unmetered": ("network", "unmetered"),
            "require_idle": ("idle", True),
        }.items()
        if data.get(field)
    }
    try:
        commit_minutes = float(data.get("commit_minutes") or 60)
    except ValueError as exc:
        raise CampaignError("Commit within must be a number of minutes.") from exc
    return {
        "name": data.get("name", ""),
        "version": version,
        "cohort": cohort,
        "waves": lifecycle.parse_waves(data.get("waves", "")),
        "gates": float_gates,
        "on_failure": data.get("on_failure", "rollback"),
        "previous_version": previous,
        "requirements": requirements,
        "reserved_id": int(reserved) if str(reserved or "").isdigit() else None,
        "windows": windows,
        "window_tz": window_tz,
        "conditions": conditions,
        "commit_minutes": commit_minutes,
    }


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


@viewer_required
def campaign_list(request: HttpRequest) -> HttpResponse:
    rows = Campaign.objects.select_related("model", "version", "previous_version", "cohort")
    state = request.GET.get("state")
    if state in Campaign.State.values:
        rows = rows.filter(state=state)
    return render(
        request, "rollout/campaign_list.html", {"campaigns": rows[:200], "states": Campaign.State, "state": state}
    )


@operator_required
def campaign_new(request: HttpRequest) -> HttpResponse:
    context: dict[str, Any] = {
        "versions": ModelVersion.objects.filter(status=ModelVersion.Status.STAGED).select_related("model"),
        "all_versions": ModelVersion.objects.exclude(status=ModelVersion.Status.REJECTED).select_related("model"),
        "alias_choices": aliases.choices(),
        "cohorts": Cohort.objects.all(),
        "gates": [(name, text, default) for name, (text, default) in gate_logic.GATES.items()],
        "form": {"waves": DEFAULT_WAVES_TEXT, "on_failure": "rollback"},
    }
    if request.method == "POST":
        context["form"] = request.POST
        context["gates"] = [(n, text, request.POST.get(f"gate_{n}", "")) for n, text, _ in context["gates"]]
        try:
            campaign = lifecycle.create_campaign(
                **_campaign_form_values(request.POST), user=request.user, request=request
            )
        except lifecycle.CampaignError as err:
            context["error"] = str(err)
            context["reserved_id"] = request.POST.get("reserved_id")
            return render(request, "rollout/campaign_new.html", context, status=400)
        messages.success(request, f"Campaign “{campaign.name}” created as a draft. Check the dry run, then start it.")
        return redirect("campaign-detail", campaign.pk)
    context["reserved_id"] = lifecycle.reserve_campaign_id()
    return render(request, "rollout/campaign_new.html", context)


@operator_required
def campaign_preview(request: HttpRequest) -> HttpResponse:
    """The dry-run fragment for the creation form (refreshed as the operator types)."""
    try:
        values = _campaign_form_values(request.GET)
        problems = placement.validate_waves(values["waves"])
        if problems:
            raise lifecycle.CampaignError(" ".join(problems))
        dry = targeting.dry_run(
            version=values["version"],
            cohort=values["cohort"],
            waves=values["waves"],
            campaign_id=values["reserved_id"],
            requirements=values["requirements"],
            cached=True,
        )
        waiting_now = waiting.plan_waiting(
            version=values["version"],
            cohort=values["cohort"],
            requirements=values["requirements"],
            windows=values["windows"],
            window_tz=values["window_tz"],
            conditions=values["conditions"],
            campaign_id=values["reserved_id"],
        )
    except lifecycle.CampaignError as err:
        return render(request, "rollout/campaign_dry_run.html", {"error": str(err)})
    context = {"dry": dry, "reasons": _reasons(dry.excluded), "variant_rule": variant_rule.RULE, "waiting": waiting_now}
    return render(request, "rollout/campaign_dry_run.html", context)


def _reasons(excluded: dict[str, int]) -> list[tuple[str, str, int]]:
    return [(k, placement.REASON_TEXT.get(k, k), n) for k, n in sorted(excluded.items())]


def _detail_context(campaign: Campaign) -> dict[str, Any]:
    waves = []
    for i, w in enumerate(campaign.waves):
        status = "done" if i < campaign.wave_index else ("current" if i == campaign.wave_index else "next")
        if campaign.state == Campaign.State.COMPLETED:
            status = "done"
        waves.append({**w, "number": i + 1, "status": status})
    progress = install_progress(campaign, cached=True) if campaign.wave_index >= 0 else None
    k = min_cohort()
    decisions = list(campaign.decisions.all()[:100])
    for d in decisions:  # numbers below k stay hidden, even in decisions stored before they were hidden
        d.public_gates = gate_logic.public_rows((d.numbers or {}).get("gates"), k)
    gate_rows = gate_logic.public_rows((campaign.gate_report or {}).get("gates", []), k)
    for row in gate_rows:
        row["meaning"] = gate_logic.meaning(str(row.get("name")))
    return {
        "campaign": campaign,
        "waves": waves,
        "stopped": outcome.stopped(campaign),
        "chart_gates": gate_checks.chart_titles(campaign),
        "returned": outcome.returned(campaign),
        "gate_rows": gate_rows,
        "gate_report": campaign.gate_report or {},
        "progress": progress,
        "move": moves.progress(campaign),
        "quarantine": quarantine.of(Quarantine.Kind.CAMPAIGN, str(campaign.pk)),
        "decisions": decisions,
        "exclusions": _reasons(campaign.exclusions or {}),
        "variant_rule": variant_rule.RULE,
        "windows_text": [window_rules.window_from_dict(w).text() for w in campaign.windows or [] if _readable(w)],
        "conditions_text": window_rules.conditions_text(campaign.conditions or {}),
        "allowed": {a for a, states in lifecycle.ALLOWED_FROM.items() if campaign.state in states},
    }


def _readable(window: Any) -> bool:
    try:
        window_rules.window_from_dict(window)
        return True
    except window_rules.WindowError:
        return False


def _campaign(pk: int) -> Campaign:
    return get_object_or_404(
        Campaign.objects.select_related("model", "version", "previous_version", "cohort", "created_by"), pk=pk
    )


@viewer_required
def campaign_detail(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign(pk)
    context = _detail_context(campaign)
    if campaign.state == Campaign.State.DRAFT:
        dry = targeting.dry_run(
            version=campaign.version,
            cohort=campaign.cohort,
            waves=campaign.waves,
            campaign_id=campaign.pk,
            requirements=campaign.requirements,
            cached=True,
            bucketing=campaign.bucketing,
        )
        waiting_now = waiting.plan_waiting(
            version=campaign.version,
            cohort=campaign.cohort,
            requirements=campaign.requirements,
            windows=campaign.windows,
            window_tz=campaign.window_tz,
            conditions=campaign.conditions,
            campaign_id=campaign.pk,
        )
        context.update(dry=dry, reasons=_reasons(dry.excluded), waiting=waiting_now)
    return render(request, "rollout/campaign_detail.html", context)


@viewer_required
def campaign_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the campaign page (waves, gates, installs, timeline), polled by the page."""
    return render(request, "rollout/campaign_live.html", _detail_context(_campaign(pk)))


@viewer_required
def campaign_series(request: HttpRequest, pk: int) -> JsonResponse:
    """The gate's checks and decisions (what the page charts), and the rollup windows as before."""
    campaign = _campaign(pk)
    return JsonResponse({**chart_series(campaign), **gate_checks.chart(campaign)})


@require_POST
@operator_required
def campaign_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    if action not in lifecycle.ACTIONS:
        raise Http404("no such action")
    campaign = _campaign(pk)
    try:
        lifecycle.act(action, campaign.pk, request=request, reason=request.POST.get("reason", "").strip())
    except lifecycle.CampaignError as err:
        messages.error(request, str(err))
        return redirect("campaign-detail", campaign.pk)
    messages.success(request, f"Campaign “{campaign.name}”: {action} done.")
    return redirect("campaign-detail", campaign.pk)
