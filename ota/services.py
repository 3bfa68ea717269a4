"""What operators and the validation job do with the registry; views, API and tasks stay thin.

Uploads arrive as files already on disk with their sha256 (see ``ota.uploads``). ``create_version``
checks everything cheap synchronously (names, duplicates, empty file, readable reference set) so a
bad upload leaves nothing stored; the expensive checks run in ``run_validation`` on a worker.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from accounts.audit import record
from ota import profiles, quantize, validation
from ota.models import Artifact, Model, ModelVersion, Variant

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = {"upload"}
MAX_NOTES = 10_000
MAX_ATTEMPTS = 3
REFERENCE_KINDS = {".npz": "npz", ".csv": "csv"}


@dataclass
class RegistryError(Exception):
    """A refused request, in the API's error shape: ``{"error": {"code","message","field"}}``."""

    code: str
    message: str
    field: str | None = None
    status: int = 400

    def __str__(self) -> str:
        return self.message

    def as_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def too_large_error(field: str = "file") -> RegistryError:
    limit = settings.EDGEFLEET_MAX_UPLOAD_BYTES
    return RegistryError(
        "too_large",
        f"The file is larger than the upload limit of {human_size(limit)} (EDGEFLEET_MAX_UPLOAD_BYTES). "
        "Upload a smaller model (e.g. the int8 build) or ask an admin to raise the limit.",
        field,
        413,
    )


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# ---------------------------------------------------------------- storage


def storage_key(sha256: str) -> str:
    return f"artifacts/{sha256[:2]}/{sha256}"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def store_bytes(file: Any, sha256: str, size: int, kind: str) -> tuple[Artifact, bool]:
    """Content-addressed store: the same bytes are kept once. Returns (artifact, file newly written)."""
    key = storage_key(sha256)
    written = False
    if not default_storage.exists(key):
        saved = default_storage.save(key, file if hasattr(file, "chunks") else File(file, name=key))
        if saved != key:  # lost a race with an identical upload: keep the first copy
            default_storage.delete(saved)
        else:
            written = True
    artifact, _ = Artifact.objects.get_or_create(
        sha256=sha256, defaults={"size": size, "storage_key": key, "kind": kind}
    )
    return artifact, written


@contextmanager
def local_path(artifact: Artifact) -> Iterator[Path]:
    """A local file with the artifact's bytes (the stored file itself when storage is local)."""
    try:
        local = Path(default_storage.path(artifact.storage_key))
    except NotImplementedError:
        local = None
    if local is not None:
        yield local
        return
    suffix = ".onnx" if artifact.kind == "onnx" else f".{artifact.kind}"
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=settings.FILE_UPLOAD_TEMP_DIR) as tmp:
        with default_storage.open(artifact.storage_key, "rb") as src:
            for chunk in iter(lambda: src.read(1024 * 1024), b""):
                tmp.write(chunk)
        tmp.flush()
        yield Path(tmp.name)


def delete_orphan_artifacts(min_age: timedelta = timedelta(0)) -> int:
    """Remove artifacts nothing references (rows and bytes). Returns how many went."""
    cutoff = timezone.now() - min_age
    removed = 0
    orphans = Artifact.objects.filter(
        versions__isnull=True, reference_for__isnull=True, variants__isnull=True, created_at__lte=cutoff
    )
    for artifact in orphans:
        try:
            with transaction.atomic():
                artifact.delete()
        except ProtectedError:
            continue  # another app (e.g. a signed release) still points at it
        default_storage.delete(artifact.storage_key)
        removed += 1
    return removed


# ---------------------------------------------------------------- upload


def reference_kind(filename: str) -> str:
    kind = REFERENCE_KINDS.get(Path(filename or "").suffix.lower())
    if kind is None:
        raise RegistryError("bad_reference", "The reference data set must be an .npz or .csv file.", "reference")
    return kind


def check_fields(name: str, label: str, notes: str) -> None:
    if not NAME_RE.match(name or ""):
        raise RegistryError(
            "bad_name",
            "A model name is a slug: lower-case letters, digits, '-' and '_' (at most 100), e.g. 'fraud-detector'.",
            "name",
        )
    if name in RESERVED_NAMES:
        raise RegistryError("bad_name", f"'{name}' is reserved; choose another model name.", "name")
    if not LABEL_RE.match(label or ""):
        raise RegistryError(
            "bad_label",
            "A version label is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. 'v2'.",
            "label",
        )
    if len(notes or "") > MAX_NOTES:
        raise RegistryError("bad_notes", f"Notes are limited to {MAX_NOTES} characters.", "notes")


