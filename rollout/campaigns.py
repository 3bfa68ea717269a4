"""Campaign services: what an operator or the gate job does to a campaign, one transaction each.

Every state change goes through :func:`_transition`, which (in one transaction, with the campaign
row locked) checks the state is one the action may leave, writes the change, records a
``CampaignDecision`` for the campaign's timeline and an audit entry, and bumps the manifest
generation after commit so devices see the change on their next poll.

Placement is by stable bucket (``rollout.placement``): nothing here writes per-device rows.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from accounts.audit import record
from fleet import selectors
from fleet.models import Cohort, Device
from ota.models import ModelVersion
from rollout import gates as gate_logic
from rollout import placement
from rollout.models import Campaign, CampaignDecision, Release

S = Campaign.State
ACTIVE_STATES = (S.SCHEDULED, S.RUNNING, S.PAUSED)
# action -> states it may start from
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "start": (S.DRAFT, S.SCHEDULED),
    "pause": (S.RUNNING,),
    "resume": (S.PAUSED,),
    "advance": (S.RUNNING, S.PAUSED),
    "rollback": (S.RUNNING, S.PAUSED),
    "abort": (S.DRAFT, S.SCHEDULED, S.RUNNING, S.PAUSED),
}


class CampaignError(Exception):
    """A refused action, with a message for a person. Nothing was changed."""


# --- devices and cohorts ------------------------------------------------------------------------


def _selector_text(cohort: Cohort | None) -> str:
    return cohort.selector if cohort is not None else ""


def _cohort_prefilter(cohort: Cohort | None) -> Q:
    """A database filter for the cohort when fleet offers one; the Python predicate always decides."""
    if cohort is None:
        return Q()
    try:
        from fleet.services import selector_q  # landed by the fleet engineer
    except ImportError:
        return Q()
    try:
        return selector_q(selectors.parse(cohort.selector))
    except Exception:  # an odd selector: fall back to filtering in Python
        return Q()


def cohort_devices(cohort: Cohort | None) -> Iterator[tuple[Any, dict, dict]]:
    """(id, labels, hardware) of every device in the cohort (every device when there is none)."""
    match = selectors.predicate(selectors.parse(_selector_text(cohort)))
    rows = Device.objects.filter(_cohort_prefilter(cohort)).filter(token_revoked_at__isnull=True)
    for device_id, labels, hardware in rows.values_list("id", "labels", "hardware").iterator(chunk_size=2000):
        if match(labels or {}):
            yield device_id, labels or {}, hardware or {}


# Device scans that group in PostgreSQL. A dry run or a campaign page over 100,000 devices used to
# fetch every device's labels and hardware and hash its id in Python (seconds); instead the database
# computes each device's bucket (the same sha256 as ``placement.bucket``) and groups devices by what
# placement looks at: labels, the hardware fields ``placement`` reads, the wave the bucket falls in
# and whether free storage clears the version's threshold. Python then judges each of the few
# hundred groups with the very same ``placement`` functions, so the answers are those of the
# per-device loop (``tests/test_campaign_grouped.py`` holds the two paths to each other).

# 2**64 mod 10000: the bucket takes the digest's first 8 bytes as an unsigned integer, PostgreSQL
# reads them as a signed bigint.
_WRAP = 2**64 % placement.BUCKETS
_N = placement.BUCKETS
_BUCKET_SQL = (
    f"(SELECT CASE WHEN x >= 0 THEN x %% {_N} ELSE ((x %% {_N}) + {_N} + {_WRAP}) %% {_N} END FROM (SELECT "
    "('x' || substr(encode(sha256(convert_to(\"fleet_device\".\"id\"::text || %s, 'UTF8')), 'hex'), 1, 16))"
    "::bit(64)::bigint AS x) AS digest)"
)
_HW_FIELDS = ("arch", "ram_mb", "ort_version", "providers")
_STORAGE = '("fleet_device"."hardware" -> \'storage_free_mb\')'


def grouped_scan_available() -> bool:
    return connection.vendor == "postgresql"


def _storage_thresholds(req: placement.Requirements) -> tuple[float, float]:
    """The free-storage levels ``placement.incompatibility`` demands for the fp32 and int8 build."""
    fp32 = max(req.min_storage_mb, placement.STORAGE_FACTOR * (req.size_bytes or 0) / placement.MIB)
    int8 = max(req.min_storage_mb, placement.STORAGE_FACTOR * (req.int8_size_bytes or 0) / placement.MIB)
    return fp32, int8


GROUPS_CACHE_SECONDS = 15


def _cached_rows(sql: str, params: list[Any], names: list[str]) -> list[dict[str, Any]]:
    """The grouped rows, kept ``GROUPS_CACHE_SECONDS`` in the shared cache under a hash of the query.

    The scan still reads every device of the cohort (about 100 ms for 100,000 on an idle machine,
    far more on a busy one), and the campaign page and its live fragment ask for it every few
    seconds per open browser. Fifteen seconds of staleness is harmless here: these are progress
    and preview counts for a person, the gate job and manifests never read them, and any change
    of cohort, campaign, wave plan or version requirements changes the query and so the key.
    """
    from django.core.cache import cache

    key = "rollout:groups:" + hashlib.sha256(repr((sql, [str(p) for p in params])).encode()).hexdigest()
    rows = cache.get(key)
    if rows is None:
        with connection.cursor() as cur:
            cur.execute(sql, params)
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        cache.set(key, rows, GROUPS_CACHE_SECONDS)
    return rows


def _grouped_devices(
    cohort: Cohort | None,
    campaign_id: int,
    limits: list[int],
    req: placement.Requirements,
    installed_model: str | None = None,
    failed_label: str | None = None,
    cached: bool = False,
) -> Iterator[tuple[int, dict, dict, int | None, Any, bool]]:
    """``(n, labels, hardware, slot, installed, failed)`` per group of the cohort's devices.

    ``slot`` is the first ``i`` with ``bucket < limits[i]`` (None if none). ``hardware`` holds the
    fields placement reads; a numeric ``storage_free_mb`` is replaced by +inf or -inf according to
    the SQL comparison with the threshold of the variant the device gets, which is all
    ``incompatibility`` does with it.
    """
    import json

    from django.db.models import BooleanField, IntegerField, TextField
    from django.db.models.expressions import RawSQL

    match = selectors.predicate(selectors.parse(_selector_text(cohort)))
    fp32, int8 = _storage_thresholds(req)
    number = f"jsonb_typeof({_STORAGE}) = 'number'"
    # Per device (inner query): the bucket, hashed once, and the grouped fields as text (sorting and
    # hashing text is much cheaper than jsonb). The outer query groups and counts.
    per_device: dict[str, Any] = {
        "g_bucket": RawSQL(_BUCKET_SQL, [f":{campaign_id}"], output_field=IntegerField()),
        "g_labels": RawSQL('"fleet_device"."labels"::text', [], output_field=TextField()),
        "g_storage_raw": RawSQL(f"CASE WHEN {number} THEN NULL ELSE {_STORAGE}::text END", [], TextField()),
        "g_ok_fp32": RawSQL(f"CASE WHEN {number} THEN ({_STORAGE})::text::float8 >= %s END", [fp32], BooleanField()),
        "g_ok_int8": RawSQL(f"CASE WHEN {number} THEN ({_STORAGE})::text::float8 >= %s END", [int8], BooleanField()),
    }
    for name in _HW_FIELDS:
        per_device[f"g_hw_{name}"] = RawSQL('("fleet_device"."hardware" -> %s)::text', [name], TextField())
    if installed_model is not None:
        per_device["g_installed"] = RawSQL('("fleet_device"."installed" -> %s)::text', [installed_model], TextField())
        per_device["g_failed"] = RawSQL(
            'EXISTS (SELECT 1 FROM fleet_deviceevent e WHERE e.device_id = "fleet_device"."id" '
            "AND e.kind = 'install_failed' AND e.model_name = %s AND e.version_label = %s)",
            [installed_model, failed_label or ""],
            BooleanField(),
        )
    inner = (
        Device.objects.filter(_cohort_prefilter(cohort))
        .filter(token_revoked_at__isnull=True)
        .annotate(**per_device)
        .values(*per_device)
        .order_by()
    )
    inner_sql, inner_params = inner.query.sql_with_params()
    keys = [k for k in per_device if k != "g_bucket"]
    cases = " ".join(f"WHEN g_bucket < {int(lim)} THEN {i}" for i, lim in enumerate(limits))
    slot = f"CASE {cases} ELSE NULL END" if limits else "NULL"
    columns = ", ".join(keys)
    sql = f"SELECT {columns}, {slot} AS g_slot, count(*) FROM ({inner_sql}) AS d GROUP BY {columns}, g_slot"
    names = [*keys, "g_slot", "g_n"]
    if cached:
        rows = _cached_rows(sql, inner_params, names)
    else:
        with connection.cursor() as cur:
            cur.execute(sql, inner_params)
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def load(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    for row in rows:
        labels = load(row["g_labels"]) or {}
        if not match(labels):
            continue
        hw = {name: v for name in _HW_FIELDS if (v := load(row[f"g_hw_{name}"])) is not None}
        if row["g_storage_raw"] is not None and load(row["g_storage_raw"]) is not None:
            hw["storage_free_mb"] = load(row["g_storage_raw"])
        elif row["g_ok_fp32"] is not None:
            ok = row["g_ok_int8"] if placement.choose_variant(hw, req) == "int8" else row["g_ok_fp32"]
            hw["storage_free_mb"] = float("inf") if ok else float("-inf")
        yield row["g_n"], labels, hw, row["g_slot"], load(row.get("g_installed")), bool(row.get("g_failed"))


def overlapping_devices(a: Cohort | None, b: Cohort | None, limit: int = 5) -> list[str]:
    """Names of (up to ``limit``) devices that match both cohorts."""
    other = selectors.predicate(selectors.parse(_selector_text(b)))
    found: list[str] = []
    for device_id, labels, _ in cohort_devices(a):
        if other(labels):
            found.append(str(device_id))
            if len(found) >= limit:
                break
    return found


def requirements_for(version: ModelVersion, extra: Mapping[str, Any] | None = None) -> placement.Requirements:
    """What the version needs from a device: opset and size from the registry, int8 size if built."""
    report = version.report or {}
    int8 = version.variants.filter(kind="int8").select_related("artifact").first()
    extra = extra or {}
    opset = report.get("opset")
    return placement.Requirements(
        opset=int(opset) if isinstance(opset, (int, float)) else None,
        size_bytes=int(report.get("file_size") or version.artifact.size or 0),
        int8_size_bytes=int8.artifact.size if int8 else None,
        provider=(extra.get("provider") or None),
        min_storage_mb=float(extra.get("min_storage_mb") or 0),
    )


def current_release(model_id: int, cohort: Cohort | None) -> Release | None:
    """The release devices of this cohort follow now: the cohort's own, else the fleet-wide one."""
    releases = Release.objects.filter(model_id=model_id).select_related("version")
    if cohort is not None:
        own = releases.filter(cohort=cohort).first()
        if own:
            return own
    return releases.filter(cohort__isnull=True).first() or releases.first()


