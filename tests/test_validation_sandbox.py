"""Hostile uploads meet the validation sandbox: real child processes, real onnxruntime, real limits.

Each case checks the message a person gets: it names the limit (and the setting), never carries a
traceback or a server path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.models import ApiToken
from ota import profiles, sandbox, services, synthetic, validation
from ota.limits import CRASHED_TWICE, Limits, scrub
from ota.models import Artifact, Model, ModelVersion
from tests import onnx_models as models
from tests.worker_procs import children, cmdline, wait_until

MiB = 1024 * 1024


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def run(path: Path, limits: Limits | None = None, **job: object) -> sandbox.Outcome:
    with sandbox.run(
        {"kind": "validate", "model": str(path), **job},
        limits or Limits(),
        {str(path): "model sha256:0123456789abcdef"},
        workdir=path.parent,
    ) as outcome:
        return outcome


def no_server_path(text: str, *paths: Path) -> None:
    assert "Traceback" not in text
    for p in paths:
        assert str(p) not in text
    assert not re.search(r"/\w+/\w+", text), text


@pytest.fixture(scope="session")
def npz_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1 MB on disk, 1 GiB unpacked."""
    return models.npz_bomb(tmp_path_factory.mktemp("bomb") / "bomb.npz")


# ---------------------------------------------------------------- declared sizes, checked before allocating


