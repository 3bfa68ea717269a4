"""Edges of the drift math: empty and negative histograms, the alarm at equality, and the noise-aware
threshold against an independent re-computation (scipy's KL for PSI, numpy's generator replayed).

Written from mutation testing (`make mutation`): each test pins a behaviour a one-token change to
``telemetry/drift.py`` would otherwise alter silently.
"""

import inspect
import math

import numpy as np
import pytest
from scipy import stats

from telemetry import drift

REF = np.array([120.0, 300.0, 410.0, 250.0, 90.0, 30.0])
CUR = np.array([80.0, 260.0, 380.0, 330.0, 140.0, 60.0])


def reference_psi(ref: np.ndarray, cur: np.ndarray) -> float:
    """PSI as KL(p‖q) + KL(q‖p) with scipy, on the same clipped, pseudo-counted distributions."""

    def dist(c: np.ndarray) -> np.ndarray:
        c = np.clip(np.asarray(c, dtype=float), 0, None)
        p = c / c.sum() if c.sum() > 0 else np.full(c.shape, 1 / c.size)
        p = p + drift.PSEUDO
        return p / p.sum()

    p, q = dist(cur), dist(ref)
    return float(stats.entropy(p, q) + stats.entropy(q, p))


def replayed_null(ref, current_mass, noise_var, reference_mass=None, reference_noise_var=0.0, sims=400, seed=0):
    """The documented null model, drawn independently from the same seeded generator."""
    rng = np.random.default_rng(seed)
    q = np.asarray(ref, dtype=float) / np.sum(ref)
    cur = rng.multinomial(max(round(current_mass), 1), q, size=sims).astype(float)
    if noise_var > 0:
        cur = cur + rng.normal(0.0, np.sqrt(noise_var), size=cur.shape)
    if reference_mass:
        refs = rng.multinomial(max(round(reference_mass), 1), q, size=sims).astype(float)
        if reference_noise_var > 0:
            refs = refs + rng.normal(0.0, np.sqrt(reference_noise_var), size=refs.shape)
    else:
        refs = np.tile(q, (sims, 1))
    return np.array([reference_psi(r, c) for r, c in zip(refs, cur, strict=True)])


def test_policy_constants() -> None:
    """Changing these changes when operators get drift alerts: a change must be deliberate."""
    assert drift.PSEUDO == 1e-4
    assert drift.PSI_FLOOR == 0.1
    assert drift.ALPHA == 0.001
    sig = inspect.signature(drift.psi_threshold).parameters
    assert sig["alpha"].default == drift.ALPHA
    assert sig["floor"].default == drift.PSI_FLOOR
    assert sig["sims"].default == 400
    assert inspect.signature(drift.null_psi_samples).parameters["seed"].default == 0


def test_empty_or_all_negative_histogram_is_uniform() -> None:
    assert drift.distribution([0, 0, 0, 0]).tolist() == [0.25] * 4
    assert drift.distribution([-5.0, -1.0], pseudo=0.0).tolist() == [0.5, 0.5]


def test_negatives_clip_to_zero_and_small_totals_still_normalise() -> None:
    assert drift.distribution([-3.0, 0.5, 1.5], pseudo=0.0).tolist() == [0.0, 0.25, 0.75]
    # a total below one (noisy, nearly empty windows) is still divided by, not treated as empty
    assert drift.distribution([0.2, 0.3], pseudo=0.0) == pytest.approx([0.4, 0.6], abs=1e-15)
    p = drift.distribution([1.0, 0.0], pseudo=0.5)
    assert p == pytest.approx([1.5 / 2.0, 0.5 / 2.0])


def test_centers_are_midpoints_of_uneven_edges() -> None:
    assert drift.centers([0, 1, 3, 7]).tolist() == [0.5, 2.0, 5.0]


def test_w1_and_ks_against_scipy_on_uneven_edges() -> None:
    edges = [0.0, 1.0, 3.0, 7.0, 8.0, 12.0, 13.0]
    mid = np.array([0.5, 2.0, 5.0, 7.5, 10.0, 12.5])
    q, p = REF / REF.sum(), CUR / CUR.sum()
    assert drift.wasserstein1(edges, REF, CUR) == pytest.approx(stats.wasserstein_distance(mid, mid, q, p), rel=1e-12)
    assert drift.ks_statistic(REF, CUR) == pytest.approx(np.max(np.abs(np.cumsum(p) - np.cumsum(q))), abs=1e-15)


def test_drifted_only_strictly_above_the_threshold() -> None:
    assert drift.drifted(0.1, 0.1) is False
    assert drift.drifted(math.nextafter(0.1, 1.0), 0.1) is True
    assert drift.drifted(0.0999, 0.1) is False