# --- dry run ------------------------------------------------------------------------------------


def _hardware_key(hw: Mapping[str, Any]) -> str:
    ram = hw.get("ram_mb")
    ram_txt = f"{int(ram) // 1024} GiB" if isinstance(ram, (int, float)) and ram >= 1024 else f"{ram} MiB"
    return f"{hw.get('arch') or '?'} · {ram_txt} · ort {hw.get('ort_version') or '?'}"


@dataclass
class DryRun:
    """How many devices each wave reaches, by label and hardware, and who is excluded and why."""

    total: int
    compatible: int
    excluded: dict[str, int]
    waves: list[dict[str, Any]]
    campaign_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "compatible": self.compatible,
            "excluded": self.excluded,
            "waves": self.waves,
            "campaign_id": self.campaign_id,
        }


def dry_run(
    *,
    version: ModelVersion,
    cohort: Cohort | None,
    waves: list[dict[str, Any]],
    campaign_id: int | None,
    requirements: Mapping[str, Any] | None = None,
    cached: bool = False,
) -> DryRun:
    """Count, per wave, the devices reached (cumulative), by label and hardware; exclusions by reason.

    Buckets depend on the campaign id, so the counts are exact for that id (the creation form
    reserves one) and statistically the same for any other. ``cached``: pages may take counts up
    to ``GROUPS_CACHE_SECONDS`` old (see ``_cached_rows``); starting a campaign never does.
    """
    req = requirements_for(version, requirements)
    cid = campaign_id if campaign_id is not None else 0
    excluded: Counter[str] = Counter()
    per_wave: list[dict[str, Counter]] = [
        {"labels": Counter(), "hardware": Counter(), "variant": Counter()} for _ in waves
    ]
    reached_new = [0] * len(waves)
    total = compatible = 0
    for n, labels, hw, k in _dry_run_groups(cohort, cid, waves, req, cached):
        total += n
        reason = placement.incompatibility(hw, req)
        if reason:
            excluded[reason] += n
            continue
        compatible += n
        if k is None:
            continue
        reached_new[k] += n
        stats = per_wave[k]
        for key, value in labels.items():
            stats["labels"][f"{key}={value}"] += n
        stats["hardware"][_hardware_key(hw)] += n
        stats["variant"][placement.choose_variant(hw, req)] += n
    rows: list[dict[str, Any]] = []
    cum: dict[str, Counter] = {"labels": Counter(), "hardware": Counter(), "variant": Counter()}
    running = 0
    for k, w in enumerate(waves):
        running += reached_new[k]
        for part in cum:
            cum[part].update(per_wave[k][part])
        rows.append(
            {
                "index": k,
                "number": k + 1,
                "percent": w.get("percent"),
                "new": reached_new[k],
                "devices": running,
                "by_label": dict(cum["labels"].most_common(8)),
                "by_hardware": dict(cum["hardware"].most_common(8)),
                "by_variant": dict(cum["variant"]),
            }
        )
    return DryRun(total, compatible, dict(excluded), rows, campaign_id)


