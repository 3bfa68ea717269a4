"""Telemetry storage: aggregate window reports, rollups, the privacy ledger, drift results and alerts.

Counts are JSON lists of floats (DP noise makes them fractional or negative), not ArrayFields, so
the embedded SQLite demo keeps working. Charts and decisions read ``Rollup`` rows; raw ``Report``
rows are kept for ``EDGEFLEET_TELEMETRY_RETENTION_DAYS`` and then pruned.
"""

from django.db import models


class Report(models.Model):
    """One device's aggregate for one window of one model version; the id is made by the device."""

    id = models.UUIDField(primary_key=True)
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="reports")
    version = models.ForeignKey("ota.ModelVersion", on_delete=models.CASCADE, related_name="reports")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    inference_count = models.FloatField()
    error_count = models.FloatField()
    latency = models.JSONField(help_text="noisy counts over LATENCY_EDGES_MS")
    outputs = models.JSONField(help_text="noisy counts over the output bins")
    features = models.JSONField(help_text="feature name -> noisy counts")
    mechanism = models.CharField(max_length=16)
    epsilon = models.FloatField()
    received_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["version", "window_start"], name="report_version_window"),
            models.Index(fields=["device", "window_start"], name="report_device_window"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.version_id} {self.window_start:%Y-%m-%d %H:%M}"


class Rollup(models.Model):
    """Summed reports of one version, one cohort ("all" or a saved cohort's name), one window."""

    version = models.ForeignKey("ota.ModelVersion", on_delete=models.CASCADE, related_name="rollups")
    cohort = models.CharField(max_length=100, default="all")
    window_start = models.DateTimeField()
    window_seconds = models.IntegerField()
    n_reports = models.IntegerField(default=0)
    n_devices = models.IntegerField(default=0)
    inference_count = models.FloatField(default=0)
    error_count = models.FloatField(default=0)
    noise_var = models.FloatField(default=0, help_text="summed DP noise variance per bin")
    latency = models.JSONField(default=list)
    outputs = models.JSONField(default=list)
    features = models.JSONField(default=dict)
    drift_stale = models.BooleanField(default=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "cohort", "window_start"], name="rollup_unique"),
        ]
        indexes = [models.Index(fields=["version", "window_start"], name="rollup_version_window")]

    def __str__(self) -> str:
        return f"{self.version_id}/{self.cohort}@{self.window_start:%Y-%m-%d %H:%M}"


class RollupMark(models.Model):
    """High-water mark of the rollup job: reports received up to ``received_before`` are in rollups."""

    name = models.CharField(max_length=40, primary_key=True)
    received_before = models.DateTimeField()


class PrivacyLedger(models.Model):
    """Epsilon one device has spent on one UTC day (of its reports' windows), by sequential composition."""

    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="privacy_ledger")
    day = models.DateField()
    spent = models.FloatField(default=0)
    reports = models.IntegerField(default=0)
    refused = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "day"], name="ledger_device_day")]

    def __str__(self) -> str:
        return f"{self.device_id} {self.day} ε={self.spent:g}"


class DriftResult(models.Model):
    """Drift of one feature (or the output) of one rollup against the version's reference profile."""

    version = models.ForeignKey("ota.ModelVersion", on_delete=models.CASCADE, related_name="drift_results")
    cohort = models.CharField(max_length=100, default="all")
    feature = models.CharField(max_length=200, help_text='feature name, or "output"')
    window_start = models.DateTimeField()
    n_devices = models.IntegerField()
    n_reports = models.IntegerField()
    psi = models.FloatField()
    js = models.FloatField()
    w1 = models.FloatField(null=True)
    ks = models.FloatField()
    threshold = models.FloatField(help_text="noise-aware PSI alarm level")
    drifted = models.BooleanField()
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "cohort", "feature", "window_start"], name="drift_unique"),
        ]
        indexes = [models.Index(fields=["version", "window_start"], name="drift_version_window")]

    def __str__(self) -> str:
        return f"{self.version_id}/{self.cohort}/{self.feature} psi={self.psi:.3f}"


class Alert(models.Model):
    class Kind(models.TextChoices):
        DRIFT = "drift"
        REGRESSION = "regression"

    class State(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    version = models.ForeignKey("ota.ModelVersion", on_delete=models.CASCADE, related_name="alerts")
    cohort = models.CharField(max_length=100, default="all")
    feature = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN, db_index=True)
    opened_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True, help_text='"system" or the operator')
    numbers = models.JSONField(default=dict, blank=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "version", "cohort", "feature"],
                condition=models.Q(state="open"),
                name="one_open_alert",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.version_id}/{self.cohort}/{self.feature} {self.state}"
