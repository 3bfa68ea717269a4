"""The sensitivity of a report, measured on real models through the real aggregator, and the noise it sets.

Each model is built with onnx.helper, its layout is what the server derives from its declared inputs
and outputs (``ota.contract.contract_of`` -> ``telemetry.profiles.default_bins``), and one extra
inference (one row, succeeding or failing) is run through ``agent.aggregate.WindowAggregator``: the
change of the released report vector must stay within the sensitivity both sides derive, and reach it
in the worst case.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent import privacy as agent_privacy
from agent.aggregate import LATENCY_EDGES_MS, WindowAggregator
from agent.runtime import synthetic_inputs
from ota.contract import contract_of
from telemetry import privacy
from telemetry.binning import DEFAULT_FEATURE_EDGES, DEFAULT_SCORE_EDGES
from telemetry.profiles import default_bins

WINDOW = (1_800_000_000, 1_800_000_300)


def _model(inputs: list, outputs: list, nodes: list, inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def scorer(n_in: int, out_shape: tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
    """x [batch, n_in] -> sigmoid scores [batch, *out_shape]: 1 score, 50 scores or a [4, 5] grid per row."""
    rng = np.random.default_rng(seed)
    width = int(np.prod(out_shape))
    w = numpy_helper.from_array(rng.normal(size=(n_in, width)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, *out_shape], np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["y"]),
    ]
    return _model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape])],
        nodes,
        [w, shape],
    )


def two_inputs(seed: int = 0) -> onnx.ModelProto:
    """a [batch, 3] and img [batch, 2, 3] -> class probabilities [batch, 3]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(9, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Flatten", ["img"], ["flat"], axis=1),
        helper.make_node("Concat", ["a", "flat"], ["ab"], axis=1),
        helper.make_node("MatMul", ["ab", "w"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probs"], axis=1),
    ]
    return _model(
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 2, 3]),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        nodes,
        [w],
    )


def as_bins(layout: dict) -> dict:
    """The same layout with the output reported as score bins (what a reference profile may fix)."""
    return {**layout, "output": {"kind": "bins", "edges": list(DEFAULT_SCORE_EDGES)}}


def cases() -> list[tuple[str, onnx.ModelProto, dict]]:
    one, fifty, grid, multi = scorer(4, (1,), 1), scorer(4, (50,), 2), scorer(4, (4, 5), 3), two_inputs(4)
    out = []
    for name, model in (("1 output", one), ("50 outputs", fifty), ("[4, 5] output", grid), ("two inputs", multi)):
        layout = default_bins(contract_of(model))
        out.append((name, model, layout))
    out.append(("[4, 5] output as bins", grid, as_bins(default_bins(contract_of(grid)))))
    out.append(("two inputs as bins", multi, as_bins(default_bins(contract_of(multi)))))
    return out


def run(sess: ort.InferenceSession, feeds: dict) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def released(agg: WindowAggregator) -> np.ndarray:
    """The report's numbers in one fixed order, as they leave the device (no noise)."""
    r = agg.report({"mechanism": "none", "epsilon": 1.0}, np.random.default_rng(0), window=WINDOW)
    feats = [c for _, f in sorted(r["features"].items()) for c in f["counts"]]
    return np.array(
        [r["inference_count"], r["error_count"], *r["latency_ms"]["counts"], *r["outputs"]["counts"], *feats], float
    )


def test_the_layouts_are_the_ones_the_issue_names() -> None:
    got = {name: (len(layout["features"]), layout["output"]["kind"]) for name, _, layout in cases()}
    assert got == {
        "1 output": (4, "bins"),
        "50 outputs": (4, "bins"),  # more than MAX_CLASSES scores: binned, 50 values a row
        "[4, 5] output": (4, "classes"),  # last dim 5: four argmax classes a row
        "two inputs": (6, "classes"),
        "[4, 5] output as bins": (4, "bins"),
        "two inputs as bins": (6, "bins"),
    }


