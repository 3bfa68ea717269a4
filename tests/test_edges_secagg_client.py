"""The derivations a device and the server must agree on, spelled out byte by byte, so an agent
written elsewhere can reproduce them: signed payloads, commitments, HKDF labels, mask signs.

Written from mutation testing (`make mutation`): the server imports these functions from
``agent/secagg/client.py``, so a changed label passes every round-trip test in the repository and
breaks every other implementation; only an independent spelling of the bytes catches it.
"""

import dataclasses
import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.secagg import client as cl
from agent.secagg import prg
from agent.secagg.config import RoundConfig
from agent.secagg.messages import EncryptedShare, Refusal, ShareKeys, UnmaskRequest
from agent.secagg.server import ServerRound
from agent.secagg.simulation import make_round


def enc(*fields: object) -> bytes:
    """The protocol's canonical encoding, written out independently of agent.secagg.primitives."""
    out = b"edgefleet-secagg-v1"
    for f in fields:
        b = f.to_bytes(8, "big") if isinstance(f, int) else f.encode() if isinstance(f, str) else bytes(f)
        out += len(b).to_bytes(4, "big") + b
    return out


def hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, info).derive(secret)


def test_signed_payloads() -> None:
    c, s = b"c" * 32, b"s" * 32
    assert cl.advertise_payload("r1", 3, c, s) == enc("advertise", "r1", 3, c, s)
    sh = [EncryptedShare(3, v, bytes([v]) * 12, bytes([v]) * 82, b"S" * 16, b"B" * 16) for v in (9, 4)]
    msg = ShareKeys("r1", 3, b"b" * 16, tuple(sh), b"")
    expected = enc(
        "share-keys", "r1", 3, b"b" * 16,
        4, b"S" * 16, b"B" * 16, bytes([4]) * 12, bytes([4]) * 82,
        9, b"S" * 16, b"B" * 16, bytes([9]) * 12, bytes([9]) * 82,
    )  # fmt: skip
    assert cl.share_keys_payload(msg) == expected  # shares in recipient order, whatever order sent


def test_commitments_and_associated_data() -> None:
    share = bytes(range(33))
    assert cl.share_commit("s", "r1", 3, 4, share) == hashlib.sha256(enc("s-share", "r1", 3, 4, share)).digest()[:16]
    assert cl.share_commit("b", "r1", 3, 4, share) == hashlib.sha256(enc("b-share", "r1", 3, 4, share)).digest()[:16]
    seed = b"q" * 32
    assert cl.seed_commit("r1", 3, seed) == hashlib.sha256(enc("b-seed", "r1", 3, seed)).digest()[:16]
    assert cl.share_aad("r1", 3, 4, b"S" * 16, b"B" * 16) == enc("share", "r1", 3, 4, b"S" * 16, b"B" * 16)


def _config(vector_length: int = 6) -> RoundConfig:
    return RoundConfig(
        round_id="r1",
        n=4,
        k=3,
        t=2,
        vector_length=vector_length,
        graph_seed=bytes(16),
        identity_keys={i: bytes(32) for i in range(1, 5)},
        ring_bits=20,
        min_survivors=2,
    )


def test_share_key_is_symmetric_and_labelled() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    pb = b.public_key().public_bytes_raw()
    shared = a.exchange(b.public_key())
    expected = hkdf(shared, enc("share-encryption", "r1", 2, 7))
    assert cl.share_key(a, pb, "r1", 7, 2) == expected == cl.share_key(a, pb, "r1", 2, 7)


def test_pair_masks_cancel_and_are_labelled() -> None:
    cfg = _config()
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    pa, pb = a.public_key().public_bytes_raw(), b.public_key().public_bytes_raw()
    key = hkdf(a.exchange(b.public_key()), enc("pair-mask", "r1", 1, 3))
    stream = prg.expand(key, 6, cfg.ring)
    assert cl.pair_mask(a, pb, cfg, 1, 3).tolist() == stream.tolist()  # the lower index adds
    assert cl.pair_mask(b, pa, cfg, 3, 1).tolist() == cfg.ring.neg(stream).tolist()  # the higher subtracts
    total = cfg.ring.add(cl.pair_mask(a, pb, cfg, 1, 3), cl.pair_mask(b, pa, cfg, 3, 1))
    assert total.tolist() == [0] * 6


def test_self_mask_is_labelled_by_round_and_owner() -> None:
    cfg = _config(5)
    seed = b"z" * 32
    key = hkdf(seed, enc("self-mask", "r1", 2))
    assert cl.self_mask(seed, cfg, 2).tolist() == prg.expand(key, 5, cfg.ring).tolist()
    assert cl.self_mask(seed, cfg, 3).tolist() != cl.self_mask(seed, cfg, 2).tolist()
    assert np.asarray(cl.self_mask(seed, cfg, 2)).max() < 1 << 20


# ---- every refusal: code, message and field (the API's error shape) ------------------------------


