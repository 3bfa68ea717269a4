"""Which bins a version's telemetry uses: ONE rule shared by the manifest builder and the ingest check.

``expected_bins(version)`` answers from the version's reference profile when it has one (edges
fitted to the reference data set), else from ``telemetry.binning`` defaults: one feature per input
column named ``<input>[<j>]`` over ``DEFAULT_FEATURE_EDGES``, and the first output as argmax class
counts (at most ``MAX_CLASSES`` classes) or score bins. A profile learned from the first window
(``source: "first_window"``) keeps the default edges, so the bins never change under a device.
"""

from __future__ import annotations

from typing import Any

from telemetry.binning import DEFAULT_FEATURE_EDGES, DEFAULT_SCORE_EDGES, LATENCY_EDGES_MS, MAX_CLASSES


def _last_dim(shape: Any) -> int:
    """Columns of a tensor from its declared shape; a dynamic or missing last dim counts as one."""
    if isinstance(shape, list | tuple) and len(shape) >= 2 and isinstance(shape[-1], int) and shape[-1] > 0:
        return int(shape[-1])
    return 1


def default_bins(report: dict) -> dict:
    """The default bins for a version from its validation report's input/output declarations."""
    features = []
    for inp in report.get("inputs") or []:
        name = inp.get("name", "input")
        for j in range(_last_dim(inp.get("shape"))):
            features.append({"name": f"{name}[{j}]", "edges": list(DEFAULT_FEATURE_EDGES)})
    outputs = report.get("outputs") or []
    n_out = _last_dim(outputs[0].get("shape")) if outputs else 1
    if 2 <= n_out <= MAX_CLASSES:
        output: dict = {"kind": "classes", "n": n_out}
    else:
        output = {"kind": "bins", "edges": list(DEFAULT_SCORE_EDGES)}
    return {"features": features, "output": output}


def bins_from_profile(profile: dict) -> dict:
    """The bins a reference profile fixes (its counts are dropped: devices need only the edges)."""
    out = profile.get("output") or {}
    if out.get("kind") == "classes":
        output: dict = {"kind": "classes", "n": int(out["n"])}
    else:
        output = {"kind": "bins", "edges": list(out.get("edges") or DEFAULT_SCORE_EDGES)}
    features = [{"name": f["name"], "edges": list(f["edges"])} for f in profile.get("features") or []]
    return {"features": features, "output": output}


def expected_bins(version: Any) -> dict:
    """``{"features": [{"name", "edges"}], "output": {"kind": "classes", "n"} | {"kind": "bins", "edges"}}``.

    Use this for the manifest's per-model ``telemetry`` block and nothing else, so what devices
    are told and what the server accepts cannot disagree.
    """
    profile = getattr(version, "reference_profile", None)
    if profile and profile.get("features"):
        return bins_from_profile(profile)
    return default_bins(getattr(version, "report", None) or {})


def output_bin_count(output: dict) -> int:
    return int(output["n"]) if output["kind"] == "classes" else len(output["edges"]) - 1


def latency_bin_count() -> int:
    return len(LATENCY_EDGES_MS) - 1
