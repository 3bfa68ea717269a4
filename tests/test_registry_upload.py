"""Uploading versions through the browser form and the JSON API, every bad input, and the pages.

Validation itself runs here by calling ``ota.services.run_validation`` directly (what the task
does); ``test_registry_worker.py`` runs it on a real Celery worker.
"""

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.models import ApiToken, AuditEntry
from ota import services
from ota.models import Artifact, Model, ModelVersion, Variant
from tests.onnx_models import mlp_classifier

pytestmark = pytest.mark.django_db


def onnx_bytes(**kwargs: object) -> bytes:
    return mlp_classifier(**kwargs).SerializeToString()


def upload_file(content: bytes, name: str = "model.onnx") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def temp_uploads(settings: object) -> set[str]:
    return set(os.listdir(settings.FILE_UPLOAD_TEMP_DIR))


@pytest.fixture
def token(operator: object) -> str:
    return ApiToken.issue(operator, "pipeline")[1]


def api_upload(client: Client, token: str | None, name: str = "fraud", **data: object) -> object:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    data.setdefault("label", "v1")
    if "file" not in data:
        data["file"] = upload_file(onnx_bytes())
    return client.post(f"/api/v1/models/{name}/versions", data, **headers)


def assert_error(response: object, status: int, code: str, field: str | None = "__any__") -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code and len(body["error"]["message"]) > 10
    if field != "__any__":
        assert body["error"]["field"] == field
    return body["error"]


def nothing_stored(root: Path) -> None:
    assert not ModelVersion.objects.exists() and not Artifact.objects.exists()
    assert stored_files(root) == []


# ---------------------------------------------------------------- the browser form


def test_form_upload_stores_content_addressed_and_redirects(operator_client: Client, store: Path) -> None:
    content = onnx_bytes()
    response = operator_client.post(
        "/models/upload/",
        {"name": "fraud", "label": "v1", "notes": "first", "file": upload_file(content)},
        REMOTE_ADDR="10.0.0.7",
    )
    assert response.status_code == 302 and response["Location"] == "/models/fraud/versions/v1/"
    version = ModelVersion.objects.get()
    sha = hashlib.sha256(content).hexdigest()
    assert version.status == "validating" and version.notes == "first" and version.validation_attempts == 1
    assert version.artifact.sha256 == sha and version.artifact.size == len(content)
    assert version.artifact.storage_key == f"artifacts/{sha[:2]}/{sha}"
    assert (store / version.artifact.storage_key).read_bytes() == content
    entry = AuditEntry.objects.get(action="model_version.upload")
    assert entry.actor_label == "olivia" and entry.ip == "10.0.0.7" and entry.details["sha256"] == sha


def test_xhr_upload_answers_json_for_the_progress_page(operator_client: Client, store: Path) -> None:
    response = operator_client.post(
        "/models/upload/",
        {"name": "fraud", "label": "v1", "file": upload_file(onnx_bytes()), "int8": "on"},
        HTTP_X_REQUESTED_WITH="XMLHttpRequest",
    )
    assert response.status_code == 201
    assert response.json() == {"url": "/models/fraud/versions/v1/", "status": "validating"}
    assert ModelVersion.objects.get().want_int8 is True


def test_upload_page_renders_form_with_existing_names(operator_client: Client) -> None:
    Model.objects.create(name="existing-model")
    page = operator_client.get("/models/upload/").content.decode()
    assert 'id="dropzone"' in page and 'id="progress-bar"' in page and "existing-model" in page
    assert 'name="reference"' in page and 'name="int8"' in page and "js/upload.js" in page


def test_form_errors_are_shown_on_the_page(operator_client: Client, store: Path) -> None:
    response = operator_client.post("/models/upload/", {"name": "fraud", "label": "v1", "file": upload_file(b"")})
    assert response.status_code == 400
    assert "The model file is empty" in response.content.decode()
    xhr = operator_client.post(
        "/models/upload/",
        {"name": "Not A Slug", "label": "v1", "file": upload_file(onnx_bytes())},
        HTTP_X_REQUESTED_WITH="XMLHttpRequest",
    )
    assert_error(xhr, 400, "bad_name", "name")
    nothing_stored(store)


