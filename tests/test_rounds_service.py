"""Secure-aggregation rounds through the device API on real PostgreSQL and Redis (issue 11 phase 2).

Devices here are the real client state machine (agent/secagg/client.py) talking HTTP to the Django
test client; phases are closed by the service the Celery tasks call. What is checked: the unmasked
sum equals the sum of what the devices meant to send (with and without dropouts), every bad message
gets its 4xx code (never a 500, never a wrong sum), a group below t ends ``failed`` with a reason,
and the server keeps no device's vector.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection
from django.test import Client

from agent.encoding import encode
from agent.secagg import client as cl
from agent.secagg.config import RoundConfig
from agent.secagg.messages import AdvertiseKeys, EncryptedShare, UnmaskRequest, b64, unb64
from agent.secagg.primitives import identity_public_bytes
from telemetry import rounds
from telemetry.models import AggRound, RoundMember, RoundMessage
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime.now(UTC) + timedelta(seconds=600)


@dataclass
class Dev:
    device: Any
    token: str
    identity: Ed25519PrivateKey
    http: Client = field(default_factory=Client)
    state: cl.ClientState | None = None
    x: np.ndarray | None = None
    masked: bytes = b""

    def get(self, path: str) -> Any:
        return self.http.get(path, HTTP_AUTHORIZATION=f"Bearer {self.token}")

    def post(self, path: str, body: Any) -> Any:
        return self.http.post(path, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {self.token}")


@pytest.fixture(autouse=True)
def _exact(settings: Any) -> None:
    settings.EDGEFLEET_ROUND_NOISE = False  # exact sums; noise has its own tests (test_dp_noise.py)
    settings.EDGEFLEET_ROUND_PHASE_SECONDS = 3600
    settings.EDGEFLEET_TELEMETRY_WINDOW = 300


def enrol(n: int, version: Any) -> list[Dev]:
    from fleet import services

    _, plain = factories.enrollment_key()
    out = []
    for i in range(n):
        sk = Ed25519PrivateKey.generate()
        done = services.enroll(
            plain, name=f"d{i}", hardware={}, labels={}, agent_version="t", identity_key=b64(identity_public_bytes(sk))
        )
        done.device.installed = {version.model.name: version.label}
        done.device.save(update_fields=["installed"])
        out.append(Dev(done.device, done.token, sk))
    return out


@pytest.fixture
def version() -> Any:
    return factories.staged_version()


@pytest.fixture
def devs(version: Any) -> list[Dev]:
    return enrol(20, version)


def health_round(version: Any, devs: list[Dev]) -> AggRound:
    start = datetime.fromtimestamp(int(NOW.timestamp()) // 300 * 300, tz=UTC)
    return rounds.form_round(version, rounds.HEALTH, start, 300, 0, [d.device for d in devs], NOW)


def config_from(body: dict) -> RoundConfig:
    return RoundConfig(
        round_id=body["round"],
        n=body["n"],
        k=body["k"],
        t=body["t"],
        vector_length=body["vector_length"],
        graph_seed=unb64(body["graph_seed"], 32, "graph_seed"),
        identity_keys={int(i): unb64(k, 32, "key") for i, k in body["identity_keys"].items()},
        ring_bits=body["ring_bits"],
        min_survivors=body["min_survivors"],
    )


def listing(d: Dev, round_id: str) -> dict:
    resp = d.get("/api/v1/rounds")
    assert resp.status_code == 200, resp.content
    return next(e for e in resp.json()["rounds"] if e["round"] == round_id)


def contribution(r: AggRound, rng: np.random.Generator) -> np.ndarray:
    layout = rounds.layout_from_json(r.layout)
    active = bool(rng.random() < 0.8)
    rows = float(rng.integers(1, 500))
    return encode(
        layout, active, {"latency": rng.integers(0, 50, size=12)}, {"error_fraction": (rng.integers(0, rows), rows)}
    )


def advertise_all(r: AggRound, devs: list[Dev], skip: set[int] = frozenset()) -> RoundConfig:
    cfg = config_from(devs[0].get(f"/api/v1/rounds/{r.id}").json())
    for d in devs:
        e = listing(d, r.id)
        assert e["phase"] == "advertise" and not e["answered"]
        if e["index"] in skip:
            continue
        d.state, msg = cl.advertise(cfg, e["index"], d.identity)
        resp = d.post(f"/api/v1/rounds/{r.id}/advertise", msg.to_wire())
        assert resp.status_code == 200, resp.content
    return cfg


def share_all(r: AggRound, devs: list[Dev], skip: set[int] = frozenset()) -> None:
    for d in devs:
        if d.state is None:
            continue
        e = listing(d, r.id)
        assert e["phase"] == "share"
        if e["index"] in skip:
            d.state = None
            continue
        keys = [AdvertiseKeys.from_wire(a) for a in e["inbox"]]
        d.state, msg = cl.share_keys(d.state, keys, d.identity)
        resp = d.post(f"/api/v1/rounds/{r.id}/share", msg.to_wire())
        assert resp.status_code == 200, resp.content


def mask_all(r: AggRound, devs: list[Dev], rng: np.random.Generator, skip: set[int] = frozenset()) -> None:
    for d in devs:
        if d.state is None:
            continue
        e = listing(d, r.id)
        assert e["phase"] == "masked"
        if e["index"] in skip:
            d.state = None
            continue
        d.x = contribution(r, rng)
        shares = [EncryptedShare.from_wire(s) for s in e["inbox"]]
        d.state, msg = cl.masked_input(d.state, shares, d.x)
        d.masked = msg.vector
        resp = d.post(f"/api/v1/rounds/{r.id}/masked", msg.to_wire())
        assert resp.status_code == 200, resp.content


def unmask_all(r: AggRound, devs: list[Dev]) -> None:
    for d in devs:
        if d.state is None:
            continue
        e = listing(d, r.id)
        assert e["phase"] == "unmask"
        d.state, msg = cl.unmask(d.state, UnmaskRequest.from_wire(e["inbox"]))
        resp = d.post(f"/api/v1/rounds/{r.id}/unmask", msg.to_wire())
        assert resp.status_code == 200, resp.content


def step(r: AggRound) -> AggRound:
    rounds.advance(r.id, NOW + timedelta(seconds=400), force=True)
    return AggRound.objects.get(id=r.id)


def run(r: AggRound, devs: list[Dev], drop: dict[str, set[int]] | None = None, seed: int = 1) -> AggRound:
    drop = drop or {}
    rng = np.random.default_rng(seed)
    advertise_all(r, devs, drop.get("advertise", set()))
    r = step(r)
    if r.phase != "share":
        return r
    share_all(r, devs, drop.get("share", set()))
    r = step(r)
    if r.phase != "masked":
        return r
    mask_all(r, devs, rng, drop.get("masked", set()))
    r = step(r)
    if r.phase != "unmask":
        return r
    unmask_all(r, devs)
    return step(r)


def expected_sum(devs: list[Dev]) -> list[int]:
    return [int(v) for v in sum(d.x for d in devs if d.x is not None and d.state is not None)]


# ---- the sum --------------------------------------------------------------------------------------


def test_sum_is_exact_without_dropouts(version: Any, devs: list[Dev]) -> None:
    r = run(health_round(version, devs), devs)
    assert r.phase == "done", r.reason
    assert r.result == expected_sum(devs)
    assert not r.void and r.reason == ""
    assert sorted(r.u3) == list(range(1, 21))
    # Key material is gone; only the sum and operational facts remain.
    assert not RoundMessage.objects.filter(round=r).exists()
    assert r.running_sum is None
    assert set(RoundMember.objects.filter(round=r).values_list("reached", flat=True)) == {"unmask"}
    assert devs[0].get("/api/v1/rounds").json()["rounds"] == []


def test_sum_is_exact_with_dropouts_at_every_phase(version: Any, devs: list[Dev]) -> None:
    r = health_round(version, devs)
    # Complete graph, n = 20, t = 14: up to 5 may drop in all.
    drop = {"advertise": {3}, "share": {7, 11}, "masked": {15, 19}}
    r = run(r, devs, drop)
    assert r.phase == "done", r.reason
    assert len(r.u3) == 15
    assert r.result == expected_sum(devs)
    dropped = dict(RoundMember.objects.filter(round=r).exclude(dropped="").values_list("index", "dropped"))
    assert dropped == {3: "advertise", 7: "share", 11: "share", 15: "masked", 19: "masked"}


def test_too_many_dropouts_fail_the_round_with_its_reason(version: Any, devs: list[Dev]) -> None:
    r = health_round(version, devs)
    r = run(r, devs, {"advertise": set(range(1, 8))})  # 13 left, t = 14
    assert r.phase == "failed"
    assert "fewer than the 14" in r.reason
    assert r.result is None and not RoundMessage.objects.filter(round=r).exists()
    # A message for the failed round is refused, not a 500.
    d = devs[10]
    resp = d.post(f"/api/v1/rounds/{r.id}/share", {"round": r.id})
    assert resp.status_code in (400, 409)


def test_dropout_at_unmask_past_threshold_fails_not_wrong_sum(version: Any, devs: list[Dev]) -> None:
    r = health_round(version, devs)
    rng = np.random.default_rng(2)
    advertise_all(r, devs)
    r = step(r)
    share_all(r, devs)
    r = step(r)
    mask_all(r, devs, rng)
    r = step(r)
    for d in devs[:13]:  # 13 answers: t = 14 shares of each seed are not there
        e = listing(d, r.id)
        d.state, msg = cl.unmask(d.state, UnmaskRequest.from_wire(e["inbox"]))
        assert d.post(f"/api/v1/rounds/{r.id}/unmask", msg.to_wire()).status_code == 200
    r = step(r)
    assert r.phase == "failed" and "cannot be removed" in r.reason and r.result is None


# ---- refusals ----------------------------------------------------------------------------------


def code(resp: Any) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]["code"]


def test_refusals_in_the_advertise_phase(version: Any, devs: list[Dev]) -> None:
    outsider = enrol(1, version)[0]
    r = health_round(version, devs)
    cfg = config_from(devs[0].get(f"/api/v1/rounds/{r.id}").json())
    d0, d1 = devs[0], devs[1]
    i0 = listing(d0, r.id)["index"]
    i1 = listing(d1, r.id)["index"]
    _, good = cl.advertise(cfg, i0, d0.identity)
    url = f"/api/v1/rounds/{r.id}/advertise"
    assert code(d0.post(f"/api/v1/rounds/{r.id}/masked", {"round": r.id, "sender": i0, "vector": ""})) == (
        409,
        "wrong_phase",
    )
    assert code(d0.post(f"/api/v1/rounds/{r.id}/bogus", good.to_wire())) == (400, "bad_message")
    assert code(d0.post("/api/v1/rounds/nope/advertise", good.to_wire())) == (404, "unknown_round")
    assert code(d0.post(url, {**good.to_wire(), "round": "other"})) == (400, "wrong_round")
    assert code(d0.post(url, {**good.to_wire(), "extra": 1})) == (400, "bad_message")
    assert code(d0.post(url, [1, 2])) == (400, "bad_message")
    # Another member's index (impersonation) and a device outside the group.
    assert code(d0.post(url, {**good.to_wire(), "sender": i1})) == (403, "not_in_round")
    assert code(outsider.post(url, good.to_wire())) == (403, "not_in_round")
    assert outsider.get(f"/api/v1/rounds/{r.id}").status_code == 404
    # Keys signed by someone else's identity key.
    _, forged = cl.advertise(cfg, i1, d1.identity)
    forged_for_d0 = {**forged.to_wire(), "sender": i0}
    assert code(d0.post(url, forged_for_d0)) == (403, "bad_signature")
    assert d0.post(url, good.to_wire()).status_code == 200
    assert code(d0.post(url, good.to_wire())) == (409, "replay")
    refused = RoundMember.objects.get(round=r, index=i0)
    assert refused.refusals >= 7 and refused.last_refusal == "advertise: replay"
    # Late: after the phase's deadline, even before the job closed it.
    _, late = cl.advertise(cfg, i1, d1.identity)
    r.deadline = datetime(2020, 1, 1, tzinfo=UTC)
    r.save(update_fields=["deadline"])
    assert code(d1.post(url, late.to_wire())) == (409, "late")
    # Nothing of this reached the sum or broke the round.
    assert AggRound.objects.get(id=r.id).phase == "advertise"


def test_refusals_in_later_phases(version: Any, devs: list[Dev]) -> None:
    r = health_round(version, devs)
    rng = np.random.default_rng(3)
    cfg = advertise_all(r, devs)
    r = step(r)
    d0 = devs[0]
    e0 = listing(d0, r.id)
    i0 = e0["index"]
    # A late advertise in the share phase.
    _, again = cl.advertise(cfg, i0, d0.identity)
    assert code(d0.post(f"/api/v1/rounds/{r.id}/advertise", again.to_wire())) == (409, "late")
    # Shares addressed to the wrong set (one neighbour left out).
    keys = [AdvertiseKeys.from_wire(a) for a in e0["inbox"]]
    _, msg = cl.share_keys(d0.state, keys, d0.identity)
    wire = msg.to_wire()
    short = {**wire, "shares": wire["shares"][1:]}
    assert code(d0.post(f"/api/v1/rounds/{r.id}/share", short)) == (400, "not_neighbour")
    misaddressed = {**wire, "shares": [{**wire["shares"][0], "to": i0}, *wire["shares"][1:]]}
    assert code(d0.post(f"/api/v1/rounds/{r.id}/share", misaddressed)) == (400, "not_neighbour")
    share_all(r, devs)
    r = step(r)
    # Wrong vector length, then a good vector, then its replay.
    e0 = listing(d0, r.id)
    d0.x = contribution(r, rng)
    d0.state, good = cl.masked_input(d0.state, [EncryptedShare.from_wire(s) for s in e0["inbox"]], d0.x)
    d0.masked = good.vector
    short_vec = {**good.to_wire(), "vector": b64(good.vector[:-4])}
    assert code(d0.post(f"/api/v1/rounds/{r.id}/masked", short_vec)) == (400, "wrong_length")
    assert d0.post(f"/api/v1/rounds/{r.id}/masked", good.to_wire()).status_code == 200
    assert code(d0.post(f"/api/v1/rounds/{r.id}/masked", good.to_wire())) == (409, "replay")
    mask_all(r, devs[1:], rng)
    r = step(r)
    # Unmask: a share that does not match its commitment, then the good answer.
    e0 = listing(d0, r.id)
    d0.state, reveal = cl.unmask(d0.state, UnmaskRequest.from_wire(e0["inbox"]))
    w = reveal.to_wire()
    owner = next(iter(w["b_shares"]))
    bad = {**w, "b_shares": {**w["b_shares"], owner: b64(bytes(33))}}
    assert code(d0.post(f"/api/v1/rounds/{r.id}/unmask", bad)) == (400, "bad_share")
    assert d0.post(f"/api/v1/rounds/{r.id}/unmask", w).status_code == 200
    unmask_all(r, devs[1:])
    r = step(r)
    assert r.phase == "done" and r.result == expected_sum(devs)


def test_enrol_refuses_a_bad_identity_key(client: Client) -> None:
    _, plain = factories.enrollment_key()
    body = {"enrollment_key": plain, "identity_key": "x" * 42}
    resp = client.post("/api/v1/enroll", body, content_type="application/json")
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "identity_key"


# ---- what the server keeps ---------------------------------------------------------------------


def _all_rows_text() -> str:
    """Every row of every table, as text (bytea as hex), for looking for a device's vector."""
    out = []
    with connection.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for (table,) in cur.fetchall():
            cur.execute(f'SELECT * FROM "{table}"')  # table names from the catalogue
            for row in cur.fetchall():
                out.append(" ".join(bytes(v).hex() if isinstance(v, memoryview | bytes) else str(v) for v in row))
    return "\n".join(out)


