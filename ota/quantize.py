"""The int8 variant: onnxruntime dynamic quantization and how closely it follows fp32 (no Django)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic


def make_int8(src: str | Path, dst: str | Path) -> Path:
    """Write the dynamically quantized (int8 weights) model of ``src`` to ``dst``."""
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


def agreement(fp32: ort.InferenceSession, int8: ort.InferenceSession, batches: list[dict]) -> dict:
    """How often the int8 model gives the fp32 answer on the same inputs.

    Classifier-like first outputs ([batch, C], C >= 2) compare argmax; others compare values
    with a 1% tolerance. ``max_abs_diff`` is over the whole first output.
    """
    same = total = 0
    max_diff = 0.0
    for feeds in batches:
        a = np.asarray(fp32.run(None, feeds)[0], dtype=np.float64)
        b = np.asarray(int8.run(None, feeds)[0], dtype=np.float64)
        if a.size:
            max_diff = max(max_diff, float(np.max(np.abs(a - b))))
        if a.ndim == 2 and a.shape[1] >= 2:
            same += int(np.sum(a.argmax(axis=1) == b.argmax(axis=1)))
            total += a.shape[0]
        else:
            close = np.isclose(a, b, rtol=1e-2, atol=1e-2)
            same += int(close.sum())
            total += close.size
    return {"agreement": round(same / total, 6) if total else None, "max_abs_diff": max_diff, "compared": total}
