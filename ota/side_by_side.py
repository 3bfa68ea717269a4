"""What the compare page shows for two versions of one model (reads the registry and fleet telemetry).

The registry's side (contract, size, server latency, variants, reference profiles) is there for any
two versions; the fleet's side (error rate, latency, drift, latency per hardware class) only where a
version ran on at least ``EDGEFLEET_MIN_COHORT`` devices, and is left empty otherwise.
"""

from __future__ import annotations

from typing import Any

from ota import charts, compare
from ota.models import ModelVersion
from ota.names import class_names, feature_names
from telemetry import fleet_latency


def _variants(v: ModelVersion) -> list[dict[str, Any]]:
    return [
        {"kind": x.kind, "size": x.artifact.size, "metrics": x.metrics or {}}
        for x in v.variants.select_related("artifact")
    ]


def context(a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    """Template context of the compare page: ``a`` and ``b`` are versions of the same model."""
    names = feature_names(b.report) or feature_names(a.report)
    classes = class_names(b.report) or class_names(a.report)
    la, lb = fleet_latency.latency_by_hardware(a.pk), fleet_latency.latency_by_hardware(b.pk)
    return {
        "a": a,
        "b": b,
        "ra": a.report or {},
        "rb": b.report or {},
        "contract": compare.contract_diff(a.report, b.report),
        "variants": compare.variant_rows(_variants(a), _variants(b)),
        "figures": charts.overlay_figures(a.reference_profile, b.reference_profile, (a.label, b.label), names, classes),
        "health": {"a": fleet_latency.health(a.pk), "b": fleet_latency.health(b.pk)},
        "hardware": compare.hardware_rows(la, lb),
        "hardware_hidden": {"a": la["hidden"], "b": lb["hidden"]},
        "k": la["k"],
        "days": la["days"],
    }
