"""canary_vs_control on synthetic canary/control fleets, and the pure statistics against scipy."""

import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from scipy.stats import chi2_contingency, norm

from fleet.models import DeviceEvent
from telemetry import regression, services
from telemetry.api import BatchIn
from telemetry.binning import histogram
from telemetry.profiles import expected_bins
from tests import factories
from tests.telemetry_support import simulated

KEYS = {"error_rate", "latency_p50", "latency_p95", "install_failure_rate", "drift"}
FOUR_FEATURES = {"features": [f"input[{j}]" for j in range(4)]}  # a report layout with 4 feature histograms


def test_two_proportion_z_matches_chi_square() -> None:
    z, p = regression.two_proportion_ztest(60, 1000, 40, 1000)
    chi2 = chi2_contingency([[60, 940], [40, 960]], correction=False)[0]
    assert z**2 == pytest.approx(chi2) and z > 0 and p == pytest.approx(norm.sf(np.sqrt(chi2)))
    assert regression.two_proportion_ztest(1, 0, 1, 10) == (0.0, 1.0)


def test_histogram_quantile_interpolates_within_bins() -> None:
    edges = [0, 10, 20, 30]
    assert regression.histogram_quantile(edges, [10, 10, 0], 0.5) == pytest.approx(10.0)
    assert regression.histogram_quantile(edges, [10, 10, 0], 0.75) == pytest.approx(15.0)
    assert regression.histogram_quantile(edges, [0, 4, -3], 0.5) == pytest.approx(15.0)
    assert regression.histogram_quantile(edges, [0, -1, 0], 0.5) is None


def fleet_on(version, n: int, rng, label: str, **kw) -> list:
    devices = []
    for i in range(n):
        d, _ = factories.device(labels={"ring": label}, name=f"{label}{i}")
        body = {"reports": [simulated(version, rng, n=2000, **kw) for _ in range(2)]}
        assert services.ingest_reports(d.id, BatchIn.model_validate(body).reports)["accepted"]
        devices.append(d)
    return devices


def installs(version, devices, failed: int) -> None:
    now = timezone.now()
    for i, d in enumerate(devices):
        kind = "install_failed" if i < failed else "installed"
        DeviceEvent.objects.create(
            id=uuid.uuid4(), device=d, kind=kind, at=now, model_name=version.model.name, version_label=version.label
        )


def reference_profile(version, n: int = 50_000) -> dict:
    """What an uploaded reference data set of N(0, 1) features gives (source "reference")."""
    rng = np.random.default_rng(0)
    bins = expected_bins(version)
    feats = [
        {"name": f["name"], "edges": f["edges"], "counts": histogram(rng.normal(size=n), f["edges"]).tolist(),
         "mean": 0.0, "std": 1.0}
        for f in bins["features"]
    ]  # fmt: skip
    k = bins["output"]["n"]
    output = dict(bins["output"], counts=np.bincount(rng.integers(0, k, n), minlength=k).tolist())
    return {"source": "reference", "n": n, "features": feats, "output": output}


@pytest.fixture
def versions(db):
    old, new = factories.staged_version("fraud", "v1"), factories.staged_version("fraud", "v2", seed=1)
    for v in (old, new):
        v.reference_profile = reference_profile(v)
        v.save()
    factories.release(old)
    factories.release(new)
    return old, new


def test_a_bad_canary_fails_each_gate_with_numbers(versions) -> None:
    old, new = versions
    rng = np.random.default_rng(5)
    control = fleet_on(old, 25, rng, "control", error_rate=0.01, latency_ms=8)
    canary = fleet_on(new, 25, rng, "canary", error_rate=0.08, latency_ms=20, shift=1.0)
    installs(new, canary, failed=5)
    installs(old, control, failed=0)
    since = timezone.now() - timedelta(hours=1)
    out = services.canary_vs_control(new.id, old.id, since)
    assert set(out) == KEYS
    assert {k: v["verdict"] for k, v in out.items()} == dict.fromkeys(KEYS, "fail")
    err = out["error_rate"]
    assert err["n_canary"] == 25 and err["n_control"] == 25
    assert err["canary"] == pytest.approx(0.08, abs=0.01) and err["effect"] > 0.05 and err["p_value"] < 1e-6
    assert out["latency_p95"]["effect"] > 1.25 and out["latency_p95"]["threshold"] == 1.25
    assert out["install_failure_rate"]["canary"] == pytest.approx(5 / 25)
    assert out["drift"]["canary"] > 0.25
    for v in out.values():
        assert set(v) == {"verdict", "canary", "control", "effect", "statistic", "p_value", "n_canary",
                          "n_control", "threshold", "detail"}  # fmt: skip
        assert v["detail"]


