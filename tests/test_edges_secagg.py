"""Edges of the secure-aggregation building blocks: ring bounds and wrap-around, the PRG against the
published ChaCha20 test vector, rejection sampling at its limit, Shamir at threshold 1 and n, shares
that are not field elements, the canonical encoding, and the round parameters at their limits.

Written from mutation testing (`make mutation`): each test pins a behaviour a one-token change to
``agent/secagg/{ring,prg,shamir,primitives,config}.py`` would otherwise alter silently.
"""

import hashlib
import math
import re

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from scipy import stats

from agent.secagg import graph, prg, primitives, shamir
from agent.secagg.config import RoundConfig
from agent.secagg.ring import MAX_BITS, MIN_BITS, Ring, RingOverflow

# RFC 8439 A.1, test vector 1: the ChaCha20 block for an all-zero key, nonce and counter.
CHACHA_ZERO_BLOCK = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)

# --- ring --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bits", "ok"), [(8, True), (64, True), (7, False), (65, False), (8.0, False), ("16", False)])
def test_ring_bits_bounds(bits: object, ok: bool) -> None:
    assert (MIN_BITS, MAX_BITS) == (8, 64)
    if ok:
        assert Ring(bits).bits == bits
    else:
        with pytest.raises(ValueError, match=r"^ring bits must be an integer in \[8, 64\], got "):
            Ring(bits)


def test_reduce_every_kind_of_integer() -> None:
    r = Ring(16)
    assert r.reduce(np.array([-1, 0, 65536, 65537], dtype=np.int64)).tolist() == [65535, 0, 0, 1]
    assert r.reduce(np.array([-1, -128], dtype=np.int8)).tolist() == [65535, 65408]
    assert r.reduce(np.array([255, 65535], dtype=np.uint16)).tolist() == [255, 65535]
    assert r.reduce(np.array([2**64 - 1], dtype=np.uint64)).tolist() == [65535]
    assert r.reduce([2**70 + 5, -(2**70) - 1]).tolist() == [5, 65535]  # beyond int64: exact
    assert r.reduce(np.array([3.0, -1.0])).tolist() == [3, 65535]
    # floats are reduced exactly too, even beyond 64 bits (2^65 + 2^13 → 2^13 mod 2^16)
    assert r.reduce(np.array([2.0**65 + 2.0**13])).tolist() == [8192]
    out = r.reduce(np.array([[1, -1], [2, -2]]))
    assert out.dtype == np.uint64 and out.shape == (2, 2) and out.tolist() == [[1, 65535], [2, 65534]]
    big = r.reduce(np.array([[2**70, -1]], dtype=object))
    assert big.dtype == np.uint64 and big.shape == (1, 2) and big.tolist() == [[0, 65535]]


def test_ring_arithmetic_wraps() -> None:
    r = Ring(8)
    a, b = np.array([250, 3, 0], dtype=np.uint64), np.array([10, 5, 0], dtype=np.uint64)
    assert r.add(a, b).tolist() == [4, 8, 0]
    assert r.sub(a, b).tolist() == [240, 254, 0]
    assert r.neg(a).tolist() == [6, 253, 0]
    assert r.zeros(3).tolist() == [0, 0, 0] and r.zeros(3).dtype == np.uint64


@pytest.mark.parametrize("bits", [8, 63, 64])
def test_centred_range_edges(bits: int) -> None:
    r = Ring(bits)
    half = 1 << (bits - 1)
    a = np.array([0, half - 1, half, (1 << bits) - 1], dtype=np.uint64)
    out = r.centred(a)
    assert [int(x) for x in out] == [0, half - 1, -half, -1]
    # int64 up to 63 bits; exact Python integers for 64, so sums of centred values cannot overflow
    assert out.dtype == (object if bits == 64 else np.int64)
    if bits == 64:
        assert int((out + out)[2]) == -(1 << 64)


