"""What each device should run: direct releases to a cohort, and staged campaigns with gates.

Kept apart from ``ota`` (the registry: what exists and whether it is fit to ship) so that deciding
*who runs what* has one home with its own migrations.
"""

from django.conf import settings
from django.db import models


class Release(models.Model):
    """ "Version V of model M is the desired version for cohort C" (no cohort: the whole fleet)."""

    model = models.ForeignKey("ota.Model", on_delete=models.CASCADE, related_name="releases")
    version = models.ForeignKey("ota.ModelVersion", on_delete=models.PROTECT, related_name="releases")
    cohort = models.ForeignKey("fleet.Cohort", null=True, blank=True, on_delete=models.PROTECT)
    note = models.CharField(max_length=300, blank=True)
    campaign = models.ForeignKey(
        "rollout.Campaign",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="the campaign whose completion made this release (its incompatible devices stay behind)",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.version} → {self.cohort or 'all devices'}"


class Campaign(models.Model):
    class State(models.TextChoices):
        DRAFT = "draft"
        SCHEDULED = "scheduled"
        RUNNING = "running"
        PAUSED = "paused"
        COMPLETED = "completed"
        ROLLED_BACK = "rolled_back"
        ABORTED = "aborted"

    class OnFailure(models.TextChoices):
        PAUSE = "pause"
        ROLLBACK = "rollback"

    name = models.CharField(max_length=120)
    model = models.ForeignKey("ota.Model", on_delete=models.CASCADE, related_name="campaigns")
    version = models.ForeignKey("ota.ModelVersion", on_delete=models.PROTECT, related_name="campaigns")
    previous_version = models.ForeignKey(
        "ota.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="what targeted devices run before, and go back to on rollback",
    )
    cohort = models.ForeignKey("fleet.Cohort", null=True, blank=True, on_delete=models.PROTECT)
    state = models.CharField(max_length=16, choices=State.choices, default=State.DRAFT, db_index=True)
    waves = models.JSONField(default=list, help_text='[{"percent": 5, "min_soak_minutes": 30, "min_devices": 20}, …]')
    gates = models.JSONField(default=dict, help_text="gate name -> threshold")
    on_failure = models.CharField(max_length=16, choices=OnFailure.choices, default=OnFailure.ROLLBACK)
    wave_index = models.IntegerField(default=-1, help_text="current wave, -1 before start")
    wave_started_at = models.DateTimeField(null=True, blank=True)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exclusions = models.JSONField(default=dict, blank=True, help_text="reason -> number of devices excluded")
    requirements = models.JSONField(
        default=dict, blank=True, help_text='extra device requirements: {"provider": "...", "min_storage_mb": 0}'
    )
    windows = models.JSONField(
        default=list,
        blank=True,
        help_text='maintenance windows (rollout/windows.py): [{"days": ["mon", …], "start": "01:00", "end": "05:00"}]',
    )
    window_tz = models.CharField(
        max_length=64, default="device", help_text="'device' (each device's tz label, else UTC) or an IANA zone"
    )
    conditions = models.JSONField(
        default=dict,
        blank=True,
        help_text='install conditions: {"power": "external", "network": "unmetered", "idle": true}',
    )
    commit_minutes = models.FloatField(
        default=60, help_text="a device that installed but has not committed within this long counts as failed"
    )
    bucketing = models.CharField(
        max_length=8,
        default="key",
        help_text="how a device's bucket is computed (rollout/placement.py): 'key' (kept counts answer its "
        "waves), 'sha256' (campaigns made before, counted by a scan)",
    )
    gate_report = models.JSONField(default=dict, blank=True, help_text="the latest gate evaluation, for the page")
    last_evaluated_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name


class CampaignDecision(models.Model):
    """One step of a campaign's timeline, by a person or by the gate job, with the numbers behind it."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="decisions")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_label = models.CharField(max_length=150, default="system")
    kind = models.CharField(max_length=24, help_text="start, advance, hold, pause, resume, rollback, complete, abort")
    reason = models.TextField(blank=True)
    numbers = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.campaign} {self.kind}"


class ManifestGeneration(models.Model):
    """One row counting changes to what devices are told (rollout/freshness.py).

    Bumped with every generation change and read first whenever a process loads its resolution data,
    so a manifest built from older data can be told apart from one built from newer data by number,
    whatever the clocks say.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    number = models.BigIntegerField(default=0)


class IssuedManifest(models.Model):
    """The newest manifest issued to each device: the source of truth for its sequence (rollout/freshness.py).

    A new sequence is claimed only when a manifest has to be signed anew (what it says changed, it is
    near expiry, or there is no row); every process that builds the same content meanwhile gets the
    same sequence and times, so the same bytes, signature and ETag.
    """

    device = models.OneToOneField("fleet.Device", primary_key=True, on_delete=models.CASCADE, related_name="+")
    sequence = models.BigIntegerField(help_text="max(previous + 1, server time in ms)")
    digest = models.CharField(max_length=64, help_text="hash of what the manifest says, freshness fields aside")
    generation = models.BigIntegerField(help_text="ManifestGeneration.number of the data it was built from")
    issued_at = models.BigIntegerField(help_text="Unix seconds")
    expires_at = models.BigIntegerField(help_text="Unix seconds")

    def __str__(self) -> str:
        return f"{self.device_id} #{self.sequence}"


class GateCheck(models.Model):
    """One evaluation of a campaign's gates: the numbers the gate job judged, when it judged them.

    The campaign page charts these (not rollup windows, which lag the gate by a rollup), so the
    chart's last point before a decision is the decision's own figure. Numbers from fewer than k
    devices on a side are stored hidden, as in the gate report.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="gate_checks")
    at = models.DateTimeField()
    wave = models.PositiveSmallIntegerField(help_text="1-based wave judged")
    verdict = models.CharField(max_length=24)
    gates = models.JSONField(default=dict, help_text="gate name -> public gate row (configured or not)")

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["campaign", "at"], name="gatecheck_campaign_at")]

    def __str__(self) -> str:
        return f"{self.campaign_id} wave {self.wave} {self.verdict} at {self.at:%H:%M:%S}"


class CampaignMove(models.Model):
    """The devices a campaign change moved, dropped from the ready manifests in batches (rollout/moves.py).

    A start, advance or rollback changes what the devices of a bucket range are told; the request
    records one of these and returns, and a Celery job walks the range by device key, dropping each
    affected device's ready manifest so its next poll re-resolves. ``cursor`` and ``done`` advance
    together, once per batch, so a job that dies resumes where the last batch ended and a batch run
    twice changes nothing more (a dropped manifest re-resolves to the same content).
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="moves")
    kind = models.CharField(max_length=16, help_text="start, advance, rollback")
    ranges = models.JSONField(default=list, help_text="device key ranges [[a, b), …] the change reaches")
    cursor = models.JSONField(default=dict, blank=True, help_text='{"range": i, "key": k, "id": "<uuid>"}')
    done = models.BigIntegerField(default=0)
    total = models.BigIntegerField(default=0, help_text="cohort devices in the ranges, from the kept counts")
    leased_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["finished_at"], name="campaignmove_finished")]

    def __str__(self) -> str:
        return f"{self.campaign_id} {self.kind} {self.done}/{self.total}"
