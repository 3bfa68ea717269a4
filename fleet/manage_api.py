"""Management API of the fleet: devices (search, bulk relabel, revoke), cohorts, the fleet's status.

Kept apart from ``fleet/api.py`` (the device protocol, authenticated by device tokens): these routes
are for people and pipelines, authenticated by API tokens with roles (``accounts.api_auth``).
"""

import uuid
from datetime import datetime
from typing import Any, Literal

from django.db.models import CharField, Q, QuerySet
from django.db.models.functions import Cast
from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, Path, Query, Router, Schema
from pydantic import ConfigDict

from accounts.api_auth import operator_auth, viewer_auth
from accounts.audit import record
from edgefleet import paging
from edgefleet.api_fields import Cursor, Limit, LongText, Slug, Text, Word
from fleet import bulk, selectors, services
from fleet.errors import ProtocolError
from fleet.models import Cohort, Device

router = Router(tags=["fleet"])

MAX_BULK = 100_000
ID_PREFIX = "^[0-9a-fA-F-]{1,36}$"


class Strict(Schema):
    model_config = ConfigDict(extra="forbid")


def _selector_q(text: str, field: str = "labels") -> Q:
    try:
        return services.selector_q(selectors.parse(text))
    except selectors.SelectorError as exc:
        raise ProtocolError(400, "invalid_selector", f"{field}: {exc}", field) from None


def _device(device_id: str) -> Device:
    try:
        pk = uuid.UUID(device_id)
    except ValueError:
        raise ProtocolError(404, "not_found", f"There is no device {device_id[:40]!r}.") from None
    device = Device.objects.filter(pk=pk).first()
    if device is None:
        raise ProtocolError(404, "not_found", f"There is no device {pk}.")
    return device


# ------------------------------------------------------------------------------------------ devices


class DeviceFilter(Schema):
    q: Text | None = Field(None, description="part of the name, or the start of the id")
    labels: Text | None = Field(None, description="label selector, e.g. region=eu, hw in (rpi4, jetson)")
    status: Literal["online", "stale", "offline", "never"] | None = None
    model: Slug | None = None
    version: Word | None = Field(None, description="with model: devices that report this version installed")
    revoked: bool | None = None
    cursor: Cursor | None = None
    limit: Limit | None = None


class DeviceOut(Schema):
    id: uuid.UUID
    name: str
    status: str
    labels: dict[str, Any]
    installed: dict[str, Any]
    hardware: dict[str, Any]
    agent_version: str
    enrolled_at: datetime
    last_seen_at: datetime | None
    revoked: bool


class DevicePage(Schema):
    items: list[DeviceOut]
    next_cursor: str | None


def device_json(d: Device, now: datetime | None = None) -> dict[str, Any]:
    return {
        "id": d.pk,
        "name": d.name,
        "status": services.status_of(d.last_seen_at, now),
        "labels": d.labels or {},
        "installed": d.installed or {},
        "hardware": d.hardware or {},
        "agent_version": d.agent_version,
        "enrolled_at": d.enrolled_at,
        "last_seen_at": d.last_seen_at,
        "revoked": d.token_revoked_at is not None,
    }


def search(filters: DeviceFilter) -> QuerySet[Device]:
    """The device list's filters (the devices page's, plus a name / id-prefix search)."""
    import re

    qs = Device.objects.all()
    if filters.q:
        text = filters.q.strip()
        match = Q(name__icontains=text)
        if re.fullmatch(ID_PREFIX, text):
            qs = qs.annotate(id_text=Cast("id", output_field=CharField()))
            match |= Q(id_text__startswith=text.lower())
        qs = qs.filter(match)
    if filters.labels:
        qs = qs.filter(_selector_q(filters.labels))
    if filters.status:
        qs = qs.filter(services.status_q(filters.status))
    if filters.model and filters.version:
        qs = qs.filter(services._json_eq("installed", filters.model, filters.version))
    elif filters.model:
        qs = qs.filter(installed__has_key=filters.model)
    elif filters.version:
        raise ProtocolError(400, "invalid", "version filters need a model too.", "version")
    if filters.revoked is not None:
        qs = qs.filter(token_revoked_at__isnull=not filters.revoked)
    return qs


