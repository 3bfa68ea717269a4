"""Checks that say whether an ONNX file is fit to ship (onnx + onnxruntime + numpy; no Django).

``validate`` runs the steps in order, times each one, and either returns the report or raises
``ValidationFailed`` carrying the partial report and a message a person can act on. Callers
(``ota.services``) store the report either way, so a rejection shows what passed before it.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

MIN_OPSET = 7  # onnxruntime only guarantees support from opset 7 on
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}
INT8_TYPES = {TensorProto.INT8, TensorProto.UINT8}
SMOKE_BATCH = 1


class ValidationFailed(Exception):
    """A step failed; ``message`` is for a person, ``report`` holds what was learnt so far."""

    def __init__(self, message: str, report: dict, step: str) -> None:
        super().__init__(message)
        self.message = message
        self.report = report
        self.step = step


@functools.cache
def max_supported_opset() -> int:
    """The newest default-domain opset the installed onnxruntime loads (probed once, cached)."""
    for opset in range(onnx.defs.onnx_opset_version() + 2, MIN_OPSET, -1):
        try:
            ort.InferenceSession(_identity_model(opset).SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # a refusal is the answer we are probing for
            continue
    return MIN_OPSET


def _identity_model(opset: int) -> onnx.ModelProto:
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [vi[0]], [vi[1]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def num_threads() -> int:
    return max(1, int(os.environ.get("ORT_NUM_THREADS", "1") or 1))


def make_session(path: str | Path) -> ort.InferenceSession:
    """A CPU session with the thread count the deployment chose (ORT_NUM_THREADS)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        return TensorProto.DataType.Name(elem_type).lower()


def value_schema(vi: onnx.ValueInfoProto) -> dict:
    """``{"name","dtype","shape"}``; shape items are ints, or strings for symbolic/unknown dims."""
    t = vi.type.tensor_type
    shape: list[int | str] = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            shape.append(d.dim_param or f"unk_{i}")
    return {"name": vi.name, "dtype": dtype_name(t.elem_type), "shape": shape}


def contract_of(model: onnx.ModelProto) -> dict:
    init_names = {i.name for i in model.graph.initializer}
    inputs = [value_schema(v) for v in model.graph.input if v.name not in init_names]
    outputs = [value_schema(v) for v in model.graph.output]
    return {"inputs": inputs, "outputs": outputs}


def synthetic_inputs(inputs: list[dict], batch: int = SMOKE_BATCH, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs that honour the schema: symbolic dims become ``batch`` (first) or 1 (others)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(spec["shape"])]
        dtype = np.dtype(spec["dtype"]) if spec["dtype"] != "object" else np.dtype(object)
        if dtype.kind == "f":
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec["name"]] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec["name"]] = np.zeros(shape, dtype=bool)
        else:
            feeds[spec["name"]] = np.full(shape, "", dtype=object)
    return feeds


def contract_differences(previous: dict, current: dict) -> list[str]:
    """Breaking changes between two contracts: inputs or outputs renamed, retyped or reshaped.

    A fixed dim becoming symbolic widens what is accepted and is not breaking; the reverse is.
    """
    diffs: list[str] = []
    for side in ("inputs", "outputs"):
        before = {s["name"]: s for s in previous.get(side) or []}
        after = {s["name"]: s for s in current.get(side) or []}
        kind = side[:-1]
        for name in before.keys() - after.keys():
            diffs.append(f"{kind} '{name}' was removed")
        for name in after.keys() - before.keys():
            diffs.append(f"{kind} '{name}' is new" + (" (devices do not send it)" if side == "inputs" else ""))
        for name in sorted(before.keys() & after.keys()):
            a, b = before[name], after[name]
            if a["dtype"] != b["dtype"]:
                diffs.append(f"{kind} '{name}' dtype changed from {a['dtype']} to {b['dtype']}")
            if len(a["shape"]) != len(b["shape"]):
                diffs.append(f"{kind} '{name}' rank changed from {a['shape']} to {b['shape']}")
                continue
            for i, (x, y) in enumerate(zip(a["shape"], b["shape"], strict=True)):
                if isinstance(y, int) and x != y:
                    diffs.append(f"{kind} '{name}' dim {i} changed from {x} to {y}")
    return sorted(diffs)


def is_quantized(model: onnx.ModelProto) -> bool:
    ops = {n.op_type for n in model.graph.node}
    if ops & QUANT_OPS or any(op.startswith("QLinear") for op in ops):
        return True
    return any(t.data_type in INT8_TYPES for t in model.graph.initializer)


def parameter_count(model: onnx.ModelProto) -> int:
    return int(sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer))


