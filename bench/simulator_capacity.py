"""How many simulated devices one core sustains at a 60 s poll and 60 s telemetry interval.

A real gunicorn server (PostgreSQL + Redis) gets one released model; the simulator runs in a child
process pinned to ONE core. Time compression makes this quick: N devices at ``--speed s`` poll
every 60/s seconds, the same request rate and per-device work as N*s devices polling every 60 s.
For each level we print the simulator's CPU use of its core and the poll rate it achieved against
the target; a level is sustained when both keep up. Prints figures; asserts nothing.

    .venv/bin/python bench/simulator_capacity.py [--devices 100] [--speeds 10,30,60] [--seconds 30]

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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB = "edgefleet_bench_agent"
REDIS = "redis://127.0.0.1:6379/6"
PORT = 8771


def setup_env(data_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB}",
        REDIS_URL=REDIS,
        EDGEFLEET_DATA_DIR=data_dir,
        DJANGO_SETTINGS_MODULE="edgefleet.settings",
        DEBUG="0",
        SECRET_KEY="bench-only-secret-key-not-for-production-0123456789",
    )
    os.environ.update(env)
    return env


def reset() -> None:
    import psycopg2
    import redis

    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {DB}")
    conn.close()
    redis.Redis.from_url(REDIS).flushdb()


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

    data_dir = tempfile.mkdtemp(prefix="edgefleet-bench-sim-")
    env = setup_env(data_dir)
    reset()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    key = seed()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "edgefleet.wsgi",
            "-b",
            f"127.0.0.1:{PORT}",
            "-w",
            "2",
            "--threads",
            "4",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{PORT}"
    rows = []
    log = open(Path(data_dir) / "simulator.log", "w")  # noqa: SIM115 (open for the whole run)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        for speed in [float(s) for s in a.speeds.split(",")]:
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
    finally:
        server.terminate()
        server.wait(timeout=30)
    best = max((r for r in rows if r["keeps_up"] >= 0.9), key=lambda r: r["equivalent_devices"], default=None)
    per_poll = min(r["cpu_ms_per_device_poll"] for r in rows)
    print(f"\ncost per device per 60 s (poll + inference call + window report): ~{per_poll:.1f} ms CPU")
    print(f"=> one core could carry about {int(60_000 / per_poll):,} devices at 60 s intervals (CPU bound)")
    if best:
        print(f"largest level measured that kept up (>= 90% of target polls): {best['equivalent_devices']:,} devices")
    print("(includes process start, enrollment and first download, which a steady fleet does not pay)")


if __name__ == "__main__":
    main()