def test_scores_name_each_statistic_of_reference_then_current() -> None:
    edges = [0.0, 1.0, 2.0, 4.0, 5.0, 9.0, 10.0]
    out = drift.scores(edges, REF, CUR)
    assert out == {
        "psi": drift.psi(REF, CUR),
        "js": drift.js_distance(REF, CUR),
        "ks": drift.ks_statistic(REF, CUR),
        "w1": drift.wasserstein1(edges, REF, CUR),
    }
    assert all(np.isfinite(v) and v > 0 for v in out.values())
    assert drift.scores(None, REF, CUR)["w1"] is None


def test_psi_rows_equals_psi_row_by_row_on_awkward_rows() -> None:
    refs = np.array([[10.0, 20.0, 30.0], [0.0, 0.0, 0.0], [0.2, 0.3, 0.1], [5.0, -2.0, 1.0]])
    curs = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.4, 0.1, 0.05], [0.5, 0.2, -1.0]])
    rows = drift.psi_rows(refs, curs)
    assert rows == pytest.approx([drift.psi(r, c) for r, c in zip(refs, curs, strict=True)], rel=1e-12)
    assert rows == pytest.approx([reference_psi(r, c) for r, c in zip(refs, curs, strict=True)], rel=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"current_mass": 500, "noise_var": 0.0},
        {"current_mass": 500, "noise_var": 0.5},
        {"current_mass": 0.4, "noise_var": 0.0},  # rounds to no inference: still one draw, not zero
        {"current_mass": 800, "noise_var": 0.0, "reference_mass": 2000},
        {"current_mass": 800, "noise_var": 30.0, "reference_mass": 0.3, "reference_noise_var": 0.5},
        {"current_mass": 800, "noise_var": 30.0, "reference_mass": 2000, "reference_noise_var": 40.0},
    ],
)
def test_null_samples_follow_the_documented_model(kwargs: dict) -> None:
    expected = replayed_null(REF, **kwargs)
    got = drift.null_psi_samples(
        REF,
        kwargs["current_mass"],
        kwargs["noise_var"],
        kwargs.get("reference_mass"),
        **({"reference_noise_var": kwargs["reference_noise_var"]} if "reference_noise_var" in kwargs else {}),
    )
    assert got.shape == (400,)
    assert got == pytest.approx(expected, rel=1e-9)


def test_null_samples_are_seeded_and_sized() -> None:
    a = drift.null_psi_samples(REF, 300, 2.0, sims=50)
    assert a.shape == (50,)
    assert a.tolist() == drift.null_psi_samples(REF, 300, 2.0, sims=50).tolist()
    assert a == pytest.approx(replayed_null(REF, 300, 2.0, sims=50), rel=1e-9)
    other = drift.null_psi_samples(REF, 300, 2.0, sims=50, seed=1)
    assert other == pytest.approx(replayed_null(REF, 300, 2.0, sims=50, seed=1), rel=1e-9)
    assert other.tolist() != a.tolist()


@pytest.mark.parametrize(("alpha", "z"), [(0.05, 2.0), (0.01, 3.5), (0.001, 6.0), (0.02, 6.0)])
def test_threshold_is_mean_plus_z_sd_or_the_quantile_whichever_is_higher(alpha: float, z: float) -> None:
    null = replayed_null(REF, 600, 20.0, reference_mass=3000, reference_noise_var=10.0, sims=300)
    expected = max(float(np.mean(null) + z * np.std(null)), float(np.quantile(null, 1 - alpha)))
    got = drift.psi_threshold(REF, 600, 20.0, 3000, 10.0, alpha=alpha, floor=0.0, sims=300)
    assert got == pytest.approx(expected, rel=1e-9)
    # the z term binds here, so the quantile is a floor only: the maximum draw is not the level
    assert got < float(np.max(null))


def test_threshold_defaults_and_floor() -> None:
    null = replayed_null(REF, 600, 20.0, reference_mass=3000)
    expected = max(float(np.mean(null) + 6.0 * np.std(null)), float(np.quantile(null, 1 - 0.001)))
    assert drift.psi_threshold(REF, 600, 20.0, reference_mass=3000, floor=0.0) == pytest.approx(expected, rel=1e-9)
    assert drift.psi_threshold(REF, 600, 20.0, reference_mass=3000) == pytest.approx(max(expected, 0.1), rel=1e-9)
    # the floor wins exactly when the null is narrower than it
    assert drift.psi_threshold(REF, 600, 20.0, reference_mass=3000, floor=expected * 2) == expected * 2


