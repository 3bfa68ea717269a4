"""Sending deliveries: claim a due row, send it on its channel, record the attempt, schedule a retry.

A row is claimed with a conditional UPDATE (a lease), so two workers (a queued task and the beat
job's re-send) never send the same delivery at once, and no database lock is held while a slow
receiver answers. A failed try is retried with exponential backoff until ``RETRY_HOURS`` after the
event; then the delivery is marked failed. Receivers dedup by the ``X-EdgeFleet-Delivery`` id.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from notify import backoff, kinds, outbound, signing
from notify.models import Attempt, Delivery, Subscription
from notify.secrets import reveal

log = logging.getLogger(__name__)


def setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


@dataclass
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str = ""
    duration_ms: int = 0


def body_of(delivery: Delivery) -> bytes:
    """The webhook body: the same bytes on every try (the signature's timestamp is what changes)."""
    e = delivery.event
    envelope = {
        "id": str(e.pk),
        "type": e.kind,
        "created_at": e.created_at.isoformat(),
        "delivery": str(delivery.pk),
        "data": e.payload,
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


def _http(url: str, body: bytes, headers: dict[str, str]) -> Outcome:
    resp = outbound.post(
        url,
        body,
        headers,
        timeout=float(setting("EDGEFLEET_NOTIFY_TIMEOUT", 10)),
        allow_private=bool(setting("EDGEFLEET_NOTIFY_ALLOW_PRIVATE", False)),
    )
    ok = resp.status is not None and 200 <= resp.status < 300
    error = resp.error
    if resp.status is not None and not ok:
        snippet = resp.body[:200].decode("utf-8", "replace")
        error = f"HTTP {resp.status}" + (" (redirects are not followed)" if 300 <= resp.status < 400 else "")
        error += f": {snippet}" if snippet else ""
    return Outcome(ok, resp.status, error, resp.duration_ms)


def send_webhook(sub: Subscription, delivery: Delivery) -> Outcome:
    url, secret = reveal(sub.target_encrypted), reveal(sub.secret_encrypted)
    if not url or not secret:
        return Outcome(False, error="the URL or secret cannot be read (was the server's secret key changed?)")
    body = body_of(delivery)
    headers = {
        signing.HEADER: signing.header(secret, body),
        "X-EdgeFleet-Event": delivery.event.kind,
        "X-EdgeFleet-Delivery": str(delivery.pk),
        "X-EdgeFleet-Attempt": str(delivery.attempts + 1),
    }
    return _http(url, body, headers)


def send_slack(sub: Subscription, delivery: Delivery) -> Outcome:
    url = reveal(sub.target_encrypted)
    if not url:
        return Outcome(False, error="the Slack URL cannot be read (was the server's secret key changed?)")
    text = kinds.text(delivery.event.kind, delivery.event.payload)
    return _http(url, json.dumps({"text": text}).encode(), {})


def recipients(sub: Subscription) -> list[str]:
    if sub.emails:
        return list(sub.emails)
    if sub.owner_id and sub.owner and sub.owner.email:
        return [sub.owner.email]
    if sub.team_id:
        return sorted({u.email for u in sub.team.user_set.filter(is_active=True) if u.email})
    return []


def send_email(sub: Subscription, delivery: Delivery) -> Outcome:
    to = recipients(sub)
    if not to:
        return Outcome(False, error="no recipients: give addresses or an owner with an e-mail address")
    e = delivery.event
    try:
        send_mail(
            subject="[EdgeFleet] " + kinds.title(e.kind, e.payload)[:180],
            message=kinds.text(e.kind, e.payload) + f"\n\n(delivery {delivery.pk})",
            from_email=None,
            recipient_list=to,
            fail_silently=False,
        )
    except Exception as exc:
        return Outcome(False, error=f"{type(exc).__name__}: {exc}")
    return Outcome(True)


CHANNELS = {"webhook": send_webhook, "slack": send_slack, "email": send_email}


def _claim(delivery_id: Any, now: Any) -> bool:
    lease = now + timedelta(seconds=2 * float(setting("EDGEFLEET_NOTIFY_TIMEOUT", 10)) + 30)
    return bool(
        Delivery.objects.filter(pk=delivery_id, status=Delivery.Status.PENDING, next_attempt_at__lte=now)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(claimed_until=lease)
    )


def deliver(delivery_id: Any) -> str:
    """Send one delivery if it is due and nobody else is sending it: delivered, retry, failed or skip."""
    now = timezone.now()
    if not _claim(delivery_id, now):
        return "skip"
    d = Delivery.objects.select_related("subscription__owner", "subscription__team", "event").get(pk=delivery_id)
    sub = d.subscription
    if not sub.active:
        outcome = Outcome(False, error="the subscription is switched off")
    else:
        try:
            outcome = CHANNELS[sub.channel](sub, d)
        except Exception as exc:
            log.exception("delivery %s crashed", d.pk)
            outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}")
    done = timezone.now()
    window = float(setting("EDGEFLEET_NOTIFY_RETRY_HOURS", 24)) * 3600
    with transaction.atomic():
        Attempt.objects.create(
            delivery=d, status_code=outcome.status_code, error=outcome.error[:500], duration_ms=outcome.duration_ms
        )
        d.attempts += 1
        d.last_status_code, d.last_error, d.claimed_until = outcome.status_code, outcome.error[:500], None
        if outcome.ok:
            d.status, d.delivered_at, d.next_attempt_at = Delivery.Status.DELIVERED, done, None
        elif not sub.active or (done - d.created_at).total_seconds() >= window:
            d.status, d.next_attempt_at = Delivery.Status.FAILED, None
        else:
            wait = backoff.delay(
                d.attempts,
                base=float(setting("EDGEFLEET_NOTIFY_BACKOFF_BASE", 10)),
                cap=float(setting("EDGEFLEET_NOTIFY_BACKOFF_CAP", 3600)),
            )
            d.next_attempt_at = min(done + timedelta(seconds=wait), d.created_at + timedelta(seconds=window))
        d.save()
    return {"delivered": "delivered", "failed": "failed"}.get(d.status, "retry")


def due(now: Any = None, limit: int = 500) -> list[Any]:
    now = now or timezone.now()
    rows = (
        Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    return list(rows)


def send_due(limit: int = 500) -> int:
    """Beat job: queue every due delivery (first tries the broker lost, and retries whose time came)."""
    from notify.events import enqueue

    ids = due(limit=limit)
    enqueue(ids)
    return len(ids)
