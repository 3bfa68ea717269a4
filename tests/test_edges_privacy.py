"""Edges of the server's differential-privacy arithmetic (telemetry/privacy.py), pure.

Formulas against independent computations written out here, the budget and k-suppression at
equality, refusals of a non-positive epsilon and of unknown mechanisms (docs/mutation.md).
"""

from __future__ import annotations

import math

import pytest

from telemetry import privacy


def layout(n: int) -> dict:
    return {"features": [f"f{j}" for j in range(n)], "outputs": {"edges": list(range(50))}}


def test_policy_constants_are_pinned() -> None:
    assert privacy.MECHANISMS == ("laplace", "gaussian")
    assert privacy.GAUSSIAN_DELTA == 1e-5
    assert privacy.ROW_MASS == 1.0


@pytest.mark.parametrize("n", [0, 1, 7])
def test_one_inference_touches_three_parts_plus_one_per_feature(n: int) -> None:
    assert privacy.report_parts(layout(n)) == 3 + n
    assert privacy.report_sensitivity(layout(n)) == (3.0 + n, math.sqrt(3 + n))
    assert privacy.l1_sensitivity(layout(n)) == 3.0 + n
    assert privacy.l2_sensitivity(layout(n)) == math.sqrt(3 + n)


def test_sensitivity_scales_with_the_row_mass(monkeypatch: pytest.MonkeyPatch) -> None:
    """L1 = parts·mass and L2 = sqrt(parts)·mass: with mass 1 a product and a quotient look alike."""
    monkeypatch.setattr(privacy, "ROW_MASS", 0.5)
    assert privacy.report_sensitivity(layout(1)) == (2.0, 1.0)


def test_a_layout_without_features_has_three_parts() -> None:
    assert privacy.report_parts({}) == 3
    assert privacy.report_parts({"features": None}) == 3
    assert privacy.layout_of_report(["a", "b"]) == {"features": ["a", "b"]}
    assert privacy.layout_of_report({"a": [1], "b": [2]}) == {"features": ["a", "b"]}


@pytest.mark.parametrize("epsilon", [0.0, -0.5])
def test_a_non_positive_epsilon_is_refused(epsilon: float) -> None:
    with pytest.raises(ValueError, match=r"^epsilon must be positive$"):
        privacy.laplace_scale(epsilon, 1.0)
    with pytest.raises(ValueError, match=r"^epsilon must be positive$"):
        privacy.gaussian_sigma(epsilon, 1.0)


def test_laplace_scale_is_sensitivity_over_epsilon() -> None:
    assert privacy.laplace_scale(0.5, 4.0) == 8.0
    assert privacy.laplace_scale(1e-9, 1.0) == pytest.approx(1e9)


def test_gaussian_sigma_is_the_analytic_calibration() -> None:
    # sqrt(2 ln(1.25 / 1e-5)) = 4.8448...
    assert privacy.gaussian_sigma(1.0, 1.0) == pytest.approx(4.844805262605389, rel=1e-12)
    assert privacy.gaussian_sigma(0.5, 2.0) == pytest.approx(4 * 4.844805262605389, rel=1e-12)
    assert privacy.gaussian_sigma(1.0, 1.0, delta=1e-3) == pytest.approx(math.sqrt(2 * math.log(1250)), rel=1e-12)


def test_noise_variance_per_mechanism() -> None:
    lay = layout(1)  # L1 = 4, L2 = 2
    assert privacy.noise_variance("laplace", 2.0, lay) == 2.0 * (4 / 2.0) ** 2
    assert privacy.noise_variance("gaussian", 1.0, lay) == pytest.approx((2 * 4.844805262605389) ** 2, rel=1e-12)
    assert privacy.noise_variance("gaussian", 1.0, lay, delta=1e-3) == pytest.approx(4 * 2 * math.log(1250), rel=1e-12)
    assert privacy.noise_variance("none", 1.0, lay) == 0.0
    with pytest.raises(ValueError, match=r"^unknown mechanism 'Laplace'$"):
        privacy.noise_variance("Laplace", 1.0, lay)


def test_sums_of_variances_and_epsilons() -> None:
    assert privacy.summed_noise_variance([]) == 0.0
    assert privacy.summed_noise_variance([1.5, 2.5, 4]) == 8.0
    assert type(privacy.summed_noise_variance([1, 2])) is float
    assert privacy.compose_sequential([]) == 0.0
    assert privacy.compose_sequential([0.5, 0.25]) == 0.75
    assert type(privacy.compose_sequential([1, 2])) is float


def test_the_budget_allows_a_release_that_lands_exactly_on_it() -> None:
    assert privacy.budget_allows(3.0, 1.0, 4.0)
    assert privacy.budget_allows(0.0, 0.0, 0.0)
    assert privacy.budget_allows(0.0, 1e-12, 0.0)  # exactly the absolute tolerance
    assert not privacy.budget_allows(3.0, 1.0 + 1e-9, 4.0)
    assert not privacy.budget_allows(0.0, 1e-11, 0.0)
    # 400 releases of 1.0 summed as floats fit a budget of 400, and the 401st does not
    spent = math.fsum([1.0] * 399)
    assert privacy.budget_allows(spent, 1.0, 400.0)
    assert not privacy.budget_allows(spent + 1.0, 1.0, 400.0)
    # the tolerance is relative to the budget: a sum of 0.1s may overshoot 1e6 by float error only
    assert privacy.budget_allows(1e6 - 0.1, 0.1 + 1e-7, 1e6)
    assert not privacy.budget_allows(1e6 - 0.1, 0.1 + 1e-5, 1e6)


def test_suppression_at_exactly_k_devices_shows_the_value() -> None:
    assert privacy.suppressed(5, 5) is None
    assert privacy.suppressed(4, 5) == "hidden: 4 reporting device(s), fewer than the minimum of 5"
    assert privacy.suppressed(0, 0) is None
    assert privacy.k_suppress(0.0, 5, 5) == (0.0, None)
    assert privacy.k_suppress(None, 5, 5) == (None, None)
    assert privacy.k_suppress(7.5, 4, 5) == (None, "hidden: 4 reporting device(s), fewer than the minimum of 5")
