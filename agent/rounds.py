"""The device's part in secure-aggregation rounds (docs/protocol.md "Rounds", docs/secure-aggregation.md).

At each poll the agent asks ``GET /api/v1/rounds`` for its open rounds and answers each phase it has
not answered yet with ``agent.secagg.client``: advertise (fresh keys signed with the enrolment
identity key), share (Shamir shares sealed for each neighbour), masked (its window's vector plus
discrete Gaussian noise, masked) once the round's window is over, unmask (shares of neighbours'
secrets, one kind per neighbour). A round's secrets live only in memory: a restart mid-round makes
the device a dropout of that round, which the protocol survives.

Every device running a version takes part whether or not it ran inferences: an idle window is the
zero vector (``agent.encoding``), so no metadata says who was active.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import dpnoise
from agent.client import Client, Rejected
from agent.encoding import window_vectors
from agent.secagg import client as sa
from agent.secagg.config import RoundConfig
from agent.secagg.messages import (
    ADVERTISE,
    MASKED,
    SHARE,
    UNMASK,
    AdvertiseKeys,
    EncryptedShare,
    Refusal,
    UnmaskRequest,
    b64,
    unb64,
)
from agent.secagg.primitives import identity_public_bytes
from agent.store import atomic_write

log = logging.getLogger("edgefleet.agent.rounds")
KEEP_WINDOWS = 8  # closed windows' vectors kept for rounds still to ask for them


def load_identity(path: Path) -> Ed25519PrivateKey:
    """The device's Ed25519 identity key (made once, kept 0600 beside the token)."""
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    sk = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    raw = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    atomic_write(path, raw)
    os.chmod(path, 0o600)
    return sk


def public_key_b64(sk: Ed25519PrivateKey) -> str:
    return b64(identity_public_bytes(sk))


def config_from_wire(body: dict[str, Any]) -> RoundConfig:
    return RoundConfig(
        round_id=str(body["round"]),
        n=int(body["n"]),
        k=int(body["k"]),
        t=int(body["t"]),
        vector_length=int(body["vector_length"]),
        graph_seed=unb64(body["graph_seed"], 32, "graph_seed"),
        identity_keys={int(i): unb64(k, 32, "identity_keys") for i, k in body["identity_keys"].items()},
        ring_bits=int(body["ring_bits"]),
        min_survivors=int(body["min_survivors"]),
    )


def parse_hint(value: str | None) -> list[tuple[str, str, int]] | None:
    """The poll's ``X-Rounds`` header as ``(round, phase, deadline)``; None when absent or not
    understood (then the agent asks, as it would with no hint at all)."""
    if value is None:
        return None
    out = []
    for part in value.split(","):
        if not part:
            continue
        rid, _, rest = part.partition(":")
        phase, _, deadline = rest.partition(":")
        if not rid or phase not in (ADVERTISE, SHARE, MASKED, UNMASK) or not deadline.isdigit():
            return None
        out.append((rid, phase, int(deadline)))
    return out


