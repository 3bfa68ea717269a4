"""Manifest poll throughput and latency with 100,000 enrolled devices, under gunicorn, on this machine.

Measures in one run and one server configuration (gunicorn, ``--workers`` x ``--threads``, default
2 x 4 as deployed): (a) a trivial Django JSON view (/healthz); (b) GET /api/v1/manifest for a random
device among all of them, 200 and 304 (If-None-Match). Every device's signed manifest is made ready
in Redis before the server starts (as its first poll would). A worker's first poll starts its bulk
warming from Redis (fleet/manifests.py: ``warm``), so (b) is what a worker answers a few seconds
after it started, for any device. (c) the same for ``--hot`` devices every worker has served: the
process-memory path. (d) (b) while another process revokes-and-forgets ``--forgets`` random devices
a second (fleet/epochs.py: per-device forgetting; those devices then answer 403). ``--cold`` adds
(e): (b) from workers started with ``EDGEFLEET_POLL_WARM=0``, where a device's first poll in a
worker is one Redis round trip (the worst steady state, e.g. before warming finishes). Load comes
from wrk (``apt-get install -y wrk``) with a Lua script that picks a random device per request.
Prints figures; asserts nothing.

    .venv/bin/python bench/poll_throughput.py [--devices 100000] [--seconds 10] [--rounds 3] [--connections 16]
        [--workers 2] [--threads 4] [--cold] [--reuse]

Uses its own PostgreSQL database (edgefleet_bench_poll) and Redis db 11 on 127.0.0.1; both are reset
(``--reuse`` keeps them from the previous run with the same ``--devices``, skipping the minutes of
signing 100,000 manifests; revoked devices are restored first).
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _server import django_env, fresh_database, start_gunicorn

DB = "edgefleet_bench_poll"
REDIS = "redis://127.0.0.1:6379/11"
PORT = 18731  # not 8765: other benches and demos use it


def populate(n: int) -> list[tuple[str, str]]:
    """Bulk-insert ``n`` devices and a release; warm the caches; return (token, etag) per device."""
    import django

    django.setup()
    import redis
    from django.core.cache import cache

    from fleet import manifests
    from fleet.auth import DeviceSnapshot, hash_token, token_key
    from fleet.models import Cohort, Device
    from rollout import manifest
    from tests import factories

    redis.Redis.from_url(REDIS).flushdb()
    t0 = time.perf_counter()
    hw_small = {"arch": "armv7", "cores": 4, "ram_mb": 512, "accelerator": "none"}
    hw_big = {"arch": "aarch64", "cores": 4, "ram_mb": 4096, "accelerator": "cuda"}
    tokens = [f"efd_bench_{i:07d}" for i in range(n)]
    devices = []
    for i, tok in enumerate(tokens):
        devices.append(
            Device(
                name=f"bench-{i}",
                labels={"region": ["eu", "us", "ap"][i % 3], "hw": ["rpi4", "jetson"][i % 2]},
                hardware=hw_small if i % 2 == 0 else hw_big,
                token_hash=hash_token(tok),
                token_prefix=tok[:10],
            )
        )
    Device.objects.bulk_create(devices, batch_size=5000)
    print(f"inserted {n} devices in {time.perf_counter() - t0:.1f} s")

    v1 = factories.staged_version("fraud", "v1", seed=1, int8=True)
    v2 = factories.staged_version("fraud", "v2", seed=2, int8=True)
    cam = factories.staged_version("cam", "v1", seed=3, n_features=8)
    eu = Cohort.objects.create(name="eu", selector="region=eu, hw in (rpi4, jetson)")
    factories.release(v1)
    factories.release(v2, cohort=eu)
    factories.release(cam)

    t0 = time.perf_counter()
    state = manifest.load_state()
    out, batch = [], {}
    for d in devices:
        batch[token_key(d.token_hash)] = DeviceSnapshot.of(d).as_dict()
        if len(batch) >= 2000:
            cache.set_many(batch, 24 * 3600)
            batch = {}
    cache.set_many(batch, 24 * 3600)
    for tok in tokens:
        out.append((tok, manifests.poll(tok).etag))  # signed and stored in Redis, as a first poll does
    print(f"made {n} ready signed manifests (Redis) in {time.perf_counter() - t0:.1f} s (gen {state.generation})")
    return out


def lua_script(path: Path, pairs: list[tuple[str, str]], with_etag: bool) -> None:
    """A wrk script that reads (token, etag) lines from a file (a 100,000-entry Lua literal is too big)."""
    data = path.with_suffix(".txt")
    data.write_text("".join(f"{tok} {etag}\n" for tok, etag in pairs))
    etag_line = '  h["If-None-Match"] = p[2]\n' if with_etag else ""
    path.write_text(
        "local t = {}\n"
        f'for line in io.lines("{data}") do\n'
        '  local tok, etag = line:match("^(%S+) (%S+)$")\n'
        "  t[#t + 1] = {tok, etag}\n"
        "end\n"
        "math.randomseed(os.time())\n"
        "request = function()\n"
        "  local p = t[math.random(#t)]\n"
        '  local h = {["Authorization"] = "Bearer " .. p[1]}\n'
        f"{etag_line}"
        '  return wrk.format("GET", "/api/v1/manifest", h)\n'
        "end\n"
    )


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", str(script)]
    text = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", text)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "errors": int(non2xx.group(1)) if non2xx else 0}


def profile_workers(master: int, folder: str, name: str, seconds: int) -> list[subprocess.Popen]:
    """py-spy each gunicorn worker for the run (collapsed stacks, for finding where the time goes)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return [
        subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                pid,
                "--duration",
                str(seconds),
                "--format",
                "raw",
                "--nonblocking",
                "-o",
                f"{folder}/{slug}-{pid}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in kids
    ]


