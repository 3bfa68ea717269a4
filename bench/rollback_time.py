"""Time from "a version starts regressing" to "95% of its devices run the previous version again".

A real deployment on 127.0.0.1: gunicorn (2 workers x 4 threads), a Celery worker and Celery beat
(the gate job every G seconds, as ``EDGEFLEET_GATE_INTERVAL``), PostgreSQL and Redis, and the fleet
simulator with N devices in a child process (time-compressed: devices poll every P seconds and close
a telemetry window every W seconds). v1 is released; once the fleet runs it, a campaign of v2 starts
(waves 10% / 50% / 100%, rollback on failure). The simulator's ``regression`` scenario makes v2 fail
30% of its calls and run 80 ms slower on every device from the first call, so T0 (regression starts)
is the moment the first device activates v2. The devices' local guard is switched off: only the
server's gate can bring them back, which is what is measured.

Figures come from the server's records after the run: device ``activated`` events (device clock,
same machine), report arrival times and the campaign's decisions. Prints figures; asserts nothing.

    .venv/bin/python bench/rollback_time.py [--devices 1000] [--poll 5] [--gate 10] [--window 5]

``--mode rounds-sim`` instead times a rollback decided on secure-aggregation round sums on a
simulated clock (bench/_rollback_rounds.py), e.g. at the production intervals:

    .venv/bin/python bench/rollback_time.py --mode rounds-sim --poll 60 --gate 30 --window 300

Uses its own PostgreSQL database (edgefleet_bench_rollback) and Redis db 12 on 127.0.0.1; both reset.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _server import ROOT, django_env, fresh_database, gunicorn_command, wait_until_up

DB = "edgefleet_bench_rollback"
REDIS = "redis://127.0.0.1:6379/12"
PORT = 18742


def simulate(opts: dict[str, Any]) -> None:
    """Child process: the fleet simulator (its own interpreter, so its GIL is not the bench's)."""
    from agent.simulate import SimOptions, run_simulation

    run_simulation(SimOptions(**opts))


def percentile_time(times: list[float], share: float) -> float | None:
    """The moment by which ``share`` of the devices had done it (None when fewer ever did)."""
    need = math.ceil(share * len(times))
    done = sorted(t for t in times if t is not None)
    return done[need - 1] if need and len(done) >= need else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--poll", type=float, default=5.0, help="P: wall seconds between device polls")
    ap.add_argument("--gate", type=float, default=10.0, help="G: wall seconds between gate evaluations (beat)")
    ap.add_argument("--window", type=float, default=5.0, help="W: wall seconds per telemetry window")
    ap.add_argument("--min-devices", type=int, default=20, help="min reporting devices per wave (each side)")
    ap.add_argument("--soak", type=float, default=0.5, help="wave soak, minutes")
    ap.add_argument("--workers", type=int, default=8, help="simulator threads")
    ap.add_argument("--timeout", type=float, default=240.0, help="give up this long after the campaign starts")
    ap.add_argument(
        "--mode", choices=("live", "rounds-sim"), default="live",
        help="live: the deployment above; rounds-sim: gates on round sums, simulated clock (bench/_rollback_rounds.py)",
    )  # fmt: skip
    ap.add_argument("--beat", type=float, default=30.0, help="rounds-sim: seconds between round formations")
    ap.add_argument("--rate", type=float, default=1.0, help="rounds-sim: inferences per second per device")
    ap.add_argument("--trials", type=int, default=20, help="rounds-sim: campaigns simulated")
    ap.add_argument("--calibration", choices=("policy", "rounds"), default="policy", help="rounds-sim: noise")
    ap.add_argument("--canary-groups", type=int, default=0, help="rounds-sim: 0 = as form_rounds groups them")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    if a.mode == "rounds-sim":
        sys.path.insert(0, str(ROOT))
        from _rollback_rounds import main as rounds_sim

        rounds_sim(a)
        return

    data_dir = tempfile.mkdtemp(prefix="edgefleet-bench-rollback-")
    env = django_env(
        DB,
        REDIS,
        data_dir,
        EDGEFLEET_GATE_INTERVAL=str(int(a.gate)),
        EDGEFLEET_TELEMETRY_WINDOW=str(round(a.window)),  # the simulator's compressed window is the server's
        LOG_LEVEL="WARNING",
        ORT_NUM_THREADS="1",
    )
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    fresh_database(DB, env)

    import django

    django.setup()
    from fleet.models import DeviceEvent
    from rollout import lifecycle, targeting
    from rollout.models import Campaign
    from telemetry.models import Report
    from tests import factories

    v1 = factories.staged_version(label="v1", seed=1)
    v2 = factories.staged_version(label="v2", seed=2)
    factories.release(v1)
    key = factories.enrollment_key("bench", max_uses=None)[1]

    base = f"http://127.0.0.1:{PORT}"
    log = open(Path(data_dir) / "services.log", "w")  # noqa: SIM115 (open for the whole run)
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str]) -> None:
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log))

    start(gunicorn_command(PORT, "-w", "2", "--threads", "4"))
    celery = [sys.executable, "-m", "celery", "-A", "edgefleet"]
    start([*celery, "worker", "--pool", "threads", "-c", "2", "-l", "warning", "--without-gossip", "--without-mingle"])
    start(
        [*celery, "beat", "-l", "warning", "-S", "celery.beat:PersistentScheduler", "-s", f"{data_dir}/beat-schedule"]
    )
    wait_until_up(base + "/healthz", tries=150)

    speed = 60.0 / a.poll
    sim_opts = dict(
        server=base,
        enrollment_key=key,
        devices=a.devices,
        scenario="regression",
        regress_version="v2",
        regress_error_rate=0.3,
        regress_latency_ms=80.0,
        guard_min_samples=10**9,  # no local fallback: the server's gate is what is measured
        duration=a.timeout + 600,
        speed=speed,
        poll_interval=60.0,
        window_seconds=a.window * speed,
        rows_per_step=64,
        workers=a.workers,
        data_dir=f"{data_dir}/devices",
        quiet=True,
        seed=1,
    )
    sim = multiprocessing.get_context("spawn").Process(target=simulate, args=(sim_opts,), daemon=True)
    t_launch = time.monotonic()
    sim.start()
    try:
        # Warm-up: every device enrolled and running v1.
        while len(set(DeviceEvent.objects.filter(kind="activated", version_label="v1").values_list("device_id"))) < (
            a.devices
        ):
            if time.monotonic() - t_launch > 600:
                raise SystemExit("the fleet did not come up on v1 within 10 minutes")
            time.sleep(1.0)
        warmup = time.monotonic() - t_launch
        print(f"{a.devices} devices enrolled and on v1 after {warmup:.1f} s")

        waves = [
            {"percent": 10, "min_soak_minutes": a.soak, "min_devices": a.min_devices},
            {"percent": 50, "min_soak_minutes": a.soak, "min_devices": a.min_devices},
            {"percent": 100, "min_soak_minutes": a.soak, "min_devices": a.min_devices},
        ]
        gates = {"error_rate": 0.02, "latency_p95": 1.25, "install_failure_rate": 0.05}
        c = lifecycle.create_campaign(name="bench", version=v2, cohort=None, waves=waves, gates=gates)
        c = lifecycle.start(c.pk)
        wave1 = set(targeting.targeted_device_ids(c)[0])
        print(f"campaign started; wave 1 targets {len(wave1)} devices")

        # Wait for the rollback, then for 95% of the devices that ran v2 to report v1 again.
        deadline = time.monotonic() + a.timeout
        t95 = None
        while time.monotonic() < deadline:
            time.sleep(1.0)
            c.refresh_from_db()
            if c.state != Campaign.State.ROLLED_BACK:
                continue
            on_v2 = activations(DeviceEvent, "v2")
            back = activations(DeviceEvent, "v1", after=c.finished_at)
            if on_v2 and percentile_time([back.get(d) for d in on_v2], 0.95) is not None:
                t95 = True
                time.sleep(a.poll)  # let late events land so the figures below are complete
                break
        report(a, c, wave1, DeviceEvent, Report, t95 is not None)
    finally:
        sim.terminate()
        sim.join(timeout=30)
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def activations(events: Any, label: str, after: datetime | None = None) -> dict[Any, float]:
    """Device -> first time (epoch seconds) it activated ``label`` (after ``after`` when given)."""
    qs = events.objects.filter(kind="activated", version_label=label)
    if after is not None:
        qs = qs.filter(at__gte=after)
    first: dict[Any, float] = {}
    for dev, at in qs.order_by("at").values_list("device_id", "at"):
        first.setdefault(dev, at.timestamp())
    return first