def create_version(
    *,
    name: str,
    label: str,
    notes: str,
    upload: Any,
    reference: Any = None,
    want_int8: bool = False,
    request: HttpRequest | None = None,
) -> ModelVersion:
    """Store an uploaded model (and reference set) and queue its validation.

    ``upload``/``reference`` are uploaded files from ``HashingUploadHandler`` (they carry ``sha256``).
    Anything refused raises ``RegistryError`` and leaves no new stored bytes behind.
    """
    name, label, notes = (name or "").strip().lower(), (label or "").strip(), (notes or "").strip()
    check_fields(name, label, notes)
    if upload is None:
        raise RegistryError("missing_file", "Choose the .onnx model file to upload.", "file")
    if upload.size == 0:
        raise RegistryError("empty_file", "The model file is empty: upload the .onnx file your exporter wrote.", "file")
    ref_kind = None
    if reference is not None:
        ref_kind = reference_kind(reference.name)
        if reference.size == 0:
            raise RegistryError("bad_reference", "The reference data set is empty.", "reference")
        try:
            profiles.load(reference.temporary_file_path(), ref_kind)
        except profiles.ReferenceSetError as exc:
            raise RegistryError("bad_reference", str(exc), "reference") from exc

    user = getattr(request, "user", None) if request is not None else None
    user = user if user is not None and user.is_authenticated else None
    written: list[str] = []
    try:
        with transaction.atomic():
            model, _ = Model.objects.get_or_create(name=name, defaults={"created_by": user})
            model = Model.objects.select_for_update().get(pk=model.pk)
            same = model.versions.filter(artifact_id=upload.sha256).first()
            if same is not None:
                raise RegistryError(
                    "duplicate_bytes",
                    f"These exact bytes are already version '{same.label}' of '{name}' (sha256 {upload.sha256[:12]}…).",
                    "file",
                    409,
                )
            if model.versions.filter(label=label).exists():
                raise RegistryError(
                    "duplicate_label",
                    f"Model '{name}' already has a version '{label}': choose a new label.",
                    "label",
                    409,
                )
            artifact, new = store_bytes(upload, upload.sha256, upload.size, "onnx")
            if new:
                written.append(artifact.storage_key)
            ref_artifact = None
            if reference is not None:
                ref_artifact, new = store_bytes(reference, reference.sha256, reference.size, ref_kind)
                if new:
                    written.append(ref_artifact.storage_key)
            version = ModelVersion.objects.create(
                model=model,
                label=label,
                notes=notes,
                artifact=artifact,
                reference_artifact=ref_artifact,
                want_int8=bool(want_int8),
                created_by=user,
                validation_attempts=1,
            )
            record(
                "model_version.upload",
                version,
                request=request,
                details={"sha256": artifact.sha256, "size": artifact.size, "int8": bool(want_int8)},
            )
            enqueue_validation(version.pk)
    except IntegrityError as exc:
        _remove(written)
        raise RegistryError(
            "conflict", "Another upload of this version arrived at the same time.", "label", 409
        ) from exc
    except BaseException:
        _remove(written)
        raise
    return version


def _remove(keys: list[str]) -> None:
    for key in keys:
        if not Artifact.objects.filter(storage_key=key).exists():
            default_storage.delete(key)


def enqueue_validation(version_id: int) -> None:
    from ota.tasks import validate_version

    transaction.on_commit(lambda: validate_version.delay(version_id))


def archive_version(version: ModelVersion, request: HttpRequest | None = None) -> ModelVersion:
    if version.status == ModelVersion.Status.VALIDATING:
        raise RegistryError("still_validating", "Wait until validation has finished before archiving.", None, 409)
    if version.status == ModelVersion.Status.ARCHIVED:
        raise RegistryError("already_archived", f"Version '{version.label}' is already archived.", None, 409)
    before = version.status
    version.status = ModelVersion.Status.ARCHIVED
    version.save(update_fields=["status"])
    record("model_version.archive", version, request=request, details={"was": before})
    return version


