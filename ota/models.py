"""The model registry: model families, their versions and the content-addressed bytes behind them."""

from django.conf import settings
from django.db import models


class Model(models.Model):
    """A named model family. Its contract (inputs/outputs) is taken from its latest staged version."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    contract = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Artifact(models.Model):
    """Bytes stored once, named by their sha256; versions and variants point at them."""

    sha256 = models.CharField(max_length=64, primary_key=True)
    size = models.BigIntegerField()
    storage_key = models.CharField(max_length=300)
    kind = models.CharField(max_length=16, default="onnx", help_text="onnx, npz or csv")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.sha256[:12]} ({self.size} B)"


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        VALIDATING = "validating"
        STAGED = "staged"
        REJECTED = "rejected"
        ARCHIVED = "archived"

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    label = models.CharField(max_length=64)
    notes = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING, db_index=True)
    artifact = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="versions")
    reference_artifact = models.ForeignKey(
        Artifact, null=True, blank=True, on_delete=models.PROTECT, related_name="reference_for"
    )
    want_int8 = models.BooleanField(default=False, help_text="make an int8 variant by dynamic quantization")
    report = models.JSONField(default=dict, blank=True, help_text="the validation report")
    reference_profile = models.JSONField(null=True, blank=True, help_text="bin edges and histograms")
    error = models.TextField(blank=True, help_text="why it was rejected, for a person")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    validation_started_at = models.DateTimeField(null=True, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    validation_attempts = models.PositiveSmallIntegerField(default=0)
    # The lease of the validation in progress: the message that owns it, and when it runs out (the
    # recovery job re-queues the version then; see ota.services.recover_stuck_validations).
    validation_task_id = models.CharField(max_length=64, blank=True, default="")
    validation_deadline = models.DateTimeField(null=True, blank=True)
    lineage = models.JSONField(default=dict, blank=True, help_text="meta and links set at upload (ota.lineage)")
    lineage_text = models.TextField(blank=True, default="", help_text="lineage flattened for search")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["model", "label"], name="version_label_unique"),
            models.UniqueConstraint(fields=["model", "artifact"], name="version_artifact_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}:{self.label}"


class Variant(models.Model):
    """A further artifact of the same version, e.g. an int8 build for small devices."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="variants")
    kind = models.CharField(max_length=16, help_text="int8, int8_static, fp16, optimized")
    artifact = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="variants")
    metrics = models.JSONField(default=dict, blank=True, help_text="size, latency, agreement with fp32")
    released = models.BooleanField(default=True, help_text="offered to devices; an operator may keep it out")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "kind"], name="variant_kind_unique")]

    def __str__(self) -> str:
        return f"{self.version} [{self.kind}]"


class Alias(models.Model):
    """A name (``production``, ``staging``, …) that points at one version of one model; moving it is audited."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=32)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="aliases")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="alias_one_per_model"),
            models.CheckConstraint(condition=models.Q(name__regex=r"^[a-z][a-z0-9-]{0,31}$"), name="alias_name_slug"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"
