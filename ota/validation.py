"""Checks that say whether an ONNX file is fit to ship (onnx + onnxruntime + numpy; no Django).

``validate`` runs the steps in order, times each one, and either returns the report or raises
``ValidationFailed`` carrying the partial report and a message a person can act on. Callers store
the report either way, so a rejection shows what passed before it.

It parses and runs uploaded bytes, so the server only calls it inside the sandbox child
(``ota.sandbox_child``), never in a web or worker process. Declared and inferred tensor sizes are
checked against ``Limits`` before anything is allocated for them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, shape_inference

from ota import outputs as out_values
from ota.contract import contract_differences, contract_of, io_warnings
from ota.limits import Limits, elements, memory_message, tensor_elements_message
from ota.opsets import max_supported_opset, opset_problems, supported_opsets
from ota.synthetic import TooLarge, check_input_sizes, synthetic_inputs

LOCALE_FAILURE = "Failed to construct locale"
NO_KERNEL = ("Could not find an implementation for", "NOT_IMPLEMENTED")
CUSTOM_OP = "is not a registered function/op"
SERVER_LOCALE = "C.UTF-8"  # what the sandbox child runs under (ota.sandbox.child_env)
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}
INT8_TYPES = {TensorProto.INT8, TensorProto.UINT8}
SMALL_INITIALIZER_BYTES = 4096  # initializers up to this size stay in the copy used for shape inference
ALLOC_FAILURES = ("Failed to allocate memory", "bad_alloc", "Unable to allocate", "out of memory")


class ValidationFailed(Exception):
    """A step failed; ``message`` is for a person, ``report`` holds what was learnt so far."""

    def __init__(self, message: str, report: dict, step: str) -> None:
        super().__init__(message)
        self.message = message
        self.report = report
        self.step = step


def num_threads() -> int:
    return max(1, int(os.environ.get("ORT_NUM_THREADS", "1") or 1))


def make_session(path: str | Path) -> ort.InferenceSession:
    """A CPU session with the thread count the deployment chose (ORT_NUM_THREADS)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def is_quantized(model: onnx.ModelProto) -> bool:
    ops = {n.op_type for n in model.graph.node}
    if ops & QUANT_OPS or any(op.startswith("QLinear") for op in ops):
        return True
    return any(t.data_type in INT8_TYPES for t in model.graph.initializer)


def parameter_count(model: onnx.ModelProto) -> int:
    return int(sum(elements(t.dims) for t in model.graph.initializer))


def _itemsize(elem_type: int) -> int:
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:
        return 4


def _dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _check_tensors(value_infos: Iterable[tuple[onnx.ValueInfoProto, str]], limits: Limits) -> None:
    """Refuse any tensor whose known dims (symbolic ones counted as 1) exceed the element cap."""
    for vi, what in value_infos:
        shape = _dims(vi)
        if not shape:
            continue
        n = elements(d if isinstance(d, int) and d > 0 else 1 for d in shape)
        if n > limits.max_tensor_elements:
            raise TooLarge(
                tensor_elements_message(vi.name, what, shape, n, _itemsize(vi.type.tensor_type.elem_type), limits)
            )


