"""The derivations a device and the server must agree on, spelled out byte by byte, so an agent
written elsewhere can reproduce them: signed payloads, commitments, HKDF labels, mask signs.

Written from mutation testing (`make mutation`): the server imports these functions from
``agent/secagg/client.py``, so a changed label passes every round-trip test in the repository and
breaks every other implementation; only an independent spelling of the bytes catches it.
"""

import hashlib

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.secagg import client as cl
from agent.secagg import prg
from agent.secagg.config import RoundConfig
from agent.secagg.messages import EncryptedShare, ShareKeys


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
