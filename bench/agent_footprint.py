"""The agent's own footprint on a small model: resident memory and CPU per telemetry window.

No server is needed: the model is installed into the agent's store as a finished download would be,
then windows of inference calls run through ``Agent.predict`` (aggregation, guard) and end with
``close_window`` (DP noise, spool write). Prints figures; asserts nothing.

    .venv/bin/python bench/agent_footprint.py [--windows 5] [--calls 3000] [--rows 1]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.agent import Agent
from agent.config import AgentConfig
from agent.store import Installed, ModelStore
from agent.verify import sha256_file
from tests.onnx_models import mlp_classifier, save


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3000, help="inference calls per window")
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--features", type=int, default=16)
    a = ap.parse_args()

    rss_start = rss_mb()
    tmp = Path(tempfile.mkdtemp(prefix="ef-footprint-"))
    model = save(mlp_classifier(n_features=a.features, n_hidden=32, n_classes=4), tmp / "m.onnx")
    store = ModelStore(tmp / "data")
    sha = sha256_file(model)
    shutil.copy(model, store.path_for(sha))
    store.activate("m", Installed("v1", sha))
    edges = [-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3]
    now = [time.time()]  # the agent's wall clock, moved one window per round so each round closes one
    agent = Agent(
        AgentConfig(server="http://127.0.0.1:9", enrollment_key="-", data_dir=tmp / "data"), clock=lambda: now[0]
    )
    agent.manifest = {
        "telemetry": {"privacy": {"mechanism": "laplace", "epsilon": 1.0}},
        "models": [
            {
                "model": "m",
                "telemetry": {
                    "features": [{"name": f"input[{j}]", "edges": edges} for j in range(a.features)],
                    "output": {"kind": "classes", "n": 4},
                },
            }
        ],
    }
    rss_loaded = rss_mb()
    x = np.random.default_rng(0).normal(size=(a.rows, a.features)).astype(np.float32)
    print(f"model: MLP {a.features}->32->4, {model.stat().st_size} B; {a.calls} calls x {a.rows} row(s) per window")
    print(f"RSS: {rss_start:.1f} MB at start (Python, numpy, onnx, onnxruntime imported)")
    print(f"RSS: {rss_loaded:.1f} MB with the agent and its session loaded")
    cpu_window, wall_infer, close_ms = [], [], []
    for _ in range(a.windows):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(a.calls):
            agent.predict(x)
        w1 = time.perf_counter()
        now[0] += agent.window_seconds()
        agent.close_window()
        c1, w2 = time.process_time(), time.perf_counter()
        cpu_window.append(c1 - c0)
        wall_infer.append((w1 - w0) / a.calls * 1e6)
        close_ms.append((w2 - w1) * 1000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = np.median(cpu_window)
    print(f"CPU per window: {cpu * 1000:.0f} ms median ({cpu / a.calls * 1e6:.0f} µs per call incl. aggregation+guard)")
    print(
        f"wall per predict(): {np.median(wall_infer):.0f} µs median; close_window (DP noise + spool write): "
        f"{np.median(close_ms):.1f} ms"
    )
    print(
        f"RSS after {a.windows} windows: {rss_mb():.1f} MB (peak {peak:.1f} MB); spool holds {len(agent.spool)} reports"
    )
    print(
        f"at 10 calls/s and 300 s windows: {cpu / a.calls * 3000 * 1000:.0f} ms CPU per window "
        f"= {cpu / a.calls * 10 * 100:.2f}% of one core"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