def report(a: argparse.Namespace, c: Any, wave1: set, events: Any, reports: Any, done: bool) -> None:
    c.refresh_from_db()
    unit = a.poll + a.gate
    print(f"campaign state: {c.state}; P = {a.poll:g} s, G = {a.gate:g} s, W = {a.window:g} s, P+G = {unit:g} s")
    on_v2 = activations(events, "v2")
    if not on_v2:
        print("no device ever activated v2")
        return
    t0 = min(on_v2.values())
    started = c.started_at.timestamp()
    print(
        f"devices that ran v2: {len(on_v2)} (wave 1 targets {len(wave1)}); T0 = first activation, "
        f"{t0 - started:.1f} s after the campaign started"
    )
    # When did the gate first have enough data? min_devices canary devices (v2) and control devices (v1)
    # with a report whose window started after the wave started (what canary_vs_control reads).
    sides: dict[str, float | None] = {}
    for label in ("v2", "v1"):
        firsts: dict[Any, float] = {}
        rows = reports.objects.filter(version__label=label, window_start__gte=c.started_at).order_by("received_at")
        for dev, at in rows.values_list("device_id", "received_at"):
            firsts.setdefault(dev, at.timestamp())
        times = sorted(firsts.values())
        sides[label] = times[a.min_devices - 1] if len(times) >= a.min_devices else None
        if label == "v2" and times:
            print(f"first v2 report received at T0 + {times[0] - t0:.1f} s")
    enough = max(sides.values()) if None not in sides.values() else None
    decision = c.decisions.filter(kind="rollback").first()
    holds = list(c.decisions.filter(kind="hold").order_by("at").values_list("at", "reason"))
    for at, reason in holds:
        print(f"  hold at T0 {at.timestamp() - t0:+.1f} s: {reason}")
    if decision is None:
        print("no rollback decision within the timeout")
        return
    t_rb = decision.at.timestamp()
    back = activations(events, "v1", after=c.finished_at)
    times = [back.get(d) for d in on_v2]
    t95 = percentile_time(times, 0.95)
    t100 = percentile_time(times, 1.0)
    print(
        f"gate had enough data (>= {a.min_devices} reporting devices each side) at T0 + "
        f"{(enough - t0) if enough else float('nan'):.1f} s"
    )
    print(
        f"rollback decided at T0 + {t_rb - t0:.1f} s  ({decision.reason}; "
        f"elapsed in wave {decision.numbers.get('elapsed_seconds')} s, "
        f"{decision.numbers.get('reporting_devices')} canary devices reporting)"
    )
    if enough:
        print(f"  decision after enough data: {t_rb - enough:.1f} s = {(t_rb - enough) / a.gate:.2f} G")
    if t95 is None:
        print(f"95% back on v1: not reached ({sum(t is not None for t in times)} of {len(on_v2)} back)")
        return
    print(f"95% of v2 devices back on v1 at T0 + {t95 - t0:.1f} s = {(t95 - t0) / unit:.2f} x (P+G)")
    print(f"  from the decision: {t95 - t_rb:.1f} s = {(t95 - t_rb) / a.poll:.2f} P")
    # With devices keeping up, switch-back delays after the decision spread evenly over one P; a
    # longer spread means the simulator (or the server) fell behind the poll interval.
    delays = sorted(t - t_rb for t in times if t is not None)
    spread = [t - started for t in sorted(on_v2.values())]
    print(
        f"  effective poll interval: switch-back after the decision median {delays[len(delays) // 2]:.1f} s, "
        f"max {delays[-1]:.1f} s; wave 1 took v2 within median {spread[len(spread) // 2]:.1f} s, "
        f"max {spread[-1]:.1f} s of the start (both ~P/2 and ~P when the fleet keeps up)"
    )
    if enough:
        print(f"  from enough data: {t95 - enough:.1f} s = {(t95 - enough) / unit:.2f} x (P+G)")
    if t100 is not None:
        print(f"100% back at T0 + {t100 - t0:.1f} s")
    if not done:
        print("(stopped at the timeout)")


if __name__ == "__main__":
    main()
