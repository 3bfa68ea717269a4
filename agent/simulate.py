"""Fleet simulator: N virtual devices in one process, each through the real ``Agent`` code paths.

Real HTTP, real signature and hash checks, real onnxruntime inference on synthetic inputs (one
shared session per artifact sha256, so thousands of devices fit). Faults are injected only at
boundaries: the HTTP transport (flaky), the download stream (crash, corruption) and the inference
hook (a regressing version). ``--speed`` compresses time: poll and window intervals are divided by
it, so a 300 s telemetry window passes in seconds (window / speed must be whole seconds, and the
server's ``EDGEFLEET_TELEMETRY_WINDOW`` must equal it: reports name windows of its grid).

    python -m agent.simulate --devices 200 --server http://127.0.0.1:8000 --enrollment-key efk_… \
        --scenario drift --duration 60 --speed 30
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import requests

from agent.agent import Agent
from agent.client import Client, DownloadIncomplete
from agent.config import AgentConfig
from agent.guard import GuardPolicy
from agent.runtime import SessionPool, synthetic_inputs

SCENARIOS = ("healthy", "drift", "regression", "flaky", "crash-download", "corrupt")

HW_PROFILES: dict[str, dict[str, Any]] = {
    "rpi4": {"arch": "aarch64", "cores": 4, "ram_mb": 4096, "accelerator": "none"},
    "jetson": {"arch": "aarch64", "cores": 6, "ram_mb": 8192, "accelerator": "jetson"},
    "x86": {"arch": "x86_64", "cores": 8, "ram_mb": 16384, "accelerator": "none"},
}
DEFAULT_MIX = "region=eu:0.5,us:0.3,apac:0.2;hw=rpi4:0.5,jetson:0.2,x86:0.3"


@dataclass
class SimOptions:
    server: str
    enrollment_key: str
    devices: int = 10
    scenario: str = "healthy"
    duration: float = 30.0
    speed: float = 1.0
    poll_interval: float = 60.0  # simulated seconds; divided by speed
    window_seconds: float = 300.0
    rows_per_step: int = 8
    steps_per_poll: int = 1
    workers: int = 8
    fraction: float = 0.3  # share of devices a drift/flaky/crash/corrupt scenario touches
    drift_features: list[int] = field(default_factory=lambda: [0])
    drift_shift: float = 2.0
    drift_scale: float = 1.0
    regress_version: str | None = None
    regress_error_rate: float = 0.3
    regress_latency_ms: float = 80.0
    flaky_drop: float = 0.3  # of requests, on flaky devices
    flaky_delay_ms: float = 200.0
    mix: str = DEFAULT_MIX
    data_dir: str | None = None
    seed: int = 0
    summary_every: float = 5.0
    guard_min_samples: int = 50
    # probation (agent/guard.py): commit after this many inferences, or this many simulated seconds
    commit_after_inferences: int = 6
    commit_after_seconds: float = 600.0
    # maintenance windows are read on a simulated clock: it starts at this epoch second (None: now)
    # and runs ``speed`` times as fast as the wall clock (telemetry windows keep the real clock)
    sim_start: float | None = None
    # install conditions: touched devices (``fraction``) report power "battery" and a metered network
    # until this many simulated seconds have passed, then external power and unmetered (0: never);
    # every other device reports external power, unmetered and idle throughout
    unplugged_for: float = 0.0
    quiet: bool = False


def parse_mix(spec: str) -> dict[str, list[tuple[str, float]]]:
    """``"region=eu:0.5,us:0.5;hw=rpi4:1"`` -> ``{"region": [("eu", .5), ("us", .5)], "hw": [("rpi4", 1)]}``."""
    out: dict[str, list[tuple[str, float]]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, _, choices = part.partition("=")
        out[key.strip()] = [(c.split(":")[0], float(c.split(":")[1]) if ":" in c else 1.0) for c in choices.split(",")]
    return out


def draw_profile(mix: dict[str, list[tuple[str, float]]], rng: random.Random) -> tuple[dict[str, str], dict]:
    labels = {k: rng.choices([c for c, _ in v], weights=[w for _, w in v])[0] for k, v in mix.items()}
    hw = dict(HW_PROFILES.get(labels.get("hw", "rpi4"), HW_PROFILES["rpi4"]))
    # The simulator really runs this onnxruntime, so that is the version it reports.
    hw.update(
        ort_version=ort.__version__, providers=["CPUExecutionProvider"], storage_free_mb=rng.choice([512, 2048, 16384])
    )
    return labels, hw


# -- boundary faults ---------------------------------------------------------------------------------
class FlakyAdapter(requests.adapters.HTTPAdapter):
    """Drops or delays a share of requests before they reach the wire."""

    def __init__(self, drop: float, delay_ms: float, rng: random.Random) -> None:
        super().__init__()
        self.drop, self.delay_ms, self.rng = drop, delay_ms, rng
        self.dropped = 0

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        r = self.rng.random()
        if r < self.drop:
            self.dropped += 1
            raise requests.ConnectionError("simulated network drop")
        if r < self.drop * 1.5:
            time.sleep(self.delay_ms / 1000)
        return super().send(request, **kw)


class SimClient(Client):
    """The real client, with the simulator's download faults switchable per device."""

    crash_downloads: int = 0  # how many downloads to cut half-way
    corrupt_downloads: bool = False

    def _copy(self, resp: requests.Response, f: Any) -> None:
        if self.crash_downloads > 0:
            self.crash_downloads -= 1
            total = int(resp.headers.get("Content-Length") or 0)
            f.write(resp.raw.read(max(1, total // 2)))
            raise DownloadIncomplete("simulated crash in the middle of a download")
        super()._copy(resp, f)

    def download(self, url: str, part: Path, size: int) -> Path:
        try:
            return super().download(url, part, size)
        finally:
            if self.corrupt_downloads and part.exists() and part.stat().st_size == size:
                with open(part, "r+b") as f:  # bytes flipped after the download: must be refused
                    f.seek(size // 2)
                    b = f.read(1)
                    f.seek(size // 2)
                    f.write(bytes([b[0] ^ 0xFF]))


# -- devices -------------------------------------------------------------------------------------------
class VirtualDevice:
    def __init__(self, idx: int, agent: Agent, labels: dict[str, str], opts: SimOptions, touched: bool) -> None:
        self.idx = idx
        self.agent = agent
        self.labels = labels
        self.opts = opts
        self.touched = touched  # the scenario applies to this device
        self.rng = np.random.default_rng(opts.seed * 100_003 + idx)
        self.errors = 0

    def inputs(self) -> dict[str, np.ndarray] | None:
        rts = self.agent.runtimes
        if not rts:
            return None
        feeds = synthetic_inputs(next(iter(rts.values())).session, batch=self.opts.rows_per_step, rng=self.rng)
        if self.opts.scenario == "drift" and self.touched:
            for name, x in feeds.items():
                if np.issubdtype(x.dtype, np.floating) and x.ndim >= 2:
                    flat = x.reshape(x.shape[0], -1)
                    for j in self.opts.drift_features:
                        if j < flat.shape[1]:
                            flat[:, j] = flat[:, j] * self.opts.drift_scale + self.opts.drift_shift
                    feeds[name] = flat.reshape(x.shape)
        return feeds

    def step(self) -> float:
        for _ in range(self.opts.steps_per_poll):
            feeds = self.inputs()
            if feeds is None:
                break
            try:
                self.agent.predict(feeds)
            except Exception:
                self.errors += 1
        return self.agent.tick()


def _fault(opts: SimOptions, rng: random.Random) -> Any:
    def fault(model: str, version: str) -> float:
        if opts.scenario == "regression" and version == opts.regress_version:
            if rng.random() < opts.regress_error_rate:
                raise RuntimeError("simulated regression")
            return opts.regress_latency_ms * (0.5 + rng.random())
        return 0.0

    return fault


def sim_clock(opts: SimOptions) -> Any:
    """The simulated wall clock of maintenance windows: ``sim_start`` + elapsed × ``speed``."""
    origin, start = time.monotonic(), opts.sim_start if opts.sim_start is not None else time.time()
    return lambda: start + (time.monotonic() - origin) * opts.speed


def _conditions(opts: SimOptions, touched: bool, clock: Any) -> Any:
    plugged = {"power": "external", "network": "unmetered", "idle": True}
    unplugged = {"power": "battery", "network": "metered", "idle": True}
    begin = clock()

    def now() -> dict[str, Any]:
        if touched and opts.unplugged_for and clock() - begin < opts.unplugged_for:
            return unplugged
        return plugged

    return now


def build_fleet(opts: SimOptions, root: Path, pool: SessionPool) -> list[VirtualDevice]:
    rng = random.Random(opts.seed)
    clock = sim_clock(opts)
    mix = parse_mix(opts.mix)
    devices = []
    for i in range(opts.devices):
        labels, hw = draw_profile(mix, rng)
        touched = rng.random() < opts.fraction
        labels = {**labels, "sim": opts.scenario, "sim_group": "touched" if touched else "control"}
        http = requests.Session()
        if opts.scenario == "flaky" and touched:
            adapter = FlakyAdapter(opts.flaky_drop, opts.flaky_delay_ms, random.Random(rng.random()))
            http.mount("http://", adapter)
            http.mount("https://", adapter)
        cfg = AgentConfig(
            server=opts.server,
            enrollment_key=opts.enrollment_key,
            data_dir=root / f"dev-{i:05d}",
            name=f"sim-{i:05d}",
            labels=labels,
            hardware=hw,
            poll_interval=opts.poll_interval / opts.speed,
            window_seconds=opts.window_seconds / opts.speed,
            backoff_base=max(0.05, 1.0 / opts.speed),
            backoff_cap=max(1.0, 300.0 / opts.speed),
            request_timeout=30.0,
        )
        agent = Agent(
            cfg,
            pool=pool,
            client_cls=SimClient,
            http=http,
            guard_policy=GuardPolicy(
                min_samples=opts.guard_min_samples,
                commit_after_inferences=opts.commit_after_inferences,
                commit_after_seconds=opts.commit_after_seconds / opts.speed,
            ),
            fault=_fault(opts, random.Random(rng.random())),
            seed=opts.seed * 7919 + i,
            conditions=_conditions(opts, touched, clock),
            install_clock=clock,
        )
        if touched and opts.scenario == "crash-download":
            agent.client.crash_downloads = 1
        if touched and opts.scenario == "corrupt":
            agent.client.corrupt_downloads = True
        devices.append(VirtualDevice(i, agent, labels, opts, touched))
    return devices


def summarize(devices: list[VirtualDevice], started: float, opts: SimOptions, pool: SessionPool) -> dict[str, Any]:
    stats: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    cohorts: Counter[str] = Counter()
    spooled = 0
    for d in devices:
        stats.update(d.agent.stats)
        for model, rt in list(d.agent.runtimes.items()):
            versions[f"{model}:{rt.version}"] += 1
        cohorts[f"{d.labels.get('region')}/{d.labels.get('hw')}"] += 1
    for d in devices:
        spooled += d.agent.spool.count("report")
    return {
        "scenario": opts.scenario,
        "devices": len(devices),
        "touched": sum(d.touched for d in devices),
        "enrolled": sum(1 for d in devices if d.agent.device_id),
        "elapsed_s": round(time.monotonic() - started, 2),
        "versions": dict(versions),
        "cohorts": dict(cohorts),
        "polls": stats["polls"],
        "reports_made": stats["reports_made"],
        "reports_sent": stats["reports_sent"],
        "reports_rejected": stats["reports_rejected"],
        "reports_spooled": spooled,
        "events_sent": stats["events_sent"],
        "inferences": stats["inferences"],
        "inference_errors": stats["inference_errors"],
        "server_away": stats["server_away"],
        "installs": stats["installs"],
        "fallbacks": stats["fallbacks"],
        "commits": stats["commits"],
        "installs_waiting": stats["installs_waiting"],
        "downloads_failed": stats["downloads_failed"],
        "downloads_resumed": stats["downloads_resumed"],
        "artifacts_refused": stats["artifacts_refused"],
        "manifests_refused": stats["manifest_refused"],
        "install_failures": stats["install_failures"],
        "sessions": len(pool),
        "step_errors": sum(d.errors for d in devices),
    }


def _line(s: dict[str, Any]) -> str:
    vers = " ".join(f"{k}={v}" for k, v in sorted(s["versions"].items())) or "-"
    return (
        f"[{s['elapsed_s']:7.1f}s] devices {s['enrolled']}/{s['devices']}  versions {vers}  "
        f"reports {s['reports_sent']}  polls {s['polls']}  away {s['server_away']}  "
        f"errors {s['inference_errors']}  fallbacks {s['fallbacks']}  refused {s['artifacts_refused']}"
    )


def run_simulation(
    opts: SimOptions | None = None, *, until: threading.Event | None = None, **kw: Any
) -> dict[str, Any]:
    """Run the fleet for ``opts.duration`` wall seconds, or until ``until`` is set; return the summary.

    ``until`` lets a test or the demo stop the fleet cleanly before the server it talks to goes away.
    """
    opts = opts or SimOptions(**kw)
    until = until or threading.Event()
    if opts.scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}")
    window = opts.window_seconds / opts.speed
    if round(window) < 1 or abs(window - round(window)) > 1e-6:
        # reports name windows of the UTC epoch grid in whole seconds (agent/window.py)
        raise ValueError(f"--window / --speed must be a whole number of seconds, got {window:g}")
    tmp = None if opts.data_dir else tempfile.TemporaryDirectory(prefix="edgefleet-sim-")
    root = Path(opts.data_dir or tmp.name)
    pool = SessionPool(threads=1)
    devices = build_fleet(opts, root, pool)
    started = time.monotonic()
    deadline = started + opts.duration
    spread, jitter = min(1.0, opts.duration / 4), random.Random(opts.seed)
    heap = [(started + jitter.uniform(0, spread), i) for i in range(len(devices))]
    heapq.heapify(heap)
    cv = threading.Condition()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            with cv:
                while not stop.is_set():
                    now = time.monotonic()
                    if heap and heap[0][0] <= now:
                        _, i = heapq.heappop(heap)
                        break
                    cv.wait(min(0.5, heap[0][0] - now) if heap else 0.5)
                else:
                    return
            try:
                delay = devices[i].step()
            except Exception:
                logging.getLogger(__name__).exception("device %d step failed", i)
                devices[i].errors += 1
                delay = 1.0
            with cv:
                heapq.heappush(heap, (time.monotonic() + delay, i))
                cv.notify()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(opts.workers)]
    for t in threads:
        t.start()
    next_line = started + opts.summary_every
    while time.monotonic() < deadline and not until.is_set():
        until.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        if not opts.quiet and time.monotonic() >= next_line:
            print(_line(summarize(devices, started, opts, pool)), file=sys.stderr, flush=True)
            next_line += opts.summary_every
    stop.set()
    with cv:
        cv.notify_all()
    for t in threads:
        t.join(timeout=60)
    summary = summarize(devices, started, opts, pool)
    if not opts.quiet:
        print(_line(summary), file=sys.stderr, flush=True)
    summary["data_dir"] = None if tmp else str(root)
    summary["options"] = {k: v for k, v in asdict(opts).items() if k not in ("enrollment_key",)}
    if tmp:
        tmp.cleanup()
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.simulate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--enrollment-key", required=True)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--scenario", choices=SCENARIOS, default="healthy")
    ap.add_argument("--duration", type=float, default=30.0, help="wall-clock seconds")
    ap.add_argument("--speed", type=float, default=1.0, help="time compression: intervals are divided by this")
    ap.add_argument("--poll-interval", type=float, default=60.0, help="simulated seconds between polls")
    ap.add_argument("--window", type=float, default=300.0, help="simulated seconds per telemetry window")
    ap.add_argument("--rows", type=int, default=8, help="input rows per inference call")
    ap.add_argument("--steps-per-poll", type=int, default=1, help="inference calls per device wake-up")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=0.3, help="share of devices the scenario touches")
    ap.add_argument("--drift-features", default="0", help="comma-separated column indexes")
    ap.add_argument("--drift-shift", type=float, default=2.0)
    ap.add_argument("--drift-scale", type=float, default=1.0)
    ap.add_argument("--regress-version")
    ap.add_argument("--regress-error-rate", type=float, default=0.3)
    ap.add_argument("--regress-latency-ms", type=float, default=80.0)
    ap.add_argument("--flaky-drop", type=float, default=0.3)
    ap.add_argument("--mix", default=DEFAULT_MIX)
    ap.add_argument("--data-dir", help="keep device data here (default: a temporary directory)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--summary-every", type=float, default=5.0)
    ap.add_argument("--summary-file")
    ap.add_argument("--commit-after", type=int, default=6, help="inferences of probation before committed")
    ap.add_argument("--sim-start", type=float, help="epoch second the maintenance-window clock starts at")
    ap.add_argument("--unplugged-for", type=float, default=0.0, help="simulated s touched devices are on battery")
    a = ap.parse_args(argv)
    if a.scenario == "regression" and not a.regress_version:
        ap.error("--scenario regression needs --regress-version")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    summary = run_simulation(
        SimOptions(
            server=a.server,
            enrollment_key=a.enrollment_key,
            devices=a.devices,
            scenario=a.scenario,
            duration=a.duration,
            speed=a.speed,
            poll_interval=a.poll_interval,
            window_seconds=a.window,
            rows_per_step=a.rows,
            steps_per_poll=a.steps_per_poll,
            workers=a.workers,
            fraction=a.fraction,
            drift_features=[int(x) for x in a.drift_features.split(",") if x.strip()],
            drift_shift=a.drift_shift,
            drift_scale=a.drift_scale,
            regress_version=a.regress_version,
            regress_error_rate=a.regress_error_rate,
            regress_latency_ms=a.regress_latency_ms,
            flaky_drop=a.flaky_drop,
            mix=a.mix,
            data_dir=a.data_dir,
            seed=a.seed,
            summary_every=a.summary_every,
            commit_after_inferences=a.commit_after,
            sim_start=a.sim_start,
            unplugged_for=a.unplugged_for,
        )
    )
    text = json.dumps(summary, indent=2)
    if a.summary_file:
        Path(a.summary_file).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
