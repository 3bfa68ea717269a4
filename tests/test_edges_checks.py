"""Edges of the checks of a device's numbers (telemetry/checks.py), pure: no database.

A count exactly at a bound is inside, the window grid and its age are judged to the second, and each
refusal carries the code ingest turns into the per-report rejection (docs/mutation.md).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from telemetry import checks
from telemetry.checks import Problem, Shape

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def refused(fn: object, *args: object, **kwargs: object) -> tuple[str, str]:
    with pytest.raises(Problem) as e:
        fn(*args, **kwargs)  # type: ignore[operator]
    assert str(e.value) == e.value.message
    return e.value.code, e.value.message


def test_the_noise_bound_is_pinned() -> None:
    """30 standard deviations: wider lets a liar move a sum further, narrower refuses honest noise."""
    assert checks.NOISE_BOUND_SDS == 30.0


@pytest.mark.parametrize(
    ("rate", "seconds", "variance", "bounds"),
    [
        (10, 60, 0.0, (0.0, 600.0)),
        (10, 60, 4.0, (-60.0, 660.0)),
        (0.5, 3, 1.0, (-30.0, 31.5)),
        (10, 60, -4.0, (0.0, 600.0)),  # a negative variance is no noise, not an error
    ],
)
def test_count_bounds(rate: float, seconds: int, variance: float, bounds: tuple[float, float]) -> None:
    assert checks.count_bounds(rate, seconds, variance) == bounds
    assert type(checks.count_bounds(rate, seconds, variance)[1]) is float


# --- the window ------------------------------------------------------------------------------------


def window(start: datetime, seconds: int = 300, *, now: datetime = NOW, skew: int = 60, max_age: int = 86400) -> None:
    checks.check_window(start, start + timedelta(seconds=seconds), 300, now, skew, max_age)


def test_a_window_on_the_grid_ending_now_is_taken() -> None:
    window(NOW - timedelta(seconds=300))


def test_window_times_need_an_offset() -> None:
    naive = datetime(2026, 11, 25, 11, 55)
    assert refused(checks.check_window, naive, NOW, 300, NOW, 60, 86400) == (
        "bad_window",
        "window times need a UTC offset",
    )
    assert refused(checks.check_window, NOW, naive, 300, NOW, 60, 86400)[0] == "bad_window"


def test_a_window_off_the_grid_by_a_microsecond_is_refused() -> None:
    for off in (timedelta(microseconds=1), timedelta(seconds=1), timedelta(seconds=150)):
        code, message = refused(window, NOW - timedelta(seconds=300) + off)
        assert code == "bad_window" and message.startswith("window_start must lie on the window grid")
        assert "(300 s)" in message


def test_the_grid_is_counted_in_utc_whatever_the_offset() -> None:
    local = (NOW - timedelta(seconds=300)).astimezone(timezone(timedelta(hours=5, minutes=30)))
    window(local)
    odd = (NOW - timedelta(seconds=300)).astimezone(timezone(timedelta(minutes=7)))
    window(odd)


def test_a_window_must_last_exactly_window_seconds() -> None:
    start = NOW - timedelta(seconds=600)
    for seconds in (299, 301, 600):
        assert refused(window, start, seconds) == ("bad_window", "a window lasts exactly window_seconds (300 s)")


def test_a_window_ending_exactly_at_the_skew_allowance_is_taken() -> None:
    earlier = NOW - timedelta(seconds=60)
    window(NOW - timedelta(seconds=300), now=earlier, skew=60)  # ends 60 s after now: allowed
    code, message = refused(window, NOW - timedelta(seconds=300), now=earlier, skew=59)
    assert code == "bad_window"
    assert message == "the window ends in the future (more than 59 s after the server's clock)"


def test_a_window_starting_exactly_max_age_ago_is_taken() -> None:
    window(NOW - timedelta(seconds=7200), max_age=7200)
    code, message = refused(window, NOW - timedelta(seconds=7200), max_age=7199)
    assert (code, message) == ("bad_window", "the window is older than 1 h and no longer taken")
    assert refused(window, NOW - timedelta(days=3), max_age=86400)[1] == (
        "the window is older than 24 h and no longer taken"
    )


# --- counts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -10.0, 100, 100.0, 5, 2.5])
def test_a_count_within_the_bounds_inclusive_is_taken(value: float) -> None:
    checks.check_count(value, "n", -10.0, 100.0)


@pytest.mark.parametrize(("value", "code"), [(-10.001, "out_of_range"), (100.5, "out_of_range"), (101, "out_of_range")])
def test_a_count_beyond_a_bound_is_out_of_range(value: float, code: str) -> None:
    got, message = refused(checks.check_count, value, "error_count", -10.0, 100.0)
    assert got == code
    assert message == f"error_count: {value:g} is outside what one window can hold [-10, 100]"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "n is not a number"),
        (False, "n is not a number"),
        ("1", "n is not a number"),
        (None, "n is not a number"),
        (math.nan, "n is not a finite number"),
        (math.inf, "n is not a finite number"),
        (-math.inf, "n is not a finite number"),
    ],
)
def test_a_count_that_is_no_finite_number_is_invalid(value: object, message: str) -> None:
    assert refused(checks.check_count, value, "n", -1e9, 1e9) == ("invalid", message)


def test_a_histogram_at_its_bounds_and_an_empty_one_are_taken() -> None:
    checks.check_histogram([0, 100.0, -10, 5], 4, "h", -10.0, 100.0)
    checks.check_histogram([], 0, "h", -10.0, 100.0)


def test_a_histogram_of_the_wrong_length_or_kind() -> None:
    assert refused(checks.check_histogram, (1, 2), 2, "h", 0, 9) == ("invalid", "h is not a list of counts")
    assert refused(checks.check_histogram, [1, 2], 3, "h", 0, 9) == (
        "bins_mismatch",
        "h has 2 counts; the manifest's edges give 3",
    )


@pytest.mark.parametrize(
    ("counts", "code", "message"),
    [
        ([1, 2, 101], "out_of_range", "h[2]: 101 is outside what one window can hold [-10, 100]"),
        ([-10.5, 2, 3], "out_of_range", "h[0]: -10.5 is outside what one window can hold [-10, 100]"),
        ([1, math.nan, 3], "invalid", "h[1] is not a finite number"),
        ([1, 2, math.inf], "invalid", "h[2] is not a finite number"),
        ([1, "2", 3], "invalid", "h[1] is not a finite number"),
        ([1, None, 3], "invalid", "h[1] is not a finite number"),
        ([100, -10, math.nan], "invalid", "h[2] is not a finite number"),  # both bounds pass the loop too
        ([1e308, 1e308, 200], "out_of_range", "h[0]: 1e+308 is outside what one window can hold [-10, 100]"),
    ],
)
def test_a_histogram_names_its_first_bad_count(counts: list, code: str, message: str) -> None:
    assert refused(checks.check_histogram, counts, 3, "h", -10.0, 100.0) == (code, message)


# --- shapes and values -----------------------------------------------------------------------------

SHAPE = Shape(latency=3, outputs=2, features={"a": 2, "b": 1})


def test_the_manifests_shape_is_taken() -> None:
    checks.check_shape([0, 0, 0], [0, 0], {"a": [0, 0], "b": [0]}, SHAPE)


@pytest.mark.parametrize(
    ("latency", "outputs", "features", "code", "message"),
    [
        ("x", [0, 0], {}, "invalid", "latency is not a list of counts"),
        ([0, 0], [0, 0], {}, "bins_mismatch", "latency has 2 counts; the manifest's edges give 3"),
        ([0, 0, 0], None, {}, "invalid", "outputs is not a list of counts"),
        ([0, 0, 0], [0], {}, "bins_mismatch", "outputs has 1 counts; the manifest's edges give 2"),
        ([0, 0, 0], [0, 0], [["a", [0, 0]]], "invalid", "features is not a mapping of feature name to counts"),
        (
            [0, 0, 0],
            [0, 0],
            {"a": [0, 0], "c": [0]},
            "bins_mismatch",
            "features differ from the manifest (missing ['b'], unknown ['c'])",
        ),
        ([0, 0, 0], [0, 0], {"a": "00", "b": [0]}, "invalid", "features.a is not a list of counts"),
        (
            [0, 0, 0],
            [0, 0],
            {"a": [0, 0], "b": [0, 0]},
            "bins_mismatch",
            "features.b has 2 counts; the manifest's edges give 1",
        ),
    ],
)
def test_a_shape_unlike_the_manifests_is_refused(
    latency: object, outputs: object, features: object, code: str, message: str
) -> None:
    assert refused(checks.check_shape, latency, outputs, features, SHAPE) == (code, message)


def test_the_latency_histogram_can_carry_another_name() -> None:
    assert refused(checks.check_shape, [0], [0, 0], {}, SHAPE, "latency_ms")[1] == (
        "latency_ms has 1 counts; the manifest's edges give 3"
    )
    code, message = refused(checks.check_values, 1, 0, [0, 200], [0], {}, 0.0, 100.0, "latency_ms")
    assert (code, message) == ("out_of_range", "latency_ms[1]: 200 is outside what one window can hold [0, 100]")


def test_unknown_features_are_named_at_most_twenty() -> None:
    extra = {f"x{i:02d}": [0] for i in range(30)}
    message = refused(checks.check_shape, [0, 0, 0], [0, 0], {"a": [0, 0], "b": [0], **extra}, SHAPE)[1]
    assert message == f"features differ from the manifest (missing [], unknown {sorted(extra)[:20]})"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((101, 0, [0], [0], {}), "inference_count: 101 is outside what one window can hold [0, 100]"),
        ((1, -1, [0], [0], {}), "error_count: -1 is outside what one window can hold [0, 100]"),
        ((1, 0, [0], [101], {}), "outputs[0]: 101 is outside what one window can hold [0, 100]"),
        ((1, 0, [0], [0], {"f": [0, 101]}), "features.f[1]: 101 is outside what one window can hold [0, 100]"),
        ((1, 0, [101], [0], {}), "latency[0]: 101 is outside what one window can hold [0, 100]"),
    ],
)
def test_every_number_of_a_report_is_bounded(args: tuple, message: str) -> None:
    assert refused(checks.check_values, *args, 0.0, 100.0) == ("out_of_range", message)
    checks.check_values(100, 0, [100], [0], {"f": [0, 100]}, 0.0, 100.0)


def test_a_grid_that_does_not_divide_a_day_is_counted_from_the_epoch() -> None:
    """Seven-second windows: counted from 1970-01-01T00:00:00Z, not from any later midnight."""
    ts = (int(NOW.timestamp()) // 7) * 7
    start = datetime.fromtimestamp(ts, UTC)
    checks.check_window(start, start + timedelta(seconds=7), 7, NOW, 60, 86400)
    with pytest.raises(Problem) as e:
        checks.check_window(start + timedelta(seconds=1), start + timedelta(seconds=8), 7, NOW, 60, 86400)
    assert e.value.message == (
        "window_start must lie on the window grid: a multiple of window_seconds (7 s) since 1970-01-01T00:00:00Z"
    )


def test_the_grid_is_exact_to_the_microsecond_centuries_from_now() -> None:
    """Microseconds since 1970 pass 2**53 in 2255: counted in integers, a microsecond off is still off."""
    far = datetime(2300, 1, 1, tzinfo=UTC)
    checks.check_window(far, far + timedelta(seconds=300), 300, far, 600, 600)
    with pytest.raises(Problem):
        off = far + timedelta(microseconds=1)
        checks.check_window(off, off + timedelta(seconds=300), 300, far, 600, 600)
