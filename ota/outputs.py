"""What onnxruntime hands back, made comparable (numpy only; no onnx, no Django).

A model's outputs are tensors, or (skl2onnx's ZipMap, some converters) a list of ``{class: prob}``
dicts, a list of tensors or a map. Validation, profiles and agreement want arrays: ``as_array``
turns the ZipMap shape into ``[N, C]`` (classes in key order) and says ``None`` for what has no
array form, so callers skip it instead of failing on ``'list' object has no attribute 'shape'``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_array(value: Any) -> np.ndarray | None:
    """A tensor view of one output; a list of same-keyed dicts becomes ``[N, C]``; ``None`` otherwise."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list):
        if not value:
            return np.empty((0,))
        if all(isinstance(v, dict) for v in value):
            keys = sorted(value[0])
            if not keys or any(sorted(v) != keys for v in value):
                return None
            try:
                return np.array([[v[k] for k in keys] for v in value], dtype=np.float64)
            except (TypeError, ValueError):
                return None
        return None
    if isinstance(value, dict):
        try:
            return np.array([value[k] for k in sorted(value)], dtype=np.float64)
        except (TypeError, ValueError):
            return None
    return None


def describe(value: Any) -> list[int] | str:
    """The shape of a tensor output, or a few words for a sequence or map (the smoke step shows it)."""
    if isinstance(value, np.ndarray):
        return [int(d) for d in value.shape]
    if isinstance(value, list):
        kinds = sorted(
            {"map" if isinstance(v, dict) else "tensor" if isinstance(v, np.ndarray) else "value" for v in value}
        )
        return f"sequence of {len(value)} {'/'.join(kinds) or 'items'}"
    if isinstance(value, dict):
        return f"map of {len(value)} entries"
    return type(value).__name__


def size_of(value: Any) -> tuple[int, list[int], int]:
    """(elements, shape, bytes per element) of an output, for the output size cap; sequences count their items."""
    if isinstance(value, np.ndarray):
        return int(value.size), [int(d) for d in value.shape], int(value.itemsize)
    if isinstance(value, list):
        total = sum(size_of(v)[0] for v in value)
        return total, [len(value)], 8
    if isinstance(value, dict):
        return len(value), [len(value)], 16
    return 1, [], 8


def nonfinite(value: Any) -> bool:
    arr = as_array(value)
    return arr is not None and arr.dtype.kind == "f" and not bool(np.all(np.isfinite(arr)))
