"""Trust checks: the manifest's signature (pinned key), its freshness and order, artifact sha256.

The pinned key, not whatever key the server offers today, is what makes a tampered manifest (or a
server impostor) fail: the agent never re-fetches the key after enrollment. A valid signature is not
enough: a signed manifest captured on the network is still a valid signature, so the agent also
checks that the manifest is for this device, not expired, and not older than the last one it
accepted (docs/protocol.md, "The agent's checks"). Every check here is pure: the caller passes the
device id, what it accepted last and the time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ALG = "Ed25519"
PROTOCOL = 2  # the manifest protocol this agent understands (docs/protocol.md, "Versions")
# How far the device's clock may run ahead of the server's before an unexpired manifest reads as
# expired. The server re-signs a manifest a day before it expires, so a served manifest has at
# least that much left; the allowance covers the rest.
CLOCK_SKEW = 3600.0
_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$")


class VerifyError(Exception):
    """Signature or hash did not match: the thing is refused."""


class ManifestRefused(VerifyError):
    """A manifest the agent will not act on; ``reason`` is a machine code (docs/protocol.md)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical(obj: Any) -> bytes:
    """The exact bytes the server signs (ota/signing.py must produce the same; tests pin both).

    Sorted keys, no whitespace, UTF-8 without escaping non-ASCII, Python's shortest round-trip float
    form; NaN and infinities are not JSON and are refused (ValueError), as is a lone surrogate.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def digest(manifest: dict[str, Any]) -> str:
    """What identifies a manifest's content: the sha256 of its canonical bytes."""
    return hashlib.sha256(canonical(manifest)).hexdigest()


def parse_time(value: Any) -> int:
    """``YYYY-MM-DDTHH:MM:SSZ`` (the only form the server writes) as Unix seconds; ValueError otherwise."""
    m = _TIME.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ: {value!r}")
    return int(datetime(*(int(g) for g in m.groups()), tzinfo=UTC).timestamp())  # ValueError: no such day


@dataclass(frozen=True)
class Accepted:
    """The last manifest the agent accepted, as kept on disk (agent/store.py): the floor for the next."""

    device_id: str
    sequence: int
    digest: str
    issued_at: int
    expires_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "sequence": self.sequence,
            "digest": self.digest,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Accepted:
        fields = (str(d["device_id"]), d["sequence"], str(d["digest"]), d["issued_at"], d["expires_at"])
        if not all(type(v) is int for v in fields[1:2] + fields[3:]):
            raise ValueError("sequence and times must be integers")
        return cls(*fields)


def verify_manifest(document: dict[str, Any], pinned: dict[str, Any]) -> dict[str, Any]:
    """Return ``document["manifest"]`` if its signature verifies against ``pinned``, else raise.

    Only the signature: :func:`accept_manifest` adds the freshness and order checks.
    """
    try:
        manifest, sig = document["manifest"], document["signature"]
        if not isinstance(manifest, dict) or not isinstance(sig, dict):
            raise ManifestRefused("malformed", "manifest and signature must be objects")
        if sig.get("alg") != ALG or pinned.get("alg", ALG) != ALG:
            raise ManifestRefused("alg", f"unsupported signature algorithm {sig.get('alg')!r}")
        if pinned.get("key_id") and sig.get("key_id") != pinned["key_id"]:
            raise ManifestRefused("key_id", f"signed by key {sig.get('key_id')!r}, pinned key is {pinned['key_id']!r}")
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(pinned["public_key"]))
        key.verify(base64.b64decode(sig["value"], validate=True), canonical(manifest))
    except InvalidSignature as e:
        raise ManifestRefused("signature", "manifest signature does not verify against the pinned key") from e
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ManifestRefused("malformed", f"malformed signed manifest: {e}") from e
    return manifest


def check_manifest(
    manifest: dict[str, Any],
    *,
    device_id: str,
    last: Accepted | None,
    now: float | None,
    skew: float = CLOCK_SKEW,
) -> tuple[Accepted, bool]:
    """The checks after the signature, in order; returns ``(mark, redelivery)`` or raises ManifestRefused.

    ``now`` is the device's clock (None: no expiry check, for the agent's own saved manifest at start),
    trusted only for expiry and never below the issue time of the last accepted manifest (a clock
    reset to 1970 cannot make an expired manifest look fresh). The issue
    time is not compared with the device's clock: a device whose clock runs behind would otherwise
    refuse every manifest, and ordering is the sequence's job, not the clock's.
    """
    protocol = manifest.get("protocol")
    if type(protocol) is not int or protocol != PROTOCOL:
        raise ManifestRefused("protocol", f"manifest protocol {protocol!r}; this agent speaks {PROTOCOL}")
    seq = manifest.get("sequence")
    if type(seq) is not int or seq < 1:
        raise ManifestRefused("fields", f"sequence must be a positive integer, got {seq!r}")
    try:
        issued, expires = parse_time(manifest.get("issued_at")), parse_time(manifest.get("expires_at"))
    except ValueError as e:
        raise ManifestRefused("fields", f"issued_at/expires_at: {e}") from e
    if expires <= issued:
        raise ManifestRefused("fields", "expires_at is not after issued_at")
    theirs = manifest.get("device_id")
    if not isinstance(theirs, str):
        raise ManifestRefused("fields", "device_id is missing")
    if theirs != device_id:
        raise ManifestRefused("device_id", f"manifest is for device {theirs!r}, not this one")
    clock = max(float(now), float(last.issued_at) if last else -math.inf) if now is not None else -math.inf
    if now is not None and (not math.isfinite(clock) or clock > expires + skew):
        shown = int(clock) if math.isfinite(clock) else clock  # int(inf) would raise instead of refusing
        raise ManifestRefused(
            "expired", f"manifest expired at {manifest['expires_at']} (device time {shown}, allowance {skew:g} s)"
        )
    mark = Accepted(device_id, seq, digest(manifest), issued, expires)
    if last is not None and last.device_id == device_id:
        if seq < last.sequence:
            raise ManifestRefused("sequence_older", f"sequence {seq} is older than the accepted {last.sequence}")
        if seq == last.sequence:
            if mark.digest != last.digest:
                raise ManifestRefused("sequence_conflict", f"a different manifest with the accepted sequence {seq}")
            return last, True
    return mark, False


def accept_manifest(
    document: dict[str, Any],
    pinned: dict[str, Any],
    *,
    device_id: str,
    last: Accepted | None,
    now: float,
    skew: float = CLOCK_SKEW,
) -> tuple[dict[str, Any], Accepted, bool]:
    """Signature, then :func:`check_manifest`: ``(manifest, mark, redelivery)`` or ManifestRefused."""
    manifest = verify_manifest(document, pinned)
    mark, redelivery = check_manifest(manifest, device_id=device_id, last=last, now=now, skew=skew)
    return manifest, mark, redelivery


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
