"""Celery tasks of the registry: each one only calls ``ota.services``."""

from celery import shared_task

from ota import services


@shared_task(name="ota.tasks.validate_version", acks_late=True)
def validate_version(version_id: int) -> str:
    """Validate an uploaded version and stage or reject it."""
    return services.run_validation(version_id)


@shared_task(name="ota.tasks.recover_stuck_validations")
def recover_stuck_validations() -> dict:
    """Beat job: no version stays ``validating`` after a worker crash."""
    return services.recover_stuck_validations()


@shared_task(name="ota.tasks.delete_orphan_artifacts")
def delete_orphan_artifacts() -> int:
    """Beat job: stored bytes that no version, reference or variant uses are removed."""
    from datetime import timedelta

    return services.delete_orphan_artifacts(min_age=timedelta(hours=1))
