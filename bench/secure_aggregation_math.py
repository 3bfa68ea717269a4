"""Cost of one secure-aggregation round on the pure modules (no server, no network, no database).

For each group size n (SecAgg+ graph for 30 % design dropouts) and each dropout rate, runs a whole
round in one process with the real client and server state machines, the real encoding size
(8 features × 20 bins + 10 output bins + no-output bin + participation = 172 coordinates) and the
real exact noise sampler, and prints per device: client CPU (all four phases, noise included) and
bytes sent + received (the JSON wire form); per round: server CPU per device and the unmask time.
Reference: today's per-report ingest is ~0.19 ms of server time per report (5,206 reports/s in
DESIGN.md's measured facts). Prints figures; asserts nothing.

    .venv/bin/python bench/secure_aggregation_math.py [--sizes 100 300 1000] [--dropouts 0.1 0.3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.dpnoise import DeviceNoise, sample_noise
from agent.encoding import drift_layout, sensitivity
from agent.secagg import client as cl
from agent.secagg.server import ServerRound
from agent.secagg.simulation import make_round
from telemetry.accounting import calibrate

INGEST_MS_PER_REPORT = 1000 / 5206


def wire_bytes(obj) -> int:
    return len(json.dumps(obj, separators=(",", ":")).encode())


def one_round(n: int, dropout: float, seed: int) -> dict[str, float]:
    layout = drift_layout([(f"f{i}", 20) for i in range(8)], 10)
    members = make_round(n, layout.length, dropout=0.3, min_survivors=max(2, int(0.6 * n)))
    cfg, ids = members.config, members.identities
    cal = calibrate(4.0, 24, cfg.min_survivors, sensitivity(layout).l2, layout.length)
    noise = DeviceNoise.for_group(Fraction(cal.sigma2_device), n, layout.length)
    rng = np.random.default_rng(seed)
    gone = set(random.Random(seed).sample(range(1, n + 1), round(dropout * n)))
    drop_share, drop_masked = set(sorted(gone)[: len(gone) // 2]), set(sorted(gone)[len(gone) // 2 :])
    cpu: dict[int, float] = dict.fromkeys(range(1, n + 1), 0.0)
    sent: dict[int, int] = dict.fromkeys(range(1, n + 1), 0)
    recv: dict[int, int] = dict.fromkeys(range(1, n + 1), 0)
    server_cpu = 0.0
    server = ServerRound(cfg)
    states = {}

    def timed_server(fn, *a):
        nonlocal server_cpu
        t = time.process_time()
        out = fn(*a)
        server_cpu += time.process_time() - t
        return out

    for u in range(1, n + 1):
        t = time.process_time()
        states[u], msg = cl.advertise(cfg, u, ids[u])
        cpu[u] += time.process_time() - t
        sent[u] += wire_bytes(msg.to_wire())
        timed_server(server.receive_advertise, msg)
    keys = timed_server(server.close_advertise)
    for u in sorted(keys):
        recv[u] += sum(wire_bytes(a.to_wire()) for a in keys[u])
        if u in drop_share:
            continue
        t = time.process_time()
        states[u], msg = cl.share_keys(states[u], keys[u], ids[u])
        cpu[u] += time.process_time() - t
        sent[u] += wire_bytes(msg.to_wire())
        timed_server(server.receive_share_keys, msg)
    shares = timed_server(server.close_share_keys)
    for u in sorted(shares):
        recv[u] += sum(wire_bytes(s.to_wire()) for s in shares[u])
        if u in drop_masked:
            continue
        t = time.process_time()
        x = rng.integers(0, 60, layout.length) + sample_noise(layout.length, noise)
        states[u], msg = cl.masked_input(states[u], shares[u], x)
        cpu[u] += time.process_time() - t
        sent[u] += wire_bytes(msg.to_wire())
        timed_server(server.receive_masked, msg)
    req = timed_server(server.close_masked)
    for u in sorted(req.survivors):
        recv[u] += wire_bytes(req.to_wire())
        t = time.process_time()
        states[u], msg = cl.unmask(states[u], req)
        cpu[u] += time.process_time() - t
        sent[u] += wire_bytes(msg.to_wire())
        timed_server(server.receive_unmask, msg)
    t = time.process_time()
    total = server.finish()
    unmask = time.process_time() - t
    server_cpu += unmask
    assert total is not None, server.reason
    full = [u for u in range(1, n + 1) if u not in gone]  # devices that ran all four phases
    return {
        "n": n,
        "k": cfg.k,
        "t": cfg.t,
        "dropout": dropout,
        "client_cpu_ms_mean": 1000 * float(np.mean([cpu[u] for u in full])),
        "client_cpu_ms_max": 1000 * float(np.max([cpu[u] for u in full])),
        "client_kb_mean": float(np.mean([sent[u] + recv[u] for u in full])) / 1024,
        "client_kb_max": float(np.max([sent[u] + recv[u] for u in full])) / 1024,
        "server_cpu_ms_per_device": 1000 * server_cpu / n,
        "server_vs_ingest": (1000 * server_cpu / n) / INGEST_MS_PER_REPORT,
        "unmask_ms": 1000 * unmask,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--dropouts", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = [one_round(n, d, seed=n) for n in a.sizes for d in a.dropouts]
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    head = (
        f"{'n':>5} {'k':>3} {'t':>3} {'drop':>5} {'client ms':>10} {'max':>6} {'KB':>6} {'max':>6} "
        f"{'server ms/dev':>13} {'×ingest':>8} {'unmask ms':>10}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['n']:>5} {r['k']:>3} {r['t']:>3} {r['dropout']:>5.0%} {r['client_cpu_ms_mean']:>10.1f} "
            f"{r['client_cpu_ms_max']:>6.1f} {r['client_kb_mean']:>6.1f} {r['client_kb_max']:>6.1f} "
            f"{r['server_cpu_ms_per_device']:>13.3f} {r['server_vs_ingest']:>8.2f} {r['unmask_ms']:>10.1f}"
        )


if __name__ == "__main__":
    main()
