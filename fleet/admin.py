"""Django admin for the fleet: for looking things up and fixing a row by hand, not for daily work.

Tokens and enrollment keys are never shown (only their prefixes): the admin must not become a way
to read secrets. Changes that must reach polling devices (revoke, rotate, labels) go through the
dashboard and ``fleet.services``, which drop the cached snapshots; so those fields are read-only
here. Lists page without a full COUNT (``show_full_result_count``), usable with 100,000 devices.
"""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from fleet.models import Cohort, Device, DeviceEvent, EnrollmentKey


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("name", "id", "agent_version", "last_seen_at", "enrolled_at", "token_prefix", "token_revoked_at")
    list_filter = ("agent_version", ("token_revoked_at", admin.EmptyFieldListFilter), "enrolled_at")
    search_fields = ("name", "=id")
    show_full_result_count = False
    ordering = ("-enrolled_at", "-id")
    readonly_fields = (
        "id",
        "token_hash",
        "token_prefix",
        "token_revoked_at",
        "labels",
        "hardware",
        "enrollment_key",
        "enrolled_at",
        "last_seen_at",
        "installed",
    )

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        """``=id`` on a UUID field fails for text that is not a UUID; search names only then."""
        import uuid

        try:
            uuid.UUID(search_term.strip())
        except ValueError:
            return queryset.filter(name__icontains=search_term.strip()) if search_term.strip() else queryset, False
        return super().get_search_results(request, queryset, search_term)


@admin.register(EnrollmentKey)
class EnrollmentKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "uses", "max_uses", "expires_at", "revoked_at", "created_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "prefix")
    exclude = ("key_hash",)
    readonly_fields = ("prefix", "uses", "created_by", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a key is shown once, when made on the enrollment keys page


@admin.register(Cohort)
class CohortAdmin(admin.ModelAdmin):
    list_display = ("name", "selector", "created_by", "created_at")
    search_fields = ("name", "selector")
    readonly_fields = ("created_by", "created_at")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # saving a selector must bump the manifest generation: use the cohorts page

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(DeviceEvent)
class DeviceEventAdmin(admin.ModelAdmin):
    list_display = ("at", "kind", "device", "model_name", "version_label", "received_at")
    list_filter = ("kind",)
    search_fields = ("=device__id", "model_name")
    raw_id_fields = ("device",)
    show_full_result_count = False
    ordering = ("-at",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # events come from devices

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        import uuid

        term = search_term.strip()
        try:
            uuid.UUID(term)
        except ValueError:
            return (queryset.filter(model_name__icontains=term) if term else queryset), False
        return queryset.filter(device_id=term), False
