"""Which devices a campaign reaches: what a version requires of a device, the dry run of a plan, and
the devices a running campaign targets now.

Placement is by stable bucket (``rollout.placement``): nothing here writes per-device rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fleet.models import Cohort
from ota.models import ModelVersion
from rollout import cohorts, placement, variant_rule
from rollout.models import Campaign


def requirements_for(version: ModelVersion, extra: Mapping[str, Any] | None = None) -> placement.Requirements:
    """What the version needs from a device: opset and size from the registry, int8 size if built."""
    report = version.report or {}
    variants = list(version.variants.select_related("artifact"))
    int8 = next((v for v in variants if v.kind == "int8"), None)
    extra = extra or {}
    opset = report.get("opset")
    fp32 = variant_rule.Figures(version.artifact.size, (report.get("latency_ms") or {}).get("p50"), 1.0)
    builds = [("fp32", fp32)] + [
        (
            v.kind,
            variant_rule.Figures(
                v.artifact.size, (v.metrics.get("latency_ms") or {}).get("p50"), v.metrics.get("agreement"), v.released
            ),
        )
        for v in variants
    ]
    return placement.Requirements(
        opset=int(opset) if isinstance(opset, (int, float)) else None,
        size_bytes=int(report.get("file_size") or version.artifact.size or 0),
        int8_size_bytes=int8.artifact.size if int8 else None,
        provider=(extra.get("provider") or None),
        min_storage_mb=float(extra.get("min_storage_mb") or 0),
        builds=tuple(builds) if len(builds) > 1 else (),
    )


# --- dry run ------------------------------------------------------------------------------------


def _hardware_key(hw: Mapping[str, Any]) -> str:
    ram = hw.get("ram_mb")
    ram_txt = f"{int(ram) // 1024} GiB" if isinstance(ram, (int, float)) and ram >= 1024 else f"{ram} MiB"
    return f"{hw.get('arch') or '?'} · {ram_txt} · ort {hw.get('ort_version') or '?'}"


@dataclass
class DryRun:
    """How many devices each wave reaches, by label and hardware, and who is excluded and why."""

    total: int
    compatible: int
    excluded: dict[str, int]
    waves: list[dict[str, Any]]
    campaign_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "compatible": self.compatible,
            "excluded": self.excluded,
            "waves": self.waves,
            "campaign_id": self.campaign_id,
        }


def dry_run(
    *,
    version: ModelVersion,
    cohort: Cohort | None,
    waves: list[dict[str, Any]],
    campaign_id: int | None,
    requirements: Mapping[str, Any] | None = None,
    cached: bool = False,
    bucketing: str = placement.KEYED,
) -> DryRun:
    """Count, per wave, the devices reached (cumulative), by label and hardware; exclusions by reason.

    Buckets depend on the campaign id, so the counts are exact for that id (the creation form
    reserves one) and statistically the same for any other. ``cached``: pages may take counts up
    to ``GROUPS_CACHE_SECONDS`` old (see ``cohorts._cached_rows``); starting a campaign never does.
    A keyed campaign (``bucketing``, every campaign made since kept counts) is counted from the kept
    counts (``fleet.kept``): exact and current, reading no device.
    """
    req = requirements_for(version, requirements)
    cid = campaign_id if campaign_id is not None else 0
    excluded: Counter[str] = Counter()
    per_wave: list[dict[str, Counter]] = [
        {"labels": Counter(), "hardware": Counter(), "variant": Counter()} for _ in waves
    ]
    reached_new = [0] * len(waves)
    total = compatible = 0
    for n, labels, hw, k in _dry_run_groups(cohort, cid, waves, req, cached, bucketing):
        total += n
        reason = placement.incompatibility(hw, req)
        if reason:
            excluded[reason] += n
            continue
        compatible += n
        if k is None:
            continue
        reached_new[k] += n
        stats = per_wave[k]
        for key, value in labels.items():
            stats["labels"][f"{key}={value}"] += n
        stats["hardware"][_hardware_key(hw)] += n
        stats["variant"][placement.choose_variant(hw, req)] += n
    rows: list[dict[str, Any]] = []
    cum: dict[str, Counter] = {"labels": Counter(), "hardware": Counter(), "variant": Counter()}
    running = 0
    for k, w in enumerate(waves):
        running += reached_new[k]
        for part in cum:
            cum[part].update(per_wave[k][part])
        rows.append(
            {
                "index": k,
                "number": k + 1,
                "percent": w.get("percent"),
                "new": reached_new[k],
                "devices": running,
                "by_label": dict(cum["labels"].most_common(8)),
                "by_hardware": dict(cum["hardware"].most_common(8)),
                "by_variant": dict(cum["variant"]),
            }
        )
    return DryRun(total, compatible, dict(excluded), rows, campaign_id)


def _dry_run_groups(
    cohort: Cohort | None,
    cid: int,
    waves: list[dict[str, Any]],
    req: placement.Requirements,
    cached: bool = False,
    bucketing: str = placement.KEYED,
) -> Iterator[tuple[int, dict, dict, int | None]]:
    """``(n, labels, hardware, first wave reaching them)``: kept counts, groups from PostgreSQL, or devices."""
    limits = [placement.coverage(waves, i) for i in range(len(waves))]
    if cohorts.kept_available(bucketing):
        for n, labels, hw, slot, _, _ in cohorts.kept_groups(cohort, cid, limits):
            yield n, labels, hw, slot
        return
    if cohorts.grouped_scan_available():
        for n, labels, hw, slot, _, _ in cohorts.grouped_devices(cohort, cid, limits, req, cached=cached):
            yield n, labels, hw, slot
        return
    for device_id, labels, hw in cohorts.cohort_devices(cohort):
        yield 1, labels, hw, placement.wave_of(placement.bucket_for(device_id, cid, bucketing), waves)


def targeted_device_ids(campaign: Campaign) -> tuple[list[Any], dict[str, int]]:
    """Device ids the campaign reaches now (compatible, bucket below coverage) and exclusions by reason."""
    req = requirements_for(campaign.version, campaign.requirements)
    covered = placement.coverage(campaign.waves, campaign.wave_index)
    ids: list[Any] = []
    excluded: Counter[str] = Counter()
    for device_id, _, hw in cohorts.cohort_devices(campaign.cohort):
        reason = placement.incompatibility(hw, req)
        if reason:
            excluded[reason] += 1
        elif placement.bucket_for(device_id, campaign.pk, campaign.bucketing) < covered:
            ids.append(device_id)
    return ids, dict(excluded)
