"""What the fleet measured for a version: latency per hardware class, and health beside another version.

Devices report latency as a (DP-noised) histogram over ``LATENCY_EDGES_MS`` per window and version;
a device's hardware is what it declared at enrollment (``Device.hardware``). Grouping reports by a
hardware class gives the latency the model really has on that class of device, next to the
server's own number (the advice is to measure on the target, not to trust FLOPs).

k-suppression (``EDGEFLEET_MIN_COHORT``): a class with fewer distinct reporting devices than k is
not computed at all; the page says only how many classes were left out. Quantiles are read off the
summed histogram (linear within a bin), so they are as coarse as the bins.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import numpy as np
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from edgefleet.display import safe_label
from telemetry import regression
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.models import DriftResult, Report, Rollup

DAYS = 7
CACHE_SECONDS = 60
ALL = "all"


def min_cohort() -> int:
    from telemetry.services import min_cohort as k

    return k()


def hardware_class(hw: Mapping[str, Any] | None) -> str:
    """``aarch64 · cpu · 4 cores · 4 GiB``: the fields that set a CPU model's speed (device-declared, cleaned)."""
    hw = hw if isinstance(hw, Mapping) else {}
    arch = safe_label(hw.get("arch")) or "unknown arch"
    acc = safe_label(hw.get("accelerator"))
    parts = [arch, acc if acc and acc != "none" else "cpu"]
    cores = hw.get("cores")
    if isinstance(cores, int) and not isinstance(cores, bool) and 0 < cores < 100_000:
        parts.append(f"{cores} cores")
    ram = hw.get("ram_mb")
    if isinstance(ram, int | float) and not isinstance(ram, bool) and 0 < ram < 1e9:
        parts.append(f"{ram / 1024:.3g} GiB" if ram >= 1024 else f"{ram:.0f} MiB")
    return " · ".join(parts)


def by_class(rows: Iterable[tuple[Any, Mapping[str, Any] | None, Any, float]], k: int) -> dict[str, Any]:
    """Latency per hardware class from ``(device id, hardware, latency counts, inferences)`` report rows (pure).

    Returns ``{"classes": [{"hardware", "devices", "inferences", "p50", "p95"}], "hidden": n, "k": k}``;
    classes below k devices count in ``hidden`` only. Rows whose counts are not the latency bins are skipped.
    """
    n_bins = len(LATENCY_EDGES_MS) - 1
    per_device: dict[Any, list] = {}
    for device_id, hw, latency, n in rows:
        counts = _counts(latency, n_bins)
        if counts is None:
            continue
        entry = per_device.setdefault(device_id, [hw, np.zeros(n_bins), 0.0])
        entry[1] += counts
        entry[2] += _finite(n)
    return by_group([(1, hw, counts, n) for hw, counts, n in per_device.values()], k)


def by_group(groups: Iterable[tuple[int, Mapping[str, Any] | None, Any, float]], k: int) -> dict[str, Any]:
    """As ``by_class``, from ``(devices, hardware, summed counts, inferences)`` per distinct hardware (pure)."""
    n_bins = len(LATENCY_EDGES_MS) - 1
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(n_bins))
    devices: dict[str, int] = defaultdict(int)
    inferences: dict[str, float] = defaultdict(float)
    for n_devices, hw, latency, n in groups:
        counts = _counts(latency, n_bins)
        if counts is None:
            continue
        cls = hardware_class(hw)
        sums[cls] += counts
        devices[cls] += int(n_devices)
        inferences[cls] += _finite(n)
    shown, hidden = [], 0
    for cls in sorted(sums):
        if devices[cls] < k:
            hidden += 1
            continue
        shown.append(
            {
                "hardware": cls,
                "devices": devices[cls],
                "inferences": round(inferences[cls]),
                "p50": regression.histogram_quantile(LATENCY_EDGES_MS, sums[cls], 0.5),
                "p95": regression.histogram_quantile(LATENCY_EDGES_MS, sums[cls], 0.95),
            }
        )
    return {"classes": shown, "hidden": hidden, "k": k}


