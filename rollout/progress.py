"""Where a campaign's targeted devices are: on the version, still on the previous one, or elsewhere,
and how many failed to install it. For the campaign page and the API's status; the gate job does not
read it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fleet.models import Device
from rollout import cohorts, placement, targeting
from rollout.models import Campaign


def install_progress(campaign: Campaign, cached: bool = False) -> dict[str, Any]:
    """How many targeted devices report the version installed, still the previous one, or something else.

    ``cached``: the page may show counts up to ``GROUPS_CACHE_SECONDS`` old (see ``cohorts._cached_rows``).
    """
    if cohorts.grouped_scan_available():
        return _install_progress_grouped(campaign, cached)
    ids, excluded = targeting.targeted_device_ids(campaign)
    model = campaign.model.name
    counts: Counter[str] = Counter()
    for installed in Device.objects.filter(pk__in=ids).values_list("installed", flat=True).iterator(chunk_size=2000):
        label = (installed or {}).get(model)
        if label == campaign.version.label:
            counts["on_version"] += 1
        elif campaign.previous_version and label == campaign.previous_version.label:
            counts["on_previous"] += 1
        else:
            counts["other"] += 1
    failed = (
        Device.objects.filter(
            pk__in=ids,
            events__kind="install_failed",
            events__model_name=model,
            events__version_label=campaign.version.label,
        )
        .distinct()
        .count()
        if ids
        else 0
    )
    return {"targeted": len(ids), "excluded": excluded, "install_failed": failed, **counts}


def _install_progress_grouped(campaign: Campaign, cached: bool) -> dict[str, Any]:
    """``install_progress`` from grouped rows: one query however large the cohort."""
    req = targeting.requirements_for(campaign.version, campaign.requirements)
    covered = placement.coverage(campaign.waves, campaign.wave_index)
    model, label = campaign.model.name, campaign.version.label
    previous = campaign.previous_version.label if campaign.previous_version else None
    excluded: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    targeted = failed = 0
    groups = cohorts.grouped_devices(
        campaign.cohort, campaign.pk, [covered], req, installed_model=model, failed_label=label, cached=cached
    )
    for n, _, hw, slot, installed, has_failed in groups:
        reason = placement.incompatibility(hw, req)
        if reason:
            excluded[reason] += n
            continue
        if slot is None:
            continue
        targeted += n
        failed += n if has_failed else 0
        if installed == label:
            counts["on_version"] += n
        elif previous and installed == previous:
            counts["on_previous"] += n
        else:
            counts["other"] += n
    return {"targeted": targeted, "excluded": dict(excluded), "install_failed": failed, **counts}