class Rounds:
    """Round state of one agent: configurations, the client state machine per round, and the
    vectors of closed windows (what the device means to contribute)."""

    def __init__(self, client: Client, identity: Ed25519PrivateKey) -> None:
        self.client = client
        self.identity = identity
        # End of the last window the agent has closed (its vectors are in ``vectors`` from then on).
        # A round's masked input waits for this, never for the clock: the clock passes a window's end
        # before the agent rolls that window, and a contribution read in between would be all zeros.
        self.closed_until = 0
        self.configs: dict[str, tuple[RoundConfig, dict[str, Any]]] = {}
        self.states: dict[str, sa.ClientState] = {}
        self.vectors: dict[tuple[str, str, int], dict[str, np.ndarray]] = {}  # (model, version, start)
        self.sent: dict[str, np.ndarray] = {}  # round → contribution it sent (before masking), for tests
        # (round, phase) this agent has dealt with — answered, or will never answer — so a hint naming
        # it needs no request; and rounds whose masked input waits for their window to close.
        self.handled: set[tuple[str, str]] = set()
        self.waiting: set[str] = set()
        self.outbox: list[dict[str, Any]] = []
        self.stats: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def window_closed(self, model: str, version: str, start: int, aggregator: Any | None) -> None:
        """Keep the closed window's vectors (an idle window: None → zero vectors at masking time)."""
        if aggregator is not None:
            self.vectors[(model, version, int(start))] = {b: v for b, (_, v) in window_vectors(aggregator).items()}
        for key in sorted(self.vectors, key=lambda k: k[2])[:-KEEP_WINDOWS]:
            del self.vectors[key]

    def closed(self, end: int) -> None:
        """The agent has closed every window ending at or before ``end`` (after ``window_closed`` for each)."""
        self.closed_until = max(self.closed_until, int(end))

    def due(self, hint: list[tuple[str, str, int]]) -> bool:
        """Whether the hint names a phase this agent can answer now (and so must ask for its inbox)."""
        return any((rid, phase) not in self.handled and not self._masked_waits(rid, phase) for rid, phase, _ in hint)

    def _masked_waits(self, rid: str, phase: str) -> bool:
        if phase != MASKED or rid not in self.configs:
            return False
        public = self.configs[rid][1]
        return self.closed_until < _start_of(public) + int(public["window_seconds"])

    def step(self, hint: list[tuple[str, str, int]] | None = None) -> int:
        """Answer every phase due; returns how many messages were sent. Never raises on a refusal.

        With the poll's hint (``parse_hint``) the agent asks ``GET /api/v1/rounds`` only when the
        hint names a phase it has not dealt with; without one it asks every time."""
        if hint is not None:
            hinted = {rid for rid, _, _ in hint}
            self.handled = {h for h in self.handled if h[0] in hinted}
            if not self.due(hint):
                self._count("not_asked")
                return 0
        self._count("asked")
        listing = self.client.get_json("/api/v1/rounds").get("rounds", [])
        open_ids = {e["round"] for e in listing}
        for rid in [r for r in self.states if r not in open_ids]:
            self.states.pop(rid, None)
            self.configs.pop(rid, None)
        self.waiting &= open_ids
        self.outbox: list[dict[str, Any]] = []
        for entry in listing:
            if entry.get("answered"):
                continue
            try:
                self._answer(entry)
            except Refusal as e:  # the server sent something this device will not act on
                self._count(f"refused_{e.code}")
                log.warning("round %s: refusing the server's %s: %s", entry["round"], entry.get("phase"), e.message)
                self.states.pop(entry["round"], None)
            except Rejected as e:  # the server refused our message: this round goes on without us
                self._count(f"rejected_{e.code}")
                log.warning("round %s: server refused our %s: %s", entry["round"], entry.get("phase"), e)
                self.states.pop(entry["round"], None)
        sent = self._send(self.outbox)
        listed = {(e["round"], e.get("phase")) for e in listing}
        self.handled |= {p for p in listed if p[0] not in self.waiting}
        self.handled |= {(rid, phase) for rid, phase, _ in hint or [] if (rid, phase) not in listed}  # stale hint
        return sent

    def _config(self, rid: str) -> tuple[RoundConfig, dict[str, Any]]:
        if rid not in self.configs:
            body = self.client.get_json(f"/api/v1/rounds/{rid}")
            self.configs[rid] = (config_from_wire(body), body)
        return self.configs[rid]

    def _post(self, rid: str, phase: str, wire: dict[str, Any]) -> int:
        """Queue the message: a poll's answers (its health and drift rounds, …) go in one request."""
        self.outbox.append({"round": rid, "phase": phase, "message": wire})
        return 1

    def _send(self, outbox: list[dict[str, Any]]) -> int:
        """``POST /api/v1/rounds/answers`` with the poll's messages; a refused one drops this device
        from that round only. Returns how many the server took."""
        if not outbox:
            return 0
        try:
            results = self.client.post_json("/api/v1/rounds/answers", {"answers": outbox}).get("results", [])
        except Rejected as e:  # the whole request refused: none of these rounds goes on with us
            for a in outbox:
                self._count(f"rejected_{e.code}")
                self.states.pop(a["round"], None)
            log.warning("rounds: server refused our answers: %s", e)
            return 0
        taken = 0
        for a, res in zip(outbox, results, strict=False):
            if "error" in res:
                code = (res.get("error") or {}).get("code", "refused")
                self._count(f"rejected_{code}")
                log.warning("round %s: server refused our %s: %s", a["round"], a["phase"], res.get("error"))
                self.states.pop(a["round"], None)
            else:
                self._count(f"sent_{a['phase']}")
                taken += 1
        return taken

    def _answer(self, entry: dict[str, Any]) -> int:
        rid, phase, inbox = entry["round"], entry["phase"], entry.get("inbox")
        cfg, public = self._config(rid)
        if phase == ADVERTISE:
            self.states[rid], msg = sa.advertise(cfg, int(entry["index"]), self.identity)
            return self._post(rid, phase, msg.to_wire())
        state = self.states.get(rid)
        if state is None:
            return 0  # joined late or restarted: a dropout of this round
        if phase == SHARE:
            keys = [AdvertiseKeys.from_wire(a) for a in inbox or []]
            self.states[rid], msg = sa.share_keys(state, keys, self.identity)
            return self._post(rid, phase, msg.to_wire())
        if phase == MASKED:
            x = self._contribution(public)
            if x is None:
                self.waiting.add(rid)
                return 0  # the round's window is not over yet on this device
            self.waiting.discard(rid)
            shares = [EncryptedShare.from_wire(s) for s in inbox or []]
            noise = dpnoise.DeviceNoise(Fraction(public["noise"]["sigma2"]), int(public["noise"]["bound"]))
            noisy = x + dpnoise.sample_noise(cfg.vector_length, noise)
            self.states[rid], msg = sa.masked_input(state, shares, noisy)
            self.sent[rid] = noisy
            return self._post(rid, phase, msg.to_wire())
        if phase == UNMASK:
            self.states[rid], msg = sa.unmask(state, UnmaskRequest.from_wire(inbox))
            return self._post(rid, phase, msg.to_wire())
        return 0

    def _contribution(self, public: dict[str, Any]) -> np.ndarray | None:
        start = _start_of(public)
        if self.closed_until < start + int(public["window_seconds"]):
            return None  # the agent has not closed the round's window yet (see ``closed_until``)
        length = int(public["vector_length"])
        vec = self.vectors.get((public["model"], public["version"], start), {}).get(public["budget"])
        if vec is None:
            return np.zeros(length, dtype=np.int64)  # idle (or not running then): participation 0
        if vec.shape != (length,):
            self._count("layout_mismatch")
            return np.zeros(length, dtype=np.int64)
        return vec


def _start_of(public: dict[str, Any]) -> int:
    """The round's window start (epoch seconds) from its public configuration."""
    from datetime import datetime

    return int(datetime.fromisoformat(public["window_start"].replace("Z", "+00:00")).timestamp())
