"""Messages of one aggregation round, their wire form, and the refusal every bad one gets.

The wire form is JSON-ready (bytes as base64url without padding). ``from_wire`` treats its input as
hostile: exact field sets, types, sizes and counts, or a ``Refusal`` with code ``bad_message`` —
never an exception of another kind, so the API layer can map every refusal to a 4xx.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from agent.secagg.primitives import KEY_BYTES, NONCE_BYTES, SIG_BYTES, TAG_BYTES
from agent.secagg.shamir import SHARE_BYTES

# Phases in order. A message for an earlier phase than the current one is "late".
ADVERTISE, SHARE, MASKED, UNMASK, DONE, FAILED = "advertise", "share", "masked", "unmask", "done", "failed"
PHASES = (ADVERTISE, SHARE, MASKED, UNMASK)
COMMIT_BYTES = 16  # truncated SHA-256 commitments to shares and seeds (second preimages: 128 bits)
# A share plaintext: s_sk share ‖ b share; its ciphertext adds the GCM tag.
SHARE_PLAINTEXT_BYTES = 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + TAG_BYTES
MAX_INDEX = 1 << 20

REFUSAL_CODES = (
    "bad_message",  # malformed: wrong fields, types or sizes
    "wrong_round",  # another round's message
    "wrong_phase",  # a phase that has not started
    "late",  # a phase that has already closed
    "replay",  # this sender already sent this phase
    "not_in_round",  # sender or recipient is no member of the round
    "not_neighbour",  # a share or key from/for a device outside the sender's neighbourhood
    "misaddressed",  # a share addressed to someone else, or that does not open
    "wrong_length",  # a vector of the wrong length
    "bad_signature",  # a signature that does not verify under the enrolment identity key
    "bad_share",  # a revealed share that does not match its commitment
    "too_few",  # fewer than t survivors / neighbours: the round cannot go on safely
    "duplicate_key",  # two neighbours advertised the same key
    "refused_request",  # the server asked for something an honest device never reveals
)


class Refusal(Exception):
    """A message or request that the protocol refuses; ``code`` is one of REFUSAL_CODES."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        assert code in REFUSAL_CODES, code
        super().__init__(message)
        self.code, self.message, self.field = code, message, field

    def as_error(self) -> dict[str, Any]:
        """The protocol's error shape."""
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(value: Any, size: int | None, name: str, max_size: int | None = None) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * ((max_size or size or 0) + 3) // 3 + 4:
        raise Refusal("bad_message", f"{name} must be a base64url string", name)
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise Refusal("bad_message", f"{name} is not base64url", name) from None
    if size is not None and len(data) != size:
        raise Refusal("bad_message", f"{name} must be {size} bytes", name)
    return data


def _fields(d: Any, names: set[str], kind: str) -> dict[str, Any]:
    if not isinstance(d, dict) or set(d) != names:
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise Refusal("bad_message", f"{kind} needs exactly the fields {sorted(names)}, got {got}", kind)
    return d


def _index(v: Any, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_INDEX:
        raise Refusal("bad_message", f"{name} must be a device index in [1, {MAX_INDEX}]", name)
    return v


def _round(v: Any) -> str:
    if not isinstance(v, str) or not 1 <= len(v) <= 128:
        raise Refusal("bad_message", "round must be a string of 1..128 characters", "round")
    return v


@dataclass(frozen=True)
class AdvertiseKeys:
    """Phase 1, device → server → neighbours: two fresh X25519 public keys, signed by the device."""

    round_id: str
    sender: int
    c_pk: bytes  # keys the share encryption
    s_pk: bytes  # keys the pairwise masks
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "round": self.round_id,
            "sender": self.sender,
            "c_pk": b64(self.c_pk),
            "s_pk": b64(self.s_pk),
            "sig": b64(self.signature),
        }

    @classmethod
    def from_wire(cls, d: Any) -> AdvertiseKeys:
        d = _fields(d, {"round", "sender", "c_pk", "s_pk", "sig"}, "advertise")
        return cls(
            _round(d["round"]),
            _index(d["sender"], "sender"),
            unb64(d["c_pk"], KEY_BYTES, "c_pk"),
            unb64(d["s_pk"], KEY_BYTES, "s_pk"),
            unb64(d["sig"], SIG_BYTES, "sig"),
        )