def _dry_run_groups(
    cohort: Cohort | None, cid: int, waves: list[dict[str, Any]], req: placement.Requirements, cached: bool = False
) -> Iterator[tuple[int, dict, dict, int | None]]:
    """``(n, labels, hardware, first wave reaching them)``: groups from PostgreSQL, else one per device."""
    if grouped_scan_available():
        limits = [placement.coverage(waves, i) for i in range(len(waves))]
        for n, labels, hw, slot, _, _ in _grouped_devices(cohort, cid, limits, req, cached=cached):
            yield n, labels, hw, slot
        return
    for device_id, labels, hw in cohort_devices(cohort):
        yield 1, labels, hw, placement.wave_of(placement.bucket(device_id, cid), waves)


def reserve_campaign_id() -> int | None:
    """Take the next campaign id from the sequence so a preview's buckets are the real ones."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cur:
        cur.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [Campaign._meta.db_table])
        return int(cur.fetchone()[0])


def _reserved_id_usable(reserved: int | None) -> bool:
    if reserved is None or connection.vendor != "postgresql" or Campaign.objects.filter(pk=reserved).exists():
        return False
    with connection.cursor() as cur:
        cur.execute("SELECT last_value FROM " + connection.ops.quote_name(f"{Campaign._meta.db_table}_id_seq"))
        return 0 < reserved <= int(cur.fetchone()[0])


# --- creating -----------------------------------------------------------------------------------


def _refuse_overlap(campaign_model_id: int, cohort: Cohort | None, exclude_id: int | None = None) -> None:
    others = Campaign.objects.filter(model_id=campaign_model_id, state__in=ACTIVE_STATES).select_related("cohort")
    if exclude_id is not None:
        others = others.exclude(pk=exclude_id)
    for other in others:
        same = _selector_text(other.cohort).replace(" ", "") == _selector_text(cohort).replace(" ", "")
        shared = overlapping_devices(cohort, other.cohort)
        if same or shared:
            example = f" (e.g. device {shared[0]})" if shared else " (same selector)"
            raise CampaignError(
                f"Campaign “{other.name}” ({other.state}) already rolls out this model to devices of this "
                f"cohort{example}: one active campaign per model and device."
            )


def create_campaign(
    *,
    name: str,
    version: ModelVersion,
    cohort: Cohort | None,
    waves: list[dict[str, Any]],
    gates: Mapping[str, Any],
    on_failure: str = Campaign.OnFailure.ROLLBACK,
    previous_version: ModelVersion | None = None,
    requirements: Mapping[str, Any] | None = None,
    user: Any = None,
    request: HttpRequest | None = None,
    reserved_id: int | None = None,
) -> Campaign:
    """Create a draft campaign after checking the version, plan, gates and overlap."""
    name = (name or "").strip()
    problems: list[str] = []
    if not name:
        problems.append("Give the campaign a name.")
    if version.status != ModelVersion.Status.STAGED:
        problems.append(f"Version {version} is {version.status}, not staged: only staged versions roll out.")
    problems += placement.validate_waves(waves)
    problems += gate_logic.validate_gates(gates)
    if on_failure not in Campaign.OnFailure.values:
        problems.append("On failure must be pause or rollback.")
    if previous_version is None:
        release = current_release(version.model_id, cohort)
        previous_version = release.version if release else None
    if previous_version is not None and previous_version.model_id != version.model_id:
        problems.append("The previous version must be a version of the same model.")
    if previous_version is not None and previous_version.pk == version.pk:
        problems.append(f"{version} is already what these devices run.")
    if problems:
        raise CampaignError(" ".join(problems))
    clean_waves = [
        {
            "percent": float(w["percent"]),
            "min_soak_minutes": float(w.get("min_soak_minutes") or 0),
            "min_devices": int(w.get("min_devices") or 0),
        }
        for w in waves
    ]
    with transaction.atomic():
        _refuse_overlap(version.model_id, cohort)
        extra = {"id": reserved_id} if _reserved_id_usable(reserved_id) else {}
        campaign = Campaign.objects.create(
            name=name,
            model_id=version.model_id,
            version=version,
            previous_version=previous_version,
            cohort=cohort,
            waves=clean_waves,
            gates={k: float(v) for k, v in gates.items()},
            on_failure=on_failure,
            requirements=dict(requirements or {}),
            created_by=user if getattr(user, "is_authenticated", False) else None,
            **extra,
        )
        actor = _actor(user, request)
        CampaignDecision.objects.create(
            campaign=campaign, actor_label=actor, kind="create", numbers={"waves": clean_waves, "gates": campaign.gates}
        )
        record(
            "campaign.create",
            campaign,
            request=request,
            user=user,
            details={"campaign": campaign.pk, "version": str(version), "cohort": str(cohort or "all devices")},
        )
    return campaign


# --- transitions --------------------------------------------------------------------------------


def _actor(user: Any, request: HttpRequest | None) -> str:
    if user is not None and getattr(user, "is_authenticated", False):
        return user.get_username()
    if request is not None and getattr(request, "user", None) is not None and request.user.is_authenticated:
        return request.user.get_username()
    return "system"


def _bump() -> None:
    """Tell the manifest resolver campaigns changed (when the resolver has landed)."""
    try:
        from rollout.manifest import bump_generation
    except ImportError:
        return
    bump_generation()


def _transition(
    campaign_id: int,
    action: str,
    *,
    user: Any = None,
    request: HttpRequest | None = None,
    reason: str = "",
    numbers: dict[str, Any] | None = None,
    expect_wave: int | None = None,
    change: Any = None,
) -> Campaign:
    """Lock the campaign, check the state, apply ``change(campaign, now)``, record, bump after commit."""
    with transaction.atomic():
        campaign = (
            Campaign.objects.select_for_update(of=("self",)).select_related("version", "cohort").get(pk=campaign_id)
        )
        allowed = ALLOWED_FROM[action]
        if campaign.state not in allowed:
            raise CampaignError(
                f"Cannot {action} campaign “{campaign.name}”: it is {campaign.get_state_display().lower()} "
                f"(allowed from: {', '.join(allowed)})."
            )
        if expect_wave is not None and campaign.wave_index != expect_wave:
            raise CampaignError(f"Campaign “{campaign.name}” moved on to wave {campaign.wave_index + 1} meanwhile.")
        now = timezone.now()
        kind = change(campaign, now) if change else action
        kind = kind or action
        campaign.save()
        actor = _actor(user, request)
        details = {"campaign": campaign.pk, "state": campaign.state, "wave": campaign.wave_index + 1}
        if reason:
            details["reason"] = reason
        if numbers:
            details["numbers"] = numbers
        CampaignDecision.objects.create(
            campaign=campaign, actor_label=actor, kind=kind, reason=reason, numbers=numbers or {}
        )
        record(f"campaign.{kind}", campaign, request=request, user=user, actor_label=actor, details=details)
        transaction.on_commit(_bump)
    return campaign


def start(campaign_id: int, *, user: Any = None, request: HttpRequest | None = None, reason: str = "") -> Campaign:
    """Start wave 1, after re-checking overlap and the version, and freezing the exclusion counts."""

    def change(c: Campaign, now: datetime) -> str:
        if c.version.status != ModelVersion.Status.STAGED:
            raise CampaignError(f"Version {c.version} is {c.version.status}, not staged.")
        _refuse_overlap(c.model_id, c.cohort, exclude_id=c.pk)
        preview = dry_run(
            version=c.version, cohort=c.cohort, waves=c.waves, campaign_id=c.pk, requirements=c.requirements
        )
        c.exclusions = preview.excluded
        c.state, c.wave_index, c.wave_started_at, c.started_at = S.RUNNING, 0, now, now
        return "start"

    return _transition(campaign_id, "start", user=user, request=request, reason=reason, change=change)


def pause(
    campaign_id: int, *, user: Any = None, request: HttpRequest | None = None, reason: str = "", **kw: Any
) -> Campaign:
    """Hold the fleet where it is: devices already on the version stay, no new devices get it."""

    def change(c: Campaign, now: datetime) -> str:
        c.state = S.PAUSED
        return "pause"

    return _transition(campaign_id, "pause", user=user, request=request, reason=reason, change=change, **kw)


def resume(campaign_id: int, *, user: Any = None, request: HttpRequest | None = None, reason: str = "") -> Campaign:
    def change(c: Campaign, now: datetime) -> str:
        c.state = S.RUNNING
        return "resume"

    return _transition(campaign_id, "resume", user=user, request=request, reason=reason, change=change)


def _complete(c: Campaign, now: datetime, user: Any) -> None:
    """The last wave passed: the version becomes the cohort's release so devices stay on it."""
    c.state, c.finished_at = S.COMPLETED, now
    Release.objects.create(
        model_id=c.model_id,
        version=c.version,
        cohort=c.cohort,
        campaign=c,
        note=f"completed campaign “{c.name}”"[:300],
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )


