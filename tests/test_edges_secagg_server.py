"""Edges of the server's unmasking: exactly t revealed shares, exactly one short, a dropped device whose
mask-key shares are inconsistent or lie on no 32-byte secret, signed and unsigned dealers, and the
exact refusal a non-survivor's reveal gets.

Written from mutation testing (`make mutation`): each test pins a behaviour a one-token change to
``agent/secagg/server.py`` would otherwise alter silently. Pure: no database.
"""

import dataclasses

import numpy as np
import pytest

from agent.secagg import client as cl
from agent.secagg import shamir
from agent.secagg.messages import Refusal, UnmaskShares
from agent.secagg.server import ServerRound
from agent.secagg.simulation import make_round

L = 6
BIG = 2**256 + 5  # a polynomial constant beyond 32 bytes: such shares combine to no secret


def stage(monkeypatch: pytest.MonkeyPatch, cheats: dict | None = None, unsigned: frozenset = frozenset()):
    """8 devices, complete graph, t = 5; device 8 drops before sending its masked vector.

    ``cheats[u] = (which, shares_of)``: device u's ``which``-th Shamir split (1: mask key, 2: seed)
    returns ``shares_of(xs)`` instead. ``unsigned``: dealers whose ShareKeys signature is garbage.
    """
    cheats = cheats or {}
    m = make_round(8, L, k=7, t=5, min_survivors=5)
    cfg, ids = m.config, m.identities
    rng = np.random.default_rng(3)
    x = {u: rng.integers(-50, 50, L) for u in range(1, 9)}
    s, st = ServerRound(cfg), {}
    for u in range(1, 9):
        st[u], a = cl.advertise(cfg, u, ids[u])
        s.receive_advertise(a)
    keys = s.close_advertise()
    real_split = shamir.split
    for u in range(1, 9):
        if u in cheats:
            which, shares_of = cheats[u]
            calls: list[int] = []

            def cheat(secret, threshold, xs, calls=calls, which=which, shares_of=shares_of):
                calls.append(1)
                return shares_of(xs) if len(calls) == which else real_split(secret, threshold, xs)

            monkeypatch.setattr(cl.shamir, "split", cheat)
        st[u], msg = cl.share_keys(st[u], keys[u], ids[u])
        monkeypatch.setattr(cl.shamir, "split", real_split)
        if u in unsigned:
            msg = dataclasses.replace(msg, signature=bytes(64))
        s.receive_share_keys(msg)
    inbox = s.close_share_keys()
    for u in range(1, 8):
        st[u], msg = cl.masked_input(st[u], inbox[u], x[u])
        s.receive_masked(msg)
    request = s.close_masked()
    assert request is not None and request.survivors == frozenset(range(1, 8))
    reveals = {}
    for u in range(1, 8):
        st[u], reveals[u] = cl.unmask(st[u], request)
    return cfg, s, x, reveals


def line(xs, constant: int = BIG, slope: int = 977) -> dict[int, bytes]:
    return {v: ((constant + slope * v) % shamir.P).to_bytes(33, "big") for v in xs}


def test_exactly_t_revealed_shares_are_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, s, x, reveals = stage(monkeypatch)
    for u in range(1, 7):  # owners 1..6 get exactly t = 5 shares each, 7 and 8 get six
        s.receive_unmask(reveals[u])
    assert s.missing_shares() == {}
    total = s.finish()
    assert total is not None and s.phase == "done"
    assert s.result is total
    assert np.array_equal(cfg.ring.centred(total), sum(x[u] for u in range(1, 8)))


def test_one_share_short_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _, s, _, reveals = stage(monkeypatch)
    for u in range(1, 6):  # owners 1..5 get four shares each: one short of t
        s.receive_unmask(reveals[u])
    assert s.missing_shares() == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert s.finish() is None
    assert s.phase == "failed"
    assert s.reason == "5 device(s)' masks cannot be removed: device 1 lacks 1 share(s), t=5"
    assert s.result is None


def test_a_non_survivor_cannot_reveal(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, s, _, _ = stage(monkeypatch)
    with pytest.raises(Refusal) as info:
        s.receive_unmask(UnmaskShares(cfg.round_id, 8))
    assert (info.value.code, info.value.message, info.value.field) == (
        "not_in_round",
        "device 8 is not a survivor of this round",
        "sender",
    )


def finish_all(s: ServerRound, reveals: dict) -> None:
    for msg in reveals.values():
        s.receive_unmask(msg)
    assert s.finish() is None
    assert s.phase == "failed" and s.result is None


def test_dropped_dealer_with_inconsistent_mask_key_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    _, s, _, reveals = stage(monkeypatch, {8: (1, lambda xs: line(xs, constant=12345))})
    finish_all(s, reveals)
    assert s.reason == "device 8 dealt inconsistent shares of its mask key (signed)"


def test_dropped_dealer_whose_mask_key_shares_make_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    _, s, _, reveals = stage(monkeypatch, {8: (1, line)}, unsigned=frozenset({8}))
    finish_all(s, reveals)
    assert s.reason == "device 8 dealt inconsistent shares of its mask key (unsigned (not attributable))"


def test_survivor_whose_seed_shares_make_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    _, s, _, reveals = stage(monkeypatch, {3: (2, line)})
    finish_all(s, reveals)
    assert s.reason == "device 3 dealt inconsistent shares of its self-mask seed (signed)"


def test_unsigned_inconsistent_seed_dealer_is_not_attributable(monkeypatch: pytest.MonkeyPatch) -> None:
    _, s, _, reveals = stage(monkeypatch, {2: (2, lambda xs: line(xs, constant=99))}, unsigned=frozenset({2}))
    finish_all(s, reveals)
    assert s.reason == "device 2 dealt inconsistent shares of its self-mask seed (unsigned (not attributable))"
