"""What operators and the validation job do with the registry; views, API and tasks stay thin.

Uploads arrive as files already on disk with their sha256 (see ``ota.uploads``). ``create_version``
checks everything cheap synchronously (names, duplicates, empty file, readable reference set) so a
bad upload leaves nothing stored; the expensive checks run in ``run_validation`` on a worker.

Uploaded bytes are parsed and run only in the sandbox child (``ota.sandbox``), never in this
process: this module imports neither onnx nor onnxruntime. A validation holds a lease on its
version (``validation_task_id``, ``validation_deadline``): a duplicate message stands aside, and
``recover_stuck_validations`` re-queues a version whose worker died once the lease has run out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from accounts.audit import record
from edgefleet.queues import validation_limits
from ota import lineage as lineage_rules
from ota import sandbox
from ota.aliases import release_aliases
from ota.limits import CRASHED_TWICE, Limits
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
    lineage: Any = None,
    request: HttpRequest | None = None,
) -> ModelVersion:
    """Store an uploaded model (and reference set) and queue its validation.

    ``upload``/``reference`` are uploaded files from ``HashingUploadHandler`` (they carry ``sha256``).
    Anything refused raises ``RegistryError`` and leaves no new stored bytes behind.
    """
    name, label, notes = (name or "").strip().lower(), (label or "").strip(), (notes or "").strip()
    check_fields(name, label, notes)
    try:
        lineage = lineage_rules.clean(lineage)
    except lineage_rules.LineageError as exc:
        raise RegistryError("bad_lineage", str(exc), exc.path) from None
    if upload is None:
        raise RegistryError("missing_file", "Choose the .onnx model file to upload.", "file")
    if upload.size == 0:
        raise RegistryError("empty_file", "The model file is empty: upload the .onnx file your exporter wrote.", "file")
    ref_kind = None
    if reference is not None:
        ref_kind = reference_kind(reference.name)
        if reference.size == 0:
            raise RegistryError("bad_reference", "The reference data set is empty.", "reference")
        problem = check_reference(Path(reference.temporary_file_path()), ref_kind, reference.sha256)
        if problem:
            raise RegistryError("bad_reference", problem, "reference")

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
                lineage=lineage,
                lineage_text=lineage_rules.search_text(lineage),
                created_by=user,
                validation_attempts=1,
                validation_task_id=str(uuid.uuid4()),
                validation_deadline=timezone.now() + timedelta(seconds=lease_seconds()),
            )
            record(
                "model_version.upload",
                version,
                request=request,
                details={"sha256": artifact.sha256, "size": artifact.size, "int8": bool(want_int8)},
            )
            enqueue_validation(version.pk, version.validation_task_id)
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


def enqueue_validation(version_id: int, task_id: str | None = None) -> None:
    """Queue the validation after commit; ``task_id`` is the message that owns the version's lease."""
    from ota.tasks import validate_version

    transaction.on_commit(lambda: validate_version.apply_async((version_id,), task_id=task_id))


def archive_version(version: ModelVersion, request: HttpRequest | None = None) -> ModelVersion:
    if version.status == ModelVersion.Status.VALIDATING:
        raise RegistryError("still_validating", "Wait until validation has finished before archiving.", None, 409)
    if version.status == ModelVersion.Status.ARCHIVED:
        raise RegistryError("already_archived", f"Version '{version.label}' is already archived.", None, 409)
    before = version.status
    version.status = ModelVersion.Status.ARCHIVED
    version.save(update_fields=["status"])
    record("model_version.archive", version, request=request, details={"was": before})
    release_aliases(version, request=request)
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


def sandbox_limits() -> Limits:
    """The sandbox's limits, from settings (README lists them)."""
    return Limits(
        memory_bytes=settings.EDGEFLEET_VALIDATION_MEMORY_MB * 1024 * 1024,
        cpu_seconds=settings.EDGEFLEET_VALIDATION_CPU_SECONDS,
        wall_seconds=settings.EDGEFLEET_VALIDATION_TIMEOUT,
        max_input_elements=settings.EDGEFLEET_VALIDATION_MAX_INPUT_ELEMENTS,
        max_tensor_elements=settings.EDGEFLEET_VALIDATION_MAX_TENSOR_ELEMENTS,
        reference_max_bytes=settings.EDGEFLEET_REFERENCE_MAX_BYTES,
        threads=max(1, int(os.environ.get("ORT_NUM_THREADS", "1") or 1)),
    )


def lease_seconds() -> int:
    """How long one validation may hold its version: the task's hard time limit."""
    return validation_limits(settings.EDGEFLEET_VALIDATION_TIMEOUT)[1]


def artifact_name(artifact: Artifact, what: str = "model") -> str:
    """How a person sees a stored file in messages: by its content hash, never by its server path."""
    return f"{what} sha256:{artifact.sha256[:16]}"


def _max_file_bytes(*sizes: int) -> int:
    """What the child may write per file (the int8 build, onnxruntime's temporary copies)."""
    return 2 * max(sizes, default=0) + 64 * 1024 * 1024


