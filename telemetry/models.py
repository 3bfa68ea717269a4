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
    mechanism = models.CharField(max_length=16, help_text="the server's assignment (a PrivacyAssignment)")
    epsilon = models.FloatField(help_text="the server's assignment; the device must have used exactly this")
    received_at = models.DateTimeField(db_index=True)
    quarantined = models.BooleanField(
        default=False, db_default=False, help_text="set aside by a job (see Quarantine); counted nowhere"
    )

    class Meta:
        constraints = [
            # One report per device, version and window: a second one (a new id) is refused, and two
            # batches racing each other cannot both store one.
            models.UniqueConstraint(fields=["device", "version", "window_start"], name="report_one_per_window"),
        ]
        indexes = [
            models.Index(fields=["version", "window_start"], name="report_version_window"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.version_id} {self.window_start:%Y-%m-%d %H:%M}"


class Rollup(models.Model):
    """Summed reports of one version, one cohort ("all" or a saved cohort's name), one window — or,
    for cohort "all", the medians of that window's secure-aggregation rounds (``source="rounds"``).

    Round figures live in this table rather than a model of their own because every reader (drift,
    the reference profile, the version page, the fleet health card, the rollout chart) asks one
    question — "what did the fleet look like in this version-window?" — and a round rollup answers
    it in the same units: each histogram is a median distribution times the estimated active
    devices, ``inference_count`` those devices, ``error_count`` the mean error fraction times them.
    One row per (version, cohort, window) then makes "rounds supersede reports" a property of the
    key, not a rule every reader must repeat: the round job overwrites the row, and the report job
    leaves a round row alone. ``rounds`` holds what only round rows have: per budget the groups,
    informative groups, devices, windows and the per-bin noise variance in distribution units
    (from the rounds' public parameters), and the void/failed rounds left out with their reasons.
    """

    class Source(models.TextChoices):
        REPORTS = "reports"
        ROUNDS = "rounds"

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
    source = models.CharField(
        max_length=8, choices=Source.choices, default=Source.REPORTS, db_default=Source.REPORTS,
        help_text="reports: summed window reports; rounds: medians of the window's secure-aggregation groups",
    )  # fmt: skip
    n_groups = models.IntegerField(default=0, db_default=0, help_text="groups per round window (rounds only)")
    rounds = models.JSONField(default=dict, blank=True, help_text="per budget: groups, devices, noise; left out")

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


class PrivacyAssignment(models.Model):
    """A (mechanism, epsilon) pair the server has told devices to use (``EDGEFLEET_DP_*`` at the time).

    Rollups and gates compute a report's noise from its registered assignment, so a row whose pair
    was never assigned (a device's own choice before ingest checked it, or a hand edit) is
    quarantined instead of setting the noise scale; and reports made before an operator changed
    the setting keep the noise they were made with.
    """

    mechanism = models.CharField(max_length=16)
    epsilon = models.FloatField()
    first_assigned_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mechanism", "epsilon"], name="privacy_assignment_unique")]

    def __str__(self) -> str:
        return f"{self.mechanism} ε={self.epsilon:g}"


class PrivacyLedger(models.Model):
    """Epsilon one device has spent on one UTC day (the day the server received the reports)."""

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
    drifted = models.BooleanField(help_text="PSI above its level, or (round rollups) the day's mean shift")
    mean_shift = models.FloatField(
        null=True, help_text="round rollups: the day's mean shift against the reference (feature units)"
    )
    mean_z = models.FloatField(null=True, help_text="its z (telemetry.mean_shift); null without drift rounds")
    mean_level = models.FloatField(null=True, help_text="|z| above this is drift")
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


class Quarantine(models.Model):
    """Something a job set aside instead of failing for everyone: a report row, a rollup, a version's
    drift or alerts, a gate, a campaign. One row per item; ``occurrences`` counts the runs that met it.
    """

    class Kind(models.TextChoices):
        REPORT = "report"
        ROLLUP = "rollup"
        DRIFT = "drift"
        ALERTS = "alerts"
        GATE = "gate"
        CAMPAIGN = "campaign"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    key = models.CharField(max_length=200, help_text="which item: a report id, version/cohort/window, a campaign id")
    version = models.ForeignKey(
        "ota.ModelVersion", null=True, blank=True, on_delete=models.CASCADE, related_name="quarantined"
    )
    reason = models.TextField()
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    occurrences = models.IntegerField(default=1)

    class Meta:
        ordering = ["-last_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["kind", "key"], name="quarantine_unique")]
        indexes = [models.Index(fields=["version", "-last_at"], name="quarantine_version")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key}: {self.reason[:80]}"


class AggRound(models.Model):
    """One secure-aggregation round: (model version, budget, window, group) and its public parameters.

    What the server keeps is the protocol's minimum (docs/secure-aggregation.md, "Storage"): the
    configuration every member is told, the phase and its deadline, the member sets U1..U3, the
    running sum of masked vectors (never one vector on its own) and, after unmasking, the sum only.
    Key material lives in ``RoundMessage`` rows until the round ends.
    """

    class Phase(models.TextChoices):
        ADVERTISE = "advertise"
        SHARE = "share"
        MASKED = "masked"
        UNMASK = "unmask"
        DONE = "done"
        FAILED = "failed"

    id = models.CharField(max_length=64, primary_key=True, help_text="public random round id")
    version = models.ForeignKey("ota.ModelVersion", on_delete=models.CASCADE, related_name="agg_rounds")
    budget = models.CharField(max_length=16, help_text="drift or health (telemetry.accounting.BUDGETS)")
    window_start = models.DateTimeField()
    window_seconds = models.IntegerField()
    group = models.IntegerField(help_text="group number within (version, budget, window)")
    n = models.IntegerField()
    k = models.IntegerField()
    t = models.IntegerField()
    vector_length = models.IntegerField()
    ring_bits = models.IntegerField(default=32)
    min_survivors = models.IntegerField()
    graph_seed = models.BinaryField()
    layout = models.JSONField(help_text="[[name, kind, size, scale], ...]: agent.encoding.Layout")
    noise_sigma2 = models.CharField(max_length=64, default="0", help_text="each device's noise variance, a fraction")
    noise_bound = models.IntegerField(default=0)
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.ADVERTISE)
    deadline = models.DateTimeField(help_text="the current phase closes then (server-set)")
    reason = models.TextField(blank=True, default="")
    u1 = models.JSONField(default=list)
    u2 = models.JSONField(default=list)
    u3 = models.JSONField(default=list)
    answered = models.IntegerField(
        default=0, help_text="members who answered the current phase (kept under the row lock: no count per message)"
    )
    running_sum = models.BinaryField(null=True, help_text="sum of masked vectors so far (ring bytes)")
    result = models.JSONField(null=True, help_text="the unmasked group sum (signed integers)")
    void = models.BooleanField(default=False, help_text="the sum is one no honest group can produce (see reason)")
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "budget", "window_start", "group"], name="agground_unique"),
        ]
        indexes = [
            models.Index(fields=["phase", "deadline"], name="agground_open"),
            models.Index(fields=["version", "window_start"], name="agground_version_window"),
        ]

    def __str__(self) -> str:
        return f"round {self.id} ({self.phase})"