@pytest.mark.parametrize("name,model,layout", cases(), ids=[c[0] for c in cases()])
@pytest.mark.parametrize("extra_fails", [False, True], ids=["ok", "failed"])
def test_one_more_inference_moves_the_report_by_at_most_the_sensitivity(
    name: str, model: onnx.ModelProto, layout: dict, extra_fails: bool
) -> None:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    l1, l2 = agent_privacy.report_sensitivity(layout)
    for batch in (1, 8, 64):
        base = synthetic_inputs(sess, batch=batch, rng=rng)
        extra = synthetic_inputs(sess, batch=1, rng=rng)
        without = WindowAggregator("m", "v", layout, LATENCY_EDGES_MS)
        with_one = WindowAggregator("m", "v", layout, LATENCY_EDGES_MS)
        for agg in (without, with_one):
            agg.record(base, run(sess, base), 3.0)
        out = None if extra_fails else run(sess, extra)
        with_one.record(extra, out, 700.0)
        d = released(with_one) - released(without)
        assert np.abs(d).sum() <= l1 + 1e-3, (name, batch, np.abs(d).sum(), l1)
        assert np.linalg.norm(d) <= l2 + 1e-3, (name, batch, np.linalg.norm(d), l2)
        # by construction every part of the report carries exactly one unit of mass per inference
        assert np.abs(d).sum() == pytest.approx(l1, abs=1e-3)


def test_the_worst_case_reaches_the_l2_sensitivity() -> None:
    """One score a row: every histogram's unit lands in one bin, so the L2 bound is tight."""
    _, model, layout = cases()[0]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = {"x": np.zeros((1, 4), np.float32)}
    without = WindowAggregator("m", "v", layout, LATENCY_EDGES_MS)
    with_one = WindowAggregator("m", "v", layout, LATENCY_EDGES_MS)
    with_one.record(x, {"y": sess.run(None, x)[0]}, 3.0)
    d = released(with_one) - released(without)
    l1, l2 = agent_privacy.report_sensitivity(layout)
    assert (l1, l2) == (7.0, pytest.approx(math.sqrt(7)))
    assert np.abs(d).sum() == pytest.approx(l1) and np.linalg.norm(d) == pytest.approx(l2)


def test_a_fifty_score_model_no_longer_moves_the_report_by_56() -> None:
    _, model, layout = cases()[1]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = {"x": np.random.default_rng(1).normal(size=(1, 4)).astype(np.float32)}
    agg = WindowAggregator("m", "v", layout, LATENCY_EDGES_MS)
    agg.record(x, {"y": sess.run(None, x)[0]}, 3.0)
    r = agg.report({"mechanism": "none", "epsilon": 1.0}, np.random.default_rng(0), window=WINDOW)
    # the row's 50 scores share one unit of mass in the output histogram instead of adding 50
    assert sum(r["outputs"]["counts"]) == pytest.approx(1.0, abs=1e-3)
    assert agent_privacy.report_sensitivity(layout)[0] == 7.0


def random_layouts(n: int = 200) -> list[dict]:
    rng = np.random.default_rng(11)
    out = []
    for i in range(n):
        f = int(rng.integers(0, 80))
        feats = [{"name": f"in{j % 3}[{j}]", "edges": list(DEFAULT_FEATURE_EDGES)} for j in range(f)]
        if i % 2:
            output: dict = {"kind": "classes", "n": int(rng.integers(2, 33))}
        else:
            output = {"kind": "bins", "edges": sorted(rng.normal(size=int(rng.integers(2, 30))).tolist())}
        out.append({"features": feats, "output": output})
    return out + [layout for _, _, layout in cases()] + [{"features": [], "output": {"kind": "classes", "n": 2}}]


