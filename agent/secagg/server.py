"""The server's side of a round: a pure state machine (no database, no network, no clock).

The caller (phase 2: the rounds service) feeds it each device's message as it arrives and closes a
phase at its deadline; every ``receive_*`` either records the message or raises ``Refusal`` with a
code, and every ``close_*`` returns what each device must be sent next or ends the round ``failed``
with a reason. What is kept is only what the protocol needs: signed public keys, the sealed shares
to forward (until the masked-input phase closes), share commitments, the running sum of masked
vectors (never one vector on its own), who sent what, and the revealed shares until unmasking.
``finish`` returns the sum and drops all key material.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.secagg import primitives as pr
from agent.secagg import shamir
from agent.secagg.client import (
    advertise_payload,
    pair_mask,
    seed_commit,
    self_mask,
    share_commit,
    share_keys_payload,
)
from agent.secagg.config import RoundConfig
from agent.secagg.messages import (
    ADVERTISE,
    DONE,
    FAILED,
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

_ORDER = (ADVERTISE, SHARE, MASKED, UNMASK, DONE)


@dataclass
class ServerRound:
    config: RoundConfig
    phase: str = ADVERTISE
    reason: str = ""
    adverts: dict[int, AdvertiseKeys] = field(default_factory=dict)
    u1: frozenset[int] = frozenset()
    dealt: dict[int, ShareKeys] = field(default_factory=dict)
    commits: dict[tuple[int, int], tuple[bytes, bytes]] = field(default_factory=dict)  # (owner, holder)
    u2: frozenset[int] = frozenset()
    running_sum: np.ndarray | None = None
    sent: set[int] = field(default_factory=set)
    u3: frozenset[int] = frozenset()
    b_revealed: dict[int, dict[int, bytes]] = field(default_factory=dict)  # owner → holder → share
    s_revealed: dict[int, dict[int, bytes]] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)
    result: np.ndarray | None = None

    # ---- helpers -----------------------------------------------------------------------------

    def _expect(self, round_id: str, sender: int, phase: str) -> None:
        if round_id != self.config.round_id:
            raise Refusal("wrong_round", f"message for round {round_id!r}, this is {self.config.round_id!r}", "round")
        if self.phase == FAILED:
            raise Refusal("late", f"round {self.config.round_id} has failed: {self.reason}", "round")
        if sender not in self.config.identity_keys:
            raise Refusal("not_in_round", f"device {sender} is not in round {self.config.round_id}", "sender")
        if self.phase != phase:
            code = "late" if _ORDER.index(self.phase) > _ORDER.index(phase) else "wrong_phase"
            raise Refusal(code, f"round is in phase {self.phase!r}, not {phase!r}", "phase")

    def _fail(self, reason: str) -> None:
        self.phase, self.reason = FAILED, reason
        self._forget()

    def _forget(self) -> None:
        """Drop key material and shares (kept: phase, reason, member sets, the result)."""
        self.adverts, self.dealt, self.b_revealed, self.s_revealed, self.commits = {}, {}, {}, {}, {}
        self.running_sum = None

    def _live_neighbours(self, u: int, alive: frozenset[int] | set[int]) -> frozenset[int]:
        return self.config.neighbours(u) & alive

    def _prune(self, candidates: set[int]) -> frozenset[int]:
        """Largest subset in which every device keeps ≥ t neighbours (else its secrets could not be
        recovered from shares): repeatedly drop devices below t."""
        alive = set(candidates)
        changed = True
        while changed:
            changed = False
            for u in sorted(alive):
                if len(self._live_neighbours(u, alive)) < self.config.t:
                    alive.discard(u)
                    changed = True
        return frozenset(alive)

    def _floor(self, members: frozenset[int], what: str) -> bool:
        if len(members) < self.config.min_survivors:
            self._fail(f"{len(members)} device(s) {what}, fewer than the {self.config.min_survivors} the round needs")
            return False
        return True

    # ---- phase 1: advertise keys --------------------------------------------------------------

    def receive_advertise(self, msg: AdvertiseKeys) -> None:
        self._expect(msg.round_id, msg.sender, ADVERTISE)
        if msg.sender in self.adverts:
            raise Refusal("replay", f"device {msg.sender} already advertised keys", "sender")
        payload = advertise_payload(msg.round_id, msg.sender, msg.c_pk, msg.s_pk)
        if not pr.verify(self.config.identity_keys[msg.sender], msg.signature, payload):
            raise Refusal("bad_signature", "keys are not signed by the device's identity key", "sig")
        self.adverts[msg.sender] = msg

    def close_advertise(self) -> dict[int, list[AdvertiseKeys]]:
        """U1 and, for each member, its neighbours' signed keys (to send in the share phase)."""
        self._expect(self.config.round_id, next(iter(self.config.identity_keys)), ADVERTISE)
        self.u1 = self._prune(set(self.adverts))
        self.adverts = {u: a for u, a in self.adverts.items() if u in self.u1}
        if not self._floor(self.u1, "advertised keys with enough live neighbours"):
            return {}
        self.phase = SHARE
        return {u: [self.adverts[v] for v in sorted(self._live_neighbours(u, self.u1))] for u in sorted(self.u1)}

    # ---- phase 2: share keys ------------------------------------------------------------------

    def receive_share_keys(self, msg: ShareKeys) -> None:
        self._expect(msg.round_id, msg.sender, SHARE)
        if msg.sender not in self.u1:
            raise Refusal("not_in_round", f"device {msg.sender} did not advertise keys in time", "sender")
        if msg.sender in self.dealt:
            raise Refusal("replay", f"device {msg.sender} already dealt its shares", "sender")
        expected = self._live_neighbours(msg.sender, self.u1)
        recipients = [s.recipient for s in msg.shares]
        if any(s.sender != msg.sender for s in msg.shares):
            raise Refusal("bad_message", "every share must name its dealer as sender", "shares")
        if len(set(recipients)) != len(recipients) or set(recipients) != expected:
            raise Refusal("not_neighbour", "shares must go to exactly the live neighbours, one each", "shares")
        # The signature is not checked here: recipients authenticate each share themselves (AES-GCM
        # under a key only dealer and recipient hold, commitments in the associated data). It is kept
        # and checked only to attribute blame with proof when a dealer's shares prove inconsistent
        # (``dealer_signed``), which saves an Ed25519 verification per device per round.
        self.dealt[msg.sender] = msg

    def close_share_keys(self) -> dict[int, list[EncryptedShare]]:
        """U2 and, for each member, the sealed shares its U2 neighbours dealt it."""
        self._expect(self.config.round_id, next(iter(self.config.identity_keys)), SHARE)
        self.u2 = self._prune(set(self.dealt))
        self.dealt = {u: m for u, m in self.dealt.items() if u in self.u2}
        if not self._floor(self.u2, "dealt shares with enough live neighbours"):
            return {}
        outbox: dict[int, list[EncryptedShare]] = {u: [] for u in self.u2}
        for msg in self.dealt.values():
            for s in msg.shares:
                if s.recipient in self.u2:
                    outbox[s.recipient].append(s)
                    self.commits[(s.sender, s.recipient)] = (s.s_commit, s.b_commit)
        self.phase = MASKED
        self.running_sum = self.config.ring.zeros(self.config.vector_length)
        return outbox

    # ---- phase 3: masked input ----------------------------------------------------------------

    def receive_masked(self, msg: MaskedInput) -> None:
        """Add the masked vector to the running sum; the vector itself is not kept."""
        self._expect(msg.round_id, msg.sender, MASKED)
        if msg.sender not in self.u2:
            raise Refusal("not_in_round", f"device {msg.sender} is not among those that dealt shares", "sender")
        if msg.sender in self.sent:
            raise Refusal("replay", f"device {msg.sender} already sent its vector for this round", "sender")
        try:
            y = self.config.ring.from_bytes(msg.vector, self.config.vector_length)
        except ValueError as e:
            raise Refusal("wrong_length", str(e), "vector") from None
        assert self.running_sum is not None
        self.running_sum = self.config.ring.add(self.running_sum, y)
        self.sent.add(msg.sender)

    def close_masked(self) -> UnmaskRequest | None:
        """U3 (the survivors), sent to each of them; or the round fails if it cannot be unmasked."""
        self._expect(self.config.round_id, next(iter(self.config.identity_keys)), MASKED)
        self.u3 = frozenset(self.sent)
        if not self._floor(self.u3, "sent masked vectors"):
            return None
        for v in sorted(self.u2):
            live = len(self._live_neighbours(v, self.u3))
            if live < self.config.t:
                self._fail(f"device {v}'s masks cannot be removed: {live} of its neighbours survive, t={self.config.t}")
                return None
        self.phase = UNMASK
        return UnmaskRequest(self.config.round_id, self.u3)

    # ---- phase 4: unmasking -------------------------------------------------------------------

    def receive_unmask(self, msg: UnmaskShares) -> None:
        """Record a survivor's revealed shares after checking each against its dealer's commitment."""
        self._expect(msg.round_id, msg.sender, UNMASK)
        if msg.sender not in self.u3:
            raise Refusal("not_in_round", f"device {msg.sender} is not a survivor of this round", "sender")
        if msg.sender in self.answered:
            raise Refusal("replay", f"device {msg.sender} already revealed its shares", "sender")
        owners = self._live_neighbours(msg.sender, self.u2)
        if set(msg.b_shares) != owners & self.u3 or set(msg.s_shares) != owners - self.u3:
            raise Refusal(
                "not_neighbour",
                "reveal the seed share of each surviving neighbour and the key share of each dropped one",
                "shares",
            )
        for kind, shares in (("b", msg.b_shares), ("s", msg.s_shares)):
            for owner, share in shares.items():
                s_commit, b_commit = self.commits[(owner, msg.sender)]
                expected = b_commit if kind == "b" else s_commit
                if share_commit(kind, self.config.round_id, owner, msg.sender, share) != expected:
                    raise Refusal(
                        "bad_share", f"share of device {owner}'s secret does not match its commitment", "shares"
                    )
        for owner, share in msg.b_shares.items():
            self.b_revealed.setdefault(owner, {})[msg.sender] = share
        for owner, share in msg.s_shares.items():
            self.s_revealed.setdefault(owner, {})[msg.sender] = share
        self.answered.add(msg.sender)

    def dealer_signed(self, v: int) -> bool:
        """Whether device v's dealt shares carry its identity signature (evidence against it)."""
        msg = self.dealt[v]
        return pr.verify(self.config.identity_keys[v], msg.signature, share_keys_payload(msg))

    def missing_shares(self) -> dict[int, int]:
        """Secrets still short of t shares: owner → shares missing (empty when ``finish`` can run)."""
        t = self.config.t
        need = {v: t - len(self.b_revealed.get(v, {})) for v in self.u3}
        need |= {v: t - len(self.s_revealed.get(v, {})) for v in self.u2 - self.u3}
        return {v: m for v, m in need.items() if m > 0}

    def finish(self) -> np.ndarray | None:
        """Unmask: subtract survivors' self masks and dropped devices' pairwise masks. Returns the sum
        of the survivors' contributions (ring elements), or None with the round failed and why."""
        self._expect(self.config.round_id, next(iter(self.config.identity_keys)), UNMASK)
        cfg, ring = self.config, self.config.ring
        missing = self.missing_shares()
        if missing:
            v = min(missing)
            self._fail(
                f"{len(missing)} device(s)' masks cannot be removed: device {v} lacks {missing[v]} share(s), t={cfg.t}"
            )
            return None
        total = self.running_sum
        assert total is not None
        for v in sorted(self.u3):
            try:
                seed = shamir.combine(self.b_revealed[v], cfg.t)
            except shamir.ShareError:
                seed = b""
            if seed_commit(cfg.round_id, v, seed) != self.dealt[v].b_seed_commit:
                proof = "signed" if self.dealer_signed(v) else "unsigned (not attributable)"
                self._fail(f"device {v} dealt inconsistent shares of its self-mask seed ({proof})")
                return None
            total = ring.sub(total, self_mask(seed, cfg, v))
        for v in sorted(self.u2 - self.u3):
            try:
                s_sk = X25519PrivateKey.from_private_bytes(shamir.combine(self.s_revealed[v], cfg.t))
            except (shamir.ShareError, ValueError):
                s_sk = None
            if s_sk is None or pr.public_bytes(s_sk) != self.adverts[v].s_pk:
                proof = "signed" if self.dealer_signed(v) else "unsigned (not attributable)"
                self._fail(f"device {v} dealt inconsistent shares of its mask key ({proof})")
                return None
            for w in sorted(self._live_neighbours(v, self.u3)):
                # w added pair_mask(w, v); v's side of it is pair_mask(v, w) = −that.
                total = ring.add(total, pair_mask(s_sk, self.adverts[w].s_pk, cfg, v, w))
        self.result = total
        self.phase = DONE
        self._forget()
        return total