@router.get("/devices", auth=viewer_auth, response=DevicePage, summary="Search devices (newest enrolled first)")
def list_devices(request: HttpRequest, filters: Query[DeviceFilter]) -> dict[str, Any]:
    rows, nxt = paging.page(
        search(filters), name="devices", order=("-enrolled_at", "-id"), cursor=filters.cursor, limit=filters.limit
    )
    now = timezone.now()
    return {"items": [device_json(d, now) for d in rows], "next_cursor": nxt}


class CountOut(Schema):
    count: int
    selector: str


@router.get("/devices/count", auth=viewer_auth, response=CountOut, summary="How many devices match a selector")
def count_devices(request: HttpRequest, labels: Text = "") -> dict[str, Any]:
    try:
        sel = selectors.parse(labels)
    except selectors.SelectorError as exc:
        raise ProtocolError(400, "invalid_selector", f"labels: {exc}", "labels") from None
    return {"count": Device.objects.filter(services.selector_q(sel)).count(), "selector": str(sel)}


LabelMap = dict[Word, Word]


class RelabelIn(Strict):
    selector: Text | None = Field(None, description='devices matching this selector ("" is every device)')
    ids: list[uuid.UUID] | None = Field(None, max_length=10_000, description="or these devices")
    set: LabelMap = Field(default_factory=dict, max_length=32, description="labels to add or change")
    remove: list[Word] = Field(default_factory=list, max_length=32, description="label keys to remove")
    dry_run: bool = False
    max_devices: int = Field(10_000, ge=1, le=MAX_BULK, description="refuse when more devices match")


class RelabelOut(Schema):
    matched: int
    changed: int
    dry_run: bool
    examples: list[dict[str, Any]]


@router.post(
    "/devices/relabel", auth=operator_auth, response=RelabelOut, summary="Set or remove labels on many devices"
)
def relabel(request: HttpRequest, payload: RelabelIn) -> dict[str, Any]:
    if (payload.selector is None) == (payload.ids is None):
        raise ProtocolError(400, "invalid", "Give either a selector or a list of ids.", "selector")
    if not payload.set and not payload.remove:
        raise ProtocolError(400, "invalid", "Nothing to change: give labels to set or keys to remove.", "set")
    qs = Device.objects.filter(_selector_q(payload.selector, "selector")) if payload.selector is not None else None
    if qs is None:
        qs = Device.objects.filter(pk__in=payload.ids or [])
    ids = list(qs.order_by("pk").values_list("pk", flat=True)[: payload.max_devices + 1])
    if len(ids) > payload.max_devices:
        raise ProtocolError(
            400,
            "too_many_devices",
            f"More than {payload.max_devices} devices match; narrow the selector or raise max_devices.",
            "max_devices",
        )
    try:
        result = bulk.relabel(ids, dict(payload.set), payload.remove, dry_run=payload.dry_run)
    except bulk.BulkError as exc:
        raise ProtocolError(400, "invalid", exc.message, exc.field) from None
    if not payload.dry_run:
        record(
            "device.labels_bulk",
            payload.selector if payload.selector is not None else f"{len(ids)} devices",
            request=request,
            details={"set": payload.set, "remove": payload.remove, "matched": result["matched"],
                     "changed": result["changed"]},
        )  # fmt: skip
    return result


@router.get("/devices/{device_id}", auth=viewer_auth, response=DeviceOut, summary="One device")
def get_device(request: HttpRequest, device_id: str = Path(..., max_length=64)) -> dict[str, Any]:
    return device_json(_device(device_id))


@router.post("/devices/{device_id}/revoke", auth=operator_auth, response=DeviceOut, summary="Revoke a device's token")
def revoke_device(request: HttpRequest, device_id: str = Path(..., max_length=64)) -> dict[str, Any]:
    device = _device(device_id)
    if device.token_revoked_at is not None:
        raise ProtocolError(409, "already_revoked", f"Device {device.pk}'s token is already revoked.")
    services.revoke_token(device)
    record("device.token_revoke", device, request=request)
    return device_json(device)


