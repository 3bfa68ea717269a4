"""Shamir sharing over GF(2^256 + 297): threshold behaviour, wrong shares, and parity with pycryptodome."""

import contextlib
import os
import random

import pytest
from Crypto.Protocol.SecretSharing import Shamir as PyShamir

from agent.secagg import shamir


def _is_probable_prime(n: int, rounds: int = 48) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(7)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_the_smallest_prime_above_2_256():
    assert _is_probable_prime(shamir.P)
    assert not any(_is_probable_prime((1 << 256) + o) for o in range(1, 297, 2))


@pytest.mark.parametrize("t,n", [(2, 2), (3, 5), (14, 40), (29, 86)])
def test_any_t_shares_recover_the_secret(t, n):
    secret = os.urandom(32)
    xs = random.sample(range(1, 5000), n)
    shares = shamir.split(secret, t, xs)
    for _ in range(5):
        subset = dict(random.sample(sorted(shares.items()), t))
        assert shamir.combine(subset, t) == secret
    assert shamir.combine(shares, t) == secret  # more than t: uses t of them


def test_t_minus_one_shares_refuse_and_leave_every_secret_possible():
    secret, t = os.urandom(32), 5
    shares = shamir.split(secret, t, range(1, 9))
    few = dict(list(shares.items())[: t - 1])
    with pytest.raises(shamir.ShareError, match="4 share"):
        shamir.combine(few, t)
    # Perfect secrecy: for any candidate secret there is a degree t−1 polynomial through the t−1
    # shares and (0, candidate); so the shares are consistent with every secret alike.
    for candidate in (bytes(32), b"\xff" * 32, os.urandom(32)):
        xs = sorted(few)
        pts = {0: int.from_bytes(candidate, "big")} | {x: int.from_bytes(few[x], "big") for x in xs}
        # interpolate through the t points and check it passes through all of them
        keys = sorted(pts)
        for x in keys:
            val = 0
            for i, xi in enumerate(keys):
                num = den = 1
                for j, xj in enumerate(keys):
                    if i != j:
                        num = num * (x - xj) % shamir.P
                        den = den * (xi - xj) % shamir.P
                val = (val + pts[xi] * num * pow(den, -1, shamir.P)) % shamir.P
            assert val == pts[x]


def test_a_wrong_share_gives_a_different_secret_or_an_error():
    secret, t = os.urandom(32), 4
    shares = shamir.split(secret, t, range(1, 7))
    bad = dict(list(shares.items())[:t])
    x0 = next(iter(bad))
    bad[x0] = ((int.from_bytes(bad[x0], "big") + 1) % shamir.P).to_bytes(33, "big")
    with contextlib.suppress(shamir.ShareError):
        assert shamir.combine(bad, t) != secret


def test_malformed_shares_and_parameters_are_refused():
    shares = shamir.split(os.urandom(32), 2, [1, 2, 3])
    with pytest.raises(shamir.ShareError):
        shamir.combine({1: shares[1], 2: b"\x00" * 5}, 2)
    with pytest.raises(shamir.ShareError):
        shamir.combine({1: shares[1], 2: b"\xff" * 33}, 2)  # not a field element
    with pytest.raises(shamir.ShareError):
        shamir.split(os.urandom(32), 2, [1, 1, 2])
    with pytest.raises(shamir.ShareError):
        shamir.split(os.urandom(32), 2, [0, 1])
    with pytest.raises(shamir.ShareError):
        shamir.split(os.urandom(31), 2, [1, 2])
    with pytest.raises(shamir.ShareError):
        shamir.split(os.urandom(32), 4, [1, 2, 3])


def test_same_behaviour_as_pycryptodome_on_16_byte_blocks():
    """The library shares 16-byte blocks in GF(2^128); ours shares whole 32-byte secrets. Both must
    recover a secret from any t shares, refuse duplicates, and (with t−1) not give it back."""
    secret, t, n = os.urandom(32), 3, 6
    blocks = [secret[:16], secret[16:]]
    lib_shares = [PyShamir.split(t, n, b) for b in blocks]
    ours = shamir.split(secret, t, range(1, n + 1))
    for subset in ([1, 2, 3], [2, 4, 6], [1, 5, 6]):
        lib = b"".join(PyShamir.combine([s[i - 1] for i in subset]) for s in lib_shares)
        assert lib == secret
        assert shamir.combine({i: ours[i] for i in subset}, t) == secret
    assert b"".join(PyShamir.combine([s[0], s[1]]) for s in lib_shares) != secret
    with pytest.raises(ValueError):
        PyShamir.combine([lib_shares[0][0], lib_shares[0][0], lib_shares[0][1]])
    with pytest.raises(shamir.ShareError):
        shamir.combine({1: ours[1], 2: ours[2]}, t)
