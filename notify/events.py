"""Making events and fanning them out to subscriptions: one Event per ``key``, one Delivery per match.

Called after the change committed (signals use ``transaction.on_commit``) and by the sweep; both
may see the same change, the unique ``key`` makes the second a no-op. Nothing here may break the
caller: a campaign must roll back even when the notification rows cannot be written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from notify.models import Delivery, Event, Subscription

log = logging.getLogger(__name__)


def absolute(path: str) -> str:
    base = (getattr(settings, "EDGEFLEET_PUBLIC_URL", "") or "").rstrip("/")
    return f"{base}{path}" if base else path


def matching(kind: str, model: str = "") -> list[Subscription]:
    """Active subscriptions to ``kind`` (and to this model, when they filter on one)."""
    subs = Subscription.objects.filter(active=True).order_by("pk")
    return [s for s in subs if kind in (s.events or []) and (not s.model_filter or s.model_filter == model)]


def emit(
    kind: str, key: str, payload: dict[str, Any], *, model: str = "", only: Iterable[Subscription] | None = None
) -> Event | None:
    """Record the event (once per key) and a pending delivery for each subscriber; queue the sends."""
    subs = list(only) if only is not None else matching(kind, model)
    try:
        with transaction.atomic():
            event, created = Event.objects.get_or_create(
                key=key[:200], defaults={"kind": kind, "model": model[:100], "payload": payload}
            )
            if not created:
                return None
            now = timezone.now()
            deliveries = Delivery.objects.bulk_create(
                [Delivery(subscription=s, event=event, next_attempt_at=now) for s in subs]
            )
    except IntegrityError:  # the same key made concurrently by the signal and the sweep
        return None
    ids = [d.pk for d in deliveries]
    if ids:
        transaction.on_commit(lambda: enqueue(ids), robust=True)
    return event


def enqueue(delivery_ids: list[Any]) -> None:
    """Hand the deliveries to workers; when the broker is away the beat job sends them later."""
    from notify.tasks import deliver

    for pk in delivery_ids:
        try:
            deliver.delay(str(pk))
        except Exception:
            log.warning("could not queue delivery %s; the beat job will send it", pk, exc_info=True)


def safely(fn: Any, *args: Any) -> None:
    """Run an emitter, logging instead of raising (a notification never breaks the action behind it)."""
    try:
        fn(*args)
    except Exception:
        log.exception("notification for %s failed", getattr(fn, "__name__", fn))


# ------------------------------------------------------------------------------- what each event says


def campaign_decision(decision_id: int) -> Event | None:
    from django.urls import reverse

    from rollout.models import CampaignDecision

    d = (
        CampaignDecision.objects.select_related("campaign__model", "campaign__version", "campaign__previous_version",
                                                "campaign__cohort")
        .filter(pk=decision_id)
        .first()
    )  # fmt: skip
    if d is None:
        return None
    c = d.campaign
    numbers = d.numbers or {}
    failed = [g.get("name") for g in numbers.get("gates", []) if isinstance(g, dict) and g.get("verdict") == "fail"]
    payload = {
        "campaign": c.pk,
        "name": c.name,
        "model": c.model.name,
        "version": c.version.label,
        "previous_version": c.previous_version.label if c.previous_version else None,
        "cohort": c.cohort.name if c.cohort else None,
        "decision": d.kind,
        "state": c.state,
        "actor": d.actor_label,
        "reason": d.reason,
        "wave": numbers.get("wave"),
        "verdict": numbers.get("verdict"),
        "failed_gates": failed,
        "at": d.at.isoformat(),
        "url": absolute(reverse("campaign-detail", args=[c.pk])),
    }
    return emit(f"campaign.{d.kind}", f"campaign.{d.kind}:{d.pk}", payload, model=c.model.name)


def alert_changed(alert_id: int, what: str) -> Event | None:
    from django.urls import reverse

    from telemetry.models import Alert

    a = Alert.objects.select_related("version__model").filter(pk=alert_id).first()
    if a is None:
        return None
    payload = {
        "alert": a.pk,
        "alert_kind": a.kind,
        "state": a.state,
        "model": a.version.model.name,
        "version": a.version.label,
        "cohort": a.cohort,
        "feature": a.feature,
        "message": a.message,
        "numbers": a.numbers or {},
        "resolved_by": a.resolved_by or None,
        "url": absolute(reverse("telemetry-alerts") + ("?state=resolved" if what == "resolved" else "")),
    }
    return emit(f"alert.{what}", f"alert.{what}:{a.pk}", payload, model=a.version.model.name)


def validation_finished(version_id: int) -> Event | None:
    from django.urls import reverse

    from ota.models import ModelVersion

    v = ModelVersion.objects.select_related("model").filter(pk=version_id).first()
    if v is None or v.status not in (ModelVersion.Status.STAGED, ModelVersion.Status.REJECTED):
        return None
    payload = {
        "model": v.model.name,
        "version": v.label,
        "status": v.status,
        "error": v.error or None,
        "validated_at": v.validated_at.isoformat() if v.validated_at else None,
        "url": absolute(reverse("model-version", args=[v.model.name, v.label])),
    }
    return emit("validation.finished", f"validation.finished:{v.pk}", payload, model=v.model.name)