def test_capacity_is_refused_exactly_at_half_the_ring() -> None:
    r = Ring(16)
    r.check_capacity(32767)
    with pytest.raises(RingOverflow) as info:
        r.check_capacity(32768)
    assert str(info.value) == "a sum may reach ±32768, beyond the ±2^15 a 16-bit ring decodes"


@pytest.mark.parametrize(
    ("bits", "values", "wire"),
    [
        (16, [1, 258], b"\x01\x00\x02\x01"),
        (12, [4095, 1], b"\xff\x0f\x01\x00"),
        (9, [511], b"\xff\x01"),
        (24, [0x030201], b"\x01\x02\x03"),
        (64, [2**64 - 1, 1], b"\xff" * 8 + b"\x01" + bytes(7)),
    ],
)
def test_wire_form_is_little_endian_whole_bytes(bits: int, values: list[int], wire: bytes) -> None:
    r = Ring(bits)
    a = np.array(values, dtype=np.uint64)
    assert r.to_bytes(a) == wire
    back = r.from_bytes(wire, len(values))
    assert back.dtype == np.uint64 and back.tolist() == values


def test_from_bytes_refuses_wrong_length_and_out_of_ring_elements() -> None:
    r = Ring(12)
    with pytest.raises(ValueError) as info:
        r.from_bytes(b"\x00\x00\x00", 2)
    assert str(info.value) == "vector must be 2 elements of 2 bytes, got 3 bytes"
    with pytest.raises(ValueError) as info:
        r.from_bytes(b"\x00\x10", 1)
    assert str(info.value) == "vector element beyond the 12-bit ring"
    assert r.from_bytes(b"", 0).tolist() == []


# --- prg ---------------------------------------------------------------------------------------


def test_keystream_is_chacha20_with_a_zero_nonce() -> None:
    assert prg.keystream(bytes(32), 64) == CHACHA_ZERO_BLOCK
    assert prg.keystream(bytes(32), 5) == CHACHA_ZERO_BLOCK[:5]
    for bad in (bytes(31), bytes(33)):
        with pytest.raises(ValueError, match=r"^PRG key must be 32 bytes$"):
            prg.keystream(bad, 8)


def test_expand_takes_the_low_bits_of_little_endian_words() -> None:
    words = [int.from_bytes(CHACHA_ZERO_BLOCK[i : i + 8], "little") for i in range(0, 64, 8)]
    got = prg.expand(bytes(32), 8, Ring(20))
    assert got.dtype == np.uint64 and got.tolist() == [w & 0xFFFFF for w in words]
    assert prg.expand(bytes(32), 8, Ring(64)).tolist() == words


def test_words_continue_the_same_keystream_across_blocks() -> None:
    key = bytes(range(32))
    stream = prg.words(key)
    got = [next(stream) for _ in range(600)]
    raw = prg.keystream(key, 8 * 600)
    assert got == [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
    assert all(isinstance(w, int) for w in got[:3])


def test_uniform_below_rejects_the_biased_tail() -> None:
    bound = 3
    limit = (1 << 64) - ((1 << 64) % bound)
    assert prg.uniform_below(iter([limit, limit + 1, 7]), bound) == 1
    assert prg.uniform_below(iter([limit - 1]), bound) == (limit - 1) % bound
    assert prg.uniform_below(iter([(1 << 64) - 1]), 1) == 0
    assert prg.uniform_below(iter([5]), 1 << 63) == 5
    assert prg.uniform_below(iter([(1 << 63) + 5]), 1 << 63) == 5
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^bound must be positive$"):
            prg.uniform_below(iter([1]), bad)
    with pytest.raises(AssertionError) as info:
        prg.uniform_below(iter([]), 5)
    assert str(info.value) == "unreachable: the stream is endless"


# --- shamir ------------------------------------------------------------------------------------


def test_field_constants() -> None:
    assert shamir.P == 2**256 + 297
    assert (shamir.SECRET_BYTES, shamir.SHARE_BYTES) == (32, 33)


def _interpolate_at(points: dict[int, int], x0: int) -> int:
    """Independent Lagrange interpolation in GF(P) (one inverse per point, no batching)."""
    p, total = shamir.P, 0
    for i, yi in points.items():
        num = den = 1
        for j in points:
            if j != i:
                num = num * (x0 - j) % p
                den = den * (i - j) % p
        total = (total + yi * num * pow(den, -1, p)) % p
    return total


def test_threshold_one_gives_every_holder_the_secret() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 1, [1, 5, 9])
    assert shares == {x: b"\x00" + secret for x in (1, 5, 9)}
    assert shamir.combine({9: shares[9]}, 1) == secret


