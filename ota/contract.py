"""A model's input/output contract: readable types, schemas, breaking changes between versions, and
the I/O shapes that run here but serve devices badly (onnx + numpy; no Django)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def dtype_name(elem_type: int) -> str:
    if elem_type == TensorProto.STRING:
        return "string"
    if elem_type == TensorProto.UNDEFINED:
        return "unknown"
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        return TensorProto.DataType.Name(elem_type).lower()


def type_name(tp: onnx.TypeProto) -> str:
    """A readable type: ``float32``, ``string``, ``sequence<map<int64, float32>>``, ``optional<…>``."""
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        return dtype_name(tp.tensor_type.elem_type)
    if which == "sparse_tensor_type":
        return f"sparse<{dtype_name(tp.sparse_tensor_type.elem_type)}>"
    if which == "sequence_type":
        return f"sequence<{type_name(tp.sequence_type.elem_type)}>"
    if which == "map_type":
        return f"map<{dtype_name(tp.map_type.key_type)}, {type_name(tp.map_type.value_type)}>"
    if which == "optional_type":
        return f"optional<{type_name(tp.optional_type.elem_type)}>"
    return "unknown"


def value_schema(vi: onnx.ValueInfoProto) -> dict:
    """``{"name","dtype","shape"}``; shape items are ints, or strings for symbolic/unknown dims.

    A sequence, map or optional value has ``"kind"`` (``sequence``/``map``/``optional``), its readable
    type as ``dtype`` and no shape.
    """
    which = vi.type.WhichOneof("value")
    if which != "tensor_type":
        kind = (which or "unknown").removesuffix("_type").replace("sparse_tensor", "sparse")
        return {"name": vi.name, "dtype": type_name(vi.type), "shape": [], "kind": kind}
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


def io_warnings(contract: dict) -> list[str]:
    """What runs here but serves devices badly, with the export option that fixes it."""
    warnings: list[str] = []
    for spec in contract["outputs"]:
        if spec.get("kind") == "sequence" and spec["dtype"].startswith("sequence<map<"):
            warnings.append(
                f"Output '{spec['name']}' is a {spec['dtype']} (skl2onnx's ZipMap): it is validated and compared, "
                "but devices get one dict per row. Export with options={id(model): {'zipmap': False}} "
                "for a [batch, classes] float tensor."
            )
    for spec in contract["inputs"]:
        if spec.get("kind"):
            warnings.append(
                f"Input '{spec['name']}' is a {spec['dtype']}, not a tensor: it is smoke-run with a synthetic "
                "value here, but reference profiles and device telemetry cover tensor inputs only."
            )
    return warnings
