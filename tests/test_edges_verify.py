"""Edges of the agent's trust checks (agent/verify.py) that tests/test_manifest_checks.py leaves open.

The algorithm both in the signature and in the pinned key, the pinned key id, a signature that is
not strict base64, the artifact's size before its hash, the freshness fields at their boundaries, and
the canonical form's key order and raw UTF-8 pinned against an independent encoding (the known byte
vectors shared with the server are in tests/test_canonical_vectors.py). Pure: signed here.
"""

from __future__ import annotations

import base64
import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import verify
from agent.verify import Accepted, ManifestRefused, VerifyError

DEVICE = "6f1c2b9e-8a47-4c1e-9d3a-2f5b7c0e4a11"
ISSUED = 1_800_000_000  # 2027-01-15T08:00:00Z
EXPIRES = ISSUED + 7 * 86_400


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def pinned(key: Ed25519PrivateKey) -> dict[str, str]:
    return {
        "alg": "Ed25519",
        "key_id": "k1",
        "public_key": base64.b64encode(key.public_key().public_bytes_raw()).decode(),
    }


def manifest(**changes: Any) -> dict[str, Any]:
    return {
        "protocol": 2,
        "device_id": DEVICE,
        "sequence": 5,
        "issued_at": "2027-01-15T08:00:00Z",
        "expires_at": "2027-01-22T08:00:00Z",
        **changes,
    }


def signed(m: Any, key: Ed25519PrivateKey, **sig: Any) -> dict[str, Any]:
    value = base64.b64encode(key.sign(verify.canonical(m))).decode()
    return {"manifest": m, "signature": {"alg": "Ed25519", "key_id": "k1", "value": value, **sig}}


def reason(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ManifestRefused) as e:
        fn(*args, **kwargs)
    return e.value.reason


def test_constants_are_pinned() -> None:
    assert (verify.ALG, verify.PROTOCOL, verify.CLOCK_SKEW) == ("Ed25519", 2, 3600.0)


# --- the signature ---------------------------------------------------------------------------------


def test_a_good_signature_returns_the_manifest(key: Ed25519PrivateKey, pinned: dict) -> None:
    m = manifest()
    assert verify.verify_manifest(signed(m, key), pinned) is m


@pytest.mark.parametrize("alg", ["ed25519", "Ed448", "none", "", None])
def test_the_signatures_algorithm_must_be_ed25519(key: Ed25519PrivateKey, pinned: dict, alg: object) -> None:
    with pytest.raises(ManifestRefused) as e:
        verify.verify_manifest(signed(manifest(), key, alg=alg), pinned)
    assert (e.value.reason, str(e.value)) == ("alg", f"unsupported signature algorithm {alg!r}")


def test_a_pinned_key_of_another_algorithm_refuses_everything(key: Ed25519PrivateKey, pinned: dict) -> None:
    assert reason(verify.verify_manifest, signed(manifest(), key), {**pinned, "alg": "RSA"}) == "alg"
    # a key pinned without its algorithm (older agents) is an Ed25519 key
    no_alg = {k: v for k, v in pinned.items() if k != "alg"}
    assert verify.verify_manifest(signed(manifest(), key), no_alg)["sequence"] == 5


def test_the_pinned_key_id_must_match_when_one_is_pinned(key: Ed25519PrivateKey, pinned: dict) -> None:
    with pytest.raises(ManifestRefused) as e:
        verify.verify_manifest(signed(manifest(), key, key_id="k2"), pinned)
    assert (e.value.reason, str(e.value)) == ("key_id", "signed by key 'k2', pinned key is 'k1'")
    for unpinned in ({**pinned, "key_id": ""}, {k: v for k, v in pinned.items() if k != "key_id"}):
        assert verify.verify_manifest(signed(manifest(), key, key_id="anything"), unpinned)["sequence"] == 5


def test_a_signature_that_is_not_strict_base64_is_malformed(key: Ed25519PrivateKey, pinned: dict) -> None:
    doc = signed(manifest(), key)
    doc["signature"]["value"] = doc["signature"]["value"][:10] + "!" + doc["signature"]["value"][10:]
    assert reason(verify.verify_manifest, doc, pinned) == "malformed"


@pytest.mark.parametrize(
    "doc",
    [{}, {"manifest": {}}, {"manifest": [], "signature": {}}, {"manifest": {}, "signature": "sig"}],
)
def test_a_document_without_manifest_and_signature_objects_is_malformed(pinned: dict, doc: dict) -> None:
    assert reason(verify.verify_manifest, doc, pinned) == "malformed"


def test_a_signature_of_other_bytes_is_refused(key: Ed25519PrivateKey, pinned: dict) -> None:
    doc = signed(manifest(), key)
    doc["manifest"] = manifest(sequence=6)
    with pytest.raises(ManifestRefused) as e:
        verify.verify_manifest(doc, pinned)
    assert (e.value.reason, str(e.value)) == ("signature", "manifest signature does not verify against the pinned key")


# --- freshness and order ---------------------------------------------------------------------------


