"""What device-level privacy at the default settings lets the server detect, by simulation.

For a fleet of ``--devices`` devices at the ``EDGEFLEET_PRIVACY_*`` defaults (ε_drift = 4 and the
default health budget per device per day, δ = 1e-6, groups as ``telemetry.detectability`` sizes
them), runs ``--trials`` simulated days and prints one JSON object:

- ``false_alarm_rate``: how often a feature with no shift is flagged in a day (goal ≤ 1 %);
- ``detect_0_5sigma_day`` / ``_hour``: how often a 0.5σ mean shift of one feature is flagged within
  a day (24 hourly drift rounds; goal ≥ 95 % at 1,000 devices) / within its first hourly round;
- ``canary_detect_10x_error``: how often a canary of 100 devices whose error rate goes 1 % → 10 %
  fails its gate within three windows (``canary_false_alarm_rate`` for 1 % → 1 %);
- the same figures from the formulas (``predicted``), which the privacy page shows.

What is real and what is reduced (so a day at 10,000 devices runs in seconds, not hours):

- encoding: ``agent.encoding.encode`` for every device and round (each device's window counts are
  multinomial draws of its inferences over the bins, the distribution of binning N(shift, 1) rows);
  the feature under test is encoded on its own (its block is encoded exactly as in the full vector)
  while the noise is calibrated for the full layout of 8 features × 20 bins + outputs;
- noise: ``agent.dpnoise``'s exact sampler from the OS's secure source, calibrated by
  ``telemetry.accounting.calibrate``. Drawing each device's noise costs ~0.3 ms a coordinate, so a
  group's noise is drawn as ONE discrete Gaussian of the group's total variance n·σ²_dev (Kairouz,
  Liu and Steinke 2021: the sum of n devices' draws is within Rényi divergence τ < 1e-16 of it);
  ``--secure-rounds`` rounds are run in full, each device drawing its own noise;
- secure aggregation: ``--secure-rounds`` rounds (default 1, the first canary group's first health
  round) run the whole SecAgg+ protocol (``agent.secagg.simulation``: X25519, Shamir, ChaCha20 masks,
  real client and server) and the bench checks its unmasked sum equals the plain sum; every other
  round sums the vectors in the same 32-bit ring (``agent.secagg.ring.Ring``) and decodes it
  centred, which is exactly what unmasking yields since the masks cancel;
- server statistics: ``telemetry.detectability``'s group means, median across groups, and the
  thresholds from the round parameters (the drift test against a reference learned from one day of
  the same fleet; the canary gate of ``telemetry.regression``: effect > 2 points and z > z_0.99).

    .venv/bin/python bench/private_drift.py --devices 1000 --trials 200 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from agent.dpnoise import DeviceNoise, discrete_gaussian, sample_noise
from agent.encoding import drift_layout, encode, health_layout, sensitivity
from agent.secagg.ring import Ring
from agent.secagg.simulation import make_round, run_round
from telemetry import detectability as det
from telemetry import feasibility
from telemetry.accounting import calibrate, combined_epsilon

# The EDGEFLEET_PRIVACY_* defaults (edgefleet/settings.py; tests/test_privacy_policy.py pins them).
EPSILON_DRIFT_DAY, EPSILON_HEALTH_DAY, DELTA = 4.0, 4.9, 1e-6
HEALTH_ROUNDS_PER_DAY, SOAK_ROUNDS, CANARY, CANARY_GROUPS = 0, 3, 100, 1
RING = Ring(feasibility.RING_BITS)


def default_setting(devices: int) -> det.Setting:
    return det.Setting(
        fleet=devices,
        epsilon_drift_day=EPSILON_DRIFT_DAY,
        epsilon_health_day=EPSILON_HEALTH_DAY,
        delta=DELTA,
        health_rounds_per_day=HEALTH_ROUNDS_PER_DAY,
        soak_rounds=SOAK_ROUNDS,
        canary=CANARY,
        canary_group_size=CANARY // CANARY_GROUPS,
    )


def group_noise(sigma2_device: Fraction, n: int, length: int) -> np.ndarray:
    """One discrete Gaussian of the group's total variance per coordinate (see the module doc)."""
    total = sigma2_device * n
    return np.array([discrete_gaussian(total) for _ in range(length)], dtype=np.int64)


def ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """The sum as unmasking gives it: added in the ring, decoded centred."""
    acc = RING.zeros(len(vectors[0]))
    for v in vectors:
        acc = RING.add(acc, RING.reduce(v))
    return RING.centred(acc)


