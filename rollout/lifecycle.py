"""Campaign lifecycle: creating a campaign and every change of its state, one transaction each.

Every state change goes through :func:`_transition`, which (in one transaction, with the campaign
row locked) checks the state is one the action may leave, writes the change, records a
``CampaignDecision`` for the campaign's timeline and an audit entry, and bumps the manifest
generation after commit so devices see the change on their next poll.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.http import HttpRequest
from django.utils import timezone

from accounts.audit import record
from fleet.models import Cohort
from ota.models import ModelVersion
from rollout import cohorts, placement, targeting
from rollout import gates as gate_logic
from rollout import windows as window_rules
from rollout.models import Campaign, CampaignDecision, Release
from rollout.releases import current_release

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


# --- the id a preview uses ----------------------------------------------------------------------


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
        same = cohorts.selector_text(other.cohort).replace(" ", "") == cohorts.selector_text(cohort).replace(" ", "")
        shared = cohorts.overlapping_devices(cohort, other.cohort)
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
    windows: list[Any] | None = None,
    window_tz: str = window_rules.DEVICE_TZ,
    conditions: Mapping[str, Any] | None = None,
    commit_minutes: float = 60,
) -> Campaign:
    """Create a draft campaign after checking the version, plan, gates, windows and overlap.

    ``windows``: texts (``mon-fri 01:00-05:00``) or stored dicts; ``window_tz``: ``device`` or an
    IANA zone; ``conditions``: what a device must report before it installs (rollout/windows.py);
    ``commit_minutes``: how long an installed device has to report ``committed``."""
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
    clean_windows, clean_conditions = [], {}
    try:
        clean_windows = [w.as_dict() for w in window_rules.parse_windows(windows or [])]
        window_rules.validate_tz_mode(window_tz)
        clean_conditions = window_rules.validate_conditions(conditions)
    except window_rules.WindowError as e:
        problems.append(str(e))
    if not isinstance(commit_minutes, int | float) or not 1 <= commit_minutes <= 7 * 24 * 60:
        problems.append("Commit within must be between 1 minute and 7 days.")
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
            windows=clean_windows,
            window_tz=window_tz,
            conditions=clean_conditions,
            commit_minutes=float(commit_minutes),
            created_by=user if getattr(user, "is_authenticated", False) else None,
            **extra,
        )
        actor = _actor(user, request)
        CampaignDecision.objects.create(
            campaign=campaign,
            actor_label=actor,
            kind="create",
            numbers={
                "waves": clean_waves,
                "gates": campaign.gates,
                **({"windows": clean_windows, "window_tz": window_tz} if clean_windows else {}),
                **({"conditions": clean_conditions} if clean_conditions else {}),
            },
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
        before_wave = campaign.wave_index
        kind = change(campaign, now) if change else action
        kind = kind or action
        campaign.save()
        from rollout import moves

        outcome = moves.plan(campaign, kind, before_wave)
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
        # only the devices the change reaches re-resolve, moved in Celery batches (rollout/moves.py)
        transaction.on_commit(lambda: moves.after_commit(outcome))
    return campaign


def start(campaign_id: int, *, user: Any = None, request: HttpRequest | None = None, reason: str = "") -> Campaign:
    """Start wave 1, after re-checking overlap and the version, and freezing the exclusion counts."""

    def change(c: Campaign, now: datetime) -> str:
        if c.version.status != ModelVersion.Status.STAGED:
            raise CampaignError(f"Version {c.version} is {c.version.status}, not staged.")
        _refuse_overlap(c.model_id, c.cohort, exclude_id=c.pk)
        preview = targeting.dry_run(
            version=c.version,
            cohort=c.cohort,
            waves=c.waves,
            campaign_id=c.pk,
            requirements=c.requirements,
            bucketing=c.bucketing,
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


# --- the creation form ---------------------------------------------------------------------------


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
