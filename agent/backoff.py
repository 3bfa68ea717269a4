"""Exponential backoff with full jitter, capped, that never undercuts the server's Retry-After.

Full jitter (a uniform draw in [0, min(cap, base * 2**n)]) spreads a fleet that lost its server at
the same moment, so the server is not hit by every device at once when it comes back.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self.rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        """Seconds to wait before the next try; at least ``retry_after`` when the server named one."""
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        delay = self.rng.uniform(0, ceiling)
        if retry_after is not None:
            # The server asked for this much; add a little jitter on top so devices do not return in step.
            delay = retry_after + self.rng.uniform(0, min(self.cap, max(1.0, retry_after * 0.1)))
        return delay

    def reset(self) -> None:
        self.attempt = 0
