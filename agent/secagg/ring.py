"""Arithmetic in the ring Z/2^b where masked vectors live.

Masks only cancel if every party reduces with the same modulus, and a sum only decodes right if
the true (signed) sum lies inside the ring's centred range: ``Ring.check_capacity`` is the one place
that is checked, against the encoding's largest possible sum plus the noise bound. Elements are held
in numpy ``uint64`` (wrap-around is free for b = 64, a mask otherwise), so any b in 8..64 works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_BITS, MAX_BITS = 8, 64


class RingOverflow(ValueError):
    """A sum could leave the ring's centred range: the round must use more bits or fewer devices."""


@dataclass(frozen=True)
class Ring:
    bits: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"ring bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {self.bits!r}")

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def mask(self) -> np.uint64:
        return np.uint64((1 << self.bits) - 1)

    @property
    def element_bytes(self) -> int:
        """Bytes per element on the wire: the smallest whole number of bytes that holds b bits."""
        return (self.bits + 7) // 8

    def zeros(self, length: int) -> np.ndarray:
        return np.zeros(length, dtype=np.uint64)

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """Signed integers (any numpy int/uint array or Python ints) → ring elements in [0, 2^b)."""
        arr = np.asarray(values)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
            arr = np.array([int(v) % self.modulus for v in np.ravel(arr)], dtype=np.uint64).reshape(arr.shape)
            return arr
        return (
            arr.astype(np.int64 if np.issubdtype(arr.dtype, np.signedinteger) else np.uint64).astype(np.uint64)
            & self.mask
        )

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a + b) & self.mask  # uint64 addition wraps mod 2^64, and 2^b divides 2^64

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a - b) & self.mask

    def neg(self, a: np.ndarray) -> np.ndarray:
        return (np.uint64(0) - a) & self.mask

    def centred(self, a: np.ndarray) -> np.ndarray:
        """Ring elements → signed Python-int-exact int64 in [−2^(b−1), 2^(b−1)) (for b ≤ 63) or object."""
        half = 1 << (self.bits - 1)
        if self.bits <= 63:
            v = a.astype(np.int64)
            return np.where(v >= half, v - half - half, v)  # 2^63 itself is no int64: subtract half twice
        return np.array([int(x) - self.modulus if int(x) >= half else int(x) for x in a], dtype=object)

    def check_capacity(self, max_abs_sum: int) -> None:
        """Refuse parameters whose true sum could leave [−2^(b−1), 2^(b−1)): it would decode wrong."""
        if max_abs_sum >= 1 << (self.bits - 1):
            raise RingOverflow(
                f"a sum may reach ±{max_abs_sum}, beyond the ±2^{self.bits - 1} a {self.bits}-bit ring decodes"
            )

    def to_bytes(self, a: np.ndarray) -> bytes:
        """Little-endian, ``element_bytes`` per element: the masked vector's wire form."""
        if self.element_bytes == 8:
            return a.astype("<u8").tobytes()
        raw = a.astype("<u8").view(np.uint8).reshape(-1, 8)[:, : self.element_bytes]
        return raw.tobytes()

    def from_bytes(self, data: bytes, length: int) -> np.ndarray:
        """Inverse of ``to_bytes``; refuses a wrong length or an element ≥ 2^b (a hostile sender's)."""
        eb = self.element_bytes
        if len(data) != eb * length:
            raise ValueError(f"vector must be {length} elements of {eb} bytes, got {len(data)} bytes")
        raw = np.frombuffer(data, dtype=np.uint8).reshape(length, eb)
        padded = np.zeros((length, 8), dtype=np.uint8)
        padded[:, :eb] = raw
        out = padded.view("<u8").reshape(length).astype(np.uint64)
        if np.any(out > self.mask):
            raise ValueError(f"vector element beyond the {self.bits}-bit ring")
        return out