def advance(
    campaign_id: int,
    *,
    user: Any = None,
    request: HttpRequest | None = None,
    reason: str = "",
    numbers: dict[str, Any] | None = None,
    expect_wave: int | None = None,
) -> Campaign:
    """Go to the next wave (completing after the last). A person must say why; the job passes numbers."""
    if (user is not None or request is not None) and not reason.strip():
        raise CampaignError("Say why you advance the campaign by hand.")

    def change(c: Campaign, now: datetime) -> str:
        if c.wave_index >= len(c.waves) - 1:
            _complete(c, now, user)
            return "complete"
        c.wave_index += 1
        c.wave_started_at = now
        c.state = S.RUNNING
        c.gate_report = {}
        return "advance"

    return _transition(
        campaign_id,
        "advance",
        user=user,
        request=request,
        reason=reason,
        numbers=numbers,
        expect_wave=expect_wave,
        change=change,
    )


def rollback(
    campaign_id: int,
    *,
    user: Any = None,
    request: HttpRequest | None = None,
    reason: str = "",
    numbers: dict[str, Any] | None = None,
    expect_wave: int | None = None,
) -> Campaign:
    """Every targeted device's manifest names the previous version again (agents hold it already)."""
    if (user is not None or request is not None) and not reason.strip():
        raise CampaignError("Say why you roll the campaign back.")

    def change(c: Campaign, now: datetime) -> str:
        c.state, c.finished_at = S.ROLLED_BACK, now
        return "rollback"

    return _transition(
        campaign_id,
        "rollback",
        user=user,
        request=request,
        reason=reason,
        numbers=numbers,
        expect_wave=expect_wave,
        change=change,
    )


