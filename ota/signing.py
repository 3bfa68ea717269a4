"""Ed25519 signing of manifests over their canonical encoding (docs/protocol.md).

The key comes from ``EDGEFLEET_SIGNING_KEY`` (base64 of the raw 32-byte private key) or, in
development, is made on first run and kept in ``EDGEFLEET_SIGNING_KEY_FILE`` (mode 0600), so a
restart does not make every enrolled device distrust the server.
"""

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

ALG = "Ed25519"


def canonical(obj: Any) -> bytes:
    """The exact bytes that are signed and hashed for the ETag; agent/verify.py's ``canonical`` must agree
    byte for byte (tests/test_canonical_vectors.py pins both to the same vectors).

    Sorted keys, no whitespace, UTF-8 without escaping non-ASCII, Python's shortest round-trip float
    form; NaN and infinities are refused (they are not JSON), as is a lone surrogate (not UTF-8).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def etag_of(canonical_bytes: bytes) -> str:
    return '"' + hashlib.sha256(canonical_bytes).hexdigest()[:32] + '"'


def _load_or_create(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(path.read_text().strip()))
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name: threads of one process share a pid, and a shared name let one thread
    # unlink the file another was about to link.
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(raw).decode())
    with contextlib.suppress(FileExistsError):  # another process may have won the race: keep its key
        os.link(tmp, path)
    os.unlink(tmp)
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(path.read_text().strip()))


@lru_cache(maxsize=1)
def private_key() -> Ed25519PrivateKey:
    configured = settings.EDGEFLEET_SIGNING_KEY
    if configured:
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(configured))
    return _load_or_create(Path(settings.EDGEFLEET_SIGNING_KEY_FILE))


def public_raw() -> bytes:
    return private_key().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id() -> str:
    return hashlib.sha256(public_raw()).hexdigest()[:16]


@lru_cache(maxsize=1)
def public_info() -> dict[str, str]:
    """What ``GET /api/v1/signing-key`` returns and devices pin."""
    return {"alg": ALG, "key_id": key_id(), "public_key": base64.b64encode(public_raw()).decode()}


def sign(data: bytes) -> dict[str, str]:
    return {"alg": ALG, "key_id": public_info()["key_id"], "value": base64.b64encode(private_key().sign(data)).decode()}


def verify(public_key_b64: str, data: bytes, signature_b64: str) -> bool:
    """For tests and tools: does ``signature_b64`` sign ``data`` under the given public key."""
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64)).verify(
            base64.b64decode(signature_b64), data
        )
        return True
    except Exception:
        return False