def inferred_value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Shapes onnx infers for the graph's tensors (constant shapes propagated), without copying big weights.

    Big initializers become typed inputs of a light copy: inference needs their shape, not their bytes.
    """
    graph = onnx.GraphProto(name=model.graph.name)
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if init.ByteSize() <= SMALL_INITIALIZER_BYTES:
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light = helper.make_model(graph, opset_imports=list(model.opset_import))
    light.ir_version = model.ir_version
    light.functions.extend(model.functions)
    inferred = shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    return list(inferred.graph.value_info) + list(inferred.graph.output)


def check_tensor_sizes(model: onnx.ModelProto, limits: Limits) -> None:
    """Declared inputs, outputs and value infos, then shapes inferred from constants, against the cap.

    Catches ``Expand``/``ConstantOfShape``/``Tile`` to a constant 1 GiB shape before onnxruntime runs it;
    shapes only known at run time are left to the sandbox's memory limit and the output check.
    """
    declared = [(v, "declared input") for v in model.graph.input]
    declared += [(v, "declared output") for v in model.graph.output]
    declared += [(v, "declared") for v in model.graph.value_info]
    _check_tensors(declared, limits)
    try:
        inferred = inferred_value_infos(model)
    except Exception:  # inference gave up (unusual ops): the run-time limits still hold
        return
    _check_tensors(((v, "inferred from the graph") for v in inferred), limits)


def check_outputs(names: list[str], outs: list[Any], limits: Limits) -> None:
    for name, out in zip(names, outs, strict=False):
        n, shape, itemsize = out_values.size_of(out)
        if n > limits.max_tensor_elements:
            raise TooLarge(tensor_elements_message(name, "output on a sample input", shape, n, itemsize, limits))


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph carries, subgraphs (If/Loop/Scan bodies) and sparse tensors included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors
            elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield a.sparse_tensor.values
                yield a.sparse_tensor.indices
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _tensors(g)


def has_external_data(model: onnx.ModelProto) -> bool:
    """External data would make onnxruntime read files next to the model (any file, by a relative path)."""
    graphs = [model.graph, *(onnx.GraphProto(node=f.node) for f in model.functions)]
    return any(t.data_location == TensorProto.EXTERNAL for g in graphs for t in _tensors(g))


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


def is_alloc_failure(exc: BaseException) -> bool:
    """Out of memory, as Python, numpy or onnxruntime's allocators say it under the sandbox's RLIMIT_AS."""
    return isinstance(exc, MemoryError) or any(s in str(exc) for s in ALLOC_FAILURES)


class _Steps:
    """Times named steps into ``report["steps"]``; a failure becomes ``ValidationFailed``.

    ``on_step`` hears each step's name as it starts, so the sandbox knows what a crash interrupted.
    """

    def __init__(
        self, report: dict, limits: Limits | None = None, on_step: Callable[[str], None] | None = None
    ) -> None:
        self.report = report
        self.limits = limits or Limits()
        self.on_step = on_step
        report.setdefault("steps", [])

    @contextmanager
    def step(self, name: str, failure: str) -> Iterator[dict]:
        entry: dict[str, Any] = {"name": name, "ok": False}
        if self.on_step is not None:
            self.on_step(name)
        t0 = time.perf_counter()
        try:
            yield entry
            entry["ok"] = True
        except ValidationFailed as exc:
            entry["error"] = exc.message
            raise ValidationFailed(exc.message, self.report, name) from exc
        except TooLarge as exc:
            entry["error"] = str(exc)
            raise ValidationFailed(str(exc), self.report, name) from exc
        except Exception as exc:
            message = memory_message(name, self.limits) if is_alloc_failure(exc) else f"{failure}: {_short(exc)}"
            entry["error"] = message
            raise ValidationFailed(message, self.report, name) from exc
        finally:
            entry["duration_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            self.report["steps"].append(entry)


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _session_with_server_locale(model: onnx.ModelProto) -> tuple[ort.InferenceSession, list[str]]:
    """Retry with every StringNormalizer's locale set to the server's own (a copy; the upload is unchanged)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    asked: list[str] = []
    for node in copy.graph.node:
        if node.op_type == "StringNormalizer":
            for a in node.attribute:
                if a.name == "locale":
                    asked.append(a.s.decode(errors="replace"))
                    a.s = SERVER_LOCALE.encode()
            if not any(a.name == "locale" for a in node.attribute):
                asked.append("en_US")
                node.attribute.append(helper.make_attribute("locale", SERVER_LOCALE))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(copy.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    return session, sorted(set(asked))


def locale_warning(locales: list[str]) -> str:
    names = ", ".join(locales) or "a locale"
    return (
        f"The model's text normalisation asks for locale {names}, which this server does not have installed "
        f"(a server setting, not a fault of the model): it was checked with {SERVER_LOCALE} instead, so text "
        "outside ASCII may be cased differently here. Devices must have that locale installed; or export with "
        f"locale='{SERVER_LOCALE}' on StringNormalizer."
    )


def session_message(exc: BaseException) -> str:
    text = _short(exc)
    if any(k in text for k in NO_KERNEL):
        return (
            "onnxruntime's CPU build has no implementation for an operator of this model (it may exist only for "
            f"a GPU execution provider, which devices running the CPU provider lack): {text} Export it with "
            "operators the CPU provider implements."
        )
    if CUSTOM_OP in text:
        return (
            f"onnxruntime could not load the model: {text} It uses a custom operator, which needs a custom-op "
            "library on every device: export with standard operators (domains ai.onnx, ai.onnx.ml, com.microsoft)."
        )
    return f"onnxruntime could not load the model: {text}"


def smoke_message(exc: BaseException, inputs: list[dict]) -> str:
    text = _short(exc)
    kinds = ", ".join(f"'{s['name']}' ({s['dtype']})" for s in inputs)
    if LOCALE_FAILURE in text:
        return (
            "The model's text operators need a locale this server does not have installed; this is a server "
            f"setting, not a fault of the model (inputs {kinds}): {text}"
        )
    return (
        f"The model failed on synthetic inputs of its declared types ({kinds}): {text} "
        "Check that the declared input shapes and types are those the model really takes."
    )


def validate(
    path: str | Path,
    previous_contract: dict | None = None,
    latency_runs: int = 30,
    limits: Limits | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[dict, ort.InferenceSession]:
    """Run every check on the ONNX file at ``path``; return (report, open session) or raise."""
    path = Path(path)
    limits = limits or Limits()
    report: dict[str, Any] = {"file_size": path.stat().st_size, "breaking_changes": []}
    steps = _Steps(report, limits, on_step)
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
        opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
        report["opset"] = opsets.get("ai.onnx")
        report["opsets"] = opsets
        report["ir_version"] = int(model.ir_version)
        report["producer"] = {"name": model.producer_name, "version": model.producer_version}
        report["metadata"] = {p.key: p.value for p in model.metadata_props}
        report["runtime"] = {
            "onnxruntime": ort.__version__,
            "max_opset": max_supported_opset(),
            "opsets": {k: list(v) for k, v in supported_opsets().items()},
        }
        problems = opset_problems(model)
        if problems:
            raise ValidationFailed(" ".join(problems), report, "format")

    with steps.step("checker", "onnx.checker rejected the model"):
        onnx.checker.check_model(model, full_check=True)

    with steps.step("metadata", "Could not read the model's metadata"):
        contract = contract_of(model)
        report["inputs"], report["outputs"] = contract["inputs"], contract["outputs"]
        report["parameters"] = parameter_count(model)
        report["quantized"] = is_quantized(model)
        report["nodes"] = len(model.graph.node)
        report["warnings"] = io_warnings(contract)
        check_input_sizes(contract["inputs"], limits)
        check_tensor_sizes(model, limits)
    del model  # the session below holds its own copy; big models should not be in memory twice

    with steps.step("session", "onnxruntime could not load the model") as entry:
        try:
            session = make_session(path)
        except Exception as exc:
            if LOCALE_FAILURE not in str(exc):
                raise ValidationFailed(session_message(exc), report, "session") from exc
            # The server lacks a locale the model names (StringNormalizer): not the model's fault.
            session, locales = _session_with_server_locale(onnx.load(str(path), load_external_data=False))
            entry["warning"] = locale_warning(locales)
            report["warnings"].append(entry["warning"])
        report["threads"] = num_threads()

    with steps.step("smoke", "The model failed on synthetic inputs") as entry:
        feeds = synthetic_inputs(report["inputs"], limits=limits)
        try:
            outs = session.run(None, feeds)
        except Exception as exc:
            if is_alloc_failure(exc):
                raise
            raise ValidationFailed(smoke_message(exc, report["inputs"]), report, "smoke") from exc
        check_outputs([o["name"] for o in report["outputs"]], outs, limits)
        entry["output_shapes"] = [out_values.describe(o) for o in outs]
        nonfinite = [report["outputs"][i]["name"] for i, o in enumerate(outs) if out_values.nonfinite(o)]
        if nonfinite:
            entry["warning"] = f"non-finite values in {', '.join(nonfinite)} on random inputs"
        del outs

    with steps.step("latency", "Latency could not be measured"):
        report["latency_ms"] = latency_ms(lambda: session.run(None, feeds), runs=latency_runs)

    with steps.step("contract", "The contract check failed") as entry:
        if previous_contract and previous_contract.get("inputs") is not None:
            report["breaking_changes"] = contract_differences(previous_contract, contract)
            entry["compared_with"] = previous_contract.get("version")
        else:
            entry["compared_with"] = None
    return report, session
