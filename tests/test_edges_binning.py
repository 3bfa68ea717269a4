"""Edges of the histogram conventions shared by server, manifest and agent (telemetry/binning.py).

A value on an edge counts in the bin that edge opens, values beyond the ends land in the end bins,
and the default edges are policy every device's report is binned with (docs/mutation.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from telemetry import binning


def test_default_edges_are_pinned() -> None:
    """Changing one changes every report's bins: the manifest, the agent and the stored rows disagree."""
    assert binning.LATENCY_EDGES_MS == [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    assert binning.DEFAULT_FEATURE_EDGES == [
        -1000, -100, -10, -5, -3, -2, -1, -0.5, 0, 0.5, 1, 2, 3, 5, 10, 100, 1000,
    ]  # fmt: skip
    assert binning.MAX_CLASSES == 32
    assert binning.DEFAULT_SCORE_EDGES == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_a_value_on_an_edge_counts_in_the_bin_it_opens_and_the_ends_clip() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    got = binning.histogram(np.array([-5, 0, 0.999, 1, 2, 2.5, 3, 99]), edges)
    assert got.tolist() == [3.0, 1.0, 4.0]
    assert got.dtype == np.float64


def test_an_empty_sample_has_every_bin_zero_and_shapes_are_flattened() -> None:
    assert binning.histogram(np.array([]), [0, 1, 2]).tolist() == [0.0, 0.0]
    assert binning.histogram(np.array([[0.5, 1.5], [1.5, 9]]), [0, 1, 2]).tolist() == [1.0, 3.0]


def test_quantile_edges_of_a_uniform_sample_hold_equal_mass() -> None:
    v = np.arange(101, dtype=float)
    edges = binning.quantile_edges(v, bins=4)
    assert edges == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert all(type(e) is float for e in edges)
    assert len(binning.quantile_edges(np.arange(1000.0))) == 21  # 20 bins by default


def test_quantile_edges_drop_non_finite_values_and_collapse_ties() -> None:
    assert binning.quantile_edges(np.array([0, 0, 0, 1, 1, np.nan, np.inf]), bins=2) == [0.0, 1.0]


@pytest.mark.parametrize("c", [0.0, 7.0, -3.5])
def test_a_constant_feature_gets_a_band_of_one_around_it(c: float) -> None:
    assert binning.quantile_edges(np.full(10, c)) == [c - 0.5, c + 0.5]


def test_no_finite_value_gives_the_default_edges_as_a_copy() -> None:
    for v in (np.array([]), np.array([np.nan, -np.inf])):
        edges = binning.quantile_edges(v)
        assert edges == binning.DEFAULT_FEATURE_EDGES and edges is not binning.DEFAULT_FEATURE_EDGES


def test_numbers_given_as_text_bin_and_quantile_like_the_numbers() -> None:
    """Both functions convert to float64 first, so a column read from a CSV file needs no parsing step."""
    # compared as text "10" < "2" and "3" > "20": only numbers give these bins
    assert binning.histogram(["10", "3", "-3"], [0, 2, 20]).tolist() == [1.0, 2.0]
    assert binning.histogram([10, 3, -3], ["0", "2", "20"]).tolist() == [1.0, 2.0]
    assert binning.quantile_edges(np.array(["1", "2", "3", "4", "nan"]), bins=2) == [1.0, 2.5, 4.0]
