"""The server side of manifest freshness (rollout/freshness.py, rollout/manifest.py): every signed
manifest carries ``sequence``, ``issued_at`` and ``expires_at``; a device's sequence only ever rises
(a rollback is a newer manifest), whichever process serves it, across a Redis flush, a restart,
without Redis, and against a process still holding older data; a ready manifest is still served
with no query, and one near expiry is re-signed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from typing import Any

import pytest

from agent.verify import Accepted, check_manifest, digest, parse_time, verify_manifest
from fleet import manifests
from fleet.auth import hash_token, poll_key
from fleet.lru import LRU
from fleet.presence import redis_client
from ota import signing
from rollout import freshness, manifest
from rollout.models import IssuedManifest
from tests import factories

pytestmark = pytest.mark.django_db
DAY = 86_400


@pytest.fixture
def device() -> tuple[Any, str]:
    factories.release(factories.staged_version("fraud", "v1", seed=1))
    return factories.device(labels={"region": "eu"})


@pytest.fixture
def check_now(settings) -> None:
    """Every epochs.current() re-reads Redis (the default is at most every 0.5 s)."""
    settings.EDGEFLEET_EPOCH_CHECK_SECONDS = 0


@pytest.fixture
def clock(monkeypatch) -> dict[str, float]:
    """The server's clock, moved by the test."""
    now = {"t": 1_800_000_000.0}
    monkeypatch.setattr(freshness, "now", lambda: now["t"])
    return now


def rerelease(label: str) -> None:
    from ota.models import ModelVersion

    factories.release(ModelVersion.objects.get(model__name="fraud", label=label))


def told(ready: manifests.Ready) -> dict[str, Any]:
    return json.loads(ready.body)["manifest"]


def version_of(ready: manifests.Ready) -> str:
    return told(ready)["models"][0]["version"]


def mark(ready: manifests.Ready) -> Accepted:
    m = told(ready)
    return Accepted(m["device_id"], m["sequence"], digest(m), parse_time(m["issued_at"]), parse_time(m["expires_at"]))


@contextmanager
def another_process():
    """This process's memory swapped for an empty one, as another web worker's would be."""
    saved = (manifests._ready, manifests._rests)
    manifests._ready, manifests._rests = LRU(manifests._READY_MAX), LRU(10_000)
    try:
        yield
    finally:
        manifests._ready, manifests._rests = saved


def test_the_signed_manifest_carries_sequence_issue_time_and_expiry(device, clock, settings) -> None:
    from fleet.api import ManifestOut

    dev, token = device
    ready = manifests.poll(token)
    doc = json.loads(ready.body)
    m = verify_manifest(doc, signing.public_info())  # the fields are inside what is signed
    assert m["protocol"] == 2 and m["device_id"] == str(dev.id)
    assert m["issued_at"] == "2027-01-15T08:00:00Z" and parse_time(m["issued_at"]) == clock["t"]
    assert parse_time(m["expires_at"]) - parse_time(m["issued_at"]) == settings.EDGEFLEET_MANIFEST_TTL == 7 * DAY
    assert m["sequence"] == int(clock["t"] * 1000)
    ManifestOut.model_validate(doc)  # the served schema (docs and schemathesis) says the same
    row = IssuedManifest.objects.get(device=dev)
    assert (row.sequence, row.issued_at, row.expires_at) == (m["sequence"], clock["t"], clock["t"] + 7 * DAY)
    check_manifest(m, device_id=str(dev.id), last=None, now=clock["t"])  # an agent takes it


def test_a_change_and_a_rollback_each_get_a_higher_sequence(device, clock) -> None:
    dev, token = device
    v1 = told(first := manifests.poll(token))
    factories.release(factories.staged_version("fraud", "v2", seed=2))
    second = manifests.poll(token)
    rerelease("v1")  # back to v1
    third = manifests.poll(token)
    assert [version_of(r) for r in (first, second, third)] == ["v1", "v2", "v1"]
    assert v1["sequence"] < told(second)["sequence"] < told(third)["sequence"]
    # the rollback is newer to the agent, which has accepted v2
    mk, redelivery = check_manifest(told(third), device_id=str(dev.id), last=mark(second), now=clock["t"])
    assert mk.sequence == told(third)["sequence"] and not redelivery


def test_an_unchanged_manifest_keeps_sequence_and_signature_across_generation_bumps(device, monkeypatch) -> None:
    _, token = device
    first = manifests.poll(token)
    manifest.bump_generation()
    manifests._ready.clear()
    monkeypatch.setattr(signing, "sign", lambda data: pytest.fail("same content: the old signature still signs it"))
    monkeypatch.setattr(freshness, "claim", lambda *a, **k: pytest.fail("same content: no new sequence"))
    again = manifests.poll(token)
    assert again.gen != first.gen and again.body == first.body and again.etag == first.etag


