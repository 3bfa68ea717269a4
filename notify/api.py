"""Management API of notifications: subscriptions, their delivery log, a test send, secret rotation."""

import uuid
from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest, HttpResponse
from ninja import Field, Path, Query, Router, Schema
from pydantic import ConfigDict

from accounts.api_auth import operator_auth, viewer_auth
from accounts.audit import record
from edgefleet import paging
from edgefleet.api_fields import Cursor, Limit, Name, Slug, Text, Url
from fleet.errors import ProtocolError
from notify import services
from notify.kinds import KINDS
from notify.models import Delivery, Subscription

router = Router(tags=["notifications"])

SubId = Path(..., ge=1, le=2**63 - 1)
Kind = Literal[
    "alert.opened",
    "alert.resolved",
    "campaign.advance",
    "campaign.pause",
    "campaign.rollback",
    "campaign.complete",
    "validation.finished",
    "fleet.offline",
]
assert set(Kind.__args__) == set(KINDS)  # type: ignore[attr-defined]


class Strict(Schema):
    model_config = ConfigDict(extra="forbid")


class KindOut(Schema):
    kind: str
    description: str


class SubscriptionIn(Strict):
    name: Name
    channel: Literal["webhook", "email", "slack"]
    events: list[Kind] = Field(..., min_length=1, max_length=len(KINDS))
    url: Url | None = Field(None, description="webhook or Slack incoming-webhook URL")
    emails: list[Text] = Field(default_factory=list, max_length=services.MAX_EMAILS)
    model: Slug | None = Field(None, description="only events about this model")
    offline_threshold: float = Field(0.2, ge=0, le=1, allow_inf_nan=False)
    team: Slug | None = Field(None, description="a group you are in; default: yours alone")
    active: bool = True


class SubscriptionPatch(Strict):
    name: Name | None = None
    events: list[Kind] | None = Field(None, min_length=1, max_length=len(KINDS))
    url: Url | None = None
    emails: list[Text] | None = Field(None, max_length=services.MAX_EMAILS)
    model: Slug | None = None
    offline_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    active: bool | None = None


class LastDelivery(Schema):
    status: str
    status_code: int | None
    at: datetime


class SubscriptionOut(Schema):
    id: int
    name: str
    channel: str
    target: str = Field(..., description="scheme and host only: the URL is not shown again")
    emails: list[str]
    events: list[str]
    model: str | None
    offline_threshold: float
    owner: str | None
    team: str | None
    active: bool
    has_secret: bool
    created_at: datetime
    last_delivery: LastDelivery | None


class SubscriptionCreated(SubscriptionOut):
    secret: str | None = Field(..., description="webhook signing secret: shown this once, store it now")


class SecretOut(Schema):
    secret: str


class SubscriptionPage(Schema):
    items: list[SubscriptionOut]
    next_cursor: str | None


class AttemptOut(Schema):
    at: datetime
    status_code: int | None
    error: str
    duration_ms: int


class DeliveryOut(Schema):
    id: uuid.UUID
    event_id: uuid.UUID
    kind: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    log: list[AttemptOut]


class DeliveryPage(Schema):
    items: list[DeliveryOut]
    next_cursor: str | None


class PageFilter(Schema):
    cursor: Cursor | None = None
    limit: Limit | None = None


class DeliveryFilter(PageFilter):
    status: Literal["pending", "delivered", "failed"] | None = None


def subscription_json(s: Subscription) -> dict[str, Any]:
    last = s.deliveries.order_by("-updated_at").first()
    return {
        "id": s.pk,
        "name": s.name,
        "channel": s.channel,
        "target": s.target_hint if s.channel != "email" else ", ".join(s.emails or []) or "(the owner's address)",
        "emails": s.emails or [],
        "events": s.events or [],
        "model": s.model_filter or None,
        "offline_threshold": s.offline_threshold,
        "owner": s.owner.get_username() if s.owner else None,
        "team": s.team.name if s.team else None,
        "active": s.active,
        "has_secret": bool(s.secret_encrypted),
        "created_at": s.created_at,
        "last_delivery": {"status": last.status, "status_code": last.last_status_code, "at": last.updated_at}
        if last
        else None,
    }


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.pk,
        "event_id": d.event_id,
        "kind": d.event.kind,
        "status": d.status,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "next_attempt_at": d.next_attempt_at,
        "delivered_at": d.delivered_at,
        "created_at": d.created_at,
        "log": [
            {"at": a.at, "status_code": a.status_code, "error": a.error, "duration_ms": a.duration_ms}
            for a in d.attempt_log.all()[:50]
        ],
    }


def _sub(request: HttpRequest, pk: int) -> Subscription:
    try:
        return services.get_visible(request.user, pk)
    except services.SubscriptionError as exc:
        raise ProtocolError(exc.status, exc.code, exc.message, exc.field) from None


