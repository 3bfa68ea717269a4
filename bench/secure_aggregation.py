"""Secure aggregation through the server's real round service vs today's per-report ingest.

    .venv/bin/python bench/secure_aggregation.py [--sizes 100,300,1000] [--dropouts 0.1,0.3]
        [--budgets health,drift] [--database bench_secure_aggregation] [--json]

On a fresh PostgreSQL database (``--database``, dropped first): for each group size n and dropout
rate, n devices (each with an Ed25519 identity key) run one window's rounds of a released version —
one per budget, as ``form_rounds`` forms them — through ``telemetry.rounds`` (the service calls the
HTTP views make, without HTTP), as the agent runs them: per phase one listing (``rounds_for``, the
GET /api/v1/rounds a poll hint triggers) and one batch of its answers to all its rounds
(``receive_many``, POST /api/v1/rounds/answers). The agents' side is ``agent.secagg.client`` with
the real noise sampler (the default ε_day = 4 calibration). Dropouts: half fall silent before
dealing shares, half before sending their masked vector.

Figures: server CPU per device-round (this process's CPU in listings, ``receive_many`` and
``advance``: Django, ORM, the protocol's math; PostgreSQL's own CPU is not in it, as for ingest),
unmask wall and CPU time per round (the last ``advance``: reconstruct, PRG expansion, subtraction),
the agent's CPU (its client calls and noise) and bytes (its messages plus its listings, JSON) per
round; and per-report ingest CPU (``telemetry.ingest.ingest_reports``, one report per call, as
agents send them).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
from _telemetry_setup import fresh_database, released_version


def one_window(n: int, dropout: float, version: Any, group: int, budgets: list[str]) -> dict[str, Any]:
    """One window's rounds (one per budget) over the same n devices, run as the agent runs them: per
    phase, each device reads its listing once (``rounds_for``) and sends its messages to all its
    rounds in one batch (``receive_many``, POST /api/v1/rounds/answers)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent import dpnoise
    from agent.secagg import client as cl
    from agent.secagg.messages import AdvertiseKeys, EncryptedShare, UnmaskRequest, b64
    from agent.secagg.primitives import identity_public_bytes
    from fleet.auth import hash_token
    from fleet.models import Device
    from telemetry import rounds
    from telemetry.models import AggRound, RoundMember

    keys = {}
    devs = []
    for i in range(n):
        sk = Ed25519PrivateKey.generate()
        d = Device(name=f"b{group}-{i}", token_hash=hash_token(secrets.token_hex(16)))
        d.identity_key = b64(identity_public_bytes(sk))
        devs.append(d)
        keys[d.id] = sk
    Device.objects.bulk_create(devs)
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=group)
    rs = [rounds.form_round(version, b, start, 300, group, devs, datetime.now(UTC)) for b in budgets]
    index = {r.id: dict(RoundMember.objects.filter(round=r).values_list("device_id", "index")) for r in rs}
    cfg = {r.id: rounds.config_of(r) for r in rs}
    public = {r.id: rounds.public_config(r) for r in rs}
    rng = np.random.default_rng(group)
    order = [d.id for d in devs]
    rng.shuffle(order)
    gone = round(dropout * n)
    drop_share, drop_masked = set(order[: gone // 2]), set(order[gone // 2 : gone])
    agent_cpu = {d.id: 0.0 for d in devs}
    agent_bytes = {d.id: 0 for d in devs}
    server_cpu = 0.0
    states: dict[tuple[str, Any], Any] = {}

    def serve(fn: Any, *a: Any) -> Any:
        nonlocal server_cpu
        t = time.process_time()
        out = fn(*a)
        server_cpu += time.process_time() - t
        return out

    def listing(dev: Any) -> dict[str, Any]:
        entries = serve(rounds.rounds_for, dev)
        agent_bytes[dev] += len(json.dumps({"rounds": entries}))
        return {e["round"]: e for e in entries}

    def send(dev: Any, phase: str, wires: dict[str, dict]) -> None:
        body = {"answers": [{"round": rid, "phase": phase, "message": w} for rid, w in wires.items()]}
        agent_bytes[dev] += len(json.dumps(body))
        out = serve(rounds.receive_many, dev, [(rid, phase, w) for rid, w in wires.items()])
        assert all(isinstance(x, dict) for x in out), out

    def agent(dev: Any, fn: Any, *a: Any) -> Any:
        t = time.process_time()
        out = fn(*a)
        agent_cpu[dev] += time.process_time() - t
        return out

    def close_all() -> None:
        for r in rs:
            serve(rounds.advance, r.id, far, True)

    far = datetime.now(UTC)
    for d in devs:
        wires = {}
        for r in rs:
            states[(r.id, d.id)], msg = agent(d.id, cl.advertise, cfg[r.id], index[r.id][d.id], keys[d.id])
            wires[r.id] = msg.to_wire()
        send(d.id, "advertise", wires)
    close_all()
    live = [d.id for d in devs if d.id not in drop_share]
    for dev in live:
        inbox, wires = listing(dev), {}
        for r in rs:
            adverts = [AdvertiseKeys.from_wire(a) for a in inbox[r.id]["inbox"]]
            states[(r.id, dev)], msg = agent(dev, cl.share_keys, states[(r.id, dev)], adverts, keys[dev])
            wires[r.id] = msg.to_wire()
        send(dev, "share", wires)
    close_all()
    survivors = [dev for dev in live if dev not in drop_masked]
    for dev in survivors:
        inbox, wires = listing(dev), {}
        for r in rs:
            shares = [EncryptedShare.from_wire(s) for s in inbox[r.id]["inbox"]]
            noise = dpnoise.DeviceNoise(Fraction(public[r.id]["noise"]["sigma2"]), int(public[r.id]["noise"]["bound"]))

            def masked(r: Any, dev: Any, shares: Any, noise: Any) -> Any:
                x = np.zeros(r.vector_length, dtype=np.int64)  # idle: the cost does not depend on x
                return cl.masked_input(states[(r.id, dev)], shares, x + dpnoise.sample_noise(r.vector_length, noise))

            states[(r.id, dev)], msg = agent(dev, masked, r, dev, shares, noise)
            wires[r.id] = msg.to_wire()
        send(dev, "masked", wires)
    close_all()
    for dev in survivors:
        inbox, wires = listing(dev), {}
        for r in rs:
            req = UnmaskRequest.from_wire(inbox[r.id]["inbox"])
            states[(r.id, dev)], msg = agent(dev, cl.unmask, states[(r.id, dev)], req)
            wires[r.id] = msg.to_wire()
        send(dev, "unmask", wires)
    before = server_cpu
    wall = time.perf_counter()
    close_all()
    unmask_wall = (time.perf_counter() - wall) / len(rs)
    unmask_cpu = (server_cpu - before) / len(rs)
    done = list(AggRound.objects.filter(id__in=[r.id for r in rs]))
    per_round = len(rs)
    cpu_ms = [1000 * agent_cpu[u] / per_round for u in survivors]
    kb = [agent_bytes[u] / 1024 / per_round for u in survivors]
    return {
        "n": n,
        "k": rs[0].k,
        "t": rs[0].t,
        "dropout": dropout,
        "rounds": [f"{r.budget}:{r.vector_length}" for r in rs],
        "phase": sorted({r.phase for r in done}),
        "reason": sorted({r.reason for r in done if r.reason}),
        "server_cpu_ms_per_device_round": round(1000 * server_cpu / (n * per_round), 3),
        "unmask_wall_ms_per_round": round(1000 * unmask_wall, 1),
        "unmask_cpu_ms_per_round": round(1000 * unmask_cpu, 1),
        "agent_cpu_ms_per_round_mean": round(statistics.fmean(cpu_ms), 1),
        "agent_cpu_ms_per_round_max": round(max(cpu_ms), 1),
        "agent_kb_per_round_mean": round(statistics.fmean(kb), 1),
        "agent_kb_per_round_max": round(max(kb), 1),
    }


def ingest_cost(version: Any, reports: int) -> float:
    """CPU ms per report of ``ingest_reports`` (one report per device and call, as agents send them)."""
    from django.conf import settings

    from fleet.auth import hash_token
    from fleet.models import Device
    from telemetry.api import ReportIn
    from tests.telemetry_support import report

    settings.EDGEFLEET_DP_DAILY_BUDGET = 1e9
    from telemetry.ingest import ingest_reports

    devs = [Device(name=f"i{i}", token_hash=hash_token(secrets.token_hex(16))) for i in range(reports)]
    Device.objects.bulk_create(devs)
    body = [ReportIn.model_validate(report(version)) for _ in devs]
    t = time.process_time()
    for d, rep in zip(devs, body, strict=True):
        out = ingest_reports(d.id, [rep])
        assert out["accepted"], out
    return 1000 * (time.process_time() - t) / reports


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,300,1000")
    ap.add_argument("--dropouts", default="0.1,0.3")
    ap.add_argument("--reports", type=int, default=300)
    ap.add_argument("--budgets", default="health,drift", help="one round per budget, same devices, as formed")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--database", default="bench_secure_aggregation", help="dropped and made afresh")
    args = ap.parse_args()
    fresh_database(args.database)
    from django.conf import settings

    settings.EDGEFLEET_ROUND_PHASE_SECONDS = 86400  # the bench measures work, not deadlines
    version = released_version()
    out: dict[str, Any] = {"rounds": []}
    group = 0
    for n in [int(s) for s in args.sizes.split(",")]:
        for p in [float(s) for s in args.dropouts.split(",")]:
            row = one_window(n, p, version, group, args.budgets.split(","))
            group += 1
            out["rounds"].append(row)
            if not args.json:
                print(json.dumps(row), flush=True)
    try:
        out["ingest_cpu_ms_per_report"] = round(ingest_cost(version, args.reports), 3)
    except Exception as e:  # the comparison is optional: say why it is missing
        out["ingest_error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
