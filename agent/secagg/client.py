"""The device's side of a round, as pure functions: previous state + messages in → state + message out.

Each function checks everything it receives against the round's public configuration and refuses
(``Refusal``) rather than continuing on anything it cannot verify. The state holds the round's
secrets (two X25519 private keys, the self-mask seed) only until the round ends; it never leaves the
device except as Shamir shares sealed for neighbours.

Masking (Bonawitz et al. 2017, over SecAgg+'s graph): device u sends
    y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv)   (mod 2^b),
+ when u < v, − when u > v, so each pair's masks cancel in the sum; the server removes the self
masks of survivors and the pairwise masks of dropped devices with the shares the survivors reveal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.secagg import primitives as pr
from agent.secagg import shamir
from agent.secagg.config import RoundConfig
from agent.secagg.messages import (
    ADVERTISE,
    COMMIT_BYTES,
    DONE,
    MASKED,
    SHARE,
    UNMASK,
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Refusal,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from agent.secagg.prg import expand

# ---- the derivations both sides must agree on (the server imports these) -------------------------


def advertise_payload(round_id: str, sender: int, c_pk: bytes, s_pk: bytes) -> bytes:
    return pr.encode("advertise", round_id, sender, c_pk, s_pk)


def share_keys_payload(msg: ShareKeys) -> bytes:
    parts: list[bytes | str | int] = ["share-keys", msg.round_id, msg.sender, msg.b_seed_commit]
    for s in sorted(msg.shares, key=lambda s: s.recipient):
        parts += [s.recipient, s.s_commit, s.b_commit, s.nonce, s.ciphertext]
    return pr.encode(*parts)


def share_commit(kind: str, round_id: str, owner: int, holder: int, share: bytes) -> bytes:
    """Commitment to the share of ``owner``'s secret held by ``holder`` (kind "s" or "b")."""
    return pr.digest(f"{kind}-share", round_id, owner, holder, share, size=COMMIT_BYTES)


def seed_commit(round_id: str, owner: int, seed: bytes) -> bytes:
    return pr.digest("b-seed", round_id, owner, seed, size=COMMIT_BYTES)


def share_aad(round_id: str, sender: int, recipient: int, s_commit: bytes, b_commit: bytes) -> bytes:
    return pr.encode("share", round_id, sender, recipient, s_commit, b_commit)


def share_key(c_sk: X25519PrivateKey, peer_c_pk: bytes, round_id: str, u: int, v: int) -> bytes:
    return pr.agree(c_sk, peer_c_pk, "share-encryption", round_id, min(u, v), max(u, v))


def pair_mask(s_sk: X25519PrivateKey, peer_s_pk: bytes, config: RoundConfig, u: int, v: int) -> np.ndarray:
    """The mask u adds for pair (u, v): +PRG(s_uv) if u < v else −PRG(s_uv); v's cancels it."""
    key = pr.agree(s_sk, peer_s_pk, "pair-mask", config.round_id, min(u, v), max(u, v))
    m = expand(key, config.vector_length, config.ring)
    return m if u < v else config.ring.neg(m)


def self_mask(seed: bytes, config: RoundConfig, u: int) -> np.ndarray:
    return expand(pr.derive(seed, "self-mask", config.round_id, u), config.vector_length, config.ring)


# ---- state ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientState:
    config: RoundConfig
    me: int
    phase: str
    c_sk: X25519PrivateKey
    s_sk: X25519PrivateKey
    b_seed: bytes
    peers: dict[int, AdvertiseKeys] = field(default_factory=dict)  # verified neighbour keys (U1 ∩ N)
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # owner → (s share, b share)
    masked_with: frozenset[int] = frozenset()  # U2 ∩ N(me): whose pairwise masks are in my vector


