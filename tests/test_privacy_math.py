"""DP arithmetic: calibration, composition, budget and k-suppression; agrees with the agent."""

import math

import numpy as np
import pytest

from telemetry import privacy


def layout(n: int) -> dict:
    return {"features": [{"name": f"input[{j}]", "edges": [0.0, 1.0]} for j in range(n)]}


def test_sensitivity_and_scales_match_the_agent() -> None:
    from agent import privacy as agent_privacy

    for n in (0, 1, 4, 20, 50):
        assert (privacy.l1_sensitivity(layout(n)), privacy.l2_sensitivity(layout(n))) == pytest.approx(
            agent_privacy.report_sensitivity(layout(n))
        )
        assert privacy.laplace_scale(0.5, privacy.l1_sensitivity(layout(n))) == pytest.approx(
            agent_privacy.laplace_scale(privacy.l1_sensitivity(layout(n)), 0.5)
        )
    assert privacy.ROW_MASS == agent_privacy.ROW_MASS
    assert privacy.GAUSSIAN_DELTA == agent_privacy.DEFAULT_DELTA
    # a stored report's feature names give the layout it was made with
    assert privacy.report_sensitivity(privacy.layout_of_report({"a[0]": [], "a[1]": []})) == pytest.approx(
        (5.0, math.sqrt(5))
    )


def test_noise_variance_is_what_the_agent_adds() -> None:
    """The variance the server assumes equals the empirical variance of the agent's noise."""
    from agent.privacy import add_noise

    rng = np.random.default_rng(3)
    zeros = np.zeros(200_000)
    for mech in ("laplace", "gaussian"):
        l1, l2 = (privacy.l1_sensitivity(layout(4)), privacy.l2_sensitivity(layout(4)))
        noisy = add_noise(zeros, mech, 1.0, l1 if mech == "laplace" else l2, rng=rng)
        assert np.var(noisy) == pytest.approx(privacy.noise_variance(mech, 1.0, layout(4)), rel=0.03)


def test_composition_budget_and_suppression() -> None:
    assert privacy.compose_sequential([1.0] * 288) == 288
    assert privacy.budget_allows(399.0, 1.0, 400.0)
    assert not privacy.budget_allows(399.5, 1.0, 400.0)
    assert privacy.summed_noise_variance([2.0, 3.0]) == 5.0
    assert privacy.k_suppress(0.3, 19, 20) == (None, "hidden: 19 reporting device(s), fewer than the minimum of 20")
    assert privacy.k_suppress(0.3, 20, 20) == (0.3, None)
    with pytest.raises(ValueError):
        privacy.laplace_scale(0, 1)
    with pytest.raises(ValueError):
        privacy.noise_variance("rr", 1.0, layout(3))
    assert privacy.noise_variance("none", 1.0, layout(3)) == 0.0
    assert privacy.gaussian_sigma(1.0, 1.0) == pytest.approx(math.sqrt(2 * math.log(1.25 / 1e-5)))