def check(m: dict, last: Accepted | None = None, now: float | None = ISSUED, **kw: Any) -> tuple[Accepted, bool]:
    return verify.check_manifest(m, device_id=DEVICE, last=last, now=now, **kw)


@pytest.mark.parametrize("protocol", [1, 3, True, 2.0, "2", None])
def test_only_protocol_2_as_an_integer_is_understood(protocol: object) -> None:
    with pytest.raises(ManifestRefused) as e:
        check(manifest(protocol=protocol))
    assert (e.value.reason, str(e.value)) == ("protocol", f"manifest protocol {protocol!r}; this agent speaks 2")


def test_sequence_one_is_the_smallest() -> None:
    assert check(manifest(sequence=1))[0].sequence == 1
    for bad in (0, -1, True, 1.0, "1", None):
        with pytest.raises(ManifestRefused) as e:
            check(manifest(sequence=bad))
        assert (e.value.reason, str(e.value)) == ("fields", f"sequence must be a positive integer, got {bad!r}")


def test_a_manifest_must_expire_after_it_is_issued() -> None:
    assert check(manifest(expires_at="2027-01-15T08:00:01Z"))[0].expires_at == ISSUED + 1
    with pytest.raises(ManifestRefused) as e:
        check(manifest(expires_at="2027-01-15T08:00:00Z"))
    assert (e.value.reason, str(e.value)) == ("fields", "expires_at is not after issued_at")


def test_a_device_id_that_is_not_a_string_is_missing() -> None:
    with pytest.raises(ManifestRefused) as e:
        check(manifest(device_id=None))
    assert (e.value.reason, str(e.value)) == ("fields", "device_id is missing")
    with pytest.raises(ManifestRefused) as e:
        check(manifest(device_id="other"))
    assert (e.value.reason, str(e.value)) == ("device_id", "manifest is for device 'other', not this one")


def test_expiry_at_exactly_the_allowance_is_still_fresh() -> None:
    assert check(manifest(), now=EXPIRES + 3600)[1] is False
    with pytest.raises(ManifestRefused) as e:
        check(manifest(), now=EXPIRES + 3601)
    assert e.value.reason == "expired"
    assert str(e.value) == (
        f"manifest expired at 2027-01-22T08:00:00Z (device time {EXPIRES + 3601}, allowance 3600 s)"
    )
    assert check(manifest(), now=EXPIRES + 10, skew=10)[1] is False
    assert reason(check, manifest(), now=EXPIRES + 11, skew=10) == "expired"
    assert reason(check, manifest(), now=EXPIRES + 1, skew=0) == "expired"


def test_a_clock_that_is_not_finite_reads_as_expired() -> None:
    """A device clock of inf or NaN used to crash the check (int(inf)) instead of refusing."""
    for now in (math.inf, math.nan, -math.inf):
        assert reason(check, manifest(), now=now) == "expired"
    with pytest.raises(ManifestRefused, match=r"\(device time inf, allowance 3600 s\)$"):
        check(manifest(), now=math.inf)
    # without a clock (the saved manifest at start) no expiry is checked at all
    assert check(manifest(), now=None)[0].sequence == 5


def test_the_clock_never_runs_below_the_last_accepted_issue_time() -> None:
    last = Accepted("another-device", 1, "d", EXPIRES + 4000, EXPIRES + 9000)
    assert reason(check, manifest(), last=last, now=0) == "expired"
    last = Accepted("another-device", 1, "d", EXPIRES + 3600, EXPIRES + 9000)
    assert check(manifest(), last=last, now=0)[0].sequence == 5


def test_order_against_the_last_accepted_manifest() -> None:
    m = manifest()
    mark, again = check(m)
    assert (mark, again) == (Accepted(DEVICE, 5, verify.digest(m), ISSUED, EXPIRES), False)
    assert check(m, last=mark) == (mark, True)  # a redelivery returns the same mark
    assert check(manifest(sequence=6), last=mark)[0].sequence == 6
    with pytest.raises(ManifestRefused) as e:
        check(manifest(sequence=4), last=mark)
    assert (e.value.reason, str(e.value)) == ("sequence_older", "sequence 4 is older than the accepted 5")
    with pytest.raises(ManifestRefused) as e:
        check(manifest(poll_interval=9), last=mark)
    assert (e.value.reason, str(e.value)) == ("sequence_conflict", "a different manifest with the accepted sequence 5")
    # the mark of another identity (a re-enrolled device) is no floor
    other = Accepted("old-identity", 99, "x", ISSUED, EXPIRES)
    assert check(m, last=other) == (Accepted(DEVICE, 5, verify.digest(m), ISSUED, EXPIRES), False)


def test_accept_manifest_is_the_signature_then_the_checks(key: Ed25519PrivateKey, pinned: dict) -> None:
    m = manifest()
    got, mark, again = verify.accept_manifest(signed(m, key), pinned, device_id=DEVICE, last=None, now=ISSUED)
    assert (got, mark.sequence, again) == (m, 5, False)
    assert (
        reason(verify.accept_manifest, signed(m, key), pinned, device_id=DEVICE, last=None, now=EXPIRES + 11, skew=10)
        == "expired"
    )


