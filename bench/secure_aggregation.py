"""Secure aggregation through the server's real round service vs today's per-report ingest.

    .venv/bin/python bench/secure_aggregation.py [--sizes 100,300,1000] [--dropouts 0.1,0.3] [--json]

On a fresh PostgreSQL database (bench_secure_aggregation): for each group size n and dropout rate,
n devices (each with an Ed25519 identity key) run one drift round of a released version through
``telemetry.rounds`` (the same service calls the HTTP views make, without HTTP): the agents' side is
``agent.secagg.client`` with the real noise sampler (the default ε_day = 4 calibration). Dropouts:
half fall silent before dealing shares, half before sending their masked vector.

Figures: server CPU per device-round (this process's CPU in ``receive`` and ``advance``: Django,
ORM, the protocol's math; PostgreSQL's own CPU is not in it, as for ingest), unmask wall time (the
last ``advance``: reconstruct, PRG expansion, subtraction), the agent's CPU (its client calls and
noise) and bytes (its messages plus its inboxes, JSON) per round; and per-report ingest CPU
(``telemetry.ingest.ingest_reports``, batches of one report per device, as agents send them).
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


def one_round(n: int, dropout: float, version: Any, group: int) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent import dpnoise
    from agent.secagg import client as cl
    from agent.secagg.messages import AdvertiseKeys, EncryptedShare, UnmaskRequest, b64
    from agent.secagg.primitives import identity_public_bytes
    from fleet.auth import hash_token
    from fleet.models import Device
    from telemetry import rounds
    from telemetry.models import AggRound, RoundMember

    ids = {}
    devs = []
    for i in range(n):
        sk = Ed25519PrivateKey.generate()
        d = Device(name=f"b{group}-{i}", token_hash=hash_token(secrets.token_hex(16)))
        d.identity_key = b64(identity_public_bytes(sk))
        devs.append(d)
        ids[d.id] = sk
    Device.objects.bulk_create(devs)
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=group)
    r = rounds.form_round(version, rounds.DRIFT, start, 300, group, devs, datetime.now(UTC))
    index = dict(RoundMember.objects.filter(round=r).values_list("device_id", "index"))
    by_index = {index[d.id]: d for d in devs}
    cfg = rounds.config_of(r)
    public = rounds.public_config(r)
    noise = dpnoise.DeviceNoise(Fraction(public["noise"]["sigma2"]), int(public["noise"]["bound"]))
    rng = np.random.default_rng(group)
    order = list(range(1, n + 1))
    rng.shuffle(order)
    gone = round(dropout * n)
    drop_share, drop_masked = set(order[: gone // 2]), set(order[gone // 2 : gone])
    agent_cpu = dict.fromkeys(by_index, 0.0)
    agent_bytes = dict.fromkeys(by_index, 0)
    server_cpu = 0.0
    states: dict[int, Any] = {}
    layout = rounds.layout_from_json(r.layout)

    def serve(fn: Any, *a: Any) -> Any:
        nonlocal server_cpu
        t = time.process_time()
        out = fn(*a)
        server_cpu += time.process_time() - t
        return out

    def send(u: int, phase: str, wire: dict) -> None:
        agent_bytes[u] += len(json.dumps(wire))
        serve(rounds.receive, by_index[u].id, r.id, phase, wire)

    def inbox(u: int) -> Any:
        data = rounds._inbox(AggRound.objects.get(id=r.id), u)
        agent_bytes[u] += len(json.dumps(data))
        return data

    far = datetime.now(UTC)
    for u in by_index:
        t = time.process_time()
        states[u], msg = cl.advertise(cfg, u, ids[by_index[u].id])
        agent_cpu[u] += time.process_time() - t
        send(u, "advertise", msg.to_wire())
    serve(rounds.advance, r.id, far, True)
    for u in sorted(set(by_index) - drop_share):
        keys = [AdvertiseKeys.from_wire(a) for a in inbox(u)]
        t = time.process_time()
        states[u], msg = cl.share_keys(states[u], keys, ids[by_index[u].id])
        agent_cpu[u] += time.process_time() - t
        send(u, "share", msg.to_wire())
    serve(rounds.advance, r.id, far, True)
    for u in sorted(set(by_index) - drop_share - drop_masked):
        shares = [EncryptedShare.from_wire(s) for s in inbox(u)]
        t = time.process_time()
        x = np.zeros(layout.length, dtype=np.int64)  # an idle device: the cost does not depend on x
        x = x + dpnoise.sample_noise(layout.length, noise)
        states[u], msg = cl.masked_input(states[u], shares, x)
        agent_cpu[u] += time.process_time() - t
        send(u, "masked", msg.to_wire())
    serve(rounds.advance, r.id, far, True)
    survivors = sorted(set(by_index) - drop_share - drop_masked)
    for u in survivors:
        req = UnmaskRequest.from_wire(inbox(u))
        t = time.process_time()
        states[u], msg = cl.unmask(states[u], req)
        agent_cpu[u] += time.process_time() - t
        send(u, "unmask", msg.to_wire())
    before = server_cpu
    wall = time.perf_counter()
    serve(rounds.advance, r.id, far, True)
    unmask_wall = time.perf_counter() - wall
    unmask_cpu = server_cpu - before
    done = AggRound.objects.get(id=r.id)
    cpu_ms = [1000 * agent_cpu[u] for u in survivors]
    kb = [agent_bytes[u] / 1024 for u in survivors]
    return {
        "n": n,
        "k": r.k,
        "t": r.t,
        "dropout": dropout,
        "vector_length": r.vector_length,
        "phase": done.phase,
        "reason": done.reason,
        "server_cpu_ms_per_device": round(1000 * server_cpu / n, 3),
        "unmask_wall_ms": round(1000 * unmask_wall, 1),
        "unmask_cpu_ms": round(1000 * unmask_cpu, 1),
        "agent_cpu_ms_mean": round(statistics.fmean(cpu_ms), 1),
        "agent_cpu_ms_max": round(max(cpu_ms), 1),
        "agent_kb_mean": round(statistics.fmean(kb), 1),
        "agent_kb_max": round(max(kb), 1),
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
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    fresh_database("bench_secure_aggregation")
    from django.conf import settings

    settings.EDGEFLEET_ROUND_PHASE_SECONDS = 86400  # the bench measures work, not deadlines
    version = released_version()
    out: dict[str, Any] = {"rounds": []}
    group = 0
    for n in [int(s) for s in args.sizes.split(",")]:
        for p in [float(s) for s in args.dropouts.split(",")]:
            row = one_round(n, p, version, group)
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
