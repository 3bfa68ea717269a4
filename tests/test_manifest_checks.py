"""The agent's manifest checks (agent/verify.py) one by one, their edges, and their mark on disk
across a restart (agent/store.py, agent/agent.py). No server: manifests are signed here with a
key the test pins, as the server's would be."""

from __future__ import annotations

import base64
import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.agent import Agent
from agent.config import AgentConfig
from agent.store import ManifestMark
from agent.verify import (
    CLOCK_SKEW,
    Accepted,
    ManifestRefused,
    accept_manifest,
    canonical,
    check_manifest,
    digest,
    parse_time,
)

DEVICE = "6f1c2b9e-8a47-4c1e-9d3a-2f5b7c0e4a11"
OTHER = "0d9e8f7a-1b2c-4d3e-8f4a-5b6c7d8e9f00"
NOW = 1_800_000_000  # 2027-01-15T08:00:00Z
DAY = 86_400
MISSING = object()


def utc(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def manifest(**changes: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "protocol": 2,
        "device_id": DEVICE,
        "sequence": 1_790_000_000_000,
        "issued_at": utc(NOW - 60),
        "expires_at": utc(NOW - 60 + 7 * DAY),
        "poll_interval": 60,
        "telemetry": {"window_seconds": 300},
        "models": [{"model": "fraud", "version": "v2", "version_id": 2}],
    }
    for k, v in changes.items():
        if v is MISSING:
            m.pop(k, None)
        else:
            m[k] = v
    return m


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def pinned(key: Ed25519PrivateKey) -> dict[str, str]:
    pub = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    return {"alg": "Ed25519", "key_id": "k1", "public_key": pub}


def signed(m: dict[str, Any], key: Ed25519PrivateKey, alg: str = "Ed25519", key_id: str = "k1") -> dict[str, Any]:
    value = base64.b64encode(key.sign(canonical(m))).decode()
    return {"manifest": m, "signature": {"alg": alg, "key_id": key_id, "value": value}}


def accept(doc: dict, pinned: dict, last: Accepted | None = None, now: float = NOW, **kw: Any) -> tuple:
    return accept_manifest(doc, pinned, device_id=DEVICE, last=last, now=now, **kw)


def refusal(doc: dict, pinned: dict, last: Accepted | None = None, now: float = NOW, **kw: Any) -> str:
    with pytest.raises(ManifestRefused) as e:
        accept(doc, pinned, last, now, **kw)
    return e.value.reason


def mark_of(m: dict[str, Any]) -> Accepted:
    return Accepted(m["device_id"], m["sequence"], digest(m), parse_time(m["issued_at"]), parse_time(m["expires_at"]))


# -- acceptance --------------------------------------------------------------------------------------
def test_a_fresh_manifest_for_this_device_is_accepted_and_marked(key, pinned) -> None:
    m = manifest()
    got, mark, redelivery = accept(signed(m, key), pinned)
    assert got == m and not redelivery
    assert mark == Accepted(DEVICE, m["sequence"], digest(m), NOW - 60, NOW - 60 + 7 * DAY)


def test_a_newer_sequence_is_accepted_and_an_older_refused(key, pinned) -> None:
    last = mark_of(manifest(sequence=500))
    _, mark, redelivery = accept(signed(manifest(sequence=501), key), pinned, last)
    assert mark.sequence == 501 and not redelivery
    assert refusal(signed(manifest(sequence=499), key), pinned, last) == "sequence_older"
    assert refusal(signed(manifest(sequence=1), key), pinned, last) == "sequence_older"


def test_an_equal_sequence_is_a_redelivery_only_with_identical_content(key, pinned) -> None:
    m = manifest(sequence=500)
    last = mark_of(m)
    got, mark, redelivery = accept(signed(copy.deepcopy(m), key), pinned, last)
    assert redelivery and mark == last and got == m
    changed = manifest(sequence=500, models=[{"model": "fraud", "version": "v1", "version_id": 1}])
    assert refusal(signed(changed, key), pinned, last) == "sequence_conflict"
    later = manifest(sequence=500, issued_at=utc(NOW), expires_at=utc(NOW + 7 * DAY))  # only the times differ
    assert refusal(signed(later, key), pinned, last) == "sequence_conflict"


def test_a_mark_of_another_identity_is_no_floor(key, pinned) -> None:
    """After re-enrolling under a new device id the old identity's mark does not apply."""
    last = Accepted(OTHER, 10**15, "x", NOW, NOW + DAY)
    _, mark, redelivery = accept(signed(manifest(sequence=5), key), pinned, last)
    assert mark.sequence == 5 and not redelivery


# -- refusals --------------------------------------------------------------------------------------
def test_another_devices_manifest_is_refused(key, pinned) -> None:
    assert refusal(signed(manifest(device_id=OTHER), key), pinned) == "device_id"
    assert refusal(signed(manifest(device_id=DEVICE.upper()), key), pinned) == "device_id"


@pytest.mark.parametrize(
    ("now", "skew", "ok"),
    [
        (NOW - 60 + 7 * DAY, 0, True),  # exactly at expiry, no allowance
        (NOW - 60 + 7 * DAY + 1, 0, False),
        (NOW - 60 + 7 * DAY + CLOCK_SKEW, CLOCK_SKEW, True),  # exactly at expiry + allowance
        (NOW - 60 + 7 * DAY + CLOCK_SKEW + 1, CLOCK_SKEW, False),
        (NOW - 60 + 7 * DAY - 1, 0, True),
    ],
)
def test_expiry_is_checked_with_the_clock_allowance_at_its_edges(key, pinned, now, skew, ok) -> None:
    doc = signed(manifest(), key)
    if ok:
        accept(doc, pinned, now=now, skew=skew)
    else:
        assert refusal(doc, pinned, now=now, skew=skew) == "expired"


def test_a_device_clock_behind_the_server_still_accepts_a_fresh_manifest(key, pinned) -> None:
    """The issue time is not compared with the device's clock: a clock a year behind accepts."""
    accept(signed(manifest(), key), pinned, now=NOW - 365 * DAY)


def test_a_clock_reset_to_the_past_cannot_revive_an_expired_manifest(key, pinned) -> None:
    """The device's time for expiry is never below the issue time of what it accepted last."""
    last = mark_of(manifest(sequence=900, issued_at=utc(NOW + 30 * DAY), expires_at=utc(NOW + 37 * DAY)))
    captured = manifest(sequence=901)  # never delivered, captured a month ago, expires in 7 days from then
    assert refusal(signed(captured, key), pinned, last, now=0) == "expired"


@pytest.mark.parametrize(
    "changes",
    [
        {"sequence": MISSING},
        {"sequence": "1790000000000"},
        {"sequence": True},
        {"sequence": 0},
        {"sequence": -5},
        {"sequence": 1.5},
        {"issued_at": MISSING},
        {"expires_at": MISSING},
        {"expires_at": 1_800_600_000},
        {"expires_at": "2027-01-22 08:00:00Z"},
        {"expires_at": "2027-01-22T08:00:00+00:00"},
        {"expires_at": "2027-02-30T08:00:00Z"},
        {"issued_at": utc(NOW + 8 * DAY)},  # expires before it was issued
        {"expires_at": utc(NOW - 60)},  # expires when issued
        {"device_id": MISSING},
        {"device_id": None},
    ],
)
def test_a_manifest_without_valid_freshness_fields_is_refused(key, pinned, changes) -> None:
    assert refusal(signed(manifest(**changes), key), pinned) == "fields"


@pytest.mark.parametrize("protocol", [1, 3, "2", 2.0, True, None, MISSING])
def test_a_wrong_protocol_is_refused(key, pinned, protocol) -> None:
    assert refusal(signed(manifest(protocol=protocol), key), pinned) == "protocol"


@pytest.mark.parametrize("alg", ["ed25519", "EdDSA", "RS256", "none", "", None])
def test_an_unknown_signature_algorithm_is_refused(key, pinned, alg) -> None:
    assert refusal(signed(manifest(), key, alg=alg), pinned) == "alg"


def test_a_wrong_key_or_signature_is_refused(key, pinned) -> None:
    m = manifest()
    assert refusal(signed(m, key, key_id="k2"), pinned) == "key_id"
    assert refusal(signed(m, Ed25519PrivateKey.generate()), pinned) == "signature"  # an impostor, same key id
    tampered = signed(m, key)
    tampered["manifest"]["sequence"] += 1
    assert refusal(tampered, pinned) == "signature"
    bad_b64 = signed(m, key)
    bad_b64["signature"]["value"] = "not base64!"
    assert refusal(bad_b64, pinned) == "malformed"
    for doc in ({"manifest": m}, {"signature": {}}, {"manifest": [], "signature": {}}, [], "x"):
        assert refusal(doc, pinned) == "malformed"


def test_checks_run_in_order_so_only_signed_content_is_judged(key, pinned) -> None:
    """Another device's expired, older manifest: signature first, then protocol, fields, device, expiry."""
    last = mark_of(manifest(sequence=500))
    worst = manifest(device_id=OTHER, sequence=1, expires_at=utc(NOW - DAY), issued_at=utc(NOW - 8 * DAY))
    forged = signed(worst, key)
    forged["manifest"]["poll_interval"] = 1
    assert refusal(forged, pinned, last) == "signature"
    assert refusal(signed({**worst, "protocol": 1}, key), pinned, last) == "protocol"
    assert refusal(signed({**worst, "sequence": "1"}, key), pinned, last) == "fields"
    assert refusal(signed(worst, key), pinned, last) == "device_id"
    assert refusal(signed({**worst, "device_id": DEVICE}, key), pinned, last) == "expired"
    assert refusal(signed(manifest(sequence=1), key), pinned, last) == "sequence_older"


def test_the_saved_manifest_is_checked_without_expiry_at_start(key, pinned) -> None:
    old = manifest(issued_at=utc(NOW - 30 * DAY), expires_at=utc(NOW - 23 * DAY))
    mark, redelivery = check_manifest(old, device_id=DEVICE, last=None, now=None)
    assert mark.sequence == old["sequence"] and not redelivery


# -- the mark on disk and the agent across a restart --------------------------------------------------
def test_the_mark_survives_a_restart_and_an_unreadable_one_is_reported(tmp_path: Path) -> None:
    mark = Accepted(DEVICE, 42, "d" * 64, NOW, NOW + DAY)
    ManifestMark(tmp_path).save(mark)
    assert ManifestMark(tmp_path).load() == mark
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically (temp file renamed over)
    (tmp_path / "accepted.json").write_text('{"sequence": "42"')
    broken = ManifestMark(tmp_path)
    assert broken.load() is None and broken.unreadable


def _agent(data: Path, pinned: dict, now: float = NOW) -> Agent:
    cfg = AgentConfig(server="http://127.0.0.1:9", enrollment_key="k", data_dir=data)
    agent = Agent(cfg, clock=lambda: now)
    if agent.identity is None:  # as enrollment leaves it
        agent.identity = {"device_id": DEVICE, "token": "t", "signing_key": pinned}
        (data / "identity.json").write_text(json.dumps(agent.identity))
    return agent


def test_an_agent_restarted_still_refuses_an_older_sequence(tmp_path: Path, key, pinned) -> None:
    agent = _agent(tmp_path, pinned)
    v1, v2 = manifest(sequence=100), manifest(sequence=200)
    assert agent._take_manifest(signed(v1, key), '"e1"') is True
    assert agent._take_manifest(signed(v2, key), '"e2"') is True
    restarted = _agent(tmp_path, pinned)
    assert restarted.accepted.sequence == 200 and restarted.manifest == v2 and restarted.etag == '"e2"'
    assert restarted._take_manifest(signed(v1, key), '"e1"') is False
    assert restarted.manifest == v2 and restarted.accepted.sequence == 200
    assert restarted.stats["manifest_refused"] == 1 and restarted.stats["manifest_refused_sequence_older"] == 1
    events = restarted.spool.peek("event", 10)
    assert [(e["kind"], e["details"]["reason"]) for e in events] == [("verify_failed", "sequence_older")]
    assert events[0]["details"]["sequence"] == 100 and events[0]["details"]["accepted_sequence"] == 200
    restarted._take_manifest(signed(v1, key), '"e1"')  # the same replay again: counted, not reported again
    assert restarted.stats["manifest_refused"] == 2 and len(restarted.spool.peek("event", 10)) == 1
    assert restarted._take_manifest(signed(v2, key), '"e2"') is False  # a re-delivery changes nothing
    assert restarted.stats["manifest_redelivered"] == 1


def test_a_lost_mark_falls_back_to_the_saved_manifests_sequence(tmp_path: Path, key, pinned) -> None:
    agent = _agent(tmp_path, pinned)
    agent._take_manifest(signed(manifest(sequence=300), key), None)
    (tmp_path / "accepted.json").unlink()
    restarted = _agent(tmp_path, pinned)
    assert restarted.accepted.sequence == 300
    assert restarted._take_manifest(signed(manifest(sequence=299), key), None) is False


def test_an_expired_accepted_manifest_installs_nothing_and_drops_the_etag(tmp_path: Path, key, pinned) -> None:
    agent = _agent(tmp_path, pinned)
    stale = manifest(issued_at=utc(NOW - 9 * DAY), expires_at=utc(NOW - 2 * DAY))
    agent.manifest, agent.etag = stale, '"e"'
    agent.accepted = mark_of(stale)
    applied: list[Any] = []
    agent.apply = applied.append  # type: ignore[method-assign]
    agent.flush = lambda: None  # type: ignore[method-assign]
    agent.client.manifest = lambda etag, state: (None, etag)  # type: ignore[method-assign]  # a 304
    agent.poll_once()
    assert applied == [] and agent.etag is None and agent.stats["manifest_expired"] == 1
