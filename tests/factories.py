"""Rows for fleet and protocol tests, made directly (no waiting on validation)."""

import hashlib
import io
from typing import Any

import onnx
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from tests.onnx_models import mlp_classifier


def onnx_bytes(seed: int = 0, n_features: int = 4, n_classes: int = 3) -> bytes:
    buf = io.BytesIO()
    onnx.save(mlp_classifier(n_features=n_features, n_classes=n_classes, seed=seed), buf)
    return buf.getvalue()


def artifact(data: bytes) -> Any:
    from ota.models import Artifact

    sha = hashlib.sha256(data).hexdigest()
    key = f"artifacts/{sha[:2]}/{sha}.onnx"
    if not default_storage.exists(key):
        default_storage.save(key, ContentFile(data))
    return Artifact.objects.get_or_create(sha256=sha, defaults={"size": len(data), "storage_key": key})[0]


def staged_version(model: str = "fraud", label: str = "v1", seed: int = 0, n_features: int = 4, int8: bool = False):
    """A staged ModelVersion with a real ONNX artifact (and an int8 variant when asked)."""
    from ota.models import Model, ModelVersion, Variant

    m, _ = Model.objects.get_or_create(name=model)
    data = onnx_bytes(seed=seed, n_features=n_features)
    v = ModelVersion.objects.create(
        model=m,
        label=label,
        status="staged",
        artifact=artifact(data),
        report={
            "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", n_features]}],
            "outputs": [{"name": "probs", "dtype": "float32", "shape": ["batch", 3]}],
        },
    )
    if int8:
        Variant.objects.create(version=v, kind="int8", artifact=artifact(data + b"\0int8" + str(seed).encode()))
    return v


def enrollment_key(name: str = "factory", **kw: Any) -> tuple[Any, str]:
    from fleet import services

    return services.create_enrollment_key(name, **kw)


def device(labels: dict[str, str] | None = None, hardware: dict[str, Any] | None = None, name: str = "dev"):
    """``(device, token)`` enrolled through the service, as a device would be."""
    from fleet import services

    _, plain = enrollment_key()
    hw = {"arch": "aarch64", "cores": 4, "ram_mb": 4096, "accelerator": "none"}
    done = services.enroll(plain, name=name, hardware=hardware or hw, labels=labels or {}, agent_version="0.1.0")
    return done.device, done.token


def release(version: Any, cohort: Any = None, note: str = "") -> Any:
    from rollout.releases import create_release

    return create_release(version, cohort=cohort, note=note)
