"""The poll path's caches (rollout/manifest.py: poll): a ready manifest is served from Redis by a
process that never saw the device, re-signed only when its bytes change, and never re-cached by a
poll that raced a revocation."""

from typing import Any

import pytest

from fleet import manifests, services
from fleet.auth import forget_counter_key, hash_token, poll_key
from fleet.errors import ProtocolError
from fleet.presence import redis_client
from ota import signing
from rollout import manifest
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def device() -> tuple[Any, str]:
    factories.release(factories.staged_version("fraud", "v1", seed=1))
    return factories.device(labels={"region": "eu"})


def test_a_fresh_process_serves_the_ready_manifest_from_redis_without_signing(device, monkeypatch) -> None:
    dev, token = device
    first = manifests.poll(token)
    assert redis_client().exists(poll_key(hash_token(token)))
    manifests._ready.clear()  # another worker: nothing in its memory
    manifests._rests.clear()
    monkeypatch.setattr(signing, "sign", lambda data: pytest.fail("a ready manifest must not be signed again"))
    again = manifests.poll(token)
    assert (again.etag, again.body) == (first.etag, first.body)
    assert again.device_id == dev.id
    assert signing.verify(signing.public_info()["public_key"], again.canonical, _sig(again))


def test_generation_bump_rebuilds_but_reuses_the_signature_when_nothing_changed(device, monkeypatch) -> None:
    _, token = device
    first = manifests.poll(token)
    manifest.bump_generation()
    manifests._ready.clear()
    monkeypatch.setattr(signing, "sign", lambda data: pytest.fail("same bytes: the old signature still signs them"))
    same = manifests.poll(token)
    assert same.gen != first.gen and same.body == first.body


def test_generation_bump_that_changes_the_desired_version_resigns(device) -> None:
    _, token = device
    first = manifests.poll(token)
    factories.release(factories.staged_version("fraud", "v2", seed=2))
    manifests._ready.clear()
    second = manifests.poll(token)
    assert second.etag != first.etag and b'"version":"v2"' in second.body
    assert signing.verify(signing.public_info()["public_key"], second.canonical, _sig(second))


def test_revocation_reaches_a_process_holding_the_ready_manifest(device) -> None:
    dev, token = device
    manifests.poll(token)
    services.revoke_token(dev)
    assert not redis_client().exists(poll_key(hash_token(token)))
    with pytest.raises(ProtocolError) as e:
        manifests.poll(token)
    assert e.value.status == 403


def test_a_poll_that_raced_a_revocation_does_not_store_its_manifest(device, monkeypatch) -> None:
    dev, token = device
    th = hash_token(token)
    real_build = manifests._build

    def build_then_revoked(*args: Any, **kwargs: Any) -> Any:
        built = real_build(*args, **kwargs)
        services.revoke_token(dev)  # lands between reading the snapshot and storing the manifest
        return built

    monkeypatch.setattr(manifests, "_build", build_then_revoked)
    manifests.poll(token)  # this one answer was already on its way
    monkeypatch.setattr(manifests, "_build", real_build)
    assert redis_client().get(forget_counter_key(th)) is not None
    assert not redis_client().exists(poll_key(th)), "a stale snapshot must not be cached"
    manifests._ready.clear()
    with pytest.raises(ProtocolError) as e:
        manifests.poll(token)
    assert e.value.status == 403


def _sig(ready: manifests.Ready) -> str:
    import json

    return json.loads(ready.sig)["value"]


# ---------------------------------------------------------------- per-device forgetting


@pytest.fixture
def check_now(settings) -> None:
    """Every epochs.current() re-reads Redis (the default is at most every 0.5 s)."""
    settings.EDGEFLEET_EPOCH_CHECK_SECONDS = 0