def check_reference(path: Path, kind: str, sha256: str = "") -> str:
    """Why an uploaded reference set cannot be used ('' when it can), read in the sandbox child."""
    name = f"reference set sha256:{sha256[:16]}" if sha256 else "the reference set"
    with sandbox.run(
        {"kind": "reference", "reference": {"path": str(path), "kind": kind}},
        sandbox_limits(),
        {str(path): name},
        workdir=settings.FILE_UPLOAD_TEMP_DIR,
        max_file_bytes=_max_file_bytes(path.stat().st_size),
    ) as outcome:
        return "" if outcome.ok else outcome.error


def _take_lease(version_id: int, task_id: str | None) -> bool:
    """Start a run of ``task_id`` unless another message's run holds a lease that has not run out.

    The same task id again is the broker re-delivering a message whose run died (the visibility
    timeout outlasts every task), so it takes the lease over; a direct call (no task id) always runs.
    """
    now = timezone.now()
    with transaction.atomic():
        v = ModelVersion.objects.select_for_update().get(pk=version_id)
        if v.status != ModelVersion.Status.VALIDATING:
            return False
        held = v.validation_started_at is not None and v.validation_deadline is not None and v.validation_deadline > now
        if held and task_id and v.validation_task_id and v.validation_task_id != task_id:
            log.info(
                "validation of version %s is held by %s; %s stands aside", version_id, v.validation_task_id, task_id
            )
            return False
        v.validation_started_at = now
        v.validation_deadline = now + timedelta(seconds=lease_seconds())
        if task_id:
            v.validation_task_id = task_id
        v.save(update_fields=["validation_started_at", "validation_deadline", "validation_task_id"])
    return True


def run_validation(version_id: int, task_id: str | None = None) -> str:
    """Validate one version in the sandbox and stage or reject it. Returns the final status."""
    version = ModelVersion.objects.select_related("model", "artifact", "reference_artifact").get(pk=version_id)
    if version.status != ModelVersion.Status.VALIDATING or not _take_lease(version_id, task_id):
        return ModelVersion.objects.get(pk=version_id).status
    ref = version.reference_artifact
    with ExitStack() as stack:
        path = stack.enter_context(local_path(version.artifact))
        names = {str(path): artifact_name(version.artifact)}
        job: dict[str, Any] = {
            "kind": "validate",
            "model": str(path),
            "previous_contract": previous_contract(version),
            "latency_runs": getattr(settings, "EDGEFLEET_LATENCY_RUNS", 30),
            "variants": list(sandbox.VARIANT_KINDS) if version.want_int8 else [],
        }
        if ref is not None:
            rpath = stack.enter_context(local_path(ref))
            names[str(rpath)] = artifact_name(ref, "reference set")
            job["reference"] = {"path": str(rpath), "kind": ref.kind}
        outcome = stack.enter_context(
            sandbox.run(
                job,
                sandbox_limits(),
                names,
                workdir=settings.FILE_UPLOAD_TEMP_DIR,
                max_file_bytes=_max_file_bytes(version.artifact.size, ref.size if ref else 0),
            )
        )
        if not outcome.ok:
            return _finish(version_id, ModelVersion.Status.REJECTED, outcome.report, error=outcome.error)
        variants = {kind: _store_variant(path, metrics) for kind, (path, metrics) in outcome.variants.items()}
        return _finish(
            version_id, ModelVersion.Status.STAGED, outcome.report, profile=outcome.profile, variants=variants
        )


