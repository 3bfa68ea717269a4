"""One device's window as a fixed-length integer vector whose influence on any sum is bounded.

Device-level privacy needs every device to move a sum by at most a fixed amount, whatever it saw.
So each histogram is *normalised*: an active device contributes exactly ``mass`` = 2^resolution_bits
units per histogram however many inferences it ran (largest-remainder rounding keeps the mass
exact); the error fraction is clipped to [0, 1] and written in the same fixed point; and one
participation unit says the device was active. Two vectors, one per privacy budget:

- drift: one histogram per input feature, and the output histogram with one extra last bin for
  rows that produced no output (failed inferences), so its mass is fixed even when all fail;
- health: the latency histogram, the error fraction, participation.

An empty window (no inferences) encodes as the zero vector with participation 0: a uniform stand-in
would drag the fleet's distributions towards uniform in proportion to idle devices, whereas zeros
leave the sum equal to the sum over active devices, whose number the masses and the participation
coordinate tell. Both choices cost the same privacy (``sensitivity`` covers active vs. idle).

``sensitivity`` derives the exact L1 and L2 sensitivity from the layout. Because the server sees
which devices sent a vector, the neighbouring relation that protects a device is *replace-one*
(same devices, one device's data changed arbitrarily, idle included); ``add_remove`` (the device's
vector vs. none at all) is given too. Replace-one is √2 larger in L2 for histograms — moving a unit
of mass between bins changes two coordinates — and is what the noise is calibrated to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

HISTOGRAM, FRACTION, COUNT = "histogram", "fraction", "count"
DEFAULT_RESOLUTION_BITS = 10
REPLACE, ADD_REMOVE = "replace", "add_remove"


@dataclass(frozen=True)
class Block:
    name: str
    kind: str  # HISTOGRAM (mass ``scale`` or 0), FRACTION (0..scale), COUNT (0 or scale)
    size: int
    scale: int


@dataclass(frozen=True)
class Layout:
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        names = [b.name for b in self.blocks]
        if len(set(names)) != len(names):
            raise ValueError("block names must be distinct")
        for b in self.blocks:
            if b.size < 1 or b.scale < 1 or b.kind not in (HISTOGRAM, FRACTION, COUNT):
                raise ValueError(f"bad block {b}")
            if b.kind != HISTOGRAM and b.size != 1:
                raise ValueError(f"{b.kind} block {b.name!r} must have size 1")

    @property
    def length(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def max_coordinate(self) -> int:
        return max(b.scale for b in self.blocks)

    def slices(self) -> dict[str, slice]:
        out, i = {}, 0
        for b in self.blocks:
            out[b.name] = slice(i, i + b.size)
            i += b.size
        return out

    def block(self, name: str) -> Block:
        return next(b for b in self.blocks if b.name == name)


def drift_layout(
    features: Sequence[tuple[str, int]], output_bins: int, resolution_bits: int = DEFAULT_RESOLUTION_BITS
) -> Layout:
    """Feature histograms (name, bins), the output histogram plus its no-output bin, participation."""
    m = 1 << resolution_bits
    blocks = [Block(f"feature:{name}", HISTOGRAM, bins, m) for name, bins in features]
    blocks.append(Block("output", HISTOGRAM, output_bins + 1, m))
    blocks.append(Block("participation", COUNT, 1, 1))
    return Layout(tuple(blocks))


def health_layout(latency_bins: int, resolution_bits: int = DEFAULT_RESOLUTION_BITS) -> Layout:
    m = 1 << resolution_bits
    return Layout(
        (
            Block("latency", HISTOGRAM, latency_bins, m),
            Block("error_fraction", FRACTION, 1, m),
            Block("participation", COUNT, 1, 1),
        )
    )


def normalise(counts: Sequence[float] | np.ndarray, mass: int) -> np.ndarray:
    """Non-negative counts → integers summing to exactly ``mass`` (largest-remainder rounding);
    all-zero or non-finite counts → a uniform spread (only for an active device's missing block)."""
    c = np.asarray(counts, dtype=np.float64)
    c = np.where(np.isfinite(c) & (c > 0), c, 0.0)
    total = c.sum()
    share = c / total * mass if total > 0 else np.full(c.shape, mass / c.size)
    base = np.floor(share).astype(np.int64)
    rest = mass - int(base.sum())
    if rest:
        order = np.lexsort((np.arange(c.size), -(share - base)))  # largest remainder, ties by index
        base[order[:rest]] += 1
    return base


def fixed_fraction(numerator: float, denominator: float, scale: int) -> int:
    """numerator/denominator clipped to [0, 1], rounded to the nearest 1/scale."""
    if not denominator > 0 or not math.isfinite(numerator) or not math.isfinite(denominator):
        return 0
    return round(min(max(numerator / denominator, 0.0), 1.0) * scale)


def encode(
    layout: Layout,
    active: bool,
    histograms: Mapping[str, Sequence[float]],
    fractions: Mapping[str, tuple[float, float]] | None = None,
) -> np.ndarray:
    """The device's vector. ``histograms`` maps block name → raw counts (any non-negative numbers),
    ``fractions`` block name → (numerator, denominator). An inactive device's vector is all zero."""
    out = np.zeros(layout.length, dtype=np.int64)
    if not active:
        return out
    fractions = fractions or {}
    for b, sl in zip(layout.blocks, layout.slices().values(), strict=True):
        if b.kind == HISTOGRAM:
            raw = histograms.get(b.name)
            if raw is not None and len(raw) != b.size:
                raise ValueError(f"{b.name} has {len(raw)} bins, the layout says {b.size}")
            out[sl] = normalise(raw if raw is not None else np.zeros(b.size), b.scale)
        elif b.kind == FRACTION:
            num, den = fractions.get(b.name, (0.0, 0.0))
            out[sl] = fixed_fraction(num, den, b.scale)
        else:
            out[sl] = b.scale
    return out


@dataclass(frozen=True)
class Sensitivity:
    l1: int
    l2_squared: int

    @property
    def l2(self) -> float:
        return math.sqrt(self.l2_squared)


def _block_change(b: Block, both_active: bool) -> tuple[int, int]:
    """(max L1, max L2²) of one block between two devices, both active or one active one idle."""
    if b.kind == HISTOGRAM:
        if both_active:
            return (2 * b.scale, 2 * b.scale**2) if b.size >= 2 else (0, 0)  # all mass moves bins
        return b.scale, b.scale**2  # all mass in one bin vs. nothing
    if b.kind == FRACTION:
        return b.scale, b.scale**2  # 0 vs. full scale (an idle device writes 0)
    return (0, 0) if both_active else (b.scale, b.scale**2)


def sensitivity(layout: Layout, relation: str = REPLACE) -> Sensitivity:
    """Exact worst-case change of the vector for one device, from the layout alone.

    ``replace``: the larger of (both active) and (active vs. idle), each summed over blocks (the
    activity of the two neighbouring devices is one choice for the whole vector). ``add_remove``:
    active vs. no vector, which equals active vs. idle (the idle vector is zero).
    """
    pairs = [False] if relation == ADD_REMOVE else [True, False]
    if relation not in (REPLACE, ADD_REMOVE):
        raise ValueError(f"unknown relation {relation!r}")
    best_l1 = best_l2 = 0
    for both in pairs:
        changes = [_block_change(b, both) for b in layout.blocks]
        best_l1 = max(best_l1, sum(c[0] for c in changes))
        best_l2 = max(best_l2, sum(c[1] for c in changes))
    return Sensitivity(best_l1, best_l2)


def decode(layout: Layout, total: np.ndarray) -> dict[str, np.ndarray]:
    """A group sum (signed integers) split back into its named blocks."""
    return {name: np.asarray(total[sl]) for name, sl in layout.slices().items()}


def implausible(layout: Layout, total: np.ndarray, survivors: int, noise_bound: int) -> str | None:
    """Why a group sum cannot come from ``survivors`` honest devices, or None.

    ``noise_bound`` bounds the summed noise per coordinate (survivors × each device's truncation
    bound, by construction). Honest sums satisfy: every coordinate ≥ −bound; each histogram's mass
    equals scale × (the same active count a ∈ [0, survivors]) within size × bound; a fraction within
    [−bound, scale·a + bound]; participation = a within bound. A sum outside that voids the group.
    """
    blocks = decode(layout, np.asarray(total, dtype=np.int64))
    lo = -noise_bound
    for b in layout.blocks:
        if np.any(blocks[b.name] < lo):
            return f"{b.name}: a coordinate below −{noise_bound}, which no honest group can produce"
    # Active count interval implied by each block; honest sums share one active count.
    a_lo, a_hi = 0.0, float(survivors)
    for b in layout.blocks:
        s = float(blocks[b.name].sum())
        slack = b.size * noise_bound
        if b.kind == HISTOGRAM or b.kind == COUNT:
            a_lo, a_hi = max(a_lo, (s - slack) / b.scale), min(a_hi, (s + slack) / b.scale)
        else:
            a_lo = max(a_lo, (s - slack) / b.scale)
        if a_lo > a_hi + 1e-9:
            return f"{b.name}: mass {s:.0f} fits no count of active devices among {survivors}"
    return None


def window_vectors(
    window: object, resolution_bits: int = DEFAULT_RESOLUTION_BITS
) -> dict[str, tuple[Layout, np.ndarray]]:
    """Both vectors of one ``agent.aggregate.WindowAggregator`` (read by attribute, so this module
    stays free of the aggregator's imports): ``{"drift": (layout, vector), "health": (...)}``.

    The output block's last bin holds the failed rows; the other bins share the successful rows in
    proportion to the output histogram, whatever its unit (a multi-dimensional score output counts
    every value, a class output one per row), so the block's mass is fixed either way.
    """
    features = [(name, len(edges) - 1) for name, edges in window.features]  # type: ignore[attr-defined]
    outputs = np.asarray(window.outputs, dtype=np.float64)  # type: ignore[attr-defined]
    rows, errors = float(window.inferences), float(window.errors)  # type: ignore[attr-defined]
    ok = max(rows - errors, 0.0)
    out_total = outputs.sum()
    out_rows = outputs / out_total * ok if out_total > 0 else np.zeros_like(outputs)
    drift = drift_layout(features, outputs.size, resolution_bits)
    hist = {f"feature:{name}": window.feature_counts[name] for name, _ in features}  # type: ignore[attr-defined]
    hist["output"] = np.concatenate([out_rows, [errors]])
    health = health_layout(len(window.latency), resolution_bits)  # type: ignore[attr-defined]
    active = rows > 0
    return {
        "drift": (drift, encode(drift, active, hist)),
        "health": (
            health,
            encode(health, active, {"latency": window.latency}, {"error_fraction": (errors, rows)}),  # type: ignore[attr-defined]
        ),
    }