def _forget_in_another_process(token_hash: str) -> None:
    """fleet.auth.forget_device run by a separate Python process on the same Redis."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    code = f"import django; django.setup(); from fleet.auth import forget_device; forget_device({token_hash!r})"
    env = {**os.environ, "REDIS_URL": settings.REDIS_URL, "DJANGO_SETTINGS_MODULE": "edgefleet.settings"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_a_revocation_in_another_process_drops_only_that_device_here(check_now) -> None:
    from fleet.models import Device

    factories.release(factories.staged_version("fraud", "v1", seed=1))
    (a, a_token), (b, b_token) = factories.device(name="a"), factories.device(name="b")
    manifests.poll(a_token)
    b_ready = manifests.poll(b_token)
    Device.objects.filter(pk=a.pk).update(token_revoked_at=a.enrolled_at)  # the row, without forgetting here
    assert manifests.poll(a_token).device_id == a.id, "not yet told: memory still answers"

    _forget_in_another_process(a.token_hash)
    with pytest.raises(ProtocolError) as e:
        manifests.poll(a_token)
    assert e.value.status == 403
    assert manifests._ready.get(b.token_hash) is b_ready, "another device's ready manifest stays in memory"
    assert manifests.poll(b_token) is b_ready


@pytest.mark.django_db(transaction=True)  # the other thread has its own database connection
def test_a_forget_reaches_other_threads_of_this_process(device, check_now) -> None:
    import threading

    from django.db import connection

    dev, token = device
    manifests.poll(token)
    services.revoke_token(dev)
    seen: list[int] = []

    def poll_in_thread() -> None:
        try:
            manifests.poll(token)
            seen.append(200)
        except ProtocolError as e:
            seen.append(e.status)
        finally:
            connection.close()  # the thread's own connection, or the test database cannot be dropped

    t = threading.Thread(target=poll_in_thread)
    t.start()
    t.join(10)
    assert seen == [403]


def test_a_fill_that_read_before_a_forget_is_not_kept(device, check_now, monkeypatch) -> None:
    """A poll reads the ready entry from Redis, the device is forgotten elsewhere and this process
    applies that, then the poll stores what it read: it must not stay in memory."""
    from fleet import epochs

    dev, token = device
    manifests.poll(token)
    manifests._ready.clear()
    real = manifests._poll_redis

    def read_then_forgotten(*args: Any, **kwargs: Any) -> Any:
        got = real(*args, **kwargs)
        _forget_in_another_process(dev.token_hash)
        epochs.current()  # this process applies the log before the poll stores its answer
        return got

    monkeypatch.setattr(manifests, "_poll_redis", read_then_forgotten)
    manifests.poll(token)
    assert dev.token_hash not in manifests._ready


def test_a_process_that_missed_trimmed_log_entries_drops_everything(device, check_now) -> None:
    from fleet import epochs

    _, token = device
    manifests.poll(token)
    assert manifests._ready
    epochs.current()
    behind = epochs._applied  # the log position this process has read
    r = redis_client()
    r.set(epochs.SEQ_KEY, behind + 10)
    r.set(epochs.FLOOR_KEY, behind + 5)  # entries this process never read were trimmed away
    epochs.current()
    assert not manifests._ready
    assert epochs._applied == behind + 10


def test_warming_loads_ready_manifests_without_signing_or_queries(
    device, monkeypatch, django_assert_num_queries
) -> None:
    dev, token = device
    _, other_token = factories.device(name="other")
    first = manifests.poll(token)
    manifests.poll(other_token)
    manifests._ready.clear()
    manifests._rests.clear()
    monkeypatch.setattr(signing, "sign", lambda data: pytest.fail("warming must not sign"))
    with django_assert_num_queries(0):
        assert manifests.warm() == 2
    assert manifests._ready[dev.token_hash].body == first.body


def test_warming_skips_a_device_forgotten_meanwhile(device, check_now) -> None:
    dev, token = device
    manifests.poll(token)
    manifests._ready.clear()
    services.revoke_token(dev)  # deletes the entry in Redis and logs the forget
    assert manifests.warm() == 0
    assert dev.token_hash not in manifests._ready
