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
from django.db import connection
from django.utils import timezone

from edgefleet.display import safe_label
from telemetry import regression
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.models import DriftResult, Report, Rollup

DAYS = 7
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
    """Latency per hardware class from ``(device id, hardware, latency counts, inferences)`` rows (pure).

    Returns ``{"classes": [{"hardware", "devices", "inferences", "p50", "p95"}], "hidden": n, "k": k}``;
    classes below k devices count in ``hidden`` only.
    """
    n_bins = len(LATENCY_EDGES_MS) - 1
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(n_bins))
    devices: dict[str, set] = defaultdict(set)
    inferences: dict[str, float] = defaultdict(float)
    for device_id, hw, latency, n in rows:
        if not isinstance(latency, list) or len(latency) != n_bins:
            continue
        try:
            counts = np.asarray(latency, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if not np.all(np.isfinite(counts)):
            continue
        cls = hardware_class(hw)
        sums[cls] += counts
        devices[cls].add(device_id)
        inferences[cls] += max(float(n), 0.0) if isinstance(n, int | float) and np.isfinite(n) else 0.0
    shown, hidden = [], 0
    for cls in sorted(sums):
        if len(devices[cls]) < k:
            hidden += 1
            continue
        shown.append(
            {
                "hardware": cls,
                "devices": len(devices[cls]),
                "inferences": round(inferences[cls]),
                "p50": regression.histogram_quantile(LATENCY_EDGES_MS, sums[cls], 0.5),
                "p95": regression.histogram_quantile(LATENCY_EDGES_MS, sums[cls], 0.95),
            }
        )
    return {"classes": shown, "hidden": hidden, "k": k}


# One row per device and bin: PostgreSQL sums a device's windows (a 5-minute window makes 2,016
# reports a device a week; Python would read every one on each page view). Non-numeric elements count 0.
PER_DEVICE_SQL = """
SELECT r.device_id, d.hardware, e.idx, SUM(CASE WHEN jsonb_typeof(e.v) = 'number' THEN (e.v #>> '{}')::float8
       ELSE 0 END), MAX(n.inferences)
FROM telemetry_report r
JOIN fleet_device d ON d.id = r.device_id
CROSS JOIN LATERAL jsonb_array_elements(r.latency) WITH ORDINALITY AS e(v, idx)
JOIN (SELECT device_id, SUM(inference_count) AS inferences FROM telemetry_report
      WHERE version_id = %(v)s AND NOT quarantined AND received_at >= %(since)s GROUP BY device_id) n
  ON n.device_id = r.device_id
WHERE r.version_id = %(v)s AND NOT r.quarantined AND r.received_at >= %(since)s
  AND jsonb_typeof(r.latency) = 'array' AND jsonb_array_length(r.latency) = %(bins)s
GROUP BY r.device_id, d.hardware, e.idx
ORDER BY r.device_id, e.idx
"""


def _per_device(version_id: int, since: Any) -> Iterable[tuple[Any, Any, list[float], float]]:
    """``(device, hardware, summed latency counts, inferences)`` per device that reported the version."""
    n_bins = len(LATENCY_EDGES_MS) - 1
    if connection.vendor != "postgresql":  # the SQLite demo: few rows, summed in Python by ``by_class``
        yield from Report.objects.filter(version_id=version_id, quarantined=False, received_at__gte=since).values_list(
            "device_id", "device__hardware", "latency", "inference_count"
        )
        return
    with connection.cursor() as cur:
        cur.execute(PER_DEVICE_SQL, {"v": version_id, "since": since, "bins": n_bins})
        current, hw, counts, n = None, None, [0.0] * n_bins, 0.0
        for device_id, hardware, idx, total, inferences in cur.fetchall():
            if device_id != current:
                if current is not None:
                    yield current, hw, counts, n
                current, counts = device_id, [0.0] * n_bins
                hw = json.loads(hardware) if isinstance(hardware, str) else hardware
                n = float(inferences or 0.0)
            counts[int(idx) - 1] = float(total or 0.0)
        if current is not None:
            yield current, hw, counts, n


def latency_by_hardware(version_id: int, days: int = DAYS) -> dict[str, Any]:
    """The version's fleet latency per hardware class over the last ``days`` days of reports."""
    since = timezone.now() - timedelta(days=days)
    return {**by_class(_per_device(version_id, since), min_cohort()), "days": days}


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
