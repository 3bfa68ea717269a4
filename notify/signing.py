"""Webhook signatures (pure, no Django), in the shape Stripe made familiar.

``X-EdgeFleet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``

The timestamp is inside the MAC, so a captured request cannot be replayed later than the
receiver's tolerance; the receiver dedups within it by the ``X-EdgeFleet-Delivery`` id. Several
``v1=`` values may appear (a secret being rotated); any one matching is enough.
"""

import hashlib
import hmac
import time

HEADER = "X-EdgeFleet-Signature"
DEFAULT_TOLERANCE = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={signature(secret, t, body)}"


def verify(
    header_value: str, secret: str, body: bytes, tolerance: int = DEFAULT_TOLERANCE, now: float | None = None
) -> bool:
    """What a receiver does: parse, check the age, compare in constant time."""
    t: int | None = None
    candidates: list[str] = []
    for part in (header_value or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1":
            candidates.append(value)
    if t is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = signature(secret, t, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)
