"""Histogram conventions shared by the server, the manifest and the agent (pure, no Django).

Edges are finite; values below the first edge count in the first bin and above the last in the last
bin, so a histogram has ``len(edges) - 1`` counts. The agent keeps its own copy of ``histogram``
(it must not import the server); tests check the two agree.
"""

import numpy as np

# Latency in milliseconds: roughly log-spaced, fine where edge models live (1-100 ms).
LATENCY_EDGES_MS: list[float] = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]

# Used when a version has no reference data set: symmetric, wide, finer near zero. The first
# healthy window's counts over these edges then become the version's reference.
DEFAULT_FEATURE_EDGES: list[float] = [-1000, -100, -10, -5, -3, -2, -1, -0.5, 0, 0.5, 1, 2, 3, 5, 10, 100, 1000]

# Outputs with at most this many classes are reported as argmax class counts, else as score bins.
MAX_CLASSES = 32
DEFAULT_SCORE_EDGES: list[float] = [round(i / 10, 1) for i in range(11)]


def histogram(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of ``values`` over ``edges`` with the clipping rule above."""
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e, np.asarray(values, dtype=np.float64).ravel(), side="right") - 1
    idx = np.clip(idx, 0, len(e) - 2)
    return np.bincount(idx, minlength=len(e) - 1).astype(np.float64)


def quantile_edges(values: np.ndarray, bins: int = 20) -> list[float]:
    """Edges at the quantiles of a reference sample: each bin holds about the same share of data.

    Equal-mass bins keep every bin's count large, which keeps noise-driven drift scores small.
    Ties (discrete features) collapse to unique edges; a constant feature gets a small band.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return list(DEFAULT_FEATURE_EDGES)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        c = float(edges[0]) if edges.size else 0.0
        return [c - 0.5, c + 0.5]
    return [float(x) for x in edges]
