"""Presence: polls write only Redis; the beat job flushes to PostgreSQL on a real Celery worker."""

import json
import time

import pytest
from django.test import Client

from fleet.models import Device
from fleet.presence import DIRTY, drain, redis_client
from rollout.manifest import bump_generation
from tests import factories


@pytest.mark.django_db(transaction=True)
def test_poll_is_batched_and_flushed_by_the_worker(celery_worker: object) -> None:
    from fleet.tasks import flush_presence

    bump_generation()
    device, token = factories.device()
    client = Client()
    state = json.dumps({"models": {"fraud": "v3"}})
    resp = client.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_X_AGENT_STATE=state)
    assert resp.status_code == 200
    device.refresh_from_db()
    assert device.last_seen_at is None  # no database write on the poll path
    drain()  # what the per-process flusher thread does every second
    assert redis_client().sismember(DIRTY, str(device.id))

    flush_presence.delay()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        device.refresh_from_db()
        if device.last_seen_at is not None:
            break
        time.sleep(0.2)
    assert device.last_seen_at is not None and device.installed == {"fraud": "v3"}
    assert not redis_client().sismember(DIRTY, str(device.id))
    assert Device.objects.get(pk=device.id).last_seen_at == device.last_seen_at
