"""Edges of the gate logic between waves (rollout/gates.py), pure: no database.

Each test states one decision at its boundary: an observed value equal to its threshold passes, a
fail outranks a hold, a soak exactly long enough is long enough, a threshold of zero is valid and a
negative or non-finite one is not (docs/mutation.md).
"""

from __future__ import annotations

import math

import pytest

from rollout import gates
from rollout.gates import FAIL, NOT_ENOUGH, PASS


def test_default_thresholds_are_pinned() -> None:
    """Changing a default changes every campaign created without its own thresholds."""
    assert gates.DEFAULT_GATES == {
        "install_failure_rate": 0.05,
        "error_rate": 0.02,
        "latency_p50": 1.25,
        "latency_p95": 1.25,
        "drift": 0.25,
    }
    assert sorted(gates.LEVEL_GATES) == ["install_failure_rate"]
    assert gates.FAIL_FLOOR_DEVICES == 5
    assert (PASS, FAIL, NOT_ENOUGH) == ("pass", "fail", "not_enough_data")


def test_meaning_of_a_known_and_an_unknown_gate() -> None:
    assert gates.meaning("error_rate") == gates.GATES["error_rate"][0]
    assert gates.meaning("no_such_gate") == "no_such_gate"


# --- validate_gates --------------------------------------------------------------------------------


def test_a_valid_config_has_no_problems_including_a_zero_threshold() -> None:
    assert gates.validate_gates({"error_rate": 0, "drift": "0.3", "latency_p50": 1.25}) == []
    assert gates.validate_gates({}) == []


def test_a_config_that_is_not_a_mapping_is_one_problem() -> None:
    assert gates.validate_gates([("error_rate", 0.1)]) == ["Gates must be a mapping of gate name to threshold."]  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [-0.001, -1, math.nan, math.inf, -math.inf, "nan", "inf"])
def test_a_negative_or_non_finite_threshold_is_refused(threshold: object) -> None:
    assert gates.validate_gates({"error_rate": threshold}) == [
        "Gate error_rate: the threshold must be a non-negative number."
    ]


@pytest.mark.parametrize("threshold", [None, "lots", [0.1]])
def test_a_threshold_that_is_not_a_number_is_refused(threshold: object) -> None:
    assert gates.validate_gates({"drift": threshold}) == ["Gate drift: the threshold must be a number."]


def test_every_problem_is_reported_not_only_the_first() -> None:
    errors = gates.validate_gates({"bogus": 1, "drift": "x", "error_rate": -1, "latency_p95": 2})
    assert errors == [
        f"Unknown gate 'bogus'; known gates: {', '.join(gates.GATES)}.",
        "Gate drift: the threshold must be a number.",
        "Gate error_rate: the threshold must be a non-negative number.",
    ]


# --- one gate row ----------------------------------------------------------------------------------


def test_no_comparison_for_a_gate_holds() -> None:
    for result in (None, {}):
        row = gates._row("error_rate", 0.02, result)
        assert (row.observed, row.verdict, row.detail) == (None, NOT_ENOUGH, "no comparison for this gate")
        assert row.threshold == 0.02


@pytest.mark.parametrize(
    ("observed", "verdict"),
    [(0.02, PASS), (0.0200001, FAIL), (0.0199999, PASS), (-0.5, PASS)],
)
def test_without_a_telemetry_verdict_an_observed_value_equal_to_the_threshold_passes(
    observed: float, verdict: str
) -> None:
    row = gates._row("error_rate", 0.02, {"effect": observed})
    assert (row.observed, row.verdict) == (observed, verdict)


def test_telemetrys_verdict_wins_over_our_own_comparison() -> None:
    assert gates._row("error_rate", 0.02, {"effect": 0.5, "verdict": PASS}).verdict == PASS
    assert gates._row("error_rate", 0.02, {"effect": 0.0, "verdict": FAIL}).verdict == FAIL
    assert gates._row("error_rate", 0.02, {"effect": 0.0, "verdict": NOT_ENOUGH}).verdict == NOT_ENOUGH
    # an unknown verdict word is no verdict: the value is judged here
    assert gates._row("error_rate", 0.02, {"effect": 0.5, "verdict": "maybe"}).verdict == FAIL
    assert gates._row("error_rate", 0.02, {"verdict": "maybe"}).verdict == NOT_ENOUGH


def test_a_level_gate_observes_the_canary_and_else_the_effect() -> None:
    row = gates._row("install_failure_rate", 0.05, {"canary": 0.05, "control": 0.5, "effect": -0.45})
    assert (row.observed, row.verdict) == (0.05, PASS)
    row = gates._row("install_failure_rate", 0.05, {"effect": 0.06})
    assert (row.observed, row.verdict) == (0.06, FAIL)
    # a level gate never falls back to canary minus control
    row = gates._row("install_failure_rate", 0.05, {"canary": None, "control": 0.01})
    assert (row.observed, row.verdict) == (None, NOT_ENOUGH)


