"""Drift alerts of a rolled-back version: the rollback answers them, so it resolves them.

After an automatic rollback the version's drift alerts stayed open for good: no device runs the
version any more, so no window ever came to resolve them, and windows from before the rollback that
were rolled up after it opened new ones. Now the rollback resolves the version's open drift alerts
(``resolved_by`` names the campaign) and a window that started before the version's latest rollback
opens none. A window after it (the version rolled out again, or a device still on it) opens one as
usual. Regression alerts stay open: they are the finding behind the rollback, for a person to read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from telemetry.models import Alert

RESOLVED_BY = "rollback of “{name}”"


def rolled_back_at(version_id: int) -> datetime | None:
    """When the version was last rolled back by a campaign (None if never)."""
    from rollout.models import Campaign

    return (
        Campaign.objects.filter(version_id=version_id, state=Campaign.State.ROLLED_BACK)
        .aggregate(at=Max("finished_at"))
        .get("at")
    )


def resolve_for_rollback(campaign_id: int, now: datetime | None = None) -> int:
    """Resolve the open drift alerts of the campaign's version; returns how many."""
    from rollout.models import Campaign

    campaign = Campaign.objects.filter(pk=campaign_id).only("name", "version_id", "state").first()
    if campaign is None or campaign.state != Campaign.State.ROLLED_BACK:
        return 0
    now = now or timezone.now()
    by = RESOLVED_BY.format(name=campaign.name)[:150]
    return Alert.objects.filter(kind=Alert.Kind.DRIFT, version_id=campaign.version_id, state=Alert.State.OPEN).update(
        state=Alert.State.RESOLVED, resolved_at=now, updated_at=now, resolved_by=by
    )


def on_decision(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    """``post_save`` of ``CampaignDecision``: a rollback resolves its version's drift alerts once committed."""
    if created and instance.kind == "rollback":
        campaign_id = instance.campaign_id
        transaction.on_commit(lambda: resolve_for_rollback(campaign_id))
