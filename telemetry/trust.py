"""What the server assigned and what a report may hold, for ingest (refuse) and the jobs (quarantine).

The privacy parameters are the server's: the manifest tells devices ``EDGEFLEET_DP_MECHANISM`` and
``EDGEFLEET_DP_EPSILON``; ingest takes a report only when it carries exactly those, and registers
the pair as a ``PrivacyAssignment``. Rollups and gates take each report's noise from its registered
assignment and the version's bins, never from a number a device chose; a stored row whose pair was
never assigned is quarantined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from ota.models import ModelVersion
from telemetry import checks, privacy
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.models import PrivacyAssignment
from telemetry.profiles import expected_bins, output_bin_count

MAX_WINDOW_SECONDS = 86400


def window_seconds() -> int:
    """The window length the manifest gives devices: reports must cover exactly one."""
    return int(getattr(settings, "EDGEFLEET_TELEMETRY_WINDOW", 300))


def clock_skew_seconds() -> int:
    return int(getattr(settings, "EDGEFLEET_TELEMETRY_CLOCK_SKEW_SECONDS", 120))


def max_age_seconds() -> int:
    return int(getattr(settings, "EDGEFLEET_TELEMETRY_MAX_AGE_SECONDS", 48 * 3600))


def max_inferences_per_second() -> float:
    return float(getattr(settings, "EDGEFLEET_TELEMETRY_MAX_INFERENCES_PER_SECOND", 10_000))


def assigned() -> tuple[str, float]:
    """The (mechanism, epsilon) the manifest tells devices now."""
    return str(getattr(settings, "EDGEFLEET_DP_MECHANISM", "laplace")), float(
        getattr(settings, "EDGEFLEET_DP_EPSILON", 1.0)
    )


def assignment_problem(mechanism: str, epsilon: float) -> str | None:
    """Why a (mechanism, epsilon) pair cannot be used to compute noise, or None."""
    if mechanism not in (*privacy.MECHANISMS, "none"):
        return f"unknown mechanism {mechanism!r}"
    if not (isinstance(epsilon, float | int) and math.isfinite(epsilon) and 1e-6 <= epsilon <= 1e6):
        return f"epsilon {epsilon!r} is not a usable privacy parameter"
    return None


def register_current() -> tuple[str, float]:
    """Record the pair being assigned now (one indexed lookup; an insert the first time only)."""
    mech, eps = assigned()
    PrivacyAssignment.objects.get_or_create(mechanism=mech, epsilon=eps)
    return mech, eps


def known_assignments() -> set[tuple[str, float]]:
    """Every pair the server has assigned (and the current one), minus any unusable one."""
    pairs = set(PrivacyAssignment.objects.values_list("mechanism", "epsilon")) | {assigned()}
    return {p for p in pairs if assignment_problem(*p) is None}


def shape_of(version: ModelVersion) -> checks.Shape:
    bins = expected_bins(version)
    return checks.Shape(
        latency=len(LATENCY_EDGES_MS) - 1,
        outputs=output_bin_count(bins["output"]),
        features={f["name"]: len(f["edges"]) - 1 for f in bins["features"]},
    )


def noise_variance(mechanism: str, epsilon: float, shape: checks.Shape) -> float:
    """Noise variance on each count of one report of this shape under a server assignment.

    The one place that maps an assignment to noise: the layout is the version's (the manifest's
    bins), the sensitivity ``telemetry.privacy.report_sensitivity`` of it.
    """
    return privacy.noise_variance(mechanism, epsilon, {"features": list(shape.features)})


def bounds(mechanism: str, epsilon: float, shape: checks.Shape) -> tuple[float, float]:
    return checks.count_bounds(max_inferences_per_second(), window_seconds(), noise_variance(mechanism, epsilon, shape))


@dataclass
class _Known:
    shape: checks.Shape
    by_pair: dict[tuple, tuple[float, float, float]]  # (pair, seconds) -> (noise variance, lo, hi)


class RowJudge:
    """Judges stored report rows for a job: ``judge(...)`` → ``(problem or None, noise variance)``.

    Caches per version and assignment, so a job over a million rows looks each up once.
    """

    def __init__(self) -> None:
        self.pairs = known_assignments()
        self.versions: dict[int, _Known | str] = {}

    def _version(self, version_id: int) -> _Known | str:
        if version_id not in self.versions:
            try:
                shape = shape_of(ModelVersion.objects.get(pk=version_id))
                self.versions[version_id] = _Known(shape, {})
            except Exception as e:  # an unreadable version profile: its rows cannot be judged
                self.versions[version_id] = f"the version's bins cannot be read ({type(e).__name__}: {e})"
        return self.versions[version_id]

    def judge(
        self, version_id: int, seconds: float, inference_count: Any, error_count: Any, latency: Any, outputs: Any,
        features: Any, mechanism: Any, epsilon: Any,
    ) -> tuple[str | None, float]:  # fmt: skip
        """``seconds``: the row's window length (checked at ingest; it sets how many inferences fit)."""
        known = self._version(version_id)
        if isinstance(known, str):
            return known, 0.0
        pair = (mechanism, epsilon)
        if pair not in self.pairs:
            return (
                f"privacy parameters ({mechanism}, ε={epsilon!r}) were never assigned by the server; "
                "its noise is unknown",
                0.0,
            )
        if not 0 < seconds <= MAX_WINDOW_SECONDS:
            return f"the window lasts {seconds:g} s, not a telemetry window", 0.0
        if (pair, seconds) not in known.by_pair:
            var = noise_variance(mechanism, float(epsilon), known.shape)
            lo, hi = checks.count_bounds(max_inferences_per_second(), int(seconds), var)
            known.by_pair[(pair, seconds)] = (var, lo, hi)
        var, lo, hi = known.by_pair[(pair, seconds)]
        try:
            checks.check_shape(latency, outputs, features, known.shape)
            checks.check_values(inference_count, error_count, latency, outputs, features, lo, hi)
        except checks.Problem as p:
            return p.message, var
        return None, var
