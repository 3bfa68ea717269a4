"""Bucket and wave math, compatibility rules and gate logic: pure functions, no database."""

import hashlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout import gates, placement
from rollout.placement import Requirements

# --- buckets and waves -------------------------------------------------------------------------


def test_bucket_is_the_documented_hash() -> None:
    device = "7d3c1a52-0000-4000-8000-000000000001"

    def h(text: str) -> int:
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 10000

    assert placement.device_key(device) == h(device)
    assert placement.campaign_offset(42) == h("campaign:42")
    assert placement.bucket(device, 42) == (h(device) + h("campaign:42")) % 10000
    assert placement.legacy_bucket(device, 42) == h(f"{device}:42")
    assert placement.bucket_for(device, 42, placement.LEGACY) == h(f"{device}:42")
    assert placement.bucket_for(device, 42, placement.KEYED) == placement.bucket(device, 42)


@given(st.uuids(), st.integers(min_value=1, max_value=10**9), st.integers(0, 10_000), st.integers(0, 10_000))
def test_key_ranges_hold_exactly_the_keys_whose_bucket_is_in_range(device, campaign, x, y) -> None:
    lo, hi = min(x, y), max(x, y)
    ranges = placement.key_ranges(placement.campaign_offset(campaign), lo, hi)
    key = placement.device_key(device)
    inside = any(a <= key < b for a, b in ranges)
    assert inside == (lo <= placement.bucket(device, campaign) < hi)
    assert sum(b - a for a, b in ranges) == hi - lo  # a wrap splits the range, never loses a key
    assert all(0 <= a < b <= placement.BUCKETS for a, b in ranges)


@given(st.uuids(), st.integers(min_value=1, max_value=10**9))
def test_bucket_is_stable_and_in_range(device: uuid.UUID, campaign: int) -> None:
    b = placement.bucket(device, campaign)
    assert 0 <= b < placement.BUCKETS
    assert placement.bucket(str(device), str(campaign)) == b  # same text, same bucket


def test_buckets_differ_between_campaigns_and_spread_evenly() -> None:
    devices = [uuid.UUID(int=i) for i in range(4000)]
    a = [placement.bucket(d, 1) for d in devices]
    b = [placement.bucket(d, 2) for d in devices]
    assert a != b
    # about 10% of devices below 1000, within a generous binomial margin
    share = sum(x < 1000 for x in a) / len(a)
    assert 0.08 < share < 0.12


wave_lists = st.lists(st.floats(min_value=0.01, max_value=100), min_size=1, max_size=8).map(
    lambda ps: [{"percent": p} for p in sorted(set(ps))]
)


@given(wave_lists, st.uuids())
def test_waves_only_add_devices(waves: list[dict], device: uuid.UUID) -> None:
    covered = [placement.coverage(waves, k) for k in range(-1, len(waves) + 2)]
    assert covered == sorted(covered)
    targeted = [placement.is_targeted(device, 5, c) for c in covered]
    # once a device is in, it stays in
    first_in = targeted.index(True) if True in targeted else len(targeted)
    assert all(targeted[first_in:])


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=8))
def test_coverage_never_shrinks_even_when_badly_ordered(percents: list[float]) -> None:
    waves = [{"percent": p} for p in percents]
    covered = [placement.coverage(waves, k) for k in range(len(waves))]
    assert covered == sorted(covered)


def test_coverage_edges() -> None:
    waves = [{"percent": 5}, {"percent": 25}, {"percent": 100}]
    assert placement.coverage(waves, -1) == 0
    assert [placement.coverage(waves, k) for k in range(3)] == [500, 2500, 10000]
    assert placement.coverage(waves, 9) == 10000
    assert placement.wave_of(499, waves) == 0 and placement.wave_of(500, waves) == 1
    assert placement.wave_of(9999, waves) == 2
    assert placement.wave_of(10, []) is None