def abort(campaign_id: int, *, user: Any = None, request: HttpRequest | None = None, reason: str = "") -> Campaign:
    """Stop the campaign; its devices follow the model's release again."""

    def change(c: Campaign, now: datetime) -> str:
        c.state, c.finished_at = S.ABORTED, now
        return "abort"

    return _transition(campaign_id, "abort", user=user, request=request, reason=reason, change=change)


ACTIONS = {"start": start, "pause": pause, "resume": resume, "advance": advance, "rollback": rollback, "abort": abort}


def act(action: str, campaign_id: int, *, request: HttpRequest, reason: str = "") -> Campaign:
    """One entry point for the page's buttons."""
    fn = ACTIONS.get(action)
    if fn is None:
        raise CampaignError(f"Unknown action {action!r}.")
    return fn(campaign_id, user=request.user, request=request, reason=reason)


# --- what the page shows ------------------------------------------------------------------------


def targeted_device_ids(campaign: Campaign) -> tuple[list[Any], dict[str, int]]:
    """Device ids the campaign reaches now (compatible, bucket below coverage) and exclusions by reason."""
    req = requirements_for(campaign.version, campaign.requirements)
    covered = placement.coverage(campaign.waves, campaign.wave_index)
    ids: list[Any] = []
    excluded: Counter[str] = Counter()
    for device_id, _, hw in cohort_devices(campaign.cohort):
        reason = placement.incompatibility(hw, req)
        if reason:
            excluded[reason] += 1
        elif placement.bucket(device_id, campaign.pk) < covered:
            ids.append(device_id)
    return ids, dict(excluded)


def install_progress(campaign: Campaign, cached: bool = False) -> dict[str, Any]:
    """How many targeted devices report the version installed, still the previous one, or something else.

    ``cached``: the page may show counts up to ``GROUPS_CACHE_SECONDS`` old (see ``_cached_rows``).
    """
    if grouped_scan_available():
        return _install_progress_grouped(campaign, cached)
    ids, excluded = targeted_device_ids(campaign)
    model = campaign.model.name
    counts: Counter[str] = Counter()
    for installed in Device.objects.filter(pk__in=ids).values_list("installed", flat=True).iterator(chunk_size=2000):
        label = (installed or {}).get(model)
        if label == campaign.version.label:
            counts["on_version"] += 1
        elif campaign.previous_version and label == campaign.previous_version.label:
            counts["on_previous"] += 1
        else:
            counts["other"] += 1
    failed = (
        Device.objects.filter(
            pk__in=ids,
            events__kind="install_failed",
            events__model_name=model,
            events__version_label=campaign.version.label,
        )
        .distinct()
        .count()
        if ids
        else 0
    )
    return {"targeted": len(ids), "excluded": excluded, "install_failed": failed, **counts}


