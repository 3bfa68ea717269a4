"""Small real ONNX models built with onnx.helper, for tests and the demo."""

import io
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


# ---------------------------------------------------------------- hostile uploads (validation sandbox tests)


def _tiny(nodes: list, inputs: list, outputs: list, initializers: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def huge_input() -> onnx.ModelProto:
    """81 bytes that declare a float[10000000, 10000000] input (400 TB if anyone allocated it)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [10_000_000, 10_000_000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [10_000_000, 10_000_000])
    return _tiny([helper.make_node("Identity", ["x"], ["y"])], [x], [y])


def expand_to(n_elements: int) -> onnx.ModelProto:
    """A one-float input ``Expand``-ed to ``n_elements`` floats by a constant shape (1 GiB at 2**28)."""
    side = int(n_elements**0.5)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [side, n_elements // side])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "cols"])
    return _tiny([helper.make_node("Expand", ["x", "shape"], ["y"])], [x], [y], [shape])


def hidden_expand_to(n_elements: int, reduce: bool = False) -> onnx.ModelProto:
    """``Expand`` to a size computed in float arithmetic, which shape inference cannot see.

    With ``reduce`` the big tensor is an intermediate summed to one value (nothing big is output).
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [] if reduce else ["n"])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    size = helper.make_tensor("size", TensorProto.FLOAT, [1], [float(n_elements)])
    nodes = [
        helper.make_node("Mul", ["x", "zero"], ["x0"]),
        helper.make_node("Add", ["x0", "size"], ["n"]),
        helper.make_node("Cast", ["n"], ["shape"], to=TensorProto.INT64),
        helper.make_node("Expand", ["x", "shape"], ["big" if reduce else "y"]),
    ]
    if reduce:
        nodes.append(helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0))
    return _tiny(nodes, [x], [y], [zero, size])


def busy_loop(iterations: int = 1 << 40, n: int = 256) -> onnx.ModelProto:
    """A ``Loop`` of ``iterations`` matrix products: as slow as asked, in a few hundred bytes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["acc_in", "acc_in"], ["prod"]),
            helper.make_node("Tanh", ["prod"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [n, n]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [n, n]),
        ],
    )
    trip = helper.make_tensor("trip", TensorProto.INT64, [], [iterations])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    loop = helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)
    return _tiny([loop], [x], [y], [trip, cond])


def unknown_op() -> onnx.ModelProto:
    """Passes onnx.checker but onnxruntime cannot load it (an op of an unregistered domain)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    return model


def npz_bomb(path: Path, unpacked: int = 1 << 30, name: str = "input", features: int = 4) -> Path:
    """A valid .npz of float32 zeros [rows, features] that unpacks to ``unpacked`` bytes (about 1 MB on disk).

    Streamed through zlib, so the test never holds the unpacked array.
    """
    import zipfile

    rows = unpacked // (4 * features)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            "fortran_order": False,
            "shape": (rows, features),
        },
    )
    chunk = bytes(1 << 20)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open(f"{name}.npy", "w", force_zip64=True) as fh,
    ):
        fh.write(header.getvalue())
        left = rows * features * 4
        while left > 0:
            fh.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return path
