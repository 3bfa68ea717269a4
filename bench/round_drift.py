"""False alarms and detection of the drift test on round rollups, by simulation.

For a fleet of ``--groups`` groups of ``--group-size`` devices at ``--epsilon`` per device per day
(``--rounds`` drift rounds a day, δ = 1e-6, noise calibrated for the full default layout of 8
features × 20 bins + 10 outputs), runs ``--trials`` rounds with no drift and with a 0.5σ mean
shift of one feature, each read as the round rollup reads it (``telemetry.group_sums.pool``: median
across groups) and judged by ``telemetry.drift.psi_threshold_shares`` against the N(0, 1) reference
over 20 equal-mass bins. Prints one JSON object: false-alarm rate, detection rate, mean level and
mean PSI with and without the shift. The simulation is ``tests/round_sim.py`` (real encoding, real
exact discrete Gaussian noise per group).

    .venv/bin/python bench/round_drift.py --groups 3 --group-size 100 --trials 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telemetry import detectability as det
from telemetry import drift
from tests.round_sim import FEATURE, Fleet, round_of


def run(fleet: Fleet, trials: int, seed: int | None) -> dict:
    rng = np.random.default_rng(seed)
    sigma2 = fleet.sigma2_device()
    ref = det.bin_probabilities(fleet.edges)
    started = time.perf_counter()
    out: dict[str, list[float]] = {"null_psi": [], "null_level": [], "shift_psi": [], "shift_level": []}
    alarms = hits = idle = 0
    for _ in range(trials):
        for shift, key in ((0.0, "null"), (0.5, "shift")):
            p = round_of(fleet, rng, shift, sigma2)
            if FEATURE not in p.bin_var:  # every group read as idle: no figure, so no alarm
                idle += 1
                continue
            level = drift.psi_threshold_shares(ref, p.bin_var[FEATURE])
            psi = drift.psi(ref, p.distributions[FEATURE])
            out[f"{key}_psi"].append(psi)
            out[f"{key}_level"].append(level)
            if drift.drifted(psi, level):
                alarms += key == "null"
                hits += key == "shift"
    return {
        "devices": fleet.groups * fleet.group_size,
        "groups": fleet.groups,
        "group_size": fleet.group_size,
        "epsilon_drift_day": fleet.epsilon_drift_day,
        "drift_rounds_per_day": fleet.drift_rounds_per_day,
        "sigma2_device": round(float(sigma2), 1),
        "trials": trials,
        "false_alarm_rate": alarms / trials,
        "detect_0_5sigma": hits / trials,
        "rounds_without_figure": idle,
        "mean_level": round(float(np.mean(out["null_level"])), 4),
        "mean_psi_no_drift": round(float(np.mean(out["null_psi"])), 4),
        "max_psi_no_drift": round(float(np.max(out["null_psi"])), 4),
        "mean_psi_0_5sigma": round(float(np.mean(out["shift_psi"])), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--group-size", type=int, default=100)
    p.add_argument("--epsilon", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=24, help="drift rounds per device per day")
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--seed", type=int, default=None, help="the inference data's seed (noise is always OS-random)")
    a = p.parse_args()
    fleet = Fleet(a.groups, a.group_size, a.epsilon, a.rounds)
    print(json.dumps(run(fleet, a.trials, a.seed)))


if __name__ == "__main__":
    main()