# ------------------------------------------------------------------------------------------ cohorts


class CohortOut(Schema):
    name: str
    selector: str
    description: str
    devices: int | None
    created_at: datetime


class CohortPage(Schema):
    items: list[CohortOut]
    next_cursor: str | None


class CohortFilter(Schema):
    counts: bool = Field(False, description="count each cohort's devices (one scan of the fleet)")
    cursor: Cursor | None = None
    limit: Limit | None = None


class CohortIn(Strict):
    name: Slug
    selector: Text
    description: LongText = ""


def cohort_json(c: Cohort, count: int | None) -> dict[str, Any]:
    return {
        "name": c.name,
        "selector": c.selector,
        "description": c.description,
        "devices": count,
        "created_at": c.created_at,
    }


@router.get("/cohorts", auth=viewer_auth, response=CohortPage, summary="Saved cohorts, by name")
def list_cohorts(request: HttpRequest, filters: Query[CohortFilter]) -> dict[str, Any]:
    rows, nxt = paging.page(
        Cohort.objects.all(), name="cohorts", order=("name",), cursor=filters.cursor, limit=filters.limit
    )
    counts = dict(services.cohort_counts(rows)) if filters.counts else {}
    return {"items": [cohort_json(c, counts.get(c)) for c in rows], "next_cursor": nxt}


@router.get("/cohorts/{name}", auth=viewer_auth, response=CohortOut, summary="One cohort with its device count")
def get_cohort(request: HttpRequest, name: str = Path(..., max_length=100)) -> dict[str, Any]:
    cohort = Cohort.objects.filter(name=name).first()
    if cohort is None:
        raise ProtocolError(404, "not_found", f"There is no cohort {name[:100]!r}.")
    return cohort_json(cohort, services.cohort_counts([cohort])[0][1])


@router.post(
    "/cohorts",
    auth=operator_auth,
    response={200: CohortOut, 201: CohortOut},
    summary="Create or update a cohort (201 when new)",
)
def save_cohort(request: HttpRequest, payload: CohortIn) -> tuple[int, dict[str, Any]]:
    try:
        selectors.parse(payload.selector)
    except selectors.SelectorError as exc:
        raise ProtocolError(400, "invalid_selector", f"selector: {exc}", "selector") from None
    existed = Cohort.objects.filter(name=payload.name).exists()
    cohort = services.save_cohort(payload.name, payload.selector, payload.description, request.user)
    record(
        "cohort.update" if existed else "cohort.create", cohort, request=request, details={"selector": cohort.selector}
    )
    return (200 if existed else 201), cohort_json(cohort, services.cohort_counts([cohort])[0][1])


# ------------------------------------------------------------------------------------------- status


class StatusOut(Schema):
    devices: dict[str, int]
    models: int
    versions_in_use: dict[str, list[tuple[str, int]]]
    active_campaigns: list[dict[str, Any]]
    open_alerts: int
    recent_decisions: list[dict[str, Any]]


@router.get("/status", auth=viewer_auth, response=StatusOut, summary="The fleet at a glance (the overview page)")
def status(request: HttpRequest) -> dict[str, Any]:
    from fleet import overview
    from ota.models import Model
    from rollout.api import campaign_json, decision_json
    from rollout.models import Campaign, CampaignDecision
    from telemetry.models import Alert

    counts = overview.device_status_counts()
    active = Campaign.objects.filter(state__in=overview.ACTIVE).select_related(
        "model", "version", "previous_version", "cohort", "created_by"
    )
    decisions = CampaignDecision.objects.filter(kind__in=overview.AUTOMATIC).select_related("campaign")[:10]
    return {
        "devices": {**counts, "total": sum(counts.values())},
        "models": Model.objects.count(),
        "versions_in_use": overview.versions_in_use(),
        "active_campaigns": [campaign_json(c) for c in active[:50]],
        "open_alerts": Alert.objects.filter(state=Alert.State.OPEN).count(),
        "recent_decisions": [{**decision_json(d), "campaign": d.campaign_id} for d in decisions],
    }