def _check_round(state: ClientState, round_id: str, phase: str) -> None:
    if round_id != state.config.round_id:
        raise Refusal("wrong_round", f"message for round {round_id!r}, this is {state.config.round_id!r}", "round")
    if state.phase != phase:
        order = (ADVERTISE, SHARE, MASKED, UNMASK, DONE)
        code = "replay" if order.index(state.phase) > order.index(phase) else "wrong_phase"
        raise Refusal(code, f"device is in phase {state.phase!r}, not {phase!r}", "phase")


def advertise(config: RoundConfig, me: int, identity: Ed25519PrivateKey) -> tuple[ClientState, AdvertiseKeys]:
    """Phase 1: fresh key pairs for this round, signed with the enrolment identity key."""
    if me not in config.identity_keys:
        raise Refusal("not_in_round", f"device {me} is not in round {config.round_id}", "sender")
    if pr.identity_public_bytes(identity) != config.identity_keys[me]:
        raise Refusal("bad_signature", "this device's identity key is not the one the round names", "sender")
    c_sk, c_pk = pr.x25519_keypair()
    s_sk, s_pk = pr.x25519_keypair()
    b_seed = os.urandom(shamir.SECRET_BYTES)
    msg = AdvertiseKeys(
        config.round_id, me, c_pk, s_pk, pr.sign(identity, advertise_payload(config.round_id, me, c_pk, s_pk))
    )
    return ClientState(config, me, SHARE, c_sk, s_sk, b_seed), msg


def share_keys(
    state: ClientState, neighbour_keys: list[AdvertiseKeys], identity: Ed25519PrivateKey
) -> tuple[ClientState, ShareKeys]:
    """Phase 2: verify the neighbours' signed keys, then deal Shamir shares of (s_sk, b) to each."""
    cfg, me = state.config, state.me
    _check_round(state, cfg.round_id, SHARE)
    mine = cfg.neighbours(me)
    peers: dict[int, AdvertiseKeys] = {}
    seen_keys = {pr.public_bytes(state.c_sk), pr.public_bytes(state.s_sk)}
    for a in neighbour_keys:
        if a.round_id != cfg.round_id:
            raise Refusal("wrong_round", f"keys of device {a.sender} are for round {a.round_id!r}", "round")
        if a.sender not in mine:
            raise Refusal("not_neighbour", f"device {a.sender} is not a neighbour of {me}", "sender")
        if a.sender in peers:
            raise Refusal("replay", f"keys of device {a.sender} given twice", "sender")
        if not pr.verify(
            cfg.identity_keys[a.sender], a.signature, advertise_payload(cfg.round_id, a.sender, a.c_pk, a.s_pk)
        ):
            raise Refusal("bad_signature", f"keys of device {a.sender} are not signed by its identity key", "sig")
        if a.c_pk in seen_keys or a.s_pk in seen_keys or a.c_pk == a.s_pk:
            raise Refusal("duplicate_key", f"device {a.sender} advertised a key already in use", "c_pk")
        seen_keys |= {a.c_pk, a.s_pk}
        peers[a.sender] = a
    if len(peers) < cfg.t:
        raise Refusal("too_few", f"{len(peers)} neighbour(s) advertised keys, t={cfg.t} needed", "neighbours")
    holders = sorted(peers)
    s_shares = shamir.split(pr.private_bytes(state.s_sk), cfg.t, holders)
    b_shares = shamir.split(state.b_seed, cfg.t, holders)
    sealed = []
    for v in holders:
        sc = share_commit("s", cfg.round_id, me, v, s_shares[v])
        bc = share_commit("b", cfg.round_id, me, v, b_shares[v])
        key = share_key(state.c_sk, peers[v].c_pk, cfg.round_id, me, v)
        nonce, ct = pr.seal(key, s_shares[v] + b_shares[v], share_aad(cfg.round_id, me, v, sc, bc))
        sealed.append(EncryptedShare(me, v, nonce, ct, sc, bc))
    unsigned = ShareKeys(cfg.round_id, me, seed_commit(cfg.round_id, me, state.b_seed), tuple(sealed), b"")
    msg = replace(unsigned, signature=pr.sign(identity, share_keys_payload(unsigned)))
    return replace(state, phase=MASKED, peers=peers), msg


