"""A fleet's drift rounds by simulation (pure, no Django): what ``tests/test_round_drift_stats.py``
and ``bench/round_drift.py`` feed the server's round statistics.

Real: ``agent.encoding.encode`` for every device (its window is a multinomial draw of its
inferences over the bins of N(shift, 1)), ``agent.dpnoise``'s exact discrete Gaussian sampler, the
noise calibrated by ``telemetry.accounting.calibrate`` for the FULL default layout (8 features × 20
bins + 10 outputs), the group reading and median pooling of ``telemetry.group_sums``. Reduced as in
``bench/private_drift.py``: only the feature under test (and the output block) is encoded, and a
group's noise is drawn as one discrete Gaussian of the group's variance n·σ²_dev per coordinate
(Kairouz, Liu and Steinke 2021: within Rényi divergence τ < 1e-16 of the sum of n devices' draws).
The unmasked sum equals the plain sum (tests/test_secagg_protocol.py), so it is summed plainly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from agent.dpnoise import discrete_gaussian
from agent.encoding import Layout, drift_layout, encode, sensitivity
from telemetry import detectability as det
from telemetry import group_sums as gs
from telemetry.accounting import calibrate

FEATURE = "feature:x"


@dataclass(frozen=True)
class Fleet:
    groups: int
    group_size: int
    epsilon_drift_day: float = 4.0  # the EDGEFLEET_PRIVACY_* default
    drift_rounds_per_day: int = 24
    delta: float = 1e-6
    bins: int = 20
    inferences: int = 200  # per device and window

    @property
    def layout(self) -> Layout:
        return drift_layout([("x", self.bins)], 10)

    @property
    def edges(self) -> list[float]:
        return det.default_edges(self.bins)

    def sigma2_device(self) -> Fraction:
        full = drift_layout([(f"f{i}", self.bins) for i in range(8)], 10)
        survivors = max(2, math.ceil(0.7 * self.group_size))
        cal = calibrate(
            self.epsilon_drift_day, self.drift_rounds_per_day, survivors, sensitivity(full).l2, full.length, self.delta
        )
        return cal.sigma2_device


def round_of(fleet: Fleet, rng: np.random.Generator, shift: float, sigma2: Fraction) -> gs.Pooled:
    """One drift round of the whole fleet, pooled across its groups as the round rollup pools it."""
    layout, n = fleet.layout, fleet.group_size
    probs = det.bin_probabilities(fleet.edges, shift)
    output = [fleet.inferences] + [0] * 10
    sums = []
    for _ in range(fleet.groups):
        counts = rng.multinomial(fleet.inferences, probs, size=n)
        total = np.sum([encode(layout, True, {FEATURE: c, "output": output}) for c in counts], axis=0)
        noise = np.array([discrete_gaussian(sigma2 * n) for _ in range(layout.length)], dtype=np.int64)
        sums.append(gs.GroupSum(layout, total + noise, n, float(sigma2)))
    return gs.pool(sums)