def test_float32_inputs_are_computed_in_float64() -> None:
    """A caller's float32 arrays give exactly the float64 answer (no precision lost to the input type)."""
    counts = np.array([1.1, 2.7, 0.3, 5.9])
    edges = np.array([0.1, 0.7, 1.3, 2.9, 3.3])
    assert (
        drift.distribution(counts.astype(np.float32)).tolist()
        == drift.distribution(counts.astype(np.float32).astype(np.float64)).tolist()
    )
    assert drift.distribution(counts.astype(np.float32)).dtype == np.float64
    assert (
        drift.centers(edges.astype(np.float32)).tolist()
        == drift.centers(edges.astype(np.float32).astype(np.float64)).tolist()
    )


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_an_alpha_of_zero_or_below_uses_the_largest_simulated_value(alpha: float) -> None:
    null = replayed_null(REF, 600, 20.0, sims=100)
    expected = max(float(np.mean(null) + 6.0 * np.std(null)), float(np.max(null)))
    assert drift.psi_threshold(REF, 600, 20.0, alpha=alpha, floor=0.0, sims=100) == pytest.approx(expected, rel=1e-9)


def replayed_shares(ref, bin_var, reference_mass=None, reference_bin_var=0.0, sims=400, seed=0):
    """The round-rollup null re-computed independently: shares + N(0, bin_var); reference sampled/noisy."""
    rng = np.random.default_rng(seed)
    q = np.asarray(ref, float) / np.sum(ref)
    cur = np.tile(q, (sims, 1))
    if bin_var > 0:
        cur = cur + rng.normal(0.0, math.sqrt(bin_var), size=cur.shape)
    if reference_mass:
        m = max(round(reference_mass), 1)
        r = rng.multinomial(m, q, size=sims) / m
    else:
        r = np.tile(q, (sims, 1))
    if reference_bin_var > 0:
        r = r + rng.normal(0.0, math.sqrt(reference_bin_var), size=r.shape)
    return np.array([reference_psi(a, b) for a, b in zip(r, cur, strict=True)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bin_var": 4e-3},
        {"bin_var": 4e-3, "reference_mass": 500},
        {"bin_var": 4e-3, "reference_bin_var": 2e-3},
        {"bin_var": 0.0, "reference_mass": 40.4, "reference_bin_var": 1e-3, "sims": 120, "seed": 3},
        {"bin_var": 1e-3, "reference_mass": 0.7},  # a mass that rounds to one inference
    ],
)
def test_share_threshold_follows_the_documented_null(kwargs: dict) -> None:
    sims, seed = kwargs.pop("sims", 400), kwargs.pop("seed", 0)
    null = replayed_shares(REF, sims=sims, seed=seed, **kwargs)
    expected = max(null.mean() + 6 * null.std(), np.quantile(null, 0.999), drift.PSI_FLOOR)
    got = drift.psi_threshold_shares(REF, sims=sims, seed=seed, **kwargs)
    assert got == pytest.approx(expected, rel=1e-9)
    if (sims, seed) == (400, 0):  # the defaults: 400 draws from seed 0
        assert drift.psi_threshold_shares(REF, **kwargs) == got
    for alpha, z in ((0.05, 2.0), (0.01, 3.5)):
        level = drift.psi_threshold_shares(REF, alpha=alpha, floor=0.0, sims=sims, seed=seed, **kwargs)
        assert level == pytest.approx(max(null.mean() + z * null.std(), np.quantile(null, 1 - alpha)), rel=1e-9)


def test_share_threshold_defaults_floor_and_refusals() -> None:
    params = inspect.signature(drift.psi_threshold_shares).parameters
    assert (params["alpha"].default, params["floor"].default) == (drift.ALPHA, drift.PSI_FLOOR)
    assert (params["sims"].default, params["seed"].default) == (400, 0)
    assert (params["reference_mass"].default, params["reference_bin_var"].default) == (None, 0.0)
    assert drift.psi_threshold_shares(REF, 0.0) == drift.PSI_FLOOR  # no noise, exact reference
    assert drift.psi_threshold_shares(REF, 0.0, floor=0.0) == pytest.approx(0.0, abs=1e-12)
    assert drift.psi_threshold_shares(REF, 1e-5, floor=0.5) == 0.5
    bad_inputs = (
        {"bin_var": -1e-9},
        {"bin_var": math.nan},
        {"bin_var": 1e-3, "reference_bin_var": -1e-9},
        {"bin_var": 1e-3, "reference_bin_var": math.nan},
    )
    for bad in bad_inputs:
        with pytest.raises(ValueError, match=r"^noise variances must be non-negative numbers$"):
            drift.psi_threshold_shares(REF, **bad)