def _install_progress_grouped(campaign: Campaign, cached: bool) -> dict[str, Any]:
    """``install_progress`` from grouped rows: one query however large the cohort."""
    req = requirements_for(campaign.version, campaign.requirements)
    covered = placement.coverage(campaign.waves, campaign.wave_index)
    model, label = campaign.model.name, campaign.version.label
    previous = campaign.previous_version.label if campaign.previous_version else None
    excluded: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    targeted = failed = 0
    groups = _grouped_devices(
        campaign.cohort, campaign.pk, [covered], req, installed_model=model, failed_label=label, cached=cached
    )
    for n, _, hw, slot, installed, has_failed in groups:
        reason = placement.incompatibility(hw, req)
        if reason:
            excluded[reason] += n
            continue
        if slot is None:
            continue
        targeted += n
        failed += n if has_failed else 0
        if installed == label:
            counts["on_version"] += n
        elif previous and installed == previous:
            counts["on_previous"] += n
        else:
            counts["other"] += n
    return {"targeted": targeted, "excluded": dict(excluded), "install_failed": failed, **counts}


# --- the gate job -------------------------------------------------------------------------------


def compare(campaign: Campaign, since: datetime, min_devices: int = 1) -> dict[str, dict[str, Any]]:
    """Canary (the campaign's version) vs control (the previous version) from telemetry.

    Returns ``{}`` until telemetry's ``canary_vs_control`` exists or when there is no control
    version: every gate is then "not enough data" and the campaign holds.
    """
    try:
        from telemetry.services import canary_vs_control
    except ImportError:
        return {}
    if campaign.previous_version_id is None:
        return {}
    return canary_vs_control(
        campaign.version_id,
        campaign.previous_version_id,
        since,
        cohort_selector=_selector_text(campaign.cohort) or None,
        thresholds={**campaign.gates, "min_devices": gate_logic.statistical_floor(min_devices)},
    )


def _record_hold(campaign: Campaign, wave_index: int, reason: str, numbers: dict[str, Any]) -> bool:
    """Record a hold once per distinct reason, so a 30-second job does not flood the timeline."""
    with transaction.atomic():
        c = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if c.state != S.RUNNING or c.wave_index != wave_index:
            return False
        c.gate_report, c.last_evaluated_at = numbers, timezone.now()
        c.save(update_fields=["gate_report", "last_evaluated_at"])
        last = c.decisions.order_by("-at", "-id").first()
        if last is not None and last.kind == "hold" and last.reason == reason:
            return False
        CampaignDecision.objects.create(campaign=c, kind="hold", reason=reason, numbers=numbers)
        record("campaign.hold", c, details={"campaign": c.pk, "wave": wave_index + 1, "reason": reason})
    return True


def min_cohort() -> int:
    """k: no number from fewer reporting devices on a side is stored or shown (docs/rollout.md)."""
    from django.conf import settings

    return int(getattr(settings, "EDGEFLEET_MIN_COHORT", 20))


class BrokenCampaign(Exception):
    """A running campaign whose stored plan the gate job cannot read (it is quarantined, not judged)."""


def config_problems(campaign: Campaign) -> list[str]:
    """What in a stored campaign makes it impossible to judge (rows can be changed past the form)."""
    problems: list[str] = []
    waves = campaign.waves
    if not isinstance(waves, list) or not all(isinstance(w, dict) for w in waves):
        problems.append("the wave plan is not a list of waves")
    elif not 0 <= campaign.wave_index < len(waves):
        problems.append(f"wave {campaign.wave_index + 1} is not in the plan ({len(waves)} waves)")
    else:
        problems += placement.validate_waves(waves)
    problems += gate_logic.validate_gates(campaign.gates)
    return problems


def evaluate_campaign(campaign_id: int, now: datetime | None = None) -> str:
    """Judge the current wave of one running campaign and act: advance, complete, hold, pause or rollback.

    The comparison runs outside any lock (it reads telemetry); the action then re-checks under the
    row lock that the campaign is still running the same wave, so two racing beats act once.
    A campaign whose stored plan or gates make no sense raises ``BrokenCampaign``.
    """
    now = now or timezone.now()
    campaign = Campaign.objects.select_related("version", "previous_version", "cohort").get(pk=campaign_id)
    if campaign.state != S.RUNNING or campaign.wave_index < 0:
        return "skip"
    problems = config_problems(campaign)
    if problems:
        raise BrokenCampaign(" ".join(problems))
    k = campaign.wave_index
    wave = campaign.waves[k]
    elapsed = (now - (campaign.wave_started_at or now)).total_seconds()
    base = {"wave": k + 1, "percent": wave.get("percent"), "elapsed_seconds": round(elapsed, 1)}
    soaking = gate_logic.readiness(elapsed, wave.get("min_soak_minutes", 0), 10**9, 0)
    since = campaign.wave_started_at or now
    if placement.coverage(campaign.waves, k) >= placement.BUCKETS:
        # The whole cohort is on the version: no device is left on the previous one to compare with
        # now, so the control is the previous version's reports since the campaign started.
        since = campaign.started_at or since
        base["control_since"] = "campaign start (no control devices left)"
    # Compared even while soaking: the soak keeps a healthy wave from advancing too early, but a
    # failing gate must not wait for it (the end-to-end rollback test holds this).
    comparison = compare(campaign, since, int(wave.get("min_devices") or 0))
    outcome = gate_logic.evaluate(campaign.gates, comparison)
    reporting = max((r.n_canary or 0 for r in outcome.rows), default=0)
    numbers = {**base, "reporting_devices": reporting, **outcome.as_numbers()}
    numbers["gates"] = gate_logic.public_rows(numbers["gates"], min_cohort())
    if soaking and outcome.verdict != gate_logic.FAIL:
        _record_hold(campaign, k, soaking, {**numbers, "verdict": "soaking"})
        return "hold"
    waiting = gate_logic.readiness(elapsed, 0, reporting, wave.get("min_devices", 0))
    verdict = gate_logic.NOT_ENOUGH if waiting and outcome.verdict != gate_logic.FAIL else outcome.verdict
    # A failing gate acts even before the soak or min_devices: a regression on few devices is still one.
    what = gate_logic.action(verdict, campaign.on_failure, is_last_wave=k >= len(campaign.waves) - 1)
    Campaign.objects.filter(pk=campaign.pk, state=S.RUNNING, wave_index=k).update(
        gate_report=numbers, last_evaluated_at=now
    )
    try:
        if what == "hold":
            reason = waiting or "waiting for data: " + ", ".join(outcome.waiting)
            _record_hold(campaign, k, reason, numbers)
        elif what in ("advance", "complete"):
            reason = f"wave {k + 1} passed every gate" + (" — campaign complete" if what == "complete" else "")
            advance(campaign.pk, reason=reason, numbers=numbers, expect_wave=k)
        elif what == "rollback":
            rollback(campaign.pk, reason=f"gate failed: {', '.join(outcome.failed)}", numbers=numbers, expect_wave=k)
        else:
            pause(campaign.pk, reason=f"gate failed: {', '.join(outcome.failed)}", numbers=numbers, expect_wave=k)
    except CampaignError:
        return "skip"  # another beat or an operator acted first
    if what in ("rollback", "pause"):
        _record_regression(campaign, what, outcome.failed, numbers)
    return what


