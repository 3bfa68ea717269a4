"""Secure aggregation rounds end to end on the pure state machines: exact sums, dropouts at every
phase, the ring's edge, every refusal, the graph, the wire form, and what the server keeps."""

import dataclasses
import os
import random

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.secagg import client as cl
from agent.secagg.config import RoundConfig
from agent.secagg.graph import Graph, choose_parameters, complete_threshold
from agent.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Refusal,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from agent.secagg.ring import Ring, RingOverflow
from agent.secagg.server import ServerRound
from agent.secagg.simulation import make_round, run_round

L = 24


def inputs(n, length=L, lo=0, hi=5000, seed=0):
    rng = np.random.default_rng(seed)
    return {u: rng.integers(lo, hi, length) for u in range(1, n + 1)}


def exact(members, server, result, x):
    assert server.phase == "done", server.reason
    return np.array_equal(members.config.ring.centred(result), sum(x[u] for u in server.u3))


def test_masks_cancel_without_dropouts():
    m = make_round(12, L, k=11, t=8)
    x = inputs(12)
    server, total = run_round(m, x)
    assert exact(m, server, total, x)
    assert server.u3 == frozenset(range(1, 13))


@pytest.mark.parametrize("phase", ["advertise", "share", "masked", "unmask"])
def test_dropouts_at_each_phase_give_the_exact_sum_of_survivors(phase):
    m = make_round(30, L, k=12, t=6, min_survivors=20)
    x = inputs(30, seed=1)
    server, total = run_round(m, x, {phase: {2, 9, 17, 23}})
    assert exact(m, server, total, x)
    expected_missing = {"advertise": 4, "share": 4, "masked": 4, "unmask": 0}[phase]
    assert len(server.u3) == 30 - expected_missing  # unmask dropouts' vectors still count


def test_dropouts_at_every_phase_at_once():
    m = make_round(40, L, k=16, t=7, min_survivors=20)
    x = inputs(40, lo=-3000, hi=3000, seed=2)  # negative contributions (noise) too
    drop = {"advertise": {1}, "share": {2, 3}, "masked": {4, 5, 6}, "unmask": {7, 8}}
    server, total = run_round(m, x, drop)
    assert exact(m, server, total, x)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.10, 0.30])
