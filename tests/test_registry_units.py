"""The registry's pure parts: validation checks, contract differences, reference profiles, int8."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from ota import contract, opsets, profiles, quantize, synthetic, validation
from telemetry.binning import histogram, quantile_edges
from tests.onnx_models import mlp_classifier, save


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return save(mlp_classifier(), tmp_path / "good.onnx")


def test_report_has_the_keys_other_apps_read(good: Path) -> None:
    report, session = validation.validate(good)
    assert report["opset"] == 17 and report["ir_version"] == 8
    assert report["file_size"] == good.stat().st_size
    assert report["parameters"] == 4 * 16 + 16 + 16 * 3 + 3
    assert report["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}]
    assert report["outputs"] == [{"name": "probs", "dtype": "float32", "shape": ["batch", 3]}]
    assert report["quantized"] is False and report["breaking_changes"] == []
    assert report["producer"]["name"] == "edgefleet-tests"
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"]
    names = [s["name"] for s in report["steps"]]
    assert names == ["load", "format", "checker", "metadata", "session", "smoke", "latency", "contract"]
    assert all(s["ok"] and s["duration_ms"] >= 0 for s in report["steps"])
    smoke = next(s for s in report["steps"] if s["name"] == "smoke")
    assert smoke["output_shapes"] == [[1, 3]]  # the symbolic batch became 1
    assert session.get_inputs()[0].name == "input"


def test_metadata_props_and_fixed_dims_are_reported(tmp_path: Path) -> None:
    model = mlp_classifier(symbolic_batch=False)
    onnx.helper.set_model_props(model, {"author": "team-a", "dataset": "2026-11"})
    report, _ = validation.validate(save(model, tmp_path / "m.onnx"))
    assert report["metadata"] == {"author": "team-a", "dataset": "2026-11"}
    assert report["inputs"][0]["shape"] == [1, 4]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty"),
        (os.urandom(4096), "not an ONNX model"),
    ],
)
def test_unreadable_files_are_rejected_at_load(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(validation.ValidationFailed) as info:
        validation.validate(path)
    assert words in info.value.message and info.value.step == "load"
    assert info.value.report["steps"][-1] == {**info.value.report["steps"][-1], "name": "load", "ok": False}


def test_truncated_model_is_rejected(tmp_path: Path, good: Path) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(validation.ValidationFailed) as info:
        validation.validate(path)
    assert "not an ONNX model" in info.value.message or "truncated" in info.value.message


def test_external_data_model_is_rejected_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(mlp_classifier(), str(path), save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0)
    with pytest.raises(validation.ValidationFailed) as info:
        validation.validate(path)
    assert "external data" in info.value.message and "save_as_external_data=False" in info.value.message


@pytest.mark.parametrize(("opset", "words"), [(opsets.max_supported_opset() + 1, "newer"), (5, "older")])
def test_unsupported_opsets_are_rejected(tmp_path: Path, opset: int, words: str) -> None:
    model = mlp_classifier()
    model.opset_import[0].version = opset
    path = tmp_path / "op.onnx"
    onnx.save(model, str(path))
    with pytest.raises(validation.ValidationFailed) as info:
        validation.validate(path)
    assert words in info.value.message and f"opset {opset}" in info.value.message
    assert info.value.report["opset"] == opset


def test_max_supported_opset_is_what_onnxruntime_loads() -> None:
    top = opsets.max_supported_opset()
    assert top >= 17
    opsets.ort.InferenceSession(opsets._identity_model(top).SerializeToString())
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own Fail type
        opsets.ort.InferenceSession(opsets._identity_model(top + 1).SerializeToString())


def test_contract_differences_flag_breaking_changes() -> None:
    before = {
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [{"name": "probs", "dtype": "float32", "shape": ["batch", 3]}],
    }
    same_but_renamed_dim = {
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["N", 4]}],
        "outputs": [{"name": "probs", "dtype": "float32", "shape": ["N", 3]}],
    }
    assert contract.contract_differences(before, same_but_renamed_dim) == []
    after = {
        "inputs": [{"name": "features", "dtype": "float64", "shape": ["batch", 5]}],
        "outputs": [{"name": "probs", "dtype": "float32", "shape": ["batch", 4]}],
    }
    diffs = contract.contract_differences(before, after)
    assert "input 'input' was removed" in diffs
    assert any(d.startswith("input 'features' is new") for d in diffs)
    assert "output 'probs' dim 1 changed from 3 to 4" in diffs
    retyped = {
        "inputs": [{"name": "input", "dtype": "float64", "shape": ["batch", 4, 1]}],
        "outputs": before["outputs"],
    }
    diffs = contract.contract_differences(before, retyped)
    assert "input 'input' dtype changed from float32 to float64" in diffs
    assert any("rank changed" in d for d in diffs)


def test_quantized_detection_and_int8_agreement(tmp_path: Path, good: Path) -> None:
    q = quantize.make_int8(good, tmp_path / "q.onnx")
    report, q_session = validation.validate(q)
    assert report["quantized"] is True
    _, fp32 = validation.validate(good)
    inputs = [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}]
    batches = [synthetic.synthetic_inputs(inputs, batch=16, seed=i) for i in range(4)]
    metrics = quantize.agreement(fp32, q_session, batches)
    assert metrics["compared"] == 64 and 0.8 <= metrics["agreement"] <= 1.0
    assert 0 <= metrics["max_abs_diff"] < 0.5


def test_synthetic_inputs_honour_symbolic_dims_and_dtypes() -> None:
    feeds = synthetic.synthetic_inputs(
        [
            {"name": "x", "dtype": "float32", "shape": ["batch", "seq", 8]},
            {"name": "ids", "dtype": "int64", "shape": ["batch", 3]},
            {"name": "mask", "dtype": "bool", "shape": [2]},
        ],
        batch=4,
    )
    assert feeds["x"].shape == (4, 1, 8) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (4, 3) and feeds["ids"].dtype == np.int64
    assert feeds["mask"].shape == (2,) and feeds["mask"].dtype == bool


# ---------------------------------------------------------------- reference profiles

INPUTS = [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}]


def test_profile_numbers_match_the_shared_binning(good: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(loc=[0, 1, 2, 3], scale=[1, 2, 3, 4], size=(1000, 4)).astype(np.float32)
    np.savez(tmp_path / "ref.npz", input=x)
    _, session = validation.validate(good)
    arrays = profiles.match_inputs(profiles.load(tmp_path / "ref.npz", "npz"), INPUTS, "npz")
    profile = profiles.build_profile(arrays, INPUTS, lambda f: session.run(None, f)[0])

    assert set(profile) == {"source", "n", "features", "output"}
    assert profile["source"] == "reference_set" and profile["n"] == 1000
    assert [f["name"] for f in profile["features"]] == ["input[0]", "input[1]", "input[2]", "input[3]"]
    for j, f in enumerate(profile["features"]):
        assert set(f) == {"name", "edges", "counts", "mean", "std"}
        col = x[:, j].astype(np.float64)
        assert f["edges"] == quantile_edges(col, 20) and len(f["edges"]) == 21
        assert f["counts"] == histogram(col, f["edges"]).tolist() and sum(f["counts"]) == 1000
        assert f["mean"] == pytest.approx(col.mean()) and f["std"] == pytest.approx(col.std())
    expected = np.bincount(session.run(None, {"input": x})[0].argmax(axis=1), minlength=3)
    assert profile["output"] == {"kind": "classes", "n": 3, "counts": expected.astype(float).tolist()}


def test_csv_reference_with_indexed_or_plain_headers(tmp_path: Path) -> None:
    x = np.arange(12, dtype=float).reshape(6, 2)
    (tmp_path / "a.csv").write_text("input[0],input[1]\n" + "\n".join(f"{a},{b}" for a, b in x))
    (tmp_path / "b.csv").write_text("age,income\n" + "\n".join(f"{a},{b}" for a, b in x))
    inputs = [{"name": "input", "dtype": "float32", "shape": ["batch", 2]}]
    for name in ("a.csv", "b.csv"):
        arrays = profiles.match_inputs(profiles.load(tmp_path / name, "csv"), inputs, "csv")
        np.testing.assert_array_equal(arrays["input"], x)


def test_score_outputs_become_bins() -> None:
    out = profiles.output_profile(np.linspace(0, 1, 200).reshape(200, 1))
    assert out["kind"] == "bins" and len(out["counts"]) == len(out["edges"]) - 1 and sum(out["counts"]) == 200


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"features": np.zeros((5, 4))}, "not model inputs: features; missing inputs: input"),
        ({"input": np.zeros((5, 3))}, "has 4 features but the reference set gives 3"),
        ({"input": np.full((5, 4), np.nan)}, "NaN"),
    ],
)
def test_mismatched_reference_sets_name_the_mismatch(data: dict, words: str) -> None:
    with pytest.raises(profiles.ReferenceSetError, match=words.replace("(", r"\(")):
        profiles.match_inputs(data, INPUTS, "npz")


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("r.csv", "a,b\n1,x\n", "not a number"),
        ("r.csv", "a,b\n", "no data rows"),
        ("r.npz", "not a zip", "not a readable .npz"),
    ],
)
def test_unreadable_reference_files(tmp_path: Path, name: str, content: str, words: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(profiles.ReferenceSetError, match=words):
        profiles.load(path, name.rsplit(".", 1)[1])
