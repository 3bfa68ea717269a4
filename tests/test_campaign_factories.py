"""Rows the campaign tests share: models, staged versions, devices with hardware and labels."""

import hashlib
import itertools
import uuid
from typing import Any

from fleet.models import Cohort, Device
from ota.models import Artifact, Model, ModelVersion, Variant
from rollout.models import Release

_counter = itertools.count()

HW: dict[str, Any] = {
    "arch": "aarch64",
    "cores": 4,
    "ram_mb": 4096,
    "accelerator": "none",
    "ort_version": "1.20.0",
    "providers": ["CPUExecutionProvider"],
    "storage_free_mb": 2048,
}


def artifact(size: int = 200_000) -> Artifact:
    sha = hashlib.sha256(f"artifact-{next(_counter)}-{uuid.uuid4()}".encode()).hexdigest()
    return Artifact.objects.create(sha256=sha, size=size, storage_key=f"artifacts/{sha}")


def model(name: str = "fraud") -> Model:
    return Model.objects.get_or_create(name=name)[0]


def version(
    m: Model,
    label: str,
    *,
    status: str = ModelVersion.Status.STAGED,
    opset: int = 17,
    size: int = 200_000,
    int8_size: int | None = None,
) -> ModelVersion:
    v = ModelVersion.objects.create(
        model=m, label=label, status=status, artifact=artifact(size), report={"opset": opset, "file_size": size}
    )
    if int8_size:
        Variant.objects.create(version=v, kind="int8", artifact=artifact(int8_size))
    return v


def release(v: ModelVersion, cohort: Cohort | None = None) -> Release:
    return Release.objects.create(model=v.model, version=v, cohort=cohort)


def device(labels: dict[str, str] | None = None, installed: dict[str, str] | None = None, **hw: Any) -> Device:
    n = next(_counter)
    return Device.objects.create(
        name=f"dev-{n}",
        labels=labels or {},
        hardware={**HW, **hw},
        token_hash=hashlib.sha256(f"tok-{n}-{uuid.uuid4()}".encode()).hexdigest(),
        installed=installed or {},
    )


def cohort(name: str, selector: str) -> Cohort:
    return Cohort.objects.create(name=name, selector=selector)


WAVES = [
    {"percent": 10, "min_soak_minutes": 0, "min_devices": 0},
    {"percent": 50, "min_soak_minutes": 0, "min_devices": 0},
    {"percent": 100, "min_soak_minutes": 0, "min_devices": 0},
]
