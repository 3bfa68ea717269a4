"""Local guard: fall back on the device itself when a new version's errors or latency spike.

The baseline is the previous version's recent behaviour on this very device (same hardware, same
inputs), so the comparison needs no server and no fleet. A spike must be both relatively large
(a ratio) and absolutely large (a margin), so a baseline of zero errors does not make one error a
"spike".

What leaves the device about a fallback is the decision and the rule that made it, with the rule's
own limits (``Verdict.public()``); the error rate and latency it observed stay here, because they are
exact, un-noised measurements of this device's inferences (docs/privacy.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GuardPolicy:
    min_samples: int = 50  # inferences on the new version before judging it
    window: int = 500  # recent inferences kept per version
    error_ratio: float = 3.0
    error_margin: float = 0.05  # absolute error-rate increase needed as well
    max_error_rate: float = 0.5  # with no baseline at all, this much is a failure by itself
    latency_ratio: float = 3.0  # p90 of new vs p90 of baseline
    latency_margin_ms: float = 20.0
    # Probation: a new version is committed (reported ``committed``) after this many inferences or
    # this many seconds on it without a fallback, whichever comes first (docs/agent.md).
    commit_after_inferences: int = 200
    commit_after_seconds: float = 600.0


@dataclass(frozen=True)
class Verdict:
    fall_back: bool
    reason: str = ""  # for local logs and the local block list: it may quote observed numbers
    numbers: dict | None = None  # observed values, local only
    rule: str = ""  # which rule decided: "error_rate", "error_rate_vs_previous", "latency_p90_vs_previous", ...
    limits: dict[str, Any] = field(default_factory=dict)  # the rule's configured limits, never observations

    def public(self) -> dict[str, Any]:
        """What a ``fell_back`` event may carry: the rule and its limits."""
        return {"rule": self.rule, **self.limits}


class Stats:
    """Recent (ok, latency) observations of one version."""

    def __init__(self, size: int) -> None:
        self.ok: deque[bool] = deque(maxlen=size)
        self.latency: deque[float] = deque(maxlen=size)

    def add(self, ok: bool, latency_ms: float) -> None:
        self.ok.append(ok)
        if ok:
            self.latency.append(latency_ms)

    def __len__(self) -> int:
        return len(self.ok)

    def error_rate(self) -> float:
        return 0.0 if not self.ok else 1.0 - sum(self.ok) / len(self.ok)

    def p90(self) -> float | None:
        return float(np.percentile(self.latency, 90)) if self.latency else None


class Guard:
    def __init__(self, policy: GuardPolicy | None = None) -> None:
        self.policy = policy or GuardPolicy()
        self.baseline: Stats | None = None
        self.current = Stats(self.policy.window)

    def switched(self) -> None:
        """A new version became active: what we saw so far becomes its baseline."""
        if len(self.current) >= self.policy.min_samples:
            self.baseline = self.current
        self.current = Stats(self.policy.window)

    def reset(self) -> None:
        """After a fallback the previous version is active again and is judged against nothing."""
        self.baseline = None
        self.current = Stats(self.policy.window)

    def observe(self, ok: bool, latency_ms: float) -> Verdict:
        self.current.add(ok, latency_ms)
        return self.judge()

    def judge(self) -> Verdict:
        p, cur, base = self.policy, self.current, self.baseline
        if len(cur) < p.min_samples:
            return Verdict(False)
        err = cur.error_rate()
        base_err = base.error_rate() if base else None
        nums = {"samples": len(cur), "error_rate": round(err, 4), "baseline_error_rate": base_err}
        if base_err is None:
            if err > p.max_error_rate:
                limits = {"threshold": p.max_error_rate}
                return Verdict(True, f"error rate {err:.0%} with no baseline", nums, "error_rate", limits)
        elif err > max(base_err * p.error_ratio, base_err + p.error_margin):
            limits = {"ratio": p.error_ratio, "margin": p.error_margin}
            why = f"error rate {err:.1%} vs baseline {base_err:.1%}"
            return Verdict(True, why, nums, "error_rate_vs_previous", limits)
        lat, base_lat = cur.p90(), base.p90() if base else None
        nums.update(p90_ms=lat, baseline_p90_ms=base_lat)
        if (
            lat is not None
            and base_lat is not None
            and len(cur.latency) >= p.min_samples
            and lat > max(base_lat * p.latency_ratio, base_lat + p.latency_margin_ms)
        ):
            limits = {"ratio": p.latency_ratio, "margin_ms": p.latency_margin_ms}
            why = f"p90 latency {lat:.1f} ms vs baseline {base_lat:.1f} ms"
            return Verdict(True, why, nums, "latency_p90_vs_previous", limits)
        return Verdict(False, "", nums)
