"""The privacy page's formulas against Monte-Carlo runs of the real encoding, the real exact noise
sampler and the secure-aggregation sum (small sizes so it runs in seconds)."""

import math

import numpy as np
import pytest
from scipy import stats

from agent.dpnoise import DeviceNoise, sample_noise
from agent.encoding import drift_layout, encode, health_layout, sensitivity
from agent.secagg.simulation import make_round, run_round
from telemetry import detectability as det
from telemetry.accounting import calibrate

EDGES = tuple(det.default_edges(8))


def _drift_setting():
    return det.Setting(
        fleet=60,
        group_size=20,
        features=1,
        bins=8,
        output_bins=1,
        epsilon_drift_day=30.0,
        drift_rounds_per_day=2,
        dropout=0.3,
        inferences_per_window=40,
        reference_days=math.inf,
        edges=EDGES,
    )


def _group_sums(layout, vectors, noise, secure: bool):
    noisy = {i + 1: v + sample_noise(layout.length, noise) for i, v in enumerate(vectors)}
    plain = sum(noisy.values())
    if secure:
        members = make_round(len(noisy), layout.length, k=len(noisy) - 1, t=14, min_survivors=14)
        _server, total = run_round(members, noisy)
        assert np.array_equal(members.config.ring.centred(total), plain)
    return plain


@pytest.mark.slow
def test_drift_power_formula_matches_simulation():
    s = _drift_setting()
    layout = drift_layout([("x", 8)], 1)
    cal = calibrate(
        s.epsilon_drift_day, s.drift_rounds_per_day, s.min_survivors(20), sensitivity(layout).l2, layout.length
    )
    noise = DeviceNoise.for_group(cal.sigma2_device, 20, layout.length)
    sd = det.drift_statistic_sd(s, s.drift_rounds_per_day)
    z = stats.norm.isf(det.DRIFT_ALPHA / 2)
    mu0 = float(np.dot(det.centres(EDGES), det.bin_probabilities(EDGES)))
    shift = det.detectable_shift(s)  # the formula's 95 % point
    assert 0.05 < shift < 2
    rng = np.random.default_rng(11)
    hits = {0.0: 0, shift: 0}
    trials = 120
    for trial in range(trials):
        for delta in hits:
            means = []
            for _g in range(s.groups):
                pooled = np.zeros(8)
                for _r in range(s.drift_rounds_per_day):
                    vecs = []
                    for _d in range(20):
                        rows = rng.normal(delta, 1, s.inferences_per_window)
                        counts = np.bincount(np.clip(np.searchsorted(EDGES, rows, "right") - 1, 0, 7), minlength=8)
                        vecs.append(encode(layout, True, {"feature:x": counts, "output": [len(rows), 0]}))
                    total = _group_sums(layout, vecs, noise, secure=trial == 0 and _g == 0 and _r == 0)
                    pooled += total[:8]
                means.append(det.group_mean(pooled, EDGES, 1024.0 * 20 * s.drift_rounds_per_day))
            hits[delta] += abs(det.median_of_groups(means) - mu0) > z * sd
    false_alarms, power = hits[0.0] / trials, hits[shift] / trials
    assert false_alarms <= 0.05  # α = 1 %: at most 6 of 120 by chance
    assert power == pytest.approx(0.95, abs=0.08)


@pytest.mark.slow
def test_canary_power_formula_matches_simulation():
    s = det.Setting(
        fleet=120,
        group_size=20,
        canary=60,
        canary_group_size=20,
        latency_bins=4,
        epsilon_health_day=40.0,
        health_rounds_per_day=0,
        soak_rounds=6,
        inferences_per_window=40,
    )
    layout = health_layout(4)
    cal = calibrate(
        s.epsilon_health_day, s.health_rounds_total, s.min_survivors(20), sensitivity(layout).l2, layout.length
    )
    noise = DeviceNoise.for_group(cal.sigma2_device, 20, layout.length)
    windows, base = 2, 0.01
    rise = det.detectable_error_rise(s, windows, base)
    assert 0.02 < rise < 0.9
    predicted = det.canary_power(s, rise, windows, base)
    assert predicted == pytest.approx(0.95, abs=1e-3)
    sd = det.canary_sd(s, windows, base + rise)
    rng = np.random.default_rng(5)
    trials, fails = 100, 0
    m = 1 << s.resolution_bits
    for trial in range(trials):
        arms = {}
        for arm, rate in (("canary", base + rise), ("control", base)):
            means = []
            for g in range(3):
                err = 0
                for w in range(windows):
                    vecs = []
                    for _d in range(20):
                        e = rng.binomial(s.inferences_per_window, rate)
                        vecs.append(
                            encode(
                                layout,
                                True,
                                {"latency": [5, 3, 1, 1]},
                                {"error_fraction": (e, s.inferences_per_window)},
                            )
                        )
                    total = _group_sums(layout, vecs, noise, secure=trial == 0 and g == 0 and w == 0)
                    err += total[4]
                means.append(err / (m * 20 * windows))
            arms[arm] = det.median_of_groups(means)
        effect = arms["canary"] - arms["control"]
        fails += effect > 0.02 and effect / sd > stats.norm.isf(det.GATE_ALPHA)
    assert fails / trials == pytest.approx(predicted, abs=0.08)


def test_more_devices_or_budget_detect_smaller_shifts():
    small, big = det.Setting(fleet=1000), det.Setting(fleet=10000)
    assert det.detectable_shift(big) < det.detectable_shift(small)
    richer = det._replace(small, epsilon_drift_day=8.0)
    assert det.detectable_shift(richer) < det.detectable_shift(small)
    assert det.detectable_shift(small, 3600) > det.detectable_shift(small)
    assert det.group_size_for(1000) == 333 and det.group_size_for(100000) == 1000 and det.group_size_for(30) == 20