def _redis_text() -> str:
    from django.conf import settings
    from redis import Redis

    r = Redis.from_url(settings.REDIS_URL)
    parts = []
    for key in r.scan_iter(count=1000):
        if r.type(key) == b"string":
            parts.append((r.get(key) or b"").hex())
    return "\n".join(parts)


def test_the_server_never_holds_one_devices_vector(version: Any, devs: list[Dev]) -> None:
    r = health_round(version, devs)
    rng = np.random.default_rng(4)
    advertise_all(r, devs)
    r = step(r)
    share_all(r, devs)
    r = step(r)
    mask_all(r, devs, rng)
    # Mid-round: the masked vectors are in, not yet unmasked.
    for stage in ("masked", "done"):
        stored = _all_rows_text() + "\n" + _redis_text()
        for d in devs:
            assert d.masked.hex() not in stored
            assert b64(d.masked) not in stored
            assert base64.b64encode(d.masked).decode() not in stored
            plain = rounds.config_of(r).ring.to_bytes(rounds.config_of(r).ring.reduce(d.x))
            assert plain.hex() not in stored
        if stage == "masked":
            r = step(r)
            unmask_all(r, devs)
            r = step(r)
    assert r.phase == "done" and r.result == expected_sum(devs)


def test_form_rounds_groups_devices_running_a_version(version: Any, settings: Any) -> None:
    settings.EDGEFLEET_ROUND_BUDGETS = "health"
    devs = enrol(45, version)
    no_key = factories.device()[0]
    no_key.installed = {version.model.name: version.label}
    no_key.save(update_fields=["installed"])
    assert rounds.form_rounds(NOW) == 2  # 45 devices: two groups of 22/23 (≥ 20 each)
    assert rounds.form_rounds(NOW) == 0  # once per window
    sizes = sorted(AggRound.objects.values_list("n", flat=True))
    assert sizes == [22, 23]
    assert not RoundMember.objects.filter(device=no_key).exists()
    assert RoundMember.objects.filter(device__in=[d.device for d in devs]).count() == 45


def test_below_min_cohort_forms_nothing(version: Any, settings: Any) -> None:
    enrol(19, version)
    assert rounds.form_rounds(NOW) == 0
    enrol(1, version)
    assert rounds.form_rounds(NOW) == 2  # exactly 20: one group, one round per budget
