"""The drift threshold on round rollups (``drift.psi_threshold_shares``) against real encoding, real
discrete Gaussian noise and groups pooled by median (pure: no Django). See tests/round_sim.py."""

from __future__ import annotations

import numpy as np
import pytest

from telemetry import detectability as det
from telemetry import drift
from tests.round_sim import FEATURE, Fleet, round_of


def _reference(fleet: Fleet) -> np.ndarray:
    return det.bin_probabilities(fleet.edges)


def test_no_drift_alarms_at_most_at_the_documented_rate_and_the_level_does_not_understate_the_noise() -> None:
    """Defaults (ε_drift = 4 a day, 24 drift rounds, δ = 1e-6), 3 groups of 100: the noise decides
    the level (far above the floor). docs/drift.md: α = 0.001 per (rollup, feature) before the floor;
    60 rollups at that rate would alarm at most once except with probability 0.2 %."""
    fleet = Fleet(groups=3, group_size=100)
    rng, sigma2, ref = np.random.default_rng(11), fleet.sigma2_device(), _reference(fleet)
    alarms, psis, levels, null_means = 0, [], [], []
    for _ in range(60):
        p = round_of(fleet, rng, 0.0, sigma2)
        if FEATURE not in p.bin_var:  # every group read as idle (the noise can hide 100 devices): no figure
            continue
        var = p.bin_var[FEATURE]
        level = drift.psi_threshold_shares(ref, var)
        psi = drift.psi(ref, p.distributions[FEATURE])
        alarms += drift.drifted(psi, level)
        psis.append(psi)
        levels.append(level)
        q = drift.distribution(ref, 0.0)
        model = drift.psi_rows(
            np.tile(q, (400, 1)), q + np.random.default_rng(0).normal(0, np.sqrt(var), (400, q.size))
        )
        null_means.append(model.mean())
    assert len(levels) >= 50 and min(levels) > 3 * drift.PSI_FLOOR  # the noise-aware part is what is tested here
    assert alarms <= 1
    # The stated variance covers what the pipeline really produces (not understated)…
    assert np.mean(psis) <= 1.1 * np.mean(null_means)
    # …and is not so loose that the level means nothing.
    assert np.mean(psis) >= 0.4 * np.mean(null_means)


def test_a_half_sigma_shift_of_one_feature_is_flagged_and_its_absence_is_not() -> None:
    """10,000 devices in 10 groups of 1,000, ε_drift = 8 a day (a privacy-page setting), one hourly
    round: the level sits near the floor and a 0.5σ mean shift (PSI ≈ 0.25) is above it."""
    fleet = Fleet(groups=10, group_size=1000, epsilon_drift_day=8.0)
    rng, sigma2, ref = np.random.default_rng(12), fleet.sigma2_device(), _reference(fleet)
    for shift, expect in ((0.5, True), (0.5, True), (0.0, False)):
        p = round_of(fleet, rng, shift, sigma2)
        level = drift.psi_threshold_shares(ref, p.bin_var[FEATURE])
        assert level < 0.2
        assert drift.drifted(drift.psi(ref, p.distributions[FEATURE]), level) is expect


def test_level_edges() -> None:
    ref = [1.0] * 10
    assert drift.psi_threshold_shares(ref, 0.0) == drift.PSI_FLOOR  # no noise: the effect floor decides
    assert drift.psi_threshold_shares(ref, 1e-4) == drift.PSI_FLOOR  # little noise: still the floor
    assert drift.psi_threshold_shares(ref, 3e-3) > drift.psi_threshold_shares(ref, 1e-3) > drift.PSI_FLOOR
    assert drift.psi_threshold_shares(ref, 1e-3) == drift.psi_threshold_shares(ref, 1e-3)  # seeded
    # The reference's own uncertainty raises the level.
    assert drift.psi_threshold_shares(ref, 1e-3, reference_bin_var=1e-3) > drift.psi_threshold_shares(ref, 1e-3)
    assert drift.psi_threshold_shares(ref, 1e-3, reference_mass=200) > drift.psi_threshold_shares(ref, 1e-3)
    with pytest.raises(ValueError, match="non-negative"):
        drift.psi_threshold_shares(ref, -1e-4)
    with pytest.raises(ValueError, match="non-negative"):
        drift.psi_threshold_shares(ref, float("nan"))
    with pytest.raises(ValueError, match="non-negative"):
        drift.psi_threshold_shares(ref, 1e-4, reference_bin_var=-1.0)
