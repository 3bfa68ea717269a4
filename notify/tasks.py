"""Celery jobs of notifications: each only calls ``notify.delivery`` or ``notify.sweep``."""

from typing import Any

from celery import shared_task

from notify import delivery, sweep


@shared_task(name="notify.deliver", acks_late=True, ignore_result=True)
def deliver(delivery_id: str) -> str:
    """Send one delivery when due (a duplicate of this task finds it claimed or done: no second send)."""
    return delivery.deliver(delivery_id)


@shared_task(name="notify.send_due", ignore_result=True)
def send_due() -> int:
    """Beat job: queue due retries and first tries the broker did not take."""
    return delivery.send_due()


@shared_task(name="notify.sweep", ignore_result=True)
def sweep_events() -> dict[str, Any]:
    """Beat job: events no signal saw, the fleet's offline share, old events pruned."""
    return {"missed": sweep.missed_events(), "offline": sweep.check_offline(), "pruned": sweep.prune()}
