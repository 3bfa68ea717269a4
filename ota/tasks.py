"""Celery tasks of the registry: each one only calls ``ota.services``."""

from celery import shared_task

from edgefleet.guard import GuardedTask
from ota import services


class ValidationTask(GuardedTask):
    def on_poisoned(self, version_id: int) -> None:
        """The message crashed its worker twice: the version is rejected instead of tried again."""
        services.reject_crashed(version_id, self.request.id)


@shared_task(name="ota.tasks.validate_version", base=ValidationTask, bind=True, acks_late=True)
def validate_version(self: GuardedTask, version_id: int) -> str:
    """Validate an uploaded version (in the sandbox) and stage or reject it."""
    return services.run_validation(version_id, self.request.id)


@shared_task(name="ota.tasks.recover_stuck_validations")
def recover_stuck_validations() -> dict:
    """Beat job: no version stays ``validating`` after a worker crash."""
    return services.recover_stuck_validations()


@shared_task(name="ota.tasks.delete_orphan_artifacts")
def delete_orphan_artifacts() -> int:
    """Beat job: stored bytes that no version, reference or variant uses are removed."""
    from datetime import timedelta

    return services.delete_orphan_artifacts(min_age=timedelta(hours=1))