def refusal(fn, *args) -> tuple[str, str, str | None]:
    with pytest.raises(Refusal) as info:
        fn(*args)
    return info.value.code, info.value.message, info.value.field


@pytest.fixture
def staged():
    """6 devices, complete graph, t = 3, every device at the masked phase."""
    m = make_round(6, 4, k=5, t=3, min_survivors=3, round_id="r-e")
    cfg, ids = m.config, m.identities
    server = ServerRound(cfg)
    states, adverts = {}, {}
    for u in range(1, 7):
        states[u], adverts[u] = cl.advertise(cfg, u, ids[u])
        server.receive_advertise(adverts[u])
    keys = server.close_advertise()
    fresh = {u: cl.advertise(cfg, u, ids[u])[0] for u in (1,)}
    for u in range(1, 7):
        states[u], dealt = cl.share_keys(states[u], keys[u], ids[u])
        server.receive_share_keys(dealt)
    return {"cfg": cfg, "ids": ids, "states": states, "adverts": adverts, "inbox": server.close_share_keys(),
            "fresh": fresh[1], "keys": keys}  # fmt: skip


def test_advertise_refusals(staged) -> None:
    cfg, ids = staged["cfg"], staged["ids"]
    assert refusal(cl.advertise, cfg, 7, ids[1]) == ("not_in_round", "device 7 is not in round r-e", "sender")
    assert refusal(cl.advertise, cfg, 2, ids[1]) == (
        "bad_signature",
        "this device's identity key is not the one the round names",
        "sender",
    )


def test_share_phase_refusals(staged) -> None:
    fresh, ids, good = staged["fresh"], staged["ids"], staged["adverts"]
    other = dataclasses.replace(good[2], round_id="r-x")
    assert refusal(cl.share_keys, fresh, [other], ids[1]) == (
        "wrong_round",
        "keys of device 2 are for round 'r-x'",
        "round",
    )
    assert refusal(cl.share_keys, fresh, [good[2], good[2]], ids[1]) == (
        "replay",
        "keys of device 2 given twice",
        "sender",
    )
    forged = dataclasses.replace(good[2], c_pk=bytes(32))
    assert refusal(cl.share_keys, fresh, [forged], ids[1]) == (
        "bad_signature",
        "keys of device 2 are not signed by its identity key",
        "sig",
    )
    assert refusal(cl.share_keys, fresh, [good[2], good[3]], ids[1]) == (
        "too_few",
        "2 neighbour(s) advertised keys, t=3 needed",
        "neighbours",
    )
    same = cl.advertise_payload("r-e", 4, good[4].c_pk, good[4].c_pk)
    twin = dataclasses.replace(good[4], s_pk=good[4].c_pk, signature=ids[4].sign(same))
    assert refusal(cl.share_keys, fresh, [twin], ids[1]) == (
        "duplicate_key",
        "device 4 advertised a key already in use",
        "c_pk",
    )
    assert refusal(cl.share_keys, staged["states"][1], staged["keys"][1], ids[1]) == (
        "replay",
        "device is in phase 'masked', not 'share'",
        "phase",
    )


def test_a_device_outside_the_neighbourhood_is_refused() -> None:
    m = make_round(9, 2, k=4, t=2, min_survivors=2, round_id="r-n")
    cfg, ids = m.config, m.identities
    st, _ = cl.advertise(cfg, 1, ids[1])
    stranger = next(v for v in range(2, 10) if v not in cfg.neighbours(1))
    _, adv = cl.advertise(cfg, stranger, ids[stranger])
    assert refusal(cl.share_keys, st, [adv], ids[1]) == (
        "not_neighbour",
        f"device {stranger} is not a neighbour of 1",
        "sender",
    )


def test_masked_phase_refusals(staged) -> None:
    st, inbox = staged["states"][1], staged["inbox"]
    x = np.zeros(4, dtype=np.int64)
    assert refusal(cl.masked_input, st, inbox[1], np.zeros(5, dtype=np.int64)) == (
        "wrong_length",
        "contribution must be 4 integers",
        "vector",
    )
    assert refusal(cl.masked_input, st, inbox[1], np.zeros(4)) == (
        "wrong_length",
        "contribution must be 4 integers",
        "vector",
    )
    wrong = inbox[2][0]  # a share dealt to device 2
    assert refusal(cl.masked_input, st, [wrong], x) == (
        "misaddressed",
        f"share from {wrong.sender} is addressed to 2, not 1",
        "to",
    )
    stranger = dataclasses.replace(inbox[1][0], sender=5 if inbox[1][0].sender != 5 else 6)
    stranger_state = dataclasses.replace(st, peers={k: v for k, v in st.peers.items() if k != stranger.sender})
    assert refusal(cl.masked_input, stranger_state, [stranger], x) == (
        "not_neighbour",
        f"share from {stranger.sender}, who is not a verified neighbour",
        "sender",
    )
    first = inbox[1][0]
    assert refusal(cl.masked_input, st, [first, first], x) == (
        "replay",
        f"two shares from device {first.sender}",
        "sender",
    )
    flipped = dataclasses.replace(first, ciphertext=bytes([first.ciphertext[0] ^ 1]) + first.ciphertext[1:])
    assert refusal(cl.masked_input, st, [flipped], x) == (
        "misaddressed",
        f"share from {first.sender} does not open for device 1 in this round",
        "ct",
    )
    assert refusal(cl.masked_input, st, inbox[1][:2], x) == (
        "too_few",
        "only 2 neighbour(s) dealt shares, t=3",
        "shares",
    )


