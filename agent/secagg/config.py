"""A round's public parameters, identical for the server and every device in the round."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from agent.secagg.graph import Graph
from agent.secagg.ring import Ring


@dataclass(frozen=True)
class RoundConfig:
    """What the manifest tells every member: who is in the round (indices 1..n with their enrolment
    identity keys), the graph (degree k, public seed), the threshold t, the vector length and ring,
    and the fewest survivors the round may end with (the group's privacy floor and the number of
    devices whose noise the DP calibration counts on)."""

    round_id: str
    n: int
    k: int
    t: int
    vector_length: int
    graph_seed: bytes
    identity_keys: dict[int, bytes] = field(hash=False)  # index → Ed25519 public key (32 bytes)
    ring_bits: int = 32
    min_survivors: int = 20

    def __post_init__(self) -> None:
        if not 1 <= len(self.round_id) <= 128:
            raise ValueError("round id must have 1..128 characters")
        if set(self.identity_keys) != set(range(1, self.n + 1)):
            raise ValueError("identity keys must be given for exactly the indices 1..n")
        if any(len(k) != 32 for k in self.identity_keys.values()):
            raise ValueError("identity keys must be 32-byte Ed25519 public keys")
        if not 2 <= self.t <= self.k:
            raise ValueError(f"threshold t={self.t} must be in [2, k={self.k}]")
        if not 1 <= self.vector_length <= 1 << 20:
            raise ValueError("vector length must be in [1, 2^20]")
        if not 2 <= self.min_survivors <= self.n:
            raise ValueError("min_survivors must be in [2, n]")
        Graph(self.n, self.k, self.graph_seed)  # validates n, k and the seed

    @cached_property
    def graph(self) -> Graph:
        return Graph(self.n, self.k, self.graph_seed)

    @cached_property
    def ring(self) -> Ring:
        return Ring(self.ring_bits)

    def neighbours(self, u: int) -> frozenset[int]:
        return self.graph.neighbours(u)