class RoundMember(models.Model):
    """A device's place in a round: operational facts only (index, how far it got, why refused)."""

    round = models.ForeignKey(AggRound, on_delete=models.CASCADE, related_name="members")
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="round_memberships")
    index = models.IntegerField()
    identity_key = models.BinaryField(help_text="the device's enrolment Ed25519 key when the round was formed")
    reached = models.CharField(max_length=16, blank=True, default="", help_text="last phase it answered")
    dropped = models.CharField(max_length=16, blank=True, default="", help_text="phase it went silent in")
    refusals = models.IntegerField(default=0)
    last_refusal = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["round", "device"], name="roundmember_device"),
            models.UniqueConstraint(fields=["round", "index"], name="roundmember_index"),
        ]
        indexes = [models.Index(fields=["device", "round"], name="roundmember_by_device")]

    def __str__(self) -> str:
        return f"{self.round_id}#{self.index}"


class RoundMessage(models.Model):
    """Key material the protocol needs until the round ends, then deleted: a member's signed keys,
    its dealt shares' commitments, its inbox for a phase (what it must be sent), its revealed shares.
    Never a masked vector (those go straight into ``AggRound.running_sum``)."""

    class Kind(models.TextChoices):
        ADVERT = "advert"
        DEALT = "dealt"
        INBOX = "inbox"
        REVEALED = "revealed"

    round = models.ForeignKey(AggRound, on_delete=models.CASCADE, related_name="messages")
    index = models.IntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    phase = models.CharField(max_length=16, blank=True, default="")
    payload = models.JSONField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["round", "index", "kind", "phase"], name="roundmessage_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.round_id}#{self.index} {self.kind}"


class PrivacyPolicy(models.Model):
    """A model's device-level privacy setting (issue 12); absent means the ``EDGEFLEET_PRIVACY_*`` defaults.

    Rounds read it through ``telemetry.policy.policy_for(model)`` only; it is checked against the
    fleet when saved (``telemetry.feasibility``), so a stored policy could be met when it was saved.
    """

    model = models.OneToOneField("ota.Model", on_delete=models.CASCADE, related_name="privacy_policy")
    epsilon_drift_day = models.FloatField(help_text="ε per device per day for input/output distributions")
    epsilon_health_day = models.FloatField(help_text="ε per device per day for error fraction and latency")
    delta = models.FloatField()
    window_seconds = models.IntegerField()
    group_size = models.IntegerField(default=0, help_text="devices per aggregation group; 0 follows the fleet")
    drift_rounds_per_day = models.IntegerField()
    health_rounds_per_day = models.IntegerField(help_text="health rounds a day outside a canary soak")
    soak_rounds = models.IntegerField(help_text="health rounds a device joins while its wave soaks, per day")
    canary_size = models.IntegerField(help_text="the canary wave the figures are computed for")
    canary_groups = models.IntegerField(default=1, help_text="groups the canary wave is summed in (median)")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True)

    def __str__(self) -> str:
        return f"{self.model_id} ε={self.epsilon_drift_day:g}/{self.epsilon_health_day:g} δ={self.delta:g}"