def _record_regression(campaign: Campaign, what: str, failed: list[str], numbers: dict[str, Any]) -> None:
    """The finding behind an automatic rollback or pause becomes an alert operators see and resolve."""
    from telemetry.services import open_regression_alert

    done = "rolled back" if what == "rollback" else "paused"
    open_regression_alert(
        campaign.version_id,
        campaign.cohort.name if campaign.cohort else "all",
        f"{campaign.version} regressed against {campaign.previous_version} ({', '.join(failed)}); "
        f"campaign “{campaign.name}” {done}",
        {**numbers, "campaign": campaign.pk},
    )


def evaluate_guarded(campaign_id: int, now: datetime | None = None) -> str:
    """``evaluate_campaign``, with any failure quarantined (logged, shown on the campaign page) instead
    of raised; a clean evaluation clears the note. The campaign itself is left as it is."""
    import logging

    from telemetry import quarantine
    from telemetry.models import Quarantine

    key = str(campaign_id)
    try:
        what = evaluate_campaign(campaign_id, now)
    except Exception as e:
        logging.getLogger(__name__).exception("evaluating campaign %s failed", campaign_id)
        reason = str(e) if isinstance(e, BrokenCampaign) else quarantine.describe(e)
        version_id = Campaign.objects.filter(pk=campaign_id).values_list("version_id", flat=True).first()
        quarantine.record(Quarantine.Kind.CAMPAIGN, key, reason, version_id)
        return "error"
    if Quarantine.objects.filter(kind=Quarantine.Kind.CAMPAIGN, key=key).exists():
        quarantine.release(Quarantine.Kind.CAMPAIGN, key)
    return what


def evaluate_running() -> dict[str, int]:
    """Evaluate every running campaign; one campaign's failure is quarantined and the others go on."""
    results: Counter[str] = Counter()
    for cid in Campaign.objects.filter(state=S.RUNNING).values_list("pk", flat=True):
        results[evaluate_guarded(cid)] += 1
    return dict(results)


# --- the campaign layer of manifest resolution --------------------------------------------------


@dataclass(frozen=True)
class LayerEntry:
    """One campaign as the manifest resolver sees it, loaded once per generation."""

    campaign_id: int
    model: str
    state: str
    version_id: int
    previous_version_id: int | None
    cohort_id: int | None
    covered: int
    requirements: placement.Requirements


def load_layer() -> list[LayerEntry]:
    """Campaigns that decide something for devices now, oldest first (the first one for a model wins).

    - running or paused: devices in the covered buckets (and compatible) desire the new version;
    - rolled back, when nothing newer was released or campaigned for the model since: those devices
      desire the previous version again;
    - completed, while its release is in force: incompatible devices of the cohort stay on the
      previous version instead of following the release.
    """
    from django.db.models import Max

    latest_release = dict(Release.objects.values_list("model_id").annotate(at=Max("created_at")))
    latest_start = dict(
        Campaign.objects.exclude(started_at=None).values_list("model_id").annotate(at=Max("started_at"))
    )
    rows = (
        Campaign.objects.filter(state__in=[S.RUNNING, S.PAUSED, S.ROLLED_BACK, S.COMPLETED])
        .select_related("model", "version__artifact")
        .order_by("started_at", "id")
    )
    entries: list[LayerEntry] = []
    for c in rows:
        if c.state == S.ROLLED_BACK:
            newer_release = latest_release.get(c.model_id)
            if (newer_release and c.finished_at and newer_release > c.finished_at) or (
                latest_start.get(c.model_id) and c.started_at and latest_start[c.model_id] > c.started_at
            ):
                continue
        if c.state == S.COMPLETED and c.previous_version_id is None:
            continue
        entries.append(
            LayerEntry(
                campaign_id=c.pk,
                model=c.model.name,
                state=c.state,
                version_id=c.version_id,
                previous_version_id=c.previous_version_id,
                cohort_id=c.cohort_id,
                covered=placement.coverage(c.waves, c.wave_index),
                requirements=requirements_for(c.version, c.requirements),
            )
        )
    return entries


