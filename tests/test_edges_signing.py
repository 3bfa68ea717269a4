"""Edges of manifest signing on the server (ota/signing.py), pure: no database, no settings.

The key is the boundary: these tests hand ``private_key`` a key made by the module's own
``_load_or_create`` in a temporary directory instead of the configured one. What they pin: the ETag's
form, a key file's mode and reuse, and that a signature the server makes verifies in the agent over
exactly the canonical bytes (docs/mutation.md; the byte vectors are in tests/test_canonical_vectors.py).
"""

from __future__ import annotations

import base64
import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import verify as agent_verify
from ota import signing


@pytest.fixture
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ed25519PrivateKey]:
    k = signing._load_or_create(tmp_path / "keys" / "signing.key")
    monkeypatch.setattr(signing, "private_key", lambda: k)
    signing.public_info.cache_clear()
    yield k
    signing.public_info.cache_clear()


def test_the_algorithm_is_pinned_on_both_sides() -> None:
    assert signing.ALG == agent_verify.ALG == "Ed25519"


def test_etag_is_the_quoted_first_half_of_the_sha256() -> None:
    data = b'{"a":1}'
    assert signing.etag_of(data) == '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    assert len(signing.etag_of(b"")) == 34
    assert signing.etag_of(b"") == '"e3b0c44298fc1c149afbf4c8996fb924"'


def test_a_new_key_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "signing.key"
    first = signing._load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_text())) == 32
    assert list(path.parent.iterdir()) == [path]  # the temporary file is gone
    again = signing._load_or_create(path)
    assert again.private_bytes_raw() == first.private_bytes_raw()


def test_an_existing_key_file_is_read_with_surrounding_whitespace(tmp_path: Path) -> None:
    raw = bytes(range(32))
    path = tmp_path / "k"
    path.write_text("\n " + base64.b64encode(raw).decode() + " \n")
    assert signing._load_or_create(path).private_bytes_raw() == raw


def test_public_info_is_what_devices_pin(key: Ed25519PrivateKey) -> None:
    raw = key.public_key().public_bytes_raw()
    assert signing.public_raw() == raw
    assert signing.key_id() == hashlib.sha256(raw).hexdigest()[:16]
    assert signing.public_info() == {
        "alg": "Ed25519",
        "key_id": hashlib.sha256(raw).hexdigest()[:16],
        "public_key": base64.b64encode(raw).decode(),
    }


def test_a_signature_over_the_canonical_bytes_verifies_in_the_agent(key: Ed25519PrivateKey) -> None:
    manifest = {"device_id": "d", "z": [1.5, "caf\u00e9"], "a": {"y": None, "b": True}}
    sig = signing.sign(signing.canonical(manifest))
    assert set(sig) == {"alg", "key_id", "value"}
    assert (sig["alg"], sig["key_id"]) == ("Ed25519", signing.key_id())
    assert len(base64.b64decode(sig["value"], validate=True)) == 64
    assert agent_verify.verify_manifest({"manifest": manifest, "signature": sig}, signing.public_info()) == manifest
    pub = signing.public_info()["public_key"]
    assert signing.verify(pub, signing.canonical(manifest), sig["value"]) is True
    # the same content in another key order is the same canonical bytes: still verifies
    assert signing.verify(pub, signing.canonical(dict(reversed(manifest.items()))), sig["value"]) is True


def test_verify_is_false_for_any_other_data_key_or_garbage(key: Ed25519PrivateKey) -> None:
    data = signing.canonical({"a": 1})
    sig = signing.sign(data)["value"]
    pub = signing.public_info()["public_key"]
    other = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    assert signing.verify(pub, data, sig) is True
    assert signing.verify(pub, signing.canonical({"a": 2}), sig) is False
    assert signing.verify(pub, data + b" ", sig) is False
    assert signing.verify(other, data, sig) is False
    assert signing.verify("not base64!", data, sig) is False
    assert signing.verify(pub, data, "AAAA") is False


def test_a_key_file_in_an_existing_directory_is_made_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent may exist already, and the temporary file is written next to the key (a link across
    filesystems would fail), never in the system's temporary directory."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    path = tmp_path / "signing.key"
    key = signing._load_or_create(path)
    assert path.exists() and key.private_bytes_raw() == base64.b64decode(path.read_text())


def test_when_another_process_wins_the_race_its_key_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process writes its key between our check and our link: we keep and return its key."""
    import os

    path = tmp_path / "signing.key"
    theirs = bytes(range(1, 33))
    real_link = os.link

    def link_after_them(src: str, dst: object) -> None:
        Path(str(dst)).write_text(base64.b64encode(theirs).decode())
        real_link(src, dst)  # FileExistsError, as in the race

    monkeypatch.setattr(os, "link", link_after_them)
    assert signing._load_or_create(path).private_bytes_raw() == theirs
    assert list(tmp_path.iterdir()) == [path]  # our temporary file is gone
