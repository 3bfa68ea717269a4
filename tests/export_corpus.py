"""Real exports, made at test time by the real exporters (skl2onnx, torch.onnx, onnxruntime.quantization).

Each builder returns the ONNX model and a small float32 data set of the right width, so a test can
upload the model with a reference set. Training is on a fixed seed and takes well under a second.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

FEATURES = 4
CLASSES = 3


def iris_like(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    x = rng.normal(size=(n, FEATURES)) + y[:, None] * np.array([1.5, -1.0, 0.5, 0.0])
    return x.astype(np.float32), y.astype(np.int64)


def skl(estimator: object, zipmap: bool | None, n_features: int = FEATURES) -> onnx.ModelProto:
    """skl2onnx's export; ``zipmap`` None for a regressor (it has no such option)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    options = None if zipmap in (True, None) else {id(estimator): {"zipmap": False}}
    return to_onnx(
        estimator, initial_types=[("input", FloatTensorType([None, n_features]))], options=options, target_opset=17
    )


def linear(zipmap: bool = True) -> onnx.ModelProto:
    from sklearn.linear_model import LogisticRegression

    x, y = iris_like()
    return skl(LogisticRegression(max_iter=500).fit(x, y), zipmap)


def tree(zipmap: bool = True) -> onnx.ModelProto:
    """A random forest: an ``ai.onnx.ml`` TreeEnsembleClassifier."""
    from sklearn.ensemble import RandomForestClassifier

    x, y = iris_like()
    return skl(RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(x, y), zipmap)


def mlp(zipmap: bool = True) -> onnx.ModelProto:
    from sklearn.neural_network import MLPClassifier

    x, y = iris_like()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converging on random data is beside the point here
        clf = MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=200, random_state=0).fit(x, y)
    return skl(clf, zipmap)


def tree_regressor() -> onnx.ModelProto:
    """Gradient boosting for a number: an ``ai.onnx.ml`` TreeEnsembleRegressor."""
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = iris_like()
    return skl(GradientBoostingRegressor(n_estimators=10, max_depth=3, random_state=0).fit(x, x[:, 0] * 2 + y), None)


def text_classifier() -> onnx.ModelProto:
    """TF-IDF + logistic regression on a string input (Tokenizer from com.microsoft, StringNormalizer)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    docs = ["alpha beta", "beta gamma", "gamma delta", "alpha delta", "delta beta", "gamma alpha"]
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(docs, [0, 1, 0, 1, 1, 0])
    return to_onnx(pipe, initial_types=[("text", StringTensorType([None, 1]))])


def torch_cnn() -> onnx.ModelProto:
    """A small CNN through ``torch.onnx.export`` with a dynamic batch dimension."""
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            return torch.softmax(self.fc(x.flatten(1)), dim=1)

    buf = io.BytesIO()
    torch.onnx.export(
        Net().eval(),
        (torch.randn(1, 1, 16, 16),),
        buf,
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return onnx.load_from_string(buf.getvalue())


def qdq(src: Path, dst: Path, calibration: np.ndarray, input_name: str = "input") -> Path:
    """A QDQ-quantized copy of ``src`` (onnxruntime static quantization, calibrated on ``calibration``)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{input_name: calibration[i : i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ)
    return dst


def backend_model(name: str) -> Path:
    """A model the ``onnx`` package ships for its backend tests (``light_*``: real architectures)."""
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / name


def ort_example(name: str) -> Path:
    from onnxruntime.datasets import get_example

    return Path(get_example(name))


SKLEARN: dict[str, Callable[..., onnx.ModelProto]] = {"linear": linear, "tree": tree, "mlp": mlp}
