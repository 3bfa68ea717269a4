"""Everything that parses or runs one upload, as the sandbox child does it (no Django, no database).

Two jobs:

- ``reference``: is an uploaded reference set readable (the upload form's quick answer)?
- ``validate``: the validation steps (``ota.validation``), then the reference profile and the int8
  variant when asked. The fp32 outcome is handed to ``checkpoint`` before quantization starts, so a
  crash while quantizing still stages the model (without the variant).

Results are plain JSON; the int8 file is written where the job says (the worker stores it).
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
        arrays = profile = None
        ref = job.get("reference")
        if ref:
            arrays = timed(report, "reference_profile", limits, on_step, lambda: reference_arrays(ref, report, limits))
            profile = timed(
                report,
                "reference_profile_build",
                limits,
                on_step,
                lambda: profiles.build_profile(arrays, report["inputs"], lambda f: session.run(None, f)[0]),
            )
    except validation.ValidationFailed as exc:
        return {"ok": False, "report": exc.report, "error": exc.message, "step": exc.step}
    # What the staged model ran under: every step above ran inside these limits.
    report["limits"] = {k: v for k, v in limits.as_json().items() if k != "threads"}
    result: dict[str, Any] = {"ok": True, "report": report, "profile": profile, "variant": None}
    if job.get("int8_path"):
        checkpoint({**result, "int8_pending": True})
        try:
            metrics = timed(
                report,
                "int8_variant",
                limits,
                on_step,
                lambda: int8_variant(job["model"], Path(job["int8_path"]), session, report, arrays, job, limits),
            )
            result["variant"] = {"metrics": metrics}
        except validation.ValidationFailed as exc:  # the fp32 model is fine; say why there is no int8 build
            report["int8_error"] = f"The int8 variant could not be made: {exc.message}"
    return result


def timed(report: dict, name: str, limits: Limits, on_step: Step, fn: Callable[[], Any]) -> Any:
    """One step after ``validation.validate``'s own, timed into the report; any failure is a message."""
    from ota import profiles, validation

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
        elif isinstance(exc, validation.TooLarge):
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


def int8_variant(
    src: str, out: Path, session: Any, report: dict, arrays: dict | None, job: dict, limits: Limits
) -> dict:
    """Quantize to ``out`` and measure it against the fp32 session; returns the variant's metrics."""
    from ota import quantize, validation

    quantize.make_int8(src, out)
    int8 = validation.make_session(out)
    feeds = validation.synthetic_inputs(report["inputs"], limits=limits)
    latency = validation.latency_ms(lambda: int8.run(None, feeds), runs=job.get("latency_runs", 30))
    metrics = quantize.agreement(session, int8, comparison_batches(report["inputs"], arrays, limits))
    metrics.update({"size": out.stat().st_size, "latency_ms": {"p50": latency["p50"], "p95": latency["p95"]}})
    metrics["source"] = "reference" if arrays else "synthetic"
    return metrics


def comparison_batches(inputs: list[dict], arrays: dict | None, limits: Limits, rows: int = 512) -> list[dict]:
    import numpy as np

    from ota import profiles, validation

    fixed = profiles.fixed_batch(inputs)
    if arrays:
        n = min(rows, next(iter(arrays.values())).shape[0])
        step = fixed or 128
        stop = n - n % step if fixed else n
        return [
            {s["name"]: arrays[s["name"]][i : i + step].astype(np.dtype(s["dtype"])) for s in inputs}
            for i in range(0, stop, step)
        ]
    return [validation.synthetic_inputs(inputs, batch=fixed or 16, seed=i, limits=limits) for i in range(8)]
