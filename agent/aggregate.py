"""On-device aggregation of one telemetry window: counts and fixed-bin histograms, never raw inputs.

An inference is one input row: a call with a batch of B rows adds B to the counts (and the call's
latency B times), so every histogram in a report sums to the same number of rows.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np

from agent.privacy import add_noise, report_sensitivity

# Same rule as the server's telemetry/binning.py (the agent may not import it; a test checks they agree).
LATENCY_EDGES_MS: list[float] = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]

_FEATURE = re.compile(r"^(?P<input>.+)\[(?P<col>\d+)\]$")


def histogram(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of ``values`` over ``edges``: below the first edge -> first bin, above the last -> last."""
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e, np.asarray(values, dtype=np.float64).ravel(), side="right") - 1
    idx = np.clip(idx, 0, len(e) - 2)
    return np.bincount(idx, minlength=len(e) - 1).astype(np.float64)


def feature_column(feeds: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    """Values of feature ``<input>[<j>]`` (column j of input ``<input>``) or a whole input, per row."""
    m = _FEATURE.match(name)
    key, col = (m["input"], int(m["col"])) if m else (name, None)
    x = feeds.get(key)
    if x is None:
        return None
    x = np.asarray(x)
    if col is None:
        return x.reshape(-1)
    if x.ndim == 1:
        return x[col : col + 1]
    flat = x.reshape(x.shape[0], -1)
    return flat[:, col] if col < flat.shape[1] else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class WindowAggregator:
    """Accumulates one model version's window; ``report()`` makes the noisy protocol report."""

    def __init__(self, model: str, version: str, spec: dict[str, Any], latency_edges: list[float]) -> None:
        self.model = model
        self.version = version
        self.latency_edges = list(latency_edges)
        self.features = [(f["name"], list(f["edges"])) for f in spec.get("features", [])]
        self.output = dict(spec.get("output") or {"kind": "bins", "edges": [i / 10 for i in range(11)]})
        self.started = _now()
        self.inferences = 0
        self.errors = 0
        self.latency = np.zeros(len(self.latency_edges) - 1)
        self.outputs = np.zeros(self._output_bins())
        self.feature_counts = {name: np.zeros(len(edges) - 1) for name, edges in self.features}

    def _output_bins(self) -> int:
        return int(self.output["n"]) if self.output.get("kind") == "classes" else len(self.output["edges"]) - 1

    @staticmethod
    def rows(feeds: dict[str, np.ndarray]) -> int:
        first = next(iter(feeds.values()), None)
        return int(np.asarray(first).shape[0]) if first is not None and np.ndim(first) >= 2 else 1

    def record(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None, latency_ms: float) -> None:
        """One call: ``outputs`` None means it failed (counted as errors, no output bins)."""
        n = self.rows(feeds)
        self.inferences += n
        self.latency += histogram(np.full(n, latency_ms), self.latency_edges)
        for name, edges in self.features:
            col = feature_column(feeds, name)
            if col is not None:
                self.feature_counts[name] += histogram(col, edges)
        if outputs is None:
            self.errors += n
            return
        first = np.asarray(next(iter(outputs.values())))
        if self.output.get("kind") == "classes":
            k = int(self.output["n"])
            cls = np.argmax(first.reshape(first.shape[0], -1), axis=1) if first.ndim >= 2 else np.argmax(first)[None]
            self.outputs += np.bincount(np.clip(cls, 0, k - 1), minlength=k)[:k]
        else:
            self.outputs += histogram(first, self.output["edges"])

    def report(self, privacy: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The protocol's report with DP noise on every count; the raw accumulators stay here."""
        mech = privacy.get("mechanism", "laplace")
        eps = float(privacy.get("epsilon", 1.0))
        l1, l2 = report_sensitivity(len(self.features))
        sens = l1 if mech == "laplace" else l2

        def noisy(c: np.ndarray | float) -> list[float]:
            return [round(float(v), 4) for v in add_noise(np.atleast_1d(c), mech, eps, sens, rng)]

        return {
            "id": str(uuid.uuid4()),
            "model": self.model,
            "version": self.version,
            "window_start": self.started,
            "window_end": _now(),
            "inference_count": noisy(float(self.inferences))[0],
            "error_count": noisy(float(self.errors))[0],
            "latency_ms": {"counts": noisy(self.latency)},
            "outputs": {"counts": noisy(self.outputs)},
            "features": {name: {"counts": noisy(c)} for name, c in self.feature_counts.items()},
            "privacy": {"mechanism": mech, "epsilon": eps},
        }