@pytest.mark.parametrize(
    ("waves", "message"),
    [
        ([], "at least one wave"),
        ([{"percent": "x"}], "must be a number"),
        ([{"percent": 0}, {"percent": 100}], "above 0"),
        ([{"percent": 50}, {"percent": 10}, {"percent": 100}], "larger than the wave before"),
        ([{"percent": 10}, {"percent": 50}], "must reach 100%"),
        ([{"percent": 100, "min_soak_minutes": -1}], "cannot be negative"),
        ([{"percent": 100, "min_devices": "many"}], "must be a number"),
    ],
)
def test_bad_wave_plans_are_explained(waves: list, message: str) -> None:
    errors = placement.validate_waves(waves)
    assert errors and any(message in e for e in errors)


def test_good_wave_plan() -> None:
    assert placement.validate_waves([{"percent": 1}, {"percent": 10, "min_soak_minutes": 5}, {"percent": 100}]) == []


# --- compatibility -----------------------------------------------------------------------------

HW = {
    "arch": "aarch64",
    "cores": 4,
    "ram_mb": 4096,
    "accelerator": "none",
    "ort_version": "1.20.0",
    "providers": ["CPUExecutionProvider"],
    "storage_free_mb": 2048,
}
MB = 1024 * 1024


def test_max_opset_table() -> None:
    assert placement.max_opset("1.20.1") == 21
    assert placement.max_opset("1.16.3") == 19
    assert placement.max_opset("1.10") == 15
    assert placement.max_opset("9.0") == placement.ORT_MAX_OPSET[-1][1]  # newer than the table
    assert placement.max_opset("0.5") is None and placement.max_opset("banana") is None


def test_a_capable_device_is_compatible() -> None:
    assert placement.incompatibility(HW, Requirements(opset=17, size_bytes=10 * MB)) is None


@pytest.mark.parametrize(
    ("change", "req", "reason"),
    [
        ({"ram_mb": 128}, Requirements(opset=17, size_bytes=100 * MB), "ram"),
        ({"ram_mb": None}, Requirements(opset=17, size_bytes=MB), "ram"),
        ({"ort_version": "1.14.0"}, Requirements(opset=21, size_bytes=MB), "ort_version"),
        ({"ort_version": ""}, Requirements(opset=13, size_bytes=MB), "ort_version"),
        ({}, Requirements(opset=17, size_bytes=MB, provider="CUDAExecutionProvider"), "provider"),
        ({"storage_free_mb": 5}, Requirements(opset=17, size_bytes=10 * MB), "storage"),
        ({}, Requirements(opset=17, size_bytes=MB, min_storage_mb=4096), "storage"),
    ],
)
def test_incompatible_devices_get_a_reason(change: dict, req: Requirements, reason: str) -> None:
    assert placement.incompatibility({**HW, **change}, req) == reason
    assert reason in placement.REASON_TEXT


def test_empty_hardware_is_never_trusted() -> None:
    assert placement.incompatibility({}, Requirements(size_bytes=MB)) == "ram"