def test_hundred_devices_with_dropouts_sum_exactly(rate):
    n = 100
    m = make_round(n, 172, dropout=0.3, min_survivors=60)
    x = inputs(n, length=172, lo=-20000, hi=40000, seed=3)
    rng = random.Random(4)
    gone = rng.sample(range(1, n + 1), round(rate * n))
    drop = {"share": set(gone[: len(gone) // 3]), "masked": set(gone[len(gone) // 3 :])}
    server, total = run_round(m, x, drop)
    assert exact(m, server, total, x)
    assert len(server.u3) == n - len(gone)


def test_too_many_dropouts_fail_the_round_with_a_reason():
    m = make_round(20, L, k=19, t=complete_threshold(20), min_survivors=14)
    x = inputs(20)
    server, total = run_round(m, x, {"masked": set(range(1, 8))})  # 13 left < 14
    assert total is None and server.phase == "failed"
    assert "13 device(s) sent masked vectors, fewer than the 14" in server.reason
    assert server.running_sum is None and not server.dealt  # key material dropped


def test_unmask_dropouts_past_threshold_fail_rather_than_guess():
    m = make_round(20, L, k=19, t=14, min_survivors=14)
    server, total = run_round(m, inputs(20), {"unmask": set(range(1, 8))})  # 13 answer, t = 14
    assert total is None and server.phase == "failed" and "lacks" in server.reason


def test_ring_edge_wraps_and_decodes():
    ring = Ring(16)
    m = make_round(6, 4, k=5, t=4, ring_bits=16, min_survivors=4)
    x = {u: np.array([5000, -5000, 0, 32767 // 6], dtype=np.int64) for u in range(1, 7)}
    _, total = run_round(m, x)
    assert ring.centred(total).tolist() == [30000, -30000, 0, 6 * (32767 // 6)]
    ring.check_capacity(32767)
    with pytest.raises(RingOverflow):
        ring.check_capacity(32768)
    y = ring.add(ring.reduce(np.array([32767])), ring.reduce(np.array([1])))
    assert ring.centred(y).tolist() == [-32768]  # wraps exactly at the edge
    assert Ring(64).centred(Ring(64).reduce(np.array([-1], dtype=np.int64)))[0] == -1


def test_wire_forms_round_trip_and_refuse_hostile_input():
    m = make_round(5, 3, k=4, t=3, min_survivors=3)
    cfg, ids = m.config, m.identities
    _, adv = cl.advertise(cfg, 1, ids[1])
    assert AdvertiseKeys.from_wire(adv.to_wire()) == adv
    for bad in (
        None,
        [],
        {},
        {**adv.to_wire(), "extra": 1},
        {**adv.to_wire(), "sender": True},
        {**adv.to_wire(), "sender": 0},
        {**adv.to_wire(), "c_pk": "!!"},
        {**adv.to_wire(), "sig": "AAAA"},
    ):
        with pytest.raises(Refusal) as e:
            AdvertiseKeys.from_wire(bad)
        assert e.value.code == "bad_message" and e.value.as_error()["error"]["code"] == "bad_message"
    req = UnmaskRequest("r", frozenset({1, 2}))
    assert UnmaskRequest.from_wire(req.to_wire()) == req
    sh = UnmaskShares("r", 2, {1: bytes(33)}, {3: bytes(33)})
    assert UnmaskShares.from_wire(sh.to_wire()) == sh
    with pytest.raises(Refusal):
        UnmaskShares.from_wire({**sh.to_wire(), "b_shares": {"x": "AA"}})
    mi = MaskedInput("r", 1, b"\x00" * 12)
    assert MaskedInput.from_wire(mi.to_wire()) == mi


# ---- refusals -------------------------------------------------------------------------------------


@pytest.fixture
def staged():
    """A round of 8 devices taken to the masked phase, with every intermediate message kept."""
    m = make_round(8, L, k=7, t=5, min_survivors=5, round_id="r-staged")
    cfg, ids = m.config, m.identities
    server = ServerRound(cfg)
    states, adverts = {}, {}
    for u in range(1, 9):
        states[u], adverts[u] = cl.advertise(cfg, u, ids[u])
        server.receive_advertise(adverts[u])
    keys = server.close_advertise()
    dealt = {}
    for u in range(1, 9):
        states[u], dealt[u] = cl.share_keys(states[u], keys[u], ids[u])
        server.receive_share_keys(dealt[u])
    shares = server.close_share_keys()
    return dict(
        m=m, cfg=cfg, ids=ids, server=server, states=states, adverts=adverts, keys=keys, dealt=dealt, shares=shares
    )


def refused(code, fn, *args):
    with pytest.raises(Refusal) as e:
        fn(*args)
    assert e.value.code == code, (e.value.code, e.value.message)
    return e.value


def test_server_refusals(staged):
    s, cfg = staged["server"], staged["cfg"]
    adv1 = staged["adverts"][1]
    refused("late", s.receive_advertise, adv1)  # the advertise phase has closed
    refused("late", s.receive_share_keys, staged["dealt"][1])
    refused("wrong_round", s.receive_masked, MaskedInput("other", 1, bytes(4 * L)))
    refused("not_in_round", s.receive_masked, MaskedInput(cfg.round_id, 99, bytes(4 * L)))
    refused("wrong_length", s.receive_masked, MaskedInput(cfg.round_id, 1, bytes(4 * L - 4)))
    refused("wrong_phase", s.receive_unmask, UnmaskShares(cfg.round_id, 1))
    s.receive_masked(MaskedInput(cfg.round_id, 1, bytes(4 * L)))
    refused("replay", s.receive_masked, MaskedInput(cfg.round_id, 1, bytes(4 * L)))


def test_server_refuses_bad_signatures_and_misrouted_shares():
    m = make_round(6, L, k=5, t=3, min_survivors=3)
    cfg, ids = m.config, m.identities
    s = ServerRound(cfg)
    st, adv = cl.advertise(cfg, 1, ids[1])
    forged = dataclasses.replace(adv, s_pk=os.urandom(32))
    refused("bad_signature", s.receive_advertise, forged)
    other = Ed25519PrivateKey.generate()
    refused("bad_signature", cl.advertise, cfg, 1, other)  # not the enrolled identity
    s.receive_advertise(adv)
    refused("replay", s.receive_advertise, adv)
    states = {1: st}
    for u in range(2, 7):
        states[u], a = cl.advertise(cfg, u, ids[u])
        s.receive_advertise(a)
    keys = s.close_advertise()
    states[1], dealt = cl.share_keys(states[1], keys[1], ids[1])
    tampered = dataclasses.replace(dealt, b_seed_commit=os.urandom(16))
    s.receive_share_keys(tampered)  # accepted: recipients authenticate shares; the signature is evidence
    assert not s.dealer_signed(1)
    s.dealt.pop(1)
    short = dataclasses.replace(dealt, shares=dealt.shares[:-1])
    refused("not_neighbour", s.receive_share_keys, short)
    dup = dataclasses.replace(dealt, shares=(*dealt.shares[:-1], dealt.shares[0]))
    refused("not_neighbour", s.receive_share_keys, dup)
    s.receive_share_keys(dealt)
    assert s.dealer_signed(1)
    refused("replay", s.receive_share_keys, dealt)


def test_client_refusals(staged):
    cfg, ids, states, keys = staged["cfg"], staged["ids"], staged["states"], staged["keys"]
    m2 = make_round(8, L, k=7, t=5, min_survivors=5, round_id="r-fresh")
    fresh, _ = cl.advertise(m2.config, 1, m2.identities[1])
    good = staged["adverts"]
    # share phase: wrong round, non-neighbour, forged keys, replay, duplicate key, too few
    refused("wrong_round", cl.share_keys, fresh, [good[2]], m2.identities[1])
    cfg_adverts = [dataclasses.replace(good[2], round_id="r-fresh")]
    refused("bad_signature", cl.share_keys, fresh, cfg_adverts, m2.identities[1])
    st, _ = cl.advertise(cfg, 1, ids[1])
    refused("bad_signature", cl.share_keys, st, [dataclasses.replace(good[2], c_pk=os.urandom(32))], ids[1])
    refused("replay", cl.share_keys, st, [good[2], good[2]], ids[1])
    copier = cl.advertise_payload(cfg.round_id, 3, good[2].c_pk, good[3].s_pk)  # signs another's key
    copied = dataclasses.replace(good[3], c_pk=good[2].c_pk, signature=ids[3].sign(copier))
    refused("duplicate_key", cl.share_keys, st, [good[2], copied], ids[1])
    refused("too_few", cl.share_keys, st, [good[2], good[3]], ids[1])
    refused("replay", cl.share_keys, states[1], keys[1], ids[1])  # already past the share phase
    # masked phase: misaddressed, wrong length, tampered ciphertext, unknown sender
    inbox = staged["shares"][1]
    x = np.zeros(L, dtype=np.int64)
    refused("wrong_length", cl.masked_input, states[1], inbox, np.zeros(L + 1, dtype=np.int64))
    refused("misaddressed", cl.masked_input, states[1], [*inbox[1:], staged["shares"][2][0]], x)
    flipped = dataclasses.replace(inbox[0], ciphertext=bytes([inbox[0].ciphertext[0] ^ 1]) + inbox[0].ciphertext[1:])
    refused("misaddressed", cl.masked_input, states[1], [flipped, *inbox[1:]], x)
    recommitted = dataclasses.replace(inbox[0], s_commit=os.urandom(16))
    refused("misaddressed", cl.masked_input, states[1], [recommitted, *inbox[1:]], x)  # AAD binds commitments
    refused("replay", cl.masked_input, states[1], [inbox[0], *inbox], x)
    refused("too_few", cl.masked_input, states[1], inbox[:3], x)
    st1, _ = cl.masked_input(states[1], inbox, x)
    # unmask phase: a request omitting me, naming strangers, too few, then a second request
    refused("refused_request", cl.unmask, st1, UnmaskRequest(cfg.round_id, frozenset(range(2, 9))))
    refused("not_in_round", cl.unmask, st1, UnmaskRequest(cfg.round_id, frozenset({*range(1, 9), 42})))
    refused("too_few", cl.unmask, st1, UnmaskRequest(cfg.round_id, frozenset({1, 2, 3})))
    refused("wrong_round", cl.unmask, st1, UnmaskRequest("r-other", frozenset(range(1, 9))))
    done, reveal = cl.unmask(st1, UnmaskRequest(cfg.round_id, frozenset({1, 2, 3, 4, 5, 6})))
    assert set(reveal.b_shares) & set(reveal.s_shares) == set()  # never both for one neighbour
    assert set(reveal.s_shares) == {7, 8}
    refused("replay", cl.unmask, done, UnmaskRequest(cfg.round_id, frozenset(range(1, 9))))


def test_server_refuses_wrong_revealed_shares(staged):
    cfg, states, s = staged["cfg"], staged["states"], staged["server"]
    x = inputs(8)
    for u in range(1, 9):
        states[u], msg = cl.masked_input(states[u], staged["shares"][u], x[u])
        s.receive_masked(msg)
    req = s.close_masked()
    states[1], reveal = cl.unmask(states[1], req)
    owner = next(iter(reveal.b_shares))
    bad = dataclasses.replace(reveal, b_shares={**reveal.b_shares, owner: os.urandom(33)})
    refused("bad_share", s.receive_unmask, bad)
    refused("not_neighbour", s.receive_unmask, dataclasses.replace(reveal, s_shares={owner: reveal.b_shares[owner]}))
    s.receive_unmask(reveal)
    refused("replay", s.receive_unmask, reveal)
    for u in range(2, 9):
        states[u], msg = cl.unmask(states[u], req)
        s.receive_unmask(msg)
    assert not s.missing_shares()
    total = s.finish()
    assert np.array_equal(cfg.ring.centred(total), sum(x.values()))


def test_inconsistent_dealer_voids_the_round_with_its_name(monkeypatch):
    """Shares that each match their commitment but lie on no polynomial through the committed seed
    (a cheating dealer) are caught when the seed is rebuilt: the round fails and names the dealer."""
    m = make_round(8, L, k=7, t=5, min_survivors=5)
    cfg, ids, x = m.config, m.identities, inputs(8)
    s, st = ServerRound(cfg), {}
    for u in range(1, 9):
        st[u], a = cl.advertise(cfg, u, ids[u])
        s.receive_advertise(a)
    keys = s.close_advertise()
    real_split = cl.shamir.split
    for u in range(1, 9):
        if u == 3:
            calls: list[int] = []

            def cheat(secret, threshold, xs, calls=calls):
                calls.append(1)
                if len(calls) == 2:  # the second split is the self-mask seed's
                    return {v: (12345 + v).to_bytes(33, "big") for v in xs}
                return real_split(secret, threshold, xs)

            monkeypatch.setattr(cl.shamir, "split", cheat)
        st[u], msg = cl.share_keys(st[u], keys[u], ids[u])
        monkeypatch.setattr(cl.shamir, "split", real_split)
        s.receive_share_keys(msg)
    shares = s.close_share_keys()
    for u in range(1, 9):
        st[u], msg = cl.masked_input(st[u], shares[u], x[u])
        s.receive_masked(msg)
    req = s.close_masked()
    for u in range(1, 9):
        st[u], msg = cl.unmask(st[u], req)
        s.receive_unmask(msg)
    assert s.finish() is None
    assert s.phase == "failed" and s.reason == "device 3 dealt inconsistent shares of its self-mask seed (signed)"


def test_server_keeps_no_individual_vector(staged):
    s, states, cfg = staged["server"], staged["states"], staged["cfg"]
    x = inputs(8, seed=9)
    sent = []
    for u in range(1, 9):
        states[u], msg = cl.masked_input(states[u], staged["shares"][u], x[u])
        s.receive_masked(msg)
        sent.append(msg.vector)
        kept = repr(vars(s)).encode()
        for v in sent:
            assert cfg.ring.from_bytes(v, L).tobytes() not in kept
        fields = [f for f in vars(s).values() if isinstance(f, np.ndarray)]
        assert len(fields) == 1  # the running sum only
    s.close_masked()
    for u in range(1, 9):
        states[u], msg = cl.unmask(states[u], UnmaskRequest(cfg.round_id, s.u3))
        s.receive_unmask(msg)
    s.finish()
    assert not s.adverts and not s.dealt and not s.b_revealed and not s.s_revealed and s.running_sum is None


# ---- graph --------------------------------------------------------------------------------------


def test_graph_is_deterministic_symmetric_and_regular():
    seed = os.urandom(32)
    g1, g2 = Graph(300, 44, seed), Graph(300, 44, seed)
    for u in range(1, 301):
        nu = g1.neighbours(u)
        assert nu == g2.neighbours(u) and len(nu) == 44 and u not in nu
        assert all(u in g1.neighbours(v) for v in nu)
    assert Graph(300, 44, os.urandom(32)).neighbours(1) != g1.neighbours(1)
    assert Graph(10, 9, seed).neighbours(3) == frozenset(set(range(1, 11)) - {3})
    with pytest.raises(ValueError):
        Graph(10, 5, seed)


def test_parameters_grow_logarithmically_and_meet_the_bounds():
    p = {n: choose_parameters(n) for n in (100, 300, 1000, 10000)}
    assert [p[n].k for n in (100, 300, 1000, 10000)] == sorted(p[n].k for n in p)
    assert p[10000].k < 100  # O(log n), not O(n)
    for q in p.values():
        assert q.log2_privacy_failure <= -40 and q.log2_correctness_failure <= -30
        assert 2 <= q.t < q.k
    small = choose_parameters(20)
    assert small.complete and small.t == 14


def test_round_config_refuses_inconsistent_parameters():
    base = make_round(6, L, k=5, t=3, min_survivors=3).config
    for change in ({"t": 1}, {"t": 6}, {"min_survivors": 7}, {"vector_length": 0}, {"k": 3}):
        with pytest.raises(ValueError):
            dataclasses.replace(base, **change)
    with pytest.raises(ValueError):
        dataclasses.replace(base, identity_keys={1: bytes(32)})


def test_encrypted_share_is_sealed_to_round_sender_and_recipient(staged):
    inbox = staged["shares"][1][0]
    assert isinstance(inbox, EncryptedShare) and inbox.recipient == 1
    assert isinstance(staged["dealt"][1], ShareKeys)
    cfg = staged["cfg"]
    assert isinstance(cfg, RoundConfig)
