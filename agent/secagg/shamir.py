"""Shamir secret sharing of 32-byte secrets over the prime field GF(p), p = 2^256 + 297.

Why by hand and not pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir``: that one shares
16-byte secrets in GF(2^128) with field arithmetic in pure Python — measured here at 21 ms to split
one 16-byte secret into 40 shares of threshold 14, and 29 ms to combine it. A device shares two
32-byte secrets (four 16-byte blocks) with every neighbour and the server recombines thousands per
round, which would miss both the device's 50 ms budget and the server's. Over a prime field
Python's native big integers do the same in tens of microseconds (``pow(x, -1, p)`` for inverses),
and p > 2^256 holds a whole 32-byte secret (an X25519 private key, a mask seed) in one polynomial.
``tests/test_secagg_shamir.py`` checks this module's behaviour against pycryptodome's.

p = 2^256 + 297 is the smallest prime above 2^256 (the test re-checks it with Miller–Rabin).
Shares are 33-byte big-endian field elements; a share's x-coordinate is the holder's index in the
round (1..n, never 0, which is where the secret sits).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache

P = (1 << 256) + 297
SECRET_BYTES = 32
SHARE_BYTES = 33


class ShareError(ValueError):
    """Too few shares, a malformed share, or shares that do not lie on one polynomial."""


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares of ``secret`` for holders at ``xs``; any ``threshold`` of them recover it, fewer reveal nothing.

    The polynomial's other coefficients come from the OS's secure random source.
    """
    if len(secret) != SECRET_BYTES:
        raise ShareError(f"secret must be {SECRET_BYTES} bytes")
    xs = list(xs)
    if len(set(xs)) != len(xs) or any(not 0 < x < P for x in xs):
        raise ShareError("share x-coordinates must be distinct and nonzero")
    if not 1 <= threshold <= len(xs):
        raise ShareError(f"threshold {threshold} must be in [1, {len(xs)}]")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(P) for _ in range(threshold - 1)]
    out: dict[int, bytes] = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % P
        out[x] = y.to_bytes(SHARE_BYTES, "big")
    return out


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange weights λ_i with f(0) = Σ λ_i f(x_i). One modular inverse for all of them
    (Montgomery's batch inversion); cached, since one holder set often serves several secrets."""
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % P
                den = den * (xj - xi) % P
        nums.append(num)
        dens.append(den)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % P)
    inv = pow(prefix[-1], -1, P)
    weights = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        weights[i] = nums[i] * inv % P * prefix[i] % P
        inv = inv * dens[i] % P
    return tuple(weights)


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from ``threshold`` shares (the lowest x-coordinates offered are used).

    Raises ShareError with fewer shares, a malformed one, or a result that is no 32-byte value
    (shares from different polynomials). A wrong share that still yields some 32-byte value is
    caught by the caller's commitment check (see ``client``/``server``).
    """
    if threshold < 1 or len(shares) < threshold:
        raise ShareError(f"{len(shares)} share(s), {threshold} needed")
    xs = tuple(sorted(shares)[:threshold])
    ys = []
    for x in xs:
        s = shares[x]
        if not isinstance(s, bytes | bytearray) or len(s) != SHARE_BYTES:
            raise ShareError(f"share from holder {x} is not {SHARE_BYTES} bytes")
        y = int.from_bytes(s, "big")
        if y >= P or not 0 < x < P:
            raise ShareError(f"share from holder {x} is not a field element")
        ys.append(y)
    value = sum(w * y for w, y in zip(lagrange_at_zero(xs), ys, strict=True)) % P
    if value >> 256:
        raise ShareError("shares do not lie on one polynomial")
    return value.to_bytes(SECRET_BYTES, "big")
