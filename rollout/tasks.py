"""Celery jobs of the rollout app: thin wrappers over ``rollout.evaluation``."""

from celery import shared_task

from rollout import evaluation


@shared_task(name="rollout.evaluate_campaigns", ignore_result=True)
def evaluate_campaigns() -> dict[str, int]:
    """Beat job (every ``EDGEFLEET_GATE_INTERVAL`` s): judge each running campaign's wave and act."""
    return evaluation.evaluate_running()


@shared_task(name="rollout.evaluate_campaign", ignore_result=True)
def evaluate_campaign(campaign_id: int) -> str:
    """Judge one campaign now (used after an operator action, so the page does not wait for beat)."""
    return evaluation.evaluate_guarded(campaign_id)
