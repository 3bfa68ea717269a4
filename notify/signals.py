"""Hooks on other apps' rows: decisions, alerts and validations become events after they commit.

Signals, so no other app has to call notify: ``post_save`` of ``CampaignDecision`` (created),
``Alert`` (created: opened; saved as resolved: resolved) and ``ModelVersion`` (saved staged or
rejected after validation). Rows changed with ``QuerySet.update()`` send no signal (the drift job
resolves alerts that way); the sweep (``notify.sweep``) catches those within a minute.
"""

from typing import Any

from django.db import transaction
from django.db.models.signals import post_save

from notify import events
from notify.kinds import CAMPAIGN_KINDS


def _later(fn: Any, *args: Any) -> None:
    transaction.on_commit(lambda: events.safely(fn, *args), robust=True)


def _touched(update_fields: Any, name: str) -> bool:
    return update_fields is None or name in update_fields


def on_decision(sender: Any, instance: Any, created: bool, **kw: Any) -> None:
    if created and instance.kind in CAMPAIGN_KINDS:
        _later(events.campaign_decision, instance.pk)


def on_alert(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kw: Any) -> None:
    if created and instance.state == "open":
        _later(events.alert_changed, instance.pk, "opened")
    elif not created and instance.state == "resolved" and _touched(update_fields, "state"):
        _later(events.alert_changed, instance.pk, "resolved")


def on_version(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kw: Any) -> None:
    if instance.status in ("staged", "rejected") and instance.validated_at and _touched(update_fields, "status"):
        _later(events.validation_finished, instance.pk)


def connect() -> None:
    from ota.models import ModelVersion
    from rollout.models import CampaignDecision
    from telemetry.models import Alert

    post_save.connect(on_decision, sender=CampaignDecision, dispatch_uid="notify.decision")
    post_save.connect(on_alert, sender=Alert, dispatch_uid="notify.alert")
    post_save.connect(on_version, sender=ModelVersion, dispatch_uid="notify.version")