def test_a_healthy_canary_passes_and_a_small_one_is_not_enough_data(versions) -> None:
    old, new = versions
    rng = np.random.default_rng(6)
    control = fleet_on(old, 22, rng, "control")
    canary = fleet_on(new, 22, rng, "canary")
    installs(new, canary, failed=0)
    since = timezone.now() - timedelta(hours=1)
    out = services.canary_vs_control(new.id, old.id, since)
    assert {k: v["verdict"] for k, v in out.items()} == dict.fromkeys(KEYS, "pass"), out
    small = services.canary_vs_control(new.id, old.id, since, thresholds={"min_devices": 30})
    assert {v["verdict"] for v in small.values()} == {"not_enough_data"}
    only_canary_ring = services.canary_vs_control(new.id, old.id, since, cohort_selector="ring=canary")
    assert only_canary_ring["error_rate"]["n_control"] == 0
    assert only_canary_ring["error_rate"]["verdict"] == "not_enough_data"
    assert len(control) == 22


def _noisy_latency(rng: np.random.Generator, reports: int, per_report: int, latency_ms: float) -> tuple:
    """Summed latency histograms of ``reports`` windows, each with Laplace noise as devices add it."""
    from telemetry import privacy
    from telemetry.binning import LATENCY_EDGES_MS

    scale = privacy.laplace_scale(1.0, privacy.l1_sensitivity(FOUR_FEATURES))
    true = histogram(np.full(per_report, latency_ms), LATENCY_EDGES_MS)
    noisy = sum(true + rng.laplace(0, scale, true.size) for _ in range(reports))
    return noisy, reports * privacy.noise_variance("laplace", 1.0, FOUR_FEATURES)


def test_dp_noise_in_empty_latency_bins_does_not_fake_a_regression() -> None:
    """Few inferences per window: clipped noise alone used to put the p95 in the seconds."""
    from telemetry.binning import LATENCY_EDGES_MS

    rng = np.random.default_rng(3)
    false_fails = 0
    for _ in range(50):
        can, can_var = _noisy_latency(rng, reports=150, per_report=24, latency_ms=1.5)
        con, con_var = _noisy_latency(rng, reports=1200, per_report=24, latency_ms=1.5)
        v = regression.latency_verdict(LATENCY_EDGES_MS, can, con, 0.95, 37, 283, 1.5, 20, can_var, con_var)
        false_fails += v.verdict == regression.FAIL
        if v.verdict != regression.NOT_ENOUGH:
            assert v.canary < 5 and v.control < 5
    assert false_fails == 0
    # Without the noise variance (the old behaviour) the same data fails.
    can, _ = _noisy_latency(rng, reports=150, per_report=24, latency_ms=1.5)
    con, _ = _noisy_latency(rng, reports=1200, per_report=24, latency_ms=1.5)
    assert regression.latency_verdict(LATENCY_EDGES_MS, can, con, 0.95, 37, 283, 1.5, 20).verdict == regression.FAIL


def test_a_real_latency_regression_still_fails_through_the_noise() -> None:
    from telemetry.binning import LATENCY_EDGES_MS

    rng = np.random.default_rng(4)
    can, can_var = _noisy_latency(rng, reports=150, per_report=24, latency_ms=80.0)
    con, con_var = _noisy_latency(rng, reports=1200, per_report=24, latency_ms=1.5)
    v = regression.latency_verdict(LATENCY_EDGES_MS, can, con, 0.95, 37, 283, 1.5, 20, can_var, con_var)
    assert v.verdict == regression.FAIL and 50 <= v.canary <= 100 and v.control < 5