def test_form_needs_a_csrf_token(operator: object, store: Path) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = client.post("/models/upload/", {"name": "fraud", "label": "v1", "file": upload_file(onnx_bytes())})
    assert response.status_code == 403
    nothing_stored(store)


def test_viewer_cannot_upload_and_anonymous_is_sent_to_login(viewer_client: Client, client: Client) -> None:
    assert viewer_client.get("/models/upload/").status_code == 403
    response = viewer_client.post(
        "/models/upload/", {"name": "fraud", "label": "v1", "file": upload_file(onnx_bytes())}
    )
    assert response.status_code == 403 and not ModelVersion.objects.exists()
    anon = Client().get("/models/upload/")
    assert anon.status_code == 302 and anon["Location"].startswith("/login/")


# ---------------------------------------------------------------- the JSON API


def test_api_upload_returns_201_with_status_url_and_get_reports(client: Client, token: str, store: Path) -> None:
    response = api_upload(client, token, notes="nightly", int8="true")
    assert response.status_code == 201
    body = response.json()
    assert body["model"] == "fraud" and body["label"] == "v1" and body["status"] == "validating"
    assert body["status_url"] == "/api/v1/models/fraud/versions/v1" and body["sha256"] and body["size"] > 0
    entry = AuditEntry.objects.get(action="model_version.upload")
    assert entry.actor_label == "api:pipeline" and entry.details["int8"] is True

    status = client.get(body["status_url"], HTTP_AUTHORIZATION=f"Bearer {token}")
    assert status.status_code == 200 and status.json()["status"] == "validating"
    services.run_validation(ModelVersion.objects.get().pk)
    done = client.get(body["status_url"], HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert done["status"] == "staged" and done["report"]["opset"] == 17 and done["error"] is None
    assert {v["kind"] for v in done["variants"]} == {"int8", "fp16", "optimized"}  # static int8 needs reference data
    assert "reference data set" in done["report"]["variant_errors"]["int8_static"]


def test_api_unknown_version_is_404(client: Client, token: str) -> None:
    response = client.get("/api/v1/models/fraud/versions/v9", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_error(response, 404, "not_found")


def test_api_needs_an_operator_token(client: Client, viewer: object, store: Path) -> None:
    assert_error(api_upload(client, None), 401, "unauthorized")
    assert_error(api_upload(client, "efa_not-a-real-token"), 401, "unauthorized")
    viewer_token = ApiToken.issue(viewer, "viewer-token")[1]
    assert_error(api_upload(client, viewer_token), 401, "unauthorized")
    assert_error(client.get("/api/v1/models/fraud/versions/v1"), 401, "unauthorized")
    nothing_stored(store)


def test_api_duplicate_label_and_replayed_request_are_409(client: Client, token: str, store: Path) -> None:
    assert api_upload(client, token).status_code == 201
    replay = api_upload(client, token)  # the same request again
    err = assert_error(replay, 409, "duplicate_bytes", "file")
    assert "already version 'v1'" in err["message"]
    other_bytes = api_upload(client, token, file=upload_file(onnx_bytes(seed=1)))
    err = assert_error(other_bytes, 409, "duplicate_label", "label")
    assert "already has a version 'v1'" in err["message"]
    assert ModelVersion.objects.count() == 1 and Artifact.objects.count() == 1
    assert len(stored_files(store)) == 1  # the refused second file was not kept


def test_same_bytes_for_two_models_are_stored_once(client: Client, token: str, store: Path) -> None:
    content = onnx_bytes()
    assert api_upload(client, token, "fraud", file=upload_file(content)).status_code == 201
    assert api_upload(client, token, "fraud-eu", file=upload_file(content)).status_code == 201
    assert ModelVersion.objects.count() == 2 and Artifact.objects.count() == 1
    assert len(stored_files(store)) == 1


@pytest.mark.parametrize(
    ("data", "status", "code", "field"),
    [
        ({"file": None}, 400, "missing_file", "file"),
        ({"file": upload_file(b"")}, 400, "empty_file", "file"),
        ({"label": ""}, 400, "bad_label", "label"),
        ({"label": "v1/../../etc"}, 400, "bad_label", "label"),
        ({"label": "x" * 65}, 400, "bad_label", "label"),
        ({"notes": "n" * 10_001}, 400, "bad_notes", "notes"),
        ({"reference": upload_file(b"a,b\n1,2\n", "ref.txt")}, 400, "bad_reference", "reference"),
        ({"reference": upload_file(b"a,b\n1,oops\n", "ref.csv")}, 400, "bad_reference", "reference"),
        ({"reference": upload_file(b"PK garbage", "ref.npz")}, 400, "bad_reference", "reference"),
        ({"reference": upload_file(b"", "ref.npz")}, 400, "bad_reference", "reference"),
    ],
)
def test_api_bad_inputs_are_clear_and_store_nothing(
    client: Client, token: str, store: Path, data: dict, status: int, code: str, field: str
) -> None:
    if data.get("file", "") is None:
        data.pop("file")
        data["other"] = "x"
        response = client.post("/api/v1/models/fraud/versions", {"label": "v1"}, HTTP_AUTHORIZATION=f"Bearer {token}")
    else:
        response = api_upload(client, token, **data)
    assert_error(response, status, code, field)
    nothing_stored(store)
    assert not Model.objects.filter(versions__isnull=False).exists()


def test_api_bad_model_names(client: Client, token: str, store: Path) -> None:
    assert_error(api_upload(client, token, "Fraud Model"), 400, "bad_name", "name")
    assert_error(api_upload(client, token, "upload"), 400, "bad_name", "name")
    nothing_stored(store)


def test_api_malformed_and_non_multipart_bodies(client: Client, token: str, store: Path) -> None:
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    not_multipart = client.post(
        "/api/v1/models/fraud/versions", json.dumps({"label": "v1"}), content_type="application/json", **auth
    )
    assert_error(not_multipart, 400, "not_multipart")
    broken = client.post(
        "/api/v1/models/fraud/versions",
        b"--xyz\r\nContent-Disposition: form-data; name=label\r\n\r\nv1",
        content_type="multipart/form-data",  # no boundary
        **auth,
    )
    assert_error(broken, 400, "bad_request")
    nothing_stored(store)


def test_over_the_limit_is_413_while_streaming_and_leaves_no_temp_file(
    client: Client, token: str, store: Path, settings: object
) -> None:
    settings.EDGEFLEET_MAX_UPLOAD_BYTES = 10_000
    before = temp_uploads(settings)
    response = api_upload(client, token, file=upload_file(os.urandom(50_000)))
    err = assert_error(response, 413, "too_large", "file")
    assert "upload limit" in err["message"] and "9.8 KiB" in err["message"]
    assert temp_uploads(settings) == before
    nothing_stored(store)
    # The reference set counts against the same limit.
    response = api_upload(client, token, reference=upload_file(os.urandom(20_000), "r.npz"))
    assert_error(response, 413, "too_large", "reference")
    nothing_stored(store)


def test_a_body_declaring_more_than_the_limit_stops_before_reading(
    operator_client: Client, store: Path, settings: object
) -> None:
    settings.EDGEFLEET_MAX_UPLOAD_BYTES = 1000
    response = operator_client.post(
        "/models/upload/",
        {"name": "fraud", "label": "v1", "file": upload_file(b"\0" * (3 * 1024 * 1024))},
        HTTP_X_REQUESTED_WITH="XMLHttpRequest",
    )
    assert_error(response, 413, "too_large", "file")
    nothing_stored(store)


def test_uploaded_temp_file_is_moved_not_left_behind(client: Client, token: str, store: Path, settings: object) -> None:
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    before = temp_uploads(settings)
    assert api_upload(client, token).status_code == 201
    assert temp_uploads(settings) == before


# ---------------------------------------------------------------- validation outcomes


def upload_and_validate(client: Client, token: str, label: str = "v1", **data: object) -> ModelVersion:
    response = api_upload(client, token, label=label, **data)
    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get(label=label)
    services.run_validation(version.pk)
    version.refresh_from_db()
    return version


def test_good_model_is_staged_and_sets_the_contract(client: Client, token: str, store: Path) -> None:
    version = upload_and_validate(client, token)
    assert version.status == "staged" and version.error == "" and version.validated_at
    assert version.model.contract == {
        "version": "v1",
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [{"name": "probs", "dtype": "float32", "shape": ["batch", 3]}],
    }
    assert version.reference_profile is None  # no reference set: telemetry learns it later
    assert AuditEntry.objects.filter(action="model_version.staged", actor_label="system").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (os.urandom(3000), "not an ONNX model"),
        (onnx_bytes()[:300], "ONNX"),
    ],
)
def test_random_and_truncated_files_are_rejected_with_a_reason(
    client: Client, token: str, store: Path, content: bytes, words: str
) -> None:
    version = upload_and_validate(client, token, file=upload_file(content))
    assert version.status == "rejected" and words in version.error
    assert version.report["steps"][-1]["ok"] is False
    body = client.get("/api/v1/models/fraud/versions/v1", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert body["status"] == "rejected" and words in body["error"]


def test_unsupported_opset_upload_is_rejected(client: Client, token: str, store: Path) -> None:
    model = mlp_classifier()
    model.opset_import[0].version = 99
    version = upload_and_validate(client, token, file=upload_file(model.SerializeToString()))
    assert version.status == "rejected" and "opset 99" in version.error and "opset_version=" in version.error


def test_external_data_upload_is_rejected(client: Client, token: str, store: Path, tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(mlp_classifier(), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    version = upload_and_validate(client, token, file=upload_file(path.read_bytes()))
    assert version.status == "rejected" and "external data" in version.error


def test_breaking_change_against_the_previous_staged_version(client: Client, token: str, store: Path) -> None:
    upload_and_validate(client, token, "v1")
    v2 = upload_and_validate(client, token, "v2", file=upload_file(onnx_bytes(n_features=5, input_name="x", seed=2)))
    assert v2.status == "staged"
    assert v2.report["breaking_changes"] == ["input 'input' was removed", "input 'x' is new (devices do not send it)"]
    contract_step = next(s for s in v2.report["steps"] if s["name"] == "contract")
    assert contract_step["compared_with"] == "v1"
    v3 = upload_and_validate(client, token, "v3", file=upload_file(onnx_bytes(n_features=5, input_name="x", seed=3)))
    assert v3.report["breaking_changes"] == []  # compared with v2 now


def test_reference_set_builds_the_profile(client: Client, token: str, store: Path) -> None:
    x = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
    version = upload_and_validate(client, token, reference=upload_file(npz_bytes(input=x), "ref.npz"))
    assert version.status == "staged" and version.reference_artifact.kind == "npz"
    profile = version.reference_profile
    assert profile["source"] == "reference_set" and profile["n"] == 300
    assert [f["name"] for f in profile["features"]] == [f"input[{j}]" for j in range(4)]
    assert all(sum(f["counts"]) == 300 and len(f["counts"]) == 20 for f in profile["features"])
    assert profile["output"]["kind"] == "classes" and sum(profile["output"]["counts"]) == 300
    assert any(s["name"] == "reference_profile_build" and s["ok"] for s in version.report["steps"])


def test_reference_set_not_matching_the_inputs_is_rejected_naming_it(client: Client, token: str, store: Path) -> None:
    csv = "age,income,score\n1,2,3\n4,5,6\n"
    version = upload_and_validate(client, token, reference=upload_file(csv.encode(), "ref.csv"))
    assert version.status == "rejected"
    assert "Reference data set" in version.error and "4 features" in version.error and "gives 3" in version.error


def test_int8_variant_is_a_second_artifact_with_metrics(client: Client, token: str, store: Path) -> None:
    x = np.random.default_rng(5).normal(size=(200, 4)).astype(np.float32)
    version = upload_and_validate(client, token, int8="1", reference=upload_file(npz_bytes(input=x), "ref.npz"))
    variant = Variant.objects.get(version=version, kind="int8")
    assert variant.artifact_id != version.artifact_id
    kinds = set(Variant.objects.filter(version=version).values_list("kind", flat=True))
    assert kinds == {"int8", "int8_static", "fp16", "optimized"}
    assert len({v.artifact_id for v in Variant.objects.filter(version=version)}) == 4  # each its own artifact
    assert (store / variant.artifact.storage_key).exists()
    m = variant.metrics
    assert m["size"] == variant.artifact.size and set(m["latency_ms"]) == {"p50", "p95"}
    assert m["source"] == "reference" and m["compared"] == 200
    assert 0.8 <= m["agreement"] <= 1.0 and m["max_abs_diff"] >= 0


def test_orphan_artifacts_are_removed(store: Path, operator: object) -> None:
    from django.core.files.base import ContentFile

    content = b"unreferenced bytes"
    sha = hashlib.sha256(content).hexdigest()
    services.store_bytes(ContentFile(content), sha, len(content), "onnx")
    assert len(stored_files(store)) == 1
    assert services.delete_orphan_artifacts() == 1
    assert not Artifact.objects.exists() and stored_files(store) == []


# ---------------------------------------------------------------- pages


def as_user(user: object) -> Client:
    """A client of its own: the ``operator_client``/``viewer_client`` fixtures share one client."""
    c = Client()
    c.force_login(user)
    return c


def test_model_list_empty_state_tells_how_to_upload(operator_client: Client, viewer: object) -> None:
    page = operator_client.get("/models/").content.decode()
    assert "No models yet" in page and "/models/upload/" in page and "/api/v1/models/" in page
    assert "ask one" in as_user(viewer).get("/models/").content.decode()


def test_pages_show_versions_report_variants_and_profile(
    client: Client, token: str, store: Path, viewer_client: Client
) -> None:
    x = np.random.default_rng(3).normal(size=(100, 4)).astype(np.float32)
    upload_and_validate(client, token, int8="1", reference=upload_file(npz_bytes(input=x), "ref.npz"))
    listing = viewer_client.get("/models/").content.decode()
    assert "/models/fraud/" in listing and "from v1" in listing
    detail = viewer_client.get("/models/fraud/").content.decode()
    assert "/models/fraud/versions/v1/" in detail and 'class="badge staged"' in detail
    page = viewer_client.get("/models/fraud/versions/v1/")
    html = page.content.decode()
    assert "vendor/plotly.min.js" in html and 'id="profile-figures"' in html
    assert 'id="validation-steps"' in html and "checker" in html and "latency" in html
    assert "int8" in html and "input[3]" in html
    figures = page.context["figures"]
    assert figures[0]["id"] == "output" and len(figures) == 1 + 4
    # A feature is drawn as a density over its value axis (quantile bins as bars were all one height):
    # its area is the whole reference set.
    feature = figures[1]["data"][0]
    assert feature["type"] == "scatter" and feature["line"]["shape"] == "hv"
    edges, dens = feature["x"], feature["y"][:-1]
    assert sum(d * (b - a) for d, a, b in zip(dens, edges, edges[1:], strict=False)) == pytest.approx(1.0)
    assert "data-poll-url" not in html  # finished: nothing to poll
    status = viewer_client.get("/models/fraud/versions/v1/status").content.decode()
    assert 'data-status="staged"' in status


def test_validating_version_page_polls_its_status(operator_client: Client, store: Path) -> None:
    operator_client.post("/models/upload/", {"name": "fraud", "label": "v1", "file": upload_file(onnx_bytes())})
    html = operator_client.get("/models/fraud/versions/v1/").content.decode()
    assert 'data-poll-url="/models/fraud/versions/v1/status"' in html and "validation is running" in html.lower()
    assert operator_client.get("/models/fraud/versions/v9/").status_code == 404
    assert operator_client.get("/models/nope/").status_code == 404


def test_archive_is_operator_only_and_audited(
    client: Client, token: str, store: Path, operator: object, viewer: object
) -> None:
    upload_and_validate(client, token)
    operator_client, viewer_client = as_user(operator), as_user(viewer)
    assert viewer_client.post("/models/fraud/versions/v1/archive").status_code == 403
    assert ModelVersion.objects.get().status == "staged"
    response = operator_client.post("/models/fraud/versions/v1/archive")
    assert response.status_code == 302 and ModelVersion.objects.get().status == "archived"
    assert AuditEntry.objects.get(action="model_version.archive").details == {"was": "staged"}
    again = operator_client.post("/models/fraud/versions/v1/archive", follow=True)
    assert "already archived" in again.content.decode()
    assert operator_client.get("/models/fraud/versions/v1/archive").status_code == 405


def test_variant_table_plot_and_keeping_a_variant_out(
    client: Client, token: str, store: Path, operator: object, viewer: object
) -> None:
    from rollout import manifest

    x = np.random.default_rng(7).normal(size=(120, 4)).astype(np.float32)
    version = upload_and_validate(client, token, int8="1", reference=upload_file(npz_bytes(input=x), "ref.npz"))
    page = as_user(viewer).get("/models/fraud/versions/v1/")
    html = page.content.decode()
    assert 'id="variant-table"' in html and 'id="variant-figures"' in html and "on the front" in html
    assert "not applicable" not in html  # a reference set was given: static int8 was built
    rows = page.context["variant_rows"]
    assert [r["kind"] for r in rows] == ["fp32", "fp16", "int8", "int8_static", "optimized"]
    assert any(r["front"] for r in rows) and rows[0]["agreement"] == 1.0
    fig = page.context["variant_figures"][0]
    assert fig["id"] == "variants" and "Pareto front" in fig["alt"]

    url = "/models/fraud/versions/v1/variants/int8/release"
    assert as_user(viewer).post(url, {"released": "0"}).status_code == 403
    ops = as_user(operator)
    assert ops.post(url, {"released": "0"}).status_code == 302
    assert Variant.objects.get(version=version, kind="int8").released is False
    assert AuditEntry.objects.filter(action="model_version.variant_kept_out").count() == 1
    missing = ops.post("/models/fraud/versions/v1/variants/int4/release", {"released": "0"}, follow=True)
    assert missing.status_code == 200 and "has no &#x27;int4&#x27; variant" in missing.content.decode()

    # The manifest's rule never picks a build that was kept out.
    version = ModelVersion.objects.prefetch_related("variants__artifact").get(pk=version.pk)
    arts = {"fp32": manifest.ArtifactRef(version.artifact_id, version.artifact.size, "fp32", 1.0, 1.0)}
    for v in version.variants.all():
        m = v.metrics
        arts[v.kind] = manifest.ArtifactRef(
            v.artifact_id, v.artifact.size, v.kind, m["latency_ms"]["p50"], m["agreement"], v.released
        )
    small = {"ram_mb": 256, "accelerator": "none"}
    assert manifest.choose_variant(small, arts) != "int8"
    assert manifest.choose_variant({"ram_mb": 8192, "accelerator": "gpu"}, arts) == "fp32"