def _call(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except services.SubscriptionError as exc:
        raise ProtocolError(exc.status, exc.code, exc.message, exc.field) from None


@router.get("/notify/kinds", auth=viewer_auth, response=list[KindOut], summary="Event kinds one can subscribe to")
def list_kinds(request: HttpRequest) -> list[dict[str, str]]:
    return [{"kind": k, "description": text} for k, text in KINDS.items()]


@router.get("/subscriptions", auth=viewer_auth, response=SubscriptionPage, summary="Subscriptions you can see")
def list_subscriptions(request: HttpRequest, filters: Query[PageFilter]) -> dict[str, Any]:
    rows, nxt = paging.page(
        services.visible(request.user),
        name="subscriptions",
        order=("-created_at", "-id"),
        cursor=filters.cursor,
        limit=filters.limit,
    )
    return {"items": [subscription_json(s) for s in rows], "next_cursor": nxt}


@router.post(
    "/subscriptions",
    auth=operator_auth,
    response={201: SubscriptionCreated},
    summary="Subscribe a webhook, e-mail or Slack channel to events (a webhook's secret is shown once)",
)
def create_subscription(request: HttpRequest, payload: SubscriptionIn) -> tuple[int, dict[str, Any]]:
    sub, secret = _call(
        services.create,
        request.user,
        name=payload.name,
        channel=payload.channel,
        events=payload.events,
        url=payload.url or "",
        emails=payload.emails,
        model=payload.model or "",
        offline_threshold=payload.offline_threshold,
        team=payload.team,
        active=payload.active,
    )
    record("notify.subscription.create", sub, request=request, details={"channel": sub.channel, "events": sub.events})
    return 201, {**subscription_json(sub), "secret": secret}


@router.get("/subscriptions/{sub_id}", auth=viewer_auth, response=SubscriptionOut, summary="One subscription")
def get_subscription(request: HttpRequest, sub_id: int = SubId) -> dict[str, Any]:
    return subscription_json(_sub(request, sub_id))


@router.patch("/subscriptions/{sub_id}", auth=operator_auth, response=SubscriptionOut, summary="Change a subscription")
def patch_subscription(request: HttpRequest, payload: SubscriptionPatch, sub_id: int = SubId) -> dict[str, Any]:
    sub = _sub(request, sub_id)
    changes = payload.model_dump(exclude_unset=True)
    sub = _call(services.update, request.user, sub, changes)
    record("notify.subscription.update", sub, request=request, details={"fields": sorted(changes)})
    return subscription_json(sub)


@router.delete("/subscriptions/{sub_id}", auth=operator_auth, response={204: None}, summary="Delete a subscription")
def delete_subscription(request: HttpRequest, sub_id: int = SubId) -> HttpResponse:
    sub = _sub(request, sub_id)
    record("notify.subscription.delete", sub, request=request)
    sub.delete()
    return HttpResponse(status=204)


@router.post(
    "/subscriptions/{sub_id}/test",
    auth=operator_auth,
    response={202: DeliveryOut},
    summary="Send a test event now; its delivery log shows the receiver's answer",
)
def test_subscription(request: HttpRequest, sub_id: int = SubId) -> tuple[int, dict[str, Any]]:
    sub = _sub(request, sub_id)
    delivery = services.send_test(sub)
    record("notify.subscription.test", sub, request=request)
    return 202, delivery_json(delivery)


@router.post(
    "/subscriptions/{sub_id}/rotate-secret",
    auth=operator_auth,
    response=SecretOut,
    summary="A new webhook signing secret (shown once; the old one stops at once)",
)
def rotate_secret(request: HttpRequest, sub_id: int = SubId) -> dict[str, str]:
    sub = _sub(request, sub_id)
    secret = _call(services.rotate_secret, sub)
    record("notify.subscription.rotate_secret", sub, request=request)
    return {"secret": secret}


@router.get(
    "/subscriptions/{sub_id}/deliveries",
    auth=viewer_auth,
    response=DeliveryPage,
    summary="A subscription's delivery log, newest first, with each attempt's status code",
)
def list_deliveries(request: HttpRequest, filters: Query[DeliveryFilter], sub_id: int = SubId) -> dict[str, Any]:
    sub = _sub(request, sub_id)
    qs = sub.deliveries.select_related("event").prefetch_related("attempt_log")
    if filters.status:
        qs = qs.filter(status=filters.status)
    rows, nxt = paging.page(
        qs, name="deliveries", order=("-created_at", "-id"), cursor=filters.cursor, limit=filters.limit
    )
    return {"items": [delivery_json(d) for d in rows], "next_cursor": nxt}
