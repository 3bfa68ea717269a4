"""What the campaign page says happened: when the campaign stopped, and where its devices went.

After an automatic rollback the page used to say "Targeted now 141 · Still on v1 141" and "Rolled
Back since 09:25:00" (the wave's start, not the rollback at 09:25:16). These answer instead: the
time of the decision that stopped the campaign, and how many of the devices that took the new
version during the campaign run the previous one again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.core.cache import cache
from django.db.models import Count, Subquery

from fleet.models import Device, DeviceEvent
from fleet.services import _json_eq
from rollout.models import Campaign

S = Campaign.State
RETURNED_SECONDS = 5


@dataclass(frozen=True)
class Stopped:
    """The decision that stopped or held the campaign, and when."""

    kind: str  # "rolled back", "paused", "aborted", "completed"
    at: datetime | None


# state -> the decision that puts a campaign in it
STOPPING = {S.ROLLED_BACK: "rollback", S.ABORTED: "abort", S.COMPLETED: "complete", S.PAUSED: "pause"}


def stopped(campaign: Campaign) -> Stopped | None:
    """When a campaign that no longer advances stopped; None while it runs (or before it starts).

    The time is the decision's own (the timeline's and the chart's marker), not the wave's start.
    """
    kind = STOPPING.get(campaign.state)
    if kind is None:
        return None
    at = campaign.decisions.filter(kind=kind).order_by("-at", "-id").values_list("at", flat=True).first()
    return Stopped(campaign.get_state_display().lower(), at or campaign.finished_at)


@dataclass(frozen=True)
class Returned:
    """Devices that installed the campaign's version while it ran (``took``), and where they are now."""

    took: int
    back: int  # run the previous version again
    still: int  # still run the campaign's version
    previous_label: str
    version_label: str

    @property
    def elsewhere(self) -> int:
        return max(self.took - self.back - self.still, 0)


def returned(campaign: Campaign) -> Returned | None:
    """For a rolled-back campaign: of the devices that installed its version, how many are back.

    "Took the version" is an ``installed`` event of that version received after the campaign
    started (the server's clock: a device's own ``at`` is not trusted for this), so devices that
    never left the previous version are not counted as returned.
    """
    if campaign.state != S.ROLLED_BACK or campaign.started_at is None or campaign.previous_version is None:
        return None
    key = f"rollout:returned:{campaign.pk}"
    found = cache.get(key)
    if found is None:
        found = _returned(campaign)
        cache.set(key, found, RETURNED_SECONDS)
    return found


def _returned(campaign: Campaign) -> Returned:
    model = campaign.model.name
    label, previous = campaign.version.label, campaign.previous_version.label
    took = (
        DeviceEvent.objects.filter(
            kind="installed", model_name=model, version_label=label, received_at__gte=campaign.started_at
        )
        .order_by()
        .values("device_id")
    )
    counts = Device.objects.filter(pk__in=Subquery(took)).aggregate(
        took=Count("pk"),
        back=Count("pk", filter=_json_eq("installed", model, previous)),
        still=Count("pk", filter=_json_eq("installed", model, label)),
    )
    return Returned(counts["took"], counts["back"], counts["still"], previous, label)