def test_small_devices_get_int8_when_there_is_one() -> None:
    small = {**HW, "ram_mb": 512}
    assert placement.choose_variant(small, Requirements(size_bytes=MB, int8_size_bytes=MB // 4)) == "int8"
    assert placement.choose_variant(small, Requirements(size_bytes=MB)) == "fp32"
    assert placement.choose_variant(HW, Requirements(size_bytes=MB, int8_size_bytes=MB // 4)) == "fp32"
    # fp32 would not fit in RAM but the int8 build does: compatible, on int8
    tight = {**HW, "ram_mb": 1500}
    req = Requirements(opset=17, size_bytes=600 * MB, int8_size_bytes=150 * MB)
    assert placement.choose_variant(tight, req) == "int8"
    assert placement.incompatibility(tight, req) is None
    assert placement.incompatibility(tight, Requirements(opset=17, size_bytes=600 * MB)) == "ram"


# --- gates -------------------------------------------------------------------------------------


def cmp(verdict: str, canary: float = 0.0, control: float = 0.0, effect: float | None = None, n: int = 50) -> dict:
    return {
        "verdict": verdict,
        "canary": canary,
        "control": control,
        "effect": canary - control if effect is None else effect,
        "statistic": 1.0,
        "p_value": 0.5,
        "n_canary": n,
        "n_control": n,
        "threshold": None,
        "detail": "",
    }


def test_all_gates_pass_advances() -> None:
    comparison = {name: cmp("pass") for name in gates.GATES}
    outcome = gates.evaluate(gates.DEFAULT_GATES, comparison)
    assert outcome.verdict == gates.PASS and len(outcome.rows) == len(gates.GATES)
    assert gates.action(outcome.verdict, "rollback", is_last_wave=False) == "advance"
    assert gates.action(outcome.verdict, "rollback", is_last_wave=True) == "complete"


def test_one_failing_gate_fails_the_wave_with_its_numbers() -> None:
    comparison = {name: cmp("pass") for name in gates.GATES}
    comparison["error_rate"] = cmp("fail", canary=0.08, control=0.01, n=120)
    outcome = gates.evaluate(gates.DEFAULT_GATES, comparison)
    assert outcome.verdict == gates.FAIL and outcome.failed == ["error_rate"]
    row = next(r for r in outcome.rows if r.name == "error_rate")
    assert row.observed == pytest.approx(0.07) and row.n_canary == 120 and row.threshold == 0.02
    assert gates.action(outcome.verdict, "rollback", False) == "rollback"
    assert gates.action(outcome.verdict, "pause", False) == "pause"
    numbers = outcome.as_numbers()
    assert numbers["verdict"] == "fail" and {g["name"] for g in numbers["gates"]} == set(gates.GATES)


def test_fail_beats_not_enough_data_which_beats_pass() -> None:
    g = {"error_rate": 0.01, "drift": 0.2}
    assert gates.evaluate(g, {"error_rate": cmp("pass"), "drift": cmp("not_enough_data")}).verdict == gates.NOT_ENOUGH
    assert gates.evaluate(g, {"error_rate": cmp("fail"), "drift": cmp("not_enough_data")}).verdict == gates.FAIL
    assert gates.evaluate(g, {"error_rate": cmp("pass")}).verdict == gates.NOT_ENOUGH  # missing gate
    assert gates.action(gates.NOT_ENOUGH, "rollback", True) == "hold"


def test_only_configured_gates_count() -> None:
    outcome = gates.evaluate({"latency_p95": 0.2}, {"error_rate": cmp("fail"), "latency_p95": cmp("pass")})
    assert outcome.verdict == gates.PASS and [r.name for r in outcome.rows] == ["latency_p95"]


def test_without_a_verdict_the_threshold_decides() -> None:
    level = {"verdict": None, "canary": 0.3, "n_canary": 40}
    assert gates.evaluate({"drift": 0.25}, {"drift": level}).verdict == gates.FAIL
    assert gates.evaluate({"drift": 0.5}, {"drift": level}).verdict == gates.PASS
    relative = {"canary": 0.05, "control": 0.01}
    outcome = gates.evaluate({"error_rate": 0.01}, {"error_rate": relative})
    assert outcome.verdict == gates.FAIL and outcome.rows[0].observed == pytest.approx(0.04)
    assert gates.evaluate({"error_rate": 0.01}, {"error_rate": {"canary": None}}).verdict == gates.NOT_ENOUGH


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"speed": 1}, "Unknown gate"),
        ({"error_rate": "high"}, "must be a number"),
        ({"error_rate": -0.1}, "non-negative"),
        ({"error_rate": float("nan")}, "non-negative"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_gate_configs_are_explained(config: object, message: str) -> None:
    errors = gates.validate_gates(config)
    assert errors and message in errors[0]


def test_readiness_waits_for_soak_then_devices() -> None:
    assert "soaking" in gates.readiness(60, 5, 100, 10)
    assert "waiting for devices: 3 of 10" in gates.readiness(600, 5, 3, 10)
    assert gates.readiness(600, 5, 10, 10) is None
    assert gates.readiness(0, 0, 0, 0) is None


def test_statistical_floor_lets_few_devices_fail_but_not_pass() -> None:
    from rollout import gates

    assert gates.statistical_floor(20) == gates.FAIL_FLOOR_DEVICES
    assert gates.statistical_floor(3) == 3
    assert gates.statistical_floor(0) == gates.FAIL_FLOOR_DEVICES
    assert gates.readiness(600, 0, 5, 20), "a wave still waits for its own min_devices before passing"
