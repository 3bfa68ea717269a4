"""Drift statistics equal scipy's on the same histograms; noise-aware thresholds keep quiet on noise
and find a real half-sigma shift."""

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from telemetry import drift, privacy
from telemetry.binning import histogram, quantile_edges

RNG = np.random.default_rng(7)
EDGES = quantile_edges(RNG.normal(size=200_000), 20)
FOUR_FEATURES = {"features": [f"input[{j}]" for j in range(4)]}  # a report layout with 4 feature histograms


def hists(shift: float = 0.0, n: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    ref = histogram(RNG.normal(size=n), EDGES)
    cur = histogram(RNG.normal(loc=shift, size=n), EDGES)
    return ref, cur


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5, 2.0])
def test_statistics_equal_scipy(shift: float) -> None:
    ref, cur = hists(shift)
    c = drift.centers(EDGES)
    q, p = ref / ref.sum(), cur / cur.sum()
    assert drift.wasserstein1(EDGES, ref, cur) == pytest.approx(stats.wasserstein_distance(c, c, q, p), rel=1e-9)
    assert drift.ks_statistic(ref, cur) == pytest.approx(np.max(np.abs(np.cumsum(p) - np.cumsum(q))), abs=1e-12)
    qq, pp = drift.distribution(ref), drift.distribution(cur)
    assert drift.js_distance(ref, cur) == pytest.approx(jensenshannon(pp, qq, base=2), rel=1e-9)
    # PSI is the symmetrised KL divergence: KL(p||q) + KL(q||p), scipy.stats.entropy is KL.
    assert drift.psi(ref, cur) == pytest.approx(stats.entropy(pp, qq) + stats.entropy(qq, pp), rel=1e-9)


def test_ks_on_binned_cdf_matches_scipy_on_rebinned_samples() -> None:
    """With samples placed at bin centres, scipy's two-sample KS equals our binned statistic."""
    ref, cur = hists(0.3, 2000)
    c = drift.centers(EDGES)
    a, b = np.repeat(c, ref.astype(int)), np.repeat(c, cur.astype(int))
    assert drift.ks_statistic(ref, cur) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_noisy_counts_are_tolerated() -> None:
    ref, cur = hists(0.0)
    cur = cur + RNG.laplace(0, 50, size=cur.shape)
    cur[0] = -30.0
    for v in drift.scores(EDGES, ref, cur).values():
        assert np.isfinite(v) and v >= 0
    assert drift.scores(None, ref, cur)["w1"] is None


def test_identical_is_zero_and_psi_grows_with_shift() -> None:
    ref, _ = hists()
    assert drift.psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    values = [drift.psi(*hists(s, 20000)) for s in (0.1, 0.3, 0.5, 1.0)]
    assert values == sorted(values)


def simulate(
    devices: int, shift: float, epsilon: float = 1.0, n_features: int = 4, per_device: int = 60, trials: int = 40
) -> float:
    """Share of trials (each a fleet-window of ``devices`` noisy reports) the drift check flags."""
    rng = np.random.default_rng(11)
    ref_sample = rng.normal(size=50_000)
    ref = histogram(ref_sample, EDGES)
    layout = {"features": [f"input[{j}]" for j in range(n_features)]}
    var = privacy.noise_variance("laplace", epsilon, layout)
    scale = privacy.laplace_scale(epsilon, privacy.l1_sensitivity(layout))
    flagged = 0
    for _ in range(trials):
        x = rng.normal(loc=shift, size=devices * per_device)
        cur = histogram(x, EDGES) + rng.laplace(0, scale, size=(devices, len(EDGES) - 1)).sum(axis=0)
        level = drift.psi_threshold(ref, devices * per_device, devices * var, reference_mass=len(ref_sample))
        flagged += drift.psi(ref, cur) > level
    return flagged / trials


@pytest.mark.parametrize("devices", [20, 200, 2000])
def test_no_false_alarms_from_dp_noise_at_default_epsilon(devices: int) -> None:
    assert simulate(devices, 0.0) == 0.0


def test_half_sigma_shift_is_detected_with_enough_devices() -> None:
    assert simulate(2000, 0.5) == 1.0


def test_threshold_rises_with_noise_and_falls_to_floor_with_mass() -> None:
    ref = histogram(RNG.normal(size=50_000), EDGES)
    quiet = drift.psi_threshold(ref, 10_000_000, 0.0)
    noisy = drift.psi_threshold(ref, 1000, 1000 * privacy.noise_variance("laplace", 1.0, FOUR_FEATURES))
    assert quiet == drift.PSI_FLOOR
    assert noisy > 1.0
