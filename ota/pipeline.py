"""Everything that parses or runs one upload, as the sandbox child does it (no Django, no database).

Two jobs:

- ``reference``: is an uploaded reference set readable (the upload form's quick answer)?
- ``validate``: the validation steps (``ota.validation``), the weights' sparsity, then the reference
  profile and the compression variants asked for (``ota.quantize.KINDS``). Each variant is built, put
  through the same ``validation.validate`` as an upload (its contract must equal fp32's) and compared
  with fp32 on every output (``ota.agreement``). The outcome so far is handed to ``checkpoint`` before
  each variant, so a crash while building one still stages the model with the variants done before it.

Results are plain JSON; variant files are written to ``<variant_dir>/<kind>.onnx`` (the worker stores them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ota.limits import Limits, memory_message

Step = Callable[[str], None]


def run(job: dict, limits: Limits, on_step: Step, checkpoint: Callable[[dict], None]) -> dict:
    if job["kind"] == "reference":
        return check_reference(job, limits, on_step)
    if job["kind"] == "validate":
        return validate_upload(job, limits, on_step, checkpoint)
    raise ValueError(f"unknown job kind {job['kind']!r}")


def check_reference(job: dict, limits: Limits, on_step: Step) -> dict:
    from ota import profiles

    on_step("reference_check")
    ref = job["reference"]
    try:
        profiles.load(ref["path"], ref["kind"], limits.reference_max_bytes)
    except profiles.ReferenceSetError as exc:
        return {"ok": False, "error": str(exc), "step": "reference_check"}
    return {"ok": True}


def validate_upload(job: dict, limits: Limits, on_step: Step, checkpoint: Callable[[dict], None]) -> dict:
    from ota import profiles, validation

    report: dict[str, Any] = {}
    try:
        report, session = validation.validate(
            job["model"],
            job.get("previous_contract"),
            latency_runs=job.get("latency_runs", 30),
            limits=limits,
            on_step=on_step,
        )
        report["sparsity"] = weight_sparsity(job["model"])
        arrays = profile = None
        ref = job.get("reference")
        if ref:
            arrays = timed(report, "reference_profile", limits, on_step, lambda: reference_arrays(ref, report, limits))
            profile = timed(
                report,
                "reference_profile_build",
                limits,
                on_step,
                lambda: profiles.build_profile(arrays, report["inputs"], lambda f: first_output(session, f)),
            )
    except validation.ValidationFailed as exc:
        return {"ok": False, "report": exc.report, "error": exc.message, "step": exc.step}
    # What the staged model ran under: every step above ran inside these limits.
    report["limits"] = {k: v for k, v in limits.as_json().items() if k != "threads"}
    result: dict[str, Any] = {"ok": True, "report": report, "profile": profile, "variants": {}}
    if job.get("variants"):
        build_variants(job, limits, on_step, checkpoint, result, session, arrays)
    return result


def build_variants(
    job: dict,
    limits: Limits,
    on_step: Step,
    checkpoint: Callable[[dict], None],
    result: dict,
    session: Any,
    arrays: dict | None,
) -> None:
    """Each asked-for variant in turn, checkpointing before each so a crash keeps what was done."""
    from ota import quantize, validation

    report = result["report"]
    errors: dict[str, str] = report.setdefault("variant_errors", {})
    batches = None
    for kind in job["variants"]:
        if kind not in quantize.KINDS:
            continue
        checkpoint({**result, "variants_pending": kind})
        out = Path(job["variant_dir"]) / f"{kind}.onnx"
        try:
            if batches is None:
                batches = comparison_batches(report["inputs"], arrays, limits)
            metrics = timed(
                report,
                f"{kind}_variant",
                limits,
                on_step,
                lambda kind=kind, out=out, b=batches: variant(kind, job, out, session, report, arrays, b, limits),
            )
            result["variants"][kind] = {"metrics": metrics}
        except validation.ValidationFailed as exc:  # the fp32 model is fine; say why there is no such build
            errors[kind] = f"The {quantize.LABELS[kind]} variant could not be made: {exc.message}"
            out.unlink(missing_ok=True)
    if "int8" in errors:
        report["int8_error"] = errors["int8"]


def weight_sparsity(path: str, shown: int = 20) -> dict | None:
    """The share of zero weights, over all large tensors and for the ``shown`` largest (None if unreadable)."""
    from ota import quantize, variant_math

    try:
        figures = variant_math.sparsity(quantize.weights(path))
    except Exception:  # a figure to show, never a reason to refuse the model
        return None
    return {**figures, "tensors": figures["tensors"][:shown], "tensor_count": len(figures["tensors"])}


def first_output(session: Any, feeds: dict) -> Any:
    """The first output as an array (ZipMap's dicts as [N, C]); the profile and the agent read that one."""
    from ota import outputs

    arr = outputs.as_array(session.run(None, feeds)[0])
    if arr is None:
        raise ValueError("the first output is neither a tensor nor a list of class scores")
    return arr


def timed(report: dict, name: str, limits: Limits, on_step: Step, fn: Callable[[], Any]) -> Any:
    """One step after ``validation.validate``'s own, timed into the report; any failure is a message."""
    from ota import profiles, synthetic, validation

    entry: dict[str, Any] = {"name": name, "ok": False}
    on_step(name)
    t0 = time.perf_counter()
    try:
        result = fn()
        entry["ok"] = True
        return result
    except profiles.ReferenceSetError as exc:
        entry["error"] = f"Reference data set: {exc}"
    except Exception as exc:
        if validation.is_alloc_failure(exc):
            entry["error"] = memory_message(name, limits)
        elif isinstance(exc, synthetic.TooLarge):
            entry["error"] = str(exc)
        elif name.startswith("reference"):
            entry["error"] = f"The reference profile could not be built: {validation._short(exc)}"
        else:
            entry["error"] = validation._short(exc)
    finally:
        entry["duration_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        report.setdefault("steps", []).append(entry)
    raise validation.ValidationFailed(entry["error"], report, name)


def reference_arrays(ref: dict, report: dict, limits: Limits) -> dict:
    from ota import profiles

    raw = profiles.load(ref["path"], ref["kind"], limits.reference_max_bytes)
    report.update(profiles.column_names(raw, report["inputs"], ref["kind"]))  # the pages' feature names
    return profiles.match_inputs(raw, report["inputs"], ref["kind"])


def variant(
    kind: str,
    job: dict,
    out: Path,
    session: Any,
    report: dict,
    arrays: dict | None,
    batches: list[dict],
    limits: Limits,
) -> dict:
    """Build one variant to ``out``, validate it as an upload, and measure it against the fp32 session."""
    import hashlib

    from ota import quantize, validation, variant_math

    t0 = time.perf_counter()
    try:
        quantize.build(kind, job["model"], out, batches if arrays else None)
    except quantize.NotApplicable as exc:
        raise validation.ValidationFailed(f"not applicable: {exc}.", report, f"{kind}_variant") from exc
    build_s = time.perf_counter() - t0
    if hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(Path(job["model"]).read_bytes()).digest():
        raise validation.ValidationFailed(
            "not applicable: it came out byte for byte the same as the fp32 model.", report, f"{kind}_variant"
        )
    contract = {"version": "fp32", "inputs": report["inputs"], "outputs": report["outputs"]}
    try:
        checked, built = validation.validate(out, contract, latency_runs=job.get("latency_runs", 30), limits=limits)
    except validation.ValidationFailed as exc:
        raise validation.ValidationFailed(
            f"it failed the upload checks at step {exc.step}: {exc.message}", report, f"{kind}_variant"
        ) from exc
    if checked["breaking_changes"]:
        raise validation.ValidationFailed(
            "it changes the model's inputs or outputs: " + "; ".join(checked["breaking_changes"]),
            report,
            f"{kind}_variant",
        )
    metrics = quantize.agreement(session, built, batches)
    metrics.update(
        {
            "size": out.stat().st_size,
            "latency_ms": {"p50": checked["latency_ms"]["p50"], "p95": checked["latency_ms"]["p95"]},
            "build_s": round(build_s, 4),
            "source": "reference" if arrays else "synthetic",
            "quantized": checked["quantized"],
            "sparsity": {"zero_share": variant_math.sparsity(quantize.weights(out))["zero_share"]},
            "validation": {"ok": True, "steps": [s["name"] for s in checked["steps"]]},
        }
    )
    return metrics


def comparison_batches(inputs: list[dict], arrays: dict | None, limits: Limits, rows: int = 512) -> list[dict]:
    import numpy as np

    from ota import profiles, synthetic

    fixed = profiles.fixed_batch(inputs)
    if arrays:
        n = min(rows, next(iter(arrays.values())).shape[0])
        step = fixed or 128
        stop = n - n % step if fixed else n
        return [
            {s["name"]: arrays[s["name"]][i : i + step].astype(np.dtype(s["dtype"])) for s in inputs}
            for i in range(0, stop, step)
        ]
    return [synthetic.synthetic_inputs(inputs, batch=fixed or 16, seed=i, limits=limits) for i in range(8)]
