"""Which operator sets this server's onnxruntime runs, probed once per process (onnx + onnxruntime; no Django).

An upload whose opsets fall outside these ranges is refused before a session is built, with the
export option that fixes it; ``rollout.placement`` compares devices' reported onnxruntime with the
same probe.
"""

from __future__ import annotations

import functools

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

MIN_OPSET = 7  # onnxruntime only guarantees support from opset 7 on
# Operator domains onnxruntime's CPU build implements, by the name a person knows them by.
DOMAINS = {"": "ai.onnx", "ai.onnx": "ai.onnx", "ai.onnx.ml": "ai.onnx.ml", "com.microsoft": "com.microsoft"}


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


@functools.cache
def max_supported_ml_opset() -> int:
    """The newest ``ai.onnx.ml`` opset the installed onnxruntime loads (a Binarizer probe, cached)."""
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    node = helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml")
    graph = helper.make_graph([node], "probe", [vi[0]], [vi[1]])
    top = max(v for k, v in helper.OP_SET_ID_VERSION_MAP if k == "ai.onnx.ml")
    for opset in range(top + 2, 0, -1):
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", opset)]
        )
        model.ir_version = 8
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # a refusal is the answer we are probing for
            continue
    return 1


def supported_opsets() -> dict[str, tuple[int, int]]:
    """Per operator domain, the opset range this server's onnxruntime runs (``com.microsoft`` is 1 only)."""
    return {
        "ai.onnx": (MIN_OPSET, max_supported_opset()),
        "ai.onnx.ml": (1, max_supported_ml_opset()),
        "com.microsoft": (1, 1),
    }


def opset_problems(model: onnx.ModelProto) -> list[str]:
    """Why onnxruntime would refuse the model's operator sets ([] when it would not), per domain.

    Only domains the model imports are checked (onnxruntime's ``logreg_iris.onnx`` imports ``ai.onnx.ml``
    alone); custom domains are left to onnxruntime, which names the operator it lacks.
    """
    ranges = supported_opsets()
    problems: list[str] = []
    for o in model.opset_import:
        domain, version = o.domain or "", int(o.version)
        name = DOMAINS.get(domain)
        if name is None:  # a custom domain: onnxruntime says which operator it lacks (session_message)
            continue
        low, high = ranges[name]
        if version > high:
            problems.append(
                f"The model uses {name} opset {version}, newer than this server's onnxruntime {ort.__version__} "
                f"supports (at most {high}). Export it again with that domain at opset {high} or lower"
                + (f" (e.g. opset_version={high})." if name == "ai.onnx" else ".")
            )
        elif version < low:
            problems.append(
                f"The model uses {name} opset {version}, older than onnxruntime supports (at least {low}). "
                + (
                    "Convert it with onnx.version_converter.convert_version(model, 17)."
                    if name == "ai.onnx"
                    else "Export it again with a current converter."
                )
            )
    return problems
