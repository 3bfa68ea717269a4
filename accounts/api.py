"""Management API of accounts: who am I, and the audit log (admins, as on the page)."""

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Query, Router, Schema

from accounts.api_auth import admin_auth, viewer_auth
from accounts.models import AuditEntry
from edgefleet import paging
from edgefleet.api_fields import Cursor, Limit, Text

router = Router(tags=["accounts"])


class WhoAmI(Schema):
    username: str
    role: str
    via: str


@router.get("/whoami", auth=viewer_auth, response=WhoAmI, summary="The user and role the request acts as")
def whoami(request: HttpRequest) -> dict[str, Any]:
    actor = getattr(request, "audit_actor", "")
    return {"username": request.user.get_username(), "role": request.api_role, "via": actor}


class AuditFilter(Schema):
    action: Text | None = None
    actor: Text | None = None
    target: Text | None = None
    cursor: Cursor | None = None
    limit: Limit | None = None


class AuditOut(Schema):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    ip: str | None
    details: dict[str, Any]


class AuditPage(Schema):
    items: list[AuditOut]
    next_cursor: str | None


@router.get("/audit", auth=admin_auth, response=AuditPage, summary="The audit log, newest first (admins)")
def audit(request: HttpRequest, filters: Query[AuditFilter]) -> dict[str, Any]:
    qs = AuditEntry.objects.all()
    if filters.action:
        qs = qs.filter(action=filters.action)
    if filters.actor:
        qs = qs.filter(actor_label=filters.actor)
    if filters.target:
        qs = qs.filter(target__icontains=filters.target[:200])
    rows, nxt = paging.page(qs, name="audit", order=("-at", "-id"), cursor=filters.cursor, limit=filters.limit)
    items = [
        {
            "id": e.pk,
            "at": e.at,
            "actor": e.actor_label,
            "action": e.action,
            "target": e.target,
            "ip": e.ip,
            "details": e.details or {},
        }
        for e in rows
    ]
    return {"items": items, "next_cursor": nxt}
