from typing import Any

from django.apps import AppConfig
from django.core import checks


class TelemetryConfig(AppConfig):
    name = "telemetry"

    def ready(self) -> None:
        checks.register(telemetry_settings_check, "telemetry")
        from django.db.models.signals import post_save

        from telemetry import rollback_alerts

        post_save.connect(
            rollback_alerts.on_decision, sender="rollout.CampaignDecision", dispatch_uid="telemetry.rollback_alerts"
        )


def telemetry_settings_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The privacy and window settings devices are told must be usable (``manage.py check``).

    With an unusable pair every report would be refused; with a max age shorter than a window none
    could ever arrive.
    """
    from django.conf import settings

    from telemetry import trust

    errors: list[checks.CheckMessage] = []
    problem = trust.assignment_problem(*trust.assigned())
    if problem:
        errors.append(checks.Error(f"EDGEFLEET_DP_MECHANISM / EDGEFLEET_DP_EPSILON: {problem}", id="telemetry.E001"))
    window = int(getattr(settings, "EDGEFLEET_TELEMETRY_WINDOW", 300))
    if not 0 < window <= trust.MAX_WINDOW_SECONDS:
        errors.append(checks.Error("EDGEFLEET_TELEMETRY_WINDOW must be 1 s to a day", id="telemetry.E002"))
    if trust.max_age_seconds() < 2 * window:
        errors.append(
            checks.Error("EDGEFLEET_TELEMETRY_MAX_AGE_SECONDS must be at least two windows", id="telemetry.E003")
        )
    if trust.clock_skew_seconds() < 0 or trust.max_inferences_per_second() <= 0:
        errors.append(
            checks.Error(
                "EDGEFLEET_TELEMETRY_CLOCK_SKEW_SECONDS must be >= 0 and "
                "EDGEFLEET_TELEMETRY_MAX_INFERENCES_PER_SECOND > 0",
                id="telemetry.E004",
            )
        )
    return errors
