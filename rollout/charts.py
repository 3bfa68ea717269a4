"""Chart data for the campaign page: canary vs control per rollup window, from k devices up."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from rollout.models import Campaign


def _finite(*values: Any) -> bool:
    return all(isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _finite_list(values: Any, n: int) -> bool:
    return isinstance(values, list) and len(values) == n and _finite(*values)


def chart_series(campaign: Campaign) -> dict[str, Any]:
    """Error rate and p95 latency per rollup window, canary (version) vs control (previous version).

    Windows from fewer than ``EDGEFLEET_MIN_COHORT`` devices are left out (k-suppression): a rate
    from a handful of devices is noise, and showing it invites wrong conclusions.
    """
    from django.conf import settings

    try:
        from telemetry.models import Rollup
        from telemetry.regression import clipped_rate, denoise, histogram_quantile
        from telemetry.services import rollup_seconds
    except ImportError:
        return {"series": [], "suppressed": 0}
    from telemetry.binning import LATENCY_EDGES_MS

    n_bins = len(LATENCY_EDGES_MS) - 1

    k = int(getattr(settings, "EDGEFLEET_MIN_COHORT", 20))
    # Rollup windows are aligned buckets: the one the campaign started in counts too.
    since = (campaign.started_at or campaign.created_at) - timedelta(seconds=rollup_seconds())
    out: list[dict[str, Any]] = []
    suppressed = 0
    for role, version in (("canary", campaign.version), ("control", campaign.previous_version)):
        if version is None:
            continue
        xs, err, p95 = [], [], []
        rows = Rollup.objects.filter(version=version, cohort="all", window_start__gte=since).order_by("window_start")
        for r in rows.only("window_start", "n_devices", "inference_count", "error_count", "latency", "noise_var"):
            if r.n_devices < k:
                suppressed += 1
                continue
            if not (_finite(r.inference_count, r.error_count, r.noise_var) and _finite_list(r.latency, n_bins)):
                continue  # a rollup the jobs would not write (telemetry quarantines such rows)
            xs.append(r.window_start.isoformat())
            err.append(clipped_rate(r.error_count, r.inference_count))
            # Only bins that stand clear of the DP noise, as the latency gate reads them.
            lat = denoise(r.latency, r.noise_var) if r.latency else None
            p95.append(histogram_quantile(LATENCY_EDGES_MS, lat, 0.95) if lat is not None else None)
        out.append({"role": role, "version": version.label, "x": xs, "error_rate": err, "latency_p95": p95})
    return {"series": out, "suppressed": suppressed, "min_devices": k}
