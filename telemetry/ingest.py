"""A device's batch of window reports: checked, charged to the privacy ledger, stored once.

What a report must satisfy (each a per-report rejection code, so one stale report never blocks a
device's spool; docs/protocol.md, docs/privacy.md):

- ``unknown_version`` / ``version_not_assigned``: a version this device was told to run;
- ``bad_window``: one cell of the window grid (start a multiple of ``window_seconds`` since the
  epoch, exactly ``window_seconds`` long), ending at most the clock-skew allowance after now and
  starting at most the max age before it;
- ``bins_mismatch``: the manifest's histograms; ``privacy_mismatch``: exactly the mechanism and
  epsilon the manifest gave; ``out_of_range``: every count finite and within what a window holds;
- ``duplicate_window``: one report per device, version and window (a database constraint);
  ``id_conflict``: another device's id; ``budget_exhausted``: the day's privacy budget, charged on
  the day the server *received* the report.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ota.models import ModelVersion
from telemetry import checks, privacy, trust
from telemetry.models import PrivacyLedger, Report

Rejection = checks.Problem


def daily_budget() -> float:
    return float(getattr(settings, "EDGEFLEET_DP_DAILY_BUDGET", 600.0))


def device_was_told(device_id: uuid.UUID, version: ModelVersion) -> bool:
    """THE single place that decides whether a device may report on a version.

    Asks the manifest's record ("was this device ever told to run it") when rollout has it;
    until then, any version that passed validation (staged or archived) is accepted.
    """
    try:
        from rollout.manifest import was_told
    except ImportError:
        return version.status in (ModelVersion.Status.STAGED, ModelVersion.Status.ARCHIVED)
    return bool(was_told(device_id, version.id))


class _Batch:
    """Per-batch caches, so 500 reports on one version cost one lookup."""

    def __init__(self, device_id: uuid.UUID) -> None:
        self.device_id = device_id
        self.versions: dict[tuple[str, str], ModelVersion | None] = {}
        self.told: dict[int, bool] = {}
        self.shapes: dict[int, checks.Shape] = {}
        self.bounds: dict[int, tuple[float, float]] = {}
        self.mechanism, self.epsilon = trust.assigned()
        self.unusable = trust.assignment_problem(self.mechanism, self.epsilon)

    def version(self, model: str, label: str) -> ModelVersion:
        key = (model, label)
        if key not in self.versions:
            self.versions[key] = ModelVersion.objects.filter(model__name=model, label=label).first()
        v = self.versions[key]
        if v is None:
            raise Rejection("unknown_version", f"no version {label!r} of model {model!r}")
        if v.id not in self.told:
            self.told[v.id] = device_was_told(self.device_id, v)
            self.shapes[v.id] = trust.shape_of(v)
            if self.unusable is None:
                self.bounds[v.id] = trust.bounds(self.mechanism, self.epsilon, self.shapes[v.id])
        if not self.told[v.id]:
            raise Rejection("version_not_assigned", f"this device was never told to run {model}:{label}")
        return v


def check_report(r: Any, batch: _Batch, now: datetime) -> tuple[ModelVersion, Report]:
    """Checks of one schema-valid report → an unsaved Report, or raise Rejection."""
    version = batch.version(r.model, r.version)
    checks.check_window(
        r.window_start, r.window_end, trust.window_seconds(), now, trust.clock_skew_seconds(), trust.max_age_seconds()
    )
    latency, outputs = list(r.latency_ms.counts), list(r.outputs.counts)
    features = {k: list(v.counts) for k, v in r.features.items()}
    checks.check_shape(latency, outputs, features, batch.shapes[version.id], latency_name="latency_ms")
    if batch.unusable is not None:
        raise Rejection("privacy_mismatch", f"the server's privacy setting is unusable ({batch.unusable})")
    if r.privacy.mechanism != batch.mechanism or r.privacy.epsilon != batch.epsilon:
        raise Rejection(
            "privacy_mismatch",
            f"privacy must be {batch.mechanism} with epsilon {batch.epsilon!r}, exactly as the manifest says "
            f"(got {r.privacy.mechanism} with {r.privacy.epsilon!r})",
        )
    lo, hi = batch.bounds[version.id]
    checks.check_values(r.inference_count, r.error_count, latency, outputs, features, lo, hi, "latency_ms")
    report = Report(
        id=r.id,
        device_id=batch.device_id,
        version_id=version.id,
        window_start=r.window_start.astimezone(UTC),
        window_end=r.window_end.astimezone(UTC),
        inference_count=r.inference_count,
        error_count=r.error_count,
        latency=latency,
        outputs=outputs,
        features=features,
        # The server's assignment (equal to what the device sent, checked above).
        mechanism=batch.mechanism,
        epsilon=batch.epsilon,
        received_at=now,
    )
    return version, report


def _lock_device(device_id: uuid.UUID) -> None:
    """Serialise one device's batches (PostgreSQL advisory lock, released at commit).

    Duplicate checks then see every earlier batch; the unique constraint stays the last word.
    SQLite (the embedded demo) serialises every write anyway.
    """
    if connection.vendor != "postgresql":
        return
    digest = hashlib.blake2b(b"telemetry-ingest:" + device_id.bytes, digest_size=8).digest()
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest, "big", signed=True)])


def ingest_reports(device_id: uuid.UUID, reports: list[Any], now: datetime | None = None) -> dict[str, list]:
    """Store a batch of schema-valid reports from one device; durable when this returns.

    Replays (an id this device sent before) are acknowledged as duplicates and change nothing,
    not even the privacy budget. A second report for a (version, window) this device already
    reported is refused (``duplicate_window``). Each accepted report spends the assigned epsilon on
    the ledger of the UTC day the server received it; one past the daily budget is refused.
    """
    now = now or timezone.now()
    device_id = uuid.UUID(str(device_id))
    batch = _Batch(device_id)
    rejected: list[dict] = []
    candidates: list[Report] = []
    seen: set[uuid.UUID] = set()
    duplicates: list[str] = []
    for r in reports:
        if r.id in seen:
            duplicates.append(str(r.id))
            continue
        seen.add(r.id)
        try:
            candidates.append(check_report(r, batch, now)[1])
        except Rejection as e:
            rejected.append({"id": str(r.id), "code": e.code, "message": e.message})
    accepted: list[Report] = []
    if candidates:
        for attempt in range(2):
            try:
                accepted, late = _store(device_id, candidates, now)
                break
            except IntegrityError:
                # Only when the lock above could not serialise (another database): the constraint
                # refused a racing duplicate. Judge the batch again against what is stored now.
                if attempt:
                    raise
        duplicates += late["duplicates"]
        rejected += late["rejected"]
    return {"accepted": [str(c.id) for c in accepted], "duplicates": duplicates, "rejected": rejected}


def _store(device_id: uuid.UUID, candidates: list[Report], now: datetime) -> tuple[list[Report], dict]:
    budget = daily_budget()
    day = now.astimezone(UTC).date()
    duplicates: list[str] = []
    rejected: list[dict] = []
    accepted: list[Report] = []
    with transaction.atomic():
        _lock_device(device_id)
        trust.register_current()
        PrivacyLedger.objects.bulk_create([PrivacyLedger(device_id=device_id, day=day)], ignore_conflicts=True)
        ledger = PrivacyLedger.objects.select_for_update().get(device_id=device_id, day=day)
        owners = dict(Report.objects.filter(id__in=[c.id for c in candidates]).values_list("id", "device_id"))
        taken = set(
            Report.objects.filter(
                device_id=device_id,
                version_id__in={c.version_id for c in candidates},
                window_start__in={c.window_start for c in candidates},
            ).values_list("version_id", "window_start")
        )
        for c in candidates:
            owner = owners.get(c.id)
            if owner is not None:
                if owner == device_id:
                    duplicates.append(str(c.id))
                else:
                    rejected.append({"id": str(c.id), "code": "id_conflict", "message": "id already used"})
                continue
            if (c.version_id, c.window_start) in taken:
                rejected.append(
                    {
                        "id": str(c.id),
                        "code": "duplicate_window",
                        "message": f"this device already reported this version for the window starting "
                        f"{c.window_start.isoformat()}",
                    }
                )
                continue
            if not privacy.budget_allows(ledger.spent, c.epsilon, budget):
                ledger.refused += 1
                rejected.append(
                    {
                        "id": str(c.id),
                        "code": "budget_exhausted",
                        "message": f"daily privacy budget {budget:g} spent ({ledger.spent:g}) for {day}",
                    }
                )
                continue
            ledger.spent += c.epsilon
            ledger.reports += 1
            taken.add((c.version_id, c.window_start))
            accepted.append(c)
        Report.objects.bulk_create(accepted, batch_size=500)
        ledger.save(update_fields=["spent", "reports", "refused"])
    return accepted, {"duplicates": duplicates, "rejected": rejected}
