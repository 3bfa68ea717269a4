"""SecAgg+'s sparse masking graph (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020).

Bonawitz et al. 2017 masks every pair of devices: n² shares per round. SecAgg+ masks only along a
k-regular graph with k = O(log n): a Harary graph (ring lattice, each device joined to the k/2
nearest on either side) over a random permutation of the devices. The permutation comes from a
public per-round seed, so every device and the server compute the same graph with no extra messages,
and nobody (corrupt devices included, who are fixed before the seed is drawn) can place themselves.

``choose_parameters`` picks the smallest even k and a threshold t from the three conditions of the
paper's analysis, with a union bound over the n devices (σ = 40 bits statistical security, η = 30
bits correctness, as in the paper):

1. no device has ≥ t corrupt neighbours (else corrupt devices plus the server hold t shares of its
   mask key and its self-mask seed and unmask its vector):  n·P[Bin(k, γ) ≥ t] ≤ 2^−σ;
2. the graph of honest surviving devices stays connected (else the server learns the sum of each
   component on its own). On the permuted ring lattice that needs two runs of ≥ k/2 consecutive
   removed devices:  C(n, 2)·(γ + δ)^k ≤ 2^−σ;
3. every device keeps ≥ t neighbours that answer the unmasking phase (else the round fails):
   n·P[Bin(k, δ) > k − t] ≤ 2^−η.

γ is the fraction of devices assumed to collude with the server, δ the dropout fraction the round
must survive. When no k < n − 1 meets them (small groups) the graph is complete (plain SecAgg) with
t = ⌈2n/3⌉, whose guarantee is deterministic: fewer than t colluders learn nothing, and the round
survives n − t dropouts; the bounds are still reported for that t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from agent.secagg.prg import uniform_below, words
from agent.secagg.primitives import derive

SIGMA_BITS = 40
ETA_BITS = 30
DEFAULT_CORRUPT = 0.05
DEFAULT_DROPOUT = 0.30


def _log_binom_tail_ge(k: int, p: float, t: int) -> float:
    """ln P[Bin(k, p) ≥ t], exact by summing terms in log space (k is at most a few thousand)."""
    if t <= 0:
        return 0.0
    if t > k:
        return -math.inf
    if p <= 0:
        return -math.inf
    if p >= 1:
        return 0.0
    terms = [
        math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1) + i * math.log(p) + (k - i) * math.log1p(-p)
        for i in range(t, k + 1)
    ]
    m = max(terms)
    return m + math.log(sum(math.exp(x - m) for x in terms))


@dataclass(frozen=True)
class GraphParameters:
    n: int
    k: int  # neighbours per device (n − 1: complete graph)
    t: int  # Shamir threshold within a neighbourhood
    log2_privacy_failure: float  # log2 of the union bound on conditions 1 and 2
    log2_correctness_failure: float  # log2 of the union bound on condition 3

    @property
    def complete(self) -> bool:
        return self.k >= self.n - 1


def _bounds(n: int, k: int, t: int, corrupt: float, dropout: float, complete: bool) -> tuple[float, float]:
    ln2 = math.log(2)
    priv = math.log(n) + _log_binom_tail_ge(k, corrupt, t)
    if not complete:
        f = corrupt + dropout
        conn = math.log(n * (n - 1) / 2) + k * math.log(f) if f > 0 else -math.inf
        priv = max(priv, conn) + (math.log(2) if priv > -math.inf and conn > -math.inf else 0.0)
    corr = math.log(n) + _log_binom_tail_ge(k, dropout, k - t + 1)
    return priv / ln2, corr / ln2


def choose_parameters(
    n: int,
    corrupt: float = DEFAULT_CORRUPT,
    dropout: float = DEFAULT_DROPOUT,
    sigma: int = SIGMA_BITS,
    eta: int = ETA_BITS,
) -> GraphParameters:
    """Smallest even k (then the smallest t meeting condition 1) that meets all three conditions."""
    if n < 2:
        raise ValueError("a round needs at least 2 devices")
    if not (0 <= corrupt < 1 and 0 <= dropout < 1 and corrupt + dropout < 1):
        raise ValueError("corrupt and dropout fractions must be in [0, 1) and sum below 1")
    for k in range(2, n - 1, 2):
        for t in range(1, k + 1):
            priv, corr = _bounds(n, k, t, corrupt, dropout, False)
            if priv <= -sigma:
                if corr <= -eta:
                    return GraphParameters(n, k, t, priv, corr)
                break  # a larger t only hurts correctness: try a larger k
    t = complete_threshold(n)
    priv, corr = _bounds(n, n - 1, t, corrupt, dropout, True)
    return GraphParameters(n, n - 1, t, priv, corr)


def complete_threshold(n: int) -> int:
    """Plain SecAgg's threshold ⌈2n/3⌉: fewer than t colluders learn nothing (deterministically),
    and up to n − t dropouts are survived. Used when no sparse graph meets the bounds (small groups,
    where independent-corruption tail bounds are too loose to help)."""
    return max(2, -(-2 * n // 3))


@dataclass(frozen=True)
class Graph:
    """The round's masking graph over device indices 1..n (public, the same for every party)."""

    n: int
    k: int
    seed: bytes

    def __post_init__(self) -> None:
        if self.n < 2 or not 2 <= self.k <= self.n - 1:
            raise ValueError(f"need 2 ≤ k ≤ n − 1, got n={self.n}, k={self.k}")
        if self.k < self.n - 1 and self.k % 2:
            raise ValueError("a Harary graph's degree must be even (or n − 1 for the complete graph)")
        if len(self.seed) < 16:
            raise ValueError("graph seed must be at least 16 bytes")

    @cached_property
    def _order(self) -> list[int]:
        """Fisher–Yates permutation of 1..n from the seed: the device index at each ring position."""
        stream = words(derive(self.seed, "graph-permutation", self.n, self.k))
        order = list(range(1, self.n + 1))
        for i in range(self.n - 1, 0, -1):
            j = uniform_below(stream, i + 1)
            order[i], order[j] = order[j], order[i]
        return order

    @cached_property
    def _position(self) -> dict[int, int]:
        return {idx: pos for pos, idx in enumerate(self._order)}

    def neighbours(self, u: int) -> frozenset[int]:
        if u not in self._position:
            raise KeyError(u)
        if self.k >= self.n - 1:
            return frozenset(v for v in range(1, self.n + 1) if v != u)
        p = self._position[u]
        half = self.k // 2
        return frozenset(self._order[(p + d) % self.n] for d in range(-half, half + 1) if d)
