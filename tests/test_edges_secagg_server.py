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
from agent.secagg.messages import MaskedInput, Refusal, UnmaskShares
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


# ---- every refusal and failure reason, exactly ------------------------------------------------------


def refusal(fn, *args) -> tuple[str, str, str | None]:
    with pytest.raises(Refusal) as info:
        fn(*args)
    return info.value.code, info.value.message, info.value.field


def test_phase_one_and_two_refusals() -> None:
    m = make_round(6, L, k=5, t=3, min_survivors=3, round_id="r-s")
    cfg, ids = m.config, m.identities
    s = ServerRound(cfg)
    st, adv = {}, {}
    for u in range(1, 7):
        st[u], adv[u] = cl.advertise(cfg, u, ids[u])
    assert refusal(s.receive_advertise, dataclasses.replace(adv[1], round_id="r-t")) == (
        "wrong_round",
        "message for round 'r-t', this is 'r-s'",
        "round",
    )
    assert refusal(s.receive_advertise, dataclasses.replace(adv[1], sender=7)) == (
        "not_in_round",
        "device 7 is not in round r-s",
        "sender",
    )
    assert refusal(s.receive_advertise, dataclasses.replace(adv[1], s_pk=bytes(32))) == (
        "bad_signature",
        "keys are not signed by the device's identity key",
        "sig",
    )
    for u in range(1, 7):
        s.receive_advertise(adv[u])
    assert refusal(s.receive_advertise, adv[1]) == ("replay", "device 1 already advertised keys", "sender")
    dealt1 = cl.share_keys(st[1], [adv[v] for v in range(2, 7)], ids[1])[1]
    assert refusal(s.receive_share_keys, dealt1) == (
        "wrong_phase",
        "round is in phase 'advertise', not 'share'",
        "phase",
    )
    keys = s.close_advertise()
    assert sorted(keys) == [1, 2, 3, 4, 5, 6] and [a.sender for a in keys[1]] == [2, 3, 4, 5, 6]
    assert refusal(s.receive_advertise, adv[1]) == ("late", "round is in phase 'share', not 'advertise'", "phase")
    st[1], dealt1 = cl.share_keys(st[1], keys[1], ids[1])
    forged = dataclasses.replace(dealt1, shares=(dataclasses.replace(dealt1.shares[0], sender=2), *dealt1.shares[1:]))
    assert refusal(s.receive_share_keys, forged) == (
        "bad_message",
        "every share must name its dealer as sender",
        "shares",
    )
    short = dataclasses.replace(dealt1, shares=dealt1.shares[:-1])
    assert refusal(s.receive_share_keys, short) == (
        "not_neighbour",
        "shares must go to exactly the live neighbours, one each",
        "shares",
    )
    s.receive_share_keys(dealt1)
    assert refusal(s.receive_share_keys, dealt1) == ("replay", "device 1 already dealt its shares", "sender")


def test_a_device_that_missed_the_advertise_phase_cannot_deal() -> None:
    m = make_round(6, L, k=5, t=3, min_survivors=3, round_id="r-s")
    cfg, ids = m.config, m.identities
    s = ServerRound(cfg)
    st, adv = {}, {}
    for u in range(1, 7):
        st[u], adv[u] = cl.advertise(cfg, u, ids[u])
        if u != 6:
            s.receive_advertise(adv[u])
    keys = s.close_advertise()
    assert s.u1 == frozenset(range(1, 6))
    _, late = cl.share_keys(st[6], [adv[v] for v in range(1, 6)], ids[6])
    assert refusal(s.receive_share_keys, late) == ("not_in_round", "device 6 did not advertise keys in time", "sender")
    assert len(keys[1]) == 4


def test_too_few_at_each_close_fails_the_round_with_the_count() -> None:
    m = make_round(6, L, k=5, t=3, min_survivors=5, round_id="r-f")
    cfg, ids = m.config, m.identities
    s = ServerRound(cfg)
    for u in range(1, 5):
        s.receive_advertise(cl.advertise(cfg, u, ids[u])[1])
    assert s.close_advertise() == {}
    assert s.phase == "failed"
    assert s.reason == "4 device(s) advertised keys with enough live neighbours, fewer than the 5 the round needs"
    assert refusal(s.receive_advertise, cl.advertise(cfg, 5, ids[5])[1]) == (
        "late",
        "round r-f has failed: " + s.reason,
        "round",
    )


def test_masked_phase_refusals_and_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    m = make_round(6, L, k=5, t=3, min_survivors=3, round_id="r-m")
    cfg, ids = m.config, m.identities
    s, st = ServerRound(cfg), {}
    for u in range(1, 7):
        st[u], a = cl.advertise(cfg, u, ids[u])
        s.receive_advertise(a)
    keys = s.close_advertise()
    for u in range(1, 6):  # device 6 does not deal
        st[u], d = cl.share_keys(st[u], keys[u], ids[u])
        s.receive_share_keys(d)
    inbox = s.close_share_keys()
    assert s.u2 == frozenset(range(1, 6)) and sorted(inbox) == [1, 2, 3, 4, 5]
    assert all(len(inbox[u]) == 4 for u in inbox)
    assert refusal(s.receive_masked, MaskedInput("r-m", 6, bytes(4 * L))) == (
        "not_in_round",
        "device 6 is not among those that dealt shares",
        "sender",
    )
    assert refusal(s.receive_masked, MaskedInput("r-m", 1, bytes(4 * L + 1))) == (
        "wrong_length",
        f"vector must be {L} elements of 4 bytes, got {4 * L + 1} bytes",
        "vector",
    )
    for u in (1, 2):
        st[u], msg = cl.masked_input(st[u], inbox[u], np.zeros(L, dtype=np.int64))
        s.receive_masked(msg)
    assert refusal(s.receive_masked, msg) == ("replay", "device 2 already sent its vector for this round", "sender")
    assert s.close_masked() is None
    assert s.reason == "2 device(s) sent masked vectors, fewer than the 3 the round needs"


