"""Small real ONNX models built with onnx.helper, for tests and the demo."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_classifier(
    n_features: int = 4,
    n_hidden: int = 16,
    n_classes: int = 3,
    seed: int = 0,
    opset: int = 17,
    input_name: str = "input",
    symbolic_batch: bool = True,
) -> onnx.ModelProto:
    """A two-layer MLP with softmax: input [batch, n_features] float32 -> probs [batch, n_classes]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(n_features, n_hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(n_hidden, np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(n_hidden, n_classes)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(n_classes, np.float32), "b2")
    batch = "batch" if symbolic_batch else 1
    nodes = [
        helper.make_node("MatMul", [input_name, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, n_features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, n_classes])],
        initializer=[w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def large_mlp(n_bytes: int, n_features: int = 16, n_classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A valid MLP of about ``n_bytes`` (one wide float32 hidden layer), for upload/validation benches."""
    n_hidden = max(1, n_bytes // (4 * (n_features + n_classes)))
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array((rng.standard_normal((n_features, n_hidden)) * 0.05).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((n_hidden, n_classes)) * 0.05).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "large_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_classes])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet-bench")
    model.ir_version = 8
    return model
