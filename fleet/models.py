"""The fleet: devices, how they enroll, and cohorts of them chosen by label selectors."""

import uuid

from django.conf import settings
from django.db import models


class EnrollmentKey(models.Model):
    """A shared secret that lets devices join; stored as a hash, shown once when made."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    default_labels = models.JSONField(default=dict, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    max_uses = models.PositiveIntegerField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class Device(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=120, blank=True)
    hardware = models.JSONField(
        default=dict, blank=True, help_text="arch, cores, ram_mb, accelerator, ort_version, providers, storage_free_mb"
    )
    labels = models.JSONField(default=dict, blank=True)
    agent_version = models.CharField(max_length=40, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    token_prefix = models.CharField(max_length=12, blank=True)
    token_revoked_at = models.DateTimeField(null=True, blank=True)
    enrollment_key = models.ForeignKey(EnrollmentKey, null=True, blank=True, on_delete=models.SET_NULL)
    enrolled_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True, db_index=True)
    installed = models.JSONField(default=dict, blank=True, help_text="model name -> version label it reports")
    identity_key = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="Ed25519 public key (base64url) the device signs its round keys with; given at enrollment",
    )
    conditions = models.JSONField(
        default=dict,
        blank=True,
        help_text="install conditions it last reported: power, network, idle (docs/protocol.md)",
    )

    class Meta:
        ordering = ["-enrolled_at", "-id"]
        # Keyset paging of the device list walks this index; label and version filters use the
        # GIN indexes made in migration 0002 (PostgreSQL only).
        indexes = [
            models.Index(fields=["-enrolled_at", "-id"], name="device_enrolled_id"),
            # The device list's other sorts (fleet/device_list.py), keyset-paged like the first; the
            # last-seen index (NULLS LAST) is made by migration 0003 on PostgreSQL only.
            models.Index(fields=["name", "id"], name="device_name_id"),
        ]

    def __str__(self) -> str:
        return self.name or str(self.id)


class Cohort(models.Model):
    """A saved label selector such as ``region=eu, hw in (rpi4, jetson), !beta``."""

    name = models.SlugField(max_length=100, unique=True)
    selector = models.CharField(max_length=500)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DeviceEvent(models.Model):
    """Something a device reports happened; the id is made by the device so a replay is a no-op."""

    id = models.UUIDField(primary_key=True)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=40)
    at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    model_name = models.CharField(max_length=100, blank=True)
    version_label = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [
            models.Index(fields=["device", "-at"], name="event_device_at"),
            # "Devices that installed this version since" (rollout/outcome.py: returned after a rollback).
            models.Index(
                fields=["model_name", "version_label", "received_at"],
                condition=models.Q(kind="installed"),
                name="event_installed_received",
            ),
            # "Devices whose install of this version failed" (rollout/progress.py), without a scan.
            models.Index(
                fields=["model_name", "version_label", "device"],
                condition=models.Q(kind="install_failed"),
                name="event_install_failed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.kind} {self.at:%Y-%m-%d %H:%M}"


class DeviceProfile(models.Model):
    """What placement and the pages read of a device, shared by every device alike (fleet/kept.py).

    ``key`` is the md5 of the parts' jsonb text, made by the database trigger that keeps the counts;
    a profile never changes once written, so processes may keep them in memory.
    """

    key = models.UUIDField(primary_key=True)
    labels = models.JSONField(default=dict)
    hardware = models.JSONField(default=dict, help_text="the fields placement reads: arch, ram_mb, ort_version, …")
    installed = models.JSONField(default=dict)
    revoked = models.BooleanField(default=False)


class ProfileCount(models.Model):
    """Devices of one profile whose key (``rollout.placement.device_key``) falls in one slot.

    Level 0: a slot is one key (0..9999); level 1: a slot is a hundred keys (key // 100). Changed
    only by ``fleet.kept.fold`` from the deltas the trigger writes.
    """

    profile_key = models.UUIDField()
    level = models.SmallIntegerField()
    slot = models.IntegerField()
    n = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["profile_key", "level", "slot"], name="profilecount_unique")]
        indexes = [models.Index(fields=["level", "slot"], name="profilecount_level_slot")]


class ProfileCountDelta(models.Model):
    """+1 / -1 written by the trigger on each device insert, change or delete; folded into ProfileCount.

    Insert-only so that concurrent writers (enrollment, the presence flush, relabels) never wait on
    a shared counter row; readers add the unfolded deltas to the counts, so counts are exact at once.
    """

    id = models.BigAutoField(primary_key=True)
    profile_key = models.UUIDField()
    slot = models.IntegerField(help_text="the device key, 0..9999")
    n = models.SmallIntegerField()
