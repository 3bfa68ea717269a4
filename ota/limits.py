"""What validating one upload may cost, and the sentences that say which limit a model went past.

Pure (stdlib only): the worker side (``ota.sandbox``) and the child that parses and runs the upload
(``ota.sandbox_child``) share it. Every message names the setting an admin would raise, and never a
server path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Limits of one sandboxed job. Element caps are checked before anything is allocated."""

    memory_bytes: int = 2048 * MiB  # address space the model may use beyond the runtime itself
    cpu_seconds: int = 600
    wall_seconds: int = 300
    max_input_elements: int = 1 << 24  # all synthetic inputs of one sample together
    max_tensor_elements: int = 1 << 26  # any declared, inferred or produced tensor
    reference_max_bytes: int = 256 * MiB  # a reference set, unpacked
    threads: int = 1

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Limits:
        return cls(**{k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__})


def human_bytes(n: int | float) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            if unit == "B":
                return f"{size:.0f} B"
            return f"{size:.0f} {unit}" if size == int(size) else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def elements(shape: Iterable[int]) -> int:
    """Exact element count (Python ints: a declared [1e7, 1e7] cannot overflow)."""
    return math.prod(int(d) for d in shape)


# What the validation was doing in each step, for "... while <doing>" and "... memory <to do>".
DOING = {
    "load": "loading the model",
    "format": "reading the model's format",
    "checker": "checking the model with onnx.checker",
    "metadata": "reading the model's inputs and outputs",
    "sizes": "checking the model's tensor sizes",
    "session": "loading the model into onnxruntime",
    "smoke": "running the model on a sample input",
    "latency": "measuring the model's latency on a sample input",
    "contract": "comparing the model's contract",
    "reference_profile": "reading the reference set",
    "reference_profile_build": "running the model over the reference set",
    "int8_variant": "quantizing the model to int8",
    "reference_check": "reading the reference set",
    "start": "starting the validation",
}
TO_DO = {
    "load": "to load",
    "format": "to load",
    "checker": "to check",
    "metadata": "to load",
    "sizes": "to load",
    "session": "to load into onnxruntime",
    "smoke": "to run on a sample input",
    "latency": "to run on a sample input",
    "reference_profile": "to read the reference set",
    "reference_check": "to read the reference set",
    "reference_profile_build": "to run over the reference set",
    "int8_variant": "to quantize to int8",
}


def doing(step: str | None) -> str:
    return DOING.get(step or "start", "validating the model")


def memory_message(step: str | None, limits: Limits) -> str:
    subject = "The reference set needs" if (step or "").startswith("reference") else "The model needs"
    return (
        f"{subject} more than {human_bytes(limits.memory_bytes)} of memory {TO_DO.get(step or '', 'to validate')} "
        "(EDGEFLEET_VALIDATION_MEMORY_MB). Make it smaller (smaller tensors, a symbolic batch dimension, "
        "fewer reference rows), or ask an admin to raise the limit."
    )


def timeout_message(step: str | None, limits: Limits) -> str:
    return (
        f"Validation took longer than {limits.wall_seconds} s (EDGEFLEET_VALIDATION_TIMEOUT) while {doing(step)}. "
        "Check how long one inference takes on your machine; a model this slow cannot be validated here "
        "unless an admin raises the limit."
    )


def cpu_message(step: str | None, limits: Limits) -> str:
    return (
        f"Validation used more than {limits.cpu_seconds} s of CPU time (EDGEFLEET_VALIDATION_CPU_SECONDS) while "
        f"{doing(step)}. The model is too expensive to check here unless an admin raises the limit."
    )


def crash_message(step: str | None, signal_name: str, limits: Limits) -> str:
    return (
        f"The validation process crashed ({signal_name}) while {doing(step)}. The model may be malformed, or "
        f"need more than the {human_bytes(limits.memory_bytes)} of memory validation allows; check it locally "
        "with onnx.checker.check_model(model, full_check=True) and an onnxruntime session."
    )


def input_elements_message(name: str, shape: list, n: int, limits: Limits) -> str:
    return (
        f"Input '{name}' is declared as {shape} ({n:,} elements); a sample input may have at most "
        f"{limits.max_input_elements:,} elements in all (EDGEFLEET_VALIDATION_MAX_INPUT_ELEMENTS). Export the "
        "model with a symbolic batch dimension or smaller fixed dimensions."
    )


def tensor_elements_message(name: str, what: str, shape: list, n: int, itemsize: int, limits: Limits) -> str:
    return (
        f"Tensor '{name}' ({what}) would hold {n:,} elements (shape {shape}, {human_bytes(n * itemsize)}), "
        f"more than the {limits.max_tensor_elements:,} allowed (EDGEFLEET_VALIDATION_MAX_TENSOR_ELEMENTS). "
        "A model that builds tensors this large cannot run on an edge device."
    )


def reference_size_message(unpacked: int, size: int, limits: Limits) -> str:
    return (
        f"The reference set unpacks to {human_bytes(unpacked)} from a {human_bytes(size)} file, more than the "
        f"{human_bytes(limits.reference_max_bytes)} limit (EDGEFLEET_REFERENCE_MAX_BYTES). A sample of a few "
        "thousand rows is enough for a reference profile."
    )


CRASHED_TWICE = (
    "This validation crashed the worker twice, so it was not run a third time; the model was not staged. "
    "Check it locally with onnx.checker and an onnxruntime session, then upload it again "
    "(ask an admin to look at the worker logs if it is a small, ordinary model)."
)

# An absolute path with at least two parts (server files, build paths in onnxruntime's messages).
_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.+@~-]+/)+([\w.+@~-]*)")


def scrub(text: str, names: dict[str, str] | None = None) -> str:
    """``text`` with server paths replaced: known files by their name, any other path by its last part."""
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        if path:
            text = text.replace(path, name)
    return _PATH.sub(lambda m: m.group(1) or "…", text)


def scrub_report(report: dict, names: dict[str, str] | None = None) -> dict:
    """The report with every step error (and the int8 error) scrubbed."""
    for entry in report.get("steps") or []:
        if isinstance(entry, dict) and isinstance(entry.get("error"), str):
            entry["error"] = scrub(entry["error"], names)
    if isinstance(report.get("int8_error"), str):
        report["int8_error"] = scrub(report["int8_error"], names)
    return report
