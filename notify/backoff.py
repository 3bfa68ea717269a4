"""When to try a failed delivery again (pure): exponential backoff with jitter, capped, for a day."""

import random

GIVE_UP_SECONDS = 24 * 3600


def delay(attempts: int, base: float = 10.0, cap: float = 3600.0, rng: random.Random | None = None) -> float:
    """Seconds before try ``attempts + 1``: base, 2x base, 4x base ... up to ``cap``, each ±10%."""
    raw = min(cap, base * 2 ** max(0, attempts - 1))
    jitter = (rng or random).uniform(-0.1, 0.1)
    return max(0.0, raw * (1 + jitter))


def schedule(base: float = 10.0, cap: float = 3600.0, window: float = GIVE_UP_SECONDS) -> list[float]:
    """The nominal retry times (seconds after the first try) within the window, for docs and tests."""
    out, t, n = [], 0.0, 1
    while True:
        t += min(cap, base * 2 ** (n - 1))
        if t > window:
            return out
        out.append(t)
        n += 1