# ---------------------------------------------------------------- validation


def previous_contract(version: ModelVersion) -> dict | None:
    """The contract of the latest staged version of the same model uploaded before this one."""
    prev = (
        ModelVersion.objects.filter(model_id=version.model_id, status=ModelVersion.Status.STAGED)
        .filter(created_at__lte=version.created_at)
        .exclude(pk=version.pk)
        .order_by("-created_at", "-id")
        .first()
    )
    if prev is None or not prev.report.get("inputs"):
        return None
    return {"version": prev.label, "inputs": prev.report["inputs"], "outputs": prev.report.get("outputs", [])}


def _timed(report: dict, name: str, fn: Any) -> Any:
    entry: dict[str, Any] = {"name": name, "ok": False}
    t0 = time.perf_counter()
    try:
        result = fn()
        entry["ok"] = True
        return result
    except Exception as exc:
        entry["error"] = str(exc)
        raise
    finally:
        entry["duration_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        report.setdefault("steps", []).append(entry)


def run_validation(version_id: int) -> str:
    """Validate one version on a worker and stage or reject it. Returns the final status."""
    version = ModelVersion.objects.select_related("model", "artifact", "reference_artifact").get(pk=version_id)
    if version.status != ModelVersion.Status.VALIDATING:
        return version.status
    ModelVersion.objects.filter(pk=version_id).update(validation_started_at=timezone.now())
    profile = None
    variant: dict | None = None
    with local_path(version.artifact) as path:
        try:
            report, session = validation.validate(
                path, previous_contract(version), latency_runs=getattr(settings, "EDGEFLEET_LATENCY_RUNS", 30)
            )
            arrays = None
            if version.reference_artifact is not None:
                arrays = _timed(report, "reference_profile", lambda: _reference_arrays(version, report))
                profile = _timed(
                    report,
                    "reference_profile_build",
                    lambda: profiles.build_profile(arrays, report["inputs"], lambda f: session.run(None, f)[0]),
                )
        except validation.ValidationFailed as exc:
            return _finish(version_id, ModelVersion.Status.REJECTED, exc.report, error=exc.message)
        except profiles.ReferenceSetError as exc:
            return _finish(version_id, ModelVersion.Status.REJECTED, report, error=f"Reference data set: {exc}")
        if version.want_int8:
            try:
                variant = _timed(report, "int8_variant", lambda: _int8_variant(path, session, report, arrays))
            except Exception as exc:  # the fp32 model is fine; say why there is no int8 build
                report["int8_error"] = f"The int8 variant could not be made: {validation._short(exc)}"
    return _finish(version_id, ModelVersion.Status.STAGED, report, profile=profile, variant=variant)


def _reference_arrays(version: ModelVersion, report: dict) -> dict[str, np.ndarray]:
    ref = version.reference_artifact
    with local_path(ref) as rpath:
        raw = profiles.load(rpath, ref.kind)
    return profiles.match_inputs(raw, report["inputs"], ref.kind)


def _int8_variant(path: Path, session: Any, report: dict, arrays: dict | None) -> dict:
    """Quantize, measure, and store the int8 build; returns what ``_finish`` needs to record it."""
    with tempfile.TemporaryDirectory(dir=settings.FILE_UPLOAD_TEMP_DIR) as tmp:
        out = quantize.make_int8(path, Path(tmp) / "int8.onnx")
        int8 = validation.make_session(out)
        feeds = validation.synthetic_inputs(report["inputs"])
        latency = validation.latency_ms(
            lambda: int8.run(None, feeds), runs=getattr(settings, "EDGEFLEET_LATENCY_RUNS", 30)
        )
        metrics = quantize.agreement(session, int8, _comparison_batches(report["inputs"], arrays))
        metrics.update({"size": out.stat().st_size, "latency_ms": {"p50": latency["p50"], "p95": latency["p95"]}})
        metrics["source"] = "reference" if arrays else "synthetic"
        sha = sha256_of(out)
        with out.open("rb") as fh:
            artifact, _ = store_bytes(fh, sha, out.stat().st_size, "onnx")
    return {"artifact": artifact, "metrics": metrics}


def _comparison_batches(inputs: list[dict], arrays: dict | None, rows: int = 512) -> list[dict]:
    fixed = profiles.fixed_batch(inputs)
    if arrays:
        n = min(rows, next(iter(arrays.values())).shape[0])
        step = fixed or 128
        stop = n - n % step if fixed else n
        return [
            {s["name"]: arrays[s["name"]][i : i + step].astype(np.dtype(s["dtype"])) for s in inputs}
            for i in range(0, stop, step)
        ]
    return [validation.synthetic_inputs(inputs, batch=fixed or 16, seed=i) for i in range(8)]


def _finish(
    version_id: int,
    status: str,
    report: dict,
    *,
    error: str = "",
    profile: dict | None = None,
    variant: dict | None = None,
) -> str:
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version_id)
        if version.status != ModelVersion.Status.VALIDATING:
            return version.status  # a duplicate run (re-queued while the first was slow) finished first
        version.status, version.report, version.error = status, report, error
        version.reference_profile = profile
        version.validated_at = timezone.now()
        version.save(update_fields=["status", "report", "error", "reference_profile", "validated_at"])
        if status == ModelVersion.Status.STAGED:
            model = version.model
            model.contract = {"version": version.label, "inputs": report["inputs"], "outputs": report["outputs"]}
            model.save(update_fields=["contract"])
            if variant is not None:
                Variant.objects.update_or_create(
                    version=version,
                    kind="int8",
                    defaults={"artifact": variant["artifact"], "metrics": variant["metrics"]},
                )
        record(f"model_version.{status}", version, details={"error": error} if error else {})
    if variant is not None and status != ModelVersion.Status.STAGED:
        delete_orphan_artifacts()
    return status


