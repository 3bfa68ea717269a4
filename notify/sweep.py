"""The minute job: events no signal saw, the fleet's offline share, and pruning old events.

Rows changed with ``QuerySet.update()`` (the drift job resolving an alert) send no signal, so the
sweep looks at what changed since its high-water mark and emits what is missing; the unique event
key makes anything the signals already sent a no-op. The first sweep only sets the mark: history
from before notifications existed is not sent.
"""

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from notify import events
from notify.kinds import CAMPAIGN_KINDS
from notify.models import Delivery, Event, Mark, Subscription

OVERLAP = timedelta(minutes=2)  # rows committed just before the last mark by slow transactions
MAX_LOOKBACK = timedelta(days=1)
KEEP_EVENTS = timedelta(days=30)


def _missing(keys: list[str]) -> set[str]:
    have = set(Event.objects.filter(key__in=keys).values_list("key", flat=True))
    return set(keys) - have


def missed_events(now: datetime | None = None) -> int:
    from ota.models import ModelVersion
    from rollout.models import CampaignDecision
    from telemetry.models import Alert

    now = now or timezone.now()
    mark, created = Mark.objects.get_or_create(name="events", defaults={"at": now})
    if created:
        return 0
    since = max(mark.at - OVERLAP, now - MAX_LOOKBACK)
    todo: list[tuple[str, Any, tuple]] = []
    for pk in Alert.objects.filter(opened_at__gte=since).values_list("pk", flat=True):
        todo.append((f"alert.opened:{pk}", events.alert_changed, (pk, "opened")))
    for pk in Alert.objects.filter(state="resolved", resolved_at__gte=since).values_list("pk", flat=True):
        todo.append((f"alert.resolved:{pk}", events.alert_changed, (pk, "resolved")))
    for pk, kind in CampaignDecision.objects.filter(at__gte=since, kind__in=CAMPAIGN_KINDS).values_list("pk", "kind"):
        todo.append((f"campaign.{kind}:{pk}", events.campaign_decision, (pk,)))
    versions = ModelVersion.objects.filter(validated_at__gte=since, status__in=["staged", "rejected"])
    for pk in versions.values_list("pk", flat=True):
        todo.append((f"validation.finished:{pk}", events.validation_finished, (pk,)))
    missing = _missing([k for k, _, _ in todo])
    sent = 0
    for key, fn, args in todo:
        if key in missing:
            events.safely(fn, *args)
            sent += 1
    Mark.objects.filter(name="events").update(at=now)
    return sent


def offline_share(now: datetime | None = None) -> tuple[float, int, int]:
    """``(share, offline, seen)`` over devices that ever polled and are not revoked."""
    from fleet.models import Device
    from fleet.services import status_q

    now = now or timezone.now()
    live = Device.objects.filter(token_revoked_at__isnull=True, last_seen_at__isnull=False)
    seen = live.count()
    offline = live.filter(status_q("offline", now)).count()
    return (offline / seen if seen else 0.0), offline, seen


def check_offline(now: datetime | None = None) -> int:
    """Tell each subscriber once when the offline share goes ABOVE its threshold (equal is not above)."""
    subs = [s for s in Subscription.objects.filter(active=True) if "fleet.offline" in (s.events or [])]
    if not subs:
        return 0
    now = now or timezone.now()
    share, offline, seen = offline_share(now)
    crossed = [s for s in subs if share > s.offline_threshold and not s.offline_firing]
    back = [s.pk for s in subs if share <= s.offline_threshold and s.offline_firing]
    if back:
        Subscription.objects.filter(pk__in=back).update(offline_firing=False)
    if not crossed:
        return 0
    Subscription.objects.filter(pk__in=[s.pk for s in crossed]).update(offline_firing=True)
    from django.urls import reverse

    for s in crossed:
        payload = {
            "share": round(share, 4),
            "threshold": s.offline_threshold,
            "offline": offline,
            "seen": seen,
            "url": events.absolute(reverse("devices") + "?status=offline"),
        }
        events.emit("fleet.offline", f"fleet.offline:{s.pk}:{now.isoformat()}", payload, only=[s])
    return len(crossed)


def prune(now: datetime | None = None) -> int:
    """Events older than a month whose deliveries are all settled go (their log with them)."""
    now = now or timezone.now()
    old = Event.objects.filter(created_at__lt=now - KEEP_EVENTS).exclude(deliveries__status=Delivery.Status.PENDING)
    return old.delete()[0]
