"""Django admin for telemetry: the quarantine list, for looking up why a job set something aside.

Read-only: a quarantined item is fixed at its source (a campaign's gates, a version's bins), not here.
"""

from django.contrib import admin
from django.http import HttpRequest

from telemetry.models import PrivacyAssignment, Quarantine


@admin.register(Quarantine)
class QuarantineAdmin(admin.ModelAdmin):
    list_display = ("kind", "key", "version", "reason", "occurrences", "first_at", "last_at")
    list_filter = ("kind",)
    search_fields = ("key", "reason")
    show_full_result_count = False
    list_select_related = ("version__model",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(PrivacyAssignment)
class PrivacyAssignmentAdmin(admin.ModelAdmin):
    list_display = ("mechanism", "epsilon", "first_assigned_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