def test_shares_lie_on_a_polynomial_of_degree_t_minus_one() -> None:
    secret = hashlib.sha256(b"s").digest()
    xs = [2, 3, 7, 11, 12]
    shares = shamir.split(secret, 3, xs)
    ys = {x: int.from_bytes(s, "big") for x, s in shares.items()}
    assert all(len(s) == 33 and y < shamir.P for s, y in zip(shares.values(), ys.values(), strict=True))
    three = {x: ys[x] for x in (2, 7, 12)}
    assert _interpolate_at(three, 0) == int.from_bytes(secret, "big")
    assert _interpolate_at(three, 3) == ys[3] and _interpolate_at(three, 11) == ys[11]
    # fewer than t shares say nothing: two of them do not give the secret, and the three are not on a line
    two = {x: ys[x] for x in (2, 7)}
    assert _interpolate_at(two, 0) != int.from_bytes(secret, "big")
    assert _interpolate_at(two, 12) != ys[12]
    # threshold = n works, and the lowest x-coordinates offered are the ones used
    assert shamir.combine(shamir.split(secret, 5, xs), 5) == secret
    assert shamir.combine({**{x: shares[x] for x in (2, 3, 7)}, 99: b"\xff" * 33}, 3) == secret


@pytest.mark.parametrize(
    ("secret", "threshold", "xs", "message"),
    [
        (bytes(31), 1, [1], "secret must be 32 bytes"),
        (bytes(33), 1, [1], "secret must be 32 bytes"),
        (bytes(32), 1, [1, 1], "share x-coordinates must be distinct and nonzero"),
        (bytes(32), 1, [0, 1], "share x-coordinates must be distinct and nonzero"),
        (bytes(32), 1, [shamir.P], "share x-coordinates must be distinct and nonzero"),
        (bytes(32), 0, [1, 2], "threshold 0 must be in [1, 2]"),
        (bytes(32), 3, [1, 2], "threshold 3 must be in [1, 2]"),
    ],
)
def test_split_refusals(secret: bytes, threshold: int, xs: list[int], message: str) -> None:
    with pytest.raises(shamir.ShareError) as info:
        shamir.split(secret, threshold, xs)
    assert str(info.value) == message


def test_split_accepts_the_largest_x() -> None:
    shares = shamir.split(bytes(32), 1, [shamir.P - 1])
    assert list(shares) == [shamir.P - 1]


def test_combine_refusals() -> None:
    good = shamir.split(bytes(32), 2, [1, 2])

    def refused(shares: dict, threshold: int) -> str:
        with pytest.raises(shamir.ShareError) as info:
            shamir.combine(shares, threshold)
        return str(info.value)

    assert refused(good, 0) == "2 share(s), 0 needed"
    assert refused({1: good[1]}, 2) == "1 share(s), 2 needed"
    assert refused({1: good[1], 2: good[2][1:]}, 2) == "share from holder 2 is not 33 bytes"
    assert refused({1: good[1], 2: good[2].hex()}, 2) == "share from holder 2 is not 33 bytes"
    assert refused({1: good[1], 2: shamir.P.to_bytes(33, "big")}, 2) == "share from holder 2 is not a field element"
    assert refused({0: good[1], 2: good[2]}, 2) == "share from holder 0 is not a field element"
    assert refused({2: good[2], shamir.P: good[1]}, 2) == f"share from holder {shamir.P} is not a field element"
    assert shamir.combine({1: bytearray(good[1]), 2: good[2]}, 2) == bytes(32)


