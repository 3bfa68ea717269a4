"""Where a campaign's targeted devices are: on the version, still on the previous one, or elsewhere;
how many committed it (their agent's probation passed), failed to install it or never committed it;
and how many wait for a maintenance window or an install condition. For the campaign page and the
API's status; the gate job reads only ``committed_count`` (a wave counts committed devices).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from fleet.models import Device, DeviceEvent
from rollout import cohorts, placement, targeting, waiting
from rollout.models import Campaign


def _outcome_events(campaign: Campaign) -> Any:
    since = campaign.started_at or campaign.created_at
    return DeviceEvent.objects.filter(
        model_name=campaign.model.name, version_label=campaign.version.label, at__gte=since
    )


def committed_count(campaign: Campaign) -> int:
    """Devices that reported ``committed`` for the campaign's version since it started."""
    return _outcome_events(campaign).filter(kind="committed").values("device_id").distinct().count()


def commit_outcomes(campaign: Campaign, now: datetime | None = None) -> dict[str, int]:
    """Per device, its latest outcome with the version: ``committed``, ``probation`` (installed, within
    ``commit_minutes``), ``not_committed`` (installed longer ago without a commit: a failure),
    ``fell_back`` (its local guard gave the version up: a failure)."""
    now = now or timezone.now()
    deadline = now - timedelta(minutes=float(campaign.commit_minutes or 60))
    latest: dict[Any, tuple[str, datetime]] = {}
    rows = _outcome_events(campaign).filter(kind__in=["installed", "committed", "fell_back"])
    for dev, kind, at in rows.order_by("at", "received_at").values_list("device_id", "kind", "at").iterator():
        latest[dev] = (kind, at)
    out = Counter({"committed": 0, "probation": 0, "not_committed": 0, "fell_back": 0})
    for kind, at in latest.values():
        if kind == "installed":
            out["probation" if at >= deadline else "not_committed"] += 1
        else:
            out[kind] += 1
    return dict(out)


def waiting_now(campaign: Campaign, now: datetime | None = None) -> dict[str, int]:
    """Reached devices not on the version that wait for a window or a condition now (empty: no rules)."""
    if not waiting.has_rules(campaign.windows, campaign.conditions) or campaign.wave_index < 0:
        return {}
    return waiting.waiting_counts(
        cohort=campaign.cohort,
        campaign_id=campaign.pk,
        covered=placement.coverage(campaign.waves, campaign.wave_index),
        req=targeting.requirements_for(campaign.version, campaign.requirements),
        model=campaign.model.name,
        label=campaign.version.label,
        windows=campaign.windows,
        window_tz=campaign.window_tz,
        conditions=campaign.conditions,
        now=now or timezone.now(),
        bucketing=campaign.bucketing,
    )


def _with_outcomes(campaign: Campaign, counts: dict[str, Any]) -> dict[str, Any]:
    outcomes = commit_outcomes(campaign)
    counts.update(
        committed=outcomes["committed"],
        probation=outcomes["probation"],
        not_committed=outcomes["not_committed"],
        fell_back=outcomes["fell_back"],
        waiting=waiting_now(campaign),
    )
    return counts


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
    return _with_outcomes(campaign, {"targeted": len(ids), "excluded": excluded, "install_failed": failed, **counts})


def failed_targeted(campaign: Campaign, req: placement.Requirements, covered: int) -> int:
    """Targeted devices with an ``install_failed`` event for the version: read from those events (an
    index), so the cost is the devices that failed, not the fleet."""
    from fleet import selectors

    match = selectors.predicate(selectors.parse(cohorts.selector_text(campaign.cohort)))
    failed_ids = DeviceEvent.objects.filter(
        kind="install_failed", model_name=campaign.model.name, version_label=campaign.version.label
    ).values("device_id")
    rows = Device.objects.filter(pk__in=failed_ids, token_revoked_at__isnull=True).values_list(
        "id", "labels", "hardware"
    )
    return sum(
        1
        for device_id, labels, hw in rows.iterator(chunk_size=2000)
        if match(labels or {})
        and placement.incompatibility(hw or {}, req) is None
        and placement.bucket_for(device_id, campaign.pk, campaign.bucketing) < covered
    )


def _install_progress_grouped(campaign: Campaign, cached: bool) -> dict[str, Any]:
    """``install_progress`` from kept counts (keyed campaigns) or grouped rows: no per-device loop."""
    req = targeting.requirements_for(campaign.version, campaign.requirements)
    covered = placement.coverage(campaign.waves, campaign.wave_index)
    model, label = campaign.model.name, campaign.version.label
    previous = campaign.previous_version.label if campaign.previous_version else None
    excluded: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    targeted = failed = 0
    kept = cohorts.kept_available(campaign.bucketing)
    if kept:
        groups = cohorts.kept_groups(campaign.cohort, campaign.pk, [covered], installed_model=model)
        failed = failed_targeted(campaign, req, covered)
    else:
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
    return _with_outcomes(
        campaign, {"targeted": targeted, "excluded": dict(excluded), "install_failed": failed, **counts}
    )
