"""Management API of rollouts: releases and campaigns (what the release and campaign pages do).

Thin: parse, call ``rollout.lifecycle`` / ``rollout.targeting`` / ``rollout.progress`` /
``rollout.releases`` (the same services the pages call), shape the answer. Refusals get the
protocol's error body with a stable code: ``not_found`` (404), ``invalid_state`` (409: the action
is not allowed from the campaign's state), ``version_not_staged`` (409), ``conflict`` (409: e.g.
an overlapping campaign), ``invalid`` (400, naming the field, e.g. ``waves``), ``reason_required`` (400).
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from django.http import HttpRequest
from ninja import Field, Path, Query, Router, Schema
from pydantic import ConfigDict

from accounts.api_auth import operator_auth, viewer_auth
from accounts.audit import record
from edgefleet import paging
from edgefleet.api_fields import Cursor, Limit, Name, Reason, Slug, Text, VersionRef, Word
from fleet import selectors
from fleet.errors import ProtocolError
from fleet.models import Cohort
from ota import aliases
from ota.models import ModelVersion
from rollout import gates as gate_logic
from rollout import lifecycle, moves, placement, targeting, waiting
from rollout import windows as window_rules
from rollout.evaluation import min_cohort
from rollout.models import Campaign, CampaignDecision, Release
from rollout.progress import install_progress
from rollout.releases import ReleaseError, create_release

router = Router(tags=["rollout"])

CampaignId = Path(..., ge=1, le=2**63 - 1)


class Strict(Schema):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------ shared lookups


def _version(model: str, label: str, field: str = "version") -> ModelVersion:
    """The version a label or an alias (``@production``, or a bare alias name no label has) names."""
    version = aliases.resolve(model, label)
    if version is None:
        raise ProtocolError(404, "not_found", f"Model '{model}' has no version '{label}'.", field)
    return version


def _staged(version: ModelVersion) -> ModelVersion:
    if version.status != ModelVersion.Status.STAGED:
        raise ProtocolError(
            409, "version_not_staged", f"{version} is {version.status}; only staged versions roll out.", "version"
        )
    return version


def _cohort_by_name(name: str) -> Cohort:
    cohort = Cohort.objects.filter(name=name).first()
    if cohort is None:
        raise ProtocolError(404, "not_found", f"There is no cohort '{name}'.", "cohort")
    return cohort


def cohort_for_selector(text: str, request: HttpRequest) -> Cohort | None:
    """A saved cohort with exactly this selector, made (and audited) when there is none yet.

    Campaigns target saved cohorts; a pipeline says ``--cohort 'region=eu'`` and should not have to
    save it first. An empty selector is the whole fleet (no cohort).
    """
    import hashlib

    from fleet.services import save_cohort

    try:
        normalized = str(selectors.parse(text))
    except selectors.SelectorError as exc:
        raise ProtocolError(400, "invalid_selector", f"selector: {exc}", "selector") from None
    if not normalized:
        return None
    existing = Cohort.objects.filter(selector=normalized).order_by("pk").first()
    if existing is not None:
        return existing
    name = "sel-" + hashlib.sha256(normalized.encode()).hexdigest()[:10]
    cohort = save_cohort(name, normalized, "made by the API for a campaign's selector", request.user)
    record("cohort.create", cohort, request=request, details={"selector": cohort.selector, "via": "api"})
    return cohort


def _campaign(pk: int) -> Campaign:
    campaign = (
        Campaign.objects.select_related("model", "version", "previous_version", "cohort", "created_by")
        .filter(pk=pk)
        .first()
    )
    if campaign is None:
        raise ProtocolError(404, "not_found", f"There is no campaign {pk}.")
    return campaign


# ---------------------------------------------------------------------------------------- releases


class ReleaseIn(Strict):
    model: Slug
    version: VersionRef = Field(..., description="a label, or an alias as @production")
    cohort: Slug | None = None
    note: Text = ""


class ReleaseOut(Schema):
    id: int
    model: str
    version: str
    cohort: str | None
    note: str
    campaign: int | None
    created_by: str | None
    created_at: datetime


class ReleasePage(Schema):
    items: list[ReleaseOut]
    next_cursor: str | None


class ReleaseFilter(Schema):
    model: Slug | None = None
    cohort: Slug | None = None
    cursor: Cursor | None = None
    limit: Limit | None = None


def release_json(r: Release) -> dict[str, Any]:
    return {
        "id": r.pk,
        "model": r.model.name,
        "version": r.version.label,
        "cohort": r.cohort.name if r.cohort else None,
        "note": r.note,
        "campaign": r.campaign_id,
        "created_by": r.created_by.get_username() if r.created_by else None,
        "created_at": r.created_at,
    }


@router.get("/releases", auth=viewer_auth, response=ReleasePage, summary="Releases, newest first")
def list_releases(request: HttpRequest, filters: Query[ReleaseFilter]) -> dict[str, Any]:
    qs = Release.objects.select_related("model", "version", "cohort", "created_by")
    if filters.model:
        qs = qs.filter(model__name=filters.model)
    if filters.cohort:
        qs = qs.filter(cohort__name=filters.cohort)
    rows, nxt = paging.page(
        qs, name="releases", order=("-created_at", "-id"), cursor=filters.cursor, limit=filters.limit
    )
    return {"items": [release_json(r) for r in rows], "next_cursor": nxt}


@router.post(
    "/releases", auth=operator_auth, response={201: ReleaseOut}, summary="Make a staged version desired for a cohort"
)
def post_release(request: HttpRequest, payload: ReleaseIn) -> tuple[int, dict[str, Any]]:
    version = _staged(_version(payload.model, payload.version))
    cohort = _cohort_by_name(payload.cohort) if payload.cohort else None
    try:
        rel = create_release(version, cohort=cohort, note=payload.note, user=request.user)
    except ReleaseError as exc:
        raise ProtocolError(409, "version_not_staged", str(exc), "version") from None
    record(
        "release.create",
        rel,
        request=request,
        details={
            "model": version.model.name,
            "version": version.label,
            "cohort": cohort and cohort.name,
            **({"via": payload.version} if payload.version != version.label else {}),
        },
    )
    return 201, release_json(rel)


# --------------------------------------------------------------------------------------- campaigns


class WaveIn(Strict):
    percent: float = Field(..., gt=0, le=100, allow_inf_nan=False)
    min_soak_minutes: float = Field(0, ge=0, le=525_600, allow_inf_nan=False)
    min_devices: int = Field(0, ge=0, le=100_000_000)


class RequirementsIn(Strict):
    provider: Word | None = None
    min_storage_mb: float = Field(0, ge=0, le=10_000_000, allow_inf_nan=False)


class ConditionsIn(Strict):
    power: Literal["external"] | None = Field(None, description="install only on external power")
    network: Literal["unmetered"] | None = Field(None, description="install only on an unmetered network")
    idle: Literal[True] | None = Field(None, description="install only while the device is idle")


class PlanIn(Strict):
    model: Slug
    version: VersionRef = Field(..., description="a label, or an alias as @production")
    cohort: Slug | None = Field(None, description="a saved cohort's name")
    selector: Text | None = Field(None, description="or a label selector (a cohort is saved for it)")
    waves: list[WaveIn] = Field(..., min_length=1, max_length=20)
    requirements: RequirementsIn | None = None
    windows: list[Annotated[str, Field(min_length=1, max_length=window_rules.MAX_WINDOW_TEXT)]] = Field(
        default_factory=list,
        max_length=window_rules.MAX_WINDOWS,
        description="maintenance windows, e.g. 'mon-fri 01:00-05:00' (none: any time)",
    )
    window_tz: str = Field(
        "device", min_length=1, max_length=64, description="'device' (each device's tz label, else UTC) or an IANA zone"
    )
    conditions: ConditionsIn | None = Field(None, description="install conditions devices must report")


class CampaignIn(PlanIn):
    name: Name
    gates: dict[str, float] | None = Field(
        None, description="gate name -> threshold; omitted: every gate at its default", max_length=10
    )
    on_failure: Literal["pause", "rollback"] = "rollback"
    previous_version: VersionRef | None = Field(
        None, description="label or @alias; default: the cohort's current release"
    )
    start: bool = Field(False, description="start wave 1 right away")
    commit_minutes: float = Field(
        60,
        ge=1,
        le=10_080,
        allow_inf_nan=False,
        description="an installed device not committed by then failed",
    )


class DecisionOut(Schema):
    id: int
    at: datetime
    kind: str
    actor: str
    reason: str
    numbers: dict[str, Any]


class CampaignOut(Schema):
    id: int
    name: str
    model: str
    version: str
    previous_version: str | None
    cohort: str | None
    selector: str
    state: str
    on_failure: str
    waves: list[dict[str, Any]]
    gates: dict[str, float]
    requirements: dict[str, Any]
    windows: list[dict[str, Any]]
    window_tz: str
    conditions: dict[str, Any]
    commit_minutes: float
    wave: int | None = Field(..., description="current wave, 1-based (None before start)")
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_decision: DecisionOut | None
    page_url: str


class GateVerdictOut(Schema):
    name: str
    verdict: str
    threshold: float | None = None
    observed: float | None = None
    canary: float | None = None
    control: float | None = None
    n_canary: int | None = None
    n_control: int | None = None
    p_value: float | None = None
    detail: str = ""


class CampaignStatusOut(CampaignOut):
    verdict: str | None
    gates_report: list[GateVerdictOut]
    gate_numbers: dict[str, Any]
    last_evaluated_at: datetime | None
    progress: dict[str, Any] | None
    move: dict[str, Any] | None = Field(
        None,
        description="the latest start/advance/rollback's devices told so far: {kind, done, total, finished, "
        "started_at, finished_at} (moved by a Celery job in batches)",
    )
    exclusions: dict[str, int]
    allowed_actions: list[str]


class CampaignPage(Schema):
    items: list[CampaignOut]
    next_cursor: str | None


class DecisionPage(Schema):
    items: list[DecisionOut]
    next_cursor: str | None


class CampaignFilter(Schema):
    state: Literal["draft", "scheduled", "running", "paused", "completed", "rolled_back", "aborted"] | None = None
    model: Slug | None = None
    cursor: Cursor | None = None
    limit: Limit | None = None


class DecisionFilter(Schema):
    after: int | None = Field(None, ge=0, description="only decisions with a larger id (for streaming)")
    kind: Word | None = None
    cursor: Cursor | None = None
    limit: Limit | None = None


class ActionIn(Strict):
    reason: Reason = ""


class DryRunOut(Schema):
    total: int
    compatible: int
    excluded: dict[str, int]
    waves: list[dict[str, Any]]
    campaign_id: int | None
    waiting: dict[str, int] = Field(
        default_factory=dict,
        description="compatible devices that would wait now: for a window, or per unmet install condition",
    )


def decision_json(d: CampaignDecision) -> dict[str, Any]:
    numbers = dict(d.numbers or {})
    if "gates" in numbers:  # numbers from fewer than k devices a side stay hidden, even in old decisions
        numbers["gates"] = gate_logic.public_rows(numbers["gates"], min_cohort())
    return {"id": d.pk, "at": d.at, "kind": d.kind, "actor": d.actor_label, "reason": d.reason, "numbers": numbers}


def campaign_json(c: Campaign) -> dict[str, Any]:
    from django.urls import reverse

    last = c.decisions.exclude(kind="hold").order_by("-at", "-id").first()
    return {
        "id": c.pk,
        "name": c.name,
        "model": c.model.name,
        "version": c.version.label,
        "previous_version": c.previous_version.label if c.previous_version else None,
        "cohort": c.cohort.name if c.cohort else None,
        "selector": c.cohort.selector if c.cohort else "",
        "state": c.state,
        "on_failure": c.on_failure,
        "waves": c.waves,
        "gates": c.gates,
        "requirements": c.requirements or {},
        "windows": c.windows or [],
        "window_tz": c.window_tz,
        "conditions": c.conditions or {},
        "commit_minutes": c.commit_minutes,
        "wave": c.wave_index + 1 if c.wave_index >= 0 else None,
        "created_by": c.created_by.get_username() if c.created_by else None,
        "created_at": c.created_at,
        "started_at": c.started_at,
        "finished_at": c.finished_at,
        "last_decision": decision_json(last) if last else None,
        "page_url": reverse("campaign-detail", args=[c.pk]),
    }


def campaign_status_json(c: Campaign) -> dict[str, Any]:
    report = c.gate_report or {}
    progress = install_progress(c, cached=True) if c.wave_index >= 0 else None
    return {
        **campaign_json(c),
        "verdict": report.get("verdict"),
        "gates_report": [
            {k: row.get(k) for k in GateVerdictOut.model_fields if k in row}
            for row in gate_logic.public_rows(report.get("gates", []), min_cohort())
            if "name" in row and "verdict" in row
        ],
        "gate_numbers": {k: v for k, v in report.items() if k != "gates"},
        "last_evaluated_at": c.last_evaluated_at,
        "progress": progress,
        "move": moves.progress(c),
        "exclusions": c.exclusions or {},
        "allowed_actions": [a for a, states in lifecycle.ALLOWED_FROM.items() if c.state in states],
    }


def _plan(payload: PlanIn, request: HttpRequest) -> dict[str, Any]:
    """The service arguments of a plan, with each problem named by its field."""
    if payload.cohort and payload.selector:
        raise ProtocolError(400, "invalid", "Give a cohort or a selector, not both.", "selector")
    waves = [w.model_dump() for w in payload.waves]
    problems = placement.validate_waves(waves)
    if problems:
        raise ProtocolError(400, "invalid", "waves: " + " ".join(problems), "waves")
    version = _version(payload.model, payload.version)
    by_name = payload.cohort
    cohort = _cohort_by_name(by_name) if by_name else cohort_for_selector(payload.selector or "", request)
    requirements = {k: v for k, v in (payload.requirements.model_dump() if payload.requirements else {}).items() if v}
    try:
        windows = [w.as_dict() for w in window_rules.parse_windows(payload.windows)]
    except window_rules.WindowError as exc:
        raise ProtocolError(400, "invalid", f"windows: {exc}", "windows") from None
    try:
        window_rules.validate_tz_mode(payload.window_tz)
    except window_rules.WindowError as exc:
        raise ProtocolError(400, "invalid", f"window_tz: {exc}", "window_tz") from None
    conditions = {k: v for k, v in (payload.conditions.model_dump() if payload.conditions else {}).items() if v}
    return {
        "version": version,
        "cohort": cohort,
        "waves": waves,
        "requirements": requirements,
        "windows": windows,
        "window_tz": payload.window_tz,
        "conditions": conditions,
    }


def _dry_run(plan: dict[str, Any], campaign_id: int | None, bucketing: str = placement.KEYED) -> dict[str, Any]:
    """The dry run of a plan, with the devices that would wait now for a window or a condition."""
    out = targeting.dry_run(
        version=plan["version"],
        cohort=plan["cohort"],
        waves=plan["waves"],
        requirements=plan["requirements"],
        campaign_id=campaign_id,
        cached=True,
        bucketing=bucketing,
    ).as_dict()
    out["waiting"] = waiting.plan_waiting(campaign_id=campaign_id, **{k: v for k, v in plan.items() if k != "waves"})
    return out


@router.get("/campaigns", auth=viewer_auth, response=CampaignPage, summary="Campaigns, newest first")
def list_campaigns(request: HttpRequest, filters: Query[CampaignFilter]) -> dict[str, Any]:
    qs = Campaign.objects.select_related("model", "version", "previous_version", "cohort", "created_by")
    if filters.state:
        qs = qs.filter(state=filters.state)
    if filters.model:
        qs = qs.filter(model__name=filters.model)
    rows, nxt = paging.page(
        qs, name="campaigns", order=("-created_at", "-id"), cursor=filters.cursor, limit=filters.limit
    )
    return {"items": [campaign_json(c) for c in rows], "next_cursor": nxt}


@router.post(
    "/campaigns",
    auth=operator_auth,
    response={201: CampaignStatusOut},
    summary="Create a campaign (a draft, or started with start=true)",
)
def create_campaign(request: HttpRequest, payload: CampaignIn) -> tuple[int, dict[str, Any]]:
    gates = dict(gate_logic.DEFAULT_GATES) if payload.gates is None else payload.gates
    problems = gate_logic.validate_gates(gates)
    if problems:
        raise ProtocolError(400, "invalid", "gates: " + " ".join(problems), "gates")
    plan = _plan(payload, request)
    _staged(plan["version"])
    previous = (
        _version(payload.model, payload.previous_version, "previous_version") if payload.previous_version else None
    )
    if previous is not None and previous.pk == plan["version"].pk:
        raise ProtocolError(400, "invalid", "The previous version must differ from the version.", "previous_version")
    try:
        campaign = lifecycle.create_campaign(
            name=payload.name,
            gates=gates,
            on_failure=payload.on_failure,
            previous_version=previous,
            commit_minutes=payload.commit_minutes,
            user=request.user,
            request=request,
            **plan,
        )
    except lifecycle.CampaignError as exc:
        raise ProtocolError(409, "conflict", str(exc)) from None
    if payload.start:
        try:
            lifecycle.start(campaign.pk, user=request.user, request=request)
        except lifecycle.CampaignError as exc:
            raise ProtocolError(
                409, "conflict", f"Campaign {campaign.pk} was created as a draft but not started: {exc}"
            ) from None
    return 201, campaign_status_json(_campaign(campaign.pk))


@router.post(
    "/campaigns/dry-run",
    auth=operator_auth,
    response=DryRunOut,
    summary="How many devices each wave of a plan would reach, and who is excluded and why",
)
def dry_run_plan(request: HttpRequest, payload: PlanIn) -> dict[str, Any]:
    return _dry_run(_plan(payload, request), None)


@router.get(
    "/campaigns/{campaign_id}",
    auth=viewer_auth,
    response=CampaignStatusOut,
    summary="A campaign's state, gate verdicts with their numbers, and install progress",
)
def get_campaign(request: HttpRequest, campaign_id: int = CampaignId) -> dict[str, Any]:
    return campaign_status_json(_campaign(campaign_id))


@router.get(
    "/campaigns/{campaign_id}/dry-run",
    auth=operator_auth,
    response=DryRunOut,
    summary="The dry run of an existing campaign (exact buckets for its id)",
)
def dry_run_campaign(request: HttpRequest, campaign_id: int = CampaignId) -> dict[str, Any]:
    c = _campaign(campaign_id)
    plan = {
        "version": c.version,
        "cohort": c.cohort,
        "waves": c.waves,
        "requirements": c.requirements,
        "windows": c.windows,
        "window_tz": c.window_tz,
        "conditions": c.conditions,
    }
    return _dry_run(plan, c.pk, c.bucketing)


@router.get(
    "/campaigns/{campaign_id}/decisions",
    auth=viewer_auth,
    response=DecisionPage,
    summary="A campaign's timeline, oldest first (after=<id> to stream new decisions)",
)
def list_decisions(
    request: HttpRequest, filters: Query[DecisionFilter], campaign_id: int = CampaignId
) -> dict[str, Any]:
    c = _campaign(campaign_id)
    qs = c.decisions.all()
    if filters.after is not None:
        qs = qs.filter(pk__gt=filters.after)
    if filters.kind:
        qs = qs.filter(kind=filters.kind)
    rows, nxt = paging.page(qs, name="decisions", order=("id",), cursor=filters.cursor, limit=filters.limit)
    return {"items": [decision_json(d) for d in rows], "next_cursor": nxt}


ACTION_TEXT = {
    "start": "Start wave 1",
    "pause": "Pause: devices on the version stay, no new devices get it",
    "resume": "Resume a paused campaign",
    "advance": "Go to the next wave by hand (a reason is required)",
    "rollback": "Roll back: every targeted device goes back to the previous version (a reason is required)",
    "abort": "Abort: devices follow the model's release again",
}


def _act(request: HttpRequest, campaign_id: int, action: str, reason: str) -> dict[str, Any]:
    campaign = _campaign(campaign_id)
    allowed = lifecycle.ALLOWED_FROM[action]
    if campaign.state not in allowed:
        raise ProtocolError(
            409,
            "invalid_state",
            f"Cannot {action} campaign {campaign.pk}: it is {campaign.state} (allowed from: {', '.join(allowed)}).",
        )
    if action in ("advance", "rollback") and not reason.strip():
        raise ProtocolError(400, "reason_required", f"Say why you {action} the campaign by hand.", "reason")
    try:
        lifecycle.ACTIONS[action](campaign.pk, user=request.user, request=request, reason=reason.strip())
    except lifecycle.CampaignError as exc:
        raise ProtocolError(409, "conflict", str(exc)) from None
    return campaign_status_json(_campaign(campaign.pk))


def _register_action(action: str) -> None:
    def view(request: HttpRequest, payload: ActionIn, campaign_id: int = CampaignId) -> dict[str, Any]:
        return _act(request, campaign_id, action, payload.reason)

    view.__name__ = f"campaign_{action}"
    router.post(
        f"/campaigns/{{campaign_id}}/{action}",
        auth=operator_auth,
        response=CampaignStatusOut,
        summary=ACTION_TEXT[action],
        operation_id=f"campaign_{action}",
    )(view)


for _action in lifecycle.ACTIONS:
    _register_action(_action)