def test_a_share_that_opens_but_breaks_its_commitment(staged, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dealer that seals one share but commits to another is caught by the recipient."""
    st, first = staged["states"][1], staged["inbox"][1][0]
    real = cl.share_commit
    monkeypatch.setattr(cl, "share_commit", lambda kind, *a: b"\x00" * 16 if kind == "b" else real(kind, *a))
    assert refusal(cl.masked_input, st, [first], np.zeros(4, dtype=np.int64)) == (
        "bad_share",
        f"share from {first.sender} does not match its commitment",
        "ct",
    )


def test_unmask_refusals(staged) -> None:
    cfg, st = staged["cfg"], staged["states"][1]
    st, _ = cl.masked_input(st, staged["inbox"][1], np.zeros(4, dtype=np.int64))
    assert refusal(cl.unmask, st, UnmaskRequest("r-e", frozenset({2, 3, 4}))) == (
        "refused_request",
        "the survivor list omits this device, which sent its vector",
        "survivors",
    )
    assert refusal(cl.unmask, st, UnmaskRequest("r-e", frozenset({1, 2, 3, 99}))) == (
        "not_in_round",
        "the survivor list names devices outside the round",
        "survivors",
    )
    assert refusal(cl.unmask, st, UnmaskRequest("r-e", frozenset({1, 2}))) == (
        "too_few",
        "2 survivor(s), the round needs 3",
        "survivors",
    )
    assert refusal(cl.unmask, st, UnmaskRequest("r-z", frozenset({1, 2, 3}))) == (
        "wrong_round",
        "message for round 'r-z', this is 'r-e'",
        "round",
    )
    done, reveal = cl.unmask(st, UnmaskRequest(cfg.round_id, frozenset({1, 2, 3})))
    assert set(reveal.b_shares) == {2, 3} and set(reveal.s_shares) == {4, 5, 6}
    assert done.phase == "done" and done.held == {} and done.b_seed == b""
    assert refusal(cl.unmask, done, UnmaskRequest(cfg.round_id, frozenset({1, 2, 3}))) == (
        "replay",
        "device is in phase 'done', not 'unmask'",
        "phase",
    )


def test_an_early_message_is_the_wrong_phase(staged) -> None:
    fresh = staged["fresh"]
    assert refusal(cl.unmask, fresh, UnmaskRequest("r-e", frozenset({1, 2, 3}))) == (
        "wrong_phase",
        "device is in phase 'share', not 'unmask'",
        "phase",
    )


def test_exactly_t_dealt_shares_are_enough(staged) -> None:
    st, inbox = staged["states"][1], staged["inbox"][1]
    done, msg = cl.masked_input(st, inbox[:3], np.zeros(4, dtype=np.int64))
    assert done.phase == "unmask" and len(msg.vector) == 4 * 4
    assert done.masked_with == frozenset(s.sender for s in inbox[:3]) == frozenset(done.held)


def test_a_key_reused_from_any_earlier_advert_or_from_me_is_refused(staged) -> None:
    fresh, ids, good = staged["fresh"], staged["ids"], staged["adverts"]
    copier = cl.advertise_payload("r-e", 3, good[2].c_pk, good[3].s_pk)
    copied = dataclasses.replace(good[3], c_pk=good[2].c_pk, signature=ids[3].sign(copier))
    assert refusal(cl.share_keys, fresh, [good[2], good[4], copied], ids[1])[0] == "duplicate_key"
    mine = fresh.peers, cl.pr.public_bytes(fresh.c_sk)
    mirror = cl.advertise_payload("r-e", 5, mine[1], good[5].s_pk)
    mirrored = dataclasses.replace(good[5], c_pk=mine[1], signature=ids[5].sign(mirror))
    assert refusal(cl.share_keys, fresh, [good[2], mirrored], ids[1])[0] == "duplicate_key"


def test_exactly_t_neighbours_are_enough(staged) -> None:
    fresh, ids, good = staged["fresh"], staged["ids"], staged["adverts"]
    state, msg = cl.share_keys(fresh, [good[2], good[3], good[4]], ids[1])
    assert state.phase == "masked" and sorted(state.peers) == [2, 3, 4]
    assert [s.recipient for s in msg.shares] == [2, 3, 4]
