"""What one secure-aggregation group sum says, and how many groups' sums are combined (pure, no Django).

A round's result is the sum over its surviving devices of ``agent.encoding`` vectors plus each
device's discrete Gaussian noise. Every active device puts exactly ``scale`` units into each
histogram block and one unit into participation; an idle device puts zeros. So:

- the number of active devices ``a`` is read from the blocks' masses, weighted by how precisely each
  tells it (a block of ``size`` bins carries ``size`` noise terms: weight scale²/size). Histogram
  masses carry 10 bits each, participation one: the masses decide, which is why it is not simply
  the participation coordinate;
- a histogram block divided by ``scale·a`` is the group's average distribution (each active device
  weighs the same, however many inferences it ran: the unit of privacy is the device);
- a fraction block divided by ``scale·a`` is the mean of the devices' fractions (error rate).

The noise variance of every figure follows from the round's public parameters (survivors × each
device's σ²), never from anything a device declares. Fleet figures are the *median across groups*
of the group figures, so one group (the most one compromised device can spoil) cannot move them
alone (``telemetry.detectability.median_variance_factor`` gives the median's variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.encoding import COUNT, FRACTION, HISTOGRAM, Layout, decode
from telemetry.detectability import median_variance_factor

IDLE_BELOW = 0.5  # fewer estimated active devices than this: the group ran nothing in the window


@dataclass(frozen=True)
class GroupSum:
    """One group's unmasked sum with the public facts needed to read it."""

    layout: Layout
    total: np.ndarray  # signed integers, the layout's length
    survivors: int  # devices whose vectors (and noise) are in the sum
    sigma2_device: float  # each device's noise variance per coordinate

    def __post_init__(self) -> None:
        if np.asarray(self.total).shape != (self.layout.length,):
            raise ValueError(f"sum of length {np.asarray(self.total).size}, the layout says {self.layout.length}")
        if self.survivors < 0 or not self.sigma2_device >= 0:
            raise ValueError("survivors and noise variance must be non-negative")

    @property
    def noise_var(self) -> float:
        """Noise variance of each coordinate of the sum."""
        return self.survivors * self.sigma2_device

    def blocks(self) -> dict[str, np.ndarray]:
        return decode(self.layout, np.asarray(self.total))

    def active(self) -> float:
        """Estimated active devices, in [0, survivors] (inverse-variance weighted over masses)."""
        blocks, num, den = self.blocks(), 0.0, 0.0
        for b in self.layout.blocks:
            if b.kind in (HISTOGRAM, COUNT):
                w = b.scale**2 / b.size
                num += w * float(blocks[b.name].sum()) / b.scale
                den += w
        if den == 0:
            return 0.0
        return min(max(num / den, 0.0), float(self.survivors))

    def active_var(self) -> float:
        den = sum(b.scale**2 / b.size for b in self.layout.blocks if b.kind in (HISTOGRAM, COUNT))
        return self.noise_var / den if den else math.inf

    def is_idle(self) -> bool:
        return self.active() < IDLE_BELOW

    def distribution(self, name: str) -> np.ndarray:
        """The group's average distribution over the block's bins (non-negative, sums to 1), or
        uniform when the group was idle (callers skip idle groups; this keeps the shape)."""
        b = self.layout.block(name)
        if b.kind != HISTOGRAM:
            raise ValueError(f"{name!r} is a {b.kind} block, not a histogram")
        h = np.clip(self.blocks()[name], 0, None)
        total = h.sum()
        return h / total if total > 0 else np.full(b.size, 1.0 / b.size)

    def bin_var(self, name: str) -> float:
        """Noise variance of one bin of ``distribution(name)``: σ²_sum / (scale·a)²."""
        b, a = self.layout.block(name), self.active()
        return self.noise_var / (b.scale * a) ** 2 if a > 0 else math.inf

    def fraction(self, name: str) -> float:
        """Mean of the active devices' fractions (e.g. error rate), clipped to [0, 1]."""
        b, a = self.layout.block(name), self.active()
        if b.kind != FRACTION:
            raise ValueError(f"{name!r} is a {b.kind} block, not a fraction")
        if a <= 0:
            return 0.0
        return min(max(float(self.blocks()[name][0]) / (b.scale * a), 0.0), 1.0)

    def fraction_var(self, name: str) -> float:
        b, a = self.layout.block(name), self.active()
        return self.noise_var / (b.scale * a) ** 2 if a > 0 else math.inf


@dataclass(frozen=True)
class Pooled:
    """Groups of one (version, budget, window) combined: medians across the non-idle groups."""

    groups: int  # groups with a result (idle ones included)
    informative: int  # groups with active devices: what the medians are over
    devices: int  # survivors summed over the groups
    active: float  # estimated active devices summed over the informative groups
    distributions: dict[str, np.ndarray]
    bin_var: dict[str, float]  # per-bin noise variance of the median distribution
    fractions: dict[str, float]
    fraction_var: dict[str, float]


def pool(sums: Sequence[GroupSum]) -> Pooled:
    """Median of group figures across the informative groups (all groups must share one layout)."""
    if not sums:
        return Pooled(0, 0, 0, 0.0, {}, {}, {}, {})
    layout = sums[0].layout
    if any(s.layout != layout for s in sums):
        raise ValueError("groups of one pool must share a layout")
    live = [s for s in sums if not s.is_idle()]
    dists: dict[str, np.ndarray] = {}
    bvar: dict[str, float] = {}
    fracs: dict[str, float] = {}
    fvar: dict[str, float] = {}
    if live:
        factor = median_variance_factor(len(live))
        for b in layout.blocks:
            if b.kind == HISTOGRAM:
                med = np.median(np.stack([s.distribution(b.name) for s in live]), axis=0)
                total = med.sum()
                dists[b.name] = med / total if total > 0 else np.full(b.size, 1.0 / b.size)
                bvar[b.name] = factor * float(np.mean([s.bin_var(b.name) for s in live]))
            elif b.kind == FRACTION:
                fracs[b.name] = float(np.median([s.fraction(b.name) for s in live]))
                fvar[b.name] = factor * float(np.mean([s.fraction_var(b.name) for s in live]))
    return Pooled(
        groups=len(sums),
        informative=len(live),
        devices=sum(s.survivors for s in sums),
        active=sum(s.active() for s in live),
        distributions=dists,
        bin_var=bvar,
        fractions=fracs,
        fraction_var=fvar,
    )