def prepare(args: argparse.Namespace, env: dict[str, str], pairs_file: Path) -> list[tuple[str, str]]:
    """Devices and their ready manifests: made now, or (``--reuse``) kept from the previous run."""
    import redis

    if args.reuse and pairs_file.exists() and redis.Redis.from_url(REDIS).dbsize() > args.devices:
        pairs = [tuple(line.split()) for line in pairs_file.read_text().splitlines()]
        if len(pairs) == args.devices:
            import django

            django.setup()
            from fleet import manifests
            from fleet.auth import forget_device, hash_token
            from fleet.models import Device

            revoked = list(Device.objects.filter(token_revoked_at__isnull=False).values_list("token_hash", flat=True))
            Device.objects.filter(token_revoked_at__isnull=False).update(token_revoked_at=None)
            by_hash = {hash_token(tok): tok for tok, _ in pairs}
            for th in revoked:
                forget_device(th)
                manifests.poll(by_hash[th])  # ready again, as before the last run
            print(f"reusing {len(pairs)} devices (restored {len(revoked)} revoked)")
            return pairs
    fresh_database(DB, env)
    pairs = populate(args.devices)
    pairs_file.write_text("".join(f"{tok} {etag}\n" for tok, etag in pairs))
    return pairs


def forget_churn(pairs: list[tuple[str, str]], per_second: float, stop: threading.Event) -> None:
    """Revoke random devices as an operator would (fleet.services.revoke_token), ``per_second``."""
    import random

    from fleet import services
    from fleet.auth import hash_token
    from fleet.models import Device

    rng = random.Random(7)
    while not stop.wait(1 / per_second):
        tok = rng.choice(pairs)[0]
        device = Device.objects.filter(token_hash=hash_token(tok)).first()
        if device is not None and device.token_revoked_at is None:
            services.revoke_token(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every path")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument(
        "--worker-class", default="gthread", help="gunicorn -k (sync: one request at a time, no keep-alive)"
    )
    ap.add_argument("--warmup", type=int, default=10, help="seconds of polls to warm the workers on the hot devices")
    ap.add_argument("--hot", type=int, default=2000, help="devices in the process-warm runs")
    ap.add_argument("--forgets", type=float, default=10.0, help="revocations per second during run (d)")
    ap.add_argument("--cold", action="store_true", help="also measure workers that do not warm from Redis")
    ap.add_argument("--reuse", action="store_true", help="keep the previous run's devices and manifests")
    ap.add_argument("--profile", default="", help="directory: py-spy the workers during each manifest run")
    args = ap.parse_args()
    if args.worker_class == "sync":
        args.threads = 1  # gunicorn runs gthread instead when sync is given more than one thread
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk")

    import socket

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", PORT)) == 0:
            sys.exit(f"port {PORT} is in use: another server would answer the bench")
    data_dir = Path(tempfile.gettempdir()) / "edgefleet-bench-poll"  # kept for --reuse (the signing key)
    if not args.reuse:
        shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(exist_ok=True)
    # a 403 still logs "Forbidden" (django.request), as in production
    # (django_env: rate-limit buckets too large to empty, so every poll pays for the check, none is refused)
    env = django_env(DB, REDIS, str(data_dir), LOG_LEVEL="WARNING")
    work = data_dir
    pairs = prepare(args, env, work / "pairs.txt")
    lua_script(work / "manifest.lua", pairs, with_etag=False)
    lua_script(work / "manifest304.lua", pairs, with_etag=True)
    lua_script(work / "hot.lua", pairs[: args.hot], with_etag=False)
    lua_script(work / "hot304.lua", pairs[: args.hot], with_etag=True)

    base = f"http://127.0.0.1:{PORT}"
    results: dict[str, list[dict[str, float]]] = {}
    latest = {"trivial": 1.0}

    def run(name: str, script: Path | None) -> None:
        url = base + ("/api/v1/manifest" if script else "/healthz")
        spies = profile_workers(server.pid, args.profile, name, args.seconds) if args.profile else []
        got = wrk(url, args.seconds, args.connections, script)
        latest["trivial"] = got["rps"] if script is None else latest["trivial"]
        got["x"] = got["rps"] / latest["trivial"]  # against the trivial view of the same round
        results.setdefault(name, []).append(got)
        for spy in spies:
            spy.wait(60)

    trivial, churned = "trivial JSON view (/healthz)", f"manifest 200, any, {args.forgets:g} revocations/s"
    loads = []
    gunicorn = ["-w", str(args.workers), "--threads", str(args.threads), "-k", args.worker_class]
    gunicorn += ["--log-level", "warning"]
    with start_gunicorn(env, PORT, *gunicorn) as server:
        tok, etag = pairs[0]
        req = urllib.request.Request(base + "/api/v1/manifest", headers={"Authorization": f"Bearer {tok}"})
        with urllib.request.urlopen(req) as r:
            assert r.headers["ETag"] == etag, "the server must serve the warmed manifest"
        wrk(base + "/healthz", 3, args.connections)  # warm both workers' imports and state
        wrk(base + "/api/v1/manifest", args.warmup, args.connections, work / "hot.lua")  # both workers
        for _ in range(args.rounds):  # interleaved: the other engineers' load drifts between runs
            loads.append(os.getloadavg()[0])
            run(trivial, None)
            run("manifest 200, any of all devices", work / "manifest.lua")
            run("manifest 304, any of all devices", work / "manifest304.lua")
            run(f"manifest 200, {args.hot} warm devices", work / "hot.lua")
            run(f"manifest 304, {args.hot} warm devices", work / "hot304.lua")
            if args.forgets > 0:
                stop = threading.Event()
                churn = threading.Thread(target=forget_churn, args=(pairs, args.forgets, stop), daemon=True)
                churn.start()
                run(churned, work / "manifest.lua")
                stop.set()
                churn.join(10)
    if args.cold:
        with start_gunicorn({**env, "EDGEFLEET_POLL_WARM": "0"}, PORT, *gunicorn) as server:
            wrk(base + "/healthz", 3, args.connections)
            for _ in range(args.rounds):
                run("trivial JSON view, unwarmed server", None)
                run("manifest 200, any, unwarmed workers", work / "manifest.lua")
    print(
        f"\n{args.devices} devices, gunicorn {args.workers} {args.worker_class} workers x {args.threads} threads, "
        f"wrk {args.connections} connections, {args.rounds} interleaved rounds of {args.seconds} s per path, "
        f"{os.cpu_count()} cores shared with wrk, 1-min load at each round: {', '.join(f'{x:.1f}' for x in loads)}"
    )
    print("medians over the rounds; ratio = median of (path / trivial in the same round)")
    print(f"{'path':44} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7} {'x trivial':>9}  req/s per round")
    for name, runs in results.items():
        pick = statistics.median
        rounds = " ".join(f"{r['rps']:.0f}" for r in runs)
        print(
            f"{name:44} {pick(r['rps'] for r in runs):7.0f} {pick(r['p50'] for r in runs):7.2f} "
            f"{pick(r['p99'] for r in runs):7.2f} {sum(int(r['errors']) for r in runs):7d} "
            f"{pick(r['x'] for r in runs):9.2f}  {rounds}"
        )
    print("goal: poll paths >= 0.8 x trivial and >= 1,700 polls/s; non-2xx: 403s of devices revoked by (d)")


if __name__ == "__main__":
    main()