def test_a_difference_gate_observes_the_effect_and_else_canary_minus_control() -> None:
    row = gates._row("error_rate", 0.02, {"canary": 0.5, "control": 0.1, "effect": 0.01})
    assert row.observed == 0.01 and row.verdict == PASS
    row = gates._row("error_rate", 0.02, {"canary": 0.13, "control": 0.1})
    assert row.observed == pytest.approx(0.03) and row.verdict == FAIL
    assert (row.canary, row.control) == (0.13, 0.1)
    # one side missing and no effect: nothing to judge
    assert gates._row("error_rate", 0.02, {"canary": 0.13}).verdict == NOT_ENOUGH
    assert gates._row("error_rate", 0.02, {"control": 0.13}).verdict == NOT_ENOUGH


def test_drift_without_a_control_counts_the_control_as_no_drift() -> None:
    row = gates._row("drift", 0.25, {"canary": 0.25})
    assert (row.observed, row.verdict) == (0.25, PASS)
    assert gates._row("drift", 0.25, {"canary": 0.26}).verdict == FAIL
    # only drift: another difference gate with no control has nothing to judge
    assert gates._row("latency_p50", 1.25, {"canary": 3.0}).observed is None


@pytest.mark.parametrize("bad", ["x", math.nan, math.inf, None, [1]])
def test_numbers_that_are_not_finite_are_no_numbers(bad: object) -> None:
    row = gates._row(
        "error_rate", 0.02, {"canary": bad, "control": bad, "effect": bad, "p_value": bad, "n_canary": bad}
    )
    assert (row.canary, row.control, row.observed, row.p_value, row.n_canary) == (None, None, None, None, None)
    assert row.verdict == NOT_ENOUGH


def test_a_row_keeps_counts_p_value_and_detail() -> None:
    row = gates._row(
        "error_rate",
        0.02,
        {"effect": "0.01", "n_canary": "12", "n_control": 30.0, "p_value": "0.5", "detail": "two-sided z"},
    )
    assert row.observed == 0.01
    assert (row.n_canary, row.n_control, row.p_value, row.detail) == (12, 30, 0.5, "two-sided z")
    assert type(row.n_canary) is int and type(row.n_control) is int
    row = gates._row("error_rate", 0.02, {"effect": 0.0, "detail": None})
    assert (row.n_canary, row.n_control, row.p_value, row.detail) == (None, None, None, "")


# --- the wave's verdict ----------------------------------------------------------------------------


def test_any_fail_fails_the_wave_even_beside_a_hold() -> None:
    out = gates.evaluate(
        {"error_rate": 0.02, "drift": 0.25, "latency_p50": "1.25"},
        {"error_rate": {"effect": 0.5}, "latency_p50": {"effect": 1.0}},
    )
    assert out.verdict == FAIL
    assert out.failed == ["error_rate"] and out.waiting == ["drift"]
    assert [r.threshold for r in out.rows] == [0.02, 0.25, 1.25]


def test_a_hold_without_a_fail_holds_the_wave() -> None:
    out = gates.evaluate({"error_rate": 0.02, "drift": 0.25}, {"error_rate": {"effect": 0.02}})
    assert (out.verdict, out.failed, out.waiting) == (NOT_ENOUGH, [], ["drift"])


def test_all_pass_passes_and_no_gates_pass() -> None:
    out = gates.evaluate({"error_rate": 0.02}, {"error_rate": {"effect": 0.02}, "drift": {"effect": 9.0}})
    assert (out.verdict, [r.name for r in out.rows]) == (PASS, ["error_rate"])  # only configured gates count
    assert gates.evaluate({}, {"drift": {"effect": 9.0}}).verdict == PASS


def test_an_outcome_as_numbers_is_its_verdict_and_every_row() -> None:
    out = gates.evaluate({"error_rate": 0.02}, {"error_rate": {"effect": 0.5, "n_canary": 20}})
    numbers = out.as_numbers()
    assert numbers["verdict"] == FAIL
    assert numbers["gates"] == [
        {
            "name": "error_rate",
            "threshold": 0.02,
            "observed": 0.5,
            "verdict": FAIL,
            "canary": None,
            "control": None,
            "n_canary": 20,
            "n_control": None,
            "p_value": None,
            "detail": "",
            "groups_canary": None,
            "groups_control": None,
        }
    ]


# --- rows as shown ---------------------------------------------------------------------------------


def test_public_rows_refuse_what_is_not_a_list_of_rows() -> None:
    assert gates.public_rows(None, 5) == []
    assert gates.public_rows({"name": "drift"}, 5) == []
    assert gates.public_rows(["drift", 3, None], 5) == []