def test_combine_refuses_a_value_beyond_32_bytes() -> None:
    """Shares of a polynomial whose constant is in [2^256, P): no 32-byte secret, so not one polynomial."""
    v, c = 2**256 + 5, 12345
    shares = {x: ((v + c * x) % shamir.P).to_bytes(33, "big") for x in (1, 2)}
    with pytest.raises(shamir.ShareError, match=r"^shares do not lie on one polynomial$"):
        shamir.combine(shares, 2)
    edge = {x: ((2**256 - 1 + c * x) % shamir.P).to_bytes(33, "big") for x in (1, 2)}
    assert shamir.combine(edge, 2) == b"\xff" * 32


# --- primitives --------------------------------------------------------------------------------


def test_canonical_encoding_is_length_prefixed() -> None:
    assert primitives.PROTOCOL == b"edgefleet-secagg-v1"
    assert (primitives.KEY_BYTES, primitives.SIG_BYTES, primitives.NONCE_BYTES, primitives.TAG_BYTES) == (
        32,
        64,
        12,
        16,
    )
    assert primitives.encode() == b"edgefleet-secagg-v1"
    assert primitives.encode(258, "é", b"\x00") == (
        b"edgefleet-secagg-v1"
        + b"\x00\x00\x00\x08"
        + (258).to_bytes(8, "big")
        + b"\x00\x00\x00\x02"
        + "é".encode()
        + b"\x00\x00\x00\x01\x00"
    )
    assert primitives.encode(bytearray(b"ab")) == b"edgefleet-secagg-v1\x00\x00\x00\x02ab"
    with pytest.raises(OverflowError):
        primitives.encode(-1)
    assert primitives.encode("ab", "c") != primitives.encode("a", "bc")


def test_digest_is_truncated_sha256_of_the_encoding() -> None:
    full = hashlib.sha256(primitives.encode("x", 1)).digest()
    assert primitives.digest("x", 1) == full
    assert primitives.digest("x", 1, size=16) == full[:16]


def test_agree_and_derive_are_hkdf_sha256_bound_to_their_purpose() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    pa, pb = primitives.public_bytes(a), primitives.public_bytes(b)
    assert len(pa) == 32 and primitives.x25519_keypair()[1] != pa
    shared = a.exchange(b.public_key())
    expected = HKDF(hashes.SHA256(), 32, None, primitives.encode("mask", 7)).derive(shared)
    assert primitives.agree(a, pb, "mask", 7) == expected == primitives.agree(b, pa, "mask", 7)
    assert primitives.agree(a, pb, "mask", 8) != expected
    assert primitives.derive(b"k" * 32, "seed") == HKDF(hashes.SHA256(), 32, None, primitives.encode("seed")).derive(
        b"k" * 32
    )
    assert len(primitives.private_bytes(a)) == 32
    with pytest.raises(ValueError):
        primitives.agree(a, bytes(32), "mask")  # low-order point: all-zero shared secret


def test_seal_and_open_need_the_same_key_nonce_and_associated_data() -> None:
    key = bytes(range(32))
    nonce, ct = primitives.seal(key, b"secret", b"aad")
    assert len(nonce) == 12 and len(ct) == len(b"secret") + 16
    assert primitives.open_sealed(key, nonce, ct, b"aad") == b"secret"
    assert primitives.open_sealed(key, nonce, ct, b"aae") is None
    assert primitives.open_sealed(bytes(32), nonce, ct, b"aad") is None
    assert primitives.open_sealed(key, nonce[:11], ct, b"aad") is None
    assert primitives.open_sealed(key, nonce + b"\x00", ct, b"aad") is None
    assert primitives.seal(key, b"x", b"")[0] != primitives.seal(key, b"x", b"")[0]


