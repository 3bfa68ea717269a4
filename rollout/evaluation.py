"""The gate job: compare a running campaign's canary with its control, judge the gates, and act through
the lifecycle (advance, complete, hold, pause, roll back). One campaign that cannot be judged is
quarantined, never raised to the job (docs/rollout.md, "The gate job").
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.audit import record
from rollout import cohorts, gate_checks, placement, progress
from rollout import gates as gate_logic
from rollout.lifecycle import CampaignError, advance, pause, rollback
from rollout.models import Campaign, CampaignDecision
from rollout.waiting import soak_seconds

S = Campaign.State


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
        cohort_selector=cohorts.selector_text(campaign.cohort) or None,
        thresholds={
            **campaign.gates,
            "min_devices": gate_logic.statistical_floor(min_devices),
            # success is a commit: installed and not committed within the probation is a failed install
            "commit_seconds": float(campaign.commit_minutes or 60) * 60,
        },
        gates=list(campaign.gates),
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
    soaked = elapsed
    if campaign.windows:
        # the soak clock runs only while a maintenance window is open for some device of the wave
        soaked = soak_seconds(
            campaign.cohort, campaign.windows, campaign.window_tz, campaign.wave_started_at or now, now
        )
        base["soak_seconds_in_windows"] = round(soaked, 1)
    soaking = gate_logic.readiness(soaked, wave.get("min_soak_minutes", 0), 10**9, 0)
    if soaking and campaign.windows and soaked < elapsed:
        soaking += " (the clock runs only inside the maintenance windows)"
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
    committed = progress.committed_count(campaign)
    numbers = {**base, "reporting_devices": reporting, "committed_devices": committed, **outcome.as_numbers()}
    numbers["gates"] = gate_logic.public_rows(numbers["gates"], min_cohort())
    gate_checks.record(campaign.pk, k, now, numbers, comparison, min_cohort())  # the page's chart
    if soaking and outcome.verdict != gate_logic.FAIL:
        _record_hold(campaign, k, soaking, {**numbers, "verdict": "soaking"})
        return "hold"
    # a wave counts devices that committed the version (and report), not ones that merely installed it
    waiting = gate_logic.readiness(elapsed, 0, min(reporting, committed), wave.get("min_devices", 0))
    if waiting and committed < reporting:
        waiting = waiting.replace("canary devices report", "canary devices committed and report")
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