def test_pure_noise_is_not_enough_data() -> None:
    from telemetry.binning import LATENCY_EDGES_MS

    rng = np.random.default_rng(5)
    can, can_var = _noisy_latency(rng, reports=20, per_report=0, latency_ms=1.0)
    con, con_var = _noisy_latency(rng, reports=20, per_report=0, latency_ms=1.0)
    v = regression.latency_verdict(LATENCY_EDGES_MS, can, con, 0.95, 20, 20, 1.5, 20, can_var, con_var)
    assert v.verdict == regression.NOT_ENOUGH and "noise" in v.detail


def test_dp_noise_on_error_counts_widens_the_z_test() -> None:
    """Five canary devices, no real errors: the noise on their error counts is not a regression."""
    from telemetry import privacy

    rng = np.random.default_rng(11)
    scale = privacy.laplace_scale(1.0, privacy.l1_sensitivity(FOUR_FEATURES))
    var = privacy.noise_variance("laplace", 1.0, FOUR_FEATURES)
    naive = noisy = 0
    for _ in range(200):
        can_err = sum(rng.laplace(0, scale) for _ in range(5 * 3))  # 5 devices x 3 windows, 0 true errors
        con_err = sum(rng.laplace(0, scale) for _ in range(60 * 3))
        args = (can_err, 5 * 3 * 64, con_err, 60 * 3 * 64, 5, 60, 0.02, 5)
        naive += regression.error_rate_verdict(*args).verdict == regression.FAIL
        noisy += regression.error_rate_verdict(
            *args, canary_noise_var=15 * var, control_noise_var=180 * var
        ).verdict == (regression.FAIL)
    assert naive > 20, "ignoring the noise fails healthy canaries often"
    assert noisy <= 4, "with the noise in the standard error, false fails are rare"


def test_a_real_error_regression_on_five_devices_still_fails() -> None:
    from telemetry import privacy

    rng = np.random.default_rng(12)
    scale = privacy.laplace_scale(1.0, privacy.l1_sensitivity(FOUR_FEATURES))
    var = privacy.noise_variance("laplace", 1.0, FOUR_FEATURES)
    n_can, n_con = 5 * 3 * 64, 60 * 3 * 64
    can_err = 0.3 * n_can + sum(rng.laplace(0, scale) for _ in range(15))
    con_err = sum(rng.laplace(0, scale) for _ in range(180))
    v = regression.error_rate_verdict(
        can_err, n_can, con_err, n_con, 5, 60, 0.02, 5, canary_noise_var=15 * var, control_noise_var=180 * var
    )
    assert v.verdict == regression.FAIL and v.canary > 0.2


def test_input_drift_on_both_sides_does_not_fail_the_canary(versions) -> None:
    """Drift that reaches canary and control alike is the world changing, not the version regressing."""
    old, new = versions
    rng = np.random.default_rng(7)
    fleet_on(old, 22, rng, "control", shift=1.0)
    canary = fleet_on(new, 22, rng, "canary", shift=1.0)
    installs(new, canary, failed=0)
    out = services.canary_vs_control(new.id, old.id, timezone.now() - timedelta(hours=1))
    drift = out["drift"]
    assert drift["canary"] > 0.25 and drift["control"] > 0.25, "both sides see the shift"
    assert drift["verdict"] == "pass" and abs(drift["effect"]) < 0.25


def test_a_few_milliseconds_on_a_fast_model_is_not_a_latency_regression() -> None:
    """p95 6.7 ms vs 3.3 ms (2x) on a busy machine: under the effect-size floor, so it passes."""
    from telemetry.binning import LATENCY_EDGES_MS

    rng = np.random.default_rng(9)
    can, can_var = _noisy_latency(rng, reports=60, per_report=200, latency_ms=7.0)
    con, con_var = _noisy_latency(rng, reports=300, per_report=200, latency_ms=3.0)
    v = regression.latency_verdict(LATENCY_EDGES_MS, can, con, 0.95, 11, 30, 1.25, 5, can_var, con_var)
    assert v.effect > 1.25 and v.canary - v.control < 5.0
    assert v.verdict == regression.PASS
    slow = regression.latency_verdict(LATENCY_EDGES_MS, can, con, 0.95, 11, 30, 1.25, 5, can_var, con_var, 1.0)
    assert slow.verdict == regression.FAIL, "with a 1 ms floor the same numbers fail"