def test_masks_that_cannot_be_removed_fail_the_round_at_close() -> None:
    m = make_round(8, L, k=4, t=3, min_survivors=3, round_id="r-g")
    cfg, ids = m.config, m.identities
    s, st = ServerRound(cfg), {}
    for u in range(1, 9):
        st[u], a = cl.advertise(cfg, u, ids[u])
        s.receive_advertise(a)
    keys = s.close_advertise()
    for u in range(1, 9):
        st[u], d = cl.share_keys(st[u], keys[u], ids[u])
        s.receive_share_keys(d)
    inbox = s.close_share_keys()
    # device 1 and two of its four neighbours go silent: 1's pairwise masks need t = 3 live neighbours
    gone = {1, *sorted(cfg.neighbours(1))[:2]}
    for u in range(1, 9):
        if u not in gone:
            st[u], msg = cl.masked_input(st[u], inbox[u], np.zeros(L, dtype=np.int64))
            s.receive_masked(msg)
    assert s.close_masked() is None
    assert s.reason == f"device 1's masks cannot be removed: 2 of its neighbours survive, t={cfg.t}"


def test_exactly_t_live_neighbours_keep_the_round(monkeypatch: pytest.MonkeyPatch) -> None:
    m = make_round(8, L, k=7, t=5, min_survivors=5, round_id="r-t")
    cfg, ids = m.config, m.identities
    s, st = ServerRound(cfg), {}
    for u in range(1, 9):
        st[u], a = cl.advertise(cfg, u, ids[u])
        s.receive_advertise(a)
    keys = s.close_advertise()
    for u in range(1, 9):
        st[u], d = cl.share_keys(st[u], keys[u], ids[u])
        s.receive_share_keys(d)
    inbox = s.close_share_keys()
    for u in range(1, 7):  # 7 and 8 drop: each survivor keeps exactly t = 5 live neighbours
        st[u], msg = cl.masked_input(st[u], inbox[u], np.full(L, u, dtype=np.int64))
        s.receive_masked(msg)
    request = s.close_masked()
    assert request is not None and request.survivors == frozenset(range(1, 7))
    for u in range(1, 7):
        st[u], msg = cl.unmask(st[u], request)
        s.receive_unmask(msg)
    assert refusal(s.receive_unmask, msg) == ("replay", "device 6 already revealed its shares", "sender")
    total = s.finish()
    assert total is not None and cfg.ring.centred(total).tolist() == [21] * L


def test_reveal_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    _, s, _, reveals = stage(monkeypatch)
    r1 = reveals[1]
    both = dataclasses.replace(r1, s_shares={**r1.s_shares, 2: r1.b_shares[2]})
    assert refusal(s.receive_unmask, both) == (
        "not_neighbour",
        "reveal the seed share of each surviving neighbour and the key share of each dropped one",
        "shares",
    )
    wrong = dataclasses.replace(r1, b_shares={**r1.b_shares, 2: bytes(33)})
    assert refusal(s.receive_unmask, wrong) == (
        "bad_share",
        "share of device 2's secret does not match its commitment",
        "shares",
    )
    wrong_key = dataclasses.replace(r1, s_shares={8: bytes(33)})
    assert refusal(s.receive_unmask, wrong_key) == (
        "bad_share",
        "share of device 8's secret does not match its commitment",
        "shares",
    )


def test_too_few_dealers_fail_the_round_at_the_share_close() -> None:
    m = make_round(6, L, k=5, t=3, min_survivors=5, round_id="r-d")
    cfg, ids = m.config, m.identities
    s, st = ServerRound(cfg), {}
    for u in range(1, 7):
        st[u], a = cl.advertise(cfg, u, ids[u])
        s.receive_advertise(a)
    keys = s.close_advertise()
    for u in range(1, 5):
        st[u], d = cl.share_keys(st[u], keys[u], ids[u])
        s.receive_share_keys(d)
    assert s.close_share_keys() == {}
    assert s.reason == "4 device(s) dealt shares with enough live neighbours, fewer than the 5 the round needs"


def _pruned(cfg, candidates: set[int]) -> frozenset[int]:
    """Independent fixed point: drop any member with fewer than t neighbours left, until none."""
    alive = set(candidates)
    while True:
        weak = {u for u in alive if len(cfg.neighbours(u) & alive) < cfg.t}
        if not weak:
            return frozenset(alive)
        alive -= {min(weak)}


def test_pruning_is_the_largest_set_where_everyone_keeps_t_neighbours() -> None:
    cfg = make_round(12, L, k=4, t=3, min_survivors=2).config
    s = ServerRound(cfg)
    rng = np.random.default_rng(5)
    cascades = 0
    for _ in range(200):
        cand = {int(u) for u in rng.choice(np.arange(1, 13), size=int(rng.integers(3, 12)), replace=False)}
        expected = _pruned(cfg, cand)
        assert s._prune(cand) == expected
        weak_at_first = {u for u in cand if len(cfg.neighbours(u) & cand) < cfg.t}
        cascades += len(cand - expected) > len(weak_at_first)
    assert cascades > 0  # some removals took a second pass


def test_exactly_min_survivors_keep_the_round_going() -> None:
    m = make_round(6, L, k=5, t=3, min_survivors=5, round_id="r-x")
    cfg, ids = m.config, m.identities
    s = ServerRound(cfg)
    for u in range(1, 6):
        s.receive_advertise(cl.advertise(cfg, u, ids[u])[1])
    keys = s.close_advertise()
    assert s.phase == "share" and sorted(keys) == [1, 2, 3, 4, 5]