class Bench:
    def __init__(self, s: det.Setting, rng: np.random.Generator, secure_rounds: int) -> None:
        self.s, self.rng, self.secure_left = s, rng, secure_rounds
        full = feasibility.drift_layout_for(s)
        self.feature_layout = drift_layout([("f0", s.bins)], s.output_bins, s.resolution_bits)
        n = min(s.group_size, s.fleet)
        self.drift_cal = calibrate(
            s.epsilon_drift_day, s.drift_rounds_per_day, s.min_survivors(n), sensitivity(full).l2, full.length, s.delta
        )
        self.health_layout = health_layout(s.latency_bins, s.resolution_bits)
        self.latency = np.full(s.latency_bins, 1.0)
        self.health_cal = {}
        for g in {n, min(s.canary_group_size, s.canary)}:
            hl = self.health_layout
            self.health_cal[g] = calibrate(
                s.epsilon_health_day, s.health_rounds_total, s.min_survivors(g), sensitivity(hl).l2, hl.length, s.delta
            )
        self.secure_checked: list[dict] = []

    # ---- drift -------------------------------------------------------------------------------
    def drift_group_round(self, n: int, shift: float) -> np.ndarray:
        s, layout = self.s, self.feature_layout
        counts = self.rng.multinomial(s.inferences_per_window, det.bin_probabilities(s.edges, shift), size=n)
        out = [s.inferences_per_window] + [0] * s.output_bins
        vectors = [encode(layout, True, {"feature:f0": c, "output": out}) for c in counts]
        total = ring_sum(vectors)
        noise = group_noise(self.drift_cal.sigma2_device, n, s.bins)
        return total[: s.bins] + noise

    def drift_day(self, shift: float) -> tuple[float, float]:
        """(day statistic, first-hour statistic): medians of the groups' pooled means."""
        s = self.s
        n = min(s.group_size, s.fleet)
        day, hour = [], []
        m = float(1 << s.resolution_bits)  # every device is active here: the mass is M per device-round
        for _g in range(s.groups):
            pooled = np.zeros(s.bins)
            for r in range(s.drift_rounds_per_day):
                t = self.drift_group_round(n, shift)
                pooled += t
                if r == 0:
                    hour.append(det.group_mean(t, s.edges, m * n))
            day.append(det.group_mean(pooled, s.edges, m * n * s.drift_rounds_per_day))
        return det.median_of_groups(day), det.median_of_groups(hour)

    # ---- canary ------------------------------------------------------------------------------
    def health_group_round(self, n: int, rate: float) -> float:
        """A group's error-fraction sum (the coordinate the gate reads)."""
        s, layout = self.s, self.health_layout
        errors = self.rng.binomial(s.inferences_per_window, rate, size=n)
        vectors = [
            encode(layout, True, {"latency": self.latency}, {"error_fraction": (int(e), s.inferences_per_window)})
            for e in errors
        ]
        idx = layout.slices()["error_fraction"].start
        cal = self.health_cal[n]
        if self.secure_left > 0:
            self.secure_left -= 1
            return float(self.secure_round(vectors, cal.sigma2_device)[idx])
        return float(ring_sum(vectors)[idx] + group_noise(cal.sigma2_device, n, 1)[0])

    def secure_round(self, vectors: list[np.ndarray], sigma2: Fraction) -> np.ndarray:
        """A whole SecAgg+ round, each device drawing its own noise; checks the sum is exact."""
        n, length = len(vectors), len(vectors[0])
        noise = DeviceNoise.for_group(sigma2, n, length)
        noisy = {u: v + sample_noise(length, noise) for u, v in enumerate(vectors, start=1)}
        t0 = time.perf_counter()
        members = make_round(n, length, min_survivors=self.s.min_survivors(n))
        _server, total = run_round(members, noisy)
        decoded = members.config.ring.centred(total)
        plain = sum(noisy.values())
        ok = bool(np.array_equal(decoded, plain))
        self.secure_checked.append({"devices": n, "exact": ok, "seconds": round(time.perf_counter() - t0, 2)})
        if not ok:
            raise SystemExit("secure aggregation sum differs from the plain sum")
        return decoded

    def canary_fails(self, rate: float, windows: int = 3, base: float = 0.01) -> bool:
        s = self.s
        m = float(1 << s.resolution_bits)
        cn = min(s.canary_group_size, s.canary)
        c_groups = max(s.canary // s.canary_group_size, 1)
        control = max(s.fleet - s.canary, s.canary)
        k_n = min(s.group_size, control)
        k_groups = max(control // s.group_size, 1)

        def arm(groups: int, n: int, r: float) -> float:
            means = [
                sum(self.health_group_round(n, r) for _ in range(windows)) / (m * n * windows) for _ in range(groups)
            ]
            return det.median_of_groups(means)

        canary, ctrl = arm(c_groups, cn, rate), arm(k_groups, k_n, base)
        effect = canary - ctrl
        sd = det.canary_sd(s, windows, min(max(canary, 0.0), 1.0))
        return bool(effect > 0.02 and effect / sd > stats.norm.isf(det.GATE_ALPHA))


def run(devices: int, trials: int, seed: int | None, secure_rounds: int) -> dict:
    s = default_setting(devices)
    bench = Bench(s, np.random.default_rng(seed), secure_rounds)
    started = time.perf_counter()
    z = stats.norm.isf(det.DRIFT_ALPHA / 2)
    sd_day = det.drift_statistic_sd(s, s.drift_rounds_per_day)
    sd_hour = det.drift_statistic_sd(s, 1)
    false_alarms = hits_day = hits_hour = canary_hits = canary_false = 0
    for trial in range(trials):  # progress on stderr: a long run's partial counts survive it
        ref_day, ref_hour = bench.drift_day(0.0)
        null_day, _ = bench.drift_day(0.0)
        shift_day, shift_hour = bench.drift_day(0.5)
        false_alarms += int(abs(null_day - ref_day) > z * sd_day)
        hits_day += int(abs(shift_day - ref_day) > z * sd_day)
        hits_hour += int(abs(shift_hour - ref_hour) > z * sd_hour)
        canary_hits += int(bench.canary_fails(0.10))
        canary_false += int(bench.canary_fails(0.01))
        done = {"false_alarms": false_alarms, "day": hits_day, "hour": hits_hour, "canary": canary_hits}
        print(json.dumps({"trial": trial + 1, **done, "canary_false": canary_false}), file=sys.stderr, flush=True)
    hl = bench.health_layout
    full = feasibility.drift_layout_for(s)
    drift_charges = [bench.drift_cal.charge] * s.drift_rounds_per_day
    health_charges = [next(iter(bench.health_cal.values())).charge] * s.health_rounds_total
    return {
        "devices": devices,
        "trials": trials,
        "epsilon_day": s.epsilon_drift_day,
        "epsilon_health_day": s.epsilon_health_day,
        "epsilon_combined_day": round(combined_epsilon(drift_charges, health_charges, s.delta), 3),
        "delta": s.delta,
        "groups": s.groups,
        "group_size": s.group_size,
        "drift_rounds_per_day": s.drift_rounds_per_day,
        "health_rounds_per_day": s.health_rounds_total,
        "canary": s.canary,
        "canary_groups": max(s.canary // s.canary_group_size, 1),
        "sigma2_device_drift": float(bench.drift_cal.sigma2_device),
        "drift_layout_length": full.length,
        "health_layout_length": hl.length,
        "false_alarm_rate": false_alarms / trials,
        "detect_0_5sigma_day": hits_day / trials,
        "detect_0_5sigma_hour": hits_hour / trials,
        "canary_detect_10x_error": canary_hits / trials,
        "canary_false_alarm_rate": canary_false / trials,
        "predicted": {
            "false_alarm_rate": det.DRIFT_ALPHA,
            "detect_0_5sigma_day": round(det.drift_power(s, 0.5), 4),
            "detect_0_5sigma_hour": round(det.drift_power(s, 0.5, 3600), 4),
            "canary_detect_10x_error": round(det.canary_power(s, 0.09, 3), 4),
            "detect_shift_day_sigma": _round(det.detectable_shift(s)),
            "detect_shift_hour_sigma": _round(det.detectable_shift(s, 3600)),
            "smallest_health_budget": _round(det.smallest_health_budget(s)),
        },
        "secure_rounds": bench.secure_checked,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _round(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--seed", type=int, default=None, help="the inference data's seed (noise is always OS-random)")
    p.add_argument("--secure-rounds", type=int, default=1, help="rounds run through the full SecAgg+ protocol")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default prints it indented)")
    a = p.parse_args()
    if a.devices < det.MIN_GROUP or a.trials < 1:
        p.error(f"need --devices ≥ {det.MIN_GROUP} and --trials ≥ 1")
    out = run(a.devices, a.trials, a.seed, a.secure_rounds)
    print(json.dumps(out) if a.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
