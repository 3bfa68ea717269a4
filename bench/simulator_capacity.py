"""How many simulated devices one core sustains at a 60 s poll and 60 s telemetry interval.

A real gunicorn server (PostgreSQL + Redis) gets one released model; the simulator runs in a child
process pinned to ONE core. Time compression makes this quick: N devices at ``--speed s`` poll
every 60/s seconds, the same request rate and per-device work as N*s devices polling every 60 s.
For each level we print the simulator's CPU use of its core and the poll rate it achieved against
the target; a level is sustained when both keep up. Prints figures; asserts nothing.

    .venv/bin/python bench/simulator_capacity.py [--devices 100] [--speeds 10,30,60] [--seconds 30]

Each level gets a server whose telemetry window is the simulator's compressed one (60 s / speed,
whole seconds), as the window grid requires.

Uses its own PostgreSQL database (edgefleet_bench_agent) and Redis db 6 on 127.0.0.1; both are reset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _server import ROOT, django_env, fresh_database, start_gunicorn

DB = "edgefleet_bench_agent"
REDIS = "redis://127.0.0.1:6379/6"
PORT = 8771


def seed() -> str:
    """One staged version released to the whole fleet; returns a fresh enrollment key."""
    import django

    django.setup()
    from tests import factories

    factories.release(factories.staged_version(label="v1", seed=1, n_features=8))
    return factories.enrollment_key("bench", max_uses=None)[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--speeds", default="10,30,60")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=8, help="simulator threads")
    a = ap.parse_args()
    import redis

    data_dir = tempfile.mkdtemp(prefix="edgefleet-bench-sim-")
    env = django_env(DB, REDIS, data_dir)
    redis.Redis.from_url(REDIS).flushdb()
    fresh_database(DB, env)
    key = seed()
    base = f"http://127.0.0.1:{PORT}"
    rows = []
    log = open(Path(data_dir) / "simulator.log", "w")  # noqa: SIM115 (open for the whole run)
    gunicorn = ["-w", "2", "--threads", "4", "--log-level", "warning"]
    for speed in [float(s) for s in a.speeds.split(",")]:
        # the server's window is the simulator's compressed one: reports name windows of its grid
        server_env = {**env, "EDGEFLEET_TELEMETRY_WINDOW": str(round(60 / speed))}
        with start_gunicorn(server_env, PORT, *gunicorn, stderr=subprocess.DEVNULL):
            summary_file = Path(data_dir) / f"sim-{speed:g}.json"
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "agent.simulate",
                    "--server",
                    base,
                    "--enrollment-key",
                    key,
                    "--devices",
                    str(a.devices),
                    "--speed",
                    str(speed),
                    "--duration",
                    str(a.seconds),
                    "--poll-interval",
                    "60",
                    "--window",
                    "60",
                    "--workers",
                    str(a.workers),
                    "--summary-every",
                    "1000",
                    "--summary-file",
                    str(summary_file),
                    "--seed",
                    str(int(speed)),
                ],
                cwd=ROOT,
                env={**env, "ORT_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
                preexec_fn=lambda: os.sched_setaffinity(0, {0}),
                stdout=subprocess.DEVNULL,
                stderr=log,
                check=True,
            )
            wall = time.monotonic() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            s = json.loads(summary_file.read_text())
            target = a.devices * speed / 60 * a.seconds  # polls a perfect fleet would make
            rows.append(
                {
                    "equivalent_devices": int(a.devices * speed),
                    "polls_target": round(target),
                    "polls": s["polls"],
                    "keeps_up": round(s["polls"] / target, 2),
                    "reports_sent": s["reports_sent"],
                    "server_away": s["server_away"],
                    "cpu_of_one_core": round(cpu / wall, 2),
                    "cpu_ms_per_device_poll": round(cpu / max(1, s["polls"]) * 1000, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    best = max((r for r in rows if r["keeps_up"] >= 0.9), key=lambda r: r["equivalent_devices"], default=None)
    per_poll = min(r["cpu_ms_per_device_poll"] for r in rows)
    print(f"\ncost per device per 60 s (poll + inference call + window report): ~{per_poll:.1f} ms CPU")
    print(f"=> one core could carry about {int(60_000 / per_poll):,} devices at 60 s intervals (CPU bound)")
    if best:
        print(f"largest level measured that kept up (>= 90% of target polls): {best['equivalent_devices']:,} devices")
    print("(includes process start, enrollment and first download, which a steady fleet does not pay)")


if __name__ == "__main__":
    main()