def test_signatures() -> None:
    ident = Ed25519PrivateKey.generate()
    pub = primitives.identity_public_bytes(ident)
    sig = primitives.sign(ident, b"m")
    assert primitives.verify(pub, sig, b"m") is True
    assert primitives.verify(pub, sig, b"n") is False
    assert primitives.verify(pub[:31], sig, b"m") is False
    assert primitives.verify(pub, sig[:63], b"m") is False


# --- round parameters --------------------------------------------------------------------------


def _config(**changes: object) -> RoundConfig:
    n = changes.get("n", 6)
    base = {
        "round_id": "r",
        "n": n,
        "k": 4,
        "t": 2,
        "vector_length": 1,
        "graph_seed": bytes(32),
        "identity_keys": {i: bytes(32) for i in range(1, n + 1)},
        "min_survivors": 2,
    }
    return RoundConfig(**{**base, **changes})


def test_round_parameters_at_their_limits_are_accepted() -> None:
    c = _config(round_id="r" * 128, t=4, vector_length=1 << 20, min_survivors=6)
    assert c.ring.bits == 32 and c.graph.n == 6
    assert c.neighbours(1) == c.graph.neighbours(1) and 1 not in c.neighbours(1)
    assert _config().min_survivors == 2 and RoundConfig.__dataclass_fields__["min_survivors"].default == 20


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"round_id": ""}, "round id must have 1..128 characters"),
        ({"round_id": "r" * 129}, "round id must have 1..128 characters"),
        ({"identity_keys": {i: bytes(32) for i in range(1, 6)}}, "identity keys must be given for exactly the indices"),
        ({"identity_keys": {i: bytes(32) for i in range(0, 6)}}, "identity keys must be given for exactly the indices"),
        ({"identity_keys": {**{i: bytes(32) for i in range(1, 6)}, 6: bytes(31)}}, "32-byte Ed25519 public keys"),
        ({"t": 1}, r"threshold t=1 must be in \[2, k=4\]"),
        ({"t": 5}, r"threshold t=5 must be in \[2, k=4\]"),
        ({"vector_length": 0}, r"vector length must be in \[1, 2\^20\]"),
        ({"vector_length": (1 << 20) + 1}, r"vector length must be in \[1, 2\^20\]"),
        ({"min_survivors": 1}, r"min_survivors must be in \[2, n\]"),
        ({"min_survivors": 7}, r"min_survivors must be in \[2, n\]"),
    ],
)
def test_round_parameters_out_of_range_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        _config(**changes)
    text = str(info.value)
    assert re.search(message, text)
    assert text in {
        "round id must have 1..128 characters",
        "identity keys must be given for exactly the indices 1..n",
        "identity keys must be 32-byte Ed25519 public keys",
        "threshold t=1 must be in [2, k=4]",
        "threshold t=5 must be in [2, k=4]",
        "vector length must be in [1, 2^20]",
        "min_survivors must be in [2, n]",
    }


# --- graph -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "p", "t"), [(10, 0.3, 1), (10, 0.3, 4), (10, 0.3, 10), (40, 0.05, 7), (200, 0.35, 120), (5, 0.5, 3)]
)
def test_binomial_tail_matches_scipy(k: int, p: float, t: int) -> None:
    assert graph._log_binom_tail_ge(k, p, t) == pytest.approx(stats.binom.logsf(t - 1, k, p), rel=1e-10)


def test_binomial_tail_edges() -> None:
    assert graph._log_binom_tail_ge(10, 0.3, 0) == 0.0
    assert graph._log_binom_tail_ge(10, 0.3, -1) == 0.0
    assert graph._log_binom_tail_ge(10, 0.3, 11) == -math.inf
    assert graph._log_binom_tail_ge(10, 0.0, 1) == -math.inf
    assert graph._log_binom_tail_ge(10, 1.0, 10) == 0.0


