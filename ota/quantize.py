"""Compression variants of a model and how closely they follow fp32 (onnx/onnxruntime; no Django).

Four builds, each written to its own file (the worker stores it as a content-addressed artifact):

- ``int8``: onnxruntime dynamic quantization (int8 weights, activations quantized at run time);
- ``int8_static``: onnxruntime static quantization in QDQ format, calibrated (MinMax) on the reference
  data set; without one there is nothing honest to calibrate on, so it is not built;
- ``fp16``: onnxconverter-common's float16 conversion, inputs and outputs kept float32 so the contract
  devices see does not change;
- ``optimized``: onnxruntime's offline graph optimisation at the *basic* level (constant folding,
  redundant nodes removed): what it writes runs on any execution provider and onnxruntime release,
  which the extended/all levels (fused, layout-specific contrib operators) do not promise.

Runs only in the sandbox child: it parses and runs uploaded bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

from ota import agreement as agreement_math

KINDS = ("int8", "int8_static", "fp16", "optimized")
LABELS = {
    "int8": "dynamic int8",
    "int8_static": "static int8 (QDQ, calibrated)",
    "fp16": "float16",
    "optimized": "graph-optimised fp32",
}


class NotApplicable(ValueError):
    """This variant makes no sense for this model; the message says why (not an error of the model)."""


def make_int8(src: str | Path, dst: str | Path) -> Path:
    """Write the dynamically quantized (int8 weights) model of ``src`` to ``dst``."""
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


class _Batches(CalibrationDataReader):
    def __init__(self, batches: list[dict]) -> None:
        self._it: Iterator[dict] = iter(batches)

    def get_next(self) -> dict | None:
        return next(self._it, None)


def make_static_int8(src: str | Path, dst: str | Path, calibration: list[dict] | None) -> Path:
    """QDQ int8 calibrated on ``calibration`` (feeds per batch); refused without reference data."""
    if not calibration:
        raise NotApplicable("static int8 is calibrated on the reference data set: upload one to get it")
    quantize_static(
        str(src),
        str(dst),
        _Batches(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return Path(dst)


def make_fp16(src: str | Path, dst: str | Path) -> Path:
    """float16 weights and arithmetic, float32 inputs and outputs (the contract stays as it was)."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    if not any(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer):
        raise NotApplicable("the model has no float32 weights to halve")
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), str(dst))
    return Path(dst)


def make_optimized(src: str | Path, dst: str | Path) -> Path:
    """onnxruntime's basic offline optimisation, saved to ``dst`` (portable across providers and releases)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    return Path(dst)


def build(kind: str, src: str | Path, dst: str | Path, calibration: list[dict] | None = None) -> Path:
    builders: dict[str, Callable[[], Path]] = {
        "int8": lambda: make_int8(src, dst),
        "int8_static": lambda: make_static_int8(src, dst, calibration),
        "fp16": lambda: make_fp16(src, dst),
        "optimized": lambda: make_optimized(src, dst),
    }
    if kind not in builders:
        raise ValueError(f"unknown variant kind {kind!r}")
    return builders[kind]()


def agreement(fp32: ort.InferenceSession, variant: ort.InferenceSession, batches: list[dict]) -> dict:
    """How closely ``variant`` follows ``fp32`` on the same inputs, on every output (``ota.agreement``)."""
    names = [o.name for o in fp32.get_outputs()]
    reference: list[list[Any]] = [fp32.run(None, feeds) for feeds in batches]
    outs: list[list[Any]] = [variant.run(None, feeds) for feeds in batches]
    return agreement_math.agreement(names, reference, outs)


def weights(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of every initializer, for the sparsity figures."""
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        yield t.name, numpy_helper.to_array(t)
