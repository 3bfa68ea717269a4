"""Expansion of a 32-byte seed into a vector of ring elements (ChaCha20 keystream from ``cryptography``).

Every mask is ``expand(key, ...)``: each key is used for exactly one stream (keys are derived per
round and per pair or device by HKDF), so the fixed all-zero nonce never repeats under one key.
Ring elements are the low b bits of little-endian 64-bit words, uniform because 2^b divides 2^64.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from agent.secagg.ring import Ring

_NONCE = bytes(16)  # cryptography's ChaCha20 takes a 16-byte (counter ‖ nonce) block


def keystream(key: bytes, nbytes: int) -> bytes:
    if len(key) != 32:
        raise ValueError("PRG key must be 32 bytes")
    enc = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    return enc.update(bytes(nbytes))


def expand(key: bytes, length: int, ring: Ring) -> np.ndarray:
    """``length`` pseudo-random ring elements from ``key``."""
    words = np.frombuffer(keystream(key, 8 * length), dtype="<u8").astype(np.uint64)
    return words & ring.mask


def words(key: bytes):
    """Endless stream of 64-bit words from ``key`` (for seeded public choices such as the graph)."""
    enc = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    while True:
        yield from (int(w) for w in np.frombuffer(enc.update(bytes(8 * 256)), dtype="<u8"))


def uniform_below(stream, bound: int) -> int:
    """One integer uniform in [0, bound) from a ``words`` stream, by rejection (no modulo bias)."""
    if bound <= 0:
        raise ValueError("bound must be positive")
    limit = (1 << 64) - ((1 << 64) % bound)
    for w in stream:
        if w < limit:
            return w % bound
    raise AssertionError("unreachable: the stream is endless")
