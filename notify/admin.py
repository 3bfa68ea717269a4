from django.contrib import admin

from notify.models import Delivery, Subscription


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ("name", "channel", "owner", "team", "target_hint", "active", "created_at")
    exclude = ("target_encrypted", "secret_encrypted")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "subscription", "status", "attempts", "last_status_code", "next_attempt_at")
    list_filter = ("status",)
