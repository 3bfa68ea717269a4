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


@shared_task(name="rollout.move_devices", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def move_devices(move_id: int) -> int:
    """Drop the ready manifests of the devices a campaign change reached, in batches (rollout/moves.py)."""
    from rollout import moves

    move = moves.run(move_id)
    return move.done if move is not None else -1


@shared_task(name="rollout.resume_moves", ignore_result=True)
def resume_moves() -> int:
    """Beat job: enqueue again the moves whose job died mid-way (their lease ran out)."""
    from rollout import moves

    return moves.resume_stale()
