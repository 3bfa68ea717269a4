"""Trust checks: the manifest's Ed25519 signature against the key pinned at enrollment, artifact sha256.

The pinned key, not whatever key the server offers today, is what makes a tampered manifest (or a
server impostor) fail: the agent never re-fetches the key after enrollment.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class VerifyError(Exception):
    """Signature or hash did not match: the thing is refused."""


def canonical(manifest: dict[str, Any]) -> bytes:
    """The exact bytes the server signs (protocol v1)."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def verify_manifest(document: dict[str, Any], pinned: dict[str, Any]) -> dict[str, Any]:
    """Return ``document["manifest"]`` if its signature verifies against ``pinned``, else raise."""
    try:
        manifest, sig = document["manifest"], document["signature"]
        if sig.get("alg") != "Ed25519" or pinned.get("alg", "Ed25519") != "Ed25519":
            raise VerifyError(f"unsupported signature algorithm {sig.get('alg')!r}")
        if pinned.get("key_id") and sig.get("key_id") != pinned["key_id"]:
            raise VerifyError(f"signed by key {sig.get('key_id')!r}, pinned key is {pinned['key_id']!r}")
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(pinned["public_key"]))
        key.verify(base64.b64decode(sig["value"]), canonical(manifest))
    except InvalidSignature as e:
        raise VerifyError("manifest signature does not verify against the pinned key") from e
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise VerifyError(f"malformed signed manifest: {e}") from e
    return manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_artifact(path: Path, sha256: str, size: int | None = None) -> None:
    if size is not None and path.stat().st_size != size:
        raise VerifyError(f"artifact is {path.stat().st_size} bytes, manifest says {size}")
    got = sha256_file(path)
    if got != sha256.lower():
        raise VerifyError(f"artifact sha256 {got[:16]}… does not match the manifest's {sha256[:16]}…")
