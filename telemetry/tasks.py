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