def masked_input(state: ClientState, incoming: list[EncryptedShare], x: np.ndarray) -> tuple[ClientState, MaskedInput]:
    """Phase 3: open the shares neighbours dealt to me (their senders are U2 ∩ N(me)), then mask x.

    ``x`` is the device's contribution as signed integers (noise included); it is reduced mod 2^b.
    """
    cfg, me = state.config, state.me
    _check_round(state, cfg.round_id, MASKED)
    x = np.asarray(x)
    if x.shape != (cfg.vector_length,) or not np.issubdtype(x.dtype, np.integer):
        raise Refusal("wrong_length", f"contribution must be {cfg.vector_length} integers", "vector")
    held: dict[int, tuple[bytes, bytes]] = {}
    for s in incoming:
        if s.recipient != me:
            raise Refusal("misaddressed", f"share from {s.sender} is addressed to {s.recipient}, not {me}", "to")
        if s.sender not in state.peers:
            raise Refusal("not_neighbour", f"share from {s.sender}, who is not a verified neighbour", "sender")
        if s.sender in held:
            raise Refusal("replay", f"two shares from device {s.sender}", "sender")
        key = share_key(state.c_sk, state.peers[s.sender].c_pk, cfg.round_id, me, s.sender)
        plain = pr.open_sealed(
            key, s.nonce, s.ciphertext, share_aad(cfg.round_id, s.sender, me, s.s_commit, s.b_commit)
        )
        if plain is None or len(plain) != 2 * shamir.SHARE_BYTES:
            raise Refusal("misaddressed", f"share from {s.sender} does not open for device {me} in this round", "ct")
        s_share, b_share = plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :]
        if (
            share_commit("s", cfg.round_id, s.sender, me, s_share) != s.s_commit
            or share_commit("b", cfg.round_id, s.sender, me, b_share) != s.b_commit
        ):
            raise Refusal("bad_share", f"share from {s.sender} does not match its commitment", "ct")
        held[s.sender] = (s_share, b_share)
    if len(held) < cfg.t:
        # The server admits to U2 only devices with ≥ t neighbours in U2, each of whom dealt me a
        # share; fewer means my own secrets could not be recovered either.
        raise Refusal("too_few", f"only {len(held)} neighbour(s) dealt shares, t={cfg.t}", "shares")
    ring = cfg.ring
    y = ring.add(ring.reduce(x), self_mask(state.b_seed, cfg, me))
    for v in held:
        y = ring.add(y, pair_mask(state.s_sk, state.peers[v].s_pk, cfg, me, v))
    msg = MaskedInput(cfg.round_id, me, ring.to_bytes(y))
    return replace(state, phase=UNMASK, held=held, masked_with=frozenset(held)), msg


def unmask(state: ClientState, request: UnmaskRequest) -> tuple[ClientState, UnmaskShares]:
    """Phase 4: for each neighbour that dealt me shares, reveal its self-mask-seed share if it
    survived, its mask-key share if it dropped — never both, and only once per round."""
    cfg, me = state.config, state.me
    _check_round(state, request.round_id, UNMASK)
    survivors = request.survivors
    if me not in survivors:
        raise Refusal("refused_request", "the survivor list omits this device, which sent its vector", "survivors")
    if not survivors <= set(cfg.identity_keys):
        raise Refusal("not_in_round", "the survivor list names devices outside the round", "survivors")
    if len(survivors) < cfg.min_survivors:
        raise Refusal("too_few", f"{len(survivors)} survivor(s), the round needs {cfg.min_survivors}", "survivors")
    b_out = {v: state.held[v][1] for v in state.held if v in survivors}
    s_out = {v: state.held[v][0] for v in state.held if v not in survivors}
    done = replace(state, phase=DONE, held={}, b_seed=b"")
    return done, UnmaskShares(cfg.round_id, me, b_out, s_out)