def test_a_ready_manifest_is_served_with_no_query(device, django_assert_num_queries) -> None:
    _, token = device
    first = manifests.poll(token)
    with django_assert_num_queries(0):
        assert manifests.poll(token) is first  # process memory
    with another_process(), django_assert_num_queries(0):
        assert manifests.poll(token).body == first.body  # one Redis round trip


def test_a_manifest_near_expiry_is_resigned_with_a_higher_sequence(device, clock) -> None:
    _, token = device
    first = manifests.poll(token)
    refresh_at = first.refresh_at
    assert refresh_at == first.fresh.expires_at - DAY  # EDGEFLEET_MANIFEST_REFRESH
    clock["t"] = refresh_at - 1
    assert manifests.poll(token) is first
    with another_process():
        assert manifests.poll(token).body == first.body
    clock["t"] = refresh_at
    renewed = manifests.poll(token)
    assert renewed.fresh.sequence > first.fresh.sequence and renewed.fresh.issued_at == refresh_at
    assert renewed.etag != first.etag and version_of(renewed) == "v1"
    with another_process():  # the renewed one is what Redis holds now
        assert manifests.poll(token).body == renewed.body


def test_a_device_offline_past_expiry_gets_a_fresh_manifest(device, clock) -> None:
    dev, token = device
    first = manifests.poll(token)
    clock["t"] += 40 * DAY  # offline for longer than the manifest lived; polls again
    fresh = manifests.poll(token)
    m = told(fresh)
    assert parse_time(m["expires_at"]) == clock["t"] + 7 * DAY and m["sequence"] > first.fresh.sequence
    with pytest.raises(Exception, match="expired"):  # what it held is of no use now...
        check_manifest(told(first), device_id=str(dev.id), last=None, now=clock["t"])
    check_manifest(m, device_id=str(dev.id), last=mark(first), now=clock["t"])  # ...the fresh one is taken


@pytest.mark.django_db(transaction=True)  # the other process reads committed rows
def test_two_web_processes_and_redis_flushes_never_lower_a_devices_sequence(device, check_now) -> None:
    from django.db import connection

    _, token = device
    db_url = f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}"

    def other_process() -> dict[str, Any]:
        code = (
            "import django, json; django.setup(); from fleet import manifests; "
            f"r = manifests.poll({token!r}); print(json.dumps({{'etag': r.etag, 'body': r.body.decode()}}))"
        )
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "edgefleet.settings", "DATABASE_URL": db_url}
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120, capture_output=True)
        return json.loads(out.stdout.decode().strip().splitlines()[-1])

    def here() -> dict[str, Any]:
        r = manifests.poll(token)
        return {"etag": r.etag, "body": r.body.decode()}

    seen: list[tuple[str, int, str]] = []

    def note(who: str, answer: dict[str, Any]) -> dict[str, Any]:
        m = json.loads(answer["body"])["manifest"]
        seen.append((who, m["sequence"], m["models"][0]["version"]))
        return answer

    a1, b1 = note("A", here()), note("B", other_process())
    factories.release(factories.staged_version("fraud", "v2", seed=2))
    b2, a2 = note("B", other_process()), note("A", here())
    redis_client().flushdb()  # the cache is lost: both rebuild from the database
    a3, b3 = note("A", here()), note("B", other_process())
    rerelease("v1")  # a rollback, signed in B first
    b4 = note("B", other_process())
    redis_client().flushdb()
    a4 = note("A", here())

    sequences = [s for _, s, _ in seen]
    assert sequences == sorted(sequences), seen
    assert a1 == b1 and b2 == a2 == a3 == b3 and b4 == a4, "one state, one manifest, whoever serves it"
    assert [v for _, _, v in seen] == ["v1", "v1", "v2", "v2", "v2", "v2", "v1", "v1"]
    assert seen[0][1] < seen[2][1] < seen[6][1]


def test_without_redis_two_processes_build_the_same_manifest(device, monkeypatch) -> None:
    from fleet import presence

    _, token = device
    monkeypatch.setattr(presence, "redis_client", lambda: None)
    first = manifests.poll(token)
    with another_process():
        assert manifests.poll(token).body == first.body  # the database's row, not this process, decided
    factories.release(factories.staged_version("fraud", "v2", seed=2))
    with another_process():
        second = manifests.poll(token)
    assert second.fresh.sequence > first.fresh.sequence and manifests.poll(token).body == second.body


