"""Builders for telemetry tests: a valid report for a version, and noisy fleets of them."""

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
from django.conf import settings

from telemetry import privacy
from telemetry.binning import LATENCY_EDGES_MS, histogram
from telemetry.profiles import expected_bins, output_bin_count


def grid_seconds() -> int:
    """The window length the manifest gives devices (``EDGEFLEET_TELEMETRY_WINDOW``)."""
    return int(settings.EDGEFLEET_TELEMETRY_WINDOW)


def grid_window(back: int = 1, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The grid window ``back`` windows before the one ``now`` is in (1: the one that just closed)."""
    w = grid_seconds()
    ts = int((now or datetime.now(UTC)).timestamp())
    start = (ts // w - back) * w
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + w, UTC)


def on_grid(t: datetime) -> tuple[datetime, datetime]:
    """The grid window that contains ``t``."""
    w = grid_seconds()
    start = int(t.timestamp()) // w * w
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + w, UTC)


_turn = itertools.count()


def window() -> tuple[datetime, datetime]:
    """The next of the last ten closed grid windows, so one device's reports in a test do not share a
    window (the server keeps one report per device, version and window)."""
    return grid_window(back=1 + next(_turn) % 10)


def report(mv: Any, **over: Any) -> dict:
    """A valid, noise-free report dict for ``version`` (override any key)."""
    start, end = window()
    bins = expected_bins(mv)
    r = {
        "id": str(uuid.uuid4()),
        "model": mv.model.name,
        "version": mv.label,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "inference_count": 100.0,
        "error_count": 1.0,
        "latency_ms": {"counts": [0.0, 10, 50, 30, 10, 0, 0, 0, 0, 0, 0, 0]},
        "outputs": {"counts": [1.0] * output_bin_count(bins["output"])},
        "features": {f["name"]: {"counts": [1.0] * (len(f["edges"]) - 1)} for f in bins["features"]},
        "privacy": {"mechanism": "laplace", "epsilon": 1.0},
    }
    r.update(over)
    return r


def simulated(
    version: Any,
    rng: np.random.Generator,
    shift: float = 0.0,
    n: int = 200,
    error_rate: float = 0.01,
    latency_ms: float = 8.0,
    epsilon: float = 1.0,
    start: datetime | None = None,
    **over: Any,
) -> dict:
    """A report whose counts come from n inferences of N(shift, 1) features, with agent-style DP noise."""
    bins = expected_bins(version)
    scale = privacy.laplace_scale(epsilon, privacy.l1_sensitivity(bins))

    def noisy(c: np.ndarray) -> list[float]:
        return [float(x) for x in c + rng.laplace(0, scale, size=c.shape)]

    feats = {}
    for i, f in enumerate(bins["features"]):
        feats[f["name"]] = {"counts": noisy(histogram(rng.normal(shift if i == 0 else 0.0, 1.0, n), f["edges"]))}
    k = output_bin_count(bins["output"])
    outputs = np.bincount(rng.integers(0, k, n), minlength=k).astype(float)
    latency = histogram(rng.lognormal(np.log(latency_ms), 0.3, n), LATENCY_EDGES_MS)
    errors = rng.binomial(n, error_rate)
    s, e = window() if start is None else on_grid(start)
    body = report(
        version,
        window_start=s.isoformat(),
        window_end=e.isoformat(),
        inference_count=float(n + rng.laplace(0, scale)),
        error_count=float(errors + rng.laplace(0, scale)),
        latency_ms={"counts": noisy(latency)},
        outputs={"counts": noisy(outputs)},
        features=feats,
        privacy={"mechanism": "laplace", "epsilon": epsilon},
    )
    body.update(over)
    return body
