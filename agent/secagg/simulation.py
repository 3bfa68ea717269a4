"""One whole round in one process: real client and server state machines, messages passed by hand.

For tests, the benchmark and the detectability Monte-Carlo — and as the reference sequence of calls
that phase 2's service and agent make over HTTP. ``drop`` says which devices go silent before which
phase (never to return in this round).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.secagg import client as cl
from agent.secagg.config import RoundConfig
from agent.secagg.graph import choose_parameters
from agent.secagg.messages import ADVERTISE, MASKED, SHARE, UNMASK
from agent.secagg.primitives import identity_public_bytes
from agent.secagg.server import ServerRound


@dataclass
class Members:
    config: RoundConfig
    identities: dict[int, Ed25519PrivateKey]


def make_round(
    n: int,
    vector_length: int,
    *,
    k: int | None = None,
    t: int | None = None,
    ring_bits: int = 32,
    min_survivors: int | None = None,
    round_id: str = "r-test",
    dropout: float = 0.3,
) -> Members:
    """A round of ``n`` fresh devices with the SecAgg+ parameters for ``dropout`` (or given k, t)."""
    if k is None or t is None:
        p = choose_parameters(n, dropout=dropout)
        k, t = (k or p.k), (t or p.t)
    ids = {i: Ed25519PrivateKey.generate() for i in range(1, n + 1)}
    cfg = RoundConfig(
        round_id=round_id,
        n=n,
        k=k,
        t=t,
        vector_length=vector_length,
        graph_seed=os.urandom(32),
        identity_keys={i: identity_public_bytes(sk) for i, sk in ids.items()},
        ring_bits=ring_bits,
        min_survivors=min_survivors if min_survivors is not None else min(n, max(2, t)),
    )
    return Members(cfg, ids)


def run_round(
    members: Members, inputs: Mapping[int, np.ndarray], drop: Mapping[str, set[int]] | None = None
) -> tuple[ServerRound, np.ndarray | None]:
    """Run every phase; ``drop[phase]`` devices fall silent before sending that phase's message."""
    cfg, drop = members.config, drop or {}
    gone: set[int] = set()
    server = ServerRound(cfg)
    states: dict[int, cl.ClientState] = {}

    def alive(phase: str, pool) -> list[int]:
        gone.update(drop.get(phase, set()))
        return [u for u in sorted(pool) if u not in gone]

    for u in alive(ADVERTISE, cfg.identity_keys):
        states[u], msg = cl.advertise(cfg, u, members.identities[u])
        server.receive_advertise(msg)
    keys = server.close_advertise()
    if server.phase != SHARE:
        return server, None
    for u in alive(SHARE, keys):
        states[u], msg = cl.share_keys(states[u], keys[u], members.identities[u])
        server.receive_share_keys(msg)
    shares = server.close_share_keys()
    if server.phase != MASKED:
        return server, None
    for u in alive(MASKED, shares):
        states[u], msg = cl.masked_input(states[u], shares[u], inputs[u])
        server.receive_masked(msg)
    request = server.close_masked()
    if request is None:
        return server, None
    for u in alive(UNMASK, request.survivors):
        states[u], msg = cl.unmask(states[u], request)
        server.receive_unmask(msg)
    return server, server.finish()