def test_a_process_holding_older_data_cannot_hand_out_a_newer_sequence(device, check_now) -> None:
    """A process that has not yet reloaded after a rollout builds from older data: the database's row
    (built from newer data) wins; the process reloads and serves what the device was last told."""
    import dataclasses

    _, token = device
    old_state = manifest.load_state()
    factories.release(factories.staged_version("fraud", "v2", seed=2))
    newest = manifests.poll(token)
    assert version_of(newest) == "v2"
    manifest._state = dataclasses.replace(old_state, generation=manifest.current_generation(), memo={})
    manifests._ready.clear()
    redis_client().delete(poll_key(hash_token(token)))
    again = manifests.poll(token)
    assert version_of(again) == "v2" and again.fresh.sequence == newest.fresh.sequence
    assert manifest._state.number > old_state.number


def test_redis_keeps_the_higher_sequence_when_two_processes_race(device, clock, monkeypatch) -> None:
    """Process A signs, process B signs a newer manifest and stores it before A stores its own: A
    serves B's, and Redis keeps B's."""
    _, token = device
    manifests.poll(token)
    manifest.bump_generation()  # everyone rebuilds
    clock["t"] += 7 * DAY  # ...and the manifest is due to be re-signed
    real_build = manifests._build
    other: dict[str, manifests.Ready] = {}

    def build_then_b_signs_newer(*args: Any, **kwargs: Any) -> Any:
        built = real_build(*args, **kwargs)
        if not other:
            other["a"] = built[0]
            with another_process():
                clock["t"] += 7 * DAY
                other["b"] = manifests.poll(token)  # B's clock says A's is due again: B signs a newer one
                clock["t"] -= 7 * DAY
        return built

    monkeypatch.setattr(manifests, "_build", build_then_b_signs_newer)
    manifests._ready.clear()
    a = manifests.poll(token)
    assert other["b"].fresh.sequence > other["a"].fresh.sequence, "B signed a newer one while A was building"
    assert a.body == other["b"].body
    monkeypatch.setattr(manifests, "_build", real_build)
    with another_process():
        assert manifests.poll(token).body == other["b"].body


def test_a_lost_row_still_gives_a_higher_sequence(device, clock) -> None:
    """The database restored from an older backup: the time floor keeps the sequence rising."""
    _, token = device
    first = manifests.poll(token)
    IssuedManifest.objects.all().delete()
    clock["t"] += 60
    factories.release(factories.staged_version("fraud", "v2", seed=2))
    assert manifests.poll(token).fresh.sequence > first.fresh.sequence


def test_a_deleted_device_with_a_ready_manifest_gets_401_not_500(device) -> None:
    from fleet.errors import ProtocolError
    from fleet.models import Device

    dev, token = device
    manifests.poll(token)
    Device.objects.filter(pk=dev.pk).delete()
    factories.release(factories.staged_version("fraud", "v2", seed=2))  # its entry must be rebuilt
    manifests._ready.clear()
    with pytest.raises(ProtocolError) as e:
        manifests.poll(token)
    assert e.value.status == 401


@pytest.mark.django_db(transaction=True)  # outside a transaction: the claim commits as in production
def test_claims_rise_by_one_when_the_clock_does_not_and_older_data_is_refused(device) -> None:
    dev, _ = device
    t = 1_800_000_000.0
    first = freshness.claim(dev.id, "a" * 32, 5, at=t)
    assert first.sequence == int(t * 1000) and (first.issued_at, first.expires_at) == (t, t + 7 * DAY)
    assert freshness.claim(dev.id, "a" * 32, 5, at=t + 10) == first  # same content, not near expiry
    second = freshness.claim(dev.id, "b" * 32, 5, at=t)  # same millisecond
    third = freshness.claim(dev.id, "c" * 32, 6, at=t - 3600)  # the clock went back an hour
    assert (second.sequence, third.sequence) == (first.sequence + 1, first.sequence + 2)
    assert freshness.claim(dev.id, "d" * 32, 5, at=t) is None  # built from older data than the row's
    assert freshness.claim(dev.id, "c" * 32, 5, at=t) == third  # ...unless it says the same
    due = freshness.claim(dev.id, "c" * 32, 6, at=third.refresh_at)
    assert due.sequence > third.sequence and due.issued_at == third.refresh_at
    assert IssuedManifest.objects.get(device=dev).sequence == due.sequence
    with pytest.raises(LookupError):
        freshness.claim(uuid.uuid4(), "a" * 32, 6, at=t)