def _bounds(n: int, k: int, t: int, corrupt: float, dropout: float, complete: bool) -> tuple[float, float]:
    """Conditions 1-3 of the sparse-graph analysis, from scipy's binomial tail."""
    priv = math.log(n) + stats.binom.logsf(t - 1, k, corrupt)
    if not complete:
        f = corrupt + dropout
        conn = math.log(n * (n - 1) / 2) + k * math.log(f) if f > 0 else -math.inf
        both = priv > -math.inf and conn > -math.inf
        priv = max(priv, conn) + (math.log(2) if both else 0.0)
    corr = math.log(n) + stats.binom.logsf(k - t, k, dropout)
    return priv / math.log(2), corr / math.log(2)


@pytest.mark.parametrize(
    "args",
    [(1000, 40, 10, 0.05, 0.3, False), (1000, 40, 10, 0.05, 0.3, True), (300, 60, 25, 0.1, 0.2, False)],
)
def test_bounds_match_the_analysis(args: tuple) -> None:
    assert graph._bounds(*args) == pytest.approx(_bounds(*args), rel=1e-9)


def test_bounds_without_corruption_or_dropout() -> None:
    priv, corr = graph._bounds(100, 10, 3, 0.0, 0.0, False)
    assert priv == -math.inf and corr == -math.inf
    priv, _ = graph._bounds(100, 10, 3, 0.0, 0.2, False)
    assert priv == pytest.approx((math.log(100 * 99 / 2) + 10 * math.log(0.2)) / math.log(2), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "corrupt", "dropout"),
    [(600, 0.05, 0.3), (2000, 0.05, 0.3), (80, 0.05, 0.3), (100, 0.5, 0.0), (60, 0.4, 0.0), (1000, 0.0, 0.3)],
)
def test_chosen_sparse_parameters_are_the_smallest_that_meet_the_bounds(n: int, corrupt: float, dropout: float) -> None:
    params = graph.choose_parameters(n, corrupt, dropout)
    assert params.k % 2 == 0 and params.k < n - 1 and not params.complete
    priv, corr = _bounds(n, params.k, params.t, corrupt, dropout, False)
    assert (params.log2_privacy_failure, params.log2_correctness_failure) == pytest.approx((priv, corr), rel=1e-9)
    assert priv <= -40 and corr <= -30
    # no smaller even degree meets both conditions with the first t that meets privacy
    for k in range(2, params.k, 2):
        firsts = [t for t in range(1, k + 1) if _bounds(n, k, t, corrupt, dropout, False)[0] <= -40]
        assert not firsts or _bounds(n, k, firsts[0], corrupt, dropout, False)[1] > -30
    first = min(t for t in range(1, params.k + 1) if _bounds(n, params.k, t, corrupt, dropout, False)[0] <= -40)
    assert params.t == first


def test_defaults_and_the_last_sparse_degree() -> None:
    assert (graph.SIGMA_BITS, graph.ETA_BITS, graph.DEFAULT_CORRUPT, graph.DEFAULT_DROPOUT) == (40, 30, 0.05, 0.30)
    assert graph.choose_parameters(600) == graph.choose_parameters(600, 0.05, 0.3, 40, 30)
    p80 = graph.choose_parameters(80)
    assert (p80.k, p80.t) == (78, 26)  # n − 2 is still a sparse degree
    # n = 79: the sparse search stops below n − 1 (78 would pass the sparse bounds): complete graph
    p79 = graph.choose_parameters(79)
    assert (p79.k, p79.t, p79.complete) == (78, graph.complete_threshold(79), True)
    assert (graph.choose_parameters(100, 0.5, 0.0).k, graph.choose_parameters(100, 0.5, 0.0).t) == (54, 53)


def test_looser_targets_give_smaller_graphs() -> None:
    strict, loose = graph.choose_parameters(2000), graph.choose_parameters(2000, sigma=20, eta=10)
    assert loose.k < strict.k
    assert loose.log2_privacy_failure <= -20 and loose.log2_correctness_failure <= -10


