"""Who of a campaign's devices waits for a maintenance window or an install condition, and the soak
clock that pauses while every device of the wave is outside its window.

The rules are rollout/windows.py's (pure); this module only reads devices. The agent decides for
itself when to install (agent/conditions.py, from the manifest's ``install``); these counts are the
server's view of the same rules, from each device's ``tz`` label and the conditions it last reported
in its poll (``Device.conditions``). Devices are scanned one by one, and only for a campaign that has
windows or conditions: a campaign without them costs nothing here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from fleet.models import Cohort, Device
from rollout import cohorts, placement
from rollout import windows as W


def rules_of(windows: Iterable[Any], window_tz: str, conditions: Mapping[str, Any] | None) -> tuple[list, str, dict]:
    """A campaign's stored windows, zone mode and conditions, checked (WindowError if tampered with)."""
    return (
        W.parse_windows(windows or []),
        W.validate_tz_mode(window_tz or W.DEVICE_TZ),
        W.validate_conditions(conditions or {}),
    )


def has_rules(windows: Iterable[Any] | None, conditions: Mapping[str, Any] | None) -> bool:
    return bool(list(windows or [])) or bool(conditions)


def _devices(cohort: Cohort | None) -> Iterable[tuple[Any, dict, dict, dict, dict]]:
    """(id, labels, hardware, installed, conditions) of the cohort's devices."""
    match = cohorts.selector_text(cohort)
    from fleet import selectors

    pred = selectors.predicate(selectors.parse(match))
    rows = Device.objects.filter(token_revoked_at__isnull=True).values_list(
        "id", "labels", "hardware", "installed", "conditions"
    )
    for device_id, labels, hw, installed, cond in rows.iterator(chunk_size=2000):
        if pred(labels or {}):
            yield device_id, labels or {}, hw or {}, installed or {}, cond or {}


def waiting_counts(
    *,
    cohort: Cohort | None,
    campaign_id: int,
    covered: int | None,
    req: placement.Requirements,
    model: str,
    label: str,
    windows: Iterable[Any],
    window_tz: str,
    conditions: Mapping[str, Any] | None,
    now: datetime,
    bucketing: str = placement.KEYED,
) -> dict[str, int]:
    """Compatible devices (reached now, or all when ``covered`` is None: a dry run) not on ``label`` that
    would not install at ``now``: ``{"window": n, "power": n, "network": n, "idle": n, "devices": n}``
    (a device may wait for several reasons; ``devices`` counts each once). Empty without rules."""
    if not has_rules(windows, conditions):
        return {}
    ws, mode, required = rules_of(windows, window_tz, conditions)
    counts: Counter[str] = Counter()
    for device_id, labels, hw, installed, reported in _devices(cohort):
        if placement.incompatibility(hw, req) is not None or installed.get(model) == label:
            continue
        if covered is not None and placement.bucket_for(device_id, campaign_id, bucketing) >= covered:
            continue
        reasons = [] if W.open_at(ws, W.device_zone(labels, mode), now) else ["window"]
        reasons += W.unmet(required, reported)
        for r in reasons:
            counts[r] += 1
        counts["devices"] += 1 if reasons else 0
    keys = (["window"] if ws else []) + list(required)
    return {"devices": counts["devices"], **{k: counts[k] for k in keys}}


def zones(cohort: Cohort | None, window_tz: str) -> set[str]:
    """The zones a campaign's windows are read in: its fixed zone, or its devices' zones (UTC for none)."""
    if window_tz and window_tz != W.DEVICE_TZ:
        return {window_tz}
    return {W.device_zone(labels) for _, labels, _, _, _ in _devices(cohort)} or {"UTC"}


def soak_seconds(
    cohort: Cohort | None, windows: Iterable[Any], window_tz: str, start: datetime, now: datetime
) -> float:
    """Seconds since ``start`` that count towards a wave's soak: only while a window is open for some
    device (no windows: all of them)."""
    ws = W.parse_windows(windows or [])
    if not ws:
        return max(0.0, (now - start).total_seconds())
    return W.open_seconds(ws, zones(cohort, window_tz), start, now)


def plan_waiting(
    *,
    version: Any,
    cohort: Cohort | None,
    requirements: Mapping[str, Any] | None,
    windows: Iterable[Any],
    window_tz: str,
    conditions: Mapping[str, Any] | None,
    campaign_id: int | None = None,
    now: datetime | None = None,
) -> dict[str, int]:
    """The dry run's "would wait now" counts over every compatible device of the cohort."""
    from django.utils import timezone

    from rollout.targeting import requirements_for

    return waiting_counts(
        cohort=cohort,
        campaign_id=campaign_id or 0,
        covered=None,
        req=requirements_for(version, requirements),
        model=version.model.name,
        label=version.label,
        windows=windows,
        window_tz=window_tz,
        conditions=conditions,
        now=now or timezone.now(),
    )
