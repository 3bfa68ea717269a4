"""Checks of the numbers a device sends (pure: no Django, no database).

Ingest uses them to refuse a report (the ``code`` becomes the per-report rejection); the jobs use the
very same checks on stored rows, so a row that could not have passed ingest (written before a check
existed, by hand, or by a bug) is quarantined instead of failing the job for everyone.

Bounds: a count in one report is a true count in ``[0, M]`` plus the device's noise, where ``M`` is
the most inferences a window can hold (``max_per_second × window_seconds``). Noise beyond
``NOISE_BOUND_SDS`` standard deviations does not happen to an honest device (Laplace: e^-42 per
count; Gaussian: far less), so anything outside ``[-slack, M + slack]`` is refused. This bounds what
one report can move in a sum; it does not make a lying device's in-range numbers true (robust
aggregation across groups is the secure-aggregation work's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

NOISE_BOUND_SDS = 30.0


class Problem(Exception):
    """One report (or stored row) that must not be counted, with a code and a message for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Shape:
    """How many counts each histogram of a version's reports has (from the manifest's bins)."""

    latency: int
    outputs: int
    features: Mapping[str, int]


def count_bounds(max_per_second: float, window_seconds: int, noise_variance: float) -> tuple[float, float]:
    """``(lo, hi)`` any count of one report must lie in (see the module docstring)."""
    slack = NOISE_BOUND_SDS * math.sqrt(max(noise_variance, 0.0))
    return -slack, float(max_per_second) * float(window_seconds) + slack


def check_window(
    start: datetime, end: datetime, window_seconds: int, now: datetime, skew_seconds: int, max_age_seconds: int
) -> None:
    """The window must be one cell of the device's grid, and close to now.

    Grid: ``start`` is a whole multiple of ``window_seconds`` since the Unix epoch (UTC) and the window
    is exactly ``window_seconds`` long, so a device has one possible window per period and cannot pick
    its own boundaries (the first inference's microsecond used to be ``window_start``). Close to now:
    it ends at most ``skew_seconds`` after the server's clock and starts at most ``max_age_seconds``
    before it.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise Problem("bad_window", "window times need a UTC offset")
    epoch_us = (start.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    if epoch_us % (window_seconds * 1_000_000):
        raise Problem(
            "bad_window",
            f"window_start must lie on the window grid: a multiple of window_seconds ({window_seconds} s) "
            "since 1970-01-01T00:00:00Z",
        )
    if end - start != timedelta(seconds=window_seconds):
        raise Problem("bad_window", f"a window lasts exactly window_seconds ({window_seconds} s)")
    if end > now + timedelta(seconds=skew_seconds):
        raise Problem(
            "bad_window", f"the window ends in the future (more than {skew_seconds} s after the server's clock)"
        )
    if start < now - timedelta(seconds=max_age_seconds):
        raise Problem("bad_window", f"the window is older than {max_age_seconds // 3600} h and no longer taken")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_count(value: Any, name: str, lo: float, hi: float) -> None:
    if not _is_number(value):
        raise Problem("invalid", f"{name} is not a number")
    if not math.isfinite(value):
        raise Problem("invalid", f"{name} is not a finite number")
    if not lo <= value <= hi:
        raise Problem("out_of_range", f"{name}: {value:g} is outside what one window can hold [{lo:g}, {hi:g}]")


def check_histogram(counts: Any, n: int, name: str, lo: float, hi: float) -> None:
    if not isinstance(counts, list):
        raise Problem("invalid", f"{name} is not a list of counts")
    if len(counts) != n:
        raise Problem("bins_mismatch", f"{name} has {len(counts)} counts; the manifest's edges give {n}")
    try:  # the common case in C loops: fsum is NaN/inf when any count is (and refuses non-numbers)
        if math.isfinite(math.fsum(counts)) and (not counts or (min(counts) >= lo and max(counts) <= hi)):
            return
    except (TypeError, ValueError, OverflowError):
        pass
    for i, c in enumerate(counts):  # find the culprit for the message
        if not _is_number(c) or not math.isfinite(c):
            raise Problem("invalid", f"{name}[{i}] is not a finite number")
        if not lo <= c <= hi:
            raise Problem("out_of_range", f"{name}[{i}]: {c:g} is outside what one window can hold [{lo:g}, {hi:g}]")


def check_shape(latency: Any, outputs: Any, features: Any, shape: Shape, latency_name: str = "latency") -> None:
    """Histogram lengths and feature names as the manifest gave them (no bounds yet)."""
    for counts, n, name in ((latency, shape.latency, latency_name), (outputs, shape.outputs, "outputs")):
        if not isinstance(counts, list):
            raise Problem("invalid", f"{name} is not a list of counts")
        if len(counts) != n:
            raise Problem("bins_mismatch", f"{name} has {len(counts)} counts; the manifest's edges give {n}")
    if not isinstance(features, Mapping):
        raise Problem("invalid", "features is not a mapping of feature name to counts")
    if set(features) != set(shape.features):
        missing = sorted(set(shape.features) - set(features))
        extra = sorted(set(features) - set(shape.features))
        raise Problem("bins_mismatch", f"features differ from the manifest (missing {missing}, unknown {extra[:20]})")
    for name, n in shape.features.items():
        counts = features[name]
        if not isinstance(counts, list):
            raise Problem("invalid", f"features.{name} is not a list of counts")
        if len(counts) != n:
            raise Problem("bins_mismatch", f"features.{name} has {len(counts)} counts; the manifest's edges give {n}")


def check_values(
    inference_count: Any,
    error_count: Any,
    latency: list,
    outputs: list,
    features: Mapping[str, list],
    lo: float,
    hi: float,
    latency_name: str = "latency",
) -> None:
    """Every number finite and within ``[lo, hi]`` (run after ``check_shape``)."""
    check_count(inference_count, "inference_count", lo, hi)
    check_count(error_count, "error_count", lo, hi)
    check_histogram(latency, len(latency), latency_name, lo, hi)
    check_histogram(outputs, len(outputs), "outputs", lo, hi)
    for name, counts in features.items():
        check_histogram(counts, len(counts), f"features.{name}", lo, hi)
