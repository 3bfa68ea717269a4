"""Read-mostly admin for the registry: uploads and status changes go through the pages and the API."""

from django.contrib import admin

from ota.models import Artifact, Model, ModelVersion, Variant


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at", "created_by")
    search_fields = ("name",)
    readonly_fields = ("contract", "created_at")


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("model", "label", "status", "created_at", "validated_at", "validation_attempts")
    list_filter = ("status",)
    search_fields = ("model__name", "label")
    readonly_fields = ("artifact", "reference_artifact", "report", "reference_profile", "created_at", "validated_at")


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ("sha256", "size", "kind", "created_at")
    readonly_fields = ("sha256", "size", "storage_key", "kind", "created_at")


@admin.register(Variant)
class VariantAdmin(admin.ModelAdmin):
    list_display = ("version", "kind", "artifact", "created_at")
    readonly_fields = ("artifact", "metrics")