# --- times and marks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ts"),
    [("1970-01-01T00:00:00Z", 0), ("2027-01-15T08:00:00Z", ISSUED), ("2028-02-29T23:59:59Z", 1835481599)],
)
def test_parse_time(text: str, ts: int) -> None:
    assert verify.parse_time(text) == ts


@pytest.mark.parametrize(
    "value",
    ["2027-01-15T08:00:00", "2027-01-15 08:00:00Z", "2027-01-15T08:00:00.5Z", "2027-02-30T00:00:00Z", 1800000000, None],
)
def test_parse_time_refuses_other_forms_and_impossible_days(value: object) -> None:
    with pytest.raises(ValueError):
        verify.parse_time(value)


def test_a_mark_round_trips_and_refuses_non_integers() -> None:
    mark = Accepted(DEVICE, 5, "ab", ISSUED, EXPIRES)
    assert mark.to_json() == {
        "device_id": DEVICE,
        "sequence": 5,
        "digest": "ab",
        "issued_at": ISSUED,
        "expires_at": EXPIRES,
    }
    assert Accepted.from_json(mark.to_json()) == mark
    for field, bad in (("sequence", True), ("sequence", "5"), ("issued_at", 1.0), ("expires_at", None)):
        with pytest.raises(ValueError, match=r"^sequence and times must be integers$"):
            Accepted.from_json({**mark.to_json(), field: bad})


# --- canonical form --------------------------------------------------------------------------------


def test_canonical_sorts_keys_by_code_point_and_keeps_utf8_raw() -> None:
    value = {"b": "é", "a": {"é": 1, "Z": [1.5, None]}, "A": True}
    expected = '{"A":true,"a":{"Z":[1.5,null],"é":1},"b":"é"}'.encode()
    assert verify.canonical(value) == expected
    assert verify.digest(value) == hashlib.sha256(expected).hexdigest()
    assert b"\\u00e9" not in verify.canonical(value)  # never ASCII-escaped: the signed bytes differ


def test_canonical_refuses_what_is_not_json() -> None:
    for bad in (math.nan, math.inf, {"x": -math.inf}):
        with pytest.raises(ValueError):
            verify.canonical(bad)


# --- the artifact ----------------------------------------------------------------------------------


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, bytes]:
    data = bytes(range(256)) * 8193  # more than one 1 MiB block
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return path, data


def test_an_artifact_of_the_right_size_and_hash_passes(artifact: tuple[Path, bytes]) -> None:
    path, data = artifact
    sha = hashlib.sha256(data).hexdigest()
    assert verify.sha256_file(path) == sha
    verify.verify_artifact(path, sha, len(data))
    verify.verify_artifact(path, sha.upper(), len(data))  # the manifest's hex may be upper case
    verify.verify_artifact(path, sha)  # no size in the manifest: the hash alone


def test_an_artifact_of_another_size_is_refused_before_hashing(artifact: tuple[Path, bytes]) -> None:
    path, data = artifact
    sha = hashlib.sha256(data).hexdigest()
    for size in (len(data) - 1, len(data) + 1, 0):
        with pytest.raises(VerifyError) as e:
            verify.verify_artifact(path, sha, size)
        assert str(e.value) == f"artifact is {len(data)} bytes, manifest says {size}"


def test_an_artifact_with_another_hash_is_refused(artifact: tuple[Path, bytes]) -> None:
    path, data = artifact
    wrong = hashlib.sha256(data + b"x").hexdigest()
    with pytest.raises(VerifyError) as e:
        verify.verify_artifact(path, wrong, len(data))
    got = hashlib.sha256(data).hexdigest()
    assert str(e.value) == f"artifact sha256 {got[:16]}… does not match the manifest's {wrong[:16]}…"
    assert not isinstance(e.value, ManifestRefused)


def test_an_empty_artifact(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    verify.verify_artifact(path, hashlib.sha256(b"").hexdigest(), 0)


def test_parse_time_names_the_form_it_wants() -> None:
    with pytest.raises(ValueError, match=r"^not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ: '2027-01-15'$"):
        verify.parse_time("2027-01-15")


def test_parse_time_is_utc_whatever_the_devices_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert verify.parse_time("2027-01-15T08:00:00Z") == ISSUED
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_manifest_with_an_unreadable_time_says_which_fields() -> None:
    with pytest.raises(ManifestRefused) as e:
        check(manifest(issued_at="yesterday"))
    assert e.value.reason == "fields"
    assert str(e.value) == "issued_at/expires_at: not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ: 'yesterday'"


def test_a_manifest_or_signature_that_is_no_object_says_so(pinned: dict) -> None:
    with pytest.raises(ManifestRefused) as e:
        verify.verify_manifest({"manifest": [], "signature": {}}, pinned)
    assert (e.value.reason, str(e.value)) == ("malformed", "manifest and signature must be objects")


def test_a_malformed_document_names_what_was_missing(pinned: dict) -> None:
    with pytest.raises(ManifestRefused) as e:
        verify.verify_manifest({"manifest": {}}, pinned)
    assert (e.value.reason, str(e.value)) == ("malformed", "malformed signed manifest: 'signature'")
