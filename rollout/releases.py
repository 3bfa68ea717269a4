"""Releases: "version V of model M is the desired version for cohort C" (no cohort: all devices)."""

from typing import Any

from fleet.models import Cohort
from ota.models import ModelVersion
from rollout.manifest import bump_generation
from rollout.models import Release


class ReleaseError(ValueError):
    pass


def create_release(version: ModelVersion, *, cohort: Cohort | None = None, note: str = "", user: Any = None) -> Release:
    """Only staged versions may be released; every process reloads its resolution data after."""
    if version.status != ModelVersion.Status.STAGED:
        raise ReleaseError(f"{version} is {version.status}; only staged versions can be released.")
    rel = Release.objects.create(
        model=version.model,
        version=version,
        cohort=cohort,
        note=note[:300],
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    bump_generation()
    return rel


def current_release(model_id: int, cohort: Cohort | None) -> Release | None:
    """The release devices of this cohort follow now: the cohort's own, else the fleet-wide one."""
    releases = Release.objects.filter(model_id=model_id).select_related("version")
    if cohort is not None:
        own = releases.filter(cohort=cohort).first()
        if own:
            return own
    return releases.filter(cohort__isnull=True).first() or releases.first()
