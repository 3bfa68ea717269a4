"""The poll path's caches (rollout/manifest.py: poll): a ready manifest is served from Redis by a
process that never saw the device, re-signed only when its bytes change, and never re-cached by a
poll that raced a revocation."""

from typing import Any

import pytest

from fleet import services
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
    first = manifest.poll(token)
    assert redis_client().exists(poll_key(hash_token(token)))
    manifest._ready.clear()  # another worker: nothing in its memory
    manifest._rests.clear()
    monkeypatch.setattr(signing, "sign", lambda data: pytest.fail("a ready manifest must not be signed again"))
    again = manifest.poll(token)
    assert (again.etag, again.body) == (first.etag, first.body)
    assert again.device_id == dev.id
    assert signing.verify(signing.public_info()["public_key"], again.canonical, _sig(again))


def test_generation_bump_rebuilds_but_reuses_the_signature_when_nothing_changed(device, monkeypatch) -> None:
    _, token = device
    first = manifest.poll(token)
    manifest.bump_generation()
    manifest._ready.clear()
    monkeypatch.setattr(signing, "sign", lambda data: pytest.fail("same bytes: the old signature still signs them"))
    same = manifest.poll(token)
    assert same.gen != first.gen and same.body == first.body


def test_generation_bump_that_changes_the_desired_version_resigns(device) -> None:
    _, token = device
    first = manifest.poll(token)
    factories.release(factories.staged_version("fraud", "v2", seed=2))
    manifest._ready.clear()
    second = manifest.poll(token)
    assert second.etag != first.etag and b'"version":"v2"' in second.body
    assert signing.verify(signing.public_info()["public_key"], second.canonical, _sig(second))


def test_revocation_reaches_a_process_holding_the_ready_manifest(device) -> None:
    dev, token = device
    manifest.poll(token)
    services.revoke_token(dev)
    assert not redis_client().exists(poll_key(hash_token(token)))
    with pytest.raises(ProtocolError) as e:
        manifest.poll(token)
    assert e.value.status == 403


def test_a_poll_that_raced_a_revocation_does_not_store_its_manifest(device, monkeypatch) -> None:
    dev, token = device
    th = hash_token(token)
    real_build = manifest._build

    def build_then_revoked(*args: Any, **kwargs: Any) -> Any:
        built = real_build(*args, **kwargs)
        services.revoke_token(dev)  # lands between reading the snapshot and storing the manifest
        return built

    monkeypatch.setattr(manifest, "_build", build_then_revoked)
    manifest.poll(token)  # this one answer was already on its way
    monkeypatch.setattr(manifest, "_build", real_build)
    assert redis_client().get(forget_counter_key(th)) is not None
    assert not redis_client().exists(poll_key(th)), "a stale snapshot must not be cached"
    manifest._ready.clear()
    with pytest.raises(ProtocolError) as e:
        manifest.poll(token)
    assert e.value.status == 403


def _sig(ready: manifest.Ready) -> str:
    import json

    return json.loads(ready.sig)["value"]