def _counts(latency: Any, n_bins: int) -> np.ndarray | None:
    if not isinstance(latency, list | tuple | np.ndarray) or len(latency) != n_bins:
        return None
    try:
        counts = np.asarray(latency, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return counts if np.all(np.isfinite(counts)) else None


def _finite(n: Any) -> float:
    return max(float(n), 0.0) if isinstance(n, int | float) and np.isfinite(n) else 0.0


def _group_sql(n_bins: int) -> str:
    """Per distinct hardware: devices, inferences and each latency bin summed by PostgreSQL.

    A device has one hardware, so device counts of different groups add up. Non-numeric bins count 0.
    """
    bins = ", ".join(
        f"SUM(CASE WHEN jsonb_typeof(r.latency -> {i}) = 'number' THEN (r.latency ->> {i})::float8 ELSE 0 END)"
        for i in range(n_bins)
    )
    return f"""
SELECT d.hardware, COUNT(DISTINCT r.device_id), SUM(r.inference_count), {bins}
FROM telemetry_report r JOIN fleet_device d ON d.id = r.device_id
WHERE r.version_id = %(v)s AND NOT r.quarantined AND r.received_at >= %(since)s
  AND jsonb_typeof(r.latency) = 'array' AND jsonb_array_length(r.latency) = %(bins)s
GROUP BY d.hardware
"""


def latency_by_hardware(version_id: int, days: int = DAYS) -> dict[str, Any]:
    """The version's fleet latency per hardware class over the last ``days`` days of reports.

    The sum over a week of reports costs seconds on a large fleet, and the figure moves by the
    window, not by the request: kept ``CACHE_SECONDS`` per (version, days, k).
    """
    key = f"telemetry:fleet-latency:{version_id}:{days}:{min_cohort()}"
    found = cache.get(key)
    if found is None:
        found = _latency_by_hardware(version_id, days)
        cache.set(key, found, CACHE_SECONDS)
    return found


def _latency_by_hardware(version_id: int, days: int) -> dict[str, Any]:
    """On PostgreSQL the database sums (a 5-minute window makes 2,016 reports a device a week); the
    SQLite demo sums its few rows in Python."""
    since = timezone.now() - timedelta(days=days)
    k = min_cohort()
    n_bins = len(LATENCY_EDGES_MS) - 1
    if connection.vendor != "postgresql":
        rows = Report.objects.filter(version_id=version_id, quarantined=False, received_at__gte=since)
        fields = ("device_id", "device__hardware", "latency", "inference_count")
        return {**by_class(rows.values_list(*fields), k), "days": days}
    with connection.cursor() as cur:
        cur.execute(_group_sql(n_bins), {"v": version_id, "since": since, "bins": n_bins})
        groups = [
            (n, json.loads(hw) if isinstance(hw, str) else hw, list(sums), inferences or 0.0)
            for hw, n, inferences, *sums in cur.fetchall()
        ]
    return {**by_group(groups, k), "days": days}


def health(version_id: int, days: int = DAYS) -> dict[str, Any] | None:
    """Error rate, latency and drift of the version across the fleet (cohort "all"), or None below k.

    Only rollup windows of at least k devices count; drift is the latest such window's results.
    """
    k = min_cohort()
    since = timezone.now() - timedelta(days=days)
    windows = list(
        Rollup.objects.filter(version_id=version_id, cohort=ALL, window_start__gte=since, n_devices__gte=k).order_by(
            "window_start"
        )
    )
    n_bins = len(LATENCY_EDGES_MS) - 1
    latency = np.zeros(n_bins)
    errors = inferences = 0.0
    used = []
    for r in windows:
        if not isinstance(r.latency, list) or len(r.latency) != n_bins:
            continue
        try:
            lat = np.asarray(r.latency, dtype=np.float64)
            e, n = float(r.error_count), float(r.inference_count)
        except (TypeError, ValueError):
            continue
        if not (np.all(np.isfinite(lat)) and np.isfinite(e) and np.isfinite(n)):
            continue
        latency += lat
        errors += e
        inferences += n
        used.append(r)
    if not used:
        return None
    last = used[-1].window_start
    drift = list(DriftResult.objects.filter(version_id=version_id, cohort=ALL, window_start=last))
    return {
        "windows": len(used),
        "devices": max(r.n_devices for r in used),
        "error_rate": regression.clipped_rate(errors, inferences),
        "p50": regression.histogram_quantile(LATENCY_EDGES_MS, latency, 0.5),
        "p95": regression.histogram_quantile(LATENCY_EDGES_MS, latency, 0.95),
        "drift_window": last,
        "max_psi": max((d.psi for d in drift), default=None),
        "drifted": sorted(d.feature for d in drift if d.drifted),
        "k": k,
        "days": days,
    }
