"""How closely a variant (int8, fp16, …) follows the fp32 model, on every output (numpy only; no Django).

Each output is compared by what it is, not by its position:

- ``scores``: a float ``[N, C]`` output with C >= 2 (probabilities or logits; ZipMap's dicts become this):
  top-1 agreement, max and mean absolute difference;
- ``labels``: an integer, bool or string output: the share of equal values;
- ``values``: any other float output (regressors, embeddings): the share within 1 % (``np.isclose``,
  rtol = atol = 0.01), max and mean absolute difference and the relative error ``sum|a-b| / sum|a|``.

The headline is the worst output: ``agreement`` is the lowest share, ``max_abs_diff`` the largest
difference of any float output. Judging by the first output alone let an int8 classifier's label output
say "100 %, 0.0000" while its probabilities moved by 0.04.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ota.outputs import as_array

TOLERANCE = 1e-2


def compare_output(a: np.ndarray | None, b: np.ndarray | None) -> dict[str, Any]:
    """One output's figures over all compared rows (``a`` from fp32, ``b`` from the variant)."""
    if a is None or b is None:
        return {"kind": "not compared", "agreement": None, "compared": 0}
    if a.shape != b.shape:
        return {
            "kind": "mismatch",
            "agreement": 0.0,
            "compared": int(a.shape[0]) if a.ndim else 1,
            "error": f"shape {list(b.shape)} instead of {list(a.shape)}",
        }
    if a.size == 0:
        return {"kind": "empty", "agreement": None, "compared": 0}
    if a.dtype.kind not in "fc":
        same = a == b
        return {"kind": "labels", "agreement": round(float(np.mean(same)), 6), "compared": int(same.size)}
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(fa - fb)
    finite = np.isfinite(diff)
    figures: dict[str, Any] = {
        "max_abs_diff": float(diff[finite].max()) if finite.any() else None,
        "mean_abs_diff": float(diff[finite].mean()) if finite.any() else None,
    }
    if fa.ndim == 2 and fa.shape[1] >= 2:
        top1 = fa.argmax(axis=1) == fb.argmax(axis=1)
        return {"kind": "scores", "agreement": round(float(np.mean(top1)), 6), "compared": int(fa.shape[0]), **figures}
    close = np.isclose(fa, fb, rtol=TOLERANCE, atol=TOLERANCE)
    scale = float(np.abs(fa).sum())
    figures["rel_error"] = float(diff[finite].sum() / scale) if scale > 0 and finite.any() else None
    return {"kind": "values", "agreement": round(float(np.mean(close)), 6), "compared": int(close.size), **figures}


def concat(batches: list[Any]) -> np.ndarray | None:
    """One output's values over batches, as one array (``None`` if any batch has no array form)."""
    arrays = [as_array(b) for b in batches]
    if not arrays or any(x is None for x in arrays):
        return None
    try:
        return np.concatenate([x if x.ndim else x.reshape(1) for x in arrays], axis=0)  # type: ignore[union-attr]
    except ValueError:
        return None


def agreement(names: list[str], reference: list[list[Any]], variant: list[list[Any]]) -> dict[str, Any]:
    """Figures per output and the worst of them; ``reference``/``variant`` are run results per batch."""
    per: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        per[name] = compare_output(concat([r[j] for r in reference]), concat([v[j] for v in variant]))
    shares = [p["agreement"] for p in per.values() if p["agreement"] is not None]
    diffs = [p["max_abs_diff"] for p in per.values() if p.get("max_abs_diff") is not None]
    means = [p["mean_abs_diff"] for p in per.values() if p.get("mean_abs_diff") is not None]
    rel = [p["rel_error"] for p in per.values() if p.get("rel_error") is not None]
    return {
        "agreement": min(shares) if shares else None,
        "max_abs_diff": max(diffs) if diffs else 0.0,
        "mean_abs_diff": max(means) if means else 0.0,
        "rel_error": max(rel) if rel else None,
        "compared": max((p["compared"] for p in per.values()), default=0),
        "outputs": per,
    }
