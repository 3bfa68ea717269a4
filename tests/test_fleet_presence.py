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


@pytest.mark.django_db(transaction=True)
def test_one_bad_entry_is_skipped_with_a_log_line_and_the_rest_is_flushed(celery_worker: object, caplog) -> None:
    """Whatever sits in Redis (written by an older version, by hand, or by an attacker who reached it),
    one device's garbage must not stop the flush for the others."""
    from fleet.presence import hash_key
    from fleet.tasks import flush_presence

    good = [factories.device(name=f"good-{i}")[0] for i in range(2)]
    bad = {name: factories.device(name=name)[0] for name in ("not-json", "nul", "not-a-map", "nan", "bad-seen", "long")}
    r = redis_client()
    now = time.time()
    for i, d in enumerate(good):
        r.hset(hash_key(str(d.id)), mapping={"seen": now, "state": json.dumps({"fraud": f"v{i}"})})
    entries = {
        "not-json": {"seen": now, "state": "{garbage"},
        "nul": {"seen": now, "state": '{"fraud": "v\\u0000"}'},
        "not-a-map": {"seen": now, "state": '["fraud", "v1"]'},
        "nan": {"seen": now, "state": '{"fraud": NaN}'},
        "bad-seen": {"seen": "yesterday", "state": json.dumps({"fraud": "v1"})},
        "long": {"seen": now, "state": json.dumps({"fraud": "v" * 5000})},
    }
    for name, mapping in entries.items():
        r.hset(hash_key(str(bad[name].id)), mapping=mapping)
    r.sadd(DIRTY, *[str(d.id) for d in good], *[str(d.id) for d in bad.values()], "not-a-uuid", "\xff\x00")

    caplog.set_level("WARNING", logger="fleet.presence")
    flush_presence.delay()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(
        Device.objects.filter(pk=d.pk, last_seen_at__isnull=False).exists() for d in good
    ):
        time.sleep(0.2)
    assert r.scard(DIRTY) == 0
    for i, d in enumerate(good):
        d.refresh_from_db()
        assert d.last_seen_at is not None and d.installed == {"fraud": f"v{i}"}
    for d in bad.values():
        d.refresh_from_db()
        assert d.installed == {}, d.name
    assert Device.objects.filter(name="bad-seen", last_seen_at__isnull=True).exists()
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    for d in bad.values():
        assert str(d.id) in logged, d.name
    assert "not-a-uuid" in logged
