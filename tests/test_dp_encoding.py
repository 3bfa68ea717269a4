"""The encoding's derived sensitivity equals what is measured on real windows of real models."""

import itertools

import numpy as np
import onnxruntime as ort
import pytest

from agent.aggregate import LATENCY_EDGES_MS, WindowAggregator
from agent.encoding import (
    ADD_REMOVE,
    REPLACE,
    drift_layout,
    encode,
    health_layout,
    implausible,
    normalise,
    sensitivity,
    window_vectors,
)
from tests.onnx_models import mlp_classifier

EDGES = [-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3]


def test_normalise_keeps_the_mass_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = rng.exponential(size=rng.integers(1, 40)) * rng.integers(0, 2, 1)
        v = normalise(c, 1024)
        assert v.sum() == 1024 and v.min() >= 0
    assert normalise([0, 0, 0, 0], 1024).tolist() == [256] * 4
    assert normalise([np.nan, np.inf, -5, 1], 8).tolist() == [0, 0, 0, 8]


def _session(n_features, n_classes, tmp_path):
    path = tmp_path / f"m{n_features}x{n_classes}.onnx"
    path.write_bytes(mlp_classifier(n_features=n_features, n_classes=n_classes).SerializeToString())
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _window(sess, spec, rng, rows, fail_rate, shift=0.0, latency=3.0):
    agg = WindowAggregator("m", "1", spec, LATENCY_EDGES_MS)
    n_features = sess.get_inputs()[0].shape[1]
    for _ in range(rows):
        x = (rng.normal(shift, 1, size=(int(rng.integers(1, 4)), n_features))).astype(np.float32)
        out = None if rng.random() < fail_rate else dict(zip(["probs"], sess.run(None, {"input": x}), strict=True))
        agg.record({"input": x}, out, latency)
    return agg


def _extreme(spec, n_features, low: bool):
    """Worst cases built through the aggregator: every value in the first (or last) bin, all
    outputs in one class (or every row failed), all latencies in one bin."""
    agg = WindowAggregator("m", "1", spec, LATENCY_EDGES_MS)
    x = np.full((5, n_features), -100.0 if low else 100.0, dtype=np.float32)
    k = spec["output"].get("n", 10)
    scores = np.zeros((5, 12), np.float32)  # a score output with every value in the first bin
    one_class = np.eye(k, dtype=np.float32)[np.zeros(5, int)]
    out = {"probs": one_class if spec["output"]["kind"] == "classes" else scores} if low else None
    agg.record({"input": x}, out, 0.1 if low else 10_000)
    return agg


@pytest.mark.parametrize("n_features,n_classes,kind", [(8, 30, "classes"), (3, 12, "bins"), (1, 2, "classes")])
def test_measured_sensitivity_equals_the_derived_one(tmp_path, n_features, n_classes, kind):
    sess = _session(n_features, n_classes, tmp_path)
    spec = {
        "features": [{"name": f"input[{j}]", "edges": EDGES} for j in range(n_features)],
        "output": {"kind": "classes", "n": n_classes}
        if kind == "classes"
        else {"kind": "bins", "edges": [i / 10 for i in range(11)]},  # multi-dimensional scores
    }
    rng = np.random.default_rng(n_features)
    windows = [_window(sess, spec, rng, int(rng.integers(1, 30)), rng.random(), rng.normal()) for _ in range(25)]
    windows += [_extreme(spec, n_features, True), _extreme(spec, n_features, False)]
    idle = WindowAggregator("m", "1", spec, LATENCY_EDGES_MS)
    vectors = {"drift": [], "health": []}
    layouts = {}
    for w in [*windows, idle]:
        for name, (layout, vec) in window_vectors(w).items():
            layouts[name] = layout
            vectors[name].append(vec)
    for name, vecs in vectors.items():
        layout = layouts[name]
        assert all(len(v) == layout.length for v in vecs)
        idle_vec = vecs[-1]
        assert not idle_vec.any()  # an idle window is the zero vector
        pairs = list(itertools.combinations(vecs, 2))
        l1 = max(int(np.abs(a - b).sum()) for a, b in pairs)
        l2 = max(int(((a - b) ** 2).sum()) for a, b in pairs)
        derived = sensitivity(layout, REPLACE)
        assert (l1, l2) == (derived.l1, derived.l2_squared), name
        ar = sensitivity(layout, ADD_REMOVE)
        assert max(int(np.abs(v).sum()) for v in vecs) == ar.l1
        assert max(int((v**2).sum()) for v in vecs) == ar.l2_squared
        for v in vecs[:-1]:  # every active window has exactly the declared mass per histogram
            for b, sl in zip(layout.blocks, layout.slices().values(), strict=True):
                if b.kind == "histogram":
                    assert v[sl].sum() == b.scale


def test_sensitivity_formula_for_the_default_layouts():
    d = drift_layout([(f"f{i}", 20) for i in range(8)], 10)
    assert d.length == 172
    assert sensitivity(d).l2_squared == 2 * 9 * 1024**2 and sensitivity(d).l1 == 2 * 9 * 1024
    assert sensitivity(d, ADD_REMOVE).l2_squared == 9 * 1024**2 + 1
    h = health_layout(12)
    assert sensitivity(h).l2_squared == 3 * 1024**2
    one_bin = drift_layout([("f", 1)], 0)  # degenerate one-bin histograms cannot move mass
    # both active: the one-bin feature moves nothing, the output (1 bin + failed) moves 2M²;
    # active vs idle: M² + M² + 1 — the larger is the second
    assert sensitivity(one_bin).l2_squared == 2 * 1024**2 + 1


def test_implausible_sums_are_named():
    h = health_layout(4)
    vecs = [encode(h, True, {"latency": [1, 2, 3, 4]}, {"error_fraction": (1, 10)}) for _ in range(20)]
    total = np.sum(vecs, axis=0)
    assert implausible(h, total, 20, noise_bound=50) is None
    forged = total.copy()
    forged[0] -= 5000  # a bin far below what noise allows
    assert "below" in implausible(h, forged, 20, 50)
    inflated = total.copy()
    inflated[:4] += 1024 * 5  # latency mass of 25 devices among 20
    assert "fits no count" in implausible(h, inflated, 20, 50)
