from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_delete


class FleetConfig(AppConfig):
    name = "fleet"

    def ready(self) -> None:
        from fleet.models import Device

        post_delete.connect(_forget_deleted, sender=Device, dispatch_uid="fleet.forget_deleted_device")


def _forget_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A deleted device's token stops working at once: its cached snapshot and ready manifest go too
    (else they serve it for a day, and its uploads reach the database for a row that is gone)."""
    from fleet.auth import forget_device

    forget_device(instance.token_hash)
