"""The pure parts of the compression path: agreement on every output, Pareto front, sparsity, the rule."""

from __future__ import annotations

import numpy as np
import pytest

from ota import agreement, outputs, variant_math
from rollout import variant_rule
from rollout.variant_rule import Figures

# ---------------------------------------------------------------- agreement


def test_a_classifier_is_judged_on_its_probabilities_not_only_its_label() -> None:
    """The bug: labels equal, probabilities moved by 0.0445, and the page said '100 %, 0.0000'."""
    labels = [np.array([0, 1, 2])]
    p32 = [np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])]
    p8 = [p32[0] + np.array([[-0.0445, 0.0445, 0.0], [0, 0, 0], [0, 0, 0]])]
    m = agreement.agreement(["label", "probs"], [[labels[0], p32[0]]], [[labels[0], p8[0]]])
    assert m["outputs"]["label"] == {"kind": "labels", "agreement": 1.0, "compared": 3}
    assert m["outputs"]["probs"]["kind"] == "scores" and m["outputs"]["probs"]["agreement"] == 1.0
    assert m["max_abs_diff"] == pytest.approx(0.0445) and m["mean_abs_diff"] == pytest.approx(0.0445 * 2 / 9)


def test_the_headline_is_the_worst_output() -> None:
    a = [[np.array([0, 1, 1, 0]), np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])]]
    b = [[np.array([0, 1, 1, 1]), np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.6, 0.4]])]]
    m = agreement.agreement(["label", "probs"], a, b)
    assert m["outputs"]["label"]["agreement"] == 0.75 and m["outputs"]["probs"]["agreement"] == 0.75
    b2 = [[np.array([0, 1, 1, 0]), b[0][1]]]
    assert agreement.agreement(["label", "probs"], a, b2)["agreement"] == 0.75  # the probabilities' flip


def test_zipmap_dicts_are_compared_as_class_scores() -> None:
    a = [[[{0: 0.7, 1: 0.3}, {0: 0.2, 1: 0.8}]]]
    b = [[[{0: 0.6, 1: 0.4}, {0: 0.55, 1: 0.45}]]]
    m = agreement.agreement(["p"], a, b)["outputs"]["p"]
    assert m["kind"] == "scores" and m["agreement"] == 0.5 and m["max_abs_diff"] == pytest.approx(0.35)


def test_regressors_get_relative_error_and_the_one_percent_edge() -> None:
    a = [[np.array([[100.0], [200.0]])]]
    b = [[np.array([[101.0], [202.0 + 1e-6]])]]  # within rtol = atol = 1 % of the variant value
    m = agreement.agreement(["y"], a, b)["outputs"]["y"]
    assert m["kind"] == "values" and m["agreement"] == 1.0
    assert m["rel_error"] == pytest.approx((1 + 2) / 300, rel=1e-5)
    far = agreement.agreement(["y"], a, [[np.array([[102.5], [200.0]])]])["outputs"]["y"]
    assert far["agreement"] == 0.5


def test_mismatched_shapes_empty_and_uncomparable_outputs() -> None:
    assert agreement.compare_output(np.zeros((2, 3)), np.zeros((2, 2)))["agreement"] == 0.0
    assert agreement.compare_output(np.zeros((0, 3)), np.zeros((0, 3)))["agreement"] is None
    assert agreement.compare_output(None, np.zeros(1))["kind"] == "not compared"
    m = agreement.agreement(["s"], [[[np.zeros(2), np.zeros(3)]]], [[[np.zeros(2), np.zeros(3)]]])
    assert m["agreement"] is None and m["outputs"]["s"]["kind"] == "not compared"


def test_as_array_and_describe() -> None:
    assert outputs.as_array([{1: 0.5, 0: 0.5}]).tolist() == [[0.5, 0.5]]
    assert outputs.as_array([{0: 1.0}, {1: 1.0}]) is None  # different keys: no honest table
    assert outputs.describe([{0: 1.0}]) == "sequence of 1 map" and outputs.describe(np.zeros((2, 3))) == [2, 3]
    assert outputs.size_of([np.zeros(4), np.zeros(5)])[0] == 9


