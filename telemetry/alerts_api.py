"""Management API of alerts: list them (the alerts page's filters) and resolve one."""

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Path, Query, Router, Schema

from accounts.api_auth import operator_auth, viewer_auth
from accounts.audit import record
from edgefleet import paging
from edgefleet.api_fields import Cursor, Limit, Slug, Text, Word
from fleet.errors import ProtocolError
from telemetry import services
from telemetry.models import Alert

router = Router(tags=["alerts"])

AlertId = Path(..., ge=1, le=2**63 - 1)


class AlertFilter(Schema):
    state: Literal["open", "resolved"] | None = None
    kind: Literal["drift", "regression"] | None = None
    model: Slug | None = None
    version: Word | None = None
    cohort: Text | None = None
    cursor: Cursor | None = None
    limit: Limit | None = None


class AlertOut(Schema):
    id: int
    kind: str
    state: str
    model: str
    version: str
    cohort: str
    feature: str
    message: str
    numbers: dict[str, Any]
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    resolved_by: str


class AlertPage(Schema):
    items: list[AlertOut]
    next_cursor: str | None


def alert_json(a: Alert) -> dict[str, Any]:
    return {
        "id": a.pk,
        "kind": a.kind,
        "state": a.state,
        "model": a.version.model.name,
        "version": a.version.label,
        "cohort": a.cohort,
        "feature": a.feature,
        "message": a.message,
        "numbers": a.numbers or {},
        "opened_at": a.opened_at,
        "updated_at": a.updated_at,
        "resolved_at": a.resolved_at,
        "resolved_by": a.resolved_by,
    }


def _alert(alert_id: int) -> Alert:
    alert = Alert.objects.select_related("version__model").filter(pk=alert_id).first()
    if alert is None:
        raise ProtocolError(404, "not_found", f"There is no alert {alert_id}.")
    return alert


@router.get("/alerts", auth=viewer_auth, response=AlertPage, summary="Alerts, most recently opened first")
def list_alerts(request: HttpRequest, filters: Query[AlertFilter]) -> dict[str, Any]:
    qs = Alert.objects.select_related("version__model")
    for field, value in (("state", filters.state), ("kind", filters.kind), ("cohort", filters.cohort)):
        if value:
            qs = qs.filter(**{field: value})
    if filters.model:
        qs = qs.filter(version__model__name=filters.model)
    if filters.version:
        qs = qs.filter(version__label=filters.version)
    rows, nxt = paging.page(qs, name="alerts", order=("-opened_at", "-id"), cursor=filters.cursor, limit=filters.limit)
    return {"items": [alert_json(a) for a in rows], "next_cursor": nxt}


@router.get("/alerts/{alert_id}", auth=viewer_auth, response=AlertOut, summary="One alert with its numbers")
def get_alert(request: HttpRequest, alert_id: int = AlertId) -> dict[str, Any]:
    return alert_json(_alert(alert_id))


@router.post("/alerts/{alert_id}/resolve", auth=operator_auth, response=AlertOut, summary="Resolve an open alert")
def resolve(request: HttpRequest, alert_id: int = AlertId) -> dict[str, Any]:
    alert = _alert(alert_id)
    if alert.state != Alert.State.OPEN:
        raise ProtocolError(409, "invalid_state", f"Alert {alert.pk} is already resolved.")
    alert = services.resolve_alert(alert.pk, by=getattr(request, "audit_actor", "") or request.user.get_username())
    record("telemetry.alert.resolve", alert, request=request, details={"alert": alert.pk, "numbers": alert.numbers})
    return alert_json(_alert(alert.pk))