def recover_stuck_validations() -> dict:
    """Re-queue versions validating for longer than the timeout; reject them after MAX_ATTEMPTS."""
    cutoff = timezone.now() - timedelta(seconds=settings.EDGEFLEET_VALIDATION_TIMEOUT)
    requeued = rejected = 0
    stuck = ModelVersion.objects.filter(status=ModelVersion.Status.VALIDATING).filter(created_at__lt=cutoff)
    for version in stuck:
        started = version.validation_started_at or version.created_at
        if started >= cutoff:
            continue
        with transaction.atomic():
            v = ModelVersion.objects.select_for_update().get(pk=version.pk)
            if v.status != ModelVersion.Status.VALIDATING:
                continue
            if v.validation_attempts >= MAX_ATTEMPTS:
                v.status = ModelVersion.Status.REJECTED
                v.error = (
                    f"Validation did not finish after {v.validation_attempts} attempts "
                    f"({settings.EDGEFLEET_VALIDATION_TIMEOUT} s each): the worker crashed or the model is too slow "
                    "to check. Try again with a smaller model, or ask an admin to look at the worker logs."
                )
                v.validated_at = timezone.now()
                v.save(update_fields=["status", "error", "validated_at"])
                record(
                    "model_version.rejected",
                    v,
                    details={"error": "validation timed out", "attempts": v.validation_attempts},
                )
                rejected += 1
            else:
                v.validation_attempts += 1
                v.validation_started_at = timezone.now()
                v.save(update_fields=["validation_attempts", "validation_started_at"])
                enqueue_validation(v.pk)
                requeued += 1
    return {"requeued": requeued, "rejected": rejected}


# ---------------------------------------------------------------- reading


def version_json(version: ModelVersion) -> dict:
    """The API's view of a version (also what the status endpoint polls)."""
    return {
        "model": version.model.name,
        "label": version.label,
        "status": version.status,
        "error": version.error or None,
        "notes": version.notes,
        "sha256": version.artifact_id,
        "size": version.artifact.size,
        "created_at": version.created_at.isoformat(),
        "validated_at": version.validated_at.isoformat() if version.validated_at else None,
        "report": version.report or None,
        "reference_profile": version.reference_profile,
        "variants": [
            {"kind": v.kind, "sha256": v.artifact_id, "size": v.artifact.size, "metrics": v.metrics}
            for v in version.variants.select_related("artifact")
        ],
        "status_url": reverse("api:ota_version", kwargs={"name": version.model.name, "label": version.label}),
        "page_url": reverse("model-version", args=[version.model.name, version.label]),
    }
