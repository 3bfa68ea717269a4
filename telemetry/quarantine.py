"""Setting aside what a job cannot use, with the reason, so the job goes on for everything else.

A shared job (rollups, drift, alerts, gates, campaign evaluation) works item by item; an item that
fails is recorded here, logged, shown on the version or campaign page and in the admin, and skipped.
Reports stay quarantined (``Report.quarantined``); a campaign's entry goes away when it evaluates
cleanly again (a person fixed it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from telemetry.models import Quarantine, Report

log = logging.getLogger("telemetry.quarantine")
MAX_REASON = 1000


def describe(exc: BaseException) -> str:
    """An exception as a reason a person can read (its type says what kind of trouble it was)."""
    text = str(exc).strip() or "no message"
    return f"{type(exc).__name__}: {text}"[:MAX_REASON]


def record(kind: str, key: str, reason: str, version_id: int | None = None, now: datetime | None = None) -> None:
    """Note (or count again) that ``kind``/``key`` was set aside for ``reason``."""
    now = now or timezone.now()
    reason = reason[:MAX_REASON]
    log.warning("quarantined %s %s: %s", kind, key, reason)
    with transaction.atomic():
        updated = Quarantine.objects.filter(kind=kind, key=key[:200]).update(
            reason=reason, last_at=now, occurrences=F("occurrences") + 1
        )
        if not updated:
            Quarantine.objects.bulk_create(
                [Quarantine(kind=kind, key=key[:200], version_id=version_id, reason=reason, first_at=now, last_at=now)],
                ignore_conflicts=True,
            )


def reports(bad: Iterable[tuple[uuid.UUID, int, str]], now: datetime | None = None) -> int:
    """Quarantine report rows ``(id, version id, reason)``: flagged, so no job reads them again."""
    now = now or timezone.now()
    bad = list(bad)
    if not bad:
        return 0
    for rid, _, reason in bad:
        log.warning("quarantined report %s: %s", rid, reason)
    Report.objects.filter(id__in=[rid for rid, _, _ in bad]).update(quarantined=True)
    Quarantine.objects.bulk_create(
        [
            Quarantine(
                kind=Quarantine.Kind.REPORT,
                key=str(rid),
                version_id=version_id,
                reason=reason[:MAX_REASON],
                first_at=now,
                last_at=now,
            )
            for rid, version_id, reason in bad
        ],
        ignore_conflicts=True,
    )
    return len(bad)


def release(kind: str, key: str) -> None:
    """The item works again (a campaign a person fixed): its note goes."""
    Quarantine.objects.filter(kind=kind, key=key).delete()


def of(kind: str, key: str) -> Quarantine | None:
    return Quarantine.objects.filter(kind=kind, key=key).first()


def of_version(version_id: int, limit: int = 50) -> list[Quarantine]:
    return list(Quarantine.objects.filter(version_id=version_id)[:limit])
