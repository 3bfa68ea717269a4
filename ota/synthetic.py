"""Synthetic inputs that honour a contract, sized against ``Limits`` before anything is allocated
(numpy; no Django): the smoke run, the latency probe and the variants' agreement check feed them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ota.limits import Limits, elements, input_elements_message

SMOKE_BATCH = 1


class TooLarge(ValueError):
    """A declared size is over a limit; the message says which and how to fix it."""


def fed_shape(spec: dict, batch: int = SMOKE_BATCH) -> list[int]:
    """The shape fed for an input schema: symbolic dims become ``batch`` (first) or 1 (others)."""
    return [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(spec["shape"])]


def check_input_sizes(inputs: list[dict], limits: Limits, batch: int = SMOKE_BATCH) -> int:
    """Total elements of one synthetic sample, or ``TooLarge`` before anything is allocated."""
    total = 0
    for spec in inputs:
        n = elements(fed_shape(spec, batch))
        total += n
        if total > limits.max_input_elements:
            raise TooLarge(input_elements_message(spec["name"], spec["shape"], n, limits))
    return total


def synthetic_inputs(
    inputs: list[dict], batch: int = SMOKE_BATCH, seed: int = 0, limits: Limits | None = None
) -> dict[str, Any]:
    """Inputs that honour the schema: symbolic dims become ``batch`` (first) or 1 (others).

    Strings are a short sample text; a map is one ``{key: value}`` and a sequence ``batch`` items.

    Their total size is checked against ``limits`` first: a declared ``[1e7, 1e7]`` is refused, not allocated.
    """
    check_input_sizes(inputs, limits or Limits(), batch)
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for spec in inputs:
        if spec.get("kind"):
            feeds[spec["name"]] = _synthetic_value(spec["dtype"], rng, batch)
        else:
            feeds[spec["name"]] = _synthetic_tensor(spec["dtype"], fed_shape(spec, batch), rng)
    return feeds


SAMPLE_TEXT = "edgefleet sample text"


def _synthetic_tensor(dtype_text: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if dtype_text == "string":
        return np.full(shape, SAMPLE_TEXT, dtype=object)
    dtype = np.dtype(dtype_text) if dtype_text not in ("object", "unknown") else np.dtype(object)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind == "b":
        return np.zeros(shape, dtype=bool)
    return np.full(shape, "", dtype=object)


def _split_args(text: str) -> list[str]:
    depth, parts, cur = 0, [], ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        depth += ch == "<"
        depth -= ch == ">"
        cur += ch
    return [*parts, cur.strip()]


def _synthetic_value(type_text: str, rng: np.random.Generator, batch: int) -> Any:
    """A value of a readable type (``type_name``): a map is ``{key: value}``, a sequence a list of ``batch``."""
    if type_text.startswith("sequence<"):
        inner = type_text[len("sequence<") : -1]
        return [_synthetic_value(inner, rng, 1) for _ in range(batch)]
    if type_text.startswith("optional<"):
        return _synthetic_value(type_text[len("optional<") : -1], rng, batch)
    if type_text.startswith("map<"):
        key, value = _split_args(type_text[len("map<") : -1])
        k: Any = SAMPLE_TEXT if key == "string" else 0
        v = _synthetic_value(value, rng, 1)
        return {k: v.item() if isinstance(v, np.ndarray) and v.size == 1 else v}
    return _synthetic_tensor(type_text, [1], rng)