@dataclass(frozen=True)
class EncryptedShare:
    """One neighbour's shares of the sender's mask key and self-mask seed, sealed for the recipient."""

    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes
    s_commit: bytes  # commitment to the mask-key share, checked when it is revealed
    b_commit: bytes  # commitment to the self-mask-seed share

    def to_wire(self) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "to": self.recipient,
            "nonce": b64(self.nonce),
            "ct": b64(self.ciphertext),
            "s_commit": b64(self.s_commit),
            "b_commit": b64(self.b_commit),
        }

    @classmethod
    def from_wire(cls, d: Any) -> EncryptedShare:
        d = _fields(d, {"sender", "to", "nonce", "ct", "s_commit", "b_commit"}, "share")
        return cls(
            _index(d["sender"], "sender"),
            _index(d["to"], "to"),
            unb64(d["nonce"], NONCE_BYTES, "nonce"),
            unb64(d["ct"], SHARE_CIPHERTEXT_BYTES, "ct"),
            unb64(d["s_commit"], COMMIT_BYTES, "s_commit"),
            unb64(d["b_commit"], COMMIT_BYTES, "b_commit"),
        )


@dataclass(frozen=True)
class ShareKeys:
    """Phase 2, device → server: sealed shares for each neighbour, a commitment to the self-mask
    seed, all signed (the commitments are what later make a wrong revealed share detectable)."""

    round_id: str
    sender: int
    b_seed_commit: bytes
    shares: tuple[EncryptedShare, ...]
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "round": self.round_id,
            "sender": self.sender,
            "b_commit": b64(self.b_seed_commit),
            "shares": [s.to_wire() for s in self.shares],
            "sig": b64(self.signature),
        }

    @classmethod
    def from_wire(cls, d: Any, max_shares: int = 4096) -> ShareKeys:
        d = _fields(d, {"round", "sender", "b_commit", "shares", "sig"}, "share_keys")
        if not isinstance(d["shares"], list) or len(d["shares"]) > max_shares:
            raise Refusal("bad_message", f"shares must be a list of at most {max_shares}", "shares")
        return cls(
            _round(d["round"]),
            _index(d["sender"], "sender"),
            unb64(d["b_commit"], COMMIT_BYTES, "b_commit"),
            tuple(EncryptedShare.from_wire(s) for s in d["shares"]),
            unb64(d["sig"], SIG_BYTES, "sig"),
        )


@dataclass(frozen=True)
class MaskedInput:
    """Phase 3, device → server: the masked vector (ring elements, little-endian)."""

    round_id: str
    sender: int
    vector: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"round": self.round_id, "sender": self.sender, "vector": b64(self.vector)}

    @classmethod
    def from_wire(cls, d: Any, max_bytes: int = 1 << 20) -> MaskedInput:
        d = _fields(d, {"round", "sender", "vector"}, "masked_input")
        return cls(_round(d["round"]), _index(d["sender"], "sender"), unb64(d["vector"], None, "vector", max_bytes))


@dataclass(frozen=True)
class UnmaskRequest:
    """Phase 4, server → device: who sent a masked vector (the survivors)."""

    round_id: str
    survivors: frozenset[int]

    def to_wire(self) -> dict[str, Any]:
        return {"round": self.round_id, "survivors": sorted(self.survivors)}

    @classmethod
    def from_wire(cls, d: Any) -> UnmaskRequest:
        d = _fields(d, {"round", "survivors"}, "unmask_request")
        if not isinstance(d["survivors"], list) or len(d["survivors"]) > MAX_INDEX:
            raise Refusal("bad_message", "survivors must be a list of device indices", "survivors")
        return cls(_round(d["round"]), frozenset(_index(v, "survivors") for v in d["survivors"]))


@dataclass(frozen=True)
class UnmaskShares:
    """Phase 4, device → server: self-mask-seed shares of surviving neighbours and mask-key shares
    of dropped ones — never both for the same neighbour."""

    round_id: str
    sender: int
    b_shares: dict[int, bytes] = field(default_factory=dict)
    s_shares: dict[int, bytes] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "round": self.round_id,
            "sender": self.sender,
            "b_shares": {str(k): b64(v) for k, v in sorted(self.b_shares.items())},
            "s_shares": {str(k): b64(v) for k, v in sorted(self.s_shares.items())},
        }

    @classmethod
    def from_wire(cls, d: Any, max_shares: int = 4096) -> UnmaskShares:
        d = _fields(d, {"round", "sender", "b_shares", "s_shares"}, "unmask_shares")
        out: list[dict[int, bytes]] = []
        for name in ("b_shares", "s_shares"):
            m = d[name]
            if not isinstance(m, dict) or len(m) > max_shares:
                raise Refusal("bad_message", f"{name} must be an object of at most {max_shares} shares", name)
            parsed: dict[int, bytes] = {}
            for k, v in m.items():
                if not isinstance(k, str) or not k.isdigit() or len(k) > 7:
                    raise Refusal("bad_message", f"{name} keys must be device indices", name)
                parsed[_index(int(k), name)] = unb64(v, SHARE_BYTES, name)
            out.append(parsed)
        return cls(_round(d["round"]), _index(d["sender"], "sender"), out[0], out[1])