# ---------------------------------------------------------------- Pareto front and sparsity


def test_pareto_front_keeps_the_non_dominated_and_ties() -> None:
    pts = [
        {"size": 100, "latency": 1.0, "agreement": 1.0},  # fp32: best agreement
        {"size": 30, "latency": 0.8, "agreement": 0.99},  # int8: smallest
        {"size": 30, "latency": 0.8, "agreement": 0.99},  # an equal twin stays too
        {"size": 50, "latency": 0.9, "agreement": 0.98},  # worse than int8 on all three
        {"size": 100, "latency": 1.0, "agreement": None},  # unknown agreement counts as 0
    ]
    assert variant_math.pareto_front(pts) == [True, True, True, False, False]
    assert variant_math.pareto_front([]) == []


def test_sparsity_counts_zeros_of_large_tensors_only() -> None:
    w = np.ones((64, 32), np.float32)
    w[:16] = 0
    s = variant_math.sparsity([("w", w), ("bias", np.zeros(10, np.float32))], min_elements=1024)
    assert s["zero_share"] == 0.25 and [t["name"] for t in s["tensors"]] == ["w"]
    at_edge = variant_math.sparsity([("b", np.zeros(1024, np.float32))], min_elements=1024)
    assert at_edge["zero_share"] == 1.0
    assert variant_math.sparsity([])["zero_share"] is None


# ---------------------------------------------------------------- the rule


BUILDS = {
    "fp32": Figures(1000, 1.0, 1.0),
    "int8": Figures(300, 0.9, 0.995),
    "int8_static": Figures(280, 0.7, 0.97),  # smaller but below the agreement floor
    "fp16": Figures(200, 2.0, 1.0),  # smallest, but only for float accelerators
}
SMALL = {"ram_mb": 512, "accelerator": "none"}
BIG = {"ram_mb": 8192, "accelerator": "gpu"}


def test_small_devices_get_the_smallest_eligible_build() -> None:
    assert variant_rule.choose(SMALL, BUILDS)[0] == "int8"
    assert variant_rule.choose({"ram_mb": 512, "accelerator": "gpu"}, BUILDS)[0] == "fp16"
    kept_out = {**BUILDS, "int8": Figures(300, 0.9, 0.995, released=False)}
    assert variant_rule.choose(SMALL, kept_out)[0] == "fp32"


def test_big_devices_get_fp32_and_the_thresholds_are_inclusive() -> None:
    assert variant_rule.choose(BIG, BUILDS) == ("fp32", "not a small device: fp32")
    assert variant_rule.choose({"ram_mb": 1024, "accelerator": "gpu"}, BUILDS)[0] == "fp32"
    assert variant_rule.choose({"ram_mb": 1023, "accelerator": "gpu"}, BUILDS)[0] == "fp16"
    assert variant_rule.choose(BIG, BUILDS, fp32_fits=False)[0] == "fp16"
    at_floor = {"fp32": Figures(1000), "int8": Figures(300, None, variant_rule.MIN_AGREEMENT)}
    assert variant_rule.choose(SMALL, at_floor)[0] == "int8"
    below = {"fp32": Figures(1000), "int8": Figures(300, None, variant_rule.MIN_AGREEMENT - 1e-9)}
    assert variant_rule.choose(SMALL, below)[0] == "fp32"


def test_unmeasured_variants_keep_the_old_int8_rule_and_ties_go_to_the_faster() -> None:
    assert variant_rule.choose(SMALL, {"fp32": Figures(1000), "int8": Figures(300)})[0] == "int8"
    assert variant_rule.choose(SMALL, {"fp32": Figures(1000), "int8": Figures(1200)})[0] == "int8"  # by name
    measured = {"fp32": Figures(1000), "int8": Figures(1200, None, 1.0)}
    assert variant_rule.choose(SMALL, measured)[0] == "fp32"  # with figures: the smaller
    tie = {"fp32": Figures(1000), "a": Figures(300, 2.0, 1.0), "b": Figures(300, 1.0, 1.0)}
    assert variant_rule.choose(SMALL, tie)[0] == "b"
    with pytest.raises(ValueError):
        variant_rule.choose(SMALL, {})
