"""Pure figures about a version's variants: the Pareto front and weight sparsity (numpy only; no Django)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

LARGE_TENSOR = 1024  # tensors with fewer elements (biases, scales) say nothing about pruning


def pareto_front(points: Sequence[Mapping[str, float | None]]) -> list[bool]:
    """Which points no other point beats: smaller ``size``, lower ``latency``, higher ``agreement``.

    A point is dominated when another is at least as good on all three and better on one; equal points
    are all on the front. A missing agreement counts as 0 (unknown is never better than measured).
    """

    def key(p: Mapping[str, float | None]) -> tuple[float, float, float]:
        return (float(p["size"] or 0), float(p["latency"] or 0), -float(p.get("agreement") or 0))

    keys = [key(p) for p in points]
    front = []
    for i, a in enumerate(keys):
        dominated = any(
            all(b[k] <= a[k] for k in range(3)) and any(b[k] < a[k] for k in range(3))
            for j, b in enumerate(keys)
            if j != i
        )
        front.append(not dominated)
    return front


def sparsity(tensors: Iterable[tuple[str, np.ndarray]], min_elements: int = LARGE_TENSOR) -> dict:
    """The share of exact zeros per large weight tensor and over all of them (a pruned model shows here)."""
    per = []
    zeros = total = 0
    for name, arr in tensors:
        if arr.size < min_elements or arr.dtype.kind not in "fiu":
            continue
        z = int(np.count_nonzero(arr == 0))
        per.append({"name": name, "elements": int(arr.size), "zero_share": round(z / arr.size, 6)})
        zeros += z
        total += int(arr.size)
    per.sort(key=lambda t: (-t["elements"], t["name"]))
    return {"zero_share": round(zeros / total, 6) if total else None, "tensors": per, "min_elements": min_elements}
