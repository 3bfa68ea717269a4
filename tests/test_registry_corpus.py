"""Models EdgeFleet did not make: real exporters' output must stage with a correct I/O table.

Built at test time by skl2onnx, torch.onnx and onnxruntime.quantization, plus the models the onnx and
onnxruntime packages ship. Validation runs in-process here (it is the same code the sandbox child runs);
the variant tests go through the sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ota import opsets, pipeline, profiles, sandbox, synthetic, validation
from ota.limits import Limits
from tests import export_corpus as corpus
from tests.onnx_models import mlp_classifier

ZIPMAP = "sequence<map<int64, float32>>"


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def staged(path: Path) -> dict:
    report, _ = validation.validate(path, latency_runs=3)
    assert all(s["ok"] for s in report["steps"])
    text = json.dumps(report)
    assert "undefined" not in text and '"unknown"' not in text and "Traceback" not in text
    return report


def table(specs: list[dict]) -> list[tuple]:
    return [(s["name"], s["dtype"], s.get("kind", "tensor")) for s in specs]


@pytest.mark.parametrize("kind", sorted(corpus.SKLEARN))
@pytest.mark.parametrize("zipmap", [True, False])
def test_sklearn_classifiers_stage_with_and_without_zipmap(tmp_path: Path, kind: str, zipmap: bool) -> None:
    report = staged(save(corpus.SKLEARN[kind](zipmap=zipmap), tmp_path / "m.onnx"))
    assert table(report["inputs"]) == [("input", "float32", "tensor")]
    assert report["inputs"][0]["shape"][1] == corpus.FEATURES
    # skl2onnx names the outputs differently with and without ZipMap
    label, probs = (
        ("output_label", ("output_probability", ZIPMAP, "sequence"))
        if zipmap
        else ("label", ("probabilities", "float32", "tensor"))
    )
    assert table(report["outputs"]) == [(label, "int64", "tensor"), probs]
    if not zipmap:
        assert report["outputs"][1]["shape"][1] == corpus.CLASSES
    smoke = next(s for s in report["steps"] if s["name"] == "smoke")
    assert smoke["output_shapes"][0] == [1]
    assert smoke["output_shapes"][1] == ("sequence of 1 map" if zipmap else [1, corpus.CLASSES])
    zipmap_advice = [w for w in report["warnings"] if "'zipmap': False" in w]
    assert len(zipmap_advice) == (1 if zipmap else 0)
    if kind == "tree":
        assert report["opsets"]["ai.onnx.ml"] >= 1  # TreeEnsembleClassifier


def test_a_reference_profile_is_built_for_a_zipmap_classifier(tmp_path: Path) -> None:
    path = save(corpus.linear(zipmap=True), tmp_path / "m.onnx")
    report, session = validation.validate(path, latency_runs=3)
    x, _ = corpus.iris_like(50)
    profile = profiles.build_profile({"input": x}, report["inputs"], lambda f: pipeline.first_output(session, f))
    assert profile["n"] == 50 and profile["output"]["kind"] == "bins"  # the label output, as the agent bins it


def test_onnxruntimes_own_logreg_iris_stages(tmp_path: Path) -> None:
    """It imports only ai.onnx.ml (no default domain) and was refused as 'opset 0'."""
    report = staged(corpus.ort_example("logreg_iris.onnx"))
    assert report["opsets"] == {"ai.onnx.ml": 1} and report["opset"] is None
    assert table(report["outputs"]) == [("label", "int64", "tensor"), ("probabilities", ZIPMAP, "sequence")]


def test_a_tree_ensemble_regressor_stages(tmp_path: Path) -> None:
    report = staged(save(corpus.tree_regressor(), tmp_path / "m.onnx"))
    assert table(report["outputs"]) == [("variable", "float32", "tensor")]


def test_a_string_input_model_stages_and_a_missing_locale_is_the_servers_not_the_models(tmp_path: Path) -> None:
    report = staged(save(corpus.text_classifier(), tmp_path / "m.onnx"))
    assert table(report["inputs"]) == [("text", "string", "tensor")]
    assert report["outputs"][1]["dtype"] == ZIPMAP
    assert {"", "ai.onnx.ml", "com.microsoft"} >= {
        k.replace("ai.onnx", "", 1) if k == "ai.onnx" else k for k in report["opsets"]
    }
    session_step = next(s for s in report["steps"] if s["name"] == "session")
    if "warning" in session_step:  # this server has no en_US locale: retried under C.UTF-8 and said so
        assert "not a fault of the model" in session_step["warning"] and "locale" in session_step["warning"]


def test_a_torch_cnn_with_a_dynamic_batch_stages(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    report = staged(save(corpus.torch_cnn(), tmp_path / "m.onnx"))
    assert report["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 16, 16]}]
    assert report["outputs"] == [{"name": "probs", "dtype": "float32", "shape": ["batch", 10]}]
    assert report["producer"]["name"] == "pytorch"


@pytest.mark.parametrize("name", ["light/light_squeezenet.onnx", "light/light_shufflenet.onnx"])
def test_the_onnx_packages_backend_models_stage(name: str) -> None:
    report = staged(corpus.backend_model(name))
    assert report["inputs"][0]["dtype"] == "float32" and len(report["inputs"][0]["shape"]) == 4
    assert report["nodes"] > 50 and report["outputs"][0]["dtype"] == "float32"


def test_the_onnx_packages_sequence_model_stages() -> None:
    report = staged(corpus.backend_model("simple/test_sequence_model1/model.onnx"))
    assert [s["dtype"] for s in report["inputs"]] == ["float32"] * 3


def test_a_qdq_quantized_model_stages(tmp_path: Path) -> None:
    src = save(corpus.mlp(zipmap=False), tmp_path / "m.onnx")
    x, _ = corpus.iris_like(128)
    report = staged(corpus.qdq(src, tmp_path / "q.onnx", x))
    assert report["quantized"] is True
    assert table(report["outputs"]) == [("label", "int64", "tensor"), ("probabilities", "float32", "tensor")]


# ---------------------------------------------------------------- opsets per domain, and what stays refused


def _binarizer(ml_opset: int, extra: list | None = None) -> onnx.ModelProto:
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml")], "g", [vi[0]], [vi[1]])
    imports = [helper.make_opsetid("ai.onnx.ml", ml_opset), *(extra or [])]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model


def test_each_domain_is_checked_against_what_onnxruntime_runs(tmp_path: Path) -> None:
    top = opsets.supported_opsets()
    assert top["ai.onnx"][1] == opsets.max_supported_opset() and top["com.microsoft"] == (1, 1)
    ml_top = top["ai.onnx.ml"][1]
    assert staged(save(_binarizer(ml_top), tmp_path / "ok.onnx"))["opsets"] == {"ai.onnx.ml": ml_top}
    assert opsets.opset_problems(_binarizer(ml_top + 1))[0].startswith(f"The model uses ai.onnx.ml opset {ml_top + 1}")
    problems = opsets.opset_problems(_binarizer(1, [helper.make_opsetid("com.microsoft", 2)]))
    assert len(problems) == 1 and "com.microsoft opset 2" in problems[0] and "at most 1" in problems[0]
    problems = opsets.opset_problems(_binarizer(1, [helper.make_opsetid("", 6)]))
    assert "ai.onnx opset 6" in problems[0] and "convert_version" in problems[0]


def test_a_custom_operator_is_refused_with_what_to_change(tmp_path: Path) -> None:
    from tests.onnx_models import unknown_op

    with pytest.raises(validation.ValidationFailed) as info:
        validation.validate(save(unknown_op(), tmp_path / "m.onnx"))
    assert info.value.step == "session" and "custom-op library" in info.value.message


def test_synthetic_values_of_every_kind() -> None:
    specs = [
        {"name": "t", "dtype": "string", "shape": ["n", 2]},
        {"name": "m", "dtype": "map<string, float32>", "shape": [], "kind": "map"},
        {"name": "s", "dtype": "sequence<map<int64, float32>>", "shape": [], "kind": "sequence"},
    ]
    feeds = synthetic.synthetic_inputs(specs, batch=3)
    assert feeds["t"].shape == (3, 2) and feeds["t"].dtype == object and feeds["t"][0, 0]
    assert feeds["m"] == {synthetic.SAMPLE_TEXT: pytest.approx(feeds["m"][synthetic.SAMPLE_TEXT])}
    assert len(feeds["s"]) == 3 and all(list(d) == [0] for d in feeds["s"])


# ---------------------------------------------------------------- variants, through the sandbox


def test_every_variant_of_a_zipmap_classifier_is_compared_on_every_output(tmp_path: Path) -> None:
    path = save(corpus.mlp(zipmap=True), tmp_path / "m.onnx")
    x, _ = corpus.iris_like(200, seed=1)
    ref = tmp_path / "ref.npz"
    np.savez(ref, input=x)
    with sandbox.run(
        {
            "kind": "validate",
            "model": str(path),
            "reference": {"path": str(ref), "kind": "npz"},
            "variants": ["int8", "int8_static", "fp16", "optimized"],
            "latency_runs": 5,
        },
        Limits(),
        {str(path): "model sha256:0"},
        workdir=tmp_path,
    ) as outcome:
        assert outcome.ok, outcome.error
        errors = outcome.report["variant_errors"]
        assert set(outcome.variants) >= {"int8", "int8_static", "optimized"}, errors
        # onnxconverter-common leaves skl2onnx's MLP half-converted: the variant's own validation catches it
        assert "fp16" in outcome.variants or "failed the upload checks" in errors["fp16"]
        for kind, (file, m) in outcome.variants.items():
            assert file.stat().st_size == m["size"] and m["source"] == "reference"
            assert set(m["outputs"]) == {"output_label", "output_probability"}, kind
            assert m["outputs"]["output_label"]["kind"] == "labels"
            probs = m["outputs"]["output_probability"]
            assert probs["kind"] == "scores" and probs["compared"] == 200
            assert m["max_abs_diff"] == probs["max_abs_diff"]  # the headline is the worst output
            assert m["agreement"] == min(probs["agreement"], m["outputs"]["output_label"]["agreement"])
            assert m["validation"]["ok"] and "smoke" in m["validation"]["steps"]
        assert outcome.variants["int8"][1]["max_abs_diff"] > 0  # int8 moves the probabilities
        assert outcome.variants["int8"][1]["quantized"] and outcome.variants["int8_static"][1]["quantized"]
    assert outcome.report["sparsity"]["zero_share"] is not None


def test_static_int8_without_reference_data_says_why(tmp_path: Path) -> None:
    path = save(mlp_classifier(n_hidden=64), tmp_path / "m.onnx")
    with sandbox.run(
        {"kind": "validate", "model": str(path), "variants": ["int8_static", "fp16"], "latency_runs": 3},
        Limits(),
        {str(path): "model sha256:0"},
        workdir=tmp_path,
    ) as outcome:
        assert outcome.ok and set(outcome.variants) == {"fp16"}
        assert "reference data set" in outcome.report["variant_errors"]["int8_static"]
        assert outcome.variants["fp16"][1]["source"] == "synthetic"