def test_agent_and_server_derive_the_same_sensitivity_for_every_layout() -> None:
    for layout in random_layouts():
        l1, l2 = agent_privacy.report_sensitivity(layout)
        assert (privacy.l1_sensitivity(layout), privacy.l2_sensitivity(layout)) == (l1, l2)
        assert privacy.report_sensitivity(layout) == (l1, l2)
        assert l1 == 3 + len(layout["features"]) and l2 == pytest.approx(math.sqrt(l1))
        for eps in (0.1, 1.0, 4.0):
            assert privacy.noise_variance("laplace", eps, layout) == pytest.approx(
                2 * agent_privacy.laplace_scale(l1, eps) ** 2
            )
            assert privacy.noise_variance("gaussian", eps, layout) == pytest.approx(
                agent_privacy.gaussian_sigma(l2, eps) ** 2
            )


@pytest.mark.parametrize("mechanism,epsilon", [("laplace", 0.5), ("gaussian", 1.0)])
def test_the_noise_the_agent_adds_is_the_variance_the_server_assumes(mechanism: str, epsilon: float) -> None:
    """On the 50-score model's and the two-input model's real layouts, empty windows included."""
    rng = np.random.default_rng(5)
    for name, _, layout in (cases()[1], cases()[3]):
        samples = []
        for _ in range(400):
            agg = WindowAggregator("m", "v", layout, LATENCY_EDGES_MS)
            r = agg.report({"mechanism": mechanism, "epsilon": epsilon}, rng, window=WINDOW)
            samples.extend([r["inference_count"], r["error_count"], *r["outputs"]["counts"]])
            samples.extend(c for f in r["features"].values() for c in f["counts"])
        assert np.var(samples) == pytest.approx(privacy.noise_variance(mechanism, epsilon, layout), rel=0.05), name


@pytest.mark.django_db
def test_rollups_assume_the_noise_the_agent_added_for_the_versions_real_layout() -> None:
    """A 50-score, multi-feature version through ingest and rollups: the server's summed noise variance
    is n reports x the per-report variance of that version's layout, and matches the agent's noise."""
    import time
    from datetime import timedelta

    from django.utils import timezone

    from ota.models import Model, ModelVersion
    from telemetry import services
    from telemetry.api import BatchIn
    from telemetry.models import Rollup
    from telemetry.profiles import expected_bins
    from tests import factories

    model = scorer(6, (50,), seed=9)
    data = model.SerializeToString()
    version = ModelVersion.objects.create(
        model=Model.objects.get_or_create(name="scores")[0],
        label="v1",
        status="staged",
        artifact=factories.artifact(data),
        report=contract_of(model),
    )
    factories.release(version)
    layout = expected_bins(version)
    assert len(layout["features"]) == 6 and layout["output"]["kind"] == "bins"
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    w = 300
    start = int(time.time() // w) * w - w  # the last window that is over
    devices = [factories.device(name=f"d{i}")[0] for i in range(30)]
    sums = []
    for i, d in enumerate(devices):
        agg = WindowAggregator("scores", "v1", layout, LATENCY_EDGES_MS)
        if i % 3:  # a third of the fleet was idle: its reports are noise around zero
            feeds = synthetic_inputs(sess, batch=16, rng=rng)
            agg.record(feeds, run(sess, feeds), 4.0)
        r = agg.report({"mechanism": "laplace", "epsilon": 1.0}, rng, window=(start, start + w))
        feats = [c for f in layout["features"] for c in r["features"][f["name"]]["counts"]]
        sent = [r["inference_count"], r["error_count"], *r["latency_ms"]["counts"], *r["outputs"]["counts"], *feats]
        sums.append(np.array(sent) - agg.vector())
        out = services.ingest_reports(d.id, BatchIn.model_validate({"reports": [r]}).reports)
        assert out["accepted"] == [r["id"]], out
    services.update_rollups(now=timezone.now() + timedelta(seconds=60))
    roll = Rollup.objects.get(version=version, cohort="all")
    per_report = privacy.noise_variance("laplace", 1.0, layout)
    assert per_report == 2 * (3 + 6) ** 2  # F = 6 features, whatever the 50 outputs
    assert roll.n_reports == 30 and roll.noise_var == pytest.approx(30 * per_report)
    assert np.var(np.concatenate(sums)) == pytest.approx(per_report, rel=0.1)  # what the agent added
