"""Beat jobs: fold new reports into rollups, compute drift and alerts, prune old raw reports."""

from celery import shared_task

from telemetry import services


@shared_task(name="telemetry.rollup_and_drift")
def rollup_and_drift() -> dict:
    """Rollups first (only reports past the high-water mark), then drift on the rollups that changed."""
    return services.rollup_and_drift()


@shared_task(name="telemetry.prune_reports")
def prune_reports() -> int:
    return services.prune_reports()


@shared_task(name="telemetry.form_rounds")
def form_rounds() -> int:
    from telemetry import rounds

    return rounds.form_rounds()


@shared_task(name="telemetry.advance_rounds")
def advance_rounds() -> dict:
    """Close every round phase whose server-set deadline has passed."""
    from telemetry import rounds

    return rounds.advance_due()


@shared_task(name="telemetry.advance_round")
def advance_round(round_id: str) -> str:
    """Close a phase early: every expected member has answered."""
    from telemetry import rounds

    return rounds.advance(round_id)