def test_public_rows_show_drift_as_judged_canary_minus_control() -> None:
    rows = [
        {"name": "drift", "canary": 0.46, "control": 0.3, "observed": 0.46, "n_canary": 9, "n_control": 9},
        {"name": "drift", "canary": 0.46, "control": None, "observed": 0.1, "n_canary": 9, "n_control": 9},
        {"name": "drift", "canary": None, "control": 0.3, "observed": 0.1, "n_canary": 9, "n_control": 9},
        {"name": "error_rate", "canary": 0.46, "control": 0.3, "observed": 0.01, "n_canary": 9, "n_control": 9},
    ]
    shown = gates.public_rows(rows, 5)
    assert [r["observed"] for r in shown] == [pytest.approx(0.16), 0.46, 0.1, 0.01]
    assert rows[0]["observed"] == 0.46  # the stored row itself is not changed


def test_public_rows_hide_numbers_below_k_devices_on_a_side() -> None:
    row = {"name": "error_rate", "canary": 0.2, "control": 0.1, "observed": 0.1, "verdict": FAIL}
    shown = gates.public_rows([{**row, "n_canary": 5, "n_control": 4}], 5)[0]
    assert (shown["canary"], shown["control"], shown["observed"], shown["verdict"]) == (None, None, None, FAIL)
    shown = gates.public_rows([{**row, "n_canary": 5, "n_control": 5}], 5)[0]
    assert (shown["canary"], shown["control"], shown["observed"]) == (0.2, 0.1, 0.1)
    # install failures are judged on the canary alone: a small control hides only its own number
    one = {**row, "name": "install_failure_rate", "n_canary": 5, "n_control": 1}
    shown = gates.public_rows([one], 5)[0]
    assert (shown["canary"], shown["control"], shown["observed"]) == (0.2, None, 0.1)


# --- readiness, floors, actions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wave_min", "floor"), [(0, 5), (None, 5), (-3, 5), (1, 1), (3, 3), (4, 4), (5, 5), (6, 5), (500, 5)]
)
def test_statistical_floor_is_the_waves_minimum_capped_at_the_fail_floor(wave_min: object, floor: int) -> None:
    assert gates.statistical_floor(wave_min) == floor  # type: ignore[arg-type]


def test_a_wave_soaked_exactly_long_enough_with_exactly_enough_devices_is_ready() -> None:
    assert gates.readiness(600.0, 10, 20, 20) is None
    assert gates.readiness(599.9, 10, 20, 20) == "soaking: 10.0 of 10 minutes"
    assert gates.readiness(30.0, 2.5, 20, 20) == "soaking: 0.5 of 2.5 minutes"
    assert gates.readiness(600.0, 10, 19, 20) == "waiting for devices: 19 of 20 canary devices report"


def test_no_soak_and_no_device_minimum_means_ready_at_once() -> None:
    assert gates.readiness(0.0, 0, 0, 0) is None
    assert gates.readiness(0.0, None, 0, None) is None  # type: ignore[arg-type]
    assert gates.readiness(0.0, None, 0, 1) == "waiting for devices: 0 of 1 canary devices report"  # type: ignore[arg-type]


def test_a_clock_stepped_back_before_the_wave_started_soaks_rather_than_crashes() -> None:
    """A negative elapsed time with no soak configured used to format ``float(None)``: a TypeError."""
    assert gates.readiness(-60.0, None, 0, 0) == "soaking: -1.0 of 0 minutes"  # type: ignore[arg-type]
    assert gates.readiness(-60.0, 0, 0, 0) == "soaking: -1.0 of 0 minutes"


@pytest.mark.parametrize(
    ("verdict", "on_failure", "last", "what"),
    [
        (FAIL, "rollback", False, "rollback"),
        (FAIL, "rollback", True, "rollback"),
        (FAIL, "pause", False, "pause"),
        (FAIL, "anything else", True, "pause"),
        (NOT_ENOUGH, "rollback", False, "hold"),
        (NOT_ENOUGH, "rollback", True, "hold"),
        (PASS, "rollback", False, "advance"),
        (PASS, "pause", True, "complete"),
    ],
)
def test_action_for_each_verdict(verdict: str, on_failure: str, last: bool, what: str) -> None:
    assert gates.action(verdict, on_failure, last) == what


def test_a_row_judged_on_round_sums_carries_its_group_counts() -> None:
    """ "N devices in G groups": the counts come through as integers; junk or absence is None."""
    result = {"verdict": PASS, "effect": 0.0, "n_canary": 99, "groups_canary": 3, "groups_control": "2"}
    row = gates.evaluate({"error_rate": 0.02}, {"error_rate": result}).rows[0]
    assert (row.groups_canary, row.groups_control) == (3, 2)
    junk = gates.evaluate(
        {"error_rate": 0.02}, {"error_rate": {**result, "groups_canary": "x", "groups_control": None}}
    )
    assert (junk.rows[0].groups_canary, junk.rows[0].groups_control) == (None, None)