def _store_variant(path: Path, metrics: dict) -> dict:
    sha = sha256_of(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        artifact, _ = store_bytes(fh, sha, size, "onnx")
    return {"artifact": artifact, "metrics": {**metrics, "size": size}}


def reject_crashed(version_id: int, task_id: str | None) -> str:
    """The delivery guard stopped a validation message that crashed its worker twice: reject the version.

    Only when that message still owns the version; a stale duplicate changes nothing.
    """
    with transaction.atomic():
        v = ModelVersion.objects.select_for_update().filter(pk=version_id).first()
        if v is None or v.status != ModelVersion.Status.VALIDATING:
            return v.status if v else "missing"
        if task_id and v.validation_task_id and v.validation_task_id != task_id:
            return v.status
        steps = list((v.report or {}).get("steps") or [])
        steps.append({"name": "worker", "ok": False, "error": CRASHED_TWICE})
        v.status, v.error = ModelVersion.Status.REJECTED, CRASHED_TWICE
        v.report = {**(v.report or {}), "steps": steps}
        v.validated_at = timezone.now()
        v.save(update_fields=["status", "error", "report", "validated_at"])
        record("model_version.rejected", v, details={"error": "validation crashed the worker twice"})
    return ModelVersion.Status.REJECTED


def _finish(
    version_id: int,
    status: str,
    report: dict,
    *,
    error: str = "",
    profile: dict | None = None,
    variants: dict[str, dict] | None = None,
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
            for kind, variant in (variants or {}).items():
                Variant.objects.update_or_create(
                    version=version,
                    kind=kind,
                    defaults={"artifact": variant["artifact"], "metrics": variant["metrics"]},
                )
        record(f"model_version.{status}", version, details={"error": error} if error else {})
    if variants and status != ModelVersion.Status.STAGED:
        delete_orphan_artifacts()
    return status


def recover_stuck_validations() -> dict:
    """Re-queue versions whose validation lease ran out (its worker died); reject after MAX_ATTEMPTS.

    A lease lasts the validation task's hard time limit, and this runs every
    ``schedule.RECOVERY_INTERVAL`` seconds: a version is looked after at most that long after its worker
    died. A lease that ran out before any run started (a lost message) is re-queued without counting
    an attempt. Each re-queue is a new message owning the lease; a late duplicate stands aside.
    """
    now = timezone.now()
    limit = timedelta(seconds=lease_seconds())
    started = Q(validation_started_at__isnull=False) & (
        Q(validation_deadline__lt=now) | Q(validation_started_at__lt=now - limit)
    )
    queued = Q(validation_started_at__isnull=True) & (
        Q(validation_deadline__lt=now) | Q(validation_deadline__isnull=True, created_at__lt=now - limit)
    )
    requeued = rejected = 0
    for pk in (
        ModelVersion.objects.filter(status=ModelVersion.Status.VALIDATING)
        .filter(started | queued)
        .values_list("pk", flat=True)
    ):
        with transaction.atomic():
            v = ModelVersion.objects.select_for_update().get(pk=pk)
            if v.status != ModelVersion.Status.VALIDATING:
                continue
            ran = v.validation_started_at is not None
            if ran and v.validation_attempts >= MAX_ATTEMPTS:
                v.status = ModelVersion.Status.REJECTED
                v.error = (
                    f"Validation did not finish after {v.validation_attempts} attempts "
                    f"({lease_seconds()} s each): the worker crashed or the model is too slow "
                    "to check. Try again with a smaller model, or ask an admin to look at the worker logs."
                )
                v.validated_at = now
                v.save(update_fields=["status", "error", "validated_at"])
                record(
                    "model_version.rejected",
                    v,
                    details={"error": "validation timed out", "attempts": v.validation_attempts},
                )
                rejected += 1
                continue
            if ran:
                v.validation_attempts += 1
            v.validation_task_id = str(uuid.uuid4())
            v.validation_started_at = None
            v.validation_deadline = now + limit
            v.save(
                update_fields=[
                    "validation_attempts",
                    "validation_task_id",
                    "validation_started_at",
                    "validation_deadline",
                ]
            )
            enqueue_validation(v.pk, v.validation_task_id)
            requeued += 1
    return {"requeued": requeued, "rejected": rejected}


# ---------------------------------------------------------------- variants


def variant_rows(version: ModelVersion) -> list[dict]:
    """fp32 and each variant: size, server latency, agreement (worst output), sparsity, Pareto front."""
    from ota.variant_math import pareto_front

    report = version.report or {}
    lat = report.get("latency_ms") or {}
    rows = [
        {
            "kind": "fp32",
            "size": version.artifact.size,
            "p50": lat.get("p50"),
            "p95": lat.get("p95"),
            "agreement": 1.0,
            "zero_share": (report.get("sparsity") or {}).get("zero_share"),
            "released": True,
            "variant": None,
        }
    ]
    for v in version.variants.select_related("artifact").order_by("kind"):
        m = v.metrics or {}
        rows.append(
            {
                "kind": v.kind,
                "size": v.artifact.size,
                "p50": (m.get("latency_ms") or {}).get("p50"),
                "p95": (m.get("latency_ms") or {}).get("p95"),
                "agreement": m.get("agreement"),
                "zero_share": (m.get("sparsity") or {}).get("zero_share"),
                "released": v.released,
                "variant": v,
            }
        )
    front = pareto_front([{"size": r["size"], "latency": r["p50"], "agreement": r["agreement"]} for r in rows])
    for r, on in zip(rows, front, strict=True):
        r["front"] = on
    return rows


def set_variant_released(
    version: ModelVersion, kind: str, released: bool, request: HttpRequest | None = None
) -> Variant:
    """Offer a variant to devices or keep it out (audited); fp32 is always offered."""
    variant = version.variants.filter(kind=kind).first()
    if variant is None:
        raise RegistryError("no_variant", f"Version '{version.label}' has no '{kind}' variant.", "kind", 404)
    if variant.released != released:
        variant.released = released
        variant.save(update_fields=["released"])
        record(
            "model_version.variant_released" if released else "model_version.variant_kept_out",
            version,
            request=request,
            details={"kind": kind},
        )
    return variant


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
        "aliases": sorted(version.aliases.values_list("name", flat=True)),
        "lineage": version.lineage or {},
        "report": version.report or None,
        "reference_profile": version.reference_profile,
        "variants": [
            {
                "kind": v.kind,
                "sha256": v.artifact_id,
                "size": v.artifact.size,
                "released": v.released,
                "metrics": v.metrics,
            }
            for v in version.variants.select_related("artifact")
        ],
        "status_url": reverse("api:ota_version", kwargs={"name": version.model.name, "label": version.label}),
        "page_url": reverse("model-version", args=[version.model.name, version.label]),
    }