def manifest_hook(snapshot: Any, desired: list[Any], state: Any) -> list[Any]:
    """``rollout.manifest`` hook: apply campaigns on top of releases, with no query per poll."""
    from rollout.manifest import Desired, per_generation

    layer: list[LayerEntry] = per_generation(state, "campaigns", load_layer)
    if not layer:
        return desired
    by_model = {d.model: d for d in desired}
    decided: set[str] = set()
    hardware = snapshot.hardware or {}
    for e in layer:
        if e.model in decided or not state.cohort_matches(e.cohort_id, snapshot.labels or {}):
            continue
        compatible = placement.incompatibility(hardware, e.requirements) is None
        new, previous = state.version(e.version_id), state.version(e.previous_version_id or -1)
        if e.state == S.COMPLETED:
            current = by_model.get(e.model)
            if not compatible and current is not None and current.version.id == e.version_id and previous:
                by_model[e.model] = Desired(e.model, previous, None, None)
                decided.add(e.model)
            continue
        if not compatible or placement.bucket(snapshot.id, e.campaign_id) >= e.covered:
            continue
        decided.add(e.model)
        if e.state in (S.RUNNING, S.PAUSED) and new is not None:
            by_model[e.model] = Desired(e.model, new, previous, e.campaign_id)
        elif e.state == S.ROLLED_BACK:
            if previous is not None:
                by_model[e.model] = Desired(e.model, previous, None, e.campaign_id)
            else:
                by_model.pop(e.model, None)
    return list(by_model.values())


def register_manifest_hook() -> None:
    """Called from ``RolloutConfig.ready``; quiet while the resolver has not landed."""
    try:
        from rollout.manifest import DESIRED_HOOKS
    except ImportError:
        return
    if manifest_hook not in DESIRED_HOOKS:
        DESIRED_HOOKS.append(manifest_hook)


# --- form helpers and chart data ----------------------------------------------------------------


def parse_waves(text: str) -> list[dict[str, Any]]:
    """The form's wave plan, one wave a line: ``percent[, soak minutes[, min devices]]``."""
    waves: list[dict[str, Any]] = []
    for n, line in enumerate((text or "").splitlines(), start=1):
        parts = [p.strip() for p in line.replace(";", ",").split(",") if p.strip()]
        if not parts:
            continue
        if len(parts) > 3:
            raise CampaignError(f"Wave line {n}: at most three numbers (percent, soak minutes, min devices).")
        try:
            nums = [float(p.rstrip("%")) for p in parts]
        except ValueError as exc:
            raise CampaignError(f"Wave line {n}: {line.strip()!r} is not numbers.") from exc
        waves.append(
            {
                "percent": nums[0],
                "min_soak_minutes": nums[1] if len(nums) > 1 else 0,
                "min_devices": int(nums[2]) if len(nums) > 2 else 0,
            }
        )
    return waves


def _finite(*values: Any) -> bool:
    return all(isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _finite_list(values: Any, n: int) -> bool:
    return isinstance(values, list) and len(values) == n and _finite(*values)


def chart_series(campaign: Campaign) -> dict[str, Any]:
    """Error rate and p95 latency per rollup window, canary (version) vs control (previous version).

    Windows from fewer than ``EDGEFLEET_MIN_COHORT`` devices are left out (k-suppression): a rate
    from a handful of devices is noise, and showing it invites wrong conclusions.
    """
    from django.conf import settings

    try:
        from telemetry.models import Rollup
        from telemetry.regression import clipped_rate, denoise, histogram_quantile
        from telemetry.services import rollup_seconds
    except ImportError:
        return {"series": [], "suppressed": 0}
    from telemetry.binning import LATENCY_EDGES_MS

    n_bins = len(LATENCY_EDGES_MS) - 1

    k = int(getattr(settings, "EDGEFLEET_MIN_COHORT", 20))
    # Rollup windows are aligned buckets: the one the campaign started in counts too.
    since = (campaign.started_at or campaign.created_at) - timedelta(seconds=rollup_seconds())
    out: list[dict[str, Any]] = []
    suppressed = 0
    for role, version in (("canary", campaign.version), ("control", campaign.previous_version)):
        if version is None:
            continue
        xs, err, p95 = [], [], []
        rows = Rollup.objects.filter(version=version, cohort="all", window_start__gte=since).order_by("window_start")
        for r in rows.only("window_start", "n_devices", "inference_count", "error_count", "latency", "noise_var"):
            if r.n_devices < k:
                suppressed += 1
                continue
            if not (_finite(r.inference_count, r.error_count, r.noise_var) and _finite_list(r.latency, n_bins)):
                continue  # a rollup the jobs would not write (telemetry quarantines such rows)
            xs.append(r.window_start.isoformat())
            err.append(clipped_rate(r.error_count, r.inference_count))
            # Only bins that stand clear of the DP noise, as the latency gate reads them.
            lat = denoise(r.latency, r.noise_var) if r.latency else None
            p95.append(histogram_quantile(LATENCY_EDGES_MS, lat, 0.95) if lat is not None else None)
        out.append({"role": role, "version": version.label, "x": xs, "error_rate": err, "latency_p95": p95})
    return {"series": out, "suppressed": suppressed, "min_devices": k}
