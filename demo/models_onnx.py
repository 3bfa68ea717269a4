"""The demo's model: a small vibration classifier trained here with numpy, exported to ONNX.

Trained locally (no downloads) so ``make run`` works offline. Version 2 is trained on fewer,
noisier labels: valid and staged, but measurably worse, which the demo's rollout catches.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = ["rms", "peak", "kurtosis", "temperature"]
CLASSES = ["normal", "imbalance", "bearing_fault"]
INPUT = "input"


def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic sensor windows: standardized features whose class depends on a nonlinear rule."""
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    score_imbalance = 1.2 * x[:, 0] + 0.8 * x[:, 1] - 0.3 * x[:, 3]
    score_bearing = 1.5 * x[:, 2] + 0.5 * x[:, 1] ** 2 - 0.5
    y = np.zeros(n, dtype=np.int64)
    y[score_imbalance > 1.0] = 1
    y[(score_bearing > 1.2) & (score_bearing > score_imbalance)] = 2
    return x, y


@dataclass
class Trained:
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(x @ self.w1 + self.b1, 0)
        z = h @ self.w2 + self.b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def train(x: np.ndarray, y: np.ndarray, hidden: int = 16, steps: int = 400, lr: float = 0.5, seed: int = 0) -> Trained:
    """Plain full-batch gradient descent on cross-entropy; a second of CPU for the demo's sizes."""
    rng = np.random.default_rng(seed)
    n, f = x.shape
    k = int(y.max()) + 1
    m = Trained(
        rng.normal(scale=0.5, size=(f, hidden)).astype(np.float32),
        np.zeros(hidden, np.float32),
        rng.normal(scale=0.5, size=(hidden, k)).astype(np.float32),
        np.zeros(k, np.float32),
    )
    onehot = np.eye(k, dtype=np.float32)[y]
    for _ in range(steps):
        pre = x @ m.w1 + m.b1
        h = np.maximum(pre, 0)
        p = m.predict(x)
        g = (p - onehot) / n
        gw2, gb2 = h.T @ g, g.sum(0)
        gh = (g @ m.w2.T) * (pre > 0)
        gw1, gb1 = x.T @ gh, gh.sum(0)
        m.w1 -= lr * gw1
        m.b1 -= lr * gb1
        m.w2 -= lr * gw2
        m.b2 -= lr * gb2
    return m


def to_onnx(m: Trained, version: str) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(a.astype(np.float32), name)
        for name, a in [("w1", m.w1), ("b1", m.b1), ("w2", m.w2), ("b2", m.b2)]
    ]
    nodes = [
        helper.make_node("MatMul", [INPUT, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "vibration_classifier",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", len(FEATURES)])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet-demo")
    model.ir_version = 8
    helper.set_model_props(model, {"features": ",".join(FEATURES), "classes": ",".join(CLASSES), "version": version})
    onnx.checker.check_model(model, full_check=True)
    return model


def build(out_dir: Path, seed: int = 7) -> dict[str, Path]:
    """Write v1.onnx, v2.onnx and reference.npz; returns their paths and prints nothing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y = sample(4000, rng)
    v1 = train(x, y, seed=seed)
    # v2: a "refresh" trained on a small, label-noisy batch — it ships, but it is worse.
    x2, y2 = sample(300, rng)
    flip = rng.random(y2.size) < 0.25
    y2[flip] = rng.integers(0, len(CLASSES), flip.sum())
    v2 = train(x2, y2, steps=150, seed=seed + 1)
    paths = {"v1": out_dir / "v1.onnx", "v2": out_dir / "v2.onnx", "reference": out_dir / "reference.npz"}
    onnx.save(to_onnx(v1, "v1"), str(paths["v1"]))
    onnx.save(to_onnx(v2, "v2"), str(paths["v2"]))
    x_ref, _ = sample(2000, rng)
    np.savez(paths["reference"], **{INPUT: x_ref})
    return paths


def accuracy(m: Trained, seed: int = 99) -> float:
    x, y = sample(2000, np.random.default_rng(seed))
    return float((m.predict(x).argmax(1) == y).mean())
