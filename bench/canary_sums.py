"""The canary gate on health-round sums (telemetry/canary_sums.py) at the privacy page's default
setting: how often it rolls back a healthy canary, and how often it catches 1 % → 10 % within three
windows, against what ``telemetry.detectability`` promises (95.4 % at ε_health = 4.9).

Real ``agent.encoding`` health vectors (300 inferences per device per window), each device's exact
discrete Gaussian noise at the calibrated σ², the group sums read by ``telemetry.group_sums`` and
judged by ``canary_sums.error_verdict``; the first group of the run is summed by a real SecAgg+
round (``agent.secagg.simulation``) and checked equal to the plain sum. Prints figures; asserts nothing.

    .venv/bin/python bench/canary_sums.py [--trials 200] [--canary-groups 1] [--windows 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import dpnoise
from agent.encoding import encode, health_layout
from agent.secagg.simulation import make_round, run_round
from telemetry import canary_sums, regression
from telemetry import detectability as det
from telemetry.group_sums import GroupSum

LAYOUT = health_layout(12)
LAT = np.array([0, 5, 30, 40, 15, 6, 3, 1, 0, 0, 0, 0], float)


def group(rng, n: int, rate: float, rows: int, sigma2, secure: bool) -> GroupSum:
    noise = dpnoise.DeviceNoise.for_group(sigma2, n, LAYOUT.length)
    vecs = {}
    for u in range(1, n + 1):
        errors = int(rng.binomial(rows, rate))
        x = encode(
            LAYOUT, True, {"latency": rng.multinomial(rows, LAT / LAT.sum())}, {"error_fraction": (errors, rows)}
        )
        vecs[u] = x + dpnoise.sample_noise(LAYOUT.length, noise)
    total = np.sum(list(vecs.values()), axis=0)
    if secure:
        members = make_round(n, LAYOUT.length, min_survivors=math.ceil(0.7 * n))
        _server, ring_total = run_round(members, vecs)
        if not np.array_equal(members.config.ring.centred(ring_total), total):
            raise SystemExit("the SecAgg+ sum differs from the plain sum")
        print(f"SecAgg+ round of {n} devices: sum exact", flush=True)
    return GroupSum(LAYOUT, total, n, float(sigma2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--canary-groups", type=int, default=1, help="EDGEFLEET_PRIVACY_CANARY_GROUPS (default 1)")
    ap.add_argument("--epsilon-health", type=float, default=4.9)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    s = det.Setting(
        fleet=1000, epsilon_health_day=a.epsilon_health, health_rounds_per_day=0, soak_rounds=3, canary=100,
        canary_group_size=100 // a.canary_groups,
    )  # fmt: skip
    cn, cg = s.canary_group_size, max(s.canary // s.canary_group_size, 1)
    control = s.fleet - s.canary
    kn, kg = min(s.group_size, control), max(control // s.group_size, 1)
    s2 = {n: det.health_sigma2_device(s, n) for n in {cn, kn}}
    from fractions import Fraction

    sig = {n: Fraction(v).limit_denominator(10**6) for n, v in s2.items()}
    predicted = det.canary_power(s, 0.09, a.windows)
    print(
        f"canary {cg} x {cn} devices, control {kg} x {kn}, {a.windows} windows, ε_health {a.epsilon_health}/day "
        f"over {s.health_rounds_total} rounds; σ²_dev {', '.join(f'{v:.0f} (n={n})' for n, v in s2.items())}; "
        f"detectability: 1 % → 10 % caught with {predicted:.3f}, level {det.GATE_ALPHA}"
    )
    rng = np.random.default_rng(a.seed)
    started = time.perf_counter()
    first = True
    counts = {0.01: 0, 0.10: 0}
    for trial in range(a.trials):
        for rate in counts:
            arms = []
            for n, g, r in ((cn, cg, rate), (kn, kg, 0.01)):
                windows = []
                for _w in range(a.windows):
                    windows.append(
                        [group(rng, n, r, s.inferences_per_window, sig[n], first and i == 0) for i in range(g)]
                    )
                    first = False
                arms.append(canary_sums.side(windows))
            v = canary_sums.error_verdict(arms[0], arms[1], 0.02, 20)
            counts[rate] += v.verdict == regression.FAIL
        if (trial + 1) % 20 == 0:
            print(f"  {trial + 1} trials: false rollbacks {counts[0.01]}, caught {counts[0.10]}", flush=True)
    took = time.perf_counter() - started
    t = a.trials
    print(
        f"false rollbacks at 1 % → 1 %: {counts[0.01]} of {t} ({counts[0.01] / t:.3f}; level {det.GATE_ALPHA}); "
        f"caught 1 % → 10 % within {a.windows} windows: {counts[0.10]} of {t} ({counts[0.10] / t:.3f}; "
        f"formula {predicted:.3f}); {took:.0f} s"
    )


if __name__ == "__main__":
    main()
