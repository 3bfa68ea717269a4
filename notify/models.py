"""Subscriptions to what happens in the fleet, the events themselves, and every delivery attempt.

Deliveries are rows, not only queued tasks: a receiver that is down for hours loses nothing, the
beat job re-sends what is due (``notify.delivery.send_due``), and the page shows each attempt's
status code. Secrets (webhook signing keys, Slack and webhook URLs, which carry credentials) are
stored encrypted (``notify.crypto``) and never shown again after they were first made.
"""

import uuid

from django.conf import settings
from django.db import models


class Subscription(models.Model):
    class Channel(models.TextChoices):
        WEBHOOK = "webhook"
        EMAIL = "email"
        SLACK = "slack"

    name = models.CharField(max_length=120)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="subscriptions"
    )
    team = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, help_text="a group whose members share it"
    )
    channel = models.CharField(max_length=16, choices=Channel.choices)
    target_encrypted = models.TextField(blank=True, help_text="webhook or Slack URL, encrypted")
    target_hint = models.CharField(max_length=200, blank=True, help_text="scheme and host, for people")
    emails = models.JSONField(default=list, blank=True, help_text="e-mail channel: addresses (else the owner's)")
    secret_encrypted = models.TextField(blank=True, help_text="webhook signing secret, encrypted")
    events = models.JSONField(default=list, help_text="event kinds (notify.kinds.KINDS)")
    model_filter = models.CharField(max_length=100, blank=True, help_text="only events about this model")
    offline_threshold = models.FloatField(default=0.2, help_text="fleet.offline: share of seen devices offline")
    offline_firing = models.BooleanField(default=False, help_text="fleet.offline: above the threshold now")
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(owner__isnull=False) | models.Q(team__isnull=False), name="subscription_has_owner"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.channel})"


class Event(models.Model):
    """Something worth telling: made once per ``key`` (a decision, an alert opening, ...)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=40, db_index=True)
    key = models.CharField(max_length=200, unique=True, help_text="what happened, once: e.g. alert.opened:12")
    model = models.CharField(max_length=100, blank=True)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.key


class Delivery(models.Model):
    """One event for one subscription; its id is the receiver's idempotency key (same on every retry)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True, help_text="a worker is sending it until then")
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["subscription", "event"], name="delivery_once")]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_due")]

    def __str__(self) -> str:
        return f"{self.event.kind} → {self.subscription} ({self.status})"


class Attempt(models.Model):
    """One try of a delivery: what the receiver answered (status code) or why it could not be reached."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField(auto_now_add=True)
    status_code = models.IntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.IntegerField(default=0)

    class Meta:
        ordering = ["-at", "-id"]


class Mark(models.Model):
    """High-water mark of the sweep that catches events no signal saw (rows changed with ``update()``)."""

    name = models.CharField(max_length=40, primary_key=True)
    at = models.DateTimeField()