def has_external_data(model: onnx.ModelProto) -> bool:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors.extend(a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return any(t.data_location == TensorProto.EXTERNAL for t in tensors)


def latency_ms(run: Callable[[], Any], runs: int = 30, budget_s: float = 10.0) -> dict:
    """p50/p95 wall time of ``run`` after one warm-up, stopping early once ``budget_s`` is spent."""
    run()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - start > budget_s and len(times) >= 5:
            break
    arr = np.asarray(times)
    return {
        "p50": round(float(np.percentile(arr, 50)), 4),
        "p95": round(float(np.percentile(arr, 95)), 4),
        "runs": len(times),
    }


class _Steps:
    """Times named steps into ``report["steps"]``; a failure becomes ``ValidationFailed``."""

    def __init__(self, report: dict) -> None:
        self.report = report
        report.setdefault("steps", [])

    @contextmanager
    def step(self, name: str, failure: str) -> Iterator[dict]:
        entry: dict[str, Any] = {"name": name, "ok": False}
        t0 = time.perf_counter()
        try:
            yield entry
            entry["ok"] = True
        except ValidationFailed as exc:
            entry["error"] = exc.message
            raise ValidationFailed(exc.message, self.report, name) from exc
        except Exception as exc:
            message = f"{failure}: {_short(exc)}"
            entry["error"] = message
            raise ValidationFailed(message, self.report, name) from exc
        finally:
            entry["duration_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            self.report["steps"].append(entry)


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate(
    path: str | Path,
    previous_contract: dict | None = None,
    latency_runs: int = 30,
) -> tuple[dict, ort.InferenceSession]:
    """Run every check on the ONNX file at ``path``; return (report, open session) or raise."""
    path = Path(path)
    report: dict[str, Any] = {"file_size": path.stat().st_size, "breaking_changes": []}
    steps = _Steps(report)
    model: onnx.ModelProto | None = None

    with steps.step("load", "This is not a readable ONNX model"):
        if report["file_size"] == 0:
            raise ValidationFailed("The file is empty: upload the .onnx file your exporter wrote.", report, "load")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ValidationFailed(
                "This is not an ONNX model (the file does not parse as an ONNX protobuf; is it truncated "
                f"or a different format?): {_short(exc, 200)}",
                report,
                "load",
            ) from exc
        if not model.HasField("graph") or not model.graph.node:
            raise ValidationFailed(
                "This is not an ONNX model: it has no graph (random bytes, a truncated file or another format?).",
                report,
                "load",
            )
    assert model is not None

    with steps.step("format", "The model's format is not supported"):
        if has_external_data(model):
            raise ValidationFailed(
                "The model keeps its weights in external data files, which cannot be shipped as one artifact. "
                "Re-save it with onnx.save(model, path, save_as_external_data=False) (models under 2 GB).",
                report,
                "format",
            )
        opsets = {o.domain or "": int(o.version) for o in model.opset_import}
        report["opset"] = opsets.get("", opsets.get("ai.onnx", 0))
        report["opsets"] = opsets
        report["ir_version"] = int(model.ir_version)
        report["producer"] = {"name": model.producer_name, "version": model.producer_version}
        report["metadata"] = {p.key: p.value for p in model.metadata_props}
        top = max_supported_opset()
        report["runtime"] = {"onnxruntime": ort.__version__, "max_opset": top}
        if report["opset"] > top:
            raise ValidationFailed(
                f"The model uses opset {report['opset']}, newer than this server's onnxruntime {ort.__version__} "
                f"supports (at most {top}). Export it again with opset_version={top} or lower.",
                report,
                "format",
            )
        if report["opset"] < MIN_OPSET:
            raise ValidationFailed(
                f"The model uses opset {report['opset']}, older than onnxruntime supports (at least {MIN_OPSET}). "
                "Convert it with onnx.version_converter.convert_version(model, 17).",
                report,
                "format",
            )

    with steps.step("checker", "onnx.checker rejected the model"):
        onnx.checker.check_model(model, full_check=True)

    with steps.step("metadata", "Could not read the model's metadata"):
        contract = contract_of(model)
        report["inputs"], report["outputs"] = contract["inputs"], contract["outputs"]
        report["parameters"] = parameter_count(model)
        report["quantized"] = is_quantized(model)
        report["nodes"] = len(model.graph.node)
    del model  # the session below holds its own copy; big models should not be in memory twice

    with steps.step("session", "onnxruntime could not load the model"):
        session = make_session(path)
        report["threads"] = num_threads()

    feeds = synthetic_inputs(report["inputs"])
    with steps.step("smoke", "The model failed on synthetic inputs") as entry:
        outs = session.run(None, feeds)
        entry["output_shapes"] = [list(o.shape) for o in outs]
        nonfinite = [
            report["outputs"][i]["name"]
            for i, o in enumerate(outs)
            if np.asarray(o).dtype.kind == "f" and not np.all(np.isfinite(o))
        ]
        if nonfinite:
            entry["warning"] = f"non-finite values in {', '.join(nonfinite)} on random inputs"

    with steps.step("latency", "Latency could not be measured"):
        report["latency_ms"] = latency_ms(lambda: session.run(None, feeds), runs=latency_runs)

    with steps.step("contract", "The contract check failed") as entry:
        if previous_contract and previous_contract.get("inputs") is not None:
            report["breaking_changes"] = contract_differences(previous_contract, contract)
            entry["compared_with"] = previous_contract.get("version")
        else:
            entry["compared_with"] = None
    return report, session
