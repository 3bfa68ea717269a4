"""On-device aggregation of one telemetry window: counts and fixed-bin histograms, never raw inputs.

An inference is one input row: a call with a batch of B rows adds B to the counts (and the call's
latency B times). Every part of a report gets exactly one unit of mass per row, whatever the model's
shapes: a row's 50 scores, its [4, 5] output grid or the several values a feature takes in it share
that unit equally. That is what bounds the report's sensitivity by construction
(``agent.privacy.report_sensitivity``, docs/privacy.md), and it leaves every histogram summing to the
number of rows, as drift needs.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import numpy as np

from agent.privacy import add_noise, report_sensitivity
from agent.window import window_iso

# Same rule as the server's telemetry/binning.py (the agent may not import it; a test checks they agree).
LATENCY_EDGES_MS: list[float] = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]

_FEATURE = re.compile(r"^(?P<input>.+)\[(?P<col>\d+)\]$")


def histogram(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of ``values`` over ``edges``: below the first edge -> first bin, above the last -> last."""
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e, np.asarray(values, dtype=np.float64).ravel(), side="right") - 1
    idx = np.clip(idx, 0, len(e) - 2)
    return np.bincount(idx, minlength=len(e) - 1).astype(np.float64)


def spread(values: np.ndarray, edges: list[float], mass: float) -> np.ndarray:
    """A histogram of ``values`` holding ``mass`` in all, shared equally by the values (none: zeros)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return np.zeros(len(edges) - 1)
    return histogram(v, edges) * (mass / v.size)


def numeric(x: Any) -> np.ndarray | None:
    """``x`` as a float array, or None for what has no numbers to bin (strings, maps, sequences)."""
    try:
        a = np.asarray(x)
    except Exception:  # ragged or exotic outputs
        return None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        return None
    return a.astype(np.float64)


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


def class_indices(first: np.ndarray, k: int) -> np.ndarray:
    """Argmax over the last axis (where the layout's class count comes from), one index per prediction."""
    a = np.asarray(first)
    if a.ndim == 0 or a.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.clip(np.argmax(a, axis=-1).reshape(-1), 0, k - 1)


class WindowAggregator:
    """Accumulates one model version's window; ``report()`` makes the noisy protocol report."""

    def __init__(self, model: str, version: str, spec: dict[str, Any], latency_edges: list[float]) -> None:
        self.model = model
        self.version = version
        self.latency_edges = list(latency_edges)
        self.features = [(f["name"], list(f["edges"])) for f in spec.get("features", [])]
        self.output = dict(spec.get("output") or {"kind": "bins", "edges": [i / 10 for i in range(11)]})
        self.inferences = 0.0
        self.errors = 0.0
        self.latency = np.zeros(len(self.latency_edges) - 1)
        self.outputs = np.zeros(self._output_bins())
        self.feature_counts = {name: np.zeros(len(edges) - 1) for name, edges in self.features}

    @property
    def layout(self) -> dict[str, Any]:
        """The manifest's telemetry block this aggregator follows (what the sensitivity depends on)."""
        return {"features": [{"name": n, "edges": e} for n, e in self.features], "output": self.output}

    def _output_bins(self) -> int:
        return int(self.output["n"]) if self.output.get("kind") == "classes" else len(self.output["edges"]) - 1

    @staticmethod
    def rows(feeds: dict[str, np.ndarray]) -> int:
        first = next(iter(feeds.values()), None)
        return int(np.asarray(first).shape[0]) if first is not None and np.ndim(first) >= 2 else 1

    def record(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None, latency_ms: float) -> None:
        """One call of ``n`` rows: ``n`` units of mass into every part; ``outputs`` None means it failed."""
        n = float(self.rows(feeds))
        self.inferences += n
        self.latency += histogram([latency_ms], self.latency_edges) * n
        for name, edges in self.features:
            col = feature_column(feeds, name)
            if col is not None and (values := numeric(col)) is not None:
                self.feature_counts[name] += spread(values, edges, n)
        if outputs is None:
            self.errors += n
            return
        first = numeric(next(iter(outputs.values()), None))
        if first is None:
            return  # nothing numeric to bin: this part gets no mass (within the bound)
        if self.output.get("kind") == "classes":
            k = int(self.output["n"])
            idx = class_indices(first, k)
            if idx.size:
                self.outputs += np.bincount(idx, minlength=k)[:k] * (n / idx.size)
        else:
            self.outputs += spread(first, self.output["edges"], n)

    def vector(self) -> np.ndarray:
        """The released numbers in one order: counts, latency, outputs, then features as the layout names them."""
        parts = [np.array([self.inferences, self.errors]), self.latency, self.outputs]
        return np.concatenate(parts + [self.feature_counts[name] for name, _ in self.features])

    def report(
        self, privacy: dict[str, Any], rng: np.random.Generator, window: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """The protocol's report with DP noise on every count; the raw accumulators stay here.

        ``window`` is the grid window ``(start, end)`` in epoch seconds; the agent always gives it.
        An aggregator that saw nothing reports zeros plus the same noise: an idle window looks like
        any other.
        """
        mech = privacy.get("mechanism", "laplace")
        eps = float(privacy.get("epsilon", 1.0))
        l1, l2 = report_sensitivity(self.layout)
        noisy = [round(float(v), 4) for v in add_noise(self.vector(), mech, eps, l1 if mech == "laplace" else l2, rng)]
        lat, out = len(self.latency), len(self.outputs)
        at = 2 + lat + out
        features = {}
        for name, _ in self.features:
            m = len(self.feature_counts[name])
            features[name] = {"counts": noisy[at : at + m]}
            at += m
        body: dict[str, Any] = {"id": str(uuid.uuid4()), "model": self.model, "version": self.version}
        if window is not None:
            body.update(window_start=window_iso(window[0]), window_end=window_iso(window[1]))
        body.update(
            inference_count=noisy[0],
            error_count=noisy[1],
            latency_ms={"counts": noisy[2 : 2 + lat]},
            outputs={"counts": noisy[2 + lat : 2 + lat + out]},
            features=features,
            privacy={"mechanism": mech, "epsilon": eps},
        )
        return body

    # -- kept across a clean restart (agent.window.WindowLog) ---------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "spec": self.layout,
            "latency_edges": self.latency_edges,
            "inferences": self.inferences,
            "errors": self.errors,
            "latency": self.latency.tolist(),
            "outputs": self.outputs.tolist(),
            "features": {k: v.tolist() for k, v in self.feature_counts.items()},
        }

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> WindowAggregator:
        """The aggregator ``state()`` saved; ValueError/KeyError/TypeError if it does not fit together."""
        agg = cls(str(s["model"]), str(s["version"]), s["spec"], s["latency_edges"])
        agg.inferences, agg.errors = float(s["inferences"]), float(s["errors"])
        agg.latency = _same_shape(agg.latency, s["latency"])
        agg.outputs = _same_shape(agg.outputs, s["outputs"])
        if set(s["features"]) != set(agg.feature_counts):
            raise ValueError("saved features differ from the spec")
        agg.feature_counts = {k: _same_shape(v, s["features"][k]) for k, v in agg.feature_counts.items()}
        return agg


def _same_shape(like: np.ndarray, values: list[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.shape != like.shape or not np.all(np.isfinite(a)):
        raise ValueError("saved counts do not fit the layout")
    return a