def test_small_groups_use_the_complete_graph() -> None:
    p = graph.choose_parameters(30)
    assert (p.n, p.k, p.t, p.complete) == (30, 29, 20, True)
    priv, corr = _bounds(30, 29, 20, 0.05, 0.3, True)
    assert (p.log2_privacy_failure, p.log2_correctness_failure) == pytest.approx((priv, corr), rel=1e-9)
    two, three = graph.choose_parameters(2), graph.choose_parameters(3)
    assert (two.k, two.t, three.k, three.t) == (1, 2, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 1}, "a round needs at least 2 devices"),
        ({"n": 10, "corrupt": -0.01}, "corrupt and dropout fractions must be in [0, 1) and sum below 1"),
        ({"n": 10, "dropout": 1.0}, "corrupt and dropout fractions must be in [0, 1) and sum below 1"),
        ({"n": 10, "corrupt": 0.5, "dropout": 0.5}, "corrupt and dropout fractions must be in [0, 1) and sum below 1"),
    ],
)
def test_choose_parameters_refusals(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        graph.choose_parameters(**kwargs)
    assert str(info.value) == message


def test_choose_parameters_accepts_no_corruption() -> None:
    assert graph.choose_parameters(10, corrupt=0.0, dropout=0.0).n == 10


@pytest.mark.parametrize(("n", "t"), [(2, 2), (3, 2), (4, 3), (6, 4), (7, 5), (30, 20), (31, 21)])
def test_complete_threshold_is_two_thirds_rounded_up(n: int, t: int) -> None:
    assert graph.complete_threshold(n) == t


@pytest.mark.parametrize(
    ("n", "k", "seed", "message"),
    [
        (1, 1, bytes(16), "need 2 ≤ k ≤ n − 1, got n=1, k=1"),
        (5, 1, bytes(16), "need 2 ≤ k ≤ n − 1, got n=5, k=1"),
        (5, 5, bytes(16), "need 2 ≤ k ≤ n − 1, got n=5, k=5"),
        (6, 3, bytes(16), "a Harary graph's degree must be even (or n − 1 for the complete graph)"),
        (5, 3, bytes(16), "a Harary graph's degree must be even (or n − 1 for the complete graph)"),
        (6, 4, bytes(15), "graph seed must be at least 16 bytes"),
    ],
)
def test_graph_refusals(n: int, k: int, seed: bytes, message: str) -> None:
    with pytest.raises(ValueError) as info:
        graph.Graph(n, k, seed)
    assert str(info.value) == message


def test_harary_graph_neighbourhoods() -> None:
    g = graph.Graph(11, 4, bytes(16))
    order = g._order
    assert sorted(order) == list(range(1, 12))
    for pos, u in enumerate(order):
        expected = {order[(pos + d) % 11] for d in (-2, -1, 1, 2)}
        assert g.neighbours(u) == expected
    assert all(u in g.neighbours(v) for u in range(1, 12) for v in g.neighbours(u))
    for bad in (0, 12):
        with pytest.raises(KeyError) as info:
            g.neighbours(bad)
        assert info.value.args == (bad,)
    # a Harary graph of degree n − 2 is not the complete graph
    h = graph.Graph(6, 4, bytes(16))
    assert all(len(h.neighbours(u)) == 4 for u in range(1, 7))
    assert graph.Graph(11, 4, bytes(16))._order == order
    assert graph.Graph(11, 4, b"\x01" + bytes(15))._order != order


def test_the_smallest_graphs() -> None:
    ring = graph.Graph(5, 2, bytes(16))  # degree 2: a cycle
    assert all(len(ring.neighbours(u)) == 2 for u in range(1, 6))
    assert graph.Graph(3, 2, bytes(16)).neighbours(1) == {2, 3}


def test_odd_complete_graph_and_its_neighbourhoods() -> None:
    g = graph.Graph(4, 3, bytes(16))
    assert g.neighbours(1) == {2, 3, 4} and g.neighbours(4) == {1, 2, 3}