def test_a_huge_declared_input_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    path = save(models.huge_input(), tmp_path / "huge.onnx")
    assert path.stat().st_size < 100
    tracemalloc.start()
    try:
        with pytest.raises(validation.ValidationFailed) as failed:
            validation.validate(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert failed.value.step == "metadata" and peak < 20 * MiB  # no session, no sample input was made
    assert "[10000000, 10000000]" in failed.value.message
    assert "EDGEFLEET_VALIDATION_MAX_INPUT_ELEMENTS" in failed.value.message

    outcome = run(path)
    assert not outcome.ok and outcome.exit_status == 0 and outcome.step == "metadata"
    assert "Input 'x' is declared as [10000000, 10000000]" in outcome.error
    assert [s["name"] for s in outcome.report["steps"]] == ["load", "format", "checker", "metadata"]
    no_server_path(outcome.error, tmp_path)


def test_synthetic_inputs_are_capped_before_allocation() -> None:
    spec = [{"name": "x", "dtype": "float32", "shape": ["batch", 1000]}]
    limits = Limits(max_input_elements=16_000)
    assert synthetic.synthetic_inputs(spec, batch=16, limits=limits)["x"].shape == (16, 1000)  # at the cap
    with pytest.raises(synthetic.TooLarge, match="17,000 elements"):
        synthetic.synthetic_inputs(spec, batch=17, limits=limits)


def test_an_expand_to_1_gib_is_refused_from_its_inferred_shape(tmp_path: Path) -> None:
    path = save(models.expand_to(1 << 28), tmp_path / "expand.onnx")
    outcome = run(path)
    assert not outcome.ok and outcome.step == "metadata"
    assert "Tensor 'y' (inferred from the graph) would hold 268,435,456 elements" in outcome.error
    assert "1 GiB" in outcome.error and "EDGEFLEET_VALIDATION_MAX_TENSOR_ELEMENTS" in outcome.error


@pytest.mark.parametrize("build", [models.expand_to, models.hidden_expand_to])
def test_tensors_at_the_cap_pass_and_one_more_element_is_refused(tmp_path: Path, build: object) -> None:
    cap = 64 * 64
    ok = run(save(build(cap), tmp_path / "at.onnx"), Limits(max_tensor_elements=cap))
    assert ok.ok, ok.error
    over = run(save(build(cap + 64), tmp_path / "over.onnx"), Limits(max_tensor_elements=cap))
    assert not over.ok and f"more than the {cap:,} allowed" in over.error


def test_a_tensor_hidden_from_shape_inference_dies_on_the_memory_limit_in_the_child(tmp_path: Path) -> None:
    path = save(models.hidden_expand_to(1 << 28, reduce=True), tmp_path / "hidden.onnx")
    outcome = run(path, Limits(memory_bytes=256 * MiB))
    assert not outcome.ok and outcome.step == "smoke"
    assert outcome.error.startswith("The model needs more than 256 MiB of memory to run on a sample input")
    assert "EDGEFLEET_VALIDATION_MEMORY_MB" in outcome.error
    no_server_path(outcome.error, tmp_path)


def test_an_output_over_the_cap_is_refused_after_the_sample_run(tmp_path: Path) -> None:
    outcome = run(save(models.hidden_expand_to(1 << 20), tmp_path / "wide.onnx"), Limits(max_tensor_elements=1000))
    assert not outcome.ok and outcome.step == "smoke"
    assert "Tensor 'y' (output on a sample input) would hold 1,048,576 elements" in outcome.error


def test_external_data_hidden_in_a_subgraph_is_refused_before_onnxruntime_reads_files(tmp_path: Path) -> None:
    """onnxruntime would read a file next to the model (any file, by relative path) into the tensor."""
    model = models.busy_loop(iterations=1, n=2)
    body = model.graph.node[0].attribute[0].g
    leak = onnx.helper.make_tensor("leak", onnx.TensorProto.FLOAT, [1], [0.0])
    leak.ClearField("float_data")
    leak.data_location = onnx.TensorProto.EXTERNAL
    leak.external_data.add(key="location", value="../../secret_key")
    body.node.append(onnx.helper.make_node("Constant", [], ["unused"], value=leak))
    with pytest.raises(validation.ValidationFailed) as failed:
        validation.validate(save(model, tmp_path / "leak.onnx"))
    assert failed.value.step == "format" and "external data" in failed.value.message


# ---------------------------------------------------------------- time, CPU and crashes


@pytest.mark.slow
def test_the_wall_clock_kills_the_child_and_names_the_step(tmp_path: Path) -> None:
    outcome = run(save(models.busy_loop(), tmp_path / "slow.onnx"), Limits(wall_seconds=8))
    assert not outcome.ok and outcome.exit_status == -signal.SIGKILL
    assert outcome.error.startswith("Validation took longer than 8 s (EDGEFLEET_VALIDATION_TIMEOUT) while")
    assert outcome.report["steps"][-1] == {"name": outcome.step or "start", "ok": False, "error": outcome.error}


@pytest.mark.slow
def test_the_cpu_limit_stops_the_child(tmp_path: Path) -> None:
    outcome = run(save(models.busy_loop(), tmp_path / "busy.onnx"), Limits(cpu_seconds=4, wall_seconds=120))
    assert not outcome.ok and outcome.exit_status == -signal.SIGXCPU
    assert outcome.error.startswith("Validation used more than 4 s of CPU time (EDGEFLEET_VALIDATION_CPU_SECONDS)")


@pytest.mark.slow
def test_a_child_killed_by_a_signal_becomes_a_sentence(tmp_path: Path) -> None:
    """onnxruntime segfaulting is simulated by sending the child SIGSEGV while it runs a slow model."""
    path = save(models.busy_loop(), tmp_path / "segv.onnx")
    result: list[sandbox.Outcome] = []
    t = threading.Thread(target=lambda: result.append(run(path, Limits(wall_seconds=120))))
    t.start()
    child = wait_until(
        lambda: next((p for p in children(os.getpid()) if "ota.sandbox_child" in cmdline(p)), None), 60, "the child"
    )
    steps = next(tmp_path.glob("sandbox-*")) / "steps"
    wait_until(lambda: steps.exists() and "smoke" in steps.read_text(), 60, "the smoke step")
    os.kill(child, signal.SIGSEGV)
    t.join(timeout=60)
    outcome = result[0]
    assert not outcome.ok and outcome.exit_status == -signal.SIGSEGV and outcome.step == "smoke"
    assert outcome.error.startswith("The validation process crashed (SIGSEGV) while running the model on a sample")
    assert [s["ok"] for s in outcome.report["steps"]] == [True] * 5 + [False]
    assert not list(tmp_path.glob("sandbox-*")), "the job directory is removed"


def test_failure_statuses_map_to_messages() -> None:
    limits = Limits(memory_bytes=2048 * MiB)
    assert sandbox.failure_message(3, False, "session", limits).startswith(
        "The model needs more than 2 GiB of memory to load into onnxruntime"
    )
    assert "crashed (SIGABRT)" in sandbox.failure_message(-signal.SIGABRT, False, "smoke", limits)
    assert "exited with status 1" in sandbox.failure_message(1, False, None, limits)


def test_a_crash_while_quantizing_keeps_the_fp32_result(tmp_path: Path) -> None:
    """The child saves the fp32 outcome before quantizing; a kill then stages without the variant."""
    path = save(models.mlp_classifier(), tmp_path / "m.onnx")
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    partial = {"ok": True, "report": {"steps": [{"name": "smoke", "ok": True}]}, "int8_pending": True}
    (jobdir / "result.json").write_text(__import__("json").dumps(partial))
    (jobdir / "steps").write_text("start\nsmoke\nint8_variant\n")
    outcome = sandbox._outcome(jobdir, {"kind": "validate", "model": str(path)}, -9, False, Limits(), {})
    assert outcome.ok and outcome.variant_path is None
    assert outcome.report["int8_error"].startswith("The int8 variant could not be made: The validation process crashed")


# ---------------------------------------------------------------- what the child is and may do


def test_the_child_sees_no_secrets_and_writes_only_its_job_directory(tmp_path: Path) -> None:
    env = sandbox.child_env(tmp_path, Limits())
    assert not {k for k in env if "SECRET" in k or "DATABASE" in k or "REDIS" in k or "SIGNING" in k}
    assert env["HOME"] == str(tmp_path) and env["TMPDIR"].startswith(str(tmp_path))


def test_a_good_model_is_staged_by_a_run_inside_the_limits(tmp_path: Path) -> None:
    path = save(models.mlp_classifier(), tmp_path / "good.onnx")
    outcome = run(path, Limits(memory_bytes=512 * MiB), int8=True)
    assert outcome.ok and outcome.report["limits"]["memory_bytes"] == 512 * MiB
    assert [s["name"] for s in outcome.report["steps"]][-1] == "int8_variant"
    assert outcome.variant_path is not None and outcome.variant_metrics["agreement"] >= 0.8


def test_the_worker_side_never_imports_onnxruntime() -> None:
    """Everything a worker (and the web) loads: no onnxruntime, so no session of an upload can open there."""
    code = (
        "import django, sys; django.setup(); from edgefleet.celery import app; app.loader.import_default_modules(); "
        "import ota.services, ota.tasks, ota.sandbox, edgefleet.urls; "
        "print('onnxruntime' in sys.modules)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "edgefleet.settings_test"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- reference sets


def test_an_npz_bomb_is_refused_from_its_headers_without_unpacking(npz_bomb: Path) -> None:
    assert npz_bomb.stat().st_size < 2 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(profiles.ReferenceSetError) as refused:
            profiles.load(npz_bomb, "npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * MiB
    assert str(refused.value).startswith("The reference set unpacks to 1.0 GiB from a 1019.")
    assert "EDGEFLEET_REFERENCE_MAX_BYTES" in str(refused.value)


def test_the_reference_cap_is_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "r.npz"
    np.savez(path, input=np.zeros((100, 4), np.float32))
    size = profiles.npz_unpacked_bytes(path, max_bytes=10**9)
    assert profiles.npz_unpacked_bytes(path, max_bytes=size) == size
    with pytest.raises(profiles.ReferenceSetError, match="unpacks to"):
        profiles.npz_unpacked_bytes(path, max_bytes=size - 1)


def test_an_npy_header_claiming_more_than_its_file_holds_is_refused(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "liar.npz"
    header = bytearray(b"\x93NUMPY\x01\x00")
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 4), }"
    text += " " * (64 - (10 + len(text) + 1) % 64) + "\n"
    header += len(text).to_bytes(2, "little") + text.encode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("input.npy", bytes(header) + bytes(64))
    with pytest.raises(profiles.ReferenceSetError, match=r"declares shape \[1000000000, 4\]"):
        profiles.load(path, "npz")


def test_a_bomb_reference_upload_is_refused_and_nothing_is_stored(
    client: Client, operator: object, store: Path, npz_bomb: Path
) -> None:
    token = ApiToken.issue(operator, "ci")[1]
    response = client.post(
        "/api/v1/models/fraud/versions",
        {
            "label": "v1",
            "file": SimpleUploadedFile("m.onnx", models.mlp_classifier().SerializeToString()),
            "reference": SimpleUploadedFile("ref.npz", npz_bomb.read_bytes()),
        },
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "bad_reference" and error["field"] == "reference"
    assert error["message"].startswith("The reference set unpacks to 1.0 GiB")
    assert not ModelVersion.objects.exists() and not Artifact.objects.exists()


# ---------------------------------------------------------------- messages name the artifact, not the path


def test_a_rejection_names_the_artifact_not_the_server_path(
    client: Client, operator: object, store: Path, settings: object
) -> None:
    token = ApiToken.issue(operator, "ci")[1]
    content = models.unknown_op().SerializeToString()
    response = client.post(
        "/api/v1/models/fraud/versions",
        {"label": "v1", "file": SimpleUploadedFile("m.onnx", content)},
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    version = ModelVersion.objects.get(pk=ModelVersion.objects.get(label="v1").pk)
    assert response.status_code == 201
    assert services.run_validation(version.pk) == "rejected"
    version.refresh_from_db()
    assert f"model sha256:{version.artifact_id[:16]}" in version.error
    assert "Frobnicate" in version.error
    for text in [version.error, *(s.get("error", "") for s in version.report["steps"])]:
        no_server_path(text, store, Path(settings.DATA_DIR))
    page = client.get("/api/v1/models/fraud/versions/v1", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert str(store) not in str(page)


def test_scrub_keeps_the_words_and_drops_the_paths() -> None:
    legacy = (
        "onnxruntime could not load the model: Load model from /srv/var/artifacts/artifacts/4b/4bc0ffee failed: "
        "/onnxruntime_src/onnxruntime/core/graph/model.cc:180 bad op"
    )
    text = scrub(legacy, {"/srv/var/artifacts/artifacts/4b/4bc0ffee": "model sha256:4bc0ffee"})
    assert text == (
        "onnxruntime could not load the model: Load model from model sha256:4bc0ffee failed: model.cc:180 bad op"
    )
    assert (
        scrub("see /tmp/x/y.npz and 1/2 and https://example.org/a/b") == "see y.npz and 1/2 and https://example.org/a/b"
    )
    assert "crashed the worker twice" in CRASHED_TWICE


def test_rejections_stored_before_the_fix_lose_their_paths(db: None) -> None:
    import importlib

    from django.apps import apps

    migration = importlib.import_module("ota.migrations.0002_validation_lease")
    v = ModelVersion.objects.create(
        model=Model.objects.create(name="legacy"),
        label="v1",
        status="rejected",
        artifact=Artifact.objects.create(sha256="4b" * 32, size=1, storage_key="artifacts/4b/x"),
        error="onnxruntime could not load the model: Load model from /srv/var/artifacts/artifacts/4b/4b4b failed",
        report={"steps": [{"name": "session", "ok": False, "error": "Load model from /srv/var/artifacts/4b/4b4b"}]},
    )
    migration.scrub_paths(apps, None)
    v.refresh_from_db()
    assert v.error == "onnxruntime could not load the model: Load model from 4b4b failed"
    assert v.report["steps"][0]["error"] == "Load model from 4b4b"
