"""Edges of the device-vector encoding: largest-remainder rounding and its ties, fractions at 0, 1 and
undefined, the exact sensitivities of both layouts, the plausibility bounds at equality, and a whole
window's two vectors worked out by hand.

Written from mutation testing (`make mutation`): each test pins a behaviour a one-token change to
``agent/encoding.py`` would otherwise alter silently. Pure: no database.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from agent import encoding as enc
from agent.encoding import COUNT, FRACTION, HISTOGRAM, Block, Layout


def test_constants() -> None:
    assert (enc.HISTOGRAM, enc.FRACTION, enc.COUNT) == ("histogram", "fraction", "count")
    assert (enc.REPLACE, enc.ADD_REMOVE, enc.DEFAULT_RESOLUTION_BITS) == ("replace", "add_remove", 10)


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ((Block("a", HISTOGRAM, 2, 4), Block("a", COUNT, 1, 1)), "block names must be distinct"),
        ((Block("a", HISTOGRAM, 0, 4),), "bad block Block(name='a', kind='histogram', size=0, scale=4)"),
        ((Block("a", HISTOGRAM, 2, 0),), "bad block Block(name='a', kind='histogram', size=2, scale=0)"),
        ((Block("a", "vector", 2, 4),), "bad block Block(name='a', kind='vector', size=2, scale=4)"),
        ((Block("f", FRACTION, 2, 4),), "fraction block 'f' must have size 1"),
        ((Block("c", COUNT, 2, 1),), "count block 'c' must have size 1"),
    ],
)
def test_layout_refusals(blocks: tuple, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Layout(blocks)
    assert str(info.value) == message


def test_smallest_blocks_are_accepted() -> None:
    layout = Layout((Block("h", HISTOGRAM, 1, 1), Block("f", FRACTION, 1, 1), Block("c", COUNT, 1, 1)))
    assert layout.slices() == {"h": slice(0, 1), "f": slice(1, 2), "c": slice(2, 3)}


def test_layouts() -> None:
    drift = enc.drift_layout([("a", 3), ("b", 2)], 2, 4)
    assert drift.blocks == (
        Block("feature:a", HISTOGRAM, 3, 16),
        Block("feature:b", HISTOGRAM, 2, 16),
        Block("output", HISTOGRAM, 3, 16),
        Block("participation", COUNT, 1, 1),
    )
    assert drift.slices() == {
        "feature:a": slice(0, 3),
        "feature:b": slice(3, 5),
        "output": slice(5, 8),
        "participation": slice(8, 9),
    }
    assert drift.block("output") == Block("output", HISTOGRAM, 3, 16)
    assert enc.drift_layout([("a", 3)], 1).block("output").scale == 1024
    assert enc.health_layout(4, 3).blocks == (
        Block("latency", HISTOGRAM, 4, 8),
        Block("error_fraction", FRACTION, 1, 8),
        Block("participation", COUNT, 1, 1),
    )
    assert enc.health_layout(4).block("latency").scale == 1024


@pytest.mark.parametrize(
    ("counts", "mass", "expected"),
    [
        ([1, 1, 1], 10, [4, 3, 3]),
        ([0, 0, 0, 0], 10, [3, 3, 2, 2]),
        ([1, 2, 7], 4, [0, 1, 3]),
        ([1, 2], 3, [1, 2]),
        ([-1, np.nan, np.inf, 2], 8, [0, 0, 0, 8]),
        ([np.nan, -np.inf], 5, [3, 2]),
        ([0.2, 0.3], 1, [0, 1]),
        ([5], 7, [7]),
    ],
)
def test_normalise_largest_remainder_with_ties_by_index(counts: list, mass: int, expected: list) -> None:
    out = enc.normalise(counts, mass)
    assert out.tolist() == expected and out.dtype == np.int64


@pytest.mark.parametrize(
    ("num", "den", "scale", "value"),
    [
        (1, 3, 1024, 341),
        (2, 3, 1024, 683),
        (5, 1, 1024, 1024),
        (-1, 1, 1024, 0),
        (1, 0, 1024, 0),
        (1, -2, 1024, 0),
        (float("nan"), 1, 1024, 0),
        (1, float("inf"), 1024, 0),
        (float("inf"), 1, 1024, 0),
        (0, 5, 1024, 0),
        (1, 1, 7, 7),
    ],
)
def test_fixed_fraction(num: float, den: float, scale: int, value: int) -> None:
    assert enc.fixed_fraction(num, den, scale) == value


def test_encode_blocks() -> None:
    layout = enc.health_layout(3, 3)
    assert enc.encode(layout, False, {"latency": [1, 2, 3]}).tolist() == [0] * 5
    assert enc.encode(layout, False, {}).dtype == np.int64
    assert enc.encode(layout, True, {}).dtype == np.int64
    assert enc.encode(layout, True, {"latency": [0, 0, 4]}, {"error_fraction": (1, 2)}).tolist() == [0, 0, 8, 4, 1]
    # a missing histogram of an active device is spread uniformly; a missing fraction is 0
    assert enc.encode(layout, True, {}).tolist() == [3, 3, 2, 0, 1]
    with pytest.raises(ValueError) as info:
        enc.encode(layout, True, {"latency": [1, 2]})
    assert str(info.value) == "latency has 2 bins, the layout says 3"


@pytest.mark.parametrize(
    ("layout", "replace", "add_remove"),
    [
        (enc.drift_layout([("a", 5)], 2, 10), (4096, 4 * 1024**2), (2049, 2 * 1024**2 + 1)),
        (enc.health_layout(4, 10), (3072, 3 * 1024**2), (2049, 2 * 1024**2 + 1)),
        (Layout((Block("h", HISTOGRAM, 1, 8),)), (8, 64), (8, 64)),
        (Layout((Block("c", COUNT, 1, 3),)), (3, 9), (3, 9)),
    ],
)
def test_exact_sensitivities(layout: Layout, replace: tuple[int, int], add_remove: tuple[int, int]) -> None:
    r, a = enc.sensitivity(layout), enc.sensitivity(layout, enc.ADD_REMOVE)
    assert (r.l1, r.l2_squared) == replace
    assert (a.l1, a.l2_squared) == add_remove
    assert enc.sensitivity(layout, enc.REPLACE) == r
    assert r.l2 == pytest.approx(replace[1] ** 0.5)


def test_block_changes() -> None:
    h2, h1 = Block("h", HISTOGRAM, 2, 5), Block("g", HISTOGRAM, 1, 5)
    assert enc._block_change(h2, True) == (10, 50) and enc._block_change(h2, False) == (5, 25)
    assert enc._block_change(h1, True) == (0, 0) and enc._block_change(h1, False) == (5, 25)
    f = Block("f", FRACTION, 1, 5)
    assert enc._block_change(f, True) == (5, 25) == enc._block_change(f, False)
    c = Block("c", COUNT, 1, 1)
    assert enc._block_change(c, True) == (0, 0) and enc._block_change(c, False) == (1, 1)


def test_unknown_relation_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        enc.sensitivity(enc.health_layout(2), "add")
    assert str(info.value) == "unknown relation 'add'"


def test_decode_splits_by_block() -> None:
    layout = enc.health_layout(2, 3)
    parts = enc.decode(layout, np.array([1, -2, 3, 4, 5]))
    assert {k: v.tolist() for k, v in parts.items()} == {
        "latency": [1, -2],
        "error_fraction": [3],
        "participation": [4],
    }


HEALTH = enc.health_layout(2, 3)  # latency mass 8 per active device, fraction 0..8, participation 1


@pytest.mark.parametrize(
    ("total", "survivors", "bound", "why"),
    [
        ([8, 8, 16, 2], 3, 0, None),  # two active devices, both always failing
        ([0, 0, 0, 0], 3, 0, None),  # nobody active
        ([24, 0, 0, 3], 3, 0, None),  # all three active
        ([-1, 17, 0, 2], 3, 1, None),  # a coordinate exactly at −bound
        ([-2, 17, 0, 2], 3, 1, "latency: a coordinate below −1, which no honest group can produce"),
        ([8, 8, 0, 3], 3, 0, "participation: mass 3 fits no count of active devices among 3"),
        ([16, 16, 0, 4], 3, 0, "latency: mass 32 fits no count of active devices among 3"),
        ([8, 8, 17, 2], 3, 0, "error_fraction: mass 17 fits no count of active devices among 3"),
        ([9, 9, 0, 2], 3, 1, None),  # mass within size × bound of 2 × 8
        ([8, 8, 18, 2], 3, 1, None),  # a fraction's noise widens its interval down, as the others'
        ([8, 8, 20, 2], 3, 1, "error_fraction: mass 20 fits no count of active devices among 3"),
        ([12, 12, 0, 1], 3, 1, "participation: mass 1 fits no count of active devices among 3"),
    ],
)
def test_plausibility_bounds(total: list[int], survivors: int, bound: int, why: str | None) -> None:
    assert enc.implausible(HEALTH, np.array(total), survivors, bound) == why


def test_plausibility_reads_unsigned_input_as_signed() -> None:
    """A sum handed over as uint64 ring words is read as signed 64-bit: −3 stays −3."""
    total = np.array([-3, 19, 0, 2], dtype=np.int64).astype(np.uint64)
    assert enc.implausible(HEALTH, total, 3, 1) == "latency: a coordinate below −1, which no honest group can produce"


def _window(**changes: object) -> SimpleNamespace:
    base = {
        "features": [("x", [0.0, 1.0, 2.0, 3.0])],
        "feature_counts": {"x": [1, 1, 2]},
        "outputs": [3.0, 1.0],
        "inferences": 10,
        "errors": 2,
        "latency": [5, 3, 1, 1],
    }
    return SimpleNamespace(**{**base, **changes})


def test_window_vectors_worked_by_hand() -> None:
    vectors = enc.window_vectors(_window(), resolution_bits=3)
    drift_layout, drift = vectors["drift"]
    assert drift_layout == enc.drift_layout([("x", 3)], 2, 3)
    # features [1,1,2] → 8 units: [2,2,4]; outputs: 8 ok rows as 3:1 → [6,2] and 2 failed → [6,2,2] → [5,2,1]
    assert drift.tolist() == [2, 2, 4, 5, 2, 1, 1]
    health_layout, health = vectors["health"]
    assert health_layout == enc.health_layout(4, 3)
    # latency [5,3,1,1] → [4,2,1,1]; error fraction 2/10 of 8 → 2; participation 1
    assert health.tolist() == [4, 2, 1, 1, 2, 1]
    assert enc.window_vectors(_window()).keys() == {"drift", "health"}
    assert enc.window_vectors(_window())["drift"][0].block("output").scale == 1024


def test_window_vectors_with_one_inference_and_a_single_output() -> None:
    one = enc.window_vectors(_window(inferences=1, errors=0, outputs=[1.0, 0.0]), resolution_bits=3)
    assert one["drift"][1].tolist()[3:] == [8, 0, 0, 1]  # active: one row, its output in the first bin
    assert one["health"][1].tolist()[4:] == [0, 1]


def test_window_vectors_when_every_row_failed_or_none_ran() -> None:
    failed = enc.window_vectors(_window(outputs=[0.0, 0.0], errors=10), resolution_bits=3)["drift"][1]
    assert failed.tolist()[3:] == [0, 0, 8, 1]
    more_errors = enc.window_vectors(_window(errors=12), resolution_bits=3)["drift"][1]
    assert more_errors.tolist()[3:] == [0, 0, 8, 1]
    idle = enc.window_vectors(_window(inferences=0, errors=0), resolution_bits=3)
    assert idle["drift"][1].tolist() == [0] * 7 and idle["health"][1].tolist() == [0] * 6
